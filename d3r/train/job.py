"""The training job's driver: check the config, run Ray Train, register the result.

``run_train(config)``:

1. checks everything it can before any work: the cache table and version (``cache.uri``,
   ``train.cache_version``) and that it has train rows, the student (``student.*``), the champion
   metric's name, that the MLflow store answers, and that the Ray cluster has the CPUs/GPUs the workers
   ask for (``train.num_workers`` x ``train.cpus_per_worker``, which would otherwise wait forever);
2. opens the MLflow run of ``train.run_name`` (a rerun with the same name continues the same run, found
   by its tag) and logs the resolved config (params and ``config/train.yaml``) and the lineage (cache
   URI, Lance version, teacher fingerprint, codec, d3r version) as tags;
3. runs :func:`d3r.train.loop.train_loop` in a ``TorchTrainer`` (``ScalingConfig`` from ``train.*``,
   ``RunConfig(name=train.run_name, storage_path=train.storage_path)``, ``CheckpointConfig``,
   ``FailureConfig(train.max_failures)``): a rerun with the same name resumes from its latest
   checkpoint, a dead worker is restarted from it;
4. writes the final student (weights + spec) to ``<storage_path>/<run_name>/student.pt``, logs it as a
   pyfunc model and registers it (``d3r.registry``: alias ``candidate``; ``champion`` when
   ``train.champion_metric`` beats the current champion's), and returns a :class:`TrainSummary`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d3r.config import D3RConfig, MlflowConfig, config_to_yaml
from d3r.errors import ConfigError
from d3r.student.checkpoint import load_student, save_student
from d3r.student.factory import build_student_from_config
from d3r.tracking import use_experiment
from d3r.train.data import build_cache_data, cache_lineage
from d3r.train.loop import read_training_state, train_loop

if TYPE_CHECKING:
    from d3r.registry import Registration

log = logging.getLogger(__name__)

RUN_TAG = "d3r.train.run_name"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STUDENT_FILE = "student.pt"
PARAMS_PER_CALL = 100  # MLflow's log_batch limit
SHOWN_METRICS = ("abs_rel", "delta1", "acc", "comp", "auc_30")


@dataclass
class TrainSummary:
    """What a training run did (see :meth:`format`)."""

    run_name: str
    run_id: str
    tracking_uri: str
    steps: int
    epoch: int
    samples_seen: int
    views_seen: int
    resumed_from_step: int
    loss_first: float
    loss_last: float
    val: dict[str, float]
    checkpoint: Path
    registration: Registration | None
    wall_s: float

    def format(self) -> str:
        val = "  ".join(f"{name.removeprefix('val/')} {value:.4g}" for name, value in sorted(self.val.items())
                        if name in ("val/loss", "val/samples") or name.split("/")[-1] in SHOWN_METRICS)
        lines = [
            f"train run {self.run_name!r} (MLflow run {self.run_id})",
            f"  steps             {self.steps} (epoch {self.epoch}; resumed from step {self.resumed_from_step})",
            f"  samples seen      {self.samples_seen} ({self.views_seen} views) in {self.wall_s:.1f} s",
            f"  train loss        {self.loss_first:.4g} -> {self.loss_last:.4g}",
            f"  validation        {val or 'none (no val rows)'}",
            f"  student           {self.checkpoint}",
        ]
        if self.registration is not None:
            reg = self.registration
            alias = "champion" if reg.champion else "candidate"
            lines.append(f"  registered        {reg.name} version {reg.version} as {alias} "
                         f"({reg.metric}={reg.value:.4g}; {reg.reason})")
        lines.append(f"  MLflow UI         mlflow ui --backend-store-uri {self.tracking_uri}")
        return "\n".join(lines)


# ---- checks before any work ----


def with_absolute_paths(config: D3RConfig) -> D3RConfig:
    """Local paths made absolute, so the Ray workers (other working directories) find the same files."""
    uri = config.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    cache_uri = config.cache.uri if "://" in config.cache.uri else str(Path(config.cache.uri).resolve())
    return config.model_copy(update={
        "mlflow": config.mlflow.model_copy(update={"tracking_uri": uri}),
        "cache": config.cache.model_copy(update={"uri": cache_uri}),
        "train": config.train.model_copy(update={"storage_path": config.train.storage_path.resolve()}),
    })


def check_tracking(config: MlflowConfig) -> str:
    """The experiment id, once the tracking store answered (a server within ``mlflow.timeout_s``).

    Raises:
        ConfigError: naming ``mlflow.tracking_uri`` when the store cannot be used.
    """
    uri = config.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return use_experiment(config)
    except ConfigError:
        raise
    except Exception as exc:  # MLflow raises many types for a store it cannot use
        raise ConfigError(f"mlflow.tracking_uri={uri!r}: cannot open experiment {config.experiment!r}: {exc}") from exc


def check_config(config: D3RConfig) -> tuple[dict[str, str], int]:
    """(lineage, patch size) once the cache, student and names are usable; else a ConfigError naming the field."""
    train = config.train
    if not RUN_NAME.match(train.run_name):
        raise ConfigError(f"train.run_name={train.run_name!r}: use letters, digits, '.', '_' and '-' only")
    if not re.match(r"^val/(loss|(gt|teacher)/\w+)$", train.champion_metric):
        raise ConfigError(f"train.champion_metric={train.champion_metric!r}: expected val/loss, val/gt/<metric> or "
                          "val/teacher/<metric> (e.g. val/gt/abs_rel)")
    lineage = cache_lineage(config.cache.uri, train.cache_version)
    try:
        patch_size = build_student_from_config(config.student).spec.patch_size
    except ValueError as exc:  # an unknown preset; a bad encoder file is already a ConfigError
        raise ConfigError(f"student: {exc}") from exc
    build_cache_data(config, "train", 0, 1, patch_size)  # raises when there are no usable train rows
    return lineage, patch_size


def check_resources(config: D3RConfig) -> None:
    """Raises a ConfigError when the cluster cannot place the workers (Ray would wait for them forever)."""
    import ray

    train = config.train
    available = ray.cluster_resources()
    cpus = train.num_workers * train.cpus_per_worker
    if available.get("CPU", 0.0) < cpus:
        raise ConfigError(
            f"train.num_workers={train.num_workers} x train.cpus_per_worker={train.cpus_per_worker} needs {cpus:g} "
            f"CPUs; the Ray cluster has {available.get('CPU', 0.0):g} (lower train.cpus_per_worker, e.g. 0.5)"
        )
    if train.use_gpu and available.get("GPU", 0.0) < train.num_workers * train.gpus_per_worker:
        raise ConfigError(
            f"train.use_gpu with train.num_workers={train.num_workers} x train.gpus_per_worker="
            f"{train.gpus_per_worker} needs more GPUs than the Ray cluster has ({available.get('GPU', 0.0):g})"
        )


# ---- the MLflow run ----


def flat_params(config: D3RConfig) -> dict[str, str]:
    """``{"section.field": text}`` of the resolved config."""
    return {f"{section}.{name}": str(value)
            for section, fields in config.model_dump(mode="json").items() for name, value in fields.items()}


def open_run(config: D3RConfig, experiment_id: str, lineage: dict[str, str]) -> str:
    """The id of ``train.run_name``'s MLflow run (created, or found by its tag and continued), with the
    config and lineage logged. Params are immutable in MLflow: a rerun whose config differs records the
    changed fields in the tag ``d3r.train.changed_params`` and its config as another YAML artifact."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(config.mlflow.tracking_uri)
    name = config.train.run_name
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{name}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    params = flat_params(config)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        logged = found[0].data.params
        changed = {key: f"{logged[key]} -> {value}" for key, value in params.items()
                   if key in logged and logged[key] != value}
        params = {key: value for key, value in params.items() if key not in logged}
        if changed:
            client.set_tag(run_id, "d3r.train.changed_params", "; ".join(f"{k}: {v}" for k, v in changed.items()))
        attempt = len(client.list_artifacts(run_id, "config")) + 1
        log.info("continuing MLflow run %s of %r (config changes: %s)", run_id, name, changed or "none")
    else:
        run_id = client.create_run(experiment_id, run_name=name, tags={RUN_TAG: name, "d3r.job": "train"}).info.run_id
        attempt = 1
        log.info("created MLflow run %s for %r", run_id, name)
    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[start:start + PARAMS_PER_CALL])
    client.log_text(run_id, config_to_yaml(config), "config/train.yaml" if attempt == 1 else
                    f"config/train-{attempt}.yaml")
    for key, value in lineage.items():
        client.set_tag(run_id, f"lineage.{key}", value)
    return run_id


