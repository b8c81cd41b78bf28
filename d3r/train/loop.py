"""The Ray Train train function: distil the student from the cache table, read top to bottom in ``train_loop``.

Per worker (DDP rank): B = ``train.batch_size`` scenes go through the student in **one** forward
(``images [B, N, 3, H, W]``); ``train.grad_accum`` such forwards make one optimiser step (DDP syncs
gradients on the last one only). AdamW with decay/no-decay groups; linear warmup then cosine down to
``min_lr_ratio`` over the real number of optimiser steps; gradient clipping; precision chosen here
(``train.precision``, see :func:`resolve_precision`), never inside the model.

Every ``val_every`` steps and at the end: the val split's loss and the eval metrics of every val sample
against the cached teacher outputs (``val/teacher/<metric>``) and against ground truth where rows carry it
(``val/gt/<metric>``). Every ``checkpoint_every`` steps and at the end: a Ray Train checkpoint holding
the student (with its full spec), optimiser, scheduler, scaler, progress and every rank's RNG state. A
rerun or a restarted worker continues at the exact step: the data position follows from the step, so a
resumed run consumes the same batches and ends with the same number of samples seen.

Only rank 0 talks to MLflow (the run the driver created, ``loop_config["mlflow_run_id"]``).
"""

from __future__ import annotations

import logging
import math
import random
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from d3r.checkpoints import read_checkpoint
from d3r.config import D3RConfig
from d3r.eval.evaluate import EvalSettings, Reference, SampleResult, evaluate_prediction
from d3r.student.checkpoint import load_student, student_checkpoint
from d3r.student.factory import build_student_from_config
from d3r.student.model import Student
from d3r.teachers.base import OUTPUT_KEYS
from d3r.train.data import CacheData, build_cache_data
from d3r.train.loss import COMPONENTS, DistillLoss, build_loss

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
STATE_FILE = "train_state.pt"
NO_DECAY_TABLES = ("cls_token", "register_tokens", "mask_token", "pos_embed")
"""Learned tokens and position tables: never weight-decayed (nor are biases, norms and LayerScale gammas)."""


# ---- precision, seeds, RNG state ----


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """``auto``: bf16 on a GPU that supports it, fp16 (with a gradient scaler) on an older GPU, fp32 on CPU."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager[Any]:
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch RNG states (tensors and scalars: loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- optimiser and schedule ----


def decays(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices and kernels only: not to biases, norm weights, LayerScale
    gammas (all 1-d), embedding tables, learned tokens or position tables."""
    return param.ndim > 1 and not isinstance(module, nn.Embedding) and name not in NO_DECAY_TABLES


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}]``."""
    decayed: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                (decayed if decays(module, name, param) else rest).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) as a fraction of ``train.lr``: linear warmup
    over ``warmup_steps`` (step 0 gets 1/warmup), then a cosine from 1 down to ``min_lr_ratio`` reached at
    the last step, ``total_steps - 1`` (a run with no step after warmup stays at 1)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps - 1
    progress = 0.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float,
                    min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine (:func:`lr_factor`) over ``total_steps`` optimiser steps."""
    warmup_steps = round(warmup_fraction * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, min_lr_ratio)
    )


@dataclass(frozen=True)
class StepPlan:
    """How many optimiser steps an epoch and the whole run have (the schedule's horizon)."""

    steps_per_epoch: int
    total_steps: int
    grad_accum: int

    @classmethod
    def from_config(cls, batches_per_epoch: int, grad_accum: int, epochs: int, max_steps: int | None) -> StepPlan:
        """``batches_per_epoch // grad_accum`` steps per epoch (left-over forwards of an epoch are not used);
        ``max_steps`` if set (epochs repeat as needed), else ``epochs`` epochs.

        Raises:
            ValueError: when an epoch has fewer batches than one optimiser step needs.
        """
        steps_per_epoch = batches_per_epoch // grad_accum
        if steps_per_epoch == 0:
            raise ValueError(
                f"train.grad_accum={grad_accum} needs more batches than an epoch has per worker "
                f"({batches_per_epoch}); lower train.grad_accum, train.batch_size or train.num_workers"
            )
        total = max_steps if max_steps is not None else epochs * steps_per_epoch
        return cls(steps_per_epoch, total, grad_accum)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, forwards of that epoch already consumed) after ``step`` optimiser steps."""
        epoch, steps_done = divmod(step, self.steps_per_epoch)
        return epoch, steps_done * self.grad_accum


# ---- one forward/backward, one optimiser step ----


def predict(model: nn.Module, images: torch.Tensor, device: torch.device, precision: Precision
            ) -> dict[str, torch.Tensor]:
    """All B scenes of ``images`` (uint8 ``[B, N, 3, H, W]``) in one forward, at ``precision``."""
    with autocast(precision, device):
        return model(images.to(device, non_blocking=True), autocast=False)


def targets_of(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The cached teacher outputs of a batch (``OUTPUT_KEYS``) on ``device``."""
    return {key: batch[key].to(device, non_blocking=True) for key in OUTPUT_KEYS}


