"""Robust image reading: any common file mode in, RGB uint8 out, EXIF orientation applied.

Mode rules (one of each):
- EXIF orientation is applied first, so pixels come out the way a viewer shows them.
- Alpha (RGBA, LA, PA, palette with transparency) is composited onto **white**: a transparent
  background becomes white, never black, and the alpha channel is dropped.
- 16-bit (``I;16*``) and 32-bit integer (``I``) images are taken as 16-bit values and scaled to
  8 bit by ``round(v / 257)`` (so 65535 → 255); float (``F``) images are taken as [0, 1].
- Grayscale, bilevel, palette, CMYK, YCbCr, LAB and HSV are converted to RGB by PIL.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from d3r.scenes.errors import InputFileError, os_error_reason

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageReadError(InputFileError):
    """An image file that cannot be read: names the file and what was wrong."""


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than PIL's decompression-bomb guard lets it open."""


def is_image_file(path: str | Path) -> bool:
    """True when the suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``frame_2`` < ``frame_10``; case-insensitive."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def _open(path: Path) -> Image.Image:
    """The image at ``path``, opened lazily: PIL reads the header (mode, size) and decodes nothing yet."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ImageReadError(path, os_error_reason(exc)) from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(path, "not a regular file")
    if info.st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(path, f"more pixels than PIL opens ({exc})") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
    except OSError as exc:
        reason = os_error_reason(exc) if exc.errno is not None else f"corrupt image header: {exc}"
        raise ImageReadError(path, reason) from None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 1 when the EXIF block is absent or unreadable)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1


def _png_chunks_follow_data(image: Image.Image) -> bool:
    """True when a PNG has chunks after its image data (an eXIf or text chunk there may hold the EXIF
    orientation, which PIL reads only by decoding). Walks the chunk headers, seeking over their data."""
    fp = image.fp
    position = fp.tell()
    try:
        fp.seek(len(_PNG_SIGNATURE))
        seen_data = False
        while len(header := fp.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                seen_data = True
            elif seen_data:
                return True
            fp.seek(length + 4, os.SEEK_CUR)  # the chunk's data and CRC
        return False
    finally:
        fp.seek(position)


def _header_orientation(image: Image.Image) -> int:
    """:func:`_orientation` of an image not decoded yet, decoding nothing unless the tag may sit where
    PIL reads only by decoding (a PNG with chunks after its image data: rare)."""
    if image.format == "PNG" and "exif" not in image.info and not _png_chunks_follow_data(image):
        return 1
    return _orientation(image)


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 from a PIL image of any mode (see the module docstring)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.round(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to ``[H, W, 3]`` uint8 RGB, oriented by its EXIF tag.

    Raises:
        ImageReadError: for a missing, unreadable, empty, corrupt, truncated or non-image file, or one
            that is not a regular file (a FIFO would block); ImageTooLargeError beyond PIL's
            decompression-bomb limit.
    """
    path = Path(path)
    with _open(path) as image:
        try:
            image.load()
            if _orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
            return _to_rgb_uint8(image)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(path, f"more pixels than PIL decodes ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(path, f"corrupt or truncated image data: {exc}") from None


def read_stored_size(path: str | Path) -> tuple[int, int]:
    """(W, H) as stored in the file's header, before EXIF orientation; never decodes.

    Raises:
        ImageReadError: for a missing, unreadable, empty or non-image file; ImageTooLargeError beyond
            PIL's decompression-bomb limit.
    """
    with _open(Path(path)) as image:
        return image.size


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) as :func:`read_image` would return it, from the header (no pixel decode, except for the
    rare PNG whose EXIF may follow its image data: see :func:`_header_orientation`).

    Raises:
        ImageReadError: for a missing, unreadable, empty or non-image file; ImageTooLargeError beyond
            PIL's decompression-bomb limit.
    """
    path = Path(path)
    with _open(path) as image:
        width, height = image.size
        orientation = _header_orientation(image)
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height
