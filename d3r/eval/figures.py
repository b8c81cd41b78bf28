"""Figures a person can read: per-view maps, point-cloud renders, and metric bars.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, safe in workers). Each
``*_figure`` function builds a :class:`~matplotlib.figure.Figure` (tests read its labels); each
``save_*`` function writes one PNG of it and returns the path. Every colour bar says what it shows
and in which unit; a map's blank pixels are pixels without a value (NaN).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from d3r.geometry import transform_points

_DPI = 100
CONFIDENCE_LABEL = "confidence C (log scale)"
ERROR_DEFINITION = (
    "error = distance from each pixel's predicted 3D point, after the prediction is aligned to the reference "
    "(eval.alignment), to the reference's 3D point for that pixel; in depth units. Blank: the reference has no "
    "point there."
)


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


@dataclass(frozen=True)
class MapPanel:
    """One column of a view grid: a per-pixel map of every view, sharing one colour range and one colour bar.

    Attributes:
        title: column title (e.g. ``"depth (student)"``).
        values: ``[N, H, W]``; NaN pixels have no value and are drawn blank.
        label: the colour bar's label with its unit (e.g. ``"depth [m]"``).
        cmap: matplotlib colour map.
        scale: ``linear``, ``log`` (values > 0, e.g. confidence), ``from_zero`` (errors: the range starts
            at 0), or ``symmetric`` (signed differences: the range is centred on 0).
    """

    title: str
    values: np.ndarray
    label: str
    cmap: str = "turbo"
    scale: Literal["linear", "log", "from_zero", "symmetric"] = "linear"

    def norm(self) -> Normalize:
        """The colour scale over the 2nd–98th percentile of the finite values, shaped by ``scale``."""
        values = np.asarray(self.values, dtype=float)
        if self.scale == "log":
            positive = np.where(values > 0, values, np.nan)
            lo, hi = _robust_range(positive)
            lo = max(lo, 1e-12)
            return LogNorm(lo, max(hi, lo * 1.001))
        lo, hi = _robust_range(values)
        if self.scale == "from_zero":
            return Normalize(0.0, max(hi, 1e-9))
        if self.scale == "symmetric":
            bound = max(abs(lo), abs(hi), 1e-9)
            return Normalize(-bound, bound)
        return Normalize(lo, hi)


def _plain_log_ticks(axis: object) -> None:
    """A log colour bar's ticks at 1, 2, 5 × 10^k, written as plain numbers (no overlapping minor labels)."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def map_grid_figure(
    images: np.ndarray,
    panels: Sequence[MapPanel],
    title: str | None = None,
    view_names: Sequence[str] | None = None,
    note: str | None = None,
) -> Figure:
    """One row per view (labelled with its name), one column per map after the image, a labelled colour
    bar under each map column, and ``note`` (e.g. how a map is defined) under the grid.

    Args:
        images: ``[N, H, W, 3]`` uint8 RGB.
        panels: the maps, each ``[N, H, W]``.
        view_names: the N row labels (default ``view 0`` …); use the names the title lists.

    Raises:
        ValueError: when a map's or ``view_names``' shape disagrees with ``images``.
    """
    images = np.asarray(images)
    n, height, width = images.shape[:3]
    for panel in panels:
        if np.shape(panel.values) != (n, height, width):
            raise ValueError(f"map grid: images {images.shape} and {panel.title!r} {np.shape(panel.values)} disagree")
    names = [f"view {i}" for i in range(n)] if view_names is None else [str(name) for name in view_names]
    if len(names) != n:
        raise ValueError(f"map grid: {n} views but {len(names)} view names")
    columns = 1 + len(panels)
    cell = 2.6
    figure = Figure(figsize=(columns * cell + 0.6, n * cell * height / width + 1.6 + (0.5 if note else 0.0)),
                    layout="constrained")
    axes = figure.subplots(n, columns, squeeze=False)
    norms = [panel.norm() for panel in panels]
    for row in range(n):
        axes[row, 0].imshow(images[row])
        axes[row, 0].set_ylabel(textwrap.fill(names[row], 18), fontsize=8)
        for col, (panel, norm) in enumerate(zip(panels, norms, strict=True), start=1):
            shown = axes[row, col].imshow(np.asarray(panel.values[row], dtype=float), cmap=panel.cmap, norm=norm)
            if row == 0:
                axes[row, col].set_title(panel.title, fontsize=9)
            if row == n - 1:
                bar = figure.colorbar(shown, ax=axes[:, col], location="bottom", shrink=0.9, aspect=18)
                bar.set_label(panel.label, fontsize=8)
                if panel.scale == "log":
                    _plain_log_ticks(bar.ax.xaxis)
                bar.ax.tick_params(labelsize=7)
    axes[0, 0].set_title("image", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(textwrap.fill(title, 30 * columns), fontsize=10)
    if note:
        figure.supxlabel(textwrap.fill(note, int(16 * columns * cell)), fontsize=7, ha="center")
    return figure


def view_grid_figure(
    images: np.ndarray,
    depth: np.ndarray,
    conf: np.ndarray,
    error: np.ndarray | None = None,
    title: str | None = None,
    *,
    view_names: Sequence[str] | None = None,
    unit: str = "scene units",
    reference: str = "GT",
    error_definition: str = ERROR_DEFINITION,
) -> Figure:
    """The figure of :func:`save_view_grid`."""
    images, depth, conf = np.asarray(images), np.asarray(depth, float), np.asarray(conf, float)
    if depth.shape != images.shape[:3] or conf.shape != images.shape[:3]:
        raise ValueError(f"save_view_grid: images {images.shape}, depth {depth.shape}, conf {conf.shape} disagree")
    panels = [
        MapPanel("depth (predicted)", depth, f"depth [{unit}]", "turbo"),
        MapPanel("confidence", conf, CONFIDENCE_LABEL, "viridis", "log"),
    ]
    if error is not None:
        panels.append(MapPanel(f"error vs {reference}", np.asarray(error, float),
                               f"error: 3D distance to {reference} [{unit}]", "magma", "from_zero"))
    note = error_definition if error is not None else None
    return map_grid_figure(images, panels, title, view_names, note)


def save_view_grid(
    path: str | Path,
    images: np.ndarray,
    depth: np.ndarray,
    conf: np.ndarray,
    error: np.ndarray | None = None,
    title: str | None = None,
    *,
    view_names: Sequence[str] | None = None,
    unit: str = "scene units",
    reference: str = "GT",
    error_definition: str = ERROR_DEFINITION,
) -> Path:
    """One row per view: image, predicted depth, confidence and (when given) the error map vs ``reference``.

    Depth and error share one colour range across views (2nd–98th percentile) so views compare;
    confidence is drawn on a log scale; error pixels without a reference are NaN and drawn blank.
    Every colour bar names its quantity and ``unit``; the error's definition is printed under the grid.

    Args:
        images: ``[N, H, W, 3]`` uint8 RGB.
        depth: ``[N, H, W]`` predicted depth.
        conf: ``[N, H, W]`` confidence (> 0).
        error: ``[N, H, W]`` per-pixel error (e.g. distance to the GT point), NaN = no reference.
        view_names: row labels, the views' names (default ``view 0`` …).
        unit: unit of depth and error (e.g. ``"m"`` when scaled to metric ground truth).
    """
    figure = view_grid_figure(images, depth, conf, error, title, view_names=view_names, unit=unit,
                              reference=reference, error_definition=error_definition)
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


@dataclass
class _Cloud:
    """Finite points ``[P, 3]`` and their colours: ``[P, 3]`` RGB in 0..1, or ``[P]`` confidence."""

    points: np.ndarray
    colours: np.ndarray


def _cloud(points: np.ndarray, colours: np.ndarray, max_points: int, seed: int) -> _Cloud:
    keep = np.isfinite(points).all(-1) & np.isfinite(colours.reshape(len(colours), -1)).all(-1)
    points, colours = points[keep], colours[keep]
    if len(points) > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))
        points, colours = points[chosen], colours[chosen]
    return _Cloud(points, colours)


