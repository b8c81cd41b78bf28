"""Per-view figures of a student against its teacher: needs no ground truth, so real photo sets get them too.

One PNG per view: the image, the student's and the teacher's depth, their difference, and both
confidences, in the photo's own orientation (a view the sample turned is turned back:
:func:`d3r.scenes.rotation.unturn_map`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from d3r.eval.figures import CONFIDENCE_LABEL, MapPanel, map_grid_figure
from d3r.scenes.records import View
from d3r.scenes.rotation import unturn_map

_DPI = 100
DEFINITION = (
    "depth: z of each pixel's point in its own camera, the teacher's from its global pointmap seen from the cameras "
    "recovered from it, the student's local z scaled to the teacher's by one median factor (eval.depth_scaling); "
    "difference = student − teacher, in the teacher's units. Blank: the teacher has no point there."
)


def agreement_view_maps(student_depth: np.ndarray, teacher_depth: np.ndarray, teacher_valid: np.ndarray,
                        student_conf: np.ndarray, teacher_conf: np.ndarray) -> list[MapPanel]:
    """The panels of one view (each ``[1, H, W]``): student depth, teacher depth, difference, confidences."""
    teacher = np.where(teacher_valid, teacher_depth, np.nan)
    return [
        MapPanel("depth (student)", student_depth, "depth [teacher's units]", "turbo"),
        MapPanel("depth (teacher)", teacher, "depth [teacher's units]", "turbo"),
        MapPanel("student − teacher", student_depth - teacher, "depth difference [teacher's units]", "coolwarm",
                 "symmetric"),
        MapPanel("confidence (student)", student_conf, CONFIDENCE_LABEL, "viridis", "log"),
        MapPanel("confidence (teacher)", teacher_conf, CONFIDENCE_LABEL, "viridis", "log"),
    ]


def agreement_figures(
    title: str,
    views: list[View],
    student_depth: np.ndarray,
    teacher_depth: np.ndarray,
    teacher_valid: np.ndarray,
    student_conf: np.ndarray,
    teacher_conf: np.ndarray,
) -> list[Figure]:
    """One figure per view, each in the photo's orientation.

    Args:
        views: the sample's views as the models saw them (``image [H, W, 3]``; ``meta["turns"]`` when turned).
        student_depth, teacher_depth: ``[N, H, W]``; teacher_valid: ``[N, H, W]`` where the teacher has a point.
        student_conf, teacher_conf: ``[N, H, W]`` global confidences.
    """
    result = []
    for i, view in enumerate(views):
        turns = int(view.meta.get("turns", 0))
        maps = [unturn_map(values[i], turns)[None] for values in (student_depth, teacher_depth, teacher_valid,
                                                                   student_conf, teacher_conf)]
        turned = " (turned back to the photo's orientation)" if turns % 4 else ""
        result.append(map_grid_figure(unturn_map(view.image, turns)[None], agreement_view_maps(*maps),
                                      f"{title} · view {view.name}{turned}", [view.name], DEFINITION))
    return result


def save_agreement_views(stem: Path, title: str, views: list[View], *maps: np.ndarray) -> list[Path]:
    """:func:`agreement_figures` as ``<stem>_<view name>.png`` files (``maps`` as that function takes them)."""
    paths = []
    for view, figure in zip(views, agreement_figures(title, views, *maps), strict=True):
        path = Path(f"{stem}_{view.name.replace('/', '_')}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=_DPI)
        paths.append(path)
    return paths
