"""Cameras and per-view maps of a reconstruction, from a model's global pointmap, in each photo's orientation.

The model sees all views at one size and orientation (views of the other orientation turned a quarter turn:
:mod:`d3r.scenes.rotation`). Poses and one focal are recovered there as Fast3R does
(:func:`d3r.geometry.estimate_poses`: focal from view 0's points, principal point at the centre, PnP-RANSAC per
view; a view whose PnP fails keeps the identity pose, with a warning). Then every view is turned back to its
photo's orientation: its maps (:func:`~d3r.scenes.rotation.unturn_map`), its K and pose
(:func:`~d3r.scenes.rotation.unturn_camera`), and the world itself when view 0 was turned (world = the first
photo's camera). Depth is the z of each view's points in its recovered camera (0 where the model gave no point:
confidence at its floor 1, or not finite).
"""

from __future__ import annotations

import logging

import numpy as np

from d3r.geometry import centred_K, estimate_focal, estimate_poses, transform_points
from d3r.infer.confidence import CONF_FLOOR, keep_mask
from d3r.infer.reconstruction import ViewReconstruction
from d3r.scenes.records import View
from d3r.scenes.rotation import unturn_camera, unturn_map, unturn_points

logger = logging.getLogger(__name__)

FALLBACK_FOCAL = 1.0
"""Focal length in units of the long side (a 53° field of view along it) when view 0's points give none."""


def recover_focal(points: np.ndarray, conf: np.ndarray) -> float:
    """One focal length (pixels) from view 0's points ``[H, W, 3]`` and confidence ``[H, W]``
    (:func:`d3r.geometry.estimate_focal`), or :data:`FALLBACK_FOCAL` times the long side, with a warning, when no
    point lies in front of the camera (an untrained model)."""
    try:
        return estimate_focal(points, conf)
    except ValueError as exc:
        focal = FALLBACK_FOCAL * max(points.shape[:2])
        logger.warning("camera recovery: %s; using focal %.1f px (a 53° field of view)", exc, focal)
        return focal


def view_reconstructions(views: list[View], pts_global: np.ndarray, conf: np.ndarray,
                         threshold: float) -> list[ViewReconstruction]:
    """One :class:`ViewReconstruction` per view, in its photo's orientation.

    Args:
        views: the model's input views (``image`` ``[H, W, 3]``, ``meta["turns"]``).
        pts_global: ``[N, H, W, 3]`` points in view 0's (model-orientation) camera frame.
        conf: ``[N, H, W]`` their confidence.
        threshold: the confidence rule's threshold (see :func:`d3r.infer.confidence.keep_mask`).
    """
    c2w, focal = estimate_poses(pts_global, conf, focal=recover_focal(pts_global[0], conf[0]))
    height, width = conf.shape[1:]
    K = centred_K(focal, width, height)
    world_turns = views[0].meta.get("turns", 0)
    to_world = np.eye(4)
    to_world[:3, :3] = unturn_points(np.eye(3), world_turns).T  # model world (view 0 as the model saw it) → photo's
    out = []
    for view, points, confidence, pose in zip(views, pts_global, conf, c2w, strict=True):
        turns = view.meta.get("turns", 0)
        photo_K, photo_pose = unturn_camera(K, to_world @ pose, (width, height), turns)
        points = unturn_points(unturn_map(points, turns), world_turns).astype(np.float32)
        confidence = unturn_map(confidence, turns)
        depth = transform_points(np.linalg.inv(photo_pose), points)[..., 2]
        depth = np.where(np.isfinite(depth) & (confidence > CONF_FLOOR), depth, 0.0).astype(np.float32)
        out.append(ViewReconstruction(
            name=view.name, image=unturn_map(view.image, turns), points=points, conf=confidence.astype(np.float32),
            depth=depth, K=photo_K, c2w=photo_pose, keep=keep_mask(confidence, points, threshold),
        ))
    return out
