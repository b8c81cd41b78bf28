"""The request and response of the served student (``mlflow models serve``, see :mod:`d3r.registry`).

A request's ``inputs`` hold exactly one of:

- ``images_b64``: one sample of N views, a list of N base64-encoded PNG, JPEG or WebP files. All views
  must have one size (W x H, after EXIF orientation); views of different sizes are refused, naming two
  of them. The views are resized and centre-cropped as d3r's preprocessing does
  (:func:`d3r.scenes.preprocess.preprocess_views`): long side scaled to ``long_side``, then each side
  cut down to a multiple of the student's patch, so the outputs are ``[1, N, H', W', ...]`` with
  ``(W', H') = target_size(W, H, long_side, patch)`` (640x480 → 224x168 at long side 224, patch 14).
  The files are checked against d3r's image limits first (``scenes.max_pixels``, ``max_aspect_ratio``,
  ``max_upscale`` at their defaults) and decoded by d3r's one image reader
  (:func:`d3r.scenes.images.read_image`: any mode, EXIF orientation applied).
- ``images``: integers 0..255 ``[B, N, 3, H, W]`` (uint8 in-process; nested lists over JSON), H and W
  multiples of the student's patch; the outputs keep that size.

A request holds at most ``max_views`` views in all (B x N). Anything else raises :class:`BadRequest`, an
``MlflowException`` with ``INVALID_PARAMETER_VALUE`` that the scoring server answers with HTTP 400 and its
message (and a ``ValueError``, for in-process callers).

:func:`cameras` adds what ``params: {"poses": true}`` asks for: one focal per sample from view 0's
global points, its intrinsics per view and camera-to-world poses in view 0's frame
(:func:`d3r.geometry.estimate_poses`, PnP-RANSAC as Fast3R does).
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image, UnidentifiedImageError

from d3r.config import ScenesConfig
from d3r.geometry import centred_K, estimate_poses
from d3r.scenes.errors import InputFileError
from d3r.scenes.folders import load_image_view
from d3r.scenes.limits import check_upscale, header_size_within_limits
from d3r.scenes.preprocess import preprocess_views, target_size
from d3r.scenes.records import View

ARRAY_KEY = "images"
B64_KEY = "images_b64"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what a served image file may be (PIL decodes nothing else here)
DEFAULT_LONG_SIDE = ScenesConfig().long_side
DEFAULT_MAX_VIEWS = 32


class BadRequest(MlflowException, ValueError):
    """A payload the served student refuses; the scoring server answers it with HTTP 400 and this message."""

    def __init__(self, message: str):
        super().__init__(f"d3r student: {message}", error_code=INVALID_PARAMETER_VALUE)


@dataclass(frozen=True)
class ServingLimits:
    """What one request may hold and how its image files are fitted.

    Attributes:
        patch_size: the student's patch; output sides are multiples of it.
        long_side: image files are resized so their long side is about this many pixels.
        max_views: most views in one request (B x N).
        scenes: the image limits (``max_pixels``, ``max_aspect_ratio``, ``max_upscale``).
    """

    patch_size: int
    long_side: int = DEFAULT_LONG_SIDE
    max_views: int = DEFAULT_MAX_VIEWS
    scenes: ScenesConfig = field(default_factory=ScenesConfig)

    def check_views(self, count: int) -> None:
        if count < 1:
            raise BadRequest("a request needs at least one view")
        if count > self.max_views:
            raise BadRequest(f"{count} views in one request, more than this model's max_views={self.max_views}")


def request_images(model_input: Any, limits: ServingLimits) -> np.ndarray:
    """The request's images as uint8 ``[B, N, 3, H, W]`` (see the module docstring).

    Raises:
        BadRequest: for a missing or ambiguous key, a wrong shape or dtype, too many views, sizes that do
            not fit the patch, or an image file that cannot be used (naming the view and the reason).
    """
    keys = sorted(map(str, model_input)) if isinstance(model_input, dict) else None
    if keys is None or (ARRAY_KEY in keys) == (B64_KEY in keys):
        found = keys if keys is not None else type(model_input).__name__
        raise BadRequest(f"expected inputs with exactly one of {B64_KEY!r} (a list of N base64 image files) or "
                         f"{ARRAY_KEY!r} (integers 0..255 [B, N, 3, H, W]), got {found}")
    if ARRAY_KEY in keys:
        return _array_images(model_input[ARRAY_KEY], limits)
    return _file_images(model_input[B64_KEY], limits)[None]


def _array_images(value: Any, limits: ServingLimits) -> np.ndarray:
    images = np.asarray(value)
    if images.ndim != 5 or images.shape[2] != 3:
        raise BadRequest(f"{ARRAY_KEY!r} must be [B, N, 3, H, W], got shape {list(images.shape)}")
    if images.dtype != np.uint8:
        if images.dtype.kind not in "iu":
            raise BadRequest(f"{ARRAY_KEY!r} must be integers 0..255 (uint8), got {images.dtype}")
        if images.size and (images.min() < 0 or images.max() > 255):
            raise BadRequest(f"{ARRAY_KEY!r} must be integers 0..255, got values {images.min()}..{images.max()}")
    batch, views, _, height, width = images.shape
    limits.check_views(batch * views)
    patch = limits.patch_size
    if height < patch or width < patch or height % patch or width % patch:
        raise BadRequest(f"{ARRAY_KEY!r}: H and W must each be a multiple of the patch size {patch}, got HxW "
                         f"{height}x{width} (or send {B64_KEY!r}: image files are fitted to the patch)")
    return images.astype(np.uint8, copy=False)


def _strings(value: Any) -> list[str]:
    strings = np.asarray(value)
    if strings.ndim != 1 or strings.dtype.kind not in "UO" or not all(isinstance(s, str) for s in strings.tolist()):
        raise BadRequest(f"{B64_KEY!r} must be a list of N base64 strings (one sample of N views), "
                         f"got {strings.dtype} of shape {list(strings.shape)}")
    return strings.tolist()


def _decode_base64(text: str, name: str) -> tuple[bytes, str]:
    """The file's bytes and its format (one of :data:`IMAGE_FORMATS`), from its header only."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII
        raise BadRequest(f"{name} is not valid base64 ({exc})") from None
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as image:
            return raw, image.format
    except Image.DecompressionBombError as exc:
        raise BadRequest(f"{name}: more pixels than PIL opens, a decompression bomb? ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadRequest(f"{name} is not a {', '.join(IMAGE_FORMATS)} image file ({len(raw)} bytes)") from None


def _file_images(value: Any, limits: ServingLimits) -> np.ndarray:
    """uint8 ``[N, 3, H', W']`` from N base64 image files of one size (see the module docstring).

    Each file is written to a temporary folder so that d3r's one image reader and its limits apply.
    """
    strings = _strings(value)
    limits.check_views(len(strings))
    with tempfile.TemporaryDirectory(prefix="d3r-serving-") as folder:
        views, sizes = [], []
        for index, text in enumerate(strings):
            name = f"{B64_KEY}[{index}]"
            raw, image_format = _decode_base64(text, name)
            path = Path(folder) / f"view_{index:04d}.{image_format.lower()}"
            path.write_bytes(raw)
            view = View(name=name, path=str(path), loader=load_image_view)
            sizes.append(_checked(partial(header_size_within_limits, view, limits.scenes), name))
            views.append(view)
        if len(set(sizes)) > 1:
            other = next(i for i, size in enumerate(sizes) if size != sizes[0])
            raise BadRequest(f"all views of a sample must have one size: {B64_KEY}[0] is {sizes[0][0]}x"
                             f"{sizes[0][1]}, {B64_KEY}[{other}] is {sizes[other][0]}x{sizes[other][1]} "
                             "(W x H, EXIF orientation applied)")
        try:
            target = target_size(*sizes[0], limits.long_side, limits.patch_size)
            check_upscale(f"{B64_KEY}[0]", sizes[0], target, limits.scenes)
        except ValueError as exc:  # ImageLimitError too
            raise BadRequest(str(exc)) from None
        loaded = [_checked(view.load, view.name) for view in views]
    fitted = preprocess_views(loaded, limits.long_side, limits.patch_size)
    return np.stack([view.image.transpose(2, 0, 1) for view in fitted])


def _checked(read: Callable[[], Any], name: str) -> Any:
    """``read()``; a bad image file becomes a :class:`BadRequest` naming the view ``name`` and the reason."""
    try:
        return read()
    except InputFileError as exc:
        raise BadRequest(f"{name}: {exc.reason}") from None


def cameras(pts3d_global: np.ndarray, conf_global: np.ndarray) -> dict[str, np.ndarray]:
    """Cameras recovered from global pointmaps ``[B, N, H, W, 3]`` and confidences ``[B, N, H, W]``.

    Returns:
        ``focal`` float64 ``[B]`` (pixels, one per sample), ``intrinsics`` float64 ``[B, N, 3, 3]`` (principal
        point at the image centre), ``poses`` float64 ``[B, N, 4, 4]`` camera-to-world in view 0's frame.

    Raises:
        BadRequest: when a sample's pointmaps hold no point to recover a focal from.
    """
    batch, views, height, width = conf_global.shape
    focals, poses = np.zeros(batch), np.zeros((batch, views, 4, 4))
    for b in range(batch):
        try:
            poses[b], focals[b] = estimate_poses(pts3d_global[b], conf_global[b])
        except ValueError as exc:
            raise BadRequest(f"cannot recover the cameras of sample {b}: {exc}") from None
    intrinsics = np.stack([np.tile(centred_K(focal, width, height), (views, 1, 1)) for focal in focals])
    return {"focal": focals, "intrinsics": intrinsics, "poses": poses}
