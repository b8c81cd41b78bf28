"""The confidence rule that decides which points a reconstruction keeps.

The user picks one: a percentile of this run's confidences (``conf_percentile``: keep the points at or above
that percentile of all views' confidences, so 10 drops the least confident tenth) or an absolute threshold
(``conf_threshold``: keep points with confidence at or above it). Confidence is the model's native value: for
Fast3R and the students (trained on its outputs, same activation) ``C = 1 + exp(x)``, so C ≥ 1 and 1 means "no
confidence"; for the ``oracle`` C = 1 + 30·quality on clean pixels, lower on corrupted ones, exactly 1 where the
ground truth has no depth. Points at the floor (C ≤ 1) or not finite are never kept, whatever the rule.
"""

from __future__ import annotations

import numpy as np

CONF_FLOOR = 1.0


def confidence_threshold(conf: np.ndarray, percentile: float | None, threshold: float | None) -> tuple[float, str]:
    """The threshold the rule sets on confidences ``conf`` (any shape) and the rule in words.

    Raises:
        ValueError: unless exactly one of ``percentile`` (0..100) and ``threshold`` is given.
    """
    if (percentile is None) == (threshold is None):
        raise ValueError("give exactly one of conf_percentile and conf_threshold")
    if threshold is not None:
        return float(threshold), f"conf >= {threshold:g} (absolute threshold)"
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"conf_percentile must lie in [0, 100], got {percentile}")
    values = conf[np.isfinite(conf) & (conf > CONF_FLOOR)]
    value = float(np.percentile(values, percentile)) if values.size else float("inf")
    return value, f"conf >= {value:.4g} (percentile {percentile:g} of this run's confidences above {CONF_FLOOR:g})"


def keep_mask(conf: np.ndarray, points: np.ndarray, threshold: float) -> np.ndarray:
    """``[..., H, W]`` bool: finite points (``[..., H, W, 3]``) whose confidence is above the floor and at or
    above ``threshold``."""
    return np.isfinite(points).all(-1) & np.isfinite(conf) & (conf > CONF_FLOOR) & (conf >= threshold)
