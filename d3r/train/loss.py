"""The confidence-aware distillation loss: student pointmaps and confidence against a teacher's.

Both sides are dicts with the teacher's four maps (``d3r.teachers.base.OUTPUT_KEYS``):
``pts3d_global`` / ``pts3d_local`` ``[B, N, H, W, 3]`` and ``conf_global`` / ``conf_local``
``[B, N, H, W]`` (confidence ≥ 1). Per sample b, view v, pixel p and head k ∈ {global, local}:

- **mask** M(p): the teacher's global and local points and confidences are finite and
  ``C_T_global > min_teacher_conf`` (0.1, as in the reference). Masked pixels never enter any sum.
- **normalisation** (``avg_dis``, no centring): global points are divided by one scale per sample,
  the mean distance to the origin over all valid pixels of all views; local points by one scale per
  view. Student and teacher are each divided by their own scale, so the loss is scale-invariant.
- **error** e = ‖x̂/ẑ − x/z‖: squared (``paper``) or Euclidean (``robust``).
- **weight** w: ``teacher`` = clamp(C_T/10, 0.1, 1); ``student`` = the same of C_S (detached);
  ``none`` = 1.
- **point term** per view: Σ_p M·w·ρ / (Σ_p M + 1e-8), averaged over views, where ρ = e (``paper``)
  or ρ = C_S·e (``robust``: the student's own confidence scales its error, Fast3R-style), and
  **log-C term** (``robust`` only): the same average of −α·w·log C_S.
- **confidence term**: ½ Σ_k masked mean over the sample of |C_S,k − C_T,k| (``paper``: raw
  confidence) or |log C_S,k − log C_T,k| (``robust``).

total = α_g·(global + logc_global) + α_l·(local + logc_local) + γ·conf (defaults α_g = 2, α_l = 1,
α = 0.2; γ = 0.001 for ``paper``, 0.1 for ``robust``, 0 without confidence supervision), averaged
over the B samples; ``components`` holds the five terms of ``COMPONENTS``. A sample whose mask is
empty contributes exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from d3r.config import TrainConfig

Variant = Literal["paper", "robust"]
ConfWeighting = Literal["teacher", "student", "none"]
HEADS = ("global", "local")
COMPONENTS = ("global", "local", "logc_global", "logc_local", "conf")
_SCALE_EPS = 1e-8
_COUNT_EPS = 1e-8


@dataclass(frozen=True)
class VariantSpec:
    """What distinguishes the named variants."""

    squared_error: bool
    learned_confidence: bool
    log_space_confidence: bool
    gamma_conf: float


VARIANTS: dict[str, VariantSpec] = {
    "paper": VariantSpec(squared_error=True, learned_confidence=False, log_space_confidence=False, gamma_conf=0.001),
    "robust": VariantSpec(squared_error=False, learned_confidence=True, log_space_confidence=True, gamma_conf=0.1),
}


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast outputs) are computed in float32; float64 stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def valid_mask(teacher_out: dict[str, torch.Tensor], min_teacher_conf: float) -> torch.Tensor:
    """Pixels that may contribute: ``[B, N, H, W]`` bool."""
    mask = teacher_out["pts3d_global"].isfinite().all(-1) & teacher_out["pts3d_local"].isfinite().all(-1)
    mask &= teacher_out["conf_global"].isfinite() & teacher_out["conf_local"].isfinite()
    return mask & (teacher_out["conf_global"] > min_teacher_conf)


def normalise_avg_distance(points: torch.Tensor, mask: torch.Tensor, per_view: bool) -> torch.Tensor:
    """Divide ``points [B, N, H, W, 3]`` by their mean distance to the origin over ``mask [B, N, H, W]``.

    One scale per sample (``per_view=False``) or per view. Masked points must already be finite.
    """
    dims = (2, 3) if per_view else (1, 2, 3)
    distance = torch.linalg.vector_norm(points, dim=-1) * mask
    count = mask.sum(dim=dims, keepdim=True).clamp(min=1)
    scale = (distance.sum(dim=dims, keepdim=True) / count).clamp(min=_SCALE_EPS)
    return points / scale.unsqueeze(-1)


def confidence_weight(conf: torch.Tensor) -> torch.Tensor:
    """The reference's per-pixel weight, clamp(C / 10, 0.1, 1)."""
    return (conf / 10.0).clamp(0.1, 1.0)


def per_view_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_p M·values / (Σ_p M + 1e-8) per view, then the mean over views: ``[B, N, H, W]`` → ``[B]``."""
    count = mask.sum(dim=(2, 3)).to(values.dtype)
    per_view = (values * mask).sum(dim=(2, 3)) / (count + _COUNT_EPS)
    return per_view.mean(dim=1)


def per_sample_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over all views and pixels of a sample (0 if none is valid): ``[B, N, H, W]`` → ``[B]``."""
    return (values * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1)


