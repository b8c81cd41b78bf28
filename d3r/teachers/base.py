"""The ``Teacher`` protocol and the registry that builds one from config by name.

A teacher maps a batch of samples to four maps, all float32 torch tensors on the CPU:

- ``pts3d_global`` ``[B, N, H, W, 3]``: points in view 0's camera frame (OpenCV);
- ``conf_global`` ``[B, N, H, W]``: confidence ≥ 1 (Fast3R's native ``1 + exp(x)``);
- ``pts3d_local`` ``[B, N, H, W, 3]``: each view's points in its own camera frame;
- ``conf_local`` ``[B, N, H, W]``.

Inputs are ``images`` uint8 ``[B, N, 3, H, W]`` (RGB, 0..255; each teacher normalises them its own
way) and, for teachers that need ground truth (``needs_ground_truth``), ``depth [B, N, H, W]``
(metres, 0 = none), ``K [B, N, 3, 3]`` and ``poses [B, N, 4, 4]`` (camera-to-world).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from d3r.config import TeacherConfig

OUTPUT_KEYS = ("pts3d_global", "conf_global", "pts3d_local", "conf_local")


@runtime_checkable
class Teacher(Protocol):
    name: str
    needs_ground_truth: bool
    patch_size: int
    """Images' H and W must be multiples of this (1: any size)."""

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What makes its outputs what they are: name, preset, weights sha256, dtype, view-id mode..."""
        ...

    def predict(
        self,
        images: torch.Tensor,
        *,
        depth: torch.Tensor | None = None,
        K: torch.Tensor | None = None,
        poses: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``images`` uint8 ``[B, N, 3, H, W]`` → the four maps documented in this module."""
        ...


def teacher_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, N, H, W, 3]`` (as views store them) → the teachers' input uint8 ``[B, N, 3, H, W]``."""
    if pixels.ndim != 5 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [B, N, H, W, 3], got {pixels.dtype} {pixels.shape}")
    return torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).contiguous()


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint (part of every cache row's key)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TeacherFactory = Callable[[TeacherConfig], Teacher]
_REGISTRY: dict[str, TeacherFactory] = {}


def register_teacher(name: str) -> Callable[[TeacherFactory], TeacherFactory]:
    def decorator(factory: TeacherFactory) -> TeacherFactory:
        _REGISTRY[name] = factory
        return factory

    return decorator


def _import_builtin_teachers() -> None:
    # Importing registers them; kept lazy so `d3r.teachers.base` stays light.
    from d3r.teachers import fast3r, oracle  # noqa: F401


def build_teacher(config: TeacherConfig) -> Teacher:
    """Build the teacher named by ``config.name`` (weights are loaded and checked here)."""
    _import_builtin_teachers()
    if config.name not in _REGISTRY:
        raise ValueError(f"teacher.name={config.name!r} is unknown; known: {sorted(_REGISTRY)}")
    return _REGISTRY[config.name](config)
