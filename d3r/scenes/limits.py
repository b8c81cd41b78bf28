"""Limits on input images, checked on each view's size from its header before any pixel is decoded or resampled.

A view is refused when its image has more than ``scenes.max_pixels`` pixels (decompression bombs),
a long side more than ``scenes.max_aspect_ratio`` times its short side, or would be enlarged by
more than ``scenes.max_upscale`` to cover the sample's size (after any quarter turn: see
:func:`d3r.scenes.preprocess.fit_sample`). Every view of a sample is checked, not only the first. A
refusal is an :class:`ImageLimitError` naming the file, the limit and its value: the sample becomes a
``load`` reject (never a warning; an enlargement within the limit is reported by ``d3r scenes list``
and the cache job's summary).
"""

from __future__ import annotations

from pathlib import Path

from d3r.config import ScenesConfig
from d3r.scenes.errors import InputFileError
from d3r.scenes.images import ImageTooLargeError, is_image_file, read_image_size, read_stored_size
from d3r.scenes.records import View


class ImageLimitError(InputFileError):
    """An input image over one of the ``scenes.max_*`` limits: names the file, the limit and its value."""


def header_size(view: View) -> tuple[int, int] | None:
    """(W, H) of ``view`` without decoding pixels: its loaded image, its image file's header (as
    :func:`~d3r.scenes.images.read_image` would return it), or its reader's ``meta["size"]``; None
    when none of them tells.

    Raises:
        ImageReadError: for an image file that cannot be opened.
    """
    if view.image is not None:
        return view.size
    if view.path is not None and is_image_file(view.path):
        return read_image_size(view.path)
    if "size" in view.meta:
        width, height = view.meta["size"]
        return int(width), int(height)
    return None


def _check_pixels_and_aspect(where: str, size: tuple[int, int], config: ScenesConfig) -> None:
    width, height = size
    pixels = width * height
    if pixels > config.max_pixels:
        raise ImageLimitError(where, f"{width}x{height} is {pixels} pixels, more than "
                                     f"scenes.max_pixels={config.max_pixels} (a decompression bomb?)")
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > config.max_aspect_ratio:
        raise ImageLimitError(where, f"{width}x{height} has aspect ratio {ratio:.1f}, more than "
                                     f"scenes.max_aspect_ratio={config.max_aspect_ratio}")


def header_size_within_limits(view: View, config: ScenesConfig) -> tuple[int, int] | None:
    """(W, H) of ``view`` from its header (:func:`header_size`), checked against ``scenes.max_pixels`` and
    ``scenes.max_aspect_ratio``; None for a view that no header describes (a generated one). Reads no pixels
    of an image file: its stored size is checked before anything else is read.

    Raises:
        ImageLimitError: naming the file and the limit it is over.
        ImageReadError: for an image file that cannot be opened.
    """
    where = view.path or view.name
    try:
        if view.image is None and view.path is not None and is_image_file(view.path):
            _check_pixels_and_aspect(where, read_stored_size(view.path), config)
        size = header_size(view)
    except ImageTooLargeError as exc:
        raise ImageLimitError(where, f"{exc.reason}; d3r reads at most scenes.max_pixels={config.max_pixels} "
                                     "pixels (a decompression bomb?)") from None
    if size is not None:
        _check_pixels_and_aspect(where, size, config)
    return size


def image_size_within_limits(view: View, config: ScenesConfig) -> tuple[View, tuple[int, int]]:
    """``view`` and its (W, H), checked against ``scenes.max_pixels`` and ``scenes.max_aspect_ratio``.

    The size comes from the header (:func:`header_size_within_limits`). A view that no header describes
    (a generated one) is loaded to learn its size, and returned loaded so it is not made twice.

    Raises:
        ImageLimitError: naming the file and the limit it is over.
        ImageReadError: for an image file that cannot be opened.
    """
    size = header_size_within_limits(view, config)
    if size is None:
        view = view.load()
        size = view.size
        _check_pixels_and_aspect(view.path or view.name, size, config)
    return view, size


def check_upscale(where: str | Path, size: tuple[int, int], target: tuple[int, int], config: ScenesConfig) -> None:
    """An image of ``size`` (W, H) must not be enlarged by more than ``scenes.max_upscale`` to cover ``target`` (W, H).

    Raises:
        ImageLimitError: naming the file, the factor and the limit.
    """
    (width, height), (target_width, target_height) = size, target
    scale = max(target_width / width, target_height / height)
    if scale > config.max_upscale:
        raise ImageLimitError(where, f"{width}x{height} would be enlarged {scale:.1f}x to cover {target_width}x"
                                     f"{target_height}, more than scenes.max_upscale={config.max_upscale}")
