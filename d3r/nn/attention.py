"""Multi-head self-attention through ``scaled_dot_product_attention``, with optional 2D RoPE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from d3r.nn.rope import RoPE2D


class Attention(nn.Module):
    """Self-attention ``[B, L, dim] → [B, L, dim]``.

    ``qkv`` is one Linear(dim, 3 * dim) whose output reshapes to ``(B, L, 3, heads, head_dim)``
    ([q; k; v] blocks, heads contiguous inside each), ``proj`` is Linear(dim, dim). ``scale`` defaults
    to ``head_dim ** -0.5``; ``eval_scale``, when set, replaces it outside training (Fast3R's
    ``attn_bias_for_inference_enabled``). On CUDA the attention core (after RoPE) runs in
    ``core_dtype`` (bf16 by default; ``None`` keeps the input dtype) and is cast back; on CPU it runs
    in the input dtype.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rope: RoPE2D | None = None,
        scale: float | None = None,
        eval_scale: float | None = None,
        core_dtype: torch.dtype | None = torch.bfloat16,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5 if scale is None else float(scale)
        self.eval_scale = eval_scale
        self.core_dtype = core_dtype
        self.rope = rope
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    @property
    def active_scale(self) -> float:
        """The softmax scale this module uses now (depends on ``training``)."""
        if self.eval_scale is not None and not self.training:
            return self.eval_scale
        return self.scale

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, dim]``; ``positions [L, 2]`` or ``[B, L, 2]`` (needed only with RoPE)."""
        b, length, dim = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, L, head_dim]
        if self.rope is not None:
            if positions is None:
                raise ValueError("Attention with RoPE needs token positions")
            q, k = self.rope(q, positions), self.rope(k, positions)
        out_dtype = v.dtype
        if x.is_cuda and self.core_dtype is not None:
            q, k, v = q.to(self.core_dtype), k.to(self.core_dtype), v.to(self.core_dtype)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.active_scale).to(out_dtype)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))
