"""The student's fusion transformer: ``d3r.nn.GlobalFusion`` (Fast3R's decoder design) at student size.

Keys ``decoder_embed``, ``blocks.*``, ``norm``. The attention scale is ``head_dim ** -0.5`` in training
and inference alike (the official student switches to a larger scale at inference only, a train/test
mismatch we do not copy).
"""

from __future__ import annotations

from collections.abc import Sequence

from d3r.nn import GlobalFusion


class FusionTransformer(GlobalFusion):
    """Encoder tokens ``[B, N * P, enc_dim]`` + ``image_ids [B, N]`` → the tokens at ``hooks`` (see GlobalFusion)."""

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
        super().__init__(
            enc_dim, dim, depth, num_heads, hooks, max_views, activation_checkpointing=activation_checkpointing
        )
