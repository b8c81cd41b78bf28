"""The eval on data without ground truth (issue 14, item 3): student-vs-teacher agreement against the teacher
outputs already in the cache (the teacher is never run), per-view figures in each photo's orientation, and a
non-zero exit with the reason when there is nothing to score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d3r.cli import main as d3r_main
from d3r.config import load_config
from d3r.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ray_local")


def write_photo(path: Path, width: int, height: int, seed: int) -> None:
    """A PNG of smooth random colour (a photo's structure, not noise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(path)


def overrides(root: Path, *models: str, **eval_fields: str) -> list[str]:
    args = ["--scenes.source", "folders", "--scenes.root", str(root / "photos"), "--scenes.long_side", "64",
            "--scenes.views_per_sample", "4", "--teacher.name", "fast3r", "--teacher.checkpoint", "random",
            "--teacher.preset", "tiny", "--cache.uri", str(root / "cache.lance"), "--eval.split", "all",
            "--eval.figure_samples", "1", "--eval.out_dir", str(root / "eval"), "--eval.max_points", "2000",
            "--mlflow.tracking_uri", f"sqlite:///{root / 'mlflow.db'}", "--eval.models", f"[{', '.join(models)}]"]
    for name, value in eval_fields.items():
        args += [f"--eval.{name}", value]
    return args


@pytest.fixture(scope="module")
def cached_photos(tmp_path_factory):
    """A folder of 4 photos without ground truth (one portrait), cached by a random tiny Fast3R; a tiny student."""
    import torch

    from d3r.cache.pipeline import run_cache_job
    from d3r.student import build_student
    from d3r.student.checkpoint import save_student

    root = tmp_path_factory.mktemp("no_gt")
    for i in range(3):
        write_photo(root / "photos" / "kitchen" / f"IMG_{i}.png", 128, 96, seed=i)
    write_photo(root / "photos" / "kitchen" / "IMG_3.png", 96, 128, seed=3)
    torch.manual_seed(0)
    student = save_student(build_student("tiny"), root / "tiny.pt")
    summary = run_cache_job(load_config(None, overrides(root, "teacher"), environ={}))
    assert summary.written == 1, summary.format()
    return root, student


def test_eval_without_ground_truth_scores_students_against_the_cached_teacher(cached_photos, monkeypatch):
    from d3r.eval.job import run_eval
    from d3r.teachers import fast3r

    root, student = cached_photos
    calls = []
    monkeypatch.setattr("d3r.eval.models.build_teacher", lambda *a, **k: calls.append("build"))
    monkeypatch.setattr(fast3r.Fast3RTeacher, "predict", lambda *a, **k: calls.append("predict"))

    report = run_eval(load_config(None, overrides(root, "teacher", str(student)), environ={}))

    assert calls == []  # the teacher was neither built nor run: its outputs came from the cache
    assert not report.rejects
    assert {row.keys for row in report.means()} == {("student_tiny", "teacher")}
    assert "| student_tiny | teacher |" in (root / "eval" / "report.md").read_text()
    per_view = sorted(p.name for p in report.files if "_vs_teacher_" in p.name)
    assert len(per_view) == 4 and per_view[-1].endswith("_IMG_3.png")
    assert (root / "eval" / "metrics_vs_teacher.png").is_file()


def test_per_view_figures_show_each_photo_in_its_own_orientation(cached_photos):
    """The portrait photo was turned to the landscape sample; its figure turns it back."""
    from d3r.eval.agreement import agreement_figures
    from d3r.scenes.preprocess import crop_views_to_patch
    from d3r.scenes.sampling import load_sample, sample_scene
    from d3r.scenes.sources import list_scenes

    root, _ = cached_photos
    config = load_config(None, overrides(root, "teacher"), environ={})
    (scene,) = list_scenes(config.scenes)
    (sample,) = sample_scene(scene, config.scenes)
    views = crop_views_to_patch(load_sample(scene, sample, config.scenes), 14)
    assert [v.meta["turns"] for v in views] == [0, 0, 0, 1] and views[3].image.shape == (42, 56, 3)
    maps = np.ones((4, 42, 56))
    figures = agreement_figures("t", views, maps, maps, maps > 0, maps * 2, maps * 2)
    shown = [figure.axes[0].get_images()[0].get_array().shape[:2] for figure in figures]
    assert shown == [(42, 56)] * 3 + [(56, 42)]
    assert "turned back to the photo's orientation" in figures[3].get_suptitle()
    assert "turned" not in figures[0].get_suptitle()


def test_nothing_to_score_exits_2_with_the_reason(cached_photos, tmp_path, capsys):
    root, student = cached_photos
    # the teacher alone on photos without ground truth: nothing to compare it with
    assert d3r_main(["eval", *overrides(root, "teacher")]) == 2
    assert "nothing to score: the scenes of scenes.source='folders' have no ground truth" in capsys.readouterr().err
    # a student alone: no teacher to compare it with
    with pytest.raises(ConfigError, match="no 'teacher' to compare the students with"):
        from d3r.eval.job import run_eval

        run_eval(load_config(None, overrides(root, str(student)), environ={}))
    # the teacher's outputs are read from the cache: none there is an error, not a teacher run
    args = [*overrides(root, "teacher", str(student)), "--cache.uri", str(tmp_path / "none.lance")]
    assert d3r_main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert "no cache table at cache.uri=" in err and "eval.teacher_outputs=run" in err
