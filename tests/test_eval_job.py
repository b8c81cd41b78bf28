"""Evaluation reports: figures, pose recovery + metrics on synthetic rooms, and the eval job end to end."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from d3r.errors import ConfigError
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


# ------------------------------------------------------------------------ scoring on synthetic rooms

ROOM_SIZE = (96, 72)


@pytest.fixture(scope="module")
def room_reference():
    from d3r.eval.evaluate import Reference
    from d3r.scenes.synthetic import render_scene

    return Reference.from_views(render_scene(1, 0, 3, ROOM_SIZE, "orbit").views)


def _oracle(reference, **params):
    from d3r.teachers.oracle import OracleParams, oracle_outputs

    outputs, _ = oracle_outputs(reference.depth, reference.K, reference.c2w, OracleParams(**params),
                                np.random.default_rng(0))
    return outputs


CLEAN = {"noise": 0.0, "corrupt_blobs": 0, "corrupt_edge_bleed": False, "corrupt_scale_view_prob": 0.0}


def test_uncorrupted_oracle_scores_near_perfect(room_reference):
    from d3r.eval.evaluate import evaluate_prediction

    scores = evaluate_prediction(_oracle(room_reference, **CLEAN), room_reference).metrics
    assert scores["rra_5"] == 1.0 and scores["rta_5"] == 1.0 and scores["auc_30"] > 0.99
    assert scores["rot_err"] < 0.05 and scores["focal_err"] < 1e-3
    assert scores["acc"] < 1e-5 and scores["comp"] < 1e-5 and scores["nc"] > 0.999
    assert scores["abs_rel"] < 1e-5 and scores["delta1"] == 1.0 and scores["inlier_ratio"] == 1.0
    assert scores["consistency"] < 0.01


def test_corrupted_oracle_scores_measurably_worse(room_reference):
    from d3r.eval.evaluate import evaluate_prediction

    clean = evaluate_prediction(_oracle(room_reference, **CLEAN), room_reference).metrics
    corrupted = evaluate_prediction(_oracle(
        room_reference, noise=0.01, corrupt_blobs=3, corrupt_edge_bleed=True, corrupt_scale_view_prob=1.0
    ), room_reference).metrics
    assert corrupted["acc"] > clean["acc"] + 0.01 and corrupted["comp"] > clean["comp"] + 0.005
    assert corrupted["nc"] < clean["nc"] - 0.05
    assert corrupted["abs_rel"] > 0.005 and corrupted["inlier_ratio"] < 0.95
    assert corrupted["consistency"] > 5 * max(clean["consistency"], 0.01)  # the scale-shifted views disagree


def test_a_teacher_agrees_perfectly_with_itself(room_reference):
    from d3r.eval.evaluate import Reference, evaluate_prediction

    outputs = _oracle(room_reference, **CLEAN)
    teacher = Reference.from_prediction(outputs["pts3d_global"], outputs["conf_global"])
    scores = evaluate_prediction(outputs, teacher).metrics
    assert scores["acc"] < 1e-6 and scores["rra_5"] == 1.0 and scores["consistency"] < 0.01


def test_broken_prediction_is_scored_not_dropped(room_reference):
    from d3r.eval.evaluate import evaluate_prediction

    outputs = _oracle(room_reference, **CLEAN)
    behind = {key: -value if key.startswith("pts3d") else value for key, value in outputs.items()}
    scores = evaluate_prediction(behind, room_reference).metrics  # nothing in front: no cameras recovered
    assert np.isnan(scores["focal_err"]) and scores["auc_30"] < 0.5
    with pytest.raises(ValueError, match="do not match"):
        evaluate_prediction({k: v[:2] for k, v in outputs.items()}, room_reference)


def test_reference_needs_ground_truth():
    from d3r.eval.evaluate import Reference
    from d3r.scenes.records import View

    view = View("v0", image=np.zeros((4, 4, 3), np.uint8), K=np.eye(3), pose=np.eye(4), path="/data/v0.png")
    with pytest.raises(ValueError, match="v0.*depth"):
        Reference.from_views([view])


# ----------------------------------------------------------------------------------------------- report


def test_report_averages_samples_then_scenes_and_skips_nan():
    from d3r.eval.report import EvalReport, EvalRow

    report = EvalReport(rows=[
        EvalRow("m", "gt", "a", "s1", {"acc": 1.0, "consistency": float("nan")}),
        EvalRow("m", "gt", "a", "s2", {"acc": 3.0, "consistency": 0.5}),
        EvalRow("m", "gt", "b", "s3", {"acc": 10.0, "consistency": float("nan")}),
    ])
    per_scene = {row.keys[2]: row for row in report.per_scene()}
    assert per_scene["a"].metrics["acc"] == 2.0 and per_scene["a"].count == 2
    assert np.isnan(per_scene["b"].metrics["consistency"])
    (mean,) = report.means()
    assert mean.keys == ("m", "gt") and mean.count == 2
    assert mean.metrics["acc"] == 6.0 and mean.metrics["consistency"] == 0.5
    assert "| m | gt | 2 | 6 |" in report.format()


# ------------------------------------------------------------------------------------- the job, end to end


def _job_config(root, models, **eval_fields):
    from d3r.config import D3RConfig

    return D3RConfig.model_validate({
        "scenes": {"num_scenes": 2, "views_per_scene": 3, "render_size": [56, 42], "long_side": 56,
                   "patch_size": 14, "views_per_sample": 3, "max_samples_per_scene": 1},
        "teacher": {"name": "oracle"},
        "cache": {"uri": str(root / "cache.lance")},
        "eval": {"models": models, "split": "all", "figure_samples": 1, "out_dir": str(root / "eval"),
                 "max_points": 5000, **eval_fields},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "eval-test"},
    })


@pytest.fixture(scope="module")
def job_run(tmp_path_factory, ray_local):
    """The eval of the default flow: the teacher's outputs come from the cache the cache job made."""
    import torch

    from d3r.cache.pipeline import run_cache_job
    from d3r.eval.job import run_eval
    from d3r.student import build_student
    from d3r.student.checkpoint import save_student

    root = tmp_path_factory.mktemp("eval_job")
    torch.manual_seed(0)
    checkpoint = save_student(build_student("tiny"), root / "tiny.pt")
    config = _job_config(root, ["teacher", str(checkpoint), "models:/d3r-student@champion"])
    _register_student(config, checkpoint)
    assert run_cache_job(config).written == 2
    return root, config, run_eval(config)