def loss_curve(tracking_uri: str, run_id: str) -> tuple[float, float]:
    """(first, last) logged ``train/loss`` of the run, by step (NaN when none)."""
    from mlflow import MlflowClient

    history = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    if not history:
        return math.nan, math.nan
    return history[0].value, history[-1].value


# ---- the job ----


def fit(config: D3RConfig, run_id: str) -> Any:
    """Ray Train over ``train_loop``; returns the latest checkpoint's training state."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train = config.train
    resources = {"CPU": train.cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = train.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "mlflow_run_id": run_id},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=train.run_name, storage_path=str(train.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=train.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"train run {train.run_name!r} ended without a checkpoint")
    return read_training_state(result.checkpoint)


def register(config: D3RConfig, run_id: str, student_path: Path, val: dict[str, float]) -> Registration:
    """Log the student as a pyfunc model in the run and register it (``d3r.registry``)."""
    import mlflow

    from d3r.registry import log_student_model, register_student

    metric = config.train.champion_metric
    value = val.get(metric, math.nan)
    if not math.isfinite(value):
        log.warning("%s was not measured (no val rows with it): registered as candidate only", metric)
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        # photos sent to the served model are fitted to the size it was trained at
        model_info = log_student_model(student_path, long_side=config.scenes.long_side)
        return register_student(model_info, config.mlflow, metric, value)


def run_train(config: D3RConfig) -> TrainSummary:
    """Train the student on the cache table with Ray Train (see the module docstring).

    Raises:
        ConfigError: before any work, naming the field (cache, student, names, MLflow, cluster resources).
    """
    from mlflow import MlflowClient

    from d3r.raysession import ray_session

    started = time.perf_counter()
    config = with_absolute_paths(config)
    lineage, _ = check_config(config)
    experiment_id = check_tracking(config.mlflow)
    with ray_session(config.ray):
        check_resources(config)
        run_id = open_run(config, experiment_id, lineage)
        client = MlflowClient(config.mlflow.tracking_uri)
        try:
            state = fit(config, run_id)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
    student_path = save_student(load_student(state["student"]), config.train.storage_path / config.train.run_name
                                / STUDENT_FILE)
    metrics = state["metrics"]
    val = {key: float(value) for key, value in metrics.items() if key.startswith("val/")}
    registration = register(config, run_id, student_path, val)
    client.set_terminated(run_id, "FINISHED")
    first, last = loss_curve(config.mlflow.tracking_uri, run_id)
    return TrainSummary(
        run_name=config.train.run_name, run_id=run_id, tracking_uri=config.mlflow.tracking_uri,
        steps=int(metrics["step"]), epoch=int(metrics["epoch"]), samples_seen=int(metrics["samples_seen"]),
        views_seen=int(metrics["views_seen"]), resumed_from_step=int(metrics["resumed_from_step"]),
        loss_first=first, loss_last=last, val=val, checkpoint=student_path, registration=registration,
        wall_s=time.perf_counter() - started,
    )
