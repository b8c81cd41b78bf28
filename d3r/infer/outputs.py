"""The output folder of ``d3r reconstruct``: what goes in it, and the rule that keeps d3r from writing over
anything it did not make.

Layout of OUT_DIR::

    points.ply          coloured points the confidence rule keeps (binary PLY)
    scene.glb           those points and one frustum per camera (glTF binary)
    sparse/0/*.bin      COLMAP model: cameras, images (poses), points3D with colours
    images/             the images the COLMAP model refers to (at the output size)
    cameras.json        intrinsics and poses of every view
    depth/              per-view depth and confidence maps (16-bit PNG or EXR) and their scales
    viewer.html         the one-file viewer (``--html``)
    timings.json        seconds per stage
    reconstruct.json    d3r's mark on the folder: input, model, confidence rule, options, skipped inputs, and
                        the files this run wrote

Safety: OUT_DIR is created when missing; an existing folder must be empty or hold ``reconstruct.json`` of a
previous run. Before writing, only the files that run listed are removed (and then folders it left empty); any
other file in the folder is left alone. Anything else is refused (:class:`~d3r.config.ConfigError`, exit 2)
before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d3r.config import ConfigError
from d3r.infer.inputs import Skipped
from d3r.infer.reconstruction import Reconstruction
from d3r.infer.timings import timed
from d3r.scenes.errors import display_path

if TYPE_CHECKING:
    from d3r.infer.reconstruct import ReconstructOptions

logger = logging.getLogger(__name__)

MARKER = "reconstruct.json"
FORMAT = "d3r.reconstruct"


def _marker(out_dir: Path) -> dict[str, Any] | None:
    """The previous run's ``reconstruct.json`` in ``out_dir``, or None when there is none (or it is not ours)."""
    try:
        document = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("format") == FORMAT else None


def check_out_dir(out_dir: Path) -> None:
    """``out_dir`` may be written: missing, an empty folder, or a previous ``d3r reconstruct`` output.

    Raises:
        ConfigError: naming ``-o OUT_DIR`` otherwise.
    """
    where = f"-o {display_path(out_dir)}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{where}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and _marker(out_dir) is None:
        raise ConfigError(f"{where}: folder is not empty and is not a d3r reconstruct output (no {MARKER}); d3r "
                          "writes only into a new or empty folder, or over its own previous output")


def _inside(out_dir: Path, relative: str) -> Path | None:
    """``out_dir / relative`` when it stays inside ``out_dir``, else None."""
    if Path(relative).is_absolute():
        return None
    path = out_dir / relative
    return path if path.resolve().is_relative_to(out_dir.resolve()) else None


def _remove_previous(out_dir: Path) -> None:
    """Remove the files the previous run listed in its marker (regular files inside ``out_dir`` only), then the
    folders they leave empty."""
    previous = _marker(out_dir)
    if previous is None:
        return
    folders = set()
    for relative in previous.get("files", []):
        path = _inside(out_dir, str(relative))
        if path is not None and path.is_file() and not path.is_symlink():
            path.unlink()
            folders.update(p for p in path.parents if p != out_dir and out_dir in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    (out_dir / MARKER).unlink()


def _files(out_dir: Path) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), out_dir)
            for root, _, names in os.walk(out_dir) for name in names}


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


def write_outputs(out_dir: Path, rec: Reconstruction, skipped: list[Skipped], options: ReconstructOptions,
                  source: dict[str, str]) -> None:
    """Write every output of ``rec`` into ``out_dir`` (checked by :func:`check_out_dir`), timing each writer into
    ``rec.timings``; then ``timings.json`` and ``reconstruct.json``.

    Args:
        options: the run's options (``depth_format``, ``html``; all recorded in ``reconstruct.json``).
        source: ``{"input": ..., "model": ...}`` as given, recorded in ``reconstruct.json``.
    """
    from d3r.infer.viewer import write_viewer
    from d3r.infer.writers import write_cameras_json, write_colmap, write_depth_maps, write_glb, write_ply

    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous(out_dir)
    before = _files(out_dir)
    _write_json(out_dir / MARKER, {"format": FORMAT, "complete": False, **source, "files": []})
    writers = [
        ("write_ply", lambda: write_ply(out_dir / "points.ply", rec)),
        ("write_glb", lambda: write_glb(out_dir / "scene.glb", rec)),
        ("write_colmap", lambda: write_colmap(out_dir, rec)),
        ("write_cameras_json", lambda: write_cameras_json(out_dir / "cameras.json", rec)),
        ("write_depth", lambda: write_depth_maps(out_dir / "depth", rec, options.depth_format)),
    ]
    if options.html:
        writers.append(("write_viewer", lambda: write_viewer(out_dir / "viewer.html", rec)))
    for stage, write in writers:
        with timed(rec.timings, stage):
            write()
    (width, height), views = rec.views[0].size, len(rec.views)
    _write_json(out_dir / "timings.json", {
        "views": views, "size": [width, height], "model": rec.model,
        "seconds": {stage: round(seconds, 4) for stage, seconds in rec.timings.items()},
        "total": round(sum(rec.timings.values()), 4),
    })
    written = sorted(_files(out_dir) - before - {MARKER})
    _write_json(out_dir / MARKER, {
        "format": FORMAT, "complete": True, **source, "views": [v.name for v in rec.views],
        "confidence_rule": rec.confidence_rule, "options": dataclasses.asdict(options),
        "skipped": [dataclasses.asdict(s) for s in skipped], "files": written,
    })
    logger.info("wrote %d files to %s (%.1f s in all)", len(written), out_dir, sum(rec.timings.values()))