def forward_loss(model: nn.Module, batch: dict[str, Any], loss_fn: DistillLoss, device: torch.device,
                 precision: Precision) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch: ``(total, components)``, averaged over its B scenes."""
    return loss_fn(predict(model, batch["images"], device, precision), targets_of(batch, device))


def optimiser_step(params: list[nn.Parameter], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip: float | None) -> float:
    """Unscale, clip, step and zero the gradients; returns the gradient norm before clipping. A step whose
    gradients are not finite is skipped (the scaler does that for fp16; logged otherwise)."""
    scaler.unscale_(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf))
    if math.isfinite(norm) or scaler.is_enabled():
        scaler.step(optimizer)
    else:
        log.warning("gradient norm is %s: optimiser step skipped", norm)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


# ---- across ranks ----


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(value: Any) -> list[Any]:
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


# ---- validation ----


@dataclass
class MetricSums:
    """Sums and counts of named values (merged across ranks, then averaged)."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, prefix: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            if math.isfinite(value):
                self.sums[prefix + name] += value
                self.counts[prefix + name] += 1

    def merge(self, other: MetricSums) -> None:
        for name, value in other.sums.items():
            self.sums[name] += value
            self.counts[name] += other.counts[name]

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / self.counts[name] for name in sorted(self.sums) if self.counts[name]}


@dataclass
class FigureSample:
    """One val sample's images, prediction and ground-truth scores, for the figures."""

    sample_id: str
    images: np.ndarray  # uint8 [N, H, W, 3]
    outputs: dict[str, np.ndarray]
    result: SampleResult


def sample_outputs(outputs: dict[str, torch.Tensor], index: int) -> dict[str, np.ndarray]:
    return {key: outputs[key][index].float().cpu().numpy() for key in OUTPUT_KEYS}


def score_sample(outputs: dict[str, np.ndarray], batch: dict[str, Any], index: int,
                 settings: EvalSettings) -> tuple[dict[str, float], SampleResult | None]:
    """Metrics of one val sample: ``gt/<m>`` (when the row has ground truth) and ``teacher/<m>`` against
    the cached teacher outputs. A sample that cannot be scored against one reference is logged and left out."""
    scores: dict[str, float] = {}
    gt_result = None
    references: list[tuple[str, Any]] = []
    if bool(batch["has_gt"][index]):
        references.append(("gt/", lambda: Reference.from_geometry(
            batch["gt_depth"][index].numpy(), batch["gt_K"][index].numpy(), batch["gt_poses"][index].numpy())))
    references.append(("teacher/", lambda: Reference.from_prediction(
        batch["pts3d_global"][index].numpy(), batch["conf_global"][index].numpy())))
    for prefix, reference in references:
        try:
            result = evaluate_prediction(outputs, reference(), settings)
        except ValueError as exc:
            log.warning("val sample %s against %s not scored: %s", batch["sample_id"][index], prefix[:-1], exc)
            continue
        scores.update({prefix + name: value for name, value in result.metrics.items()})
        if prefix == "gt/":
            gt_result = result
    return scores, gt_result


@torch.no_grad()
def validate(student: Student, data: CacheData, loss_fn: DistillLoss, device: torch.device, precision: Precision,
             settings: EvalSettings) -> tuple[dict[str, float], FigureSample | None]:
    """``val/loss`` and ``val/{gt,teacher}/<metric>`` over this rank's val shard (``train.val_max_samples``
    applies to the table), averaged over all ranks; and this rank's first sample with ground truth, for
    figures. Runs the bare student (not DDP) in eval mode: sequential view ids."""
    sums = MetricSums()
    figure_sample = None
    student.eval()
    for batch in data.batches(0):
        outputs = predict(student, batch["images"], device, precision)
        total, _ = loss_fn(outputs, targets_of(batch, device))
        size = len(batch["sample_id"])
        sums.add("", {"loss_sum": float(total) * size, "samples": float(size)})
        for index in range(size):
            sample = sample_outputs(outputs, index)
            scores, gt_result = score_sample(sample, batch, index, settings)
            sums.add("val/", scores)
            if figure_sample is None and gt_result is not None:
                images = batch["images"][index].permute(0, 2, 3, 1).numpy()
                figure_sample = FigureSample(batch["sample_id"][index], images, sample, gt_result)
    student.train()
    merged = MetricSums()
    for part in gather_objects(sums):
        merged.merge(part)
    means = merged.means()
    samples = merged.sums.get("samples", 0.0)
    metrics = {name: value for name, value in means.items() if name.startswith("val/")}
    if samples:
        metrics["val/loss"] = merged.sums["loss_sum"] / samples
    metrics["val/samples"] = samples
    return metrics, figure_sample


