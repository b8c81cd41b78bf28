"""Global fusion over all views' tokens (Fast3R's decoder, the student's fusion transformer), and its view ids.

``decoder_embed`` Linear(in_dim → dim); the sin/cos image-index row of each view's id added once to
every token of that view; ``depth`` Blocks without RoPE (LayerNorm eps 1e-5) with global attention
over the N·P tokens of a sample; a final LayerNorm (eps 1e-6) on the last block's output. Outputs
are taken at ``hooks``: 0 is the input (before ``decoder_embed``), k ≥ 1 block k's output, the last
block's after the norm (teachers.md A.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from d3r.nn.block import Block, run_block
from d3r.nn.embeddings import image_index_embedding


def draw_image_ids(
    batch: int,
    views: int,
    max_views: int,
    random: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """View ids ``[B, N]`` long for a table of ``max_views`` image-index rows.

    Sequential: ``0..N-1`` for every sample. Random (Fast3R's ``random_image_idx_embedding``): view 0
    gets 0, the others ``randperm(max_views - 1)[:N-1] + 1`` (distinct ids in 1..max_views-1), drawn
    on the CPU from ``generator`` (None: the global RNG) separately for each sample.
    """
    if not 1 <= views <= max_views:
        raise ValueError(f"{views} views: need 1..max_views={max_views} (the image-index rows)")
    if not random:
        return torch.arange(views, device=device).expand(batch, views)
    zero = torch.zeros(1, dtype=torch.long)
    others = [torch.randperm(max_views - 1, generator=generator)[: views - 1] + 1 for _ in range(batch)]
    return torch.stack([torch.cat([zero, row]) for row in others]).to(device)


class GlobalFusion(nn.Module):
    """Tokens of N views ``[B, N * P, in_dim]`` (view-major) and ``image_ids [B, N]`` → one
    ``[B, N * P, C]`` per hook (C = in_dim for hook 0, dim otherwise).

    ``blocks_name`` / ``norm_name`` name the block list and the final norm (Fast3R's official layout:
    ``dec_blocks``, ``dec_norm``), so each model keeps its checkpoint keys. ``attn_eval_scale`` replaces
    the attention scale outside training (Fast3R's ``attn_bias_for_inference_enabled``). The image-index
    table is a non-persistent float32 buffer ``image_idx_emb [max_views, dim]``, added as is (under
    autocast the residual stream is float32 from there on, as in Fast3R).
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        hooks: Sequence[int],
        max_views: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attn_eval_scale: float | None = None,
        activation_checkpointing: bool = False,
        blocks_name: str = "blocks",
        norm_name: str = "norm",
    ) -> None:
        super().__init__()
        if not all(0 <= hook <= depth for hook in hooks):
            raise ValueError(f"hooks={tuple(hooks)} must be layer indices in 0..depth={depth}")
        self.hooks = tuple(hooks)
        self.activation_checkpointing = activation_checkpointing
        self.blocks_name, self.norm_name = blocks_name, norm_name
        self.decoder_embed = nn.Linear(in_dim, dim)
        blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_eps=1e-5, attn_eval_scale=attn_eval_scale)
            for _ in range(depth)
        )
        self.add_module(blocks_name, blocks)
        self.add_module(norm_name, nn.LayerNorm(dim, eps=1e-6))
        self.register_buffer("image_idx_emb", image_index_embedding(max_views, dim), persistent=False)

    @property
    def max_views(self) -> int:
        """The number of image-index rows: ids lie in 0..max_views-1."""
        return self.image_idx_emb.shape[0]

    def forward(self, tokens: torch.Tensor, image_ids: torch.Tensor) -> list[torch.Tensor]:
        """``tokens [B, N * P, in_dim]``, ``image_ids [B, N]`` (long, < max_views) → the hooked ``[B, N * P, C]``."""
        batch, length, _ = tokens.shape
        num_views = image_ids.shape[1]
        blocks: nn.ModuleList = getattr(self, self.blocks_name)
        norm: nn.LayerNorm = getattr(self, self.norm_name)
        hooked = {0: tokens}
        x = self.decoder_embed(tokens).view(batch, num_views, length // num_views, -1)
        x = (x + self.image_idx_emb[image_ids][:, :, None]).flatten(1, 2)
        for index, block in enumerate(blocks, start=1):
            x = run_block(block, x, self.activation_checkpointing and self.training)
            if index in self.hooks:
                hooked[index] = norm(x) if index == len(blocks) else x
        return [hooked[hook] for hook in self.hooks]
