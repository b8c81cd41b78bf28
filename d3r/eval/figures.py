"""Figures a person can read at a glance: per-view maps, point-cloud renders, and metric bars.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, safe in workers). Every
function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=_DPI)
    return path


def _robust_range(values: np.ndarray, low: float = 2.0, high: float = 98.0) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [low, high])
    return float(lo), float(max(hi, lo + 1e-9))


def save_view_grid(
    path: str | Path,
    images: np.ndarray,
    depth: np.ndarray,
    conf: np.ndarray,
    error: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """One row per view: image, predicted depth, confidence and (when given) the error map vs GT.

    Depth and error share one colour range across views (2nd–98th percentile) so views compare;
    error pixels without GT are NaN and drawn blank.

    Args:
        images: ``[N, H, W, 3]`` uint8 RGB.
        depth: ``[N, H, W]`` predicted depth.
        conf: ``[N, H, W]`` confidence (drawn as log(conf)).
        error: ``[N, H, W]`` per-pixel error (e.g. distance to the GT point), NaN = no GT.
    """
    images, depth, conf = np.asarray(images), np.asarray(depth, float), np.asarray(conf, float)
    n = len(images)
    if depth.shape != images.shape[:3] or conf.shape != images.shape[:3]:
        raise ValueError(f"save_view_grid: images {images.shape}, depth {depth.shape}, conf {conf.shape} disagree")
    panels = [("image", None), ("depth (pred)", depth), ("log confidence", np.log(np.maximum(conf, 1e-12)))]
    if error is not None:
        panels.append(("error vs GT", np.asarray(error, float)))
    height, width = images.shape[1:3]
    figure_height = n * 2.6 * height / width + 1.15
    figure = Figure(figsize=(len(panels) * 2.6, figure_height))
    figure.subplots_adjust(left=0.05, right=0.98, top=1 - 0.6 / figure_height, bottom=0.55 / figure_height,
                           wspace=0.05, hspace=0.08)
    ranges = {name: _robust_range(values) for name, values in panels if values is not None}
    if error is not None:
        ranges["error vs GT"] = (0.0, ranges["error vs GT"][1])
    cmaps = {"depth (pred)": "turbo", "log confidence": "viridis", "error vs GT": "magma"}
    axes = figure.subplots(n, len(panels), squeeze=False)
    for row in range(n):
        for col, (name, values) in enumerate(panels):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if values is None:
                ax.imshow(images[row])
            else:
                shown = ax.imshow(values[row], cmap=cmaps[name], vmin=ranges[name][0], vmax=ranges[name][1])
                if row == n - 1:  # one shared colour bar under each map column, outside the grid's space
                    bar = ax.inset_axes((0.0, -0.16, 1.0, 0.06))
                    figure.colorbar(shown, cax=bar, orientation="horizontal")
                    bar.tick_params(labelsize=7)
            if row == 0:
                ax.set_title(name, fontsize=9)
        axes[row, 0].set_ylabel(f"view {row}", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``[3, 3]`` world-to-camera rotation (OpenCV axes) of a camera at ``eye`` looking at ``target``."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    down = np.array([0.0, 1.0, 0.0])  # view 0's "down": the renders keep its up direction
    right = np.cross(down, forward)
    right /= max(np.linalg.norm(right), 1e-12)
    return np.stack([right, np.cross(forward, right), forward])


def _virtual_camera(centre: np.ndarray, radius: float, azimuth: float, elevation: float) -> tuple[
    np.ndarray, np.ndarray
]:
    """Eye position and rotation of a camera orbiting ``centre``; azimuth 0 sits behind view 0's camera."""
    az, el = np.radians(azimuth), np.radians(elevation)
    offset = np.array([np.sin(az) * np.cos(el), -np.sin(el), -np.cos(az) * np.cos(el)])
    eye = centre + 2.5 * radius * offset
    return eye, _look_at(eye, centre)