# ---- progress, checkpoints, MLflow ----


@dataclass
class Progress:
    """Where the run is: optimiser steps done, and samples (scenes) and views consumed over all ranks."""

    step: int = 0
    samples_seen: int = 0
    views_seen: int = 0


@dataclass
class Window:
    """Training statistics since the last log line."""

    started: float = field(default_factory=time.perf_counter)
    forwards: int = 0
    steps: int = 0
    samples: int = 0
    views: int = 0
    losses: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    grad_norm: float = 0.0


def read_training_state(checkpoint: Any) -> dict[str, Any]:
    """The training state in a Ray Train ``Checkpoint`` written by this loop (tensors and scalars only)."""
    with checkpoint.as_directory() as directory:
        return dict(read_checkpoint(Path(directory) / STATE_FILE, opt_in="no setting (d3r writes tensors only)"))


def load_training_state() -> dict[str, Any] | None:
    """The state of the latest Ray Train checkpoint of this run (a rerun or a restarted worker), else None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    return None if checkpoint is None else read_training_state(checkpoint)


def student_for_run(config: D3RConfig, saved: dict[str, Any] | None) -> Student:
    """A new student (``student.*``: preset, encoder weights) or, when resuming, the checkpoint's exact one.

    Raises:
        ValueError: when the checkpoint's student differs from the configured one (other than in
            ``activation_checkpointing``, which only trades memory for time).
    """
    if saved is None:
        return build_student_from_config(config.student)
    wanted = build_student_from_config(config.student.model_copy(update={"encoder_weights": None})).spec
    resumed = load_student(saved["student"])
    differ = [name for name, value in asdict(resumed.spec).items()
              if name != "activation_checkpointing" and getattr(wanted, name) != value]
    if differ:
        raise ValueError(
            f"train.run_name={config.train.run_name!r} resumes a checkpoint of another student (fields {differ} "
            f"differ from student.preset={config.student.preset!r}); use a new train.run_name"
        )
    student = Student(replace(resumed.spec, activation_checkpointing=wanted.activation_checkpointing))
    student.load_state_dict(resumed.state_dict())
    return student


class RunLog:
    """Rank 0's MLflow client for the run the driver created."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step) for key, value in values.items() if math.isfinite(value)
        ])

    def tag(self, key: str, value: Any) -> None:
        self.client.set_tag(self.run_id, key, str(value))

    def figures(self, sample: FigureSample, step: int) -> None:
        """A view grid (image, depth, confidence, error vs GT) and point-cloud renders of one val sample."""
        from d3r.eval import figures

        title = f"student at step {step} · val sample {sample.sample_id[:12]}"
        with tempfile.TemporaryDirectory() as directory:
            stem = Path(directory) / f"val_{sample.sample_id[:12]}_step{step}"
            paths = [
                figures.save_view_grid(f"{stem}_views.png", sample.images, sample.result.depth,
                                       sample.outputs["conf_global"], sample.result.error, title),
                figures.save_point_cloud_views(f"{stem}_cloud.png", sample.outputs["pts3d_global"],
                                               sample.outputs["conf_global"], title=title),
            ]
            for path in paths:
                self.client.log_artifact(self.run_id, str(path), "figures")


