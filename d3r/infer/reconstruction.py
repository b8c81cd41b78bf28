"""What ``d3r reconstruct`` computes for a set of photos, in the photos' own orientation.

Conventions (the rest of d3r's): world = the first view's camera frame; OpenCV camera axes (x right,
y down, z forward); ``K`` at the view's output size with the centre of the first pixel at (0, 0);
poses camera-to-world. A view keeps the orientation its photo is shown in (EXIF applied): a portrait
photo among landscape ones has its own ``H x W``, so views are a list, not one stacked array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ViewReconstruction:
    """One view of a reconstruction.

    Attributes:
        name: the view's name (image file name or video frame name).
        image: ``[H, W, 3]`` uint8 RGB at the output size.
        points: ``[H, W, 3]`` float32 world points (the model's global pointmap).
        conf: ``[H, W]`` float32 the model's confidence for ``points``.
        depth: ``[H, W]`` float32 z of ``points`` in this view's recovered camera (same unit as ``points``).
        K: ``[3, 3]`` float64 recovered intrinsics at ``H x W``.
        c2w: ``[4, 4]`` float64 recovered camera-to-world pose.
        keep: ``[H, W]`` bool, the points the confidence rule keeps.
    """

    name: str
    image: np.ndarray
    points: np.ndarray
    conf: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    keep: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.image.shape[1], self.image.shape[0]


@dataclass
class Reconstruction:
    """All views of one reconstruction, the model that made it and how its points were filtered.

    Attributes:
        views: one :class:`ViewReconstruction` per input view, in input order.
        model: the model's label (``teacher``, ``student_<stem>``, ``<NAME>_<ALIAS>``).
        confidence_rule: the rule behind ``keep`` in words (e.g. ``"conf >= 2.31 (percentile 50)"``).
        timings: seconds per stage, in the order the stages ran.
    """

    views: list[ViewReconstruction]
    model: str
    confidence_rule: str
    timings: dict[str, float] = field(default_factory=dict)

    def kept_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The points the rule keeps, all views together.

        Returns:
            ``(xyz [M, 3] float32, rgb [M, 3] uint8, conf [M] float32, view_index [M] int32)``.
        """
        xyz, rgb, conf, index = [], [], [], []
        for i, view in enumerate(self.views):
            keep = view.keep & np.isfinite(view.points).all(-1)
            xyz.append(view.points[keep].astype(np.float32))
            rgb.append(view.image[keep])
            conf.append(view.conf[keep].astype(np.float32))
            index.append(np.full(int(keep.sum()), i, dtype=np.int32))
        return np.concatenate(xyz), np.concatenate(rgb), np.concatenate(conf), np.concatenate(index)