def _register_student(config, checkpoint) -> None:
    """A registered model as the training job leaves one: the pyfunc around a checkpoint, alias ``champion``."""
    import mlflow

    from d3r.registry import log_student_model, register_student
    from d3r.tracking import use_experiment

    with mlflow.start_run(experiment_id=use_experiment(config.mlflow.model_copy(update={"experiment": "registry"}))):
        info = log_student_model(checkpoint)
    assert register_student(info, config.mlflow, "val/gt/abs_rel", 1.0).champion


def test_job_scores_teacher_and_student_against_gt_and_each_other(job_run):
    _, _, report = job_run
    assert not report.rejects
    combos = {row.keys for row in report.means()}
    students = ("student_tiny", "d3r-student_champion")
    assert combos == {("teacher", "gt")} | {(s, ref) for s in students for ref in ("gt", "teacher")}
    means = {row.keys: row.metrics for row in report.means()}
    # the oracle is ground truth up to its corruptions; a random student is far off
    assert means[("teacher", "gt")]["auc_30"] > 0.9
    assert means[("student_tiny", "gt")]["chamfer"] > 3 * means[("teacher", "gt")]["chamfer"]
    assert {row.scene for row in report.rows} == {"room_0000", "room_0001"}
    assert "student_tiny" in report.format() and "MLflow run" in report.format()


def test_job_writes_tables_and_figures(job_run):
    root, _, report = job_run
    out = root / "eval"
    header = (out / "means.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["model", "reference", "scenes"] and {"acc", "nc", "auc_30", "consistency"} <= set(header)
    assert len((out / "per_sample.csv").read_text().splitlines()) == 1 + 5 * 2  # 5 (model, reference) x 2 samples
    assert "| student_tiny | teacher |" in (out / "report.md").read_text()
    pngs = sorted(p.name for p in report.files if p.suffix == ".png")
    assert "metrics_vs_gt.png" in pngs and "metrics_vs_teacher.png" in pngs
    assert sum(name.endswith("_views.png") for name in pngs) == 3  # figure_samples=1 per model
    for path in report.files:
        if path.suffix == ".png":
            _assert_png(path, min_bytes=2_000)


def test_job_logs_metrics_and_artifacts_to_mlflow(job_run):
    from mlflow.tracking import MlflowClient

    root, config, report = job_run
    client = MlflowClient(config.mlflow.tracking_uri)
    run = client.get_run(report.run_id)
    assert run.data.params["eval.models"] == ",".join(config.eval.models)
    assert 0.9 < run.data.metrics["teacher/gt/auc_30"] <= 1.0
    assert "student_tiny/teacher/acc" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(report.run_id, "eval")}
    assert {"eval/means.csv", "eval/report.md", "eval/figures"} <= logged
    assert (root / "mlartifacts").is_dir()  # beside the sqlite store, not in the working directory


def test_job_refuses_bad_models_before_any_work(job_run, tmp_path):
    from d3r.eval.job import run_eval

    root, _, _ = job_run
    with pytest.raises(ConfigError, match="eval.models.*missing.pt"):
        run_eval(_job_config(root, ["teacher", str(tmp_path / "missing.pt")]))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        run_eval(_job_config(root, [str(tmp_path / "junk.pt")]))
    with pytest.raises(ValueError, match="models:/nobody@champion"):
        run_eval(_job_config(root, ["models:/nobody@champion"]))
    with pytest.raises(ValueError, match="eval.split"):
        run_eval(_job_config(root, ["teacher"], split="val", max_samples=1).model_copy(
            update={"scenes": _job_config(root, []).scenes.model_copy(update={"val_fraction": 0.0})}
        ))


def test_jobs_eval_entry_point_rejects_a_bad_config(capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_job_entry", Path(__file__).parents[1] / "jobs" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--eval.split", "sometimes"]) == 2
    assert "eval.split" in capsys.readouterr().err


def test_students_are_scored_on_the_teachers_pixels_cropped_to_their_patch(tmp_path):
    """Views sized for a patch-16 teacher (64x48): the patch-14 student sees them centre-cropped to 56x42
    instead of being rejected, and is scored against ground truth and the teacher cropped the same way."""
    import torch

    from d3r.eval.job import run_eval
    from d3r.student import build_student
    from d3r.student.checkpoint import save_student

    torch.manual_seed(0)
    checkpoint = save_student(build_student("tiny"), tmp_path / "tiny.pt")
    config = _job_config(tmp_path, ["teacher", str(checkpoint)], figures=False, teacher_outputs="run")
    config.scenes = config.scenes.model_copy(update={"render_size": (64, 48), "long_side": 64, "patch_size": 16})
    report = run_eval(config)
    assert not report.rejects
    combos = {row.keys for row in report.means()}
    assert combos == {("teacher", "gt"), ("student_tiny", "gt"), ("student_tiny", "teacher")}
    means = {row.keys: row.metrics for row in report.means()}
    assert means[("teacher", "gt")]["auc_30"] > 0.9  # the teacher itself still sees the full 64x48 views
