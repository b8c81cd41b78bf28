"""The command line a newcomer meets: --help of d3r, its commands and the jobs, and `d3r cache show/rejects`
on a table written by the real cache job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from d3r.cache.inspect import cache_overview, reason_kind
from d3r.cache.pipeline import run_cache_job
from d3r.cache.store import rejects_uri
from d3r.cli import main
from d3r.config import JOB_SECTIONS, D3RConfig, load_config, options_help
from d3r.scenes.synthetic import export_scenes

REPO = Path(__file__).resolve().parents[1]


def run_help(*command: str) -> str:
    done = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def cli_output(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's --help
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_d3r_help_is_for_a_user():
    text = run_help("-m", "d3r.cli")
    assert "Thin:" not in text  # not the module's developer docstring
    for expected in ("cache", "train", "eval", "scenes", "synth", "--config PATH", "D3R_SECTION__FIELD",
                     "d3r cache run --config conf/demo.yaml", "d3r cache show demo_out/cache.lance", "exit status"):
        assert expected in text


@pytest.mark.parametrize("job", ["jobs/cache.py", "jobs/eval.py"])
def test_job_help_prints_usage_and_the_options_of_its_sections(job):
    text = run_help(job)
    assert text.startswith(f"usage: {job} [-h] [--config PATH] [--section.field VALUE ...]")
    name = Path(job).stem
    for section in JOB_SECTIONS[name]:
        assert f"\n{section}: " in text
    assert "--cache.uri TEXT  (default demo_out/cache.lance)" in text
    assert "--teacher.checkpoint PATH" in text or name != "cache"


def test_command_help_lists_the_fields_it_reads(capsys):
    code, out, _ = cli_output(capsys, "cache", "run", "--help")
    assert code == 0
    assert out.startswith("usage: d3r cache run [-h] [--config PATH] [--section.field VALUE ...]")
    assert "--cache.batch_size INT  (default 2, ≥ 1)\n      samples per teacher call" in out
    assert "`random`: random weights of `preset`, seeded by teacher.seed, FOR TESTING ONLY" in " ".join(out.split())
    assert "--mlflow." not in out  # the cache job reads no MLflow settings
    code, out, _ = cli_output(capsys, "scenes", "show", "--help")
    assert code == 0 and "--scene SCENE" in out and "--scenes.long_side INT" in out


def test_options_help_describes_every_field_of_its_sections():
    text = options_help(["scenes", "teacher", "cache"])
    for section in ("scenes", "teacher", "cache"):
        for name, info in D3RConfig.model_fields[section].annotation.model_fields.items():
            assert f"--{section}.{name} " in text
            assert info.description, f"{section}.{name} has no description for --help"


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    """A real cache table by the real job: 2 synthetic rooms as COLMAP folders, the oracle teacher, tiny
    images, and one image made unreadable (a reject)."""
    root = tmp_path_factory.mktemp("rooms")
    export_scenes(root, num_scenes=2, num_views=6, size=(64, 48), seed=0)
    broken = sorted((root / "room_0001" / "images").iterdir())[0]
    broken.write_bytes(b"not an image")
    uri = str(tmp_path_factory.mktemp("cache") / "cache.lance")
    config = load_config(REPO / "conf" / "demo.yaml", [
        "--scenes.source", "colmap", "--scenes.root", str(root), "--scenes.long_side", "56",
        "--scenes.views_per_sample", "3", "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2",
        "--cache.uri", uri, "--cache.chunk_samples", "2"], environ={})
    summary = run_cache_job(config)
    assert summary.written > 0 and summary.rejected_total > 0, summary.format()
    return uri


def test_cache_show_summarises_versions_rows_bytes_and_rejects(small_cache, capsys):
    overview = cache_overview(small_cache)
    assert overview.rows >= 2 and overview.views == 3 * overview.rows and overview.scenes >= 1
    assert [v.number for v in overview.versions] == sorted(v.number for v in overview.versions)
    assert overview.versions[-1].rows == overview.rows and "latest" in overview.versions[-1].tags
    assert overview.teachers == ["oracle"] and overview.sizes == {"56x42": overview.rows}
    assert overview.column_bytes["images"] > 0 and overview.column_bytes["sup_local_depth"] > 0
    assert overview.rejects_total >= 1

    code, out, err = cli_output(capsys, "cache", "show", small_cache)
    assert code == 0, err
    assert f"cache {small_cache}" in out
    assert f"{overview.rows} samples, {overview.views} views" in out
    assert "tags: cache-v" in out and "latest" in out
    assert "images" in out and "sup_local_depth" in out and "/view" in out
    assert f"rejects     {overview.rejects_total} ({rejects_uri(small_cache)}" in out
    (stage, kind), count = next(iter(overview.rejects.items()))
    assert f"{count:>5}  {stage}: {kind}" in out


def test_cache_rejects_lists_each_reject_with_its_reason(small_cache, capsys):
    code, out, err = cli_output(capsys, "cache", "rejects", small_cache)
    assert code == 0, err
    count = cache_overview(small_cache).rejects_total
    assert out.splitlines()[0] == f"{count} rejects of {small_cache} (table {rejects_uri(small_cache)})"
    assert "room_0001" in out and "reason: " in out


def test_cache_show_without_a_table_is_exit_2_naming_it(tmp_path, capsys):
    code, _, err = cli_output(capsys, "cache", "show", str(tmp_path / "none.lance"))
    assert code == 2 and "none.lance: no Lance table there" in err


def test_reason_kind_drops_the_file_it_names():
    assert reason_kind("/data/a b/x.jpg: cannot identify image file") == "cannot identify image file"
    assert reason_kind("room_1|x.png: /data/x.png: truncated") == "truncated"
    assert reason_kind("cannot read file: permission denied") == "cannot read file: permission denied"
    assert reason_kind("too few views (2 < 3)") == "too few views (2 < 3)"


def test_the_d3r_command_that_make_installs_answers_help():
    """README: after `make`, `.venv/bin/d3r --help` (or `d3r --help` in the activated venv) works."""
    command = Path(sys.executable).with_name("d3r")
    assert command.is_file(), f"{command}: the d3r console script is not installed in this environment"
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "first steps" in done.stdout


def test_cache_show_takes_the_table_from_a_config(small_cache, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"cache:\n  uri: {small_cache}\n")
    code, out, err = cli_output(capsys, "cache", "show", "--config", str(config))
    assert code == 0, err
    assert out.startswith(f"cache {small_cache}\n")


def test_readme_random_weights_command_caches_photos_with_the_shipped_fast3r_config(tmp_path, ray_local, caplog):
    """README: `d3r cache run --config conf/fast3r.yaml --scenes.root data/photos --teacher.checkpoint random
    --teacher.preset tiny --cache.uri out/random.lance --cache.num_gpus 0` on a folder of 5 photos."""
    from d3r.scenes.synthetic import render_scene

    photos = tmp_path / "photos" / "desk"
    photos.mkdir(parents=True)
    for view in render_scene(0, 0, 5, (160, 120), "orbit").views:
        Image.fromarray(view.image).save(photos / f"{view.name}.jpg", quality=92)
    uri = str(tmp_path / "random.lance")
    config = load_config(REPO / "conf" / "fast3r.yaml", [
        "--scenes.root", str(tmp_path / "photos"), "--teacher.checkpoint", "random", "--teacher.preset", "tiny",
        "--cache.uri", uri, "--cache.num_gpus", "0"], environ={})
    with caplog.at_level("WARNING"):
        summary = run_cache_job(config)
    assert summary.written == 1 and summary.views_written == 5, summary.format()
    assert any("FOR TESTING ONLY" in record.getMessage() for record in caplog.records)  # the driver's, when planning
    assert cache_overview(uri).teachers == ["fast3r (preset tiny, weights random-seed-0, float32)"]
