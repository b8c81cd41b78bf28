"""How a reconstruction is shown, shared by every file that draws it (``scene.glb``, ``viewer.html``, COLMAP points).

- :func:`framing`: centre and radius of the scene (the bulk of the points and every camera centre);
- :func:`frustum_segments`: a camera as line segments (pyramid to the image corners, "up" triangle), at a depth
  of :data:`FRUSTUM_DEPTH` x the framing radius;
- :func:`view_colours`: one colour per view, the same for a view in every file;
- :func:`subsample`: the seeded uniform sample of points when a file holds at most so many.

Coordinates are d3r's world (view 0's camera frame, OpenCV axes); writers convert them where a format wants others.
"""

from __future__ import annotations

import colorsys

import numpy as np

from d3r.geometry import pixels_to_points, transform_points
from d3r.infer.reconstruction import ViewReconstruction

FRUSTUM_DEPTH = 0.1
"""A frustum's depth (its image rectangle's distance from the camera) as a fraction of the framing radius."""

SUBSAMPLE_SEED = 0
"""Seed of :func:`subsample`: the same reconstruction gives the same files."""

GOLDEN_RATIO_CONJUGATE = 0.618034
"""Hue step between consecutive views: neighbours in input order get clearly different hues."""


def framing(xyz: np.ndarray, views: list[ViewReconstruction]) -> tuple[np.ndarray, float]:
    """Centre and radius of the box holding the bulk of the points (2nd..98th percentile, robust to stray points)
    and every camera centre.

    Args:
        xyz: ``[M, 3]`` points (``M`` may be 0: then the cameras alone).
        views: the ``V >= 1`` views, whose camera centres (``c2w[:3, 3]``) the box holds.

    Returns:
        ``(centre [3] float64, radius)``: the box's middle and half its diagonal (1 when that is 0 or not finite).
    """
    parts = [np.array([view.c2w[:3, 3] for view in views], np.float64)]
    if len(xyz):
        parts.append(np.percentile(xyz, [2.0, 98.0], axis=0))
    box = np.concatenate(parts)
    lo, hi = box.min(0), box.max(0)
    radius = float(np.linalg.norm(hi - lo) / 2)
    return (lo + hi) / 2, radius if np.isfinite(radius) and radius > 0 else 1.0


def frustum_segments(view: ViewReconstruction, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """A camera's frustum as line segments in world coordinates (OpenCV axes).

    Returns:
        ``(vertices [8, 3] float64, segments [11, 2] int64)``: vertices are the apex (the camera centre), the four
        image corners at z = ``depth`` (top-left, top-right, bottom-right, bottom-left) and a triangle (two base
        points, tip) over the image's top edge marking "up"; segments index vertices (4 apex-to-corner edges,
        4 rectangle edges, 3 triangle edges).
    """
    width, height = view.size
    left, top, right, bottom = -0.5, -0.5, width - 0.5, height - 0.5  # image edges (pixel centres at integers)
    marker = 0.3 * min(width, height)
    centre_u = (width - 1) / 2
    uv = np.array([[left, top], [right, top], [right, bottom], [left, bottom],
                   [centre_u - marker / 2, top - 0.1 * marker], [centre_u + marker / 2, top - 0.1 * marker],
                   [centre_u, top - 0.6 * marker]])
    corners = pixels_to_points(view.K, uv, np.full(len(uv), depth))
    camera = np.concatenate([np.zeros((1, 3)), corners])
    segments = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1], [5, 6], [6, 7], [7, 5]])
    return transform_points(view.c2w, camera), segments


def view_colours(count: int) -> np.ndarray:
    """One colour per view in input order: hues a golden-ratio step apart (saturation 0.75, value 0.95), so
    neighbouring views differ, and every colour is bright (the viewer's background is dark).

    Returns:
        ``[count, 3]`` uint8 RGB.
    """
    rgb = [colorsys.hsv_to_rgb((i * GOLDEN_RATIO_CONJUGATE) % 1.0, 0.75, 0.95) for i in range(count)]
    return np.rint(np.array(rgb, np.float64).reshape(count, 3) * 255).astype(np.uint8)


def subsample(count: int, cap: int) -> np.ndarray:
    """Indices of the points a file holds when it holds at most ``cap``.

    Returns:
        ``[min(count, cap)]`` int64, increasing: all of ``range(count)``, or ``cap`` of them drawn uniformly without
        replacement (seed :data:`SUBSAMPLE_SEED`).
    """
    if count <= cap:
        return np.arange(count)
    return np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(count, size=cap, replace=False))