def save_point_cloud_views(
    path: str | Path,
    points: np.ndarray,
    conf: np.ndarray,
    viewpoints: Sequence[tuple[float, float]] = ((-35.0, 25.0), (35.0, 10.0)),
    max_points: int = 30000,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """The point cloud rendered from virtual cameras (one panel per viewpoint), coloured by confidence.

    A random subsample of ``max_points`` points is projected with a pinhole camera orbiting the
    cloud's median at (azimuth, elevation) degrees, 2.5 robust radii away, and drawn far to near.

    Args:
        points: ``[..., 3]`` points (e.g. ``[N, H, W, 3]`` in view 0's frame); non-finite ones are skipped.
        conf: ``[...]`` confidence of each point (drawn as log(conf)).
    """
    points = np.asarray(points, float).reshape(-1, 3)
    conf = np.asarray(conf, float).reshape(-1)
    if len(conf) != len(points):
        raise ValueError(f"save_point_cloud_views: {len(points)} points but {len(conf)} confidences")
    keep = np.isfinite(points).all(-1) & np.isfinite(conf)
    points, colour = points[keep], np.log(np.maximum(conf[keep], 1e-12))
    if len(points) > max_points:
        chosen = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points, colour = points[chosen], colour[chosen]
    figure = Figure(figsize=(4.2 * len(viewpoints), 4.2))
    axes = figure.subplots(1, len(viewpoints), squeeze=False)[0]
    vmin, vmax = _robust_range(colour)
    if len(points):
        centre = np.median(points, axis=0)
        radius = max(float(np.percentile(np.linalg.norm(points - centre, axis=-1), 90)), 1e-9)
    for ax, (azimuth, elevation) in zip(axes, viewpoints, strict=True):
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"azimuth {azimuth:+.0f}°, elevation {elevation:+.0f}°", fontsize=9)
        if not len(points):
            continue
        eye, rotation = _virtual_camera(centre, radius, azimuth, elevation)
        camera = (points - eye) @ rotation.T
        front = camera[:, 2] > 1e-6
        order = np.argsort(-camera[front, 2])
        u = camera[front, 0][order] / camera[front, 2][order]
        v = camera[front, 1][order] / camera[front, 2][order]
        shown = ax.scatter(u, v, c=colour[front][order], s=0.6, cmap="viridis", vmin=vmin, vmax=vmax, linewidths=0)
        half = 1.05 * max(float(np.percentile(np.abs(np.concatenate([u, v])), 99)), 1e-9) if len(u) else 1.0
        ax.set_xlim(-half, half)
        ax.set_ylim(half, -half)  # image rows grow downwards
    if len(points):
        figure.colorbar(shown, ax=list(axes), shrink=0.7, label="log confidence")
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def save_metric_bars(
    path: str | Path,
    table: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    directions: Mapping[str, str] | None = None,
) -> Path:
    """One small bar chart per metric, one bar per model (e.g. teacher vs student).

    Args:
        table: ``{model: {metric: value}}``.
        metrics: which metrics, in order (default: those of the first model).
        directions: optional marker per metric appended to its title (e.g. ``"↓"`` lower is better).
    """
    if not table:
        raise ValueError("save_metric_bars: the table is empty")
    models = list(table)
    metrics = list(metrics) if metrics is not None else list(next(iter(table.values())))
    if not metrics:
        raise ValueError("save_metric_bars: no metrics to draw")
    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows))
    figure.subplots_adjust(left=0.06, right=0.98, top=0.88 if title else 0.94, bottom=0.1, wspace=0.35, hspace=0.6)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = [f"C{i}" for i in range(len(models))]
    for ax, metric in zip(axes, metrics, strict=False):
        values = [float(table[model].get(metric, np.nan)) for model in models]
        ax.bar(range(len(models)), values, color=colours)
        ax.set_xticks(range(len(models)), [_short(m) for m in models], fontsize=7, rotation=15)
        ax.set_title(f"{metric} {(directions or {}).get(metric, '')}".rstrip(), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]
