import logging

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from d3r.geometry import (
    align_local_to_global,
    apply_sim3,
    depth_to_points,
    estimate_focal,
    estimate_poses,
    pixel_grid,
    pixels_to_points,
    project,
    transform_points,
    umeyama_sim3,
)
from d3r.scenes.synthetic import render_scene


def random_sim3(rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    return float(rng.uniform(0.3, 3.0)), Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3)


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(R_a.T @ R_b).as_rotvec())))


def intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    return np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])


def test_umeyama_recovers_known_transform_exactly():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    s, R, t = random_sim3(rng)
    s_hat, R_hat, t_hat = umeyama_sim3(src, apply_sim3(src, s, R, t))
    assert s_hat == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(R_hat, R, atol=1e-10)
    np.testing.assert_allclose(t_hat, t, atol=1e-10)
    assert np.linalg.det(R_hat) == pytest.approx(1.0)


def test_umeyama_with_noise_and_down_weighted_outliers():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(400, 3))
    s, R, t = random_sim3(rng)
    dst = apply_sim3(src, s, R, t) + rng.normal(scale=0.01, size=src.shape)
    dst[:80] += rng.normal(scale=5.0, size=(80, 3))
    weights = np.ones(len(src))
    weights[:80] = 1e-6
    s_hat, R_hat, t_hat = umeyama_sim3(src, dst, weights)
    assert s_hat == pytest.approx(s, rel=1e-2)
    assert rotation_error_deg(R_hat, R) < 0.5
    np.testing.assert_allclose(t_hat, t, atol=0.02)
    s_bad, R_bad, _ = umeyama_sim3(src, dst)
    assert rotation_error_deg(R_bad, R) > 1.0 or abs(s_bad - s) / s > 0.05


def test_umeyama_rigid_mode_keeps_unit_scale_and_handles_reflection_case():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(30, 3))
    _, R, t = random_sim3(rng)
    s_hat, R_hat, t_hat = umeyama_sim3(src, src @ R.T + t, with_scale=False)
    assert s_hat == 1.0
    np.testing.assert_allclose(R_hat, R, atol=1e-10)
    _, R_mirror, _ = umeyama_sim3(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(R_mirror) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("src", "weights", "message"),
    [
        (np.zeros((2, 3)), None, "at least 3 points"),
        (np.ones((5, 3)), None, "coincide"),
        (np.eye(3), np.zeros(3), "at least 3 points"),
        (np.eye(3), -np.ones(3), "non-negative"),
        (np.full((4, 3), np.nan), None, "finite"),
        (np.zeros((4, 2)), None, r"\[M, 3\]"),
    ],
)
def test_umeyama_rejects_degenerate_input(src, weights, message):
    with pytest.raises(ValueError, match=message):
        umeyama_sim3(src, src, weights)


def test_align_local_to_global_recovers_per_view_sims_despite_low_confidence_outliers():
    rng = np.random.default_rng(3)
    local = rng.normal(size=(3, 8, 10, 3)) + np.array([0, 0, 4.0])
    truth = [random_sim3(rng) for _ in range(3)]
    glob = np.stack([apply_sim3(p, *sim) for p, sim in zip(local, truth, strict=True)])
    conf = rng.uniform(5.0, 10.0, size=(3, 8, 10))
    glob[:, :3] += 10.0  # corrupted rows ...
    conf[:, :3] = 1.0  # ... that the 85th percentile leaves out
    aligned, sims = align_local_to_global(local, glob, conf)
    for (s, R, t), (s_hat, R_hat, t_hat) in zip(truth, sims, strict=True):
        assert s_hat == pytest.approx(s, rel=1e-9)
        np.testing.assert_allclose(R_hat, R, atol=1e-9)
        np.testing.assert_allclose(t_hat, t, atol=1e-9)
    np.testing.assert_allclose(aligned[:, 3:], glob[:, 3:], atol=1e-9)
    with pytest.raises(ValueError, match="conf_global"):
        align_local_to_global(local, glob, conf[:, :4])


def test_align_local_to_global_ignores_pixels_with_no_point():
    """Mostly-empty views (points (0, 0, 0), confidence 1) still align on the pixels that have points."""
    rng = np.random.default_rng(6)
    local = rng.normal(size=(1, 20, 20, 3)) + np.array([0, 0, 4.0])
    truth = random_sim3(rng)
    glob = apply_sim3(local, *truth)
    conf = rng.uniform(5.0, 10.0, size=(1, 20, 20))
    empty = np.ones((20, 20), bool)
    empty[:7, :7] = False  # 88% of the view has no point: the 85th percentile would fall among them
    local[0][empty], glob[0][empty], conf[0][empty] = 0.0, 0.0, 1.0
    _, ((s, R, t),) = align_local_to_global(local, glob, conf)
    assert s == pytest.approx(truth[0], rel=1e-9)
    np.testing.assert_allclose(R, truth[1], atol=1e-9)
    with pytest.raises(ValueError, match="no finite pixel with a point"):
        align_local_to_global(np.zeros_like(local), glob, conf)


