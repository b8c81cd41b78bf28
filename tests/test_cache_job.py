"""The cache job end to end: oracle and tiny Fast3R on synthetic rooms, rejects, resume after a kill, locks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from ray import cloudpickle
from wall_teacher import brightness_wall

from d3r.cache.codec import aligned_global, decode_row
from d3r.cache.pipeline import run_cache_job
from d3r.cache.rows import decode_ground_truth, decode_images
from d3r.cache.store import CONFIG_KEY, LATEST_TAG, VERSION_KEY, CacheLockedError, open_dataset, rejects_uri
from d3r.config import D3RConfig, TeacherConfig, load_config
from d3r.errors import ConfigError
from d3r.scenes.sampling import load_sample, sample_scene
from d3r.scenes.sources import list_scenes
from d3r.teachers.base import build_teacher
from d3r.teachers.fast3r import build_fast3r, save_fast3r

REPO = Path(__file__).resolve().parents[1]
TINY_SCENES = [
    "--scenes.source", "synthetic", "--scenes.num_scenes", "2", "--scenes.views_per_scene", "4",
    "--scenes.render_size", "[64,48]", "--scenes.long_side", "64", "--scenes.views_per_sample", "2",
    "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2",
]

# The test teacher below must reach the Ray workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_local")


def make_config(tmp_path: Path, *overrides: str) -> D3RConfig:
    return load_config(None, [*TINY_SCENES, "--cache.uri", str(tmp_path / "cache.lance"), *overrides], environ={})


def table_rows(uri: str) -> list[dict]:
    return lance.dataset(uri).to_table().to_pylist()


def relative_errors(decoded: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel ``|decoded - truth| / |truth|`` over pixels that have a point."""
    norm = np.linalg.norm(truth, axis=-1)
    keep = norm > 0
    return np.linalg.norm(decoded - truth, axis=-1)[keep] / norm[keep]


def direct_outputs(config: D3RConfig, row: dict) -> tuple[dict[str, np.ndarray], list]:
    """The teacher's own outputs for the row's sample, computed here without Ray, and its views."""
    scene = next(s for s in list_scenes(config.scenes) if s.id == row["scene_id"])
    sample = next(s for s in sample_scene(scene, config.scenes) if s.id == row["sample_id"])
    views = load_sample(scene, sample, config.scenes)
    images = torch.from_numpy(np.stack([v.image for v in views])).permute(0, 3, 1, 2)[None].contiguous()
    gt = {"depth": np.stack([v.depth for v in views]), "K": np.stack([v.K for v in views]),
          "poses": np.stack([v.pose for v in views])}
    outputs = build_teacher(config.teacher).predict(images, **{k: torch.from_numpy(v)[None] for k, v in gt.items()})
    return {key: value[0].numpy() for key, value in outputs.items()}, views


