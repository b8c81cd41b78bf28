"""The fusion transformer: global self-attention over the tokens of all views of a sample.

As Fast3R's decoder (teachers.md A.3), at student size: ``decoder_embed`` Linear(enc_dim → dim), the
sin/cos image-index embedding added once to every token of a view, ``depth`` Blocks without RoPE
(LayerNorm eps 1e-5), and ``norm`` (eps 1e-6) on the last block's output. The attention scale is
``head_dim ** -0.5`` in training and inference alike (the official student switches to a larger
scale at inference only, a train/test mismatch we do not copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from d3r.nn import Block, image_index_embedding
from d3r.student.encoder import run_block


class FusionTransformer(nn.Module):
    """Encoder tokens of N views ``[B, N * P, enc_dim]`` → the tokens at ``hooks``.

    Hook 0 is the input (encoder output, before ``decoder_embed``); hook k ≥ 1 is block k's output,
    the last block's after ``norm``.
    """

    def __init__(
        self,
        enc_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        hooks: Sequence[int],
        max_views: int,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.hooks = tuple(hooks)
        self.activation_checkpointing = activation_checkpointing
        self.decoder_embed = nn.Linear(enc_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, num_heads, norm_eps=1e-5) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.register_buffer("image_idx_emb", image_index_embedding(max_views, dim), persistent=False)

    @property
    def max_views(self) -> int:
        return self.image_idx_emb.shape[0]

    def forward(self, tokens: torch.Tensor, image_ids: torch.Tensor) -> list[torch.Tensor]:
        """``tokens [B, N * P, enc_dim]``, ``image_ids [B, N]`` (int, < max_views) → one
        ``[B, N * P, C]`` per hook (C = enc_dim for hook 0, dim otherwise)."""
        batch, length, _ = tokens.shape
        num_views = image_ids.shape[1]
        outputs = {0: tokens}
        x = self.decoder_embed(tokens).view(batch, num_views, length // num_views, -1)
        x = (x + self.image_idx_emb[image_ids].to(x.dtype)[:, :, None]).flatten(1, 2)
        for index, block in enumerate(self.blocks, start=1):
            x = run_block(block, x, self.activation_checkpointing and self.training)
            if index in self.hooks:
                outputs[index] = self.norm(x) if index == len(self.blocks) else x
        return [outputs[hook] for hook in self.hooks]

    def sequential_ids(self, batch: int, num_views: int, device: torch.device) -> torch.Tensor:
        """``[B, N]`` ids 0..N-1 (inference, and the default)."""
        return torch.arange(num_views, device=device).expand(batch, num_views)

    def random_ids(self, batch: int, num_views: int, device: torch.device) -> torch.Tensor:
        """``[B, N]``: view 0 (the reference) gets 0, the others distinct random ids in 1..max_views-1,
        drawn per sample from the global RNG (the paper's training-time ids)."""
        others = torch.rand(batch, self.max_views - 1, device=device).argsort(dim=1)[:, : num_views - 1] + 1
        return torch.cat([torch.zeros(batch, 1, dtype=others.dtype, device=device), others], dim=1)