def point_cloud_figure(
    points: np.ndarray,
    conf: np.ndarray,
    viewpoints: Sequence[tuple[float, float]] = ((-35.0, 25.0), (35.0, 10.0)),
    max_points: int = 30000,
    seed: int = 0,
    title: str | None = None,
    *,
    images: np.ndarray | None = None,
    color_by: Literal["image", "confidence"] = "image",
    ground_truth: np.ndarray | None = None,
    view0_c2w: np.ndarray | None = None,
    label: str = "prediction",
) -> Figure:
    """The figure of :func:`save_point_cloud_views`."""
    points = np.asarray(points, float).reshape(-1, 3)
    conf = np.asarray(conf, float).reshape(-1)
    if len(conf) != len(points):
        raise ValueError(f"save_point_cloud_views: {len(points)} points but {len(conf)} confidences")
    by_image = color_by == "image" and images is not None
    if by_image:
        colours = np.asarray(images, float).reshape(-1, 3) / 255.0
        if len(colours) != len(points):
            raise ValueError(f"save_point_cloud_views: {len(points)} points but {len(colours)} image pixels")
    else:
        colours = conf
    rows = [(label, points)]
    if ground_truth is not None:
        truth = np.asarray(ground_truth, float).reshape(-1, 3)
        if len(truth) != len(points):
            raise ValueError(f"save_point_cloud_views: {len(points)} points but {len(truth)} ground-truth points")
        rows.append(("ground truth", truth))
    if view0_c2w is not None:  # render in view 0's camera frame: the virtual cameras orbit it
        to_camera = np.linalg.inv(np.asarray(view0_c2w, float))
        rows = [(name, transform_points(to_camera, cloud)) for name, cloud in rows]
    clouds = [(name, _cloud(cloud, colours, max_points, seed)) for name, cloud in rows]
    # one orbit for every row (the ground truth's when given), so that the rows line up
    anchor = clouds[-1][1].points if len(clouds[-1][1].points) else clouds[0][1].points
    centre = np.median(anchor, axis=0) if len(anchor) else np.zeros(3)
    radius = max(float(np.percentile(np.linalg.norm(anchor - centre, axis=-1), 90)), 1e-9) if len(anchor) else 1.0
    figure = Figure(figsize=(4.2 * len(viewpoints) + (0.9 if not by_image else 0.0), 4.0 * len(clouds) + 0.9),
                    layout="constrained")
    axes = figure.subplots(len(clouds), len(viewpoints), squeeze=False)
    norm = None if by_image else LogNorm(*_log_range(colours))
    shown = None
    for row, (name, cloud) in enumerate(clouds):
        for ax, (azimuth, elevation) in zip(axes[row], viewpoints, strict=True):
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: azimuth {azimuth:+.0f}°, elevation {elevation:+.0f}°", fontsize=9)
            if not len(cloud.points):
                ax.text(0.5, 0.5, "no points", ha="center", va="center", transform=ax.transAxes, color="0.4")
                continue
            eye, rotation = _virtual_camera(centre, radius, azimuth, elevation)
            camera = (cloud.points - eye) @ rotation.T
            front = camera[:, 2] > 1e-6
            order = np.argsort(-camera[front, 2])
            u = camera[front, 0][order] / camera[front, 2][order]
            v = camera[front, 1][order] / camera[front, 2][order]
            drawn = cloud.colours[front][order]
            if by_image:
                ax.scatter(u, v, c=drawn, s=0.8, linewidths=0)
            else:
                shown = ax.scatter(u, v, c=drawn, s=0.8, cmap="viridis", norm=norm, linewidths=0)
            half = 1.05 * max(float(np.percentile(np.abs(np.concatenate([u, v])), 99)), 1e-9) if len(u) else 1.0
            ax.set_xlim(-half, half)
            ax.set_ylim(half, -half)  # image rows grow downwards
    if shown is not None:
        bar = figure.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.7, label=CONFIDENCE_LABEL)
        _plain_log_ticks(bar.ax.yaxis)
    caption = "points coloured by their pixel's image colour" if by_image else "points coloured by confidence"
    if ground_truth is not None:
        caption += f"; top: {label}, bottom: ground truth, seen from the same virtual cameras"
    figure.supxlabel(caption, fontsize=8)
    if title:
        figure.suptitle(textwrap.fill(title, 45 * len(viewpoints)), fontsize=10)
    return figure


