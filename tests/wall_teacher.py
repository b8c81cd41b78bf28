"""Points that test teachers share: a pinhole view of a wall whose depth follows the image's brightness."""

from __future__ import annotations

import sys

import torch
from ray import cloudpickle

# Test teachers using this reach the Ray workers by value (the workers cannot import the tests folder).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def brightness_wall(images: torch.Tensor) -> torch.Tensor:
    """``images`` uint8 ``[B, N, 3, H, W]`` → points ``[B, N, H, W, 3]`` on each pixel's ray at depth
    1 + mean brightness (finite, never degenerate)."""
    _, _, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    rays = torch.stack([(xs - w / 2) / w, (ys - h / 2) / w, torch.ones(h, w)], dim=-1)
    return rays * (1.0 + images.float().mean(dim=2) / 255.0)[..., None]
