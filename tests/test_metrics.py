"""Metrics against hand-computed values on tiny inputs, and their invariances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from d3r.eval import alignment
from d3r.eval import metrics as m
from d3r.geometry import apply_sim3

# ----------------------------------------------------------------------------------------- point clouds


def test_accuracy_completion_chamfer_by_hand():
    pred = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    gt = np.array([[0.0, 0.0, 0.5]])
    acc = m.accuracy(pred, gt)
    comp = m.completion(pred, gt)
    far = np.sqrt(1.25)
    assert acc.mean == pytest.approx((0.5 + far) / 2)
    assert acc.median == pytest.approx((0.5 + far) / 2)
    assert comp.mean == pytest.approx(0.5) and comp.median == pytest.approx(0.5)
    assert m.chamfer(pred, gt) == pytest.approx(((0.5 + far) / 2 + 0.5) / 2)


def test_accuracy_median_differs_from_mean():
    gt = np.zeros((1, 3))
    pred = np.array([[1.0, 0, 0], [2.0, 0, 0], [9.0, 0, 0]])
    assert m.accuracy(pred, gt) == (4.0, 2.0)


def _plane_grid(n: int = 12) -> np.ndarray:
    xs, ys = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    return np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=-1)


def test_estimate_normals_of_a_plane_is_its_normal():
    normals = m.estimate_normals(_plane_grid())
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-9)


def test_normal_consistency_of_tilted_plane_is_cosine_of_tilt():
    gt = _plane_grid()
    pred = Rotation.from_euler("x", 30, degrees=True).apply(gt)
    nc = m.normal_consistency(pred, gt)
    cos30 = np.cos(np.radians(30))
    assert nc.nc1 == pytest.approx(cos30) and nc.nc2 == pytest.approx(cos30)
    assert nc.nc == pytest.approx(cos30) and nc.nc_median == pytest.approx(cos30)
    assert m.normal_consistency(gt, gt).nc == pytest.approx(1.0)


def test_reconstruction_metrics_match_single_metrics():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(300, 3))
    pred = gt + rng.normal(scale=0.05, size=gt.shape)
    both = m.reconstruction_metrics(pred, gt)
    assert both.accuracy == m.accuracy(pred, gt)
    assert both.completion == m.completion(pred, gt)
    assert both.chamfer == pytest.approx(m.chamfer(pred, gt))
    assert both.as_dict()["nc"] == pytest.approx(m.normal_consistency(pred, gt).nc)


def test_point_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="pred"):
        m.accuracy(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="empty"):
        m.completion(np.zeros((0, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        m.accuracy(np.full((2, 3), np.nan), np.zeros((4, 3)))


def test_scene_scale_by_hand():
    assert m.scene_scale(np.array([[0.0, 0, 0], [2, 0, 0], [4, 0, 0]])) == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------- depth


def test_abs_rel_ignores_missing_gt():
    assert m.abs_rel(np.array([2.0, 4.0, 7.0]), np.array([1.0, 4.0, 0.0])) == pytest.approx(0.5)


def test_delta_accuracy_by_hand():
    pred = np.array([1.2, 1.3, 2.0, 1.0])
    assert m.delta_accuracy(pred, np.ones(4)) == (0.5, 0.75, 0.75)
    assert m.delta_accuracy(1.0 / pred, np.ones(4)) == (0.5, 0.75, 0.75)
    assert m.delta_accuracy(np.array([-1.0, 1.0]), np.ones(2)).delta3 == 0.5


def test_rmse_by_hand():
    assert m.rmse(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == pytest.approx(np.sqrt(2.0))


def test_inlier_ratio_by_hand():
    assert m.inlier_ratio(np.array([1.02, 1.04, 0.98]), np.ones(3)) == pytest.approx(2 / 3)


def test_median_scale_per_sequence_and_per_view():
    gt = np.random.default_rng(1).uniform(1, 3, size=(2, 4, 5))
    scaled = m.median_scale(gt * 2.5, gt)
    np.testing.assert_allclose(scaled, gt)
    pred = gt * np.array([2.0, 0.5])[:, None, None]
    np.testing.assert_allclose(m.median_scale(pred, gt, per_view=True), gt)
    assert not np.allclose(m.median_scale(pred, gt), gt)


def test_depth_metrics_reject_mismatched_or_empty():
    with pytest.raises(ValueError, match="shape"):
        m.abs_rel(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="no valid depth"):
        m.rmse(np.ones(3), np.zeros(3))


# ------------------------------------------------------------------------------------------------ pose


def _line_of_cameras(n: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = np.arange(n)
    return poses


def _rotated(pose: np.ndarray, axis: str, degrees: float) -> np.ndarray:
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler(axis, degrees, degrees=True).as_matrix()
    return pose @ turn


def test_known_rotation_error_gives_expected_rra_and_auc():
    gt = _line_of_cameras(3)
    pred = gt.copy()
    pred[1] = _rotated(gt[1], "z", 10.5)  # about the line of cameras: translations stay exact
    rot_err, trans_err = m.relative_pose_errors(pred, gt)
    np.testing.assert_allclose(rot_err, [10.5, 0.0, 10.5], atol=1e-9)  # pairs (0,1), (0,2), (1,2)
    np.testing.assert_allclose(trans_err, 0.0, atol=1e-6)
    assert m.rra(rot_err, 5) == pytest.approx(1 / 3)
    assert m.rra(rot_err, 15) == 1.0
    # bins [0,1) hold 1/3 of the pairs, [10,11) the rest: cumsum is 1/3 for 10 bins, 1 for 20
    assert m.pose_auc(rot_err, trans_err, 30) == pytest.approx((10 / 3 + 20) / 30)


def test_translation_error_is_sign_invariant_and_90_for_perpendicular():
    gt = _line_of_cameras(2)
    flipped = gt.copy()
    flipped[1, 2, 3] = -1.0
    assert m.relative_pose_errors(flipped, gt)[1][0] == pytest.approx(0.0)
    sideways = gt.copy()
    sideways[1, :3, 3] = [1.0, 0.0, 0.0]
    assert m.relative_pose_errors(sideways, gt)[1][0] == pytest.approx(90.0)
    assert m.rta(np.array([1.0, 20.0]), 15) == 0.5


def test_pose_errors_are_invariant_to_a_global_similarity():
    rng = np.random.default_rng(2)
    gt = np.tile(np.eye(4), (5, 1, 1))
    gt[:, :3, :3] = Rotation.random(5, random_state=3).as_matrix()
    gt[:, :3, 3] = rng.normal(size=(5, 3))
    sim = np.eye(4)
    sim[:3, :3] = 3.0 * Rotation.random(random_state=4).as_matrix()
    sim[:3, 3] = [1.0, -2.0, 0.5]
    pred = sim @ gt
    pred[:, :3, :3] /= 3.0  # keep rotations orthonormal: a c2w under Sim(3) is (R_s R, s R_s t + t_s)
    rot_err, trans_err = m.relative_pose_errors(pred, gt)
    np.testing.assert_allclose(rot_err, 0.0, atol=1e-5)
    np.testing.assert_allclose(trans_err, 0.0, atol=1e-5)
    assert m.pose_auc(rot_err, trans_err) == pytest.approx(1.0)


def test_pose_auc_ignores_pair_order_and_view_order():
    rng = np.random.default_rng(5)
    rot_err, trans_err = rng.uniform(0, 40, size=(2, 45))
    order = rng.permutation(45)
    assert m.pose_auc(rot_err[order], trans_err[order]) == m.pose_auc(rot_err, trans_err)
    gt = _line_of_cameras(6)
    pred = np.stack([_rotated(p, "z", a) for p, a in zip(gt, rng.uniform(-20, 20, 6), strict=True)])
    views = rng.permutation(6)
    assert m.pose_auc(*m.relative_pose_errors(pred[views], gt[views])) == pytest.approx(
        m.pose_auc(*m.relative_pose_errors(pred, gt))
    )


def test_pose_auc_matches_histogram_definition_at_bin_edges():
    # an error of exactly 30 lands in numpy's closed last bin; 30.5 is outside every bin
    assert m.pose_auc(np.array([30.0]), np.array([0.0]), 30) == pytest.approx(1 / 30)
    assert m.pose_auc(np.array([30.5]), np.array([0.0]), 30) == 0.0
    assert m.pose_auc(np.array([0.0]), np.array([0.5]), 30) == 1.0


def test_pose_metrics_keys_and_bad_input():
    gt = _line_of_cameras(3)
    out = m.pose_metrics(gt, gt, thresholds=(5, 30))
    assert out["auc_30"] == 1.0 and out["rra_5"] == 1.0 and out["rot_err"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="pred_c2w"):
        m.relative_pose_errors(np.eye(4)[None], gt)


# ----------------------------------------------------------------------------------------- consistency

H, W, F = 24, 32, 40.0


def _plane_views(offsets: np.ndarray, distance: float = 5.0):
    """Views with identity rotation at ``offsets`` (x), looking at the plane z = distance."""
    n = len(offsets)
    K = np.tile(np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]]), (n, 1, 1))
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 0, 3] = offsets
    depth = np.full((n, H, W), distance)
    ys, xs = np.mgrid[0:H, 0:W]
    rays = np.stack([(xs - K[0, 0, 2]) / F, (ys - K[0, 1, 2]) / F, np.ones_like(xs, dtype=float)], axis=-1)
    points = rays[None] * depth[..., None] + poses[:, None, None, :3, 3]  # world = view 0's frame
    return depth, K, poses, points


def test_view_correspondences_find_overlap_and_reject_occlusion():
    depth, K, poses, _ = _plane_views(np.array([0.0, 0.5]))
    (i, j, flat, u, v), = m.view_correspondences(depth, K, poses, pixel_stride=1)
    assert (i, j) == (0, 1)
    # a shift of 0.5 at depth 5 is 4 pixels: the rightmost 4 columns of view 1 leave view 0
    np.testing.assert_allclose(u, flat % W + 4.0)
    assert len(flat) == H * (W - 4)
    occluded = depth.copy()
    occluded[0, :, : W // 2] = 2.0
    (_, _, flat_occ, u_occ, _), = m.view_correspondences(occluded, K, poses, pixel_stride=1)
    assert len(flat_occ) < len(flat) and (u_occ >= W // 2).all()


def test_view_consistency_zero_for_exact_and_similarity_transformed():
    depth, K, poses, points = _plane_views(np.array([0.0, 0.5, 1.0]))
    assert m.view_consistency(points, depth, K, poses) == pytest.approx(0.0, abs=1e-9)
    R = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    moved = 2.5 * points @ R.T + np.array([1.0, 2.0, 3.0])
    assert m.view_consistency(moved, depth, K, poses) == pytest.approx(0.0, abs=1e-9)


def test_view_consistency_measures_a_displaced_view():
    depth, K, poses, points = _plane_views(np.array([0.0, 0.5]))
    shifted = points.copy()
    shifted[1] += [0.0, 0.0, 0.1]
    expected = 0.1 / m.scene_scale(shifted)
    assert m.view_consistency(shifted, depth, K, poses) == pytest.approx(expected)
    far_apart = _plane_views(np.array([0.0, 50.0]))
    assert np.isnan(m.view_consistency(far_apart[3], *far_apart[:3]))


# ------------------------------------------------------------------------------------------- alignment


def _room_points(n_side: int = 24) -> np.ndarray:
    """Points on three orthogonal walls with a bump: structured enough for ICP and normals."""
    a, b = np.meshgrid(np.linspace(0, 2, n_side), np.linspace(0, 2, n_side))
    a, b = a.ravel(), b.ravel()
    bump = 0.2 * np.exp(-((a - 1) ** 2 + (b - 1) ** 2) * 4)
    walls = [np.stack([a, b, bump], -1), np.stack([a, bump, b], -1), np.stack([bump, a, b], -1)]
    return np.concatenate(walls)


def _similarity(scale: float, degrees: tuple[float, float, float], shift: tuple[float, float, float]):
    return scale, Rotation.from_euler("xyz", degrees, degrees=True).as_matrix(), np.array(shift)


def test_similarity_transformed_prediction_scores_perfectly_after_alignment():
    gt = _room_points().reshape(3, 24, 24, 3)
    s, R, t = _similarity(0.3, (20, -40, 70), (1.0, -3.0, 2.0))
    pred = apply_sim3(gt, s, R, t)
    valid = np.ones(gt.shape[:-1], bool)
    conf = 1.0 + np.random.default_rng(0).random(valid.shape)
    sim = alignment.align_to_ground_truth(pred, gt, valid, np.eye(4), conf=conf)
    aligned = apply_sim3(pred, *sim)
    np.testing.assert_allclose(aligned, gt, atol=1e-9)
    scores = m.reconstruction_metrics(aligned, gt).as_dict()
    assert scores["acc"] < 1e-9 and scores["comp"] < 1e-9
    assert scores["nc"] == pytest.approx(1.0, abs=1e-3)  # not exactly 1: the walls share their edge points


def test_confidence_weights_keep_the_top_percentile():
    conf = np.arange(1.0, 11.0)
    valid = np.ones(10, bool)
    np.testing.assert_array_equal(alignment.confidence_weights(conf, valid, 80.0), [0] * 8 + [1] * 2)
    valid[-1] = False
    assert alignment.confidence_weights(conf, valid, 0.0).tolist() == [1] * 9 + [0]


def test_median_depth_alignment_undoes_scale_and_view0_pose():
    gt_world = _room_points().reshape(3, 24, 24, 3) + np.array([0.0, 0.0, 3.0])
    c2w0 = np.eye(4)
    c2w0[:3, :3] = Rotation.from_euler("y", 30, degrees=True).as_matrix()
    c2w0[:3, 3] = [0.5, 1.0, -2.0]
    pred = 4.0 * apply_sim3(gt_world, 1.0, c2w0[:3, :3].T, -c2w0[:3, :3].T @ c2w0[:3, 3])  # GT in cam 0, ×4
    valid = np.ones(pred.shape[:-1], bool)
    sim = alignment.median_depth_alignment(pred, gt_world, valid, c2w0)
    assert sim[0] == pytest.approx(0.25)
    np.testing.assert_allclose(apply_sim3(pred, *sim), gt_world, atol=1e-9)


def test_icp_recovers_a_small_rigid_misalignment():
    gt = _room_points()
    s, R, t = _similarity(1.0, (1.0, -0.5, 0.8), (0.02, -0.01, 0.015))
    pred = apply_sim3(gt, s, R, t)
    before = m.accuracy(pred, gt).mean
    sim = alignment.icp_refine(pred, gt, threshold=0.1)
    after = m.accuracy(apply_sim3(pred, *sim), gt).mean
    assert sim[0] == 1.0
    assert after < 1e-6 < before


def test_icp_keeps_the_initial_scale_when_rigid():
    gt = _room_points()
    pred = apply_sim3(gt, 2.0, np.eye(3), np.zeros(3))
    sim = alignment.icp_refine(pred, gt, threshold=0.1, init=(0.5, np.eye(3), np.zeros(3)))
    assert sim[0] == pytest.approx(0.5)
    np.testing.assert_allclose(apply_sim3(pred, *sim), gt, atol=1e-9)


def test_alignment_rejects_bad_input():
    valid = np.ones((1, 2, 2), bool)
    with pytest.raises(ValueError, match="at least 3"):
        alignment.umeyama_alignment(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)), valid & False)
    with pytest.raises(ValueError, match="shape"):
        alignment.umeyama_alignment(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 3, 3)), valid)
    with pytest.raises(ValueError, match="unknown"):
        alignment.align_to_ground_truth(np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3)), valid, np.eye(4), method="x")


def test_normals_at_selected_points_match_the_full_estimate():
    cloud = _room_points(12)
    at = np.array([5, 17, 300])
    np.testing.assert_allclose(np.abs(m.estimate_normals(cloud, at=at)), np.abs(m.estimate_normals(cloud)[at]))


def test_sampled_queries_estimate_the_full_metrics():
    rng = np.random.default_rng(3)
    gt = _room_points(40)
    pred = gt + rng.normal(scale=0.01, size=gt.shape)
    full = m.reconstruction_metrics(pred, gt)
    sampled = m.reconstruction_metrics(pred, gt, max_queries=1500, seed=1)
    assert sampled.accuracy.mean == pytest.approx(full.accuracy.mean, rel=0.05)
    assert sampled.completion.mean == pytest.approx(full.completion.mean, rel=0.05)
    assert sampled.normals.nc == pytest.approx(full.normals.nc, abs=0.01)
    assert m.reconstruction_metrics(pred, gt, max_queries=10**9) == full
