"""A reconstruction as one self-contained HTML page: a small WebGL point viewer with the data embedded.

The page (template ``viewer.html`` next to this module) needs no network: points, colours, confidences and
camera frustums travel inside it as base64 typed arrays, and its Content-Security-Policy forbids any fetch.
Orbit / zoom / pan with mouse or touch, point size, colour by image RGB / confidence / view, frustums on/off.
Frustums (with their "up" triangle), per-view colours, framing and subsample come from :mod:`d3r.infer.display`,
as in ``scene.glb``: a view has the same frustum and the same colour in both files.

The URL hash sets the initial view (``#azimuth=40&elevation=20&distance=1.5&size=3&color=confidence&frustums=0``;
angles in degrees, azimuth 0 and elevation 0 look along the first camera's viewing direction, distance in units of
the framing radius). When the first frame is drawn the page sets ``data-drawn="1"`` on ``<html>``.
"""

from __future__ import annotations

import base64
import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from d3r.infer.display import FRUSTUM_DEPTH, framing, frustum_segments, subsample, view_colours
from d3r.infer.reconstruction import Reconstruction

log = logging.getLogger(__name__)

DEFAULT_MAX_POINTS = 500_000
"""Points embedded at most: about 11 MB of HTML (22 bytes a point), smooth in a laptop's browser."""

_DATA_MARK = "/*D3R_DATA*/"


def _b64(array: np.ndarray) -> str:
    """Little-endian bytes of ``array`` as base64 (JS typed arrays read the platform's order, little-endian)."""
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def confidence_ranks(conf: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Each point's confidence as its rank among all points, and the confidence at every quartile.

    Ranks colour the points evenly whatever the model's confidence scale (Fast3R's ``1 + exp(x)`` is heavy-tailed).

    Returns:
        ``(rank [M] uint8 (0 lowest .. 255 highest), [q0, q25, q50, q75, q100] float)``.
    """
    if conf.size == 0:
        return np.zeros(0, np.uint8), []
    order = np.argsort(conf, kind="stable")
    rank = np.empty(conf.size, np.float64)
    rank[order] = np.arange(conf.size) / max(conf.size - 1, 1)
    quartiles = np.quantile(conf, [0.0, 0.25, 0.5, 0.75, 1.0])
    return np.round(rank * 255).astype(np.uint8), [float(q) for q in quartiles]


def frustum_lines(rec: Reconstruction, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Every view's :func:`~d3r.infer.display.frustum_segments` as end-point pairs for ``gl.LINES``.

    Returns:
        ``(xyz [V * 22, 3] float32 segment end points (11 segments a view), view_index [V * 22] uint16)``.
    """
    xyz, index = [np.zeros((0, 3))], [np.zeros(0, np.uint16)]
    for i, view in enumerate(rec.views):
        vertices, segments = frustum_segments(view, depth)
        xyz.append(vertices[segments.reshape(-1)])
        index.append(np.full(segments.size, i, np.uint16))
    return np.concatenate(xyz).astype(np.float32), np.concatenate(index)


def viewer_data(rec: Reconstruction, max_points: int = DEFAULT_MAX_POINTS) -> dict:
    """Everything the page draws, as a JSON-ready dict (arrays as base64 little-endian typed arrays).

    Keys: ``model``, ``confidence_rule``, ``kept`` (points the rule keeps), ``shown`` (points embedded),
    ``max_points``, ``views`` (names), ``view_colours`` (``[V][3]`` 0..255, :func:`~d3r.infer.display.view_colours`,
    as in ``scene.glb``), ``conf_quartiles``, ``centre``, ``radius`` (:func:`~d3r.infer.display.framing`), ``xyz``
    (Float32 ``[N*3]``), ``rgb`` (Uint8 ``[N*3]``), ``conf_rank`` (Uint8 ``[N]``), ``view`` (Uint16 ``[N]``),
    ``frustum_xyz`` (Float32 ``[V*22*3]``), ``frustum_view`` (Uint16 ``[V*22]``).
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    xyz, rgb, conf, view_index = rec.kept_points()
    kept = len(xyz)
    # Framed on all kept points, as scene.glb is: the frustums are the same in both files.
    centre, radius = framing(xyz, rec.views)
    pick = subsample(kept, max_points)
    xyz, rgb, conf, view_index = xyz[pick], rgb[pick], conf[pick], view_index[pick]
    conf_rank, quartiles = confidence_ranks(conf)
    frustum_xyz, frustum_view = frustum_lines(rec, depth=FRUSTUM_DEPTH * radius)
    return {
        "model": rec.model,
        "confidence_rule": rec.confidence_rule,
        "kept": int(kept),
        "shown": int(len(pick)),
        "max_points": int(max_points),
        "views": [v.name for v in rec.views],
        "view_colours": view_colours(len(rec.views)).tolist(),
        "conf_quartiles": quartiles,
        "centre": [float(c) for c in centre],
        "radius": float(radius),
        "xyz": _b64(xyz.astype(np.float32)),
        "rgb": _b64(rgb.astype(np.uint8)),
        "conf_rank": _b64(conf_rank),
        "view": _b64(view_index.astype(np.uint16)),
        "frustum_xyz": _b64(frustum_xyz),
        "frustum_view": _b64(frustum_view),
    }


def write_viewer(path: Path, rec: Reconstruction, max_points: int = DEFAULT_MAX_POINTS) -> None:
    """Write ``rec``'s kept points and cameras as one self-contained HTML viewer page.

    Args:
        path: the ``.html`` file to write (its folder must exist).
        rec: the reconstruction; its kept points (``rec.kept_points()``) and each view's ``K``, ``c2w``, size.
        max_points: most points embedded; more are subsampled with a fixed seed (the page says so).
    """
    data = viewer_data(rec, max_points)
    template = resources.files("d3r.infer").joinpath("viewer.html").read_text(encoding="utf-8")
    # "</" inside the JSON would end the <script> element that carries it.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    Path(path).write_text(template.replace(_DATA_MARK, payload), encoding="utf-8")
    log.info("viewer: %s (%d of %d points)", path, data["shown"], data["kept"])