def assert_decodes_to(config: D3RConfig, row: dict) -> None:
    """The row's supervision decodes to the teacher's direct output within the codec's bounds."""
    truth, views = direct_outputs(config, row)
    decoded = decode_row(row)
    for key in ("pts3d_local", "pts3d_global"):
        target = truth[key] if key == "pts3d_local" else aligned_global(truth, config.cache.align_percentile)[0]
        errors = relative_errors(decoded[key], target)
        assert np.median(errors) <= 1e-3, key
        assert np.quantile(errors, 0.99) <= 1e-2, key
    for key in ("conf_local", "conf_global"):
        excess = truth[key] - 1
        np.testing.assert_allclose(decoded[key] - 1, excess, rtol=0.01, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(decode_images(row["images"]), np.stack([v.image for v in views]))
    gt = decode_ground_truth(row)
    np.testing.assert_array_equal(gt["depth"], np.stack([v.depth for v in views]))
    np.testing.assert_array_equal(gt["K"], np.stack([v.K for v in views]))
    np.testing.assert_array_equal(gt["poses"], np.stack([v.pose for v in views]))


def test_oracle_job_writes_every_sample_once_and_a_rerun_skips_them(tmp_path: Path) -> None:
    config = make_config(tmp_path, "--cache.chunk_samples", "3")
    summary = run_cache_job(config)
    assert (summary.samples, summary.written, summary.rejected_total) == (4, 4, 0)
    assert summary.views_written == 8 and summary.bytes_per_view > 0
    rows = table_rows(config.cache.uri)
    assert len({r["key"] for r in rows}) == len(rows) == 4
    assert {r["split"] for r in rows} <= {"train", "val"}
    assert all(r["N"] == 2 and (r["H"], r["W"]) == (48, 64) and r["codec"] == "d3r-v1" for r in rows)
    dataset = lance.dataset(config.cache.uri)
    assert len(dataset.versions()) == 2  # chunks of 3 + 1; the metadata went in with the first
    assert dataset.tags.get_version(LATEST_TAG) == dataset.version == summary.version
    metadata = {k.decode(): v.decode() for k, v in dataset.schema.metadata.items()}
    assert D3RConfig.model_validate(yaml.safe_load(metadata[CONFIG_KEY])) == config
    assert metadata[VERSION_KEY]
    assert_decodes_to(config, rows[0])

    again = run_cache_job(config)
    assert (again.written, again.skipped_done, again.version) == (0, 4, summary.version)
    assert len(table_rows(config.cache.uri)) == 4

    with pytest.raises(ConfigError, match="cache.global_target"):
        run_cache_job(make_config(tmp_path, "--cache.global_target", "global_head"))


def tiny_fast3r_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    return save_fast3r(build_fast3r("tiny"), directory)


def test_tiny_fast3r_job_matches_the_teacher_run_directly(tmp_path: Path) -> None:
    checkpoint = tiny_fast3r_checkpoint(tmp_path / "fast3r-tiny")
    config = make_config(tmp_path, "--teacher.name", "fast3r", "--teacher.preset", "tiny",
                         "--teacher.checkpoint", str(checkpoint), "--cache.codec", "fp16")
    summary = run_cache_job(config)
    assert (summary.written, summary.rejected_total) == (4, 0)
    row = table_rows(config.cache.uri)[0]
    assert '"name": "fast3r"' in row["teacher_fingerprint_json"]
    truth, _ = direct_outputs(config, row)
    decoded = decode_row(row)
    for key in ("pts3d_local", "conf_local"):
        assert_within_one_fp16_step(decoded[key], truth[key], key)


def assert_within_one_fp16_step(decoded: np.ndarray, truth: np.ndarray, name: str) -> None:
    """``decoded`` is ``truth`` stored as float16, up to one rounding step: the Ray actor and this process
    run torch with other thread counts, so their float32 sums may differ in the last bits and round to
    neighbouring float16 values. Most values must still match exactly."""
    expected = truth.astype(np.float16)
    assert decoded.shape == expected.shape, name
    np.testing.assert_array_equal(decoded.astype(np.float16).astype(decoded.dtype), decoded, err_msg=name)
    step = np.spacing(np.abs(expected)).astype(np.float32)  # the float16 step at each value's magnitude
    off = np.abs(decoded.astype(np.float32) - expected.astype(np.float32))
    assert np.all(off <= step), f"{name}: {int((off > step).sum())} values beyond one float16 step"
    assert np.mean(off > 0) <= 0.01, f"{name}: {int((off > 0).sum())} of {off.size} values differ"


def write_corrupt_safetensors(directory: Path) -> str:
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    return "cannot be read as a checkpoint"


def write_weights_of_another_preset(directory: Path) -> str:
    tiny_fast3r_checkpoint(directory)
    (directory / "config.json").unlink()  # so the preset (release) is the architecture: tiny weights do not fit
    return r"does not fit the Fast3R model: .*mis-shaped.* it looks like preset 'tiny'"


def write_pickle_with_an_object(directory: Path) -> str:
    directory.mkdir()
    torch.save({"model": build_fast3r("tiny").state_dict(), "args": Path("x")}, directory / "fast3r.pth")
    return "Set teacher.trust_checkpoint: true only if you trust"


@pytest.mark.parametrize("write", [write_corrupt_safetensors, write_weights_of_another_preset,
                                   write_pickle_with_an_object])
def test_a_wrong_teacher_checkpoint_fails_before_any_work(tmp_path: Path, write) -> None:
    """The driver reads a checkpoint's names and shapes (no weights) before it takes the lock or makes a folder."""
    checkpoint = tmp_path / "broken"
    message = write(checkpoint)
    path = next(checkpoint.glob("*.pth"), checkpoint)
    config = make_config(tmp_path, "--teacher.name", "fast3r", "--teacher.checkpoint", str(path))
    with pytest.raises(ConfigError, match=f"teacher.checkpoint=.*{message}"):
        run_cache_job(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_a_patch_size_the_teacher_cannot_take_fails_before_any_work(tmp_path: Path) -> None:
    checkpoint = tiny_fast3r_checkpoint(tmp_path / "fast3r-tiny")
    config = make_config(tmp_path, "--teacher.name", "fast3r", "--teacher.preset", "tiny",
                         "--teacher.checkpoint", str(checkpoint), "--scenes.patch_size", "14")
    with pytest.raises(ConfigError, match=r"scenes.patch_size=14 .* patch size 16"):
        run_cache_job(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast3r-tiny"]


class WhiteIsNaNTeacher:
    """A test teacher: a plane at depth 1 + brightness, NaN for samples whose images are all white."""

    name = "white-is-nan"
    needs_ground_truth = False
    patch_size = 1
    fingerprint = {"name": "white-is-nan", "version": 1}

    def predict(self, images: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        points = brightness_wall(images)
        points[(images == 255).flatten(1).all(dim=1)] = float("nan")
        conf = torch.full(points.shape[:-1], 3.0)
        return {"pts3d_global": points, "conf_global": conf, "pts3d_local": points.clone(), "conf_local": conf}


def white_is_nan_factory(config: TeacherConfig) -> WhiteIsNaNTeacher:
    return WhiteIsNaNTeacher()


def write_folder_scenes(root: Path) -> None:
    rng = np.random.default_rng(0)
    for scene, fill in (("textured", None), ("white", 255)):
        folder = root / scene
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (48, 64, 3)) if fill is None else np.full((48, 64, 3), fill)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"frame_{i}.png")
    (root / "textured" / "frame_3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "textured" / "notes.txt").write_text("not an image")


def test_a_corrupt_image_and_a_nan_teacher_end_in_rejects_and_the_job_succeeds(tmp_path: Path) -> None:
    write_folder_scenes(tmp_path / "scenes")
    config = make_config(tmp_path, "--scenes.source", "folders", "--scenes.root", str(tmp_path / "scenes"))
    summary = run_cache_job(config, teacher_factory=white_is_nan_factory)
    assert summary.written == 1
    assert summary.rejected[("teacher", "non-finite output")] == 2
    assert sum(count for (stage, _), count in summary.rejected.items() if stage == "load") == 1
    assert summary.rejected[("list", "unusable scene")] == 1
    rejects = lance.dataset(rejects_uri(config.cache.uri)).to_table().to_pylist()
    by_stage = sorted((r["stage"], r["scene_id"]) for r in rejects)
    assert by_stage == [("list", "textured"), ("load", "textured"), ("teacher", "white"), ("teacher", "white")]
    assert any("frame_3" in r["reason"] for r in rejects if r["stage"] == "load")
    assert all("NaN" in r["reason"] for r in rejects if r["stage"] == "teacher")
    assert [r["scene_id"] for r in table_rows(config.cache.uri)] == ["textured"]

    again = run_cache_job(config, teacher_factory=white_is_nan_factory)
    assert (again.written, again.skipped_done, again.skipped_rejected, again.rejected_total) == (0, 1, 3, 0)
    retry = make_config(tmp_path, "--scenes.source", "folders", "--scenes.root", str(tmp_path / "scenes"),
                        "--cache.retry_rejected", "true")
    retried = run_cache_job(retry, teacher_factory=white_is_nan_factory)
    assert (retried.written, retried.rejected_total) == (0, 3)
    assert len(lance.dataset(rejects_uri(config.cache.uri)).to_table()) == 4


def orphan_free(uri: str) -> bool:
    dataset = lance.dataset(uri)
    referenced = {f.path for fragment in dataset.get_fragments() for f in fragment.data_files()}
    return referenced == {p.name for p in (Path(uri) / "data").iterdir()}


def test_a_killed_job_resumes_exactly_once_and_a_concurrent_job_is_refused(tmp_path: Path) -> None:
    overrides = ["--scenes.views_per_scene", "16", "--scenes.max_samples_per_scene", "8",
                 "--cache.chunk_samples", "1", "--cache.batch_size", "1"]  # 16 samples, one version each
    config = make_config(tmp_path, *overrides)
    command = [sys.executable, str(REPO / "jobs" / "cache.py"), *TINY_SCENES, "--cache.uri", config.cache.uri,
               *overrides, "--ray.num_cpus", "2"]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    job = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while (dataset := open_dataset(config.cache.uri)) is None or dataset.count_rows() == 0:
            assert job.poll() is None, "the job ended before its first commit"
            assert time.monotonic() < deadline, "no commit within 240 s"
            time.sleep(0.1)
        with pytest.raises(CacheLockedError, match=f"pid {job.pid}"):
            run_cache_job(config)
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)  # Ray processes the job started
    committed = lance.dataset(config.cache.uri).count_rows()
    assert 0 < committed < 16, "the kill did not land mid-run"
    # The killed job's table already records its settings: a rerun asking for others is refused.
    with pytest.raises(ConfigError, match="cache.global_target"):
        run_cache_job(make_config(tmp_path, *overrides, "--cache.global_target", "global_head"))

    summary = run_cache_job(config)
    assert summary.skipped_done == committed
    assert summary.written == 16 - committed
    keys = [r["key"] for r in table_rows(config.cache.uri)]
    assert len(keys) == len(set(keys)) == 16
    assert orphan_free(config.cache.uri)


def test_the_job_script_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "cache.py"), "--cache.batch_siz", "2"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": "local"})
    assert result.returncode == 2
    assert "cache.batch_siz" in result.stderr