def _log_range(conf: np.ndarray) -> tuple[float, float]:
    lo, hi = _robust_range(np.where(conf > 0, conf, np.nan))
    lo = max(lo, 1e-12)
    return lo, max(hi, lo * 1.001)


def save_point_cloud_views(
    path: str | Path,
    points: np.ndarray,
    conf: np.ndarray,
    viewpoints: Sequence[tuple[float, float]] = ((-35.0, 25.0), (35.0, 10.0)),
    max_points: int = 30000,
    seed: int = 0,
    title: str | None = None,
    *,
    images: np.ndarray | None = None,
    color_by: Literal["image", "confidence"] = "image",
    ground_truth: np.ndarray | None = None,
    view0_c2w: np.ndarray | None = None,
    label: str = "prediction",
) -> Path:
    """The point cloud rendered from virtual cameras (one panel per viewpoint), with the ground truth's
    cloud in a second row, seen from the same cameras, when ``ground_truth`` is given.

    Points are coloured by their pixel's colour in ``images`` (``color_by="image"``, when images are
    given), else by confidence on a log scale with a labelled colour bar. The same random subsample of
    ``max_points`` pixels is drawn in each row, projected with a pinhole camera orbiting the cloud's
    median (the ground truth's when given) at (azimuth, elevation) degrees, 2.5 robust radii away, far
    to near.

    Args:
        points: ``[..., 3]`` points (e.g. ``[N, H, W, 3]``); non-finite ones are skipped.
        conf: ``[...]`` confidence of each point.
        images: ``[N, H, W, 3]`` uint8, the pixels of ``points``.
        ground_truth: ``[..., 3]`` the reference's points for the same pixels, in the frame of ``points``
            (e.g. the aligned prediction and the reference); NaN where there is none.
        view0_c2w: ``[4, 4]`` view 0's camera-to-world in the frame of ``points``: the renders then orbit
            view 0's camera frame (points already in view 0's frame need none).
        label: name of the first row.
    """
    figure = point_cloud_figure(points, conf, viewpoints, max_points, seed, title, images=images, color_by=color_by,
                                ground_truth=ground_truth, view0_c2w=view0_c2w, label=label)
    return _save(figure, path)


