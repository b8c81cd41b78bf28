"""The paper's central claim, measured: does confidence-aware distillation help? Results in
``bench/results/ablation.md``.

One corrupted-oracle cache is written by the real cache job (:func:`d3r.cache.pipeline.run_cache_job`):
synthetic rooms, the ``oracle`` teacher with stronger corruptions than its defaults (more displaced blobs,
edge bleeding, more scale-shifted views; see :data:`CORRUPTION`), so that a loss which trusts the teacher
everywhere learns the corruptions too. Its scenes are split by scene id: the ``val`` scenes are held out
and never trained on.

The same student is then trained on it by the real training job (:func:`d3r.train.job.run_train`: Ray
Train, MLflow) with the same budget (steps, lr, batch, schedule) and the same seeds, once per loss
variant (:data:`VARIANTS`): the four official ablation configs of Distill3R
(``configs/ablations/*.yaml``) and d3r's ``robust`` loss. Each run's final validation scores the student
against ground truth on the held-out scenes (``val/gt/<metric>``, the eval harness's metrics); the table
gives mean ± std over seeds, beside the untrained student (same seeds) and the corrupted teacher itself.

A difference counts only when the two variants' mean ± std intervals do not overlap; anything else is
"no difference". Runs go seed by seed, all variants within a seed, so that load drift on a shared machine
hits every variant alike. Ray starts once for all runs; MLflow writes to a temporary sqlite store and the
students are registered there under a bench-only name (``run_train`` always registers).

    .venv/bin/python bench/ablation.py [--quick] [--seeds 3] [--steps 80] [--scenes 16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from d3r.config import D3RConfig, load_config
from d3r.eval.evaluate import EvalSettings
from d3r.eval.report import SUMMARY_METRICS
from d3r.machine import describe_machine
from d3r.student.factory import build_student_from_config
from d3r.teachers.base import OUTPUT_KEYS
from d3r.train.data import build_cache_data
from d3r.train.loop import MetricSums, score_sample, seed_everything, validate
from d3r.train.loss import build_loss

RESULTS = Path(__file__).parent / "results" / "ablation.md"
METRICS = ("abs_rel", "delta1", "acc", "comp", "nc", "auc_30")
HEADINGS = {"abs_rel": "AbsRel", "delta1": "δ<1.25", "acc": "acc", "comp": "comp", "nc": "NC", "auc_30": "AUC@30"}
REFERENCE_VARIANT = "paper"

CORRUPTION = {"noise": 0.005, "corrupt_blobs": 4, "corrupt_edge_bleed": True, "corrupt_scale_view_prob": 0.3}
"""The oracle's corruptions (defaults: noise 0.002, 2 blobs per view, edge bleeding, scale shift 0.1)."""


@dataclass(frozen=True)
class Variant:
    """A loss configuration: what it is, and the ``train.loss*`` settings that make it."""

    description: str
    loss: str
    conf_weighting: str
    conf_supervision: bool

    def overrides(self) -> list[str]:
        return ["--train.loss", self.loss, "--train.loss_conf_weighting", self.conf_weighting,
                "--train.loss_conf_supervision", str(self.conf_supervision).lower()]


VARIANTS = {
    "paper": Variant("the paper's loss (`baseline_25epochs`): w = clamp(C_T/10, 0.1, 1), squared error, "
                     "γ = 0.001", "paper", "teacher", True),
    "no_conf_weighting": Variant("`no_conf_weighting`: w = 1, γ = 0.001", "paper", "none", True),
    "no_conf_supervision": Variant("`no_conf_supervision`: teacher weights, γ = 0", "paper", "teacher", False),
    "student_conf_weighting": Variant("`student_conf_weighting`: w = clamp(C_S/10, 0.1, 1) (C_S detached), γ = 0",
                                      "paper", "student", False),
    "robust": Variant("d3r's `robust`: teacher weights × learned C_S on the Euclidean error, −0.2·log C_S, "
                      "log-space confidence matching γ = 0.1", "robust", "teacher", True),
}


