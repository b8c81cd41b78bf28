"""Patch embedding: a strided convolution from an image to a grid of tokens."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """``images [B, 3, H, W] → tokens [B, h * w, dim]`` (row-major), ``h = H / patch``, ``w = W / patch``.

    The convolution is named ``proj`` (``patch_embed.proj.*`` in CroCo, DUSt3R, Fast3R and DINOv2).
    """

    def __init__(self, patch_size: int, dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        return self.proj(images).flatten(2).transpose(1, 2)
