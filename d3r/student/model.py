"""The student: encoder → fusion → heads, batched over scenes and views.

``Student.forward(images [B, N, 3, H, W])`` runs the encoder on all B·N views at once, the fusion
transformer on B sequences of N·P tokens (global attention across a sample's views), and the heads
on all B·N views at once (or in chunks of ``head_chunk`` views, for memory only). It returns the
teacher's four maps (``d3r.teachers.base.OUTPUT_KEYS``). On CUDA it runs under bf16 autocast unless the
caller passes ``autocast=False`` and chooses the precision itself (the training loop does); the outputs
are float32.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from torch import nn

from d3r.nn import draw_image_ids, run_in_view_chunks
from d3r.student.encoder import ViTEncoder
from d3r.student.fusion import FusionTransformer
from d3r.student.heads import PointmapHeads
from d3r.student.presets import StudentSpec, resolve_spec


class Student(nn.Module):
    """A multi-view pointmap model small enough to train on one workstation (see ``presets``)."""

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = ViTEncoder(
            spec.encoder_dim, spec.encoder_depth, spec.encoder_heads, spec.patch_size, spec.encoder_registers,
            spec.encoder_pos_grid, spec.encoder_layer_scale, spec.activation_checkpointing,
        )
        self.fusion = FusionTransformer(
            spec.encoder_dim, spec.fusion_dim, spec.fusion_depth, spec.fusion_heads, spec.head_hooks,
            spec.max_views, spec.activation_checkpointing,
        )
        dim_tokens = [spec.encoder_dim if hook == 0 else spec.fusion_dim for hook in spec.head_hooks]
        self.heads = PointmapHeads(
            dim_tokens, spec.head_hooks, spec.head_layer_dims, spec.head_feature_dim, spec.head_last_dim,
            spec.patch_size, spec.head_shared_trunk,
        )

    def image_ids(self, batch: int, num_views: int, device: torch.device) -> torch.Tensor:
        """Default view ids ``[B, N]``: random (view 0 = 0) in training when ``spec.image_ids='random'``,
        else sequential."""
        random = self.training and self.spec.image_ids == "random"
        return draw_image_ids(batch, num_views, self.fusion.max_views, random=random, device=device)

    def check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"student: images must be [B, N, 3, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        patch = self.spec.patch_size
        if height % patch or width % patch or height == 0 or width == 0:
            raise ValueError(
                f"student: image size {height}x{width} (HxW) must be a positive multiple of the patch size {patch}; "
                "resize/crop with d3r.scenes.preprocess"
            )

    def forward(
        self, images: torch.Tensor, image_ids: torch.Tensor | None = None, *, autocast: bool = True
    ) -> dict[str, torch.Tensor]:
        """``images [B, N, 3, H, W]`` (uint8 0..255 or float 0..1), ``image_ids [B, N]`` (default: see
        ``image_ids``) → ``pts3d_global``/``pts3d_local`` ``[B, N, H, W, 3]``, ``conf_global``/``conf_local``
        ``[B, N, H, W]`` (float32; global = view 0's camera frame). ``autocast``: bf16 autocast on CUDA;
        False leaves the precision to the caller's own autocast context."""
        self.check_images(images)
        batch, num_views, _, height, width = images.shape
        if image_ids is None:
            image_ids = self.image_ids(batch, num_views, images.device)
        elif tuple(image_ids.shape) != (batch, num_views) or image_ids.is_floating_point():
            raise ValueError(
                f"student: image_ids must be integer [B, N] = {(batch, num_views)}, got {tuple(image_ids.shape)}"
            )
        elif image_ids.min() < 0 or image_ids.max() >= self.fusion.max_views:
            raise ValueError(f"student: image_ids must lie in 0..{self.fusion.max_views - 1}")
        own_autocast = torch.autocast("cuda", dtype=torch.bfloat16) if autocast and images.is_cuda else nullcontext()
        with own_autocast:
            tokens = self.encoder(images.flatten(0, 1))  # [B*N, P, enc_dim]
            patches = tokens.shape[1]
            hooked = self.fusion(tokens.reshape(batch, num_views * patches, -1), image_ids)  # [B, N*P, C] each
            per_view = [t.reshape(batch * num_views, patches, t.shape[-1]) for t in hooked]  # [B*N, P, C] each
            outputs = self.run_heads(per_view, (height, width))  # [B*N, H, W, ...]
        return {key: value.reshape(batch, num_views, *value.shape[1:]) for key, value in outputs.items()}

    def run_heads(self, tokens: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Heads on ``[B*N, P, C]`` tokens, all views at once or ``head_chunk`` views at a time."""
        return run_in_view_chunks(partial(self.heads, image_size=image_size), tokens, self.spec.head_chunk)


def build_student(preset: str, **overrides: Any) -> Student:
    """A freshly initialised ``Student`` from a named preset (``distill3r-s``, ``d3r-s``, ``tiny``),
    with any ``StudentSpec`` field overridden, e.g. ``build_student("d3r-s", activation_checkpointing=True)``."""
    return Student(resolve_spec(preset, **overrides))


def parameter_breakdown(student: Student) -> dict[str, int]:
    """Parameter counts of ``encoder``, ``fusion``, ``heads`` and ``total``."""
    parts = {"encoder": student.encoder, "fusion": student.fusion, "heads": student.heads}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    counts["total"] = sum(counts.values())
    return counts

