"""One prediction against one reference: pose recovery, alignment, and every metric of ``metrics``.

The reference is either the ground truth of a sample (depth, K, poses from the scene) or, for
student-vs-teacher agreement, a teacher's prediction turned into the same shape
(:meth:`Reference.from_prediction`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from d3r.config import EvalConfig
from d3r.eval import metrics
from d3r.eval.alignment import AlignmentMethod, align_to_ground_truth
from d3r.geometry import apply_sim3, centred_K, depth_to_points, estimate_poses, transform_points
from d3r.scenes.records import View

log = logging.getLogger(__name__)

DepthScaling = Literal["sequence", "view", "none"]


@dataclass(frozen=True)
class Reference:
    """What a prediction is scored against.

    Attributes:
        depth: ``[N, H, W]`` z-depth (0 = none).
        K: ``[N, 3, 3]`` intrinsics.
        c2w: ``[N, 4, 4]`` camera-to-world poses.
        points: ``[N, H, W, 3]`` world points of every pixel (meaningful where ``depth > 0``).
    """

    depth: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    points: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``[N, H, W]`` pixels with a reference point."""
        return (self.depth > 0) & np.isfinite(self.depth)

    @classmethod
    def from_geometry(cls, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> Reference:
        """From depth ``[N, H, W]``, K ``[N, 3, 3]`` and c2w ``[N, 4, 4]`` (world points by back-projection)."""
        depth = np.where(np.isfinite(depth), np.asarray(depth, dtype=np.float64), 0.0)
        K, c2w = np.asarray(K, dtype=np.float64), np.asarray(c2w, dtype=np.float64)
        if depth.ndim != 3 or K.shape != (len(depth), 3, 3) or c2w.shape != (len(depth), 4, 4):
            raise ValueError(f"reference: expected depth [N, H, W], K [N, 3, 3], c2w [N, 4, 4]; got "
                             f"{depth.shape}, {K.shape}, {c2w.shape}")
        return cls(depth, K, c2w, transform_points(c2w, depth_to_points(depth, K)))

    @classmethod
    def from_views(cls, views: list[View]) -> Reference:
        """The ground truth of loaded views (each needs ``depth``, ``K`` and ``pose``).

        Raises:
            ValueError: naming the first view without depth, K or pose.
        """
        for view in views:
            missing = [name for name in ("depth", "K", "pose") if getattr(view, name) is None]
            if missing:
                raise ValueError(f"view {view.name!r} ({view.path}) has no ground-truth {', '.join(missing)}")
        return cls.from_geometry(
            np.stack([v.depth for v in views]), np.stack([v.K for v in views]), np.stack([v.pose for v in views])
        )

    @classmethod
    def from_prediction(cls, pts_global: np.ndarray, conf: np.ndarray) -> Reference:
        """A model's prediction as a reference (for agreement): its global points ``[N, H, W, 3]`` are
        the world, its cameras are recovered from them (:func:`d3r.geometry.estimate_poses`, principal
        point at the image centre) and its depth is each view's points seen from its recovered camera.
        Pixels with confidence ``conf [N, H, W]`` at 1 (the floor of ``1 + exp(x)``: "no prediction",
        as the oracle marks pixels without ground truth) or non-finite points have no reference."""
        pts_global = np.asarray(pts_global, dtype=np.float64)
        conf = np.asarray(conf, dtype=np.float64)
        c2w, focal = estimate_poses(pts_global, conf)
        n, h, w = pts_global.shape[:3]
        K = np.tile(centred_K(focal, w, h), (n, 1, 1))
        depth = transform_points(np.linalg.inv(c2w), pts_global)[..., 2]
        usable = np.isfinite(pts_global).all(-1) & (conf > 1.0) & (depth > 0)
        return cls(np.where(usable, depth, 0.0), K, c2w, np.where(usable[..., None], pts_global, 0.0))


@dataclass(frozen=True)
class EvalSettings:
    """How predictions are aligned and scored; built from :class:`d3r.config.EvalConfig` (its defaults
    are the defaults: ``EvalSettings.from_config(EvalConfig())``)."""

    alignment: AlignmentMethod
    align_conf_percentile: float
    icp_threshold: float | None
    max_points: int | None
    depth_scaling: DepthScaling
    pose_thresholds: tuple[int, ...]
    consistency_stride: int
    seed: int

    @classmethod
    def from_config(cls, config: EvalConfig | None = None) -> EvalSettings:
        config = EvalConfig() if config is None else config
        return cls(
            alignment=config.alignment,
            align_conf_percentile=config.align_conf_percentile,
            icp_threshold=config.icp_threshold if config.icp else None,
            max_points=config.max_points,
            depth_scaling=config.depth_scaling,
            pose_thresholds=tuple(config.pose_thresholds),
            consistency_stride=config.consistency_stride,
            seed=config.seed,
        )


@dataclass(frozen=True)
class SampleResult:
    """Scores of one prediction, and the maps the figures draw.

    Attributes:
        metrics: metric name → value (see :func:`evaluate_prediction`).
        aligned: ``[N, H, W, 3]`` predicted global points after alignment to the reference.
        depth: ``[N, H, W]`` predicted depth (local head z, scaled as ``depth_scaling`` says).
        error: ``[N, H, W]`` distance between aligned and reference points (NaN without reference).
    """

    metrics: dict[str, float]
    aligned: np.ndarray
    depth: np.ndarray
    error: np.ndarray


def _recover_cameras(pts: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, float]:
    """Poses and focal by PnP; a pointmap they cannot be recovered from (e.g. nothing in front of the
    camera) scores as identity poses and a NaN focal, so a broken model ranks last instead of vanishing."""
    try:
        return estimate_poses(pts, conf)
    except ValueError as exc:
        log.warning("camera recovery failed (%s); scoring identity poses", exc)
        return np.tile(np.eye(4), (len(pts), 1, 1)), float("nan")


def _scaled_depth(pred: np.ndarray, reference: Reference, scaling: DepthScaling) -> np.ndarray:
    if scaling == "none":
        return pred
    valid = reference.valid & np.isfinite(pred)
    return metrics.median_scale(pred, reference.depth, valid, per_view=scaling == "view")


def evaluate_prediction(
    outputs: dict[str, np.ndarray], reference: Reference, settings: EvalSettings | None = None
) -> SampleResult:
    """Score one sample's prediction against a reference.

    1. Poses and one focal are recovered from the predicted global pointmap (PnP, as Fast3R does)
       and compared pairwise with the reference poses (``rot_err``, ``trans_err``, ``rra_τ``,
       ``rta_τ``, ``auc_τ``) and the reference focal (``focal_err``, relative, view 0).
    2. The global pointmap is aligned to the reference points (``settings.alignment`` on pixel
       correspondences, then optional ICP) and scored with accuracy, completion, normal
       consistency and chamfer (``acc``, ``acc_med``, ``comp``, ``comp_med``, ``chamfer``, ``nc1``,
       ``nc2``, ``nc``, ``nc_med``) over all valid pixels, averaged over up to ``max_points`` random
       query points per direction (:func:`d3r.eval.metrics.reconstruction_metrics`).
    3. The local head's depth, median-scaled per sequence (or per view), gives ``abs_rel``, ``rmse``,
       ``delta1..3`` and ``inlier_ratio`` (τ, 1.03).
    4. ``consistency``: :func:`d3r.eval.metrics.view_consistency` of the unaligned global pointmap.

    Args:
        outputs: ``pts3d_global`` ``[N, H, W, 3]``, ``conf_global`` ``[N, H, W]``, ``pts3d_local``
            ``[N, H, W, 3]`` of one sample (numpy).
        reference: the ground truth (or a teacher) of the same pixels.
        settings: alignment and scoring options (default: ``EvalConfig``'s defaults).

    Raises:
        ValueError: on mismatched shapes, non-finite predictions or a reference without valid pixels.
    """
    settings = EvalSettings.from_config() if settings is None else settings
    pts = np.asarray(outputs["pts3d_global"], dtype=np.float64)
    conf = np.asarray(outputs["conf_global"], dtype=np.float64)
    local = np.asarray(outputs["pts3d_local"], dtype=np.float64)
    if pts.shape != reference.points.shape or conf.shape != pts.shape[:-1] or local.shape != pts.shape:
        raise ValueError(f"prediction maps {pts.shape}, {conf.shape}, {local.shape} do not match the reference "
                         f"{reference.points.shape}")
    if not (np.isfinite(pts).all() and np.isfinite(conf).all()):
        raise ValueError("the prediction has non-finite global points or confidence")
    valid = reference.valid
    if not valid.any():
        raise ValueError("the reference has no valid pixel")
    scores: dict[str, float] = {}

    pred_c2w, focal = _recover_cameras(pts, conf)
    scores.update(metrics.pose_metrics(pred_c2w, reference.c2w, settings.pose_thresholds))
    scores["focal_err"] = float(abs(focal - reference.K[0, 0, 0]) / reference.K[0, 0, 0])

    sim = align_to_ground_truth(
        pts, reference.points, valid, reference.c2w[0], conf, settings.alignment,
        settings.align_conf_percentile, settings.icp_threshold,
    )
    aligned = apply_sim3(pts, *sim)
    scores.update(metrics.reconstruction_metrics(
        aligned[valid], reference.points[valid], max_queries=settings.max_points, seed=settings.seed
    ).as_dict())

    depth = _scaled_depth(local[..., 2], reference, settings.depth_scaling)
    depth_valid = valid & np.isfinite(depth)
    scores["abs_rel"] = metrics.abs_rel(depth, reference.depth, depth_valid)
    scores["rmse"] = metrics.rmse(depth, reference.depth, depth_valid)
    scores.update(zip(("delta1", "delta2", "delta3"), metrics.delta_accuracy(depth, reference.depth, depth_valid),
                      strict=True))
    scores["inlier_ratio"] = metrics.inlier_ratio(depth, reference.depth, depth_valid)

    scores["consistency"] = metrics.view_consistency(
        pts, reference.depth, reference.K, reference.c2w, settings.consistency_stride
    )
    error = np.where(valid, np.linalg.norm(aligned - reference.points, axis=-1), np.nan)
    return SampleResult(scores, aligned, depth, error)
