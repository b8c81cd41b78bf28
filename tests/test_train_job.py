"""The training job end to end on a real cache, Ray Train and MLflow: logging, registry, resume, kills, learning.

One cache table (4 synthetic rooms, 8 two-view samples at 56x42, the oracle teacher) is built once for
the module by the real cache job. Runs are short; a resumed or restarted run must end at the same step
with the same number of samples seen as the data plan says an uninterrupted run does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from d3r.cache.pipeline import run_cache_job
from d3r.config import D3RConfig, EvalConfig, load_config
from d3r.errors import ConfigError
from d3r.eval.evaluate import EvalSettings
from d3r.student.checkpoint import load_student
from d3r.student.factory import build_student_from_config
from d3r.train.data import build_cache_data
from d3r.train.job import RUN_TAG, run_train
from d3r.train.loop import StepPlan, lr_factor, seed_everything, validate
from d3r.train.loss import build_loss

pytestmark = pytest.mark.usefixtures("ray_local")

REPO = Path(__file__).resolve().parents[1]
PATCH = 14
SCENES = [
    "--scenes.num_scenes", "4", "--scenes.views_per_scene", "4", "--scenes.render_size", "[64,48]",
    "--scenes.long_side", "64", "--scenes.patch_size", str(PATCH), "--scenes.views_per_sample", "2",
    "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache table made by the cache job, once for the module; runs and the MLflow store live beside it."""
    root = tmp_path_factory.mktemp("train")
    run_cache_job(load_config(None, [*SCENES, "--cache.uri", str(root / "cache.lance")], environ={}))
    return root


def args_for(workdir: Path, run_name: str, *overrides: str) -> list[str]:
    return [
        *SCENES, "--cache.uri", str(workdir / "cache.lance"), "--student.preset", "tiny",
        "--mlflow.tracking_uri", f"sqlite:///{workdir}/mlflow.db", "--mlflow.experiment", "train-tests",
        "--train.storage_path", str(workdir / "runs"), "--train.run_name", run_name,
        "--train.batch_size", "2", "--train.lr", "1e-3", "--train.log_every", "2", *overrides,
    ]


def config_for(workdir: Path, run_name: str, *overrides: str) -> D3RConfig:
    return load_config(None, args_for(workdir, run_name, *overrides), environ={})


def expected_samples(config: D3RConfig, steps: int) -> int:
    """Samples an uninterrupted run consumes in ``steps`` optimiser steps over all its workers, from the data plan."""
    world = config.train.num_workers
    total = 0
    for rank in range(world):
        data = build_cache_data(config, "train", rank, world, PATCH)
        plan = StepPlan.from_config(data.batches_per_epoch, config.train.grad_accum, config.train.epochs, steps)
        for step in range(steps):
            epoch, consumed = plan.position(step)
            total += sum(len(spec.rows) for spec in data.specs(epoch)[consumed:consumed + plan.grad_accum])
    return total


def runs_named(config: D3RConfig, run_name: str) -> list:
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_name}'")


# ---- a short real run: checkpoints, MLflow, registry; and it learns ----


@pytest.fixture(scope="module")
def learnt(workdir: Path):
    config = config_for(workdir, "learn", "--train.max_steps", "40", "--train.val_every", "20",
                        "--train.checkpoint_every", "20", "--train.log_every", "5")
    return config, run_train(config)


def test_a_run_checkpoints_logs_to_mlflow_and_registers(learnt):
    config, summary = learnt
    assert summary.steps == 40 and summary.resumed_from_step == 0
    assert summary.samples_seen == expected_samples(config, 40)
    assert len(list((config.train.storage_path / "learn").glob("checkpoint_*/train_state.pt"))) == 2  # kept 2
    assert load_student(summary.checkpoint).spec.encoder_dim == 64

    client = MlflowClient(config.mlflow.tracking_uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "40" and run.data.params["student.preset"] == "tiny"
    assert run.data.tags["lineage.cache.version"] == "1"
    assert run.data.tags["lineage.codec"].startswith("d3r-v1:")
    assert run.data.tags["lineage.teacher.fingerprint"] and run.data.tags["lineage.d3r.version"]
    for key in ("train/loss", "train/global", "train/conf", "train/lr", "train/grad_norm", "train/samples_per_s",
                "train/views_per_s", "memory/peak_rss_mb", "val/loss", "val/gt/abs_rel", "val/teacher/acc"):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(summary.run_id, "val/loss")] == [20, 40]
    warmup = round(config.train.warmup_fraction * 40)
    for logged in client.get_metric_history(summary.run_id, "train/lr"):  # the horizon is the run's 40 steps
        assert logged.value == pytest.approx(1e-3 * lr_factor(logged.step - 1, 40, warmup, config.train.min_lr_ratio))
    artifacts = {a.path for a in client.list_artifacts(summary.run_id, "figures")}
    assert any(p.endswith("_views.png") for p in artifacts) and any(p.endswith("_cloud.png") for p in artifacts)
    assert client.list_artifacts(summary.run_id, "config")[0].path == "config/train.yaml"

    assert summary.registration is not None and summary.registration.metric == "val/gt/abs_rel"
    version = client.get_model_version_by_alias(config.mlflow.registered_model, "candidate")
    assert int(version.version) == summary.registration.version and version.run_id == summary.run_id
    text = summary.format()
    assert "steps             40" in text and "mlflow ui --backend-store-uri sqlite:////" in text


