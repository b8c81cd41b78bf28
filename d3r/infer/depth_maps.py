"""Per-view depth and confidence maps of a reconstruction, written as files and read back.

Layout of the folder :func:`write_depth_maps` writes (``STEM`` = :func:`view_file_stems`)::

    STEM.depth.png | STEM.depth.exr     z of each pixel's point in the view's recovered camera
    STEM.conf.png  | STEM.conf.exr      the model's confidence of that point
    depth_maps.json                     format, units, and for png16 the scale of every file

Every map covers all pixels of the view at its output size (``H x W``, the photo's orientation), not only
the points the confidence rule keeps: filter with the confidence map and the rule in ``cameras.json``.
Depth is in the reconstruction's unit (the model's, the same as the PLY's coordinates: not metres unless
the model is metric). A value that is not finite or is ``<= 0`` is stored as 0 and reads back as 0 = no value.

- ``png16``: 16-bit grayscale PNG, ``stored = max(1, round(value / scale))`` with one ``scale`` per file,
  ``scale = max value of the map / 65535`` (so the map uses the full 16-bit range), saved in
  ``depth_maps.json``; ``value = stored * scale``. A read-back value is within ``scale / 2`` of the written
  one (values below half a step are stored as one step, within ``scale`` of it).
- ``exr``: float32 OpenEXR, one channel ``Y``, ZIP compression: exact.

:func:`read_depth_map` decodes either kind (both ``.depth`` and ``.conf`` files).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from d3r.infer.reconstruction import Reconstruction
from d3r.scenes.datasets import read_exr_depth

logger = logging.getLogger(__name__)

DepthFormat = Literal["png16", "exr"]
INDEX_FILE = "depth_maps.json"
PNG_MAX = 65535
_SUFFIXES = {"png16": ".png", "exr": ".exr"}


def view_file_stems(names: list[str]) -> list[str]:
    """One file stem per view name, unique, with no folder part.

    The name without its extension, path separators replaced by ``__`` (``IMG_1.jpg`` → ``IMG_1``,
    ``a/b.png`` → ``a__b``); names whose stems would collide keep their extension (``a.jpg``, ``a.png``).
    """
    flat = [name.replace("\\", "/").replace("/", "__") for name in names]
    stems = [Path(name).stem or name for name in flat]
    counts = Counter(stems)
    stems = [name if counts[stem] > 1 else stem for stem, name in zip(stems, flat, strict=True)]
    if len(set(stems)) != len(stems):
        raise ValueError(f"view names are not unique: {sorted(n for n, c in Counter(stems).items() if c > 1)}")
    return stems


def _valid(values: np.ndarray) -> np.ndarray:
    """``values [H, W]`` → float32 copy with every value that is not finite or is ``<= 0`` set to 0."""
    values = np.asarray(values, dtype=np.float32)
    return np.where(np.isfinite(values) & (values > 0), values, np.float32(0)).astype(np.float32)


def _write_png16(path: Path, values: np.ndarray) -> float:
    """Write ``values [H, W]`` (0 = no value) as a 16-bit PNG; returns the scale (``value = stored * scale``)."""
    top = float(values.max(initial=0.0))
    scale = top / PNG_MAX if top > 0 else 1.0
    stored = np.where(values > 0, np.clip(np.rint(values / scale), 1, PNG_MAX), 0).astype(np.uint16)
    Image.fromarray(stored).save(path, format="PNG")
    return scale


def _write_exr(path: Path, values: np.ndarray) -> None:
    """Write ``values [H, W]`` float32 as a one-channel (``Y``) ZIP-compressed OpenEXR file."""
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"Y": np.ascontiguousarray(values, dtype=np.float32)}).write(str(path))


def write_depth_maps(folder: Path, rec: Reconstruction, fmt: DepthFormat) -> None:
    """Write every view's depth and confidence map into ``folder`` (created if missing) and the index
    ``depth_maps.json``; see the module docstring for the files, their scale and precision."""
    if fmt not in _SUFFIXES:
        raise ValueError(f"depth map format must be one of {sorted(_SUFFIXES)}, got {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = _SUFFIXES[fmt]
    entries = []
    for stem, view in zip(view_file_stems([v.name for v in rec.views]), rec.views, strict=True):
        width, height = view.size
        entry = {"name": view.name, "width": width, "height": height}
        for kind, values in (("depth", view.depth), ("conf", view.conf)):
            path = folder / f"{stem}.{kind}{suffix}"
            values = _valid(values)
            if fmt == "png16":
                entry[kind] = {"file": path.name, "scale": _write_png16(path, values)}
            else:
                _write_exr(path, values)
                entry[kind] = {"file": path.name}
        entries.append(entry)
    index = {
        "format": fmt,
        "model": rec.model,
        "depth": "z in the view's recovered camera (OpenCV: z forward), in the reconstruction's unit",
        "conf": "the model's native confidence (higher = surer)",
        "no_value": 0,
        "encoding": ("value = stored_uint16 * scale; |error| <= scale / 2" if fmt == "png16"
                     else "float32 OpenEXR, channel Y"),
        "views": entries,
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    logger.info("wrote %d depth and confidence maps (%s) to %s", 2 * len(entries), fmt, folder)


def read_depth_map(path: Path) -> np.ndarray:
    """Decode a map :func:`write_depth_maps` wrote (``.png`` with its folder's ``depth_maps.json``, or ``.exr``).

    Returns:
        ``[H, W]`` float32 values, 0 = no value.
    """
    path = Path(path)
    if path.suffix.lower() == ".exr":
        return read_exr_depth(str(path))
    index = json.loads((path.parent / INDEX_FILE).read_text())
    for entry in index["views"]:
        for kind in ("depth", "conf"):
            if entry[kind]["file"] == path.name:
                with Image.open(path) as image:
                    stored = np.asarray(image, dtype=np.float64)
                return (stored * entry[kind]["scale"]).astype(np.float32)
    raise ValueError(f"{path.name} is not listed in {path.parent / INDEX_FILE}")
