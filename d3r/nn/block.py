"""Pre-norm ViT block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

Submodule names follow timm / CroCo / DINOv2 (``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``,
``ls1.gamma, ls2.gamma``) so official state dicts load by key.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from d3r.nn.attention import Attention
from d3r.nn.rope import RoPE2D


class Mlp(nn.Module):
    """``fc1 → GELU (exact, erf) → fc2``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learnt scale ``x * gamma`` (DINOv2's ``ls1`` / ``ls2``)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Transformer block on ``[B, L, dim]`` tokens; ``ls1``/``ls2`` exist only when ``layer_scale_init`` is set."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        rope: RoPE2D | None = None,
        layer_scale_init: float | None = None,
        attn_scale: float | None = None,
        attn_eval_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, rope=rope, scale=attn_scale, eval_scale=attn_eval_scale
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale_init is not None:
            self.ls1 = LayerScale(dim, layer_scale_init)
            self.ls2 = LayerScale(dim, layer_scale_init)
        else:
            self.ls1 = self.ls2 = nn.Identity()

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, dim]``; ``positions [L, 2]`` or ``[B, L, 2]`` for RoPE → ``[B, L, dim]``."""
        x = x + self.ls1(self.attn(self.norm1(x), positions))
        return x + self.ls2(self.mlp(self.norm2(x)))


def run_block(block: nn.Module, tokens: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """``block(tokens)``, through ``torch.utils.checkpoint`` when asked and gradients are on."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, tokens, use_reentrant=False)
    return block(tokens)
