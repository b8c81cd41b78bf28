"""Named student layouts (``StudentSpec``) and how overrides are applied to them.

- ``distill3r-s``: the paper's student (reference §4): DUNE/DINOv2-layout ViT-S/14 encoder (384-d,
  12 layers, 6 heads, 4 registers, LayerScale, position table for 448 px = 32x32 patches as in the
  DUNE 448 checkpoint), a 6 x 384-d x 6-head fusion transformer, and two DPT heads (hooks
  [0, 3, 4, 6], layer dims [96, 192, 384, 768], feature 256, last 128): 71.97M parameters.
- ``d3r-s``: ours. The same encoder and fusion (so DUNE weights load), one shared, slimmer DPT trunk
  ([48, 96, 192, 384], feature 128, last 64) that outputs both heads' 8 channels: ~37.8M parameters.
- ``tiny``: a few hundred thousand parameters, for tests and the CPU demo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class StudentSpec:
    """Every size and switch of a student (flat, so ``build_student(preset, field=value)`` overrides any)."""

    patch_size: int = 14
    # encoder: DINOv2-layout ViT
    encoder_dim: int = 384
    encoder_depth: int = 12
    encoder_heads: int = 6
    encoder_registers: int = 4
    encoder_pos_grid: int = 32
    encoder_layer_scale: float | None = 1e-5
    # fusion transformer: global attention over all views' tokens
    fusion_dim: int = 384
    fusion_depth: int = 6
    fusion_heads: int = 6
    max_views: int = 1000
    image_ids: Literal["sequential", "random"] = "sequential"
    # DPT heads: hook 0 is the encoder output, hook k >= 1 fusion block k (the last one normed)
    head_hooks: tuple[int, int, int, int] = (0, 3, 4, 6)
    head_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    head_feature_dim: int = 256
    head_last_dim: int = 128
    head_shared_trunk: bool = False
    head_chunk: int | None = None
    # execution
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.encoder_dim % self.encoder_heads or self.fusion_dim % self.fusion_heads:
            raise ValueError(f"student: dims must be divisible by heads, got {self}")
        if sorted(self.head_hooks) != list(self.head_hooks) or self.head_hooks[0] < 0:
            raise ValueError(f"student.head_hooks must be ascending and >= 0, got {self.head_hooks}")
        if self.head_hooks[-1] > self.fusion_depth:
            raise ValueError(f"student.head_hooks {self.head_hooks} exceed fusion_depth={self.fusion_depth}")
        if self.image_ids not in ("sequential", "random"):
            raise ValueError(f"student.image_ids must be 'sequential' or 'random', got {self.image_ids!r}")
        if self.head_chunk is not None and self.head_chunk < 1:
            raise ValueError(f"student.head_chunk must be >= 1 or None, got {self.head_chunk}")


PRESETS: dict[str, StudentSpec] = {
    "distill3r-s": StudentSpec(),
    "d3r-s": StudentSpec(
        head_layer_dims=(48, 96, 192, 384), head_feature_dim=128, head_last_dim=64, head_shared_trunk=True
    ),
    "tiny": StudentSpec(
        encoder_dim=64, encoder_depth=2, encoder_heads=2, encoder_pos_grid=16,
        fusion_dim=64, fusion_depth=2, fusion_heads=2,
        head_hooks=(0, 1, 1, 2), head_layer_dims=(16, 32, 64, 128), head_feature_dim=32, head_last_dim=16,
    ),
}


def resolve_spec(preset: str, **overrides: Any) -> StudentSpec:
    """The preset's spec with ``overrides`` applied (unknown names raise, listing the valid ones)."""
    if preset not in PRESETS:
        raise ValueError(f"student.preset={preset!r} is unknown; known: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(StudentSpec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"student overrides {unknown} are unknown; valid: {sorted(fields)}")
    normalised = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(PRESETS[preset], **normalised)
