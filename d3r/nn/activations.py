"""Output activations of pointmap heads (DUSt3R / Fast3R ``depth_mode=exp``, ``conf_mode=exp``)."""

from __future__ import annotations

import torch


def pointmap_activation(xyz: torch.Tensor) -> torch.Tensor:
    """``xyz [..., 3]`` → ``xyz / max(|xyz|, 1e-8) * expm1(|xyz|)`` (direction kept, distance exp-mapped)."""
    norm = xyz.norm(dim=-1, keepdim=True)
    return xyz / norm.clamp(min=1e-8) * torch.expm1(norm)


def confidence_activation(raw: torch.Tensor) -> torch.Tensor:
    """``1 + exp(raw)``: confidence ≥ 1, unbounded."""
    return 1.0 + torch.exp(raw)


def postprocess(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head output ``[B, 4, H, W]`` → points ``[B, H, W, 3]`` and confidence ``[B, H, W]``."""
    if raw.dim() != 4 or raw.shape[1] != 4:
        raise ValueError(f"expected a head output [B, 4, H, W], got {tuple(raw.shape)}")
    channels_last = raw.permute(0, 2, 3, 1)
    return pointmap_activation(channels_last[..., :3]), confidence_activation(channels_last[..., 3])
