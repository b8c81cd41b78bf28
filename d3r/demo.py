"""The embedded demo: ``python -m d3r.demo --config conf/demo.yaml [--section.field VALUE ...]`` (``make demo``).

The whole mission on the given config (by default synthetic rooms, the oracle teacher with its
corruptions, a tiny student, all on CPU):

1. **cache**: the teacher's outputs for every sample, in a Lance table (``cache.uri``);
2. **untrained student**: the exact weights training starts from (``student.*`` built after seeding
   with ``train.seed``, as the loop's rank 0 does), saved beside the run as ``untrained.pt``;
3. **training**: Ray Train distils the student from the cache (``train.*``), MLflow tracks the run, and
   the result is registered as ``mlflow.registered_model`` (alias ``candidate``; ``champion`` when its
   ``train.champion_metric`` beats the current champion's);
4. **evaluation on held-out scenes** (the ``val`` split, which training never sees): the registered
   student (loaded back from the registry), the untrained student and the teacher, each against
   ground truth (``eval.*``; the demo sets ``eval.models`` and ``eval.split=val`` itself);
5. a short report (:class:`DemoReport`): cache size, the training curve, the three models' scores
   and the command that opens the MLflow UI.

Each step's own summary is printed as it finishes; the report comes last.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from d3r.config import D3RConfig
from d3r.entry import run_job
from d3r.registry import Registration

logger = logging.getLogger("d3r.demo")

UNTRAINED_FILE = "untrained.pt"
# the report's columns: metric → (heading, ↓ lower / ↑ higher is better)
REPORT_METRICS = {"abs_rel": ("AbsRel", "↓"), "delta1": ("δ<1.25", "↑"), "acc": ("acc", "↓"),
                  "comp": ("comp", "↓"), "auc_30": ("AUC@30", "↑")}
STUDENT, UNTRAINED, TEACHER = "student (trained)", "student (untrained)", "teacher"


@dataclass
class DemoReport:
    """What the demo did, in a few numbers (see :meth:`format`).

    Attributes:
        cache_uri, cache_rows, cache_bytes: the cache table, its rows per split, its size on disk.
        loss_curve: ``(step, train/loss)`` at the start, middle and end of training.
        val: the run's final validation metrics (``val/...``).
        champion_metric: the metric that decided the registration.
        registration: what the registry did (None when nothing was registered).
        scores: model role (``STUDENT``, ``UNTRAINED``, ``TEACHER``) → mean metrics against ground truth
            on the held-out scenes.
        held_out: how many held-out scenes (and samples) were evaluated.
        tracking_uri: the MLflow store.
        seconds: wall time per step.
    """

    cache_uri: str
    cache_rows: dict[str, int]
    cache_bytes: int
    loss_curve: list[tuple[int, float]]
    val: dict[str, float]
    champion_metric: str
    registration: Registration | None
    scores: dict[str, dict[str, float]]
    held_out: tuple[int, int]
    tracking_uri: str
    seconds: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        rows = sum(self.cache_rows.values())
        splits = ", ".join(f"{count} {split}" for split, count in sorted(self.cache_rows.items()))
        curve = " → ".join(f"{value:.4g} (step {step})" for step, value in self.loss_curve) or "not logged"
        val = self.val.get(self.champion_metric, math.nan)
        lines = [
            "# d3r demo",
            "",
            f"cache      {self.cache_uri}: {rows} rows ({splits}), {self.cache_bytes / 1e6:.1f} MB on disk",
            f"training   loss {curve}",
            f"           {self.champion_metric} {val:.4g}, val/loss {self.val.get('val/loss', math.nan):.4g}",
        ]
        if self.registration is not None:
            reg = self.registration
            alias = "champion" if reg.champion else "candidate only"
            lines.append(f"registry   {reg.name} version {reg.version}: {alias} ({reg.reason})")
        scenes, samples = self.held_out
        lines += ["", f"held-out scenes ({scenes} scenes, {samples} samples), against ground truth:", ""]
        lines += score_table(self.scores)
        lines += ["", "time       " + ", ".join(f"{step} {s:.0f} s" for step, s in self.seconds.items())
                  + f"; total {sum(self.seconds.values()):.0f} s",
                  f"MLflow UI  mlflow ui --backend-store-uri {self.tracking_uri}"]
        return "\n".join(lines)


def score_table(scores: dict[str, dict[str, float]]) -> list[str]:
    """A Markdown table: one row per model, the ``REPORT_METRICS`` columns (``nan`` where missing)."""
    header = ["model", *(f"{name} {arrow}" for name, arrow in REPORT_METRICS.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for role, metrics in scores.items():
        cells = [f"{metrics.get(key, math.nan):.4f}" for key in REPORT_METRICS]
        lines.append("| " + " | ".join([role, *cells]) + " |")
    return lines


def curve_points(history: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """``(step, value)`` pairs → the first, middle and last (fewer when there are fewer), by step."""
    ordered = sorted(history)
    if len(ordered) <= 3:
        return ordered
    return [ordered[0], ordered[(len(ordered) - 1) // 2], ordered[-1]]


def cache_size(uri: str) -> tuple[dict[str, int], int]:
    """(rows per split, bytes on disk) of the cache table at ``uri`` (a local path)."""
    from collections import Counter

    from d3r.cache.store import local_path, open_dataset

    dataset = open_dataset(uri)
    splits = Counter(dataset.to_table(columns=["split"]).column("split").to_pylist()) if dataset else Counter()
    path = local_path(uri)
    size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.exists() else 0
    return dict(splits), size


def save_untrained_student(config: D3RConfig) -> Path:
    """The student training starts from (seeded with ``train.seed`` like the loop's rank 0), as a checkpoint."""
    from d3r.student.checkpoint import save_student
    from d3r.student.factory import build_student_from_config
    from d3r.train.loop import seed_everything

    seed_everything(config.train.seed)
    student = build_student_from_config(config.student)
    return save_student(student, Path(config.train.storage_path) / config.train.run_name / UNTRAINED_FILE)


def loss_history(tracking_uri: str, run_id: str) -> list[tuple[int, float]]:
    """The run's ``train/loss`` as ``(step, value)``."""
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, "train/loss")]


