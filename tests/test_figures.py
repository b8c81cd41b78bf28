"""Figures a person can read: labelled colour bars with units, the error map's definition, row labels that are
the view names, point clouds in image colour beside the ground truth, metric bars with printed values and NaN
distinguishable from zero, model names never cut."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.text import Text
from PIL import Image

from d3r.eval import figures


def texts(figure) -> list[str]:
    return [text.get_text() for text in figure.findobj(Text) if text.get_text()]


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def views():
    rng = np.random.default_rng(0)
    n, h, w = 3, 24, 32
    images = rng.integers(0, 255, size=(n, h, w, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:h, 0:w]
    depth = np.stack([2.0 + 0.05 * xs + 0.02 * ys + i for i in range(n)])
    points = np.stack([np.stack([(xs - w / 2) / 20 * d, (ys - h / 2) / 20 * d, d], -1) for d in depth])
    conf = 1.0 + rng.random((n, h, w)) * 5
    error = np.abs(rng.normal(size=(n, h, w)))
    error[0, :4] = np.nan
    return images, depth, conf, error, points


def test_view_grid_labels_rows_by_view_name_and_bars_by_quantity_and_unit(views, tmp_path):
    images, depth, conf, error, _ = views
    names = ["IMG_0012.jpg", "IMG_0013.jpg", "IMG_0020.jpg"]
    figure = figures.view_grid_figure(images, depth, conf, error, "teacher (fast3r) · tower · views "
                                      + ", ".join(names), view_names=names, unit="m")
    assert [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()] == names
    bar_labels = [ax.get_xlabel() for ax in figure.axes if ax.get_xlabel()]
    assert bar_labels == ["depth [m]", figures.CONFIDENCE_LABEL, "error: 3D distance to GT [m]"]
    assert flat(figures.ERROR_DEFINITION) in [flat(text) for text in texts(figure)]
    assert "teacher (fast3r) · tower · views IMG_0012.jpg, IMG_0013.jpg, IMG_0020.jpg" in [
        flat(text) for text in texts(figure)]
    path = figures.save_view_grid(tmp_path / "views.png", images, depth, conf, error, view_names=names)
    with Image.open(path) as png:
        assert png.size[0] > 600 and png.size[1] > 300


def test_view_grid_without_error_has_no_error_definition_and_default_row_labels(views):
    images, depth, conf, _, _ = views
    figure = figures.view_grid_figure(images, depth, conf)
    assert [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()] == ["view 0", "view 1", "view 2"]
    assert not any("error" in text for text in texts(figure))
    with pytest.raises(ValueError, match="3 views but 2 view names"):
        figures.view_grid_figure(images, depth, conf, view_names=["a", "b"])


def test_map_grid_draws_any_maps_with_signed_differences_centred(views):
    images, depth, conf, _, _ = views
    difference = depth - depth.mean()
    panel = figures.MapPanel("student − teacher", difference, "depth difference [teacher units]", "coolwarm",
                             "symmetric")
    norm = panel.norm()
    assert norm.vmin == pytest.approx(-norm.vmax)
    figure = figures.map_grid_figure(images, [panel], note="difference = student depth − teacher depth")
    assert "depth difference [teacher units]" in [ax.get_xlabel() for ax in figure.axes]
    assert "difference = student depth − teacher depth" in texts(figure)


def scatter_colours(figure) -> list[np.ndarray]:
    return [collection.get_facecolors() for collection in figure.findobj(PathCollection)]


def test_point_cloud_is_coloured_by_image_with_the_ground_truth_beside(views):
    images, _, conf, _, points = views
    truth = points * 1.01
    truth[0, :2] = np.nan  # pixels without ground truth
    figure = figures.point_cloud_figure(points, conf, images=images, ground_truth=truth, label="student_x")
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert sum(title.startswith("student_x: azimuth") for title in titles) == 2
    assert sum(title.startswith("ground truth: azimuth") for title in titles) == 2
    pixel_colours = {tuple(np.round(rgb, 4)) for rgb in images.reshape(-1, 3) / 255.0}
    drawn = scatter_colours(figure)
    assert len(drawn) == 4 and all(len(colours) > 100 for colours in drawn)
    assert all(tuple(np.round(rgb, 4)) in pixel_colours for colours in drawn for rgb in colours[:, :3])
    assert not any(figures.CONFIDENCE_LABEL in text for text in texts(figure))  # no confidence bar


def test_point_cloud_coloured_by_confidence_has_a_labelled_log_bar(views):
    images, _, conf, _, points = views
    figure = figures.point_cloud_figure(points, conf, images=images, color_by="confidence")
    assert figures.CONFIDENCE_LABEL in [ax.get_ylabel() for ax in figure.axes]
    assert "points coloured by confidence" in texts(figure)
    with pytest.raises(ValueError, match="ground-truth points"):
        figures.point_cloud_figure(points, conf, ground_truth=points[:1])


def test_metric_bars_print_values_and_tell_nan_from_zero_and_never_cut_names(tmp_path):
    long_name = "student_d3r-s_long_run_name_epoch_10"
    table = {"teacher": {"abs_rel": 0.0, "auc_30": float("nan")},
             long_name: {"abs_rel": 0.0312, "auc_30": 0.62},
             "models:/d3r-student@champion": {"abs_rel": 0.02}}  # auc_30 missing: no value
    figure = figures.metric_bars_figure(table, ["abs_rel", "auc_30"], "mean vs gt", {"abs_rel": "↓"},
                                        model_names={"teacher": "teacher (oracle)"})
    abs_rel, auc = figure.axes[:2]
    assert abs_rel.get_title() == "abs_rel ↓"
    abs_rel_texts = [t.get_text() for t in abs_rel.texts]
    assert abs_rel_texts == ["0", "0.0312", "0.02"]  # a zero is a printed 0, not a gap
    auc_texts = [t.get_text() for t in auc.texts]
    assert auc_texts.count("n/a\n(NaN)") == 2 and "0.62" in auc_texts and "0" not in auc_texts
    labels = ["".join(label.get_text().split()) for label in abs_rel.get_xticklabels()]  # lines joined
    assert labels == ["teacher(oracle)", long_name, "models:/d3r-student@champion"]
    assert all(len(line) <= 14 for label in abs_rel.get_xticklabels() for line in label.get_text().split("\n"))
    path = figures.save_metric_bars(tmp_path / "bars.png", table, model_names={"teacher": "teacher (oracle)"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