def memory_metrics(device: torch.device) -> dict[str, float]:
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    metrics = {"memory/peak_rss_mb": peak_rss / 2**20}
    if device.type == "cuda":
        metrics["memory/cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return metrics


def save_and_report(state: dict[str, Any], metrics: dict[str, float], rank: int) -> None:
    """Every rank reports (Ray Train's barrier); rank 0 attaches the checkpoint directory."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, Path(directory) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


# ---- the train function ----


def train_loop(loop_config: dict[str, Any]) -> None:
    """The ``TorchTrainer`` train function; ``loop_config = {"config": D3RConfig as JSON, "mlflow_run_id": str}``."""
    import ray.train
    import ray.train.torch

    config = D3RConfig.model_validate(loop_config["config"])
    train = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(train.precision, device)
    seed_everything(train.seed + rank)
    run_log = RunLog(config.mlflow.tracking_uri, loop_config["mlflow_run_id"]) if rank == 0 else None

    # the student (new, or the checkpoint's exact one) and the loss
    saved = load_training_state()
    student = student_for_run(config, saved)
    loss_fn = build_loss(train)

    # this rank's shard of the cache table, cropped to the student's patch; the real number of steps
    train_data = build_cache_data(config, "train", rank, world, student.spec.patch_size)
    val_data = build_cache_data(config, "val", rank, world, student.spec.patch_size)
    plan = StepPlan.from_config(train_data.batches_per_epoch, train.grad_accum, train.epochs, train.max_steps)
    eval_settings = EvalSettings.from_config(config.eval)

    # DDP, optimiser with decay/no-decay groups, warmup + cosine over the whole run, loss scaling for fp16
    model = ray.train.torch.prepare_model(student)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(student, train.weight_decay), lr=train.lr)
    scheduler = build_scheduler(optimizer, plan.total_steps, train.warmup_fraction, train.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    # resume: optimiser, schedule, scaler, progress and this rank's RNG exactly where the checkpoint left them
    progress = Progress()
    latest_val: dict[str, float] = {}
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        progress = Progress(**saved["progress"])
        latest_val = {k: v for k, v in saved["metrics"].items() if k.startswith("val/")}
        if rank < len(saved["rng"]):
            set_rng_state(saved["rng"][rank])
        else:
            seed_everything(train.seed + rank + progress.step)
    resumed_from = progress.step
    if rank == 0:
        log.info("training %s on %d worker(s), %s, %d steps (%d per epoch), from step %d", student.spec,
                 world, precision, plan.total_steps, plan.steps_per_epoch, resumed_from)
        run_log.tag("d3r.train.precision", precision)
        run_log.tag("d3r.train.total_steps", plan.total_steps)
        run_log.tag("d3r.train.resumed_from_step", resumed_from)
    if val_data.num_samples == 0 and rank == 0:
        log.warning("the cache table has no val rows: no validation")

    model.train()
    window = Window()
    step_samples = step_views = 0
    while progress.step < plan.total_steps:
        epoch, consumed = plan.position(progress.step)
        batches: Iterator[dict[str, Any]] = islice(train_data.batches(epoch, start=consumed),
                                                   plan.steps_per_epoch * plan.grad_accum - consumed)
        for forward_index, batch in enumerate(batches):
            # forward and backward; DDP syncs gradients on the step's last forward only
            last_forward = (forward_index + 1) % plan.grad_accum == 0
            sync = nullcontext() if last_forward or world == 1 else model.no_sync()
            with sync:
                total, components = forward_loss(model, batch, loss_fn, device, precision)
                scaler.scale(total / plan.grad_accum).backward()
            window.forwards += 1
            step_samples += len(batch["sample_id"])
            step_views += batch["images"].shape[0] * batch["images"].shape[1]
            window.losses["loss"] += total.item()
            for name in COMPONENTS:
                window.losses[name] += components[name].item()
            if not last_forward:
                continue

            # optimiser step; samples and views are counted over all ranks
            lr = optimizer.param_groups[0]["lr"]
            window.grad_norm += optimiser_step(params, optimizer, scaler, train.grad_clip)
            scheduler.step()
            samples, views = sum_across_ranks([step_samples, step_views], device)
            step_samples = step_views = 0
            progress = Progress(progress.step + 1, progress.samples_seen + int(samples),
                                progress.views_seen + int(views))
            window.steps += 1
            window.samples += int(samples)
            window.views += int(views)
            step = progress.step
            done = step >= plan.total_steps

            # training metrics (every rank takes part in the loss sums; rank 0 logs)
            if step % train.log_every == 0 or done:
                names = sorted(window.losses)
                sums = sum_across_ranks([window.forwards, *(window.losses[n] for n in names)], device)
                elapsed = max(time.perf_counter() - window.started, 1e-9)
                metrics = {f"train/{n}": value / sums[0] for n, value in zip(names, sums[1:], strict=True)}
                metrics.update({
                    "train/lr": lr, "train/grad_norm": window.grad_norm / window.steps, "train/epoch": epoch,
                    "train/samples_per_s": window.samples / elapsed, "train/views_per_s": window.views / elapsed,
                    "train/samples_seen": progress.samples_seen, **memory_metrics(device),
                })
                if run_log is not None:
                    run_log.metrics(metrics, step)
                window = Window()

            # validation: loss and eval metrics against the cached teacher and ground truth
            paused = time.perf_counter()
            if (step % train.val_every == 0 or done) and val_data.num_samples > 0:
                latest_val, figure_sample = validate(student, val_data, loss_fn, device, precision, eval_settings)
                if run_log is not None:
                    run_log.metrics(latest_val, step)
                    if done and figure_sample is not None:
                        run_log.figures(figure_sample, step)

            # checkpoint: every rank reports, rank 0 with the state
            if step % train.checkpoint_every == 0 or done:
                report = {"step": step, "epoch": epoch, "samples_seen": progress.samples_seen,
                          "views_seen": progress.views_seen, "resumed_from_step": resumed_from}
                rng = gather_objects(rng_state())
                state = {
                    "student": student_checkpoint(student), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "progress": asdict(progress), "rng": rng, "metrics": {**report, **latest_val},
                    "world_size": world,
                } if rank == 0 else {}
                save_and_report(state, report, rank)
            if done:
                return
            window.started += time.perf_counter() - paused  # throughput counts training time only
