"""Bringing a prediction into the ground truth's frame and scale before pointmap metrics.

Three pieces, as the evaluation protocols use them (``shared/reference/teachers.md`` C.1):

- :func:`umeyama_alignment`: a weighted Sim(3) from predicted to GT points on *pixel
  correspondences* (Fast3R: weights = pixels at or above the 85th confidence percentile; π³:
  all valid pixels). The fit itself is :func:`d3r.geometry.umeyama_sim3`.
- :func:`median_depth_alignment`: the Spann3R/CUT3R ``Regr3D_t_ScaleShiftInv(gt_scale=True)``
  protocol: median-z shift, rescale to GT scale, then into the world with view 0's GT pose.
- :func:`icp_refine`: point-to-point ICP (nearest neighbours on a ``cKDTree`` within a threshold,
  then a Umeyama rigid or Sim(3) update), as Spann3R/CUT3R/π³ run with Open3D after aligning.

Every function returns a Sim(3) ``(s, R, t)`` mapping prediction points ``p`` to ``s R p + t``;
apply it with :func:`d3r.geometry.apply_sim3`.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from d3r.eval.metrics import scene_scale
from d3r.geometry import Sim3, apply_sim3, transform_points, umeyama_sim3

log = logging.getLogger(__name__)

AlignmentMethod = Literal["umeyama", "median"]


def _check_pair(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gt, valid = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64), np.asarray(valid, bool)
    if pred.shape != gt.shape or pred.shape[-1:] != (3,) or valid.shape != pred.shape[:-1]:
        raise ValueError(
            f"alignment: expected pred and gt [..., 3] of one shape and valid [...], "
            f"got {pred.shape}, {gt.shape}, {valid.shape}"
        )
    valid = valid & np.isfinite(pred).all(-1) & np.isfinite(gt).all(-1)
    if np.count_nonzero(valid) < 3:
        raise ValueError(f"alignment: need at least 3 valid pixel correspondences, got {np.count_nonzero(valid)}")
    return pred, gt, valid


def confidence_weights(conf: np.ndarray, valid: np.ndarray, percentile: float) -> np.ndarray:
    """Binary weights ``[...]``: 1 where ``conf`` is at or above its ``percentile``-th percentile over ``valid``.

    Fast3R's evaluation aligns on the pixels at or above the 85th global-confidence percentile;
    ``percentile=0`` keeps every valid pixel (π³).
    """
    conf, valid = np.asarray(conf, dtype=np.float64), np.asarray(valid, dtype=bool)
    if not valid.any():
        raise ValueError("confidence_weights: no valid pixels")
    return (valid & (conf >= np.percentile(conf[valid], percentile))).astype(np.float64)


def umeyama_alignment(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True
) -> Sim3:
    """Weighted Sim(3) (or rigid) fit of predicted to GT points on pixel correspondences.

    Args:
        pred: ``[N, H, W, 3]`` predicted points (any frame, any scale).
        gt: ``[N, H, W, 3]`` GT points of the same pixels, in the world frame.
        valid: ``[N, H, W]`` pixels with GT (and a finite prediction).
        weights: ``[N, H, W]`` non-negative weights (e.g. :func:`confidence_weights`); None = uniform.
        with_scale: fit a scale (Sim(3)); else rigid.
    """
    pred, gt, valid = _check_pair(pred, gt, valid)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[valid]
    return umeyama_sim3(pred[valid], gt[valid], w, with_scale=with_scale)


def median_depth_alignment(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, gt_c2w0: np.ndarray) -> Sim3:
    """The Spann3R/CUT3R median-depth shift + GT-scale protocol, as one Sim(3) into the GT world.

    What is implemented (DUSt3R's ``Regr3D_ShiftInv`` then ``Regr3D_ScaleInv(gt_scale=True)``,
    used by Spann3R's and CUT3R's ``eval.py``), with both point sets in view 0's camera frame:

    1. GT points are moved into view 0's GT camera frame: ``g = inv(c2w_0) X``.
    2. Shift: subtract the joint median depth over all valid pixels of all views from z,
       ``z_g = median(g_z)`` and ``z_p = median(p_z)``.
    3. Scale: ``σ = median ‖q − median(q)‖`` of each shifted cloud (DUSt3R's
       ``get_joint_pointcloud_center_scale``); the prediction is multiplied by ``σ_g / σ_p``.
    4. Both clouds are put back at GT depth (``+ z_g``) and into the world with view 0's GT pose.

    The result maps ``p`` to ``c2w_0 (s (p − z_p e_z) + z_g e_z)`` with ``s = σ_g / σ_p``.

    Args:
        pred: ``[N, H, W, 3]`` predicted points in view 0's (predicted) camera frame.
        gt: ``[N, H, W, 3]`` GT world points.
        valid: ``[N, H, W]``.
        gt_c2w0: ``[4, 4]`` view 0's GT camera-to-world pose.
    """
    pred, gt, valid = _check_pair(pred, gt, valid)
    c2w0 = np.asarray(gt_c2w0, dtype=np.float64)
    gt_cam0 = transform_points(np.linalg.inv(c2w0), gt[valid])
    pred_cam0 = pred[valid]
    z_gt, z_pred = np.median(gt_cam0[:, 2]), np.median(pred_cam0[:, 2])
    shift = np.array([0.0, 0.0, 1.0])
    scale_pred = scene_scale(pred_cam0 - z_pred * shift)
    if scale_pred <= 0:
        raise ValueError("median_depth_alignment: the prediction has zero spread; the scale is undefined")
    s = scene_scale(gt_cam0 - z_gt * shift) / scale_pred
    R = c2w0[:3, :3]
    t = R @ ((z_gt - s * z_pred) * shift) + c2w0[:3, 3]
    return float(s), R.copy(), t


def compose_sim3(outer: Sim3, inner: Sim3) -> Sim3:
    """``outer ∘ inner``: first ``inner``, then ``outer``."""
    s_o, R_o, t_o = outer
    s_i, R_i, t_i = inner
    return s_o * s_i, R_o @ R_i, s_o * R_o @ t_i + t_o


IDENTITY: Sim3 = (1.0, np.eye(3), np.zeros(3))


def icp_refine(
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float,
    init: Sim3 = IDENTITY,
    max_iterations: int = 30,
    with_scale: bool = False,
    tolerance: float = 1e-6,
) -> Sim3:
    """Point-to-point ICP: refine ``init`` so that ``src`` moved by it fits ``dst``.

    Each iteration matches every moved source point to its nearest ``dst`` point (``cKDTree``),
    keeps pairs closer than ``threshold``, fits a rigid (or Sim(3)) update with
    :func:`d3r.geometry.umeyama_sim3` and composes it onto the estimate. Stops after
    ``max_iterations`` (Open3D's default 30) or when both the inlier fraction and the inlier RMSE
    change by less than ``tolerance`` relative (Open3D's ``ICPConvergenceCriteria`` defaults), or
    when fewer than 3 pairs are within the threshold (then the last estimate is kept, with a warning).

    Args:
        src: ``[M, 3]`` source points (the prediction).
        dst: ``[K, 3]`` target points (the ground truth).
        threshold: maximum correspondence distance (0.1 m in the protocols; 100 for DTU's mm).
        init: the starting Sim(3) (e.g. from :func:`umeyama_alignment`).
        with_scale: let ICP also refine the scale (the protocols use rigid ICP).

    Returns:
        the refined Sim(3) from ``src`` to ``dst``.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if threshold <= 0:
        raise ValueError(f"icp_refine: threshold must be positive, got {threshold}")
    tree = cKDTree(dst)
    current = init
    previous: tuple[float, float] | None = None
    for iteration in range(max_iterations):
        moved = apply_sim3(src, *current)
        distances, indices = tree.query(moved, k=1, distance_upper_bound=threshold, workers=-1)
        matched = np.isfinite(distances)
        if np.count_nonzero(matched) < 3:
            log.warning("icp_refine: %d pairs within %.3g at iteration %d; stopping", matched.sum(), threshold,
                        iteration)
            break
        fitness, inlier_rmse = matched.mean(), float(np.sqrt(np.mean(distances[matched] ** 2)))
        if previous is not None and _converged(previous, (fitness, inlier_rmse), tolerance):
            break
        previous = (fitness, inlier_rmse)
        update = umeyama_sim3(moved[matched], dst[indices[matched]], with_scale=with_scale)
        current = compose_sim3(update, current)
    return current


def _converged(previous: tuple[float, float], current: tuple[float, float], tolerance: float) -> bool:
    return all(abs(c - p) <= tolerance * max(abs(p), 1e-12) for p, c in zip(previous, current, strict=True))


def align_to_ground_truth(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    gt_c2w0: np.ndarray,
    conf: np.ndarray | None = None,
    method: AlignmentMethod = "umeyama",
    conf_percentile: float = 85.0,
    icp_threshold: float | None = None,
) -> Sim3:
    """The evaluation's alignment: ``method`` on pixel correspondences, then optional rigid ICP.

    Args:
        pred: ``[N, H, W, 3]`` predicted global points (view 0's frame).
        gt: ``[N, H, W, 3]`` GT world points. valid: ``[N, H, W]`` pixels with GT.
        gt_c2w0: ``[4, 4]`` view 0's GT pose (used by ``median``).
        conf: ``[N, H, W]`` predicted confidence, weighting ``umeyama`` by ``conf_percentile``
            (None: uniform weights over valid pixels).
        method: ``"umeyama"`` (Fast3R/π³) or ``"median"`` (Spann3R/CUT3R).
        icp_threshold: run :func:`icp_refine` with this threshold on the valid points (None: no ICP).
    """
    pred, gt, valid = _check_pair(pred, gt, valid)
    if method == "umeyama":
        weights = None if conf is None else confidence_weights(conf, valid, conf_percentile)
        sim = umeyama_alignment(pred, gt, valid, weights)
    elif method == "median":
        sim = median_depth_alignment(pred, gt, valid, gt_c2w0)
    else:
        raise ValueError(f"alignment method {method!r} is unknown; use 'umeyama' or 'median'")
    if icp_threshold is not None:
        sim = icp_refine(pred[valid], gt[valid], icp_threshold, init=sim)
    return sim
