"""The student's image encoder: a ViT in the DINOv2 layout (as DUNE's encoder), shared by all views.

State-dict keys are DINOv2's: ``cls_token (1, 1, D)``, ``pos_embed (1, 1 + G*G, D)``,
``register_tokens (1, R, D)``, ``patch_embed.proj.{weight,bias}``, ``blocks.{i}.{norm1, attn.qkv,
attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``. There is no ``mask_token``
(the student never masks; loaders skip it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from d3r.nn import Block, PatchEmbed, run_block

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViTEncoder(nn.Module):
    """``images [B, 3, H, W]`` → normed patch tokens ``[B, (H/p) * (W/p), dim]`` (DINOv2's ``x_norm_patchtokens``).

    Input: uint8 in 0..255, or float in 0..1 (RGB). The encoder normalises with ImageNet mean/std
    itself. The learnt position table (a ``pos_grid`` x ``pos_grid`` grid plus the class token's) is
    resized bicubically to the input's patch grid; register tokens get no position.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        num_registers: int,
        pos_grid: int,
        layer_scale_init: float | None,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.patch_size = patch_size
        self.pos_grid = pos_grid
        self.activation_checkpointing = activation_checkpointing
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, dim))
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, norm_eps=1e-6, layer_scale_init=layer_scale_init) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for token in (self.cls_token, self.pos_embed, self.register_tokens):
            nn.init.trunc_normal_(token, std=0.02)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 or float 0..1 ``[B, 3, H, W]`` → ImageNet-normalised float."""
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (images - self.mean) / self.std

    def position_table(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings ``[1, 1 + h * w, dim]`` for an ``h`` x ``w`` patch grid."""
        if (h, w) == (self.pos_grid, self.pos_grid):
            return self.pos_embed
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.pos_grid, self.pos_grid, self.dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(grid.dtype)
        return torch.cat([cls_pos, grid.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` (H, W multiples of the patch) → ``[B, P, dim]``, ``P = (H/p)(W/p)``."""
        height, width = images.shape[-2:]
        tokens = self.patch_embed(self.normalise(images))
        batch = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_table(height // self.patch_size, width // self.patch_size)
        registers = self.register_tokens.expand(batch, -1, -1)
        tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = run_block(block, tokens, self.activation_checkpointing and self.training)
        return self.norm(tokens)[:, 1 + self.register_tokens.shape[1]:]
