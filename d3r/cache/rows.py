"""One cache row: its Arrow schema, its key, and how images and ground truth are stored in it.

A row holds one sample (N views at H x W):

| column | type | content |
|---|---|---|
| ``key`` | string | ``sample_id|fingerprint_id|codec:version`` (see :func:`cache_key`) |
| ``sample_id``, ``scene_id``, ``source``, ``split`` | string | the sample (``split`` is train/val) |
| ``view_names`` | list<string> | the N view names |
| ``N``, ``H``, ``W`` | int32 | views and stored resolution |
| ``images`` | list<binary> | each view encoded as PNG or JPEG at H x W (RGB) |
| ``gt_depth`` | large_binary, nullable | float32 little-endian ``[N, H, W]`` metres, 0 = none |
| ``gt_K`` | list<float64>, nullable | ``[N, 3, 3]`` flattened, pixels at H x W |
| ``gt_poses`` | list<float64>, nullable | ``[N, 4, 4]`` flattened camera-to-world (OpenCV) |
| ``teacher_fingerprint`` | string | :func:`d3r.teachers.base.fingerprint_id` of the teacher |
| ``teacher_fingerprint_json`` | string | the full fingerprint as JSON |
| ``codec``, ``codec_version`` | string, int32 | how the ``sup_*`` columns were encoded |
| ``sup_*`` | large_binary | the codec's columns (Lance zstd-compresses large_binary values) |

Ground-truth columns are null when the source has no such ground truth (a view without depth, K or
pose makes the whole sample's column null).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import cv2
import numpy as np
import pyarrow as pa

SUP_PREFIX = "sup_"

SAMPLE_FIELDS = (  # what the load stage knows about a sample
    pa.field("key", pa.string(), nullable=False),
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("scene_id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("split", pa.string()),
    pa.field("view_names", pa.list_(pa.string())),
    pa.field("N", pa.int32()),
    pa.field("H", pa.int32()),
    pa.field("W", pa.int32()),
    pa.field("images", pa.list_(pa.binary())),
    pa.field("gt_depth", pa.large_binary()),
    pa.field("gt_K", pa.list_(pa.float64())),
    pa.field("gt_poses", pa.list_(pa.float64())),
)
TEACHER_FIELDS = (  # what the teacher stage adds (then the codec's sup_* columns)
    pa.field("teacher_fingerprint", pa.string()),
    pa.field("teacher_fingerprint_json", pa.string()),
    pa.field("codec", pa.string()),
    pa.field("codec_version", pa.int32()),
)
BASE_FIELDS = (*SAMPLE_FIELDS, *TEACHER_FIELDS)

REJECT_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("sample_id", pa.string()),
    pa.field("scene_id", pa.string()),
    pa.field("item", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
])
"""Rejects: ``key`` is the cache key for a sample, ``<scene_id>|<item>|<stage>`` otherwise;
``stage`` is where it failed (``list``, ``load``, ``teacher``, ``encode``)."""


def cache_key(sample_id: str, fingerprint_id: str, codec: str, codec_version: int) -> str:
    """The row's identity: same sample, same teacher, same codec → same key (makes jobs resumable)."""
    return f"{sample_id}|{fingerprint_id}|{codec}:{codec_version}"


def cache_schema(sup_columns: Sequence[str]) -> pa.Schema:
    """The cache table's schema: :data:`BASE_FIELDS` then one large_binary column per codec column.

    Raises:
        ValueError: when a codec column does not start with ``sup_``.
    """
    bad = [name for name in sup_columns if not name.startswith(SUP_PREFIX)]
    if bad:
        raise ValueError(f"codec columns must start with {SUP_PREFIX!r}, got {bad}")
    return pa.schema([*BASE_FIELDS, *(pa.field(name, pa.large_binary()) for name in sorted(sup_columns))])


def encode_images(images: np.ndarray, image_format: Literal["png", "jpeg"], jpeg_quality: int = 95) -> list[bytes]:
    """``[N, H, W, 3]`` uint8 RGB → one encoded image per view."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    ext, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]) if image_format == "png" else (
        ".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    blobs = []
    for image in images:
        ok, buffer = cv2.imencode(ext, np.ascontiguousarray(image[..., ::-1]), params)
        if not ok:
            raise ValueError(f"could not encode a {list(image.shape)} image as {image_format}")
        blobs.append(buffer.tobytes())
    return blobs


def decode_images(blobs: Sequence[bytes]) -> np.ndarray:
    """Encoded views (PNG or JPEG) → ``[N, H, W, 3]`` uint8 RGB."""
    views = []
    for i, blob in enumerate(blobs):
        image = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"images[{i}]: not a decodable PNG/JPEG ({len(blob)} bytes)")
        views.append(image[..., ::-1])
    return np.ascontiguousarray(np.stack(views))


def ground_truth_columns(
    depth: np.ndarray | None, K: np.ndarray | None, poses: np.ndarray | None
) -> dict[str, Any]:
    """``depth [N, H, W]``, ``K [N, 3, 3]``, ``poses [N, 4, 4]`` (each or None) → the ``gt_*`` row values."""
    return {
        "gt_depth": None if depth is None else np.ascontiguousarray(depth, dtype="<f4").tobytes(),
        "gt_K": None if K is None else np.asarray(K, dtype=np.float64).ravel().tolist(),
        "gt_poses": None if poses is None else np.asarray(poses, dtype=np.float64).ravel().tolist(),
    }


def decode_ground_truth(row: Mapping[str, Any]) -> dict[str, np.ndarray | None]:
    """A row's ground truth: ``depth [N, H, W]`` float32, ``K [N, 3, 3]``, ``poses [N, 4, 4]`` (None when absent)."""
    n, h, w = int(row["N"]), int(row["H"]), int(row["W"])
    depth = row.get("gt_depth")
    K, poses = row.get("gt_K"), row.get("gt_poses")
    return {
        "depth": None if depth is None else np.frombuffer(depth, dtype="<f4").reshape(n, h, w).copy(),
        "K": None if K is None else np.asarray(K, dtype=np.float64).reshape(n, 3, 3),
        "poses": None if poses is None else np.asarray(poses, dtype=np.float64).reshape(n, 4, 4),
    }