def test_the_student_beats_the_untrained_student_against_ground_truth(learnt):
    config, summary = learnt
    val = build_cache_data(config, "val", 0, 1, PATCH)
    assert val.num_samples >= 2
    seed_everything(config.train.seed)
    untrained = build_student_from_config(config.student)
    trained = load_student(summary.checkpoint)
    settings = EvalSettings.from_config(EvalConfig())
    loss = build_loss(config.train)
    before, _ = validate(untrained, val, loss, torch.device("cpu"), "fp32", settings)
    after, _ = validate(trained, val, loss, torch.device("cpu"), "fp32", settings)
    assert after["val/gt/abs_rel"] < 0.5 * before["val/gt/abs_rel"]
    assert after["val/gt/delta1"] > before["val/gt/delta1"] + 0.2
    assert after["val/loss"] < 0.5 * before["val/loss"]


def test_two_ddp_workers_with_gradient_accumulation(workdir: Path):
    config = config_for(workdir, "ddp", "--train.num_workers", "2", "--train.cpus_per_worker", "0.5",
                        "--train.batch_size", "1", "--train.grad_accum", "2", "--train.max_steps", "3",
                        "--train.checkpoint_every", "3", "--train.val_every", "3", "--train.log_every", "1")
    summary = run_train(config)
    assert summary.steps == 3
    assert summary.samples_seen == expected_samples(config, 3) == 2 * 2 * 3  # 2 ranks x 2 forwards x 1 scene
    assert math.isfinite(summary.val["val/loss"]) and summary.val["val/samples"] >= 2
    history = MlflowClient(config.mlflow.tracking_uri).get_metric_history(summary.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3]  # rank 0 alone logs, once per step


# ---- resume ----


def test_a_rerun_with_more_steps_continues_where_the_first_stopped(workdir: Path):
    first = run_train(config_for(workdir, "grow", "--train.max_steps", "3", "--train.checkpoint_every", "3"))
    config = config_for(workdir, "grow", "--train.max_steps", "6", "--train.checkpoint_every", "3")
    second = run_train(config)
    assert first.steps == 3 and second.resumed_from_step == 3 and second.steps == 6
    assert second.samples_seen == expected_samples(config, 6)
    assert second.run_id == first.run_id and len(runs_named(config, "grow")) == 1
    tags = MlflowClient(config.mlflow.tracking_uri).get_run(second.run_id).data.tags
    assert "train.max_steps: 3 -> 6" in tags["d3r.train.changed_params"]


def descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (from /proc), so a test only ever signals its own children."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def train_worker_pids() -> list[int]:
    pids = []
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


def registered_checkpoint(run_dir: Path) -> bool:
    """Whether Ray Train has registered a checkpoint of the run (a restart resumes from it): its snapshot
    file names one, after the upload (a checkpoint folder alone may still be in flight)."""
    with contextlib.suppress(OSError, ValueError):
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return snapshot.get("latest_checkpoint_result") is not None
    return False


def wait_for_checkpoint(run_dir: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not registered_checkpoint(run_dir):
        assert time.monotonic() < deadline, f"no registered checkpoint in {run_dir} after {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker process through /proc")
def test_a_killed_training_worker_is_restarted_from_its_checkpoint(workdir: Path):
    config = config_for(workdir, "worker-kill", "--train.max_steps", "30", "--train.checkpoint_every", "2",
                        "--train.val_every", "1000", "--train.max_failures", "1")
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        wait_for_checkpoint(config.train.storage_path / "worker-kill")
        pids = train_worker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    summary = run_train(config)
    killer.join(timeout=10)
    assert killed, "no training worker was found to kill"
    assert summary.resumed_from_step > 0  # the restarted worker began at a checkpoint, not at step 0
    assert summary.steps == 30
    assert summary.samples_seen == expected_samples(config, 30)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
def test_a_killed_driver_is_resumed_by_a_rerun(workdir: Path):
    run_args = args_for(workdir, "driver-kill", "--train.max_steps", "30", "--train.checkpoint_every", "2",
                        "--train.val_every", "1000")
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a private Ray for the driver, never a running cluster
    driver = subprocess.Popen([sys.executable, "jobs/train.py", *run_args], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_checkpoint(workdir / "runs" / "driver-kill")
        assert driver.poll() is None, "the driver ended before it could be killed"
        driver.kill()
    finally:
        driver.kill()
        driver.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # its local Ray, if anything of it is left
    config = load_config(None, run_args, environ={})
    summary = run_train(config)
    assert summary.resumed_from_step > 0 and summary.steps == 30
    assert summary.samples_seen == expected_samples(config, 30)
    assert len(runs_named(config, "driver-kill")) == 1


# ---- bad configs fail before any work, naming the field ----


@pytest.mark.parametrize(("overrides", "field"), [
    (["--cache.uri", "/nonexistent/cache.lance"], "cache.uri"),
    (["--train.cache_version", "no-such-tag"], "train.cache_version"),
    (["--train.num_workers", "3"], "train.cpus_per_worker"),
    (["--train.champion_metric", "abs_rel"], "train.champion_metric"),
    (["--student.preset", "huge"], "student"),
    (["--train.run_name", "a/b"], "train.run_name"),
    (["--mlflow.tracking_uri", "http://127.0.0.1:9", "--mlflow.timeout_s", "2"], "mlflow.tracking_uri"),
])
def test_bad_configs_fail_before_any_work(workdir: Path, overrides: list[str], field: str):
    config = config_for(workdir, "bad", *overrides)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        run_train(config)
    assert not (workdir / "runs" / "bad").exists()


def main_help() -> str:
    return subprocess.run([sys.executable, "jobs/train.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_help_lists_the_options():
    text = main_help()
    assert "--config PATH" in text and "--section.field VALUE" in text
    assert "--train.max_steps" in text and "stop after this many optimiser steps" in text
