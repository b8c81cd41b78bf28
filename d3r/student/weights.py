"""Load pretrained encoder weights into a student from DUNE or DINOv2 checkpoints, with a key report.

Accepted layouts (both are DINOv2-layout ViTs, see ``d3r.student.encoder``):

- **DUNE** ``.pth``: a dict with ``model`` (and usually ``args``); the encoder's keys start with
  ``encoder.`` after dropping any ``module.`` / ``_orig_mod.`` prefixes; projector keys are ignored.
- **DINOv2** (ViT-S/14, with or without registers): a plain state dict with ``cls_token``,
  ``pos_embed``, ``register_tokens``, ``mask_token``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``.

Chunked blocks (``blocks.<chunk>.<i>.*``, DINOv2's ``block_chunks``) are renamed ``blocks.<i>.*``;
``mask_token`` is skipped (the student never masks). A position table with a different square grid
(e.g. DINOv2's 37x37 for 518 px into a 32x32 student) is resized bicubically and reported as such;
any other shape mismatch raises.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from d3r.checkpoints import CheckpointError, read_checkpoint, tensor_dict
from d3r.student.model import Student

logger = logging.getLogger(__name__)

SKIPPED_KEYS = ("mask_token",)
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


@dataclass
class KeyReport:
    """What loading an encoder checkpoint did, key by key."""

    path: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"encoder weights from {self.path} ({self.layout} layout): loaded {len(self.loaded)}, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, skipped {len(self.skipped)}, "
            f"resized {len(self.resized)}"
        ]
        for name in ("missing", "unexpected", "skipped", "resized"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name}: {', '.join(keys)}")
        return "\n".join(lines)


def _strip_wrappers(key: str) -> str:
    return key.replace("module.", "").replace("_orig_mod.", "")


def encoder_state_from_checkpoint(data: Mapping[str, object], path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, DINOv2-layout encoder state dict) from a loaded DUNE or DINOv2 checkpoint.

    Raises:
        CheckpointError: naming ``path`` when it is neither layout or holds something other than tensors.
    """
    if "model" in data:
        layout = "dune"
        state = {_strip_wrappers(k): v for k, v in tensor_dict(data["model"], path, "'model'").items()}
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        if not state:
            raise CheckpointError(f"{path}: DUNE checkpoint's 'model' has no 'encoder.' keys")
    elif "patch_embed.proj.weight" in {_strip_wrappers(k) for k in data if isinstance(k, str)}:
        layout = "dinov2"
        state = {_strip_wrappers(k): v for k, v in tensor_dict(data, path, "the state dict").items()}
    else:
        keys = ", ".join(map(repr, list(data)[:8]))
        raise CheckpointError(
            f"{path}: neither a DUNE checkpoint (dict with 'model') nor a DINOv2 state dict "
            f"(with 'patch_embed.proj.weight'); first keys: {keys}"
        )
    return layout, {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items()}


def resize_position_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1, 1 + g*g, D]`` → ``[1, 1 + grid*grid, D]`` (class position kept, the grid resized bicubically)."""
    source = round((table.shape[1] - 1) ** 0.5)
    patches = table[:, 1:].reshape(1, source, source, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1].float(), patches.flatten(2).transpose(1, 2)], dim=1).to(table.dtype)


def _is_square_table(shape: torch.Size, dim: int) -> bool:
    return len(shape) == 3 and shape[0] == 1 and shape[2] == dim and round((shape[1] - 1) ** 0.5) ** 2 == shape[1] - 1


def load_encoder_weights(student: Student, path: str | Path, *, trust: bool = False) -> KeyReport:
    """Copy a DUNE or DINOv2 checkpoint's encoder into ``student.encoder``; returns the key report.

    The file is read by ``d3r.checkpoints.read_checkpoint``: tensors only, unless ``trust``
    (``student.trust_checkpoint``) allows fully unpickling it, which runs any code it holds.

    Raises:
        CheckpointError: the file cannot be read, is neither layout, or a tensor's shape differs from the
            student's (other than a square position grid, which is resized), listing every such key.
    """
    path = Path(path)
    data = read_checkpoint(path, opt_in="student.trust_checkpoint", trust=trust)
    layout, state = encoder_state_from_checkpoint(data, path)
    report = KeyReport(path=str(path), layout=layout)
    target = student.encoder.state_dict()
    report.skipped = sorted(k for k in state if k in SKIPPED_KEYS)
    state = {k: v for k, v in state.items() if k not in SKIPPED_KEYS}
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != target["pos_embed"].shape and _is_square_table(pos.shape, student.encoder.dim):
        state["pos_embed"] = resize_position_table(pos, student.encoder.pos_grid)
        grid = round((pos.shape[1] - 1) ** 0.5)
        g = student.encoder.pos_grid
        report.resized.append(f"pos_embed ({grid}x{grid} -> {g}x{g})")
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)}, student {tuple(target[k].shape)}"
        for k, v in state.items() if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        listing = "\n  ".join(mismatched)
        raise CheckpointError(f"{path}: encoder tensors with the wrong shape for this student:\n  {listing}")
    report.unexpected = sorted(k for k in state if k not in target)
    report.missing = sorted(k for k in target if k not in state)
    report.loaded = sorted(k for k in state if k in target)
    student.encoder.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    log = logger.warning if report.missing or report.unexpected else logger.info
    log("%s", report.summary())
    return report
