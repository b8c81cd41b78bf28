"""2D rotary position embedding (RoPE) for patch tokens, in pure torch.

Layout (CroCo / DUSt3R / Fast3R): the head dimension ``D`` is split into a y-half (first ``D/2``
channels) and an x-half (last ``D/2``). Each half gets a 1D RoPE with ``inv_freq = freq^(-arange(0, D/2, 2)
/ (D/2))``, its angles tiled twice (``cat(angles, angles)``), and the non-interleaved rotation
``t * cos + rotate_half(t) * sin`` with ``rotate_half(t) = cat(-t[second half], t[first half])``.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_positions(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer patch coordinates ``[h * w, 2]`` as (y, x), row-major, starting at 0."""
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    return torch.stack([ys, xs], dim=-1)


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class RoPE2D(nn.Module):
    """Rotates queries or keys ``[B, heads, L, D]`` by their 2D patch positions (``D`` divisible by 4)."""

    def __init__(self, freq: float = 100.0) -> None:
        super().__init__()
        self.freq = float(freq)

    def _rope_1d(self, t: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``t [B, heads, L, d]`` rotated by ``coords [B or 1, L]`` (one axis of the position)."""
        d = t.shape[-1]
        inv_freq = self.freq ** (-torch.arange(0, d, 2, device=t.device, dtype=torch.float32) / d)
        angles = coords.to(torch.float32)[..., None] * inv_freq  # [B or 1, L, d/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B or 1, 1, L, d]
        cos, sin = angles.cos().to(t.dtype), angles.sin().to(t.dtype)
        return t * cos + _rotate_half(t) * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``tokens [B, heads, L, D]``, ``positions [L, 2]`` or ``[B, L, 2]`` (y, x) → ``[B, heads, L, D]``."""
        if tokens.shape[-1] % 4:
            raise ValueError(f"RoPE2D needs a head dimension divisible by 4, got {tokens.shape[-1]}")
        if positions.dim() == 2:
            positions = positions[None]
        if positions.shape[-2] != tokens.shape[-2]:
            raise ValueError(f"positions {tuple(positions.shape)} do not match {tokens.shape[-2]} tokens")
        y_half, x_half = tokens.chunk(2, dim=-1)
        return torch.cat([self._rope_1d(y_half, positions[..., 0]), self._rope_1d(x_half, positions[..., 1])], dim=-1)
