"""The ``Teacher`` protocol and the registry that builds one from config by name.

A teacher maps a batch of samples to four maps, all float32 torch tensors on the CPU:

- ``pts3d_global`` ``[B, N, H, W, 3]``: points in view 0's camera frame (OpenCV);
- ``conf_global`` ``[B, N, H, W]``: confidence ≥ 1 (Fast3R's native ``1 + exp(x)``);
- ``pts3d_local`` ``[B, N, H, W, 3]``: each view's points in its own camera frame;
- ``conf_local`` ``[B, N, H, W]``.

Inputs are ``images`` uint8 ``[B, N, 3, H, W]`` (RGB, 0..255; each teacher normalises them its own
way) and, for teachers that need ground truth (``needs_ground_truth``), ``depth [B, N, H, W]``
(metres, 0 = none), ``K [B, N, 3, 3]`` and ``poses [B, N, 4, 4]`` (camera-to-world).

A teacher's *fingerprint* is what makes its outputs what they are (name, resolved model config, weights
sha256, dtype, device kind, view-id mode, ...). :func:`teacher_fingerprint` computes it from the config
alone, without loading weights or touching a GPU, so a job's driver can key its cache before any worker
builds the teacher; a built teacher's ``.fingerprint`` calls the same function, so the two cannot drift.
The *device kind* is ``cpu`` or ``cuda`` (:func:`resolve_device`): not the GPU model, so one job's actors on
different GPU models share one fingerprint (their outputs differ at rounding level, as two CPUs' do).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from d3r.config import TeacherConfig

OUTPUT_KEYS = ("pts3d_global", "conf_global", "pts3d_local", "conf_local")

DeviceKind = Literal["cpu", "cuda"]
DEVICE_KINDS: tuple[DeviceKind, ...] = ("cpu", "cuda")


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


def resolve_device(device: str, cuda_available: bool) -> DeviceKind:
    """Where a teacher with ``teacher.device=device`` runs: ``cuda`` for ``cuda``, and for ``auto`` when CUDA is
    available there (a Ray actor given GPUs; a job's driver passes whether its actors get any), else ``cpu``."""
    return "cuda" if device == "cuda" or (device == "auto" and cuda_available) else "cpu"


def resolve_dtype(dtype: str, kind: DeviceKind) -> str:
    """The precision a teacher computes in: ``teacher.dtype`` on ``cuda``; on ``cpu`` always ``float32``."""
    return dtype if kind == "cuda" else "float32"


TeacherFactory = Callable[[TeacherConfig], Teacher]
FingerprintFunction = Callable[[TeacherConfig, str | None, DeviceKind], dict[str, Any]]
"""``(config, checkpoint_sha256, device_kind)`` → the fingerprint a teacher built from ``config`` would have."""
_REGISTRY: dict[str, Callable[..., Teacher]] = {}
_FINGERPRINTS: dict[str, FingerprintFunction] = {}


def register_teacher(name: str, fingerprint: FingerprintFunction) -> Callable[[Callable[..., Teacher]],
                                                                              Callable[..., Teacher]]:
    """Register a factory ``(config, *, checkpoint_sha256=None) -> Teacher`` and its no-weights ``fingerprint``."""
    def decorator(factory: Callable[..., Teacher]) -> Callable[..., Teacher]:
        _REGISTRY[name] = factory
        _FINGERPRINTS[name] = fingerprint
        return factory

    return decorator


def _known_teacher(config: TeacherConfig) -> None:
    # Importing registers them; kept lazy so `d3r.teachers.base` stays light.
    from d3r.teachers import fast3r, oracle  # noqa: F401

    if config.name not in _REGISTRY:
        raise ValueError(f"teacher.name={config.name!r} is unknown; known: {sorted(_REGISTRY)}")


def build_teacher(config: TeacherConfig, *, checkpoint_sha256: str | None = None) -> Teacher:
    """Build the teacher named by ``config.name`` (weights are loaded and checked here). ``checkpoint_sha256``:
    the checkpoint's hash when the caller already has it (:func:`teacher_fingerprint`'s ``weights_sha256``,
    computed once per job), so that each worker does not read a multi-GB file twice; else hashed here."""
    _known_teacher(config)
    return _REGISTRY[config.name](config, checkpoint_sha256=checkpoint_sha256)


def teacher_fingerprint(config: TeacherConfig, *, checkpoint_sha256: str | None = None,
                        device_kind: DeviceKind = "cpu") -> dict[str, Any]:
    """The ``.fingerprint`` that ``build_teacher(config)`` would have where it runs on ``device_kind``, computed
    without loading weights or touching a GPU (reads at most a checkpoint's ``config.json``, and streams the
    checkpoint file once to hash it unless ``checkpoint_sha256`` is given).

    Raises:
        ConfigError: naming ``teacher.checkpoint`` or ``teacher.preset`` (as ``build_teacher`` would).
        ValueError: for an unknown teacher name or device kind.
    """
    if device_kind not in DEVICE_KINDS:
        raise ValueError(f"device kind {device_kind!r} is unknown; known: {list(DEVICE_KINDS)}")
    _known_teacher(config)
    return _FINGERPRINTS[config.name](config, checkpoint_sha256, device_kind)
