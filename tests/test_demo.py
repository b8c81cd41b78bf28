"""The demo's report, and the demo end to end on a small budget: the trained student beats the untrained one."""

from __future__ import annotations

import pytest

from d3r.demo import STUDENT, TEACHER, UNTRAINED, DemoReport, curve_points


def test_curve_points_are_first_middle_last_by_step():
    assert curve_points([]) == []
    assert curve_points([(20, 2.0), (10, 3.0)]) == [(10, 3.0), (20, 2.0)]
    history = [(step, 10.0 / step) for step in (50, 10, 40, 20, 30)]
    assert curve_points(history) == [(10, 1.0), (30, 10.0 / 30), (50, 0.2)]


def test_report_says_what_the_demo_did():
    from d3r.registry import Registration

    report = DemoReport(
        cache_uri="/x/cache.lance", cache_rows={"train": 40, "val": 12}, cache_bytes=12_345_678,
        loss_curve=[(10, 5.5), (300, 1.25), (600, 0.75)], val={"val/gt/abs_rel": 0.0812, "val/loss": 0.9},
        champion_metric="val/gt/abs_rel",
        registration=Registration("d3r-student", 3, False, "val/gt/abs_rel", 0.0812, 0.05, "does not beat"),
        scores={STUDENT: {"abs_rel": 0.08, "delta1": 0.93, "acc": 0.1, "comp": 0.12, "auc_30": 0.61},
                UNTRAINED: {"abs_rel": 1e5, "delta1": 0.0, "acc": 0.5, "auc_30": 0.0},
                TEACHER: {"abs_rel": 0.007, "delta1": 0.99, "acc": 0.01, "comp": 0.01, "auc_30": 1.0}},
        held_out=(3, 12), tracking_uri="sqlite:////x/mlflow.db", seconds={"cache": 40.2, "train": 300.0, "eval": 60.4},
    )
    text = report.format()
    assert "52 rows (40 train, 12 val), 12.3 MB on disk" in text
    assert "5.5 (step 10) → 1.25 (step 300) → 0.75 (step 600)" in text
    assert "val/gt/abs_rel 0.0812, val/loss 0.9" in text
    assert "d3r-student version 3: candidate only (does not beat)" in text
    assert "held-out scenes (3 scenes, 12 samples)" in text
    lines = text.splitlines()
    assert lines[lines.index("| student (trained) | 0.0800 | 0.9300 | 0.1000 | 0.1200 | 0.6100 |")
                 + 1].startswith("| student (untrained) | 100000.0000 | 0.0000 | 0.5000 | nan |")
    assert "cache 40 s, train 300 s, eval 60 s; total 401 s" in text
    assert text.endswith("mlflow ui --backend-store-uri sqlite:////x/mlflow.db")


@pytest.mark.slow
def test_demo_student_beats_the_untrained_one_on_held_out_scenes(tmp_path, ray_local):
    from d3r.config import load_config
    from d3r.demo import demo

    config = load_config("conf/demo.yaml", [
        "--scenes.num_scenes", "6", "--scenes.render_size", "[84,63]", "--scenes.long_side", "56",
        "--scenes.max_samples_per_scene", "3", "--train.max_steps", "80", "--train.val_every", "80",
        "--train.checkpoint_every", "80", "--eval.figures", "false",
        "--cache.uri", str(tmp_path / "cache.lance"), "--train.storage_path", str(tmp_path / "train"),
        "--eval.out_dir", str(tmp_path / "eval"), "--mlflow.tracking_uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ])
    report = demo(config)
    student, untrained = report.scores[STUDENT], report.scores[UNTRAINED]
    assert report.registration is not None and report.registration.champion
    assert report.held_out[0] >= 1 and report.cache_rows["train"] > 0
    assert student["abs_rel"] < 0.5 * untrained["abs_rel"]
    assert student["delta1"] > untrained["delta1"] + 0.2
    assert report.loss_curve[-1][1] < report.loss_curve[0][1]
