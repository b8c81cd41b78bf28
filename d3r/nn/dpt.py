"""DPT head: turns tokens from four layers into a full-resolution dense map.

The module tree matches DUSt3R / Fast3R's ``dpt`` adapter so official weights load by key:
``act_postprocess.{0..3}`` (token grids → 4x, 2x, 1x, 1/2 scale feature maps), ``scratch.layer{1..4}_rn``
(3x3 projections to ``feature_dim``, no bias; ``layer_rn`` is a tuple view of them, not registered),
``scratch.refinenet{1..4}`` (fusion blocks) and ``head`` (``Sequential`` 0..4). ``refinenet4``'s
output is cropped to layer 3's size, so odd grids (e.g. 336 / 16 = 21) work. The final upsampling
goes to the exact input size, which for patch 16 equals the official ``x2`` (``align_corners=True``)
and lets patch-14 students output full resolution too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from d3r.nn.activations import postprocess


def _conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """``out_conv(up2(resConfUnit2(x + resConfUnit1(skip))))``; ``up2`` is bilinear with ``align_corners=True``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTScratch(nn.Module):
    """Holds ``layer{1..4}_rn`` and ``refinenet{1..4}``."""

    def __init__(self, layer_dims: Sequence[int], feature_dim: int) -> None:
        super().__init__()
        self.layer1_rn = _conv3x3(layer_dims[0], feature_dim, bias=False)
        self.layer2_rn = _conv3x3(layer_dims[1], feature_dim, bias=False)
        self.layer3_rn = _conv3x3(layer_dims[2], feature_dim, bias=False)
        self.layer4_rn = _conv3x3(layer_dims[3], feature_dim, bias=False)
        self.refinenet1 = FeatureFusionBlock(feature_dim)
        self.refinenet2 = FeatureFusionBlock(feature_dim)
        self.refinenet3 = FeatureFusionBlock(feature_dim)
        self.refinenet4 = FeatureFusionBlock(feature_dim)

    @property
    def layer_rn(self) -> tuple[nn.Conv2d, ...]:
        """The four projections in order (the official alias, deliberately not registered)."""
        return (self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn)


class ResizeBilinear(nn.Module):
    """Bilinear resize (``align_corners=True``) to a size given at call time."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _act_postprocess(dim_tokens: int, layer_dim: int, level: int) -> nn.Sequential:
    """Level 0: x4 (ConvT k4 s4); 1: x2 (ConvT k2 s2); 2: x1; 3: /2 (Conv3x3 s2)."""
    project = nn.Conv2d(dim_tokens, layer_dim, kernel_size=1)
    if level == 0:
        return nn.Sequential(project, nn.ConvTranspose2d(layer_dim, layer_dim, kernel_size=4, stride=4))
    if level == 1:
        return nn.Sequential(project, nn.ConvTranspose2d(layer_dim, layer_dim, kernel_size=2, stride=2))
    if level == 2:
        return nn.Sequential(project)
    return nn.Sequential(project, nn.Conv2d(layer_dim, layer_dim, kernel_size=3, stride=2, padding=1))


class DPTHead(nn.Module):
    """Tokens of 4 layers ``[B, P, C_i]`` (``P = h * w``) → dense map ``[B, num_channels, H, W]``.

    ``hooks`` records which layers the caller feeds (the head itself takes the 4 selected tensors).
    """

    def __init__(
        self,
        dim_tokens: Sequence[int],
        hooks: Sequence[int],
        layer_dims: Sequence[int] = (96, 192, 384, 768),
        feature_dim: int = 256,
        last_dim: int = 128,
        num_channels: int = 4,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        if len(dim_tokens) != 4 or len(hooks) != 4 or len(layer_dims) != 4:
            raise ValueError("DPTHead needs exactly 4 dim_tokens, hooks and layer_dims")
        self.hooks = list(hooks)
        self.patch_size = patch_size
        self.act_postprocess = nn.ModuleList(
            _act_postprocess(dim, layer_dim, level)
            for level, (dim, layer_dim) in enumerate(zip(dim_tokens, layer_dims, strict=True))
        )
        self.scratch = DPTScratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            _conv3x3(feature_dim, last_dim),
            ResizeBilinear(),
            _conv3x3(last_dim, last_dim),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, kernel_size=1),
        )

    def forward(self, tokens: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """``tokens``: 4 tensors ``[B, P, C_i]``; ``image_size`` (H, W) → ``[B, num_channels, H, W]``."""
        height, width = image_size
        h, w = height // self.patch_size, width // self.patch_size
        if len(tokens) != 4:
            raise ValueError(f"DPTHead takes the tokens of 4 layers, got {len(tokens)}")
        layers = []
        stages = zip(tokens, self.act_postprocess, self.scratch.layer_rn, strict=True)
        for level, (x, act, project) in enumerate(stages):
            if x.shape[1] != h * w:
                raise ValueError(f"layer {level}: {x.shape[1]} tokens, expected {h}x{w} for image {height}x{width}")
            grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
            layers.append(project(act(grid)))
        scratch = self.scratch
        path = scratch.refinenet4(layers[3])[:, :, : layers[2].shape[2], : layers[2].shape[3]]
        path = scratch.refinenet3(path, layers[2])
        path = scratch.refinenet2(path, layers[1])
        path = scratch.refinenet1(path, layers[0])
        out = self.head[1](self.head[0](path), (height, width))
        for layer in self.head[2:]:
            out = layer(out)
        return out


class DPTPointmapHead(nn.Module):
    """A ``DPTHead`` under the attribute ``dpt`` (keys ``<name>.dpt.*``) plus the pointmap activations."""

    def __init__(self, **dpt_kwargs) -> None:
        super().__init__()
        self.dpt = DPTHead(**dpt_kwargs)

    def forward(self, tokens: list[torch.Tensor], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """4 token tensors ``[B, P, C_i]`` → points ``[B, H, W, 3]`` and confidence ``[B, H, W]`` (≥ 1)."""
        return postprocess(self.dpt(tokens, image_size).float())
