"""Quarter turns of a view: the pixels turned 90° clockwise, and the camera rolled with them, exactly.

A view whose orientation differs from its sample's is turned, never cropped to the other orientation
(see :func:`d3r.scenes.preprocess.fit_sample`). One clockwise quarter turn of an ``H x W`` image gives a
``W x H`` image with ``new[i, j] = old[H - 1 - j, i]``: pixel ``(u, v)`` moves to ``(H - 1 - v, u)``
(pixel centres at integers). The camera rolls by -90° about its optical axis: a point at ``(x, y, z)`` in
the old camera frame is at ``(-y, x, z)`` in the new one (``R_TURN``), so

- intrinsics: ``K' = P K R_TURNᵀ`` with ``P`` the pixel map above (exact, skew included);
- camera-to-world pose: ``pose' = pose · diag(R_TURNᵀ, 1)`` (the world does not move);
- depth (z) is unchanged; the depth map turns with the pixels (no resampling).

:func:`unturn_map`, :func:`unturn_points` and :func:`unturn_camera` bring a model's outputs for a turned view back
to the photo's orientation (pixel grid, camera-frame coordinates, and the camera).
"""

from __future__ import annotations

import numpy as np

from d3r.scenes.records import View

R_TURN = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
"""Old camera coordinates → coordinates in the camera after one clockwise quarter turn of the image."""


def turn_map(values: np.ndarray, turns: int = 1) -> np.ndarray:
    """``[H, W, ...]`` per-pixel values turned ``turns`` quarter turns clockwise (``[W, H, ...]`` for an odd count)."""
    return np.ascontiguousarray(np.rot90(values, k=-turns, axes=(0, 1)))


def unturn_map(values: np.ndarray, turns: int) -> np.ndarray:
    """Undo :func:`turn_map`: ``[H', W', ...]`` values of a view turned ``turns`` times, in the photo's orientation."""
    return turn_map(values, -turns)


def unturn_points(points: np.ndarray, turns: int) -> np.ndarray:
    """``[..., 3]`` coordinates in the turned camera's frame → the photo camera's frame (same shape)."""
    rotation = np.linalg.matrix_power(R_TURN.T, turns % 4)
    return np.asarray(points) @ rotation.T


def turned_intrinsics(K: np.ndarray, height: int) -> np.ndarray:
    """``[3, 3]`` intrinsics after one clockwise quarter turn of an image ``height`` pixels high."""
    pixels = np.array([[0.0, -1.0, height - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return pixels @ np.asarray(K, dtype=np.float64) @ R_TURN.T


def turned_pose(pose: np.ndarray) -> np.ndarray:
    """``[4, 4]`` camera-to-world pose of the camera after one clockwise quarter turn of its image."""
    roll = np.eye(4)
    roll[:3, :3] = R_TURN.T
    return np.asarray(pose, dtype=np.float64) @ roll


def turn_view(view: View) -> View:
    """A loaded view turned one quarter turn clockwise: image, depth, K and pose (whichever are known)."""
    height = view.image.shape[0]
    return view.with_(
        image=turn_map(view.image),
        depth=None if view.depth is None else turn_map(view.depth),
        K=None if view.K is None else turned_intrinsics(view.K, height),
        pose=None if view.pose is None else turned_pose(view.pose),
    )


def unturn_camera(K: np.ndarray, pose: np.ndarray, size: tuple[int, int], turns: int) -> tuple[np.ndarray, np.ndarray]:
    """Undo ``turns`` clockwise quarter turns of a camera: ``[3, 3]`` K and ``[4, 4]`` camera-to-world pose of the
    turned view (of (W, H) ``size``) → those of the photo's camera (as many more turns as complete a full circle)."""
    K, pose = np.asarray(K, dtype=np.float64), np.asarray(pose, dtype=np.float64)
    width, height = size
    for _ in range(-turns % 4):
        K, pose = turned_intrinsics(K, height), turned_pose(pose)
        width, height = height, width
    return K, pose
