"""The student's output heads: global and local pointmaps with confidence, from four hooked token sets.

Two layouts: two separate DPT heads (the paper's: ``global_head``, ``local_head``, 4 channels each),
or one shared DPT trunk (``trunk``) whose 8 output channels are the global xyz + conf then the local
xyz + conf. ``refinenet4.resConfUnit1`` exists in the official DPT (and in the reference's
parameter count) but is never used: it is kept, frozen, so DDP needs no unused-parameter search.
Activations as Fast3R: points ``xyz / |xyz| * expm1(|xyz|)``, confidence ``1 + exp(c)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from d3r.nn import DPTHead, postprocess

HEAD_CHANNELS = 4


class PointmapHeads(nn.Module):
    """4 token tensors ``[B, P, C_i]`` → ``pts3d_global``/``pts3d_local`` ``[B, H, W, 3]`` and
    ``conf_global``/``conf_local`` ``[B, H, W]`` (float32, confidence ≥ 1)."""

    def __init__(
        self,
        dim_tokens: Sequence[int],
        hooks: Sequence[int],
        layer_dims: Sequence[int],
        feature_dim: int,
        last_dim: int,
        patch_size: int,
        shared_trunk: bool,
    ) -> None:
        super().__init__()
        self.shared_trunk = shared_trunk

        def dpt(num_channels: int) -> DPTHead:
            head = DPTHead(dim_tokens, hooks, layer_dims, feature_dim, last_dim, num_channels, patch_size)
            head.scratch.refinenet4.resConfUnit1.requires_grad_(False)
            return head

        if shared_trunk:
            self.trunk = dpt(2 * HEAD_CHANNELS)
        else:
            self.global_head = dpt(HEAD_CHANNELS)
            self.local_head = dpt(HEAD_CHANNELS)

    def forward(self, tokens: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        if self.shared_trunk:
            raw_global, raw_local = self.trunk(tokens, image_size).float().split(HEAD_CHANNELS, dim=1)
        else:
            raw_global = self.global_head(tokens, image_size).float()
            raw_local = self.local_head(tokens, image_size).float()
        pts_global, conf_global = postprocess(raw_global)
        pts_local, conf_local = postprocess(raw_local)
        return {
            "pts3d_global": pts_global, "conf_global": conf_global, "pts3d_local": pts_local, "conf_local": conf_local
        }