class DistillLoss(torch.nn.Module):
    """``loss(student_out, teacher_out) -> (total, components)``; see the module docstring for the formula.

    Args:
        variant: ``paper`` (the reference's formula) or ``robust`` (Euclidean error, learned student
            confidence with −α·log C, confidence matched in log space).
        conf_weighting: where the per-pixel weight comes from (``teacher``, ``student``, ``none``).
        conf_supervision: whether the confidence-matching term enters the total (it is always reported).
        alpha_global, alpha_local: weights of the two heads' point terms.
        gamma_conf: weight of the confidence term; ``None`` = the variant's default (paper 0.001).
        alpha_logc: α of the −α·log C_S term (``robust`` only).
        min_teacher_conf: pixels with teacher global confidence at or below this are masked.
    """

    def __init__(
        self,
        variant: Variant = "robust",
        conf_weighting: ConfWeighting = "teacher",
        conf_supervision: bool = True,
        alpha_global: float = 2.0,
        alpha_local: float = 1.0,
        gamma_conf: float | None = None,
        alpha_logc: float = 0.2,
        min_teacher_conf: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"loss variant {variant!r} is unknown; expected one of {sorted(VARIANTS)}")
        if conf_weighting not in ("teacher", "student", "none"):
            raise ValueError(f"conf_weighting {conf_weighting!r} is unknown; expected teacher, student or none")
        self.variant = variant
        self.spec = VARIANTS[variant]
        self.conf_weighting = conf_weighting
        self.conf_supervision = conf_supervision
        self.alpha = {"global": alpha_global, "local": alpha_local}
        self.gamma_conf = self.spec.gamma_conf if gamma_conf is None else gamma_conf
        self.alpha_logc = alpha_logc
        self.min_teacher_conf = min_teacher_conf

    def _weight(self, student_conf: torch.Tensor, teacher_conf: torch.Tensor) -> torch.Tensor:
        if self.conf_weighting == "teacher":
            return confidence_weight(teacher_conf)
        if self.conf_weighting == "student":
            return confidence_weight(student_conf.detach())
        return torch.ones_like(teacher_conf)

    def _confidence_error(self, student_conf: torch.Tensor, teacher_conf: torch.Tensor) -> torch.Tensor:
        if self.spec.log_space_confidence:
            return (student_conf.log() - teacher_conf.log()).abs()
        return (student_conf - teacher_conf).abs()

    def forward(
        self, student_out: dict[str, torch.Tensor], teacher_out: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the scalar total and ``components`` (each a scalar: global, local, logc_global,
        logc_local, conf), all averaged over the batch."""
        mask = valid_mask(teacher_out, self.min_teacher_conf)
        components: dict[str, torch.Tensor] = {}
        conf_terms = []
        for head in HEADS:
            s_pts = torch.where(mask.unsqueeze(-1), _at_least_float32(student_out[f"pts3d_{head}"]), 0.0)
            s_conf = torch.where(mask, _at_least_float32(student_out[f"conf_{head}"]), 1.0)
            t_pts = torch.where(mask.unsqueeze(-1), _at_least_float32(teacher_out[f"pts3d_{head}"]), 0.0)
            t_conf = torch.where(mask, _at_least_float32(teacher_out[f"conf_{head}"]), 1.0)
            per_view = head == "local"
            diff = normalise_avg_distance(s_pts, mask, per_view) - normalise_avg_distance(t_pts, mask, per_view)
            error = diff.square().sum(-1) if self.spec.squared_error else torch.linalg.vector_norm(diff, dim=-1)
            weight = self._weight(s_conf, t_conf)
            if self.spec.learned_confidence:
                components[head] = per_view_mean(weight * s_conf * error, mask).mean()
                components[f"logc_{head}"] = per_view_mean(-self.alpha_logc * weight * s_conf.log(), mask).mean()
            else:
                components[head] = per_view_mean(weight * error, mask).mean()
                components[f"logc_{head}"] = torch.zeros((), device=s_pts.device)
            conf_terms.append(per_sample_mean(self._confidence_error(s_conf, t_conf), mask))
        components["conf"] = (0.5 * (conf_terms[0] + conf_terms[1])).mean()
        total = sum(self.alpha[head] * (components[head] + components[f"logc_{head}"]) for head in HEADS)
        if self.conf_supervision:
            total = total + self.gamma_conf * components["conf"]
        return total, components


def build_loss(train_config: TrainConfig) -> DistillLoss:
    """The loss named by ``train.loss`` with the ``train.loss_*`` settings."""
    return DistillLoss(
        variant=train_config.loss,
        conf_weighting=train_config.loss_conf_weighting,
        conf_supervision=train_config.loss_conf_supervision,
        alpha_global=train_config.loss_alpha_global,
        alpha_local=train_config.loss_alpha_local,
        gamma_conf=train_config.loss_gamma_conf,
        alpha_logc=train_config.loss_alpha_logc,
    )
