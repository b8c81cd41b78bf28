"""Geometry shared by teachers, cache, training and evaluation (numpy, float64).

Conventions (ARCHITECTURE.md): OpenCV cameras (x right, y down, z forward), poses camera-to-world
4x4, intrinsics ``K`` 3x3 in pixels with pixel centres at integer coordinates, so pixel ``(u, v)``
is column ``u``, row ``v`` and the centre of a ``W x H`` image is ``((W - 1) / 2, (H - 1) / 2)``.

Contents:

- Sim(3): :func:`umeyama_sim3` (weighted Umeyama, ``dst ≈ s R src + t``), :func:`apply_sim3`,
  :func:`align_local_to_global` (Fast3R's aligned-local target, 85th confidence percentile).
- Cameras: :func:`pixel_grid`, :func:`depth_to_points`, :func:`transform_points`, :func:`project`.
- Recovery from pointmaps: :func:`estimate_focal` (Weiszfeld IRLS) and :func:`estimate_poses`
  (PnP-RANSAC with SQPnP), as Fast3R recovers cameras from its global head.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

Sim3 = tuple[float, np.ndarray, np.ndarray]


def umeyama_sim3(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True
) -> Sim3:
    """Weighted least-squares similarity ``dst ≈ s · R @ src + t`` (Umeyama 1991).

    Args:
        src: ``[M, 3]`` source points.
        dst: ``[M, 3]`` destination points, row-matched with ``src``.
        weights: ``[M]`` non-negative weights (None = uniform).
        with_scale: fit the scale ``s``; otherwise ``s = 1`` (rigid fit).

    Returns:
        ``(s, R [3, 3], t [3])`` as float, float64, float64; ``det(R) = +1``.

    Raises:
        ValueError: on mismatched shapes, non-finite values, negative weights, fewer than 3 points
            with positive weight, or a source whose weighted points all coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"umeyama_sim3: expected src and dst of equal shape [M, 3], got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),):
        raise ValueError(f"umeyama_sim3: expected weights of shape [{len(src)}], got {w.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all() and np.isfinite(w).all()):
        raise ValueError("umeyama_sim3: src, dst and weights must be finite")
    if (w < 0).any():
        raise ValueError("umeyama_sim3: weights must be non-negative")
    if np.count_nonzero(w) < 3:
        raise ValueError(f"umeyama_sim3: need at least 3 points with positive weight, got {np.count_nonzero(w)}")
    w = w / w.sum()
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = float(w @ (src_c**2).sum(axis=1))
    if var_src <= 1e-24:
        raise ValueError("umeyama_sim3: the weighted source points all coincide; the fit is undefined")
    cov = (dst_c * w[:, None]).T @ src_c
    U, S, Vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[2] = -1.0
    R = (U * d) @ Vt
    s = float((S * d).sum() / var_src) if with_scale else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


def apply_sim3(points: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[..., 3]`` points mapped to ``s · R @ p + t``."""
    return s * np.asarray(points, dtype=np.float64) @ np.asarray(R).T + np.asarray(t)


def align_local_to_global(
    pts_local: np.ndarray, pts_global: np.ndarray, conf_global: np.ndarray, percentile: float = 85.0
) -> tuple[np.ndarray, list[Sim3]]:
    """Fast3R's aligned-local target: each view's local points moved into the global frame.

    Per view, a Sim(3) from local to global points is fitted (uniform weights) on the pixels whose
    global confidence is at or above that view's ``percentile``-th confidence percentile and whose
    points are finite, then applied to all of the view's local points.

    Args:
        pts_local: ``[N, H, W, 3]`` points in each view's own frame.
        pts_global: ``[N, H, W, 3]`` points in view 0's frame.
        conf_global: ``[N, H, W]`` global confidence.
        percentile: in [0, 100]; 85 as in Fast3R's demo and evaluation.

    Returns:
        ``(aligned [N, H, W, 3] float64, [(s, R, t)] * N)``.

    Raises:
        ValueError: on mismatched shapes, or a view with too few usable pixels (see :func:`umeyama_sim3`).
    """
    pts_local = np.asarray(pts_local, dtype=np.float64)
    pts_global = np.asarray(pts_global, dtype=np.float64)
    conf_global = np.asarray(conf_global, dtype=np.float64)
    if pts_local.ndim != 4 or pts_local.shape[-1] != 3 or pts_local.shape != pts_global.shape:
        raise ValueError(
            f"align_local_to_global: expected pts_local and pts_global [N, H, W, 3] of equal shape, "
            f"got {pts_local.shape} and {pts_global.shape}"
        )
    if conf_global.shape != pts_local.shape[:-1]:
        raise ValueError(f"align_local_to_global: expected conf_global {pts_local.shape[:-1]}, got {conf_global.shape}")
    aligned = np.empty_like(pts_local)
    sims: list[Sim3] = []
    for i, (local, glob, conf) in enumerate(zip(pts_local, pts_global, conf_global, strict=True)):
        # Pixels with no point (exactly (0, 0, 0), as teachers emit where nothing was seen) never vote.
        usable = np.isfinite(local).all(-1) & np.isfinite(glob).all(-1) & np.isfinite(conf)
        usable &= (local != 0).any(-1) & (glob != 0).any(-1)
        if not usable.any():
            raise ValueError(f"align_local_to_global: view {i} has no finite pixel with a point")
        keep = usable & (conf >= np.percentile(conf[usable], percentile))
        try:
            sim = umeyama_sim3(local[keep], glob[keep])
        except ValueError as err:
            raise ValueError(f"align_local_to_global: view {i}: {err}") from err
        aligned[i] = apply_sim3(local, *sim)
        sims.append(sim)
    return aligned, sims


def centred_K(focal: float, width: int, height: int) -> np.ndarray:
    """``[3, 3]`` float64 pinhole K of a ``width x height`` image: one focal (pixels), principal point at the
    image centre ``((W - 1) / 2, (H - 1) / 2)`` (pixel centres at integers)."""
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def pixel_grid(height: int, width: int) -> np.ndarray:
    """``[H, W, 2]`` float64 pixel coordinates ``(u, v)`` = (column, row), centres at integers."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([u, v], axis=-1)


def _per_point(matrix: np.ndarray, points_ndim: int) -> np.ndarray:
    """``matrix [*B, r, c]`` with singleton dims inserted so it broadcasts against points ``[*B, *S, c]``."""
    extra = points_ndim - 1 - (matrix.ndim - 2)
    if extra < 0:
        raise ValueError(f"matrices of batch shape {matrix.shape[:-2]} cannot apply to {points_ndim}-dim points")
    return matrix.reshape(matrix.shape[:-2] + (1,) * extra + matrix.shape[-2:])


def _matvec(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix [*B, r, c] @ points [*B, *S, c]`` → ``[*B, *S, r]``."""
    return np.einsum("...ij,...j->...i", _per_point(matrix, points.ndim), points)


def depth_to_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Back-project z-depth into camera-frame points.

    Args:
        depth: ``[*B, H, W]`` metres along z (0 = no value, giving the point (0, 0, 0)).
        K: ``[*B, 3, 3]`` intrinsics, one per leading index of ``depth`` (or one for all).

    Returns:
        ``[*B, H, W, 3]`` float64 points ``depth · K⁻¹ [u, v, 1]``.
    """
    depth = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    height, width = depth.shape[-2:]
    pixels = np.concatenate([pixel_grid(height, width), np.ones((height, width, 1))], axis=-1)
    pixels = np.broadcast_to(pixels, depth.shape + (3,))
    return _matvec(np.linalg.inv(K), pixels) * depth[..., None]


def pixels_to_points(K: np.ndarray, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Lift pixels to camera-frame points: ``K [3, 3]``, ``uv [M, 2]`` (u, v), ``z [M]`` → ``[M, 3]`` float64."""
    uv = np.asarray(uv, dtype=np.float64)
    homogeneous = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
    return np.linalg.solve(np.asarray(K, dtype=np.float64), homogeneous.T).T * np.asarray(z, np.float64)[:, None]


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply rigid/affine 4x4 transforms: ``T [*B, 4, 4]`` to ``points [*B, *S, 3]`` → ``[*B, *S, 3]``."""
    T = np.asarray(T, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return _matvec(T[..., :3, :3], points) + _per_point(T[..., :3, 3:], points.ndim)[..., 0]


def project(K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pinhole projection: ``K [*B, 3, 3]``, camera-frame ``points [*B, *S, 3]`` → pixels ``[*B, *S, 2]``.

    Points with z = 0 project to inf/nan; callers mask them.
    """
    homogeneous = _matvec(np.asarray(K, dtype=np.float64), np.asarray(points, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return homogeneous[..., :2] / homogeneous[..., 2:3]


def estimate_focal(pts: np.ndarray, conf: np.ndarray | None = None, percentile: float = 10.0) -> float:
    """One focal length (pixels) from a camera-frame pointmap, by Weiszfeld IRLS.

    Minimises ``Σ ‖(u - c) - f · (x/z, y/z)‖`` over pixels with ``z > 0`` and confidence at or above
    the ``percentile``-th percentile, starting from the least-squares f, then 100 Weiszfeld steps.
    The principal point ``c`` is the image centre in our convention, ``((W - 1) / 2, (H - 1) / 2)``
    (Fast3R uses ``(W / 2, H / 2)`` on the same integer pixel grid: half a pixel apart).

    Args:
        pts: ``[H, W, 3]`` points in the camera frame of the view.
        conf: ``[H, W]`` confidence, or None to use all pixels.
        percentile: confidence percentile below which pixels are ignored.

    Raises:
        ValueError: on a wrong shape or when no pixel has finite points in front of the camera.
    """
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 3:
        raise ValueError(f"estimate_focal: expected pts [H, W, 3], got {pts.shape}")
    height, width = pts.shape[:2]
    valid = np.isfinite(pts).all(-1) & (pts[..., 2] > 0)
    if conf is not None:
        conf = np.asarray(conf, dtype=np.float64)
        if conf.shape != (height, width):
            raise ValueError(f"estimate_focal: expected conf [{height}, {width}], got {conf.shape}")
        valid &= np.isfinite(conf)
        if valid.any():
            valid &= conf >= np.percentile(conf[valid], percentile)
    if not valid.any():
        raise ValueError("estimate_focal: no pixel has a finite point with z > 0")
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    offsets = (pixel_grid(height, width) - centre)[valid]
    rays = pts[valid, :2] / pts[valid, 2:3]
    weights = np.ones(len(rays))
    for _ in range(101):  # the first pass (uniform weights) is the L2 initialisation
        focal = (weights * (offsets * rays).sum(-1)).sum() / (weights * (rays * rays).sum(-1)).sum()
        weights = 1.0 / np.maximum(np.linalg.norm(offsets - focal * rays, axis=-1), 1e-8)
    return float(focal)


def estimate_poses(
    pts_global: np.ndarray,
    conf: np.ndarray,
    focal: float | None = None,
    iterations: int = 100,
    reprojection_error: float = 5.0,
    min_conf: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Camera-to-world poses (in view 0's frame) from global pointmaps, by PnP-RANSAC per view.

    As Fast3R: one focal for all views (by default from view 0's global points, see
    :func:`estimate_focal`), principal point at the image centre, pixels with ``conf > min_conf``,
    ``cv2.solvePnPRansac`` with ``SOLVEPNP_SQPNP``. A view whose PnP fails gets the identity and a
    logged warning.

    Args:
        pts_global: ``[N, H, W, 3]`` points in view 0's camera frame.
        conf: ``[N, H, W]`` confidence of those points.
        focal: pixels, or None to estimate it.
        iterations: RANSAC iterations.
        reprojection_error: RANSAC inlier threshold in pixels.
        min_conf: pixels with confidence strictly above this are used.

    Returns:
        ``(poses [N, 4, 4] float64 c2w, focal)``.
    """
    pts_global = np.asarray(pts_global, dtype=np.float64)
    conf = np.asarray(conf, dtype=np.float64)
    if pts_global.ndim != 4 or pts_global.shape[-1] != 3 or conf.shape != pts_global.shape[:-1]:
        raise ValueError(
            f"estimate_poses: expected pts_global [N, H, W, 3] and conf [N, H, W], got {pts_global.shape}, {conf.shape}"
        )
    num_views, height, width = conf.shape
    if focal is None:
        focal = estimate_focal(pts_global[0], conf[0])
    K = centred_K(focal, width, height)
    pixels = pixel_grid(height, width)
    poses = np.tile(np.eye(4), (num_views, 1, 1))
    for i in range(num_views):
        keep = (conf[i] > min_conf) & np.isfinite(pts_global[i]).all(-1)
        if keep.sum() < 4:
            log.warning("estimate_poses: view %d has %d confident pixels (< 4); pose set to identity", i, keep.sum())
            continue
        try:
            ok, rvec, tvec, _ = cv2.solvePnPRansac(
                pts_global[i][keep],
                pixels[keep],
                K,
                None,
                iterationsCount=iterations,
                reprojectionError=reprojection_error,
                flags=cv2.SOLVEPNP_SQPNP,
            )
        except cv2.error as err:
            ok, reason = False, str(err).strip().splitlines()[-1]
        else:
            reason = "no consensus"
        if not ok:
            log.warning("estimate_poses: PnP failed for view %d (%s); pose set to identity", i, reason)
            continue
        world_to_camera = np.eye(4)
        world_to_camera[:3, :3] = cv2.Rodrigues(rvec)[0]
        world_to_camera[:3, 3] = tvec.ravel()
        poses[i] = np.linalg.inv(world_to_camera)
    return poses, float(focal)
