"""Fixed sin/cos embedding tables."""

from __future__ import annotations

import numpy as np
import torch


def image_index_embedding(num_rows: int, dim: int) -> torch.Tensor:
    """Sin/cos table ``[num_rows, dim]`` float32: row ``p = [sin(p * w_0..), cos(p * w_0..)]``.

    ``w_d = 10000^(-d / (dim / 2))`` for ``d = 0 .. dim/2 - 1``; computed in float64 then cast
    (Fast3R's image-index embedding, the MAE 1D sin/cos position table).
    """
    if dim % 2:
        raise ValueError(f"image_index_embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.arange(num_rows, dtype=np.float64)[:, None] * omega[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return torch.from_numpy(table.astype(np.float32))