def _value_text(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def _tick_label(name: str, width: int = 14) -> str:
    """A model name on lines of at most ``width`` characters, broken after ``_ - / : @ .`` or a space where
    possible; every character kept."""
    lines = [""]
    for chunk in re.findall(r"[^_\-/:@. ]+[_\-/:@. ]?|[_\-/:@. ]", name):
        while len(chunk) > width:
            if lines[-1]:
                lines.append("")
            lines[-1], chunk = chunk[:width], chunk[width:]
            lines.append("")
        if lines[-1] and len(lines[-1]) + len(chunk) > width:
            lines.append("")
        lines[-1] += chunk
    return "\n".join(line.rstrip() for line in lines if line.strip())


def metric_bars_figure(
    table: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    directions: Mapping[str, str] | None = None,
    *,
    model_names: Mapping[str, str] | None = None,
) -> Figure:
    """The figure of :func:`save_metric_bars`."""
    if not table:
        raise ValueError("save_metric_bars: the table is empty")
    models = list(table)
    metrics = list(metrics) if metrics is not None else list(next(iter(table.values())))
    if not metrics:
        raise ValueError("save_metric_bars: no metrics to draw")
    labels = [_tick_label((model_names or {}).get(model, model)) for model in models]
    label_lines = max(label.count("\n") + 1 for label in labels)
    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    width = max(3.2, 0.95 * len(models) + 0.8)
    figure = Figure(figsize=(width * columns, (2.4 + 0.16 * label_lines) * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = [f"C{i}" for i in range(len(models))]
    for ax, metric in zip(axes, metrics, strict=False):
        values = np.array([float(table[model].get(metric, np.nan)) for model in models])
        finite = values[np.isfinite(values)]
        low, high = min(0.0, *finite) if finite.size else 0.0, max(0.0, *finite) if finite.size else 1.0
        span = (high - low) or 1.0
        ax.set_ylim(low - (0.12 * span if low < 0 else 0.0), high + 0.2 * span)
        positions = np.arange(len(models))
        bars = ax.bar(positions[np.isfinite(values)], finite, color=[c for c, v in zip(colours, values, strict=True)
                                                                    if np.isfinite(v)])
        ax.bar_label(bars, labels=[_value_text(v) for v in finite], fontsize=7, padding=2)
        for position in positions[~np.isfinite(values)]:  # no value: a hatched gap marked "n/a", never a 0 bar
            ax.bar(position, ax.get_ylim()[1] - max(low, 0.0), bottom=max(low, 0.0), color="none",
                   edgecolor="0.6", hatch="///", linewidth=0.5)
            ax.text(position, (max(low, 0.0) + ax.get_ylim()[1]) / 2, "n/a\n(NaN)", ha="center", va="center",
                    fontsize=7, color="0.3", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        ax.axhline(0.0, color="0.3", linewidth=0.6)
        ax.set_xticks(positions, labels, fontsize=7)
        ax.set_title(f"{metric} {(directions or {}).get(metric, '')}".rstrip(), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_metric_bars(
    path: str | Path,
    table: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    directions: Mapping[str, str] | None = None,
    *,
    model_names: Mapping[str, str] | None = None,
) -> Path:
    """One small bar chart per metric, one bar per model (e.g. teacher vs student), each bar's value printed
    on it; a missing or NaN value is a hatched "n/a (NaN)" gap, never a zero bar. Model names are wrapped
    onto lines, never cut.

    Args:
        table: ``{model: {metric: value}}``.
        metrics: which metrics, in order (default: those of the first model).
        directions: optional marker per metric appended to its title (e.g. ``"↓"`` lower is better).
        model_names: the name to show per model (e.g. ``{"teacher": "teacher (fast3r)"}``).
    """
    return _save(metric_bars_figure(table, metrics, title, directions, model_names=model_names), path)