def demo(config: D3RConfig) -> DemoReport:
    """Run the demo's steps (see the module docstring) and return its report."""
    from d3r.cache.pipeline import run_cache_job
    from d3r.eval.job import run_eval
    from d3r.eval.models import TEACHER as TEACHER_ENTRY
    from d3r.eval.models import model_label
    from d3r.eval.report import GROUND_TRUTH
    from d3r.train.job import run_train, with_absolute_paths

    config = with_absolute_paths(config)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    logger.info("step 1: teacher cache (%s teacher → %s)", config.teacher.name, config.cache.uri)
    print(run_cache_job(config).format())
    seconds["cache"] = time.perf_counter() - started

    started = time.perf_counter()
    untrained = save_untrained_student(config)
    logger.info("step 2: student %r trained by Ray Train (untrained weights kept in %s)", config.student.preset,
                untrained)
    summary = run_train(config)
    print(summary.format())
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    registration = summary.registration
    trained = (f"models:/{registration.name}/{registration.version}" if registration is not None
               else str(summary.checkpoint))
    roles = {model_label(trained): STUDENT, model_label(str(untrained)): UNTRAINED, TEACHER_ENTRY: TEACHER}
    eval_config = config.model_copy(update={"eval": config.eval.model_copy(update={
        "models": [trained, str(untrained), TEACHER_ENTRY], "split": "val"})})
    logger.info("step 3: evaluation on held-out scenes of %s", eval_config.eval.models)
    evaluation = run_eval(eval_config)
    seconds["eval"] = time.perf_counter() - started
    scores = {roles[row.keys[0]]: row.metrics for row in evaluation.means() if row.keys[1] == GROUND_TRUTH}
    held_out = (len({row.scene for row in evaluation.rows}), len({row.sample for row in evaluation.rows}))

    rows, size = cache_size(config.cache.uri)
    return DemoReport(
        cache_uri=config.cache.uri, cache_rows=rows, cache_bytes=size,
        loss_curve=curve_points(loss_history(summary.tracking_uri, summary.run_id)), val=summary.val,
        champion_metric=config.train.champion_metric, registration=registration,
        scores={role: scores[role] for role in (STUDENT, UNTRAINED, TEACHER) if role in scores},
        held_out=held_out, tracking_uri=summary.tracking_uri, seconds=seconds,
    )


def main(argv: list[str]) -> int:
    return run_job("d3r.demo", argv, lambda config: print("\n" + demo(config).format()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
