"""The community's 3D reconstruction metrics, as pure numpy functions named after what they measure.

Definitions follow the papers' evaluation code (see ``shared/reference/teachers.md`` section C):

- pointmaps: Spann3R ``tools/eval_recon.py`` (copied by Fast3R, CUT3R and π³) — accuracy, completion,
  normal consistency; chamfer/"overall" as in the DUSt3R and VGGT DTU/ETH3D tables;
- depth: CUT3R ``eval/video_depth/tools.py::depth_evaluation`` (AbsRel, δ, RMSE, median scaling) and
  RobustMVD (DUSt3R/Fast3R multi-view depth: inlier ratio τ at 1.03);
- pose: the PoseDiffusion/VGGT convention (``evaluation/test_co3d.py``, π³ ``relpose/metric.py``):
  relative rotation and translation-direction errors over all unordered view pairs, RRA/RTA and
  mAA(30) = AUC@30 by ``calculate_auc_np``;
- consistency (ours): :func:`view_consistency`.

Ratios (δ, τ, RRA, RTA, AUC) are fractions in [0, 1]; papers print them ×100. Angles are degrees.
Distances are in the units of the inputs (metres for our synthetic rooms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from d3r.geometry import pixels_to_points, project, transform_points

NORMAL_NEIGHBOURS = 30  # Open3D estimate_normals() default (KDTreeSearchParamKNN(knn=30)), as the protocols use
_NORMAL_CHUNK = 65536  # points per PCA chunk (bounds memory to ~chunk·k·3 floats)


class MeanMedian(NamedTuple):
    mean: float
    median: float


class NormalConsistency(NamedTuple):
    """NC1 (accuracy direction), NC2 (completion direction) and NC = (NC1 + NC2) / 2, each mean and median."""

    nc1: float
    nc2: float
    nc: float
    nc1_median: float
    nc2_median: float
    nc_median: float


class DeltaAccuracy(NamedTuple):
    """Fractions of pixels with max(d̂/d, d/d̂) below 1.25, 1.25² and 1.25³."""

    delta1: float
    delta2: float
    delta3: float


# ----------------------------------------------------------------------------------------- point clouds


def _as_cloud(points: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.shape[-1:] != (3,):
        raise ValueError(f"{name}: expected points of shape [..., 3], got {array.shape}")
    cloud = array.reshape(-1, 3)
    if len(cloud) == 0:
        raise ValueError(f"{name}: the point cloud is empty")
    if not np.isfinite(cloud).all():
        raise ValueError(f"{name}: the point cloud has non-finite coordinates")
    return cloud


def nearest_neighbours(query: np.ndarray, reference: np.ndarray, tree: cKDTree | None = None) -> tuple[
    np.ndarray, np.ndarray
]:
    """For each query point, the distance to and index of its nearest reference point (cKDTree).

    Args:
        query: ``[M, 3]`` points.
        reference: ``[K, 3]`` points.
        tree: a prebuilt ``cKDTree(reference)``, to reuse across calls.

    Returns:
        distances ``[M]`` and indices ``[M]`` into ``reference``.
    """
    tree = cKDTree(reference) if tree is None else tree
    distances, indices = tree.query(query, k=1, workers=-1)
    return distances, indices


def _mean_median(values: np.ndarray) -> MeanMedian:
    return MeanMedian(float(np.mean(values)), float(np.median(values)))


def accuracy(pred: np.ndarray, gt: np.ndarray) -> MeanMedian:
    """Accuracy: for each predicted point, the distance to its nearest ground-truth point; mean and median.

    Spann3R ``tools/eval_recon.py::accuracy`` (also Fast3R ``eval/recon_metric.py``, CUT3R and π³
    ``mv_recon/utils.py``). Lower is better.

    Args:
        pred: ``[..., 3]`` predicted points (aligned to the ground truth's frame and scale).
        gt: ``[..., 3]`` ground-truth points.
    """
    distances, _ = nearest_neighbours(_as_cloud(pred, "pred"), _as_cloud(gt, "gt"))
    return _mean_median(distances)


def completion(pred: np.ndarray, gt: np.ndarray) -> MeanMedian:
    """Completion: for each ground-truth point, the distance to its nearest predicted point; mean and median.

    Spann3R ``tools/eval_recon.py::completion`` (and its copies in Fast3R, CUT3R, π³). Lower is better.

    Args:
        pred: ``[..., 3]`` predicted points (aligned).
        gt: ``[..., 3]`` ground-truth points.
    """
    distances, _ = nearest_neighbours(_as_cloud(gt, "gt"), _as_cloud(pred, "pred"))
    return _mean_median(distances)


def chamfer(pred: np.ndarray, gt: np.ndarray) -> float:
    """Chamfer distance ("Overall" in the DUSt3R/VGGT DTU and ETH3D tables) = (mean Acc + mean Comp) / 2."""
    return (accuracy(pred, gt).mean + completion(pred, gt).mean) / 2.0


def estimate_normals(
    points: np.ndarray, k: int = NORMAL_NEIGHBOURS, tree: cKDTree | None = None, at: np.ndarray | None = None
) -> np.ndarray:
    """Unoriented unit normals by PCA of each point's ``k`` nearest neighbours (the point included).

    The normal is the eigenvector of the smallest eigenvalue of the neighbourhood covariance, as
    Open3D's ``PointCloud.estimate_normals()`` with its default ``KDTreeSearchParamKNN(knn=30)``
    does; the sign is arbitrary (normal consistency takes absolute dot products).

    Args:
        points: ``[M, 3]`` points.
        k: neighbours per point (clipped to M).
        tree: a prebuilt ``cKDTree(points)``.
        at: ``[Q]`` indices of the points whose normals are wanted (default: all); the neighbours
            still come from the whole cloud.

    Returns:
        ``[Q, 3]`` (or ``[M, 3]``) unit normals (float64).
    """
    cloud = _as_cloud(points, "points")
    k = min(k, len(cloud))
    tree = cKDTree(cloud) if tree is None else tree
    queries = cloud if at is None else cloud[np.asarray(at)]
    normals = np.empty_like(queries)
    for start in range(0, len(queries), _NORMAL_CHUNK):
        chunk = queries[start:start + _NORMAL_CHUNK]
        _, idx = tree.query(chunk, k=k, workers=-1)
        neighbours = cloud[idx.reshape(len(chunk), k)]
        centred = neighbours - neighbours.mean(axis=1, keepdims=True)
        covariance = np.matmul(centred.transpose(0, 2, 1), centred)
        _, vectors = np.linalg.eigh(covariance)
        normals[start:start + len(chunk)] = vectors[:, :, 0]
    return normals


def _consistency_from(agree_pred: np.ndarray, agree_gt: np.ndarray) -> NormalConsistency:
    nc1, nc2 = _mean_median(agree_pred), _mean_median(agree_gt)
    return NormalConsistency(
        nc1.mean, nc2.mean, (nc1.mean + nc2.mean) / 2, nc1.median, nc2.median, (nc1.median + nc2.median) / 2
    )


def normal_consistency(pred: np.ndarray, gt: np.ndarray, k: int = NORMAL_NEIGHBOURS) -> NormalConsistency:
    """Normal consistency: mean |n_pred · n_gt| between each point's normal and its nearest neighbour's.

    Spann3R ``tools/eval_recon.py`` (normals from Open3D ``estimate_normals()``; here
    :func:`estimate_normals`, the same PCA on 30 nearest neighbours):
    NC1 = mean over predicted points of |n_pred · n_gt(NN of pred)| (accuracy direction),
    NC2 = mean over GT points of |n_gt · n_pred(NN of gt)| (completion direction);
    CUT3R and π³ report NC = (NC1 + NC2) / 2. Medians likewise. Higher is better (1 = perfect).

    Args:
        pred: ``[..., 3]`` predicted points (aligned).
        gt: ``[..., 3]`` ground-truth points.
        k: neighbours for the normal estimate.
    """
    return reconstruction_metrics(pred, gt, k=k).normals


class ReconstructionMetrics(NamedTuple):
    accuracy: MeanMedian
    completion: MeanMedian
    normals: NormalConsistency

    @property
    def chamfer(self) -> float:
        return (self.accuracy.mean + self.completion.mean) / 2.0

    def as_dict(self) -> dict[str, float]:
        n = self.normals
        return {
            "acc": self.accuracy.mean, "acc_med": self.accuracy.median,
            "comp": self.completion.mean, "comp_med": self.completion.median,
            "chamfer": self.chamfer,
            "nc1": n.nc1, "nc2": n.nc2, "nc": n.nc, "nc_med": n.nc_median,
        }


def _queries(size: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or size <= limit:
        return np.arange(size)
    return np.sort(rng.choice(size, limit, replace=False))


def _normals_at(cloud: np.ndarray, tree: cKDTree, k: int, *indices: np.ndarray) -> list[np.ndarray]:
    """Normals of ``cloud`` at each index array, estimating each distinct point once."""
    needed = np.unique(np.concatenate(indices))
    normals = estimate_normals(cloud, k, tree, at=needed)
    return [normals[np.searchsorted(needed, idx)] for idx in indices]


def reconstruction_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    k: int = NORMAL_NEIGHBOURS,
    max_queries: int | None = None,
    seed: int = 0,
) -> ReconstructionMetrics:
    """Accuracy, completion and normal consistency together, building each KD-tree once.

    Same definitions as :func:`accuracy`, :func:`completion` and :func:`normal_consistency`. With
    ``max_queries``, each direction averages over that many random query points (predicted points
    for accuracy/NC1, GT points for completion/NC2) while the KD-trees and the normals' neighbourhoods
    keep every point: an unbiased estimate of the full-resolution means at a fraction of the cost
    (subsampling the clouds themselves would inflate the distances by the sparser spacing).

    Args:
        pred: ``[..., 3]`` predicted points (aligned).
        gt: ``[..., 3]`` ground-truth points.
        k: neighbours for the normal estimate.
        max_queries: query points per direction (None: all).
        seed: for the choice of query points.
    """
    pred_cloud, gt_cloud = _as_cloud(pred, "pred"), _as_cloud(gt, "gt")
    pred_tree, gt_tree = cKDTree(pred_cloud), cKDTree(gt_cloud)
    rng = np.random.default_rng(seed)
    pred_queries, gt_queries = _queries(len(pred_cloud), max_queries, rng), _queries(len(gt_cloud), max_queries, rng)
    acc_dist, acc_nearest = nearest_neighbours(pred_cloud[pred_queries], gt_cloud, gt_tree)
    comp_dist, comp_nearest = nearest_neighbours(gt_cloud[gt_queries], pred_cloud, pred_tree)
    pred_at_queries, pred_at_nearest = _normals_at(pred_cloud, pred_tree, k, pred_queries, comp_nearest)
    gt_at_queries, gt_at_nearest = _normals_at(gt_cloud, gt_tree, k, gt_queries, acc_nearest)
    agree_pred = np.abs(np.sum(pred_at_queries * gt_at_nearest, axis=-1))  # NC1, accuracy direction
    agree_gt = np.abs(np.sum(gt_at_queries * pred_at_nearest, axis=-1))  # NC2, completion direction
    normals = _consistency_from(agree_pred, agree_gt)
    return ReconstructionMetrics(_mean_median(acc_dist), _mean_median(comp_dist), normals)


# ----------------------------------------------------------------------------------------------- depth

_MIN_DEPTH = 1e-6  # predicted depths are clipped here before ratios are taken


def _depth_pairs(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred depth has shape {pred.shape}, gt depth {gt.shape}; they must match")
    mask = (gt > 0) & np.isfinite(gt) & np.isfinite(pred)
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    if not mask.any():
        raise ValueError("no valid depth pixels (need gt > 0, finite values and the valid mask)")
    return pred[mask], gt[mask]


def median_scale(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, per_view: bool = False
) -> np.ndarray:
    """The prediction scaled by s = median(gt) / median(pred) over valid pixels.

    CUT3R ``depth_evaluation`` default alignment. ``per_view=False`` uses one s for the whole
    sequence (the video-depth protocol); ``per_view=True`` one s per view (monocular depth).

    Args:
        pred: ``[N, H, W]`` (or ``[H, W]``) predicted depth.
        gt: same shape, ground truth (0 = none).
        valid: optional extra mask of the same shape.

    Returns:
        the scaled prediction, same shape as ``pred``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if not per_view or pred.ndim < 3:
        p, g = _depth_pairs(pred, gt, valid)
        return pred * (np.median(g) / max(np.median(p), _MIN_DEPTH))
    masks = [None] * len(pred) if valid is None else list(valid)
    return np.stack([median_scale(p, g, m) for p, g, m in zip(pred, gt, masks, strict=True)])


def abs_rel(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """AbsRel = mean(|d̂ − d| / d) over pixels with gt > 0 (CUT3R ``depth_evaluation``). Lower is better.

    Args:
        pred, gt: depth maps of one shape (e.g. ``[N, H, W]``); align ``pred`` first (:func:`median_scale`).
        valid: optional extra mask.
    """
    p, g = _depth_pairs(pred, gt, valid)
    return float(np.mean(np.abs(p - g) / g))


def _ratio(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    p = np.maximum(pred, _MIN_DEPTH)
    return np.maximum(p / gt, gt / p)


def delta_accuracy(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> DeltaAccuracy:
    """δ<1.25ⁱ = fraction of pixels with max(d̂/d, d/d̂) < 1.25ⁱ, i = 1, 2, 3 (CUT3R ``depth_evaluation``).

    Predicted depths ≤ 0 are clipped to 1e-6 (they count as failures). Higher is better.
    """
    ratio = _ratio(*_depth_pairs(pred, gt, valid))
    return DeltaAccuracy(*(float(np.mean(ratio < 1.25**i)) for i in (1, 2, 3)))


def rmse(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """RMSE = sqrt(mean((d̂ − d)²)) over valid pixels (CUT3R ``depth_evaluation``), in depth units."""
    p, g = _depth_pairs(pred, gt, valid)
    return float(np.sqrt(np.mean((p - g) ** 2)))


def inlier_ratio(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, threshold: float = 1.03
) -> float:
    """Inlier ratio τ = fraction of pixels with max(d̂/d, d/d̂) < 1.03 (RobustMVD, as DUSt3R/Fast3R report)."""
    return float(np.mean(_ratio(*_depth_pairs(pred, gt, valid)) < threshold))


# ------------------------------------------------------------------------------------------------ pose


def _check_poses(poses: np.ndarray, name: str) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) < 2:
        raise ValueError(f"{name}: expected camera-to-world poses [N >= 2, 4, 4], got {poses.shape}")
    if not np.isfinite(poses).all():
        raise ValueError(f"{name}: poses have non-finite entries")
    return poses


def _relative_poses(c2w: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.linalg.inv(c2w[i]) @ c2w[j]


def rotation_angle(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations ``[..., 3, 3]`` (atan2 form, accurate near 0 and 180°)."""
    delta = np.swapaxes(R_a, -1, -2) @ R_b
    cos = (np.trace(delta, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = delta - np.swapaxes(delta, -1, -2)
    sin = np.linalg.norm(np.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], axis=-1), axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def relative_pose_errors(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative rotation and translation-direction errors over all unordered pairs i < j.

    PoseDiffusion/VGGT convention (VGGT ``evaluation/test_co3d.py``, π³ ``relpose/metric.py``):
    relative pose ``inv(c2w_i) · c2w_j``; rotation error = geodesic angle between the predicted
    and GT relative rotations; translation error = angle between the relative translation
    directions, sign-invariant: min(θ, 180° − θ). A zero-length translation gives 90°
    (VGGT normalises with an epsilon, making the dot product 0).

    Args:
        pred_c2w: ``[N, 4, 4]`` predicted camera-to-world poses (any global frame and scale).
        gt_c2w: ``[N, 4, 4]`` ground-truth camera-to-world poses.

    Returns:
        rotation errors ``[P]`` and translation errors ``[P]`` in degrees, P = N(N−1)/2, pairs in
        ``np.triu_indices(N, 1)`` order.
    """
    pred_c2w, gt_c2w = _check_poses(pred_c2w, "pred_c2w"), _check_poses(gt_c2w, "gt_c2w")
    if pred_c2w.shape != gt_c2w.shape:
        raise ValueError(f"pred_c2w has shape {pred_c2w.shape}, gt_c2w {gt_c2w.shape}; they must match")
    i, j = np.triu_indices(len(gt_c2w), 1)
    rel_pred, rel_gt = _relative_poses(pred_c2w, i, j), _relative_poses(gt_c2w, i, j)
    rot_err = rotation_angle(rel_pred[:, :3, :3], rel_gt[:, :3, :3])
    t_pred, t_gt = rel_pred[:, :3, 3], rel_gt[:, :3, 3]
    angle = np.degrees(np.arctan2(np.linalg.norm(np.cross(t_pred, t_gt), axis=-1), np.sum(t_pred * t_gt, axis=-1)))
    degenerate = (np.linalg.norm(t_pred, axis=-1) == 0) | (np.linalg.norm(t_gt, axis=-1) == 0)
    angle = np.where(degenerate, 90.0, angle)
    return rot_err, np.minimum(angle, 180.0 - angle)


def rra(rot_err: np.ndarray, threshold: float) -> float:
    """Relative Rotation Accuracy RRA@τ = fraction of pairs with rotation error < τ degrees."""
    return float(np.mean(np.asarray(rot_err) < threshold))


def rta(trans_err: np.ndarray, threshold: float) -> float:
    """Relative Translation Accuracy RTA@τ = fraction of pairs with translation-direction error < τ degrees."""
    return float(np.mean(np.asarray(trans_err) < threshold))


def pose_auc(rot_err: np.ndarray, trans_err: np.ndarray, max_threshold: int = 30) -> float:
    """mAA(τ_max) = AUC@τ_max of max(rot_err, trans_err) with 1° bins, exactly as VGGT/π³ ``calculate_auc_np``.

    ``np.histogram(max_err, bins=arange(max_threshold + 1))``, normalised by the number of pairs,
    then the mean of its cumulative sum: the mean over τ = 1…max_threshold of the fraction of pairs
    with error below τ (errors in [τ−1, τ) count from bin τ on; errors ≥ max_threshold never,
    except exactly max_threshold which numpy puts in the last, closed bin). Higher is better.
    """
    max_err = np.maximum(np.asarray(rot_err, dtype=np.float64), np.asarray(trans_err, dtype=np.float64))
    if max_err.size == 0:
        raise ValueError("pose_auc: no pairs")
    histogram, _ = np.histogram(max_err, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(histogram / float(max_err.size))))


def pose_metrics(
    pred_c2w: np.ndarray, gt_c2w: np.ndarray, thresholds: Sequence[int] = (5, 15, 30)
) -> dict[str, float]:
    """RRA@τ, RTA@τ and AUC@τ for each τ (keys ``rra_τ``, ``rta_τ``, ``auc_τ``: MLflow-safe names), plus
    the mean rotation and translation-direction errors ``rot_err``, ``trans_err`` (degrees)."""
    rot_err, trans_err = relative_pose_errors(pred_c2w, gt_c2w)
    out = {"rot_err": float(np.mean(rot_err)), "trans_err": float(np.mean(trans_err))}
    for tau in thresholds:
        out[f"rra_{tau}"] = rra(rot_err, tau)
        out[f"rta_{tau}"] = rta(trans_err, tau)
        out[f"auc_{tau}"] = pose_auc(rot_err, trans_err, tau)
    return out


# ----------------------------------------------------------------------------------------- consistency


def _corners(u: np.ndarray, v: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left integer neighbours of float pixels in [0, w−1] × [0, h−1] (the border reuses the last cell)."""
    return np.clip(np.floor(u).astype(int), 0, w - 2), np.clip(np.floor(v).astype(int), 0, h - 2)


def _bilinear(points: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``[H, W, C]`` at float pixel coordinates in [0, W−1] × [0, H−1]."""
    u0, v0 = _corners(u, v, *points.shape[:2])
    a, b = (u - u0)[:, None], (v - v0)[:, None]
    return (
        points[v0, u0] * (1 - a) * (1 - b) + points[v0, u0 + 1] * a * (1 - b)
        + points[v0 + 1, u0] * (1 - a) * b + points[v0 + 1, u0 + 1] * a * b
    )


_EDGE = 1e-6  # projections this close outside the image (rounding) count as on its border


def view_correspondences(
    depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, pixel_stride: int = 4, depth_tolerance: float = 0.01
) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Ground-truth pixel correspondences between every pair of views i < j.

    View j's GT depth (on a grid of every ``pixel_stride``-th pixel) is lifted to world points and
    projected into view i. A pixel corresponds where the projection lands inside view i with all
    four surrounding pixels holding GT depth within ``depth_tolerance`` (relative) of the projected
    depth: visible, not occluded, and not straddling a depth edge.

    Args:
        depth: ``[N, H, W]`` GT depth (0 = none).
        K: ``[N, 3, 3]`` intrinsics. c2w: ``[N, 4, 4]`` GT camera-to-world poses.

    Returns:
        ``(i, j, flat_j [M], u_i [M], v_i [M])`` per pair with at least one correspondence: flat pixel
        indices into view j and the float pixel coordinates in view i.
    """
    depth = np.asarray(depth, dtype=np.float64)
    n, h, w = depth.shape
    ys, xs = np.mgrid[0:h:pixel_stride, 0:w:pixel_stride]
    xs, ys = xs.ravel(), ys.ravel()
    w2c = np.linalg.inv(np.asarray(c2w, dtype=np.float64))
    pairs = []
    for j in range(n):
        z = depth[j, ys, xs]
        keep = z > 0
        xj, yj, zj = xs[keep], ys[keep], z[keep]
        world = transform_points(c2w[j], pixels_to_points(K[j], np.stack([xj, yj], axis=1), zj))
        for i in range(j):
            cam = transform_points(w2c[i], world)
            zi = cam[:, 2]
            front = zi > 1e-9
            u, v = project(K[i], cam[front]).T
            inside = (u >= -_EDGE) & (v >= -_EDGE) & (u <= w - 1 + _EDGE) & (v <= h - 1 + _EDGE)
            flat = (yj * w + xj)[front][inside]
            u, v, zi = np.clip(u[inside], 0, w - 1), np.clip(v[inside], 0, h - 1), zi[front][inside]
            u0, v0 = _corners(u, v, h, w)
            corners = np.stack([depth[i, v0, u0], depth[i, v0, u0 + 1], depth[i, v0 + 1, u0], depth[i, v0 + 1, u0 + 1]])
            agree = np.all(np.abs(corners - zi) <= depth_tolerance * zi, axis=0)
            if agree.any():
                pairs.append((i, j, flat[agree], u[agree], v[agree]))
    return pairs


def scene_scale(points: np.ndarray) -> float:
    """Median distance of points ``[..., 3]`` to their per-axis median (DUSt3R's joint point-cloud scale)."""
    cloud = _as_cloud(points, "points")
    return float(np.median(np.linalg.norm(cloud - np.median(cloud, axis=0), axis=-1)))


def view_consistency(
    pred_global: np.ndarray,
    gt_depth: np.ndarray,
    K: np.ndarray,
    gt_c2w: np.ndarray,
    pixel_stride: int = 4,
    depth_tolerance: float = 0.01,
) -> float:
    """Cross-view consistency (ours): how well the global pointmaps of different views agree where they overlap.

    Definition: take the GT correspondences of :func:`view_correspondences` (pixel p in view j sees
    the same surface point as sub-pixel q in view i, i < j). For each, the distance between the
    predicted global point of view j at p and the predicted global point of view i at q (bilinear).
    The metric is the median of these distances over all pairs, divided by the prediction's own
    scene scale (:func:`scene_scale` over all its valid points). Needs no alignment to GT; it is
    invariant to any Sim(3) of the prediction and 0 for a perfect one. Lower is better; NaN when
    no view pair overlaps.

    Args:
        pred_global: ``[N, H, W, 3]`` predicted points in one frame (e.g. view 0's camera).
        gt_depth: ``[N, H, W]`` GT depth. K: ``[N, 3, 3]``. gt_c2w: ``[N, 4, 4]``.
    """
    pred_global = np.asarray(pred_global, dtype=np.float64)
    n, h, w = np.asarray(gt_depth).shape
    if pred_global.shape != (n, h, w, 3):
        raise ValueError(f"pred_global has shape {pred_global.shape}; expected {(n, h, w, 3)} to match gt_depth")
    if not np.isfinite(pred_global).all():
        raise ValueError("pred_global has non-finite points")
    distances = [
        np.linalg.norm(pred_global[j].reshape(-1, 3)[flat] - _bilinear(pred_global[i], u, v), axis=-1)
        for i, j, flat, u, v in view_correspondences(gt_depth, K, gt_c2w, pixel_stride, depth_tolerance)
    ]
    if not distances:
        return float("nan")
    valid = pred_global[np.asarray(gt_depth) > 0]
    return float(np.median(np.concatenate(distances)) / max(scene_scale(valid), 1e-12))
