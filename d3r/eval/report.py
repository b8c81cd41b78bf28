"""The evaluation report: per-sample rows, per-scene and mean tables, as text, CSV and Markdown.

Aggregation follows the protocols: a scene's value is the mean over its samples, and a model's
value the mean over scenes (``shared/reference/teachers.md`` C.1: "per-scene values are averaged
over scenes"). NaN values (e.g. consistency without overlapping views) are left out of means.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Columns of the printed summary (every metric is in the CSV); ↓ lower is better, ↑ higher.
SUMMARY_METRICS = {
    "acc": "↓", "comp": "↓", "nc": "↑", "chamfer": "↓", "abs_rel": "↓", "delta1": "↑", "inlier_ratio": "↑",
    "rra_30": "↑", "rta_30": "↑", "auc_30": "↑", "consistency": "↓",
}
GROUND_TRUTH = "gt"
TEACHER_REFERENCE = "teacher"


@dataclass(frozen=True)
class EvalRow:
    """One model scored on one sample against one reference (``"gt"`` or ``"teacher"``)."""

    model: str
    reference: str
    scene: str
    sample: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class TableRow:
    """An aggregate: ``keys`` (model, reference[, scene]), how many items it averages, and the means."""

    keys: tuple[str, ...]
    count: int
    metrics: dict[str, float]


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _average(groups: dict[tuple[str, ...], list[Mapping[str, float]]]) -> list[TableRow]:
    rows = []
    for keys, items in groups.items():
        names = list(dict.fromkeys(name for item in items for name in item))
        means = {name: _nanmean([item.get(name, float("nan")) for item in items]) for name in names}
        rows.append(TableRow(keys, len(items), means))
    return rows


@dataclass
class EvalReport:
    """Everything an evaluation produced.

    Attributes:
        rows: one per (model, reference, sample).
        rejects: ``(sample or model, reason)`` for what could not be evaluated.
        files: tables and figures written.
        run_id: the MLflow run the report was logged to (None before logging).
    """

    rows: list[EvalRow] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None

    def per_scene(self) -> list[TableRow]:
        """Mean over each scene's samples; keys ``(model, reference, scene)``."""
        groups: dict[tuple[str, ...], list[Mapping[str, float]]] = {}
        for row in self.rows:
            groups.setdefault((row.model, row.reference, row.scene), []).append(row.metrics)
        return _average(groups)

    def means(self) -> list[TableRow]:
        """Mean over scenes of the per-scene values; keys ``(model, reference)``; count = scenes."""
        groups: dict[tuple[str, ...], list[Mapping[str, float]]] = {}
        for row in self.per_scene():
            groups.setdefault(row.keys[:2], []).append(row.metrics)
        return _average(groups)

    def mean_table(self, reference: str) -> dict[str, dict[str, float]]:
        """``{model: {metric: mean}}`` against one reference (for the bar charts)."""
        return {row.keys[0]: row.metrics for row in self.means() if row.keys[1] == reference}

    def format(self) -> str:
        """Markdown: means, then per-scene values (summary columns), rejects and where things went."""
        lines = self._tables(summary=True)
        if self.rejects:
            lines += [f"## Rejects ({len(self.rejects)})", ""]
            lines += [f"- {item}: {reason}" for item, reason in self.rejects]
            lines.append("")
        if self.run_id:
            lines.append(f"MLflow run: {self.run_id}")
        lines += [f"wrote {path}" for path in self.files]
        return "\n".join(lines).rstrip() + "\n"

    def write_tables(self, out_dir: str | Path) -> list[Path]:
        """``per_sample.csv``, ``per_scene.csv``, ``means.csv`` (all metrics) and ``report.md`` into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        samples = [TableRow((r.model, r.reference, r.scene, r.sample), 1, dict(r.metrics)) for r in self.rows]
        paths = [
            _write_csv(out_dir / "per_sample.csv", samples, ("model", "reference", "scene", "sample", "n")),
            _write_csv(out_dir / "per_scene.csv", self.per_scene(), ("model", "reference", "scene", "samples")),
            _write_csv(out_dir / "means.csv", self.means(), ("model", "reference", "scenes")),
        ]
        markdown = out_dir / "report.md"
        markdown.write_text("\n".join(["# Evaluation", "", *self._tables(summary=False)]))
        return [*paths, markdown]

    def _tables(self, summary: bool) -> list[str]:
        lines = []
        for title, rows, key_names in (
            ("Mean over scenes", self.means(), ("model", "reference", "scenes")),
            ("Per scene", self.per_scene(), ("model", "reference", "scene", "samples")),
        ):
            lines += [f"## {title}", "", *_markdown(rows, key_names, summary), ""]
        return lines


def _metric_names(rows: Sequence[TableRow], summary: bool) -> list[str]:
    present = list(dict.fromkeys(name for row in rows for name in row.metrics))
    return [name for name in SUMMARY_METRICS if name in present] if summary else present


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def _markdown(rows: Sequence[TableRow], key_names: Sequence[str], summary: bool) -> list[str]:
    if not rows:
        return ["(no rows)"]
    names = _metric_names(rows, summary)
    header = [*key_names, *(f"{n} {SUMMARY_METRICS.get(n, '')}".rstrip() for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [*row.keys, str(row.count), *(_fmt(row.metrics.get(n, float("nan"))) for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _write_csv(path: Path, rows: Sequence[TableRow], key_names: Sequence[str]) -> Path:
    names = _metric_names(rows, summary=False)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*key_names, *names])
        for row in rows:
            writer.writerow([*row.keys, row.count, *(row.metrics.get(n, float("nan")) for n in names)])
    return path