def test_pixels_to_points_agrees_with_depth_to_points_and_projects_back():
    K = intrinsics(40.0, 12, 9)
    depth = np.random.default_rng(7).uniform(1.0, 5.0, size=(9, 12))
    v, u = np.nonzero(depth > 2.0)
    points = pixels_to_points(K, np.stack([u, v], axis=1), depth[v, u])
    np.testing.assert_allclose(points, depth_to_points(depth, K)[v, u])
    np.testing.assert_allclose(project(K, points), np.stack([u, v], axis=1), atol=1e-9)


def test_depth_points_project_and_transform_round_trip():
    K = intrinsics(40.0, 12, 9)
    depth = np.random.default_rng(4).uniform(1.0, 5.0, size=(2, 9, 12))
    points = depth_to_points(depth, K)
    np.testing.assert_allclose(points[..., 2], depth)
    np.testing.assert_allclose(project(K, points), np.broadcast_to(pixel_grid(9, 12), (2, 9, 12, 2)), atol=1e-9)
    assert not depth_to_points(np.zeros((3, 4)), K).any()
    per_view = np.stack([K, intrinsics(25.0, 12, 9)])
    np.testing.assert_allclose(depth_to_points(depth, per_view)[1], depth_to_points(depth[1], per_view[1]))
    rng = np.random.default_rng(5)
    pose_a, pose_b = np.tile(np.eye(4), (2, 1, 1))
    for pose in (pose_a, pose_b):
        _, pose[:3, :3], pose[:3, 3] = random_sim3(rng)
    moved = transform_points(np.stack([pose_a, pose_b]), points)
    np.testing.assert_allclose(moved[1], points[1] @ pose_b[:3, :3].T + pose_b[:3, 3])
    np.testing.assert_allclose(transform_points(np.linalg.inv(pose_a), moved[0]), points[0], atol=1e-12)


def room_views(size: tuple[int, int], num_views: int, index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(local points [N, H, W, 3], K [3, 3], c2w poses [N, 4, 4])`` of a synthetic room."""
    views = render_scene(index, seed=0, num_views=num_views, size=size).views
    K = views[0].K
    local = np.stack([depth_to_points(view.depth, view.K) for view in views])
    return local, K, np.stack([view.pose for view in views])


@pytest.mark.parametrize("size", [(32, 24), (24, 32)])
def test_estimate_focal_recovers_pinhole_focal(size):
    local, K, _ = room_views(size, num_views=1)
    points, focal = local[0], K[0, 0]
    assert estimate_focal(points) == pytest.approx(focal, abs=1e-6)
    height = size[1]
    wrong = np.arange(height) < 0.6 * height  # most rows look like a focal of f / 0.8, with low confidence
    noisy = points.copy()
    noisy[wrong] *= np.array([0.8, 0.8, 1.0])
    conf = np.where(wrong[:, None], 1.0, 3.0) * np.ones(size[0])
    assert estimate_focal(noisy, conf, percentile=70) == pytest.approx(focal, abs=1e-6)
    assert estimate_focal(noisy) == pytest.approx(focal / 0.8, rel=3e-3)


@pytest.mark.parametrize("index", [0, 1])
def test_estimate_poses_recovers_cameras_of_a_synthetic_room(index):
    local, K, poses = room_views((40, 30), num_views=4, index=index)
    relative = np.linalg.inv(poses[0]) @ poses
    glob = transform_points(relative, local)
    conf = np.full(local.shape[:-1], 2.0)
    estimated, focal = estimate_poses(glob, conf)
    assert focal == pytest.approx(K[0, 0], abs=1e-6)
    np.testing.assert_allclose(estimated[0], np.eye(4), atol=1e-6)
    for pose_hat, pose in zip(estimated, relative, strict=True):
        assert rotation_error_deg(pose_hat[:3, :3], pose[:3, :3]) < 0.1
        np.testing.assert_allclose(pose_hat[:3, 3], pose[:3, 3], atol=1e-3)


def test_estimate_poses_falls_back_to_identity_with_a_warning(caplog):
    glob = depth_to_points(np.ones((3, 6, 8)), intrinsics(10.0, 8, 6))
    conf = np.full((3, 6, 8), 2.0)
    conf[1] = 1.0  # nothing above the threshold in view 1
    glob[2] = 1.0  # every point of view 2 in one place: no pose explains it
    with caplog.at_level(logging.WARNING, logger="d3r.geometry"):
        poses, _ = estimate_poses(glob, conf, focal=10.0)
    np.testing.assert_array_equal(poses[1:], np.broadcast_to(np.eye(4), (2, 4, 4)))
    assert "view 1" in caplog.text and "view 2" in caplog.text
