"""Evaluation reports: figures, pose recovery + metrics on synthetic rooms, and the eval job end to end."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from d3r.eval import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def _structured_views(n: int = 2, h: int = 24, w: int = 32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n, h, w, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:h, 0:w]
    depth = np.stack([2.0 + 0.05 * xs + 0.02 * ys + i for i in range(n)])
    points = np.stack([(xs - w / 2) / 20 * depth[0], (ys - h / 2) / 20 * depth[0], depth[0]], -1)
    return images, depth, 1.0 + rng.random((n, h, w)) * 5, points


def test_view_grid_is_a_png_with_every_panel(tmp_path):
    images, depth, conf, _ = _structured_views()
    error = np.abs(np.random.default_rng(1).normal(size=depth.shape))
    error[0, :4] = np.nan
    path = figures.save_view_grid(tmp_path / "sub" / "views.png", images, depth, conf, error, title="t")
    assert path == tmp_path / "sub" / "views.png"
    _assert_png(path)
    without_error = figures.save_view_grid(tmp_path / "views3.png", images, depth, conf)
    with Image.open(path) as four, Image.open(without_error) as three:
        assert four.size[0] > three.size[0]  # the error column adds width


def test_view_grid_rejects_mismatched_maps(tmp_path):
    images, depth, conf, _ = _structured_views()
    with pytest.raises(ValueError, match="disagree"):
        figures.save_view_grid(tmp_path / "x.png", images, depth[:, :-1], conf)


def test_point_cloud_render_draws_points(tmp_path):
    _, _, conf, points = _structured_views(1)
    path = figures.save_point_cloud_views(tmp_path / "cloud.png", points, conf[0], max_points=500)
    _assert_png(path)
    empty = figures.save_point_cloud_views(tmp_path / "empty.png", np.full((4, 3), np.nan), np.ones(4))
    assert path.stat().st_size > empty.stat().st_size  # the drawn points are in the image
    with pytest.raises(ValueError, match="confidences"):
        figures.save_point_cloud_views(tmp_path / "bad.png", points, np.ones(3))


def test_metric_bars(tmp_path):
    table = {"teacher": {"acc": 0.1, "nc": 0.9}, "student.pt": {"acc": 0.3, "nc": 0.7}}
    _assert_png(figures.save_metric_bars(tmp_path / "bars.png", table))
    with pytest.raises(ValueError, match="empty"):
        figures.save_metric_bars(tmp_path / "none.png", {})
