"""The ``oracle`` teacher: ground-truth depth and poses shaped like a real teacher's output.

For sources with exact geometry (synthetic rooms first) it returns Fast3R's four maps with a
confidence that means something, so that a confidence-aware loss has something to exploit:

- **clean** pixels: the true points with small multiplicative depth noise (``noise``, scaled up
  where confidence is low); confidence ``1 + CONF_SCALE · q`` with quality
  ``q = 1 / (1 + z / z_median) · 1 / (1 + edge / EDGE_REF)``, where ``z_median`` is the sample's
  median depth and ``edge`` the relative depth discontinuity at the pixel (:func:`depth_edges`):
  high on near, smooth surfaces, lower with distance and at depth edges;
- **blobs** (``corrupt_blobs`` discs per view): points displaced by strong 3D noise;
- **edge bleeding** (``corrupt_edge_bleed``): pixels next to depth discontinuities moved along
  their rays to a random mix of the nearby foreground and background depths ("flying pixels");
- **a scale-shifted view** (each view but view 0 with probability ``corrupt_scale_view_prob``):
  its global points are scaled about its camera centre, so that view sits too near or too far.

Corrupted pixels keep ``1 + (clean confidence - 1) · factor`` with a small factor per corruption
(multiplied when several hit), so they are always above 1 and below their clean value. Pixels
without depth (depth 0 or non-finite: nothing was hit) get points (0, 0, 0) in both heads and
confidence exactly 1; they are never marked corrupted.

Blobs and edge bleeding affect both heads (the global map is the local one moved into view 0's
frame); the scale shift affects only the global head. Randomness is drawn from a generator seeded
by ``seed`` and a hash of the sample's depth, K and poses: the same sample always gets the same
corruptions, different samples get different ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from d3r.config import TeacherConfig
from d3r.geometry import depth_to_points, pixel_grid, transform_points
from d3r.teachers.base import OUTPUT_KEYS, DeviceKind, register_teacher

ORACLE_VERSION = 1

CONF_SCALE = 30.0  # confidence of a smooth surface at zero distance is 1 + CONF_SCALE
EDGE_REF = 0.05  # edge strength (see depth_edges) that halves the quality
NOISE_QUALITY_REF = 0.5  # quality at which the relative depth noise std equals ``noise``
NOISE_MAX_GAIN = 20.0  # cap on how much low quality amplifies the noise

BLOB_RADIUS = (0.06, 0.15)  # fraction of min(H, W)
BLOB_DISPLACEMENT = 0.1  # per-axis displacement std, relative to depth
BLOB_CONF_FACTOR = 0.05

EDGE_BLEED_THRESHOLD = 0.1  # edge strength above which a pixel bleeds
EDGE_BLEED_WINDOW = 5  # pixels of the neighbourhood the bled depth mixes
EDGE_CONF_FACTOR = 0.1

SCALE_SHIFT_RANGE = (1.15, 1.4)  # the scale or its inverse, chosen at random
SCALE_CONF_FACTOR = 0.2


@dataclass(frozen=True)
class OracleParams:
    """How the oracle degrades ground truth (see the module docstring)."""

    noise: float = 0.002
    corrupt_blobs: int = 2
    corrupt_edge_bleed: bool = True
    corrupt_scale_view_prob: float = 0.1

    @classmethod
    def from_config(cls, config: TeacherConfig) -> OracleParams:
        return cls(
            noise=config.noise,
            corrupt_blobs=config.corrupt_blobs,
            corrupt_edge_bleed=config.corrupt_edge_bleed,
            corrupt_scale_view_prob=config.corrupt_scale_view_prob,
        )


def _neighbourhood_range(depth: np.ndarray, valid: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per view, the min and max valid depth in each ``size x size`` window: ``[N, H, W]`` each."""
    footprint = (1, size, size)
    lowest = ndimage.minimum_filter(np.where(valid, depth, np.inf), size=footprint, mode="nearest")
    highest = ndimage.maximum_filter(np.where(valid, depth, 0.0), size=footprint, mode="nearest")
    return np.where(valid, lowest, 0.0), np.where(valid, highest, 0.0)


