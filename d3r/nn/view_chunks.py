"""Per-view heads over many views, a bounded number at a time (memory only: the result is the same)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

TokensToMaps = Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]


def run_in_view_chunks(
    heads: TokensToMaps, tokens: Sequence[torch.Tensor], chunk: int | None
) -> dict[str, torch.Tensor]:
    """``heads`` on hooked token sets ``[V, P, C_k]``, ``chunk`` views at a time (None: all V at once);
    each output ``[V, ...]`` is the chunks' outputs concatenated over views."""
    views = tokens[0].shape[0]
    if chunk is None or views <= chunk:
        return heads(list(tokens))
    parts = [heads([t[start : start + chunk] for t in tokens]) for start in range(0, views, chunk)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