@dataclass(frozen=True)
class Budget:
    """What every run gets (the same for all variants)."""

    steps: int
    lr: float
    batch_size: int
    seeds: tuple[int, ...]


@dataclass
class Outcome:
    """Final ground-truth metrics on the held-out scenes per seed, and each run's wall time."""

    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    wall_s: list[float] = field(default_factory=list)
    loss: list[tuple[float, float]] = field(default_factory=list)


def bench_args(workdir: Path, args: argparse.Namespace) -> list[str]:
    """Config overrides shared by the cache job and every run: scenes, corrupted oracle, student, budget, MLflow."""
    corruption = [item for name, value in CORRUPTION.items() for item in (f"--teacher.{name}", str(value).lower())]
    return [
        "--scenes.source", "synthetic", "--scenes.num_scenes", str(args.scenes), "--scenes.views_per_scene", "8",
        "--scenes.render_size", f"[{args.size},{args.size * 3 // 4}]", "--scenes.long_side", str(args.size),
        "--scenes.patch_size", "14", "--scenes.views_per_sample", "4", "--scenes.sampling", "consecutive",
        "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2", "--scenes.camera_path", "mixed",
        "--scenes.val_fraction", "0.25", "--scenes.seed", "0",
        "--teacher.name", "oracle", *corruption,
        "--cache.uri", str(workdir / "cache.lance"),
        "--student.preset", args.preset,
        "--train.max_steps", str(args.steps), "--train.lr", str(args.lr), "--train.batch_size", str(args.batch_size),
        "--train.val_every", str(args.steps), "--train.checkpoint_every", str(args.steps),
        "--train.log_every", str(max(1, args.steps // 10)), "--train.storage_path", str(workdir / "runs"),
        "--train.num_workers", "1", "--train.cpus_per_worker", "1",
        "--mlflow.tracking_uri", f"sqlite:///{workdir}/mlflow.db", "--mlflow.experiment", "d3r-ablation",
        "--mlflow.registered_model", "d3r-ablation-student",
    ]


@dataclass
class References:
    """The untrained student per seed and the (corrupted) teacher against ground truth on the held-out scenes,
    and the samples per split."""

    untrained: dict[int, dict[str, float]]
    teacher: dict[str, float]
    train_samples: int
    val_samples: int


def reference_scores(config: D3RConfig, seeds: tuple[int, ...]) -> References:
    """:class:`References` of the cache at ``config.cache.uri`` (the untrained student built as the loop's rank 0
    builds it for ``train.seed``)."""
    patch = build_student_from_config(config.student).spec.patch_size
    val = build_cache_data(config, "val", 0, 1, patch)
    if val.num_samples == 0:
        raise SystemExit("the cache has no held-out (val) scenes: use more --scenes")
    settings = EvalSettings.from_config(config.eval)  # as the loop scores its validation
    loss = build_loss(config.train)
    untrained = {}
    for seed in seeds:
        seed_everything(seed)
        student = build_student_from_config(config.student)
        untrained[seed], _ = validate(student, val, loss, torch.device("cpu"), "fp32", settings)
    teacher = MetricSums()
    for batch in val.batches(0):
        for index in range(len(batch["sample_id"])):
            outputs = {key: batch[key][index].numpy() for key in OUTPUT_KEYS}
            scores, _ = score_sample(outputs, batch, index, settings)
            teacher.add("val/", scores)
    train_samples = build_cache_data(config, "train", 0, 1, patch).num_samples
    return References(untrained, teacher.means(), train_samples, val.num_samples)


def mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def per_metric(runs: dict[int, dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``metric -> (mean, std)`` over seeds of ``val/gt/<metric>``."""
    return {m: mean_std([run.get(f"val/gt/{m}", math.nan) for run in runs.values()]) for m in METRICS}


def verdict(variant: dict[str, tuple[float, float]], reference: dict[str, tuple[float, float]]) -> str:
    """Which metrics are better or worse than the reference's beyond both mean ± std intervals."""
    better, worse = [], []
    for metric in METRICS:
        (mean, std), (ref_mean, ref_std) = variant[metric], reference[metric]
        if not (math.isfinite(mean) and math.isfinite(ref_mean)) or abs(mean - ref_mean) <= std + ref_std:
            continue
        higher_is_better = SUMMARY_METRICS[metric] == "↑"
        (better if (mean > ref_mean) == higher_is_better else worse).append(HEADINGS[metric])
    if not better and not worse:
        return "no difference (every metric within mean ± std)"
    parts = [f"better on {', '.join(better)}" if better else "", f"worse on {', '.join(worse)}" if worse else ""]
    same = [HEADINGS[m] for m in METRICS if HEADINGS[m] not in better + worse]
    return "; ".join(p for p in parts if p) + (f"; no difference on {', '.join(same)}" if same else "")


def cell(mean: float, std: float | None = None) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def results_markdown(outcomes: dict[str, Outcome], references: References, budget: Budget,
                     info: dict[str, str]) -> str:
    stats = {name: per_metric(outcome.metrics) for name, outcome in outcomes.items()}
    header = ["variant", *(f"{HEADINGS[m]} {SUMMARY_METRICS[m]}" for m in METRICS), "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name, outcome in outcomes.items():
        cells = [cell(*stats[name][m]) for m in METRICS]
        lines.append(f"| **{name}** | " + " | ".join(cells) + f" | {statistics.fmean(outcome.wall_s):.0f} |")
    untrained_stats = per_metric(references.untrained)
    lines.append("| untrained student | " + " | ".join(cell(*untrained_stats[m]) for m in METRICS) + " | |")
    lines.append("| teacher (corrupted oracle) | " + " | ".join(cell(references.teacher.get(f"val/gt/{m}", math.nan))
                                                               for m in METRICS) + " | |")
    reference = stats.get(REFERENCE_VARIANT)
    reading = [f"- **{name}** vs **{REFERENCE_VARIANT}**: {verdict(stats[name], reference)}"
               for name in outcomes if reference is not None and name != REFERENCE_VARIANT]
    learnt = [f"- **{name}** vs the untrained student: {verdict(stats[name], untrained_stats)}" for name in outcomes]
    runs = ["| variant | seed | " + " | ".join(HEADINGS[m] for m in METRICS) + " | train loss | s |",
            "|---|---:" + "|---:" * (len(METRICS) + 2) + "|"]
    for name, outcome in outcomes.items():
        for (seed, metrics), wall, (first, last) in zip(outcome.metrics.items(), outcome.wall_s, outcome.loss,
                                                        strict=True):
            values = " | ".join(cell(metrics.get(f"val/gt/{m}", math.nan)) for m in METRICS)
            runs.append(f"| {name} | {seed} | {values} | {first:.4g} → {last:.4g} | {wall:.0f} |")
    corruption = ", ".join(f"{k} {v}" for k, v in CORRUPTION.items())
    return "\n".join([
        "# Loss ablation: the paper's confidence-aware distillation vs its ablations and `robust`",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {info['machine']}",
        f"- cache: the cache job on {info['cache']}; oracle teacher with corruptions {corruption} "
        "(defaults: noise 0.002, 2 blobs, edge bleeding, scale-shift probability 0.1)",
        f"- student: `{info['preset']}` from scratch, trained by `run_train` (Ray Train, 1 worker, 1 CPU, fp32)",
        f"- budget, the same for every run: {budget.steps} optimiser steps, batch {budget.batch_size} scenes, "
        f"lr {budget.lr:g} (AdamW, warmup 5% + cosine, clip 1.0), seeds {list(budget.seeds)}",
        f"- metrics: the final validation's `val/gt/*` on the {references.val_samples} samples of the held-out "
        "scenes (never trained on), against "
        "ground truth; mean ± std (sample std) over the seeds",
        f"- wall time: {info['wall']}",
        "",
        *lines,
        "",
        "Variants (the four official `configs/ablations/*.yaml` of Distill3R, and d3r's `robust`):",
        "",
        *(f"- **{name}**: {variant.description}" for name, variant in VARIANTS.items() if name in outcomes),
        "",
        "Differences to the official ablation code: `student_conf_weighting` detaches C_S in the weight (d3r's "
        "loss), where the official loss lets the gradient through it (with γ = 0 the student can lower its "
        "weights by lowering C_S); with γ = 0 and the detached weight, the `paper` student's confidence gets no "
        "gradient at all, so its weights stay at what the untrained head outputs.",
        "",
        "## Reading (computed: a difference counts only when the mean ± std intervals do not overlap)",
        "",
        *reading,
        "",
        "What training reached at this budget (the same rule, against the untrained student of the same seeds):",
        "",
        *learnt,
        "",
        "## Runs (final `val/gt/*` of each run; train loss is each variant's own loss, first → last logged)",
        "",
        *runs,
    ]) + "\n"


def run_variants(base: list[str], budget: Budget) -> dict[str, Outcome]:
    """Every variant for every seed, seed by seed; the final ``val/gt/*`` of each run."""
    from d3r.train.job import run_train

    outcomes = {name: Outcome() for name in VARIANTS}
    for seed in budget.seeds:
        for name, variant in VARIANTS.items():
            config = load_config(None, [*base, *variant.overrides(), "--train.seed", str(seed),
                                        "--train.run_name", f"{name}-seed{seed}"], environ={})
            summary = run_train(config)
            outcome = outcomes[name]
            outcome.metrics[seed] = summary.val
            outcome.wall_s.append(summary.wall_s)
            outcome.loss.append((summary.loss_first, summary.loss_last))
            shown = "  ".join(f"{HEADINGS[m]} {summary.val.get(f'val/gt/{m}', math.nan):.4f}" for m in METRICS)
            print(f"seed {seed} {name:<24} {summary.wall_s:5.0f} s  {shown}", flush=True)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 10 steps, 8 rooms; "
                        "prints the table, writes no results file")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (0, 1, ...)")
    parser.add_argument("--steps", type=int, default=80, help="optimiser steps per run")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=2, help="scenes per step")
    parser.add_argument("--scenes", type=int, default=16, help="synthetic rooms (two 4-view samples each)")
    parser.add_argument("--size", type=int, default=112, help="render width (height 3/4 of it); a multiple of 14")
    parser.add_argument("--preset", default="tiny", help="student preset")
    parser.add_argument("--workdir", type=Path, help="keep the cache, runs and MLflow store here (default: a "
                        "temporary folder, removed at the end)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.scenes = 1, 10, 8
    budget = Budget(args.steps, args.lr, args.batch_size, tuple(range(args.seeds)))

    import ray

    from d3r.cache.pipeline import run_cache_job

    machine = describe_machine(threads=1)
    started = time.perf_counter()
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty (runs of the same name would resume)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        base = bench_args(workdir, args)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            cache = run_cache_job(load_config(None, base, environ={}))
            print(cache.format(), flush=True)
            cache_s = time.perf_counter() - started
            references = reference_scores(load_config(None, base, environ={}), budget.seeds)
            runs_started = time.perf_counter()
            outcomes = run_variants(base, budget)
            runs_s = time.perf_counter() - runs_started
        finally:
            ray.shutdown()
    runs = sum(len(o.wall_s) for o in outcomes.values())
    height = args.size * 3 // 4
    info = {
        "machine": machine,
        "cache": f"{args.scenes} synthetic rooms at {args.size}x{height}, 4-view samples: "
                 f"{references.train_samples} train and {references.val_samples} held-out (val) samples",
        "preset": args.preset,
        "wall": f"{time.perf_counter() - started:.0f} s in all: cache job {cache_s:.0f} s, {runs} runs "
                f"{runs_s:.0f} s ({runs_s / runs:.0f} s per run, with Ray Train start, validation and MLflow "
                "registration)",
    }
    text = results_markdown(outcomes, references, budget, info)
    print(text)
    if args.quick:
        print("(--quick: results file not written)", file=sys.stderr)
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