def depth_edges(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` edge strength: ``z · max(|∂²(1/z)/∂u²|, |∂²(1/z)/∂v²|)``, 0 where invalid.

    Inverse depth is affine in the pixel coordinates on any plane, so its second differences vanish
    on planes, are small at creases and about the relative depth jump at discontinuities (both
    sides). Pixels without depth count as infinitely far (inverse depth 0), so silhouettes against
    them are edges too. Second differences are taken as 0 on the image border.
    """
    inverse = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0)
    curvature = np.zeros(depth.shape)
    for axis in (-1, -2):
        second = np.abs(np.diff(inverse, n=2, axis=axis))
        inner = [slice(None)] * depth.ndim
        inner[axis] = slice(1, -1)
        curvature[tuple(inner)] = np.maximum(curvature[tuple(inner)], second)
    return np.where(valid, depth * curvature, 0.0)


def _clean_quality(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` quality in (0, 1]: lower with distance and at depth edges; 0 where invalid."""
    median = float(np.median(depth[valid]))
    quality = 1.0 / (1.0 + depth / median) / (1.0 + depth_edges(depth, valid) / EDGE_REF)
    return np.where(valid, quality, 0.0)


def _blob_masks(shape: tuple[int, int, int], count: int, rng: np.random.Generator) -> np.ndarray:
    """``[N, H, W]`` bool: ``count`` random discs per view."""
    num_views, height, width = shape
    uv = pixel_grid(height, width)
    masks = np.zeros(shape, dtype=bool)
    for view in range(num_views):
        for _ in range(count):
            centre = rng.uniform([0, 0], [width - 1, height - 1])
            radius = max(2.0, rng.uniform(*BLOB_RADIUS) * min(height, width))
            masks[view] |= np.linalg.norm(uv - centre, axis=-1) <= radius
    return masks


def _bleed_edges(depth: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, bled_depth)``: pixels at depth discontinuities and a random mix of their neighbourhood's
    nearest and farthest depth (``[N, H, W]`` each; ``bled_depth`` is only meaningful under ``mask``)."""
    lowest, highest = _neighbourhood_range(depth, valid, EDGE_BLEED_WINDOW)
    mask = valid & (depth_edges(depth, valid) > EDGE_BLEED_THRESHOLD)
    return mask, lowest + rng.uniform(size=depth.shape) * (highest - lowest)


def _scale_shift_views(
    glob: np.ndarray, centres: np.ndarray, probability: float, rng: np.random.Generator
) -> np.ndarray:
    """Scale some views' global points ``[N, H, W, 3]`` in place about their camera ``centres [N, 3]``.

    Each view but view 0 is shifted with ``probability``. Returns the ``[N]`` bool mask of shifted views.
    """
    shifted = np.zeros(len(glob), dtype=bool)
    for view in range(1, len(glob)):
        if rng.uniform() < probability:
            scale = rng.uniform(*SCALE_SHIFT_RANGE) ** rng.choice([-1.0, 1.0])
            glob[view] = centres[view] + scale * (glob[view] - centres[view])
            shifted[view] = True
    return shifted


def oracle_outputs(
    depth: np.ndarray, K: np.ndarray, poses: np.ndarray, params: OracleParams, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One sample's teacher maps from ground truth, and where they were corrupted.

    Args:
        depth: ``[N, H, W]`` z-depth in metres (0 or non-finite = nothing hit).
        K: ``[N, 3, 3]`` intrinsics.
        poses: ``[N, 4, 4]`` camera-to-world.
        params: noise and corruption settings.
        rng: the source of all randomness.

    Returns:
        ``(outputs, corrupted)``: ``outputs`` has the four keys of ``OUTPUT_KEYS`` as float32 arrays
        (``pts3d_* [N, H, W, 3]``, ``conf_* [N, H, W]``); ``corrupted`` maps ``"global"`` and
        ``"local"`` to ``[N, H, W]`` bool masks of pixels whose points in that head are corrupted.

    Raises:
        ValueError: on mismatched shapes or a sample without any valid depth.
    """
    depth, K, poses = (np.asarray(a, dtype=np.float64) for a in (depth, K, poses))
    num_views = len(depth) if depth.ndim == 3 else -1
    if K.shape != (num_views, 3, 3) or poses.shape != (num_views, 4, 4):
        raise ValueError(
            "oracle: expected depth [N, H, W], K [N, 3, 3], poses [N, 4, 4]; "
            f"got {depth.shape}, {K.shape}, {poses.shape}"
        )
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise ValueError("oracle: the sample has no pixel with depth > 0")
    depth = np.where(valid, depth, 0.0)
    quality = _clean_quality(depth, valid)
    conf_factor = np.ones(depth.shape)

    gain = NOISE_QUALITY_REF / np.maximum(quality, NOISE_QUALITY_REF / NOISE_MAX_GAIN)
    noisy_depth = depth * (1.0 + params.noise * gain * rng.standard_normal(depth.shape))

    bled = np.zeros(depth.shape, dtype=bool)
    if params.corrupt_edge_bleed:
        bled, bled_depth = _bleed_edges(depth, valid, rng)
        noisy_depth = np.where(bled, bled_depth, noisy_depth)
        conf_factor[bled] *= EDGE_CONF_FACTOR

    local = depth_to_points(noisy_depth, K)
    blobs = _blob_masks(depth.shape, params.corrupt_blobs, rng) & valid
    local[blobs] += BLOB_DISPLACEMENT * depth[blobs, None] * rng.standard_normal((int(blobs.sum()), 3))
    conf_factor[blobs] *= BLOB_CONF_FACTOR

    relative = np.linalg.inv(poses[0]) @ poses
    glob = transform_points(relative, local)
    shifted = _scale_shift_views(glob, relative[:, :3, 3], params.corrupt_scale_view_prob, rng)
    conf_global_factor = conf_factor * np.where(shifted, SCALE_CONF_FACTOR, 1.0)[:, None, None]

    clean_conf = 1.0 + CONF_SCALE * quality
    outputs = {
        "pts3d_global": np.where(valid[..., None], glob, 0.0),
        "conf_global": np.where(valid, 1.0 + (clean_conf - 1.0) * conf_global_factor, 1.0),
        "pts3d_local": np.where(valid[..., None], local, 0.0),
        "conf_local": np.where(valid, 1.0 + (clean_conf - 1.0) * conf_factor, 1.0),
    }
    corrupted_local = bled | blobs
    return (
        {key: value.astype(np.float32) for key, value in outputs.items()},
        {"global": corrupted_local | (shifted[:, None, None] & valid), "local": corrupted_local},
    )


def sample_generator(seed: int, depth: np.ndarray, K: np.ndarray, poses: np.ndarray) -> np.random.Generator:
    """A generator determined by ``seed`` and the sample's content (its depth, K and poses)."""
    digest = hashlib.sha256()
    for array in (depth, K, poses):
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return np.random.default_rng([seed, int.from_bytes(digest.digest()[:8], "little")])


class OracleTeacher:
    """Teacher protocol over :func:`oracle_outputs`; needs depth, K and poses with every batch."""

    name = "oracle"
    needs_ground_truth = True
    patch_size = 1

    def __init__(self, params: OracleParams, seed: int = 0) -> None:
        self.params = params
        self.seed = seed

    @property
    def fingerprint(self) -> dict[str, Any]:
        return _fingerprint(self.params, self.seed)

    def predict(
        self,
        images: torch.Tensor,
        *,
        depth: torch.Tensor | None = None,
        K: torch.Tensor | None = None,
        poses: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``images [B, N, 3, H, W]`` (shape only) with ``depth [B, N, H, W]``, ``K [B, N, 3, 3]`` and
        ``poses [B, N, 4, 4]`` (c2w) → the four float32 maps of ``d3r.teachers.base``."""
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"oracle: expected images [B, N, 3, H, W], got {tuple(images.shape)}")
        batch, views, _, height, width = images.shape
        expected = {"depth": (batch, views, height, width), "K": (batch, views, 3, 3), "poses": (batch, views, 4, 4)}
        given = {"depth": depth, "K": K, "poses": poses}
        for field, shape in expected.items():
            if given[field] is None:
                raise ValueError(f"oracle: {field} is required (the oracle teacher needs ground truth)")
            if tuple(given[field].shape) != shape:
                raise ValueError(f"oracle: expected {field} of shape {list(shape)}, got {list(given[field].shape)}")
        arrays = {field: given[field].detach().cpu().double().numpy() for field in expected}
        samples = []
        for b in range(batch):
            sample = [arrays[field][b] for field in expected]
            outputs, _ = oracle_outputs(*sample, self.params, sample_generator(self.seed, *sample))
            samples.append(outputs)
        return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in OUTPUT_KEYS}


def _fingerprint(params: OracleParams, seed: int) -> dict[str, Any]:
    return {"name": OracleTeacher.name, "version": ORACLE_VERSION, "seed": seed, **asdict(params)}


def oracle_fingerprint(config: TeacherConfig, checkpoint_sha256: str | None, device_kind: DeviceKind) -> dict[str, Any]:
    """The oracle's fingerprint from config: it has no weights, and computes in float64 NumPy on any device."""
    return _fingerprint(OracleParams.from_config(config), config.seed)


@register_teacher("oracle", fingerprint=oracle_fingerprint)
def build_oracle(config: TeacherConfig, *, checkpoint_sha256: str | None = None) -> OracleTeacher:
    """The oracle (``checkpoint_sha256`` is ignored: it has no weights)."""
    return OracleTeacher(OracleParams.from_config(config), seed=config.seed)
