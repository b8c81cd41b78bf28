"""Many views in several model passes that share an anchor, brought into one frame.

The rule: with at most ``max_views`` views the model sees them all in one pass. With more, view 0 (the
anchor) and the others in input order, ``max_views - 1`` at a time, make passes ``[0, 1..k]``,
``[0, k+1..2k]``, ...: every pass contains the anchor, so every pass's global pointmap is in the anchor's
camera frame, up to the scale (and, for a learned model, a small pose error) that each pass picks on its own.
Each later pass is brought into the first pass's frame by a Sim(3) (:func:`d3r.geometry.umeyama_sim3`) fitted
on the anchor's global points of both passes (pixels whose confidence is above 1 and at or above the median in
both); the anchor's maps are the first pass's. Within a pass the models bound their memory themselves
(encoder/heads in view chunks: ``teacher.view_chunk``, the student's ``head_chunk``); the global attention over
all of a pass's views is what ``max_views`` bounds.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from d3r.eval.models import Predict
from d3r.geometry import Sim3, apply_sim3, umeyama_sim3
from d3r.scenes.records import View

logger = logging.getLogger(__name__)

ANCHOR_PERCENTILE = 50.0


def plan_passes(num_views: int, max_views: int) -> list[list[int]]:
    """View indices of each pass (see the module docstring); every pass starts with the anchor 0.

    Raises:
        ValueError: when ``max_views < 2`` and there is more than one pass to make.
    """
    if num_views <= max_views:
        return [list(range(num_views))]
    if max_views < 2:
        raise ValueError(f"max_views_per_pass={max_views}: a pass of several holds the anchor and at least one view")
    step = max_views - 1
    return [[0, *range(start, min(start + step, num_views))] for start in range(1, num_views, step)]


def anchor_sim3(points: np.ndarray, conf: np.ndarray, ref_points: np.ndarray, ref_conf: np.ndarray) -> Sim3:
    """Sim(3) taking one pass's anchor points ``[H, W, 3]`` onto the first pass's ``ref_points`` ``[H, W, 3]``,
    fitted on the pixels confident in both (confidences ``[H, W]`` above 1 and at or above their median).

    Raises:
        ValueError: when fewer than 3 pixels qualify.
    """
    usable = np.isfinite(points).all(-1) & np.isfinite(ref_points).all(-1) & (conf > 1) & (ref_conf > 1)
    if not usable.any():
        raise ValueError("the anchor view has no pixel confident in both passes")
    keep = usable & (conf >= np.percentile(conf[usable], ANCHOR_PERCENTILE))
    keep &= ref_conf >= np.percentile(ref_conf[usable], ANCHOR_PERCENTILE)
    return umeyama_sim3(points[keep], ref_points[keep])


def predict_in_passes(predict: Predict, views: list[View], max_views: int) -> tuple[np.ndarray, np.ndarray]:
    """The global pointmap and its confidence of all ``views`` (same size), in view 0's camera frame of the first
    pass, one pass at a time (see the module docstring); logs each pass.

    Returns:
        ``(pts_global [N, H, W, 3] float32, conf_global [N, H, W] float32)``.
    """
    passes = plan_passes(len(views), max_views)
    points: list[np.ndarray | None] = [None] * len(views)
    conf: list[np.ndarray | None] = [None] * len(views)
    for number, indices in enumerate(passes, start=1):
        start = time.perf_counter()
        outputs = predict([views[i] for i in indices])
        pts, cnf = outputs["pts3d_global"], outputs["conf_global"]
        if number > 1:
            try:
                scale, rotation, shift = anchor_sim3(pts[0], cnf[0], points[0], conf[0])
            except ValueError as exc:
                raise ValueError(f"pass {number}/{len(passes)} cannot be joined to the first through view 0 ({exc}); "
                                 "put a view that sees most of the scene first") from exc
            pts = apply_sim3(pts, scale, rotation, shift).astype(np.float32)
            logger.info("pass %d: anchor Sim(3) scale %.4f", number, scale)
        for slot, i in enumerate(indices):
            if points[i] is None:
                points[i], conf[i] = pts[slot], cnf[slot]
        logger.info("pass %d/%d: %d views (anchor + views %d-%d) in %.1f s", number, len(passes), len(indices),
                    indices[1] if len(indices) > 1 else 0, indices[-1], time.perf_counter() - start)
    return np.stack(points), np.stack(conf)
