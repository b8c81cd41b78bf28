"""The eval job: score teachers and students on GT-bearing samples, write tables and figures, log to MLflow.

``run_eval(config)`` (``d3r eval``, ``jobs/eval.py``):

1. loads every ``eval.models`` entry first (a bad path or registry URI fails before any work);
2. lists the configured scene source's samples (``scenes.*``; ``eval.split``, ``eval.max_samples``);
3. per sample, runs each model, scores it against the ground truth (:func:`evaluate_prediction`)
   and, when a teacher is among the models, scores every other model against the teacher's output
   (student-vs-teacher agreement; this needs no ground truth). Students see the teacher's pixels
   centre-cropped to a multiple of their patch (``student.preset``'s; never resampled) and are scored
   on those pixels: ground truth and the teacher's output are cropped the same way;
4. writes per-sample, per-scene and mean tables (CSV + Markdown) and figures to ``eval.out_dir``;
5. logs the mean metrics (``<model>/<reference>/<metric>``), the tables and figures to one MLflow
   run in ``mlflow.experiment``.

A sample that cannot be loaded or a prediction that cannot be scored becomes a reject; the job goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from d3r.config import ConfigError, D3RConfig
from d3r.eval import figures
from d3r.eval.evaluate import EvalSettings, Reference, SampleResult, evaluate_prediction
from d3r.eval.models import EvaluatedModel, load_model
from d3r.eval.report import GROUND_TRUTH, SUMMARY_METRICS, TEACHER_REFERENCE, EvalReport, EvalRow
from d3r.scenes.preprocess import crop_to_patch, crop_views_to_patch
from d3r.scenes.records import Scene, View
from d3r.scenes.sampling import Sample, SampleError, load_sample, sample_scene
from d3r.scenes.sources import list_scenes
from d3r.student.presets import resolve_spec
from d3r.tracking import use_experiment

log = logging.getLogger(__name__)


def eval_samples(config: D3RConfig) -> Iterator[tuple[Scene, Sample]]:
    """The configured source's samples in ``eval.split`` (``all``: every split), at most ``eval.max_samples``."""
    count = 0
    for scene in list_scenes(config.scenes):
        for sample in sample_scene(scene, config.scenes):
            if config.eval.split != "all" and sample.split != config.eval.split:
                continue
            if config.eval.max_samples is not None and count >= config.eval.max_samples:
                return
            count += 1
            yield scene, sample


def _sample_figures(
    out_dir: Path, label: str, sample: Sample, views: list[View], outputs: dict[str, np.ndarray], result: SampleResult
) -> list[Path]:
    stem = out_dir / "figures" / f"{label}_{sample.scene_id}_{sample.id[:8]}"
    title = f"{label} · {sample.scene_id} · views {', '.join(sample.view_names)}"
    images = np.stack([v.image for v in views])
    return [
        figures.save_view_grid(f"{stem}_views.png", images, result.depth, outputs["conf_global"], result.error, title),
        figures.save_point_cloud_views(f"{stem}_cloud.png", outputs["pts3d_global"], outputs["conf_global"],
                                       title=title),
    ]


def _ground_truth(sample: Sample, views: list[View]) -> Reference | None:
    try:
        return Reference.from_views(views)
    except ValueError as exc:
        log.info("sample %s: no ground truth (%s); agreement only", sample.id, exc)
        return None


class _Evaluation:
    """The per-sample loop's state: settings, where files go, and the report being filled."""

    def __init__(self, config: D3RConfig, models: list[EvaluatedModel]) -> None:
        self.config = config
        self.models = models
        self.settings = EvalSettings.from_config(config.eval)
        self.out_dir = Path(config.eval.out_dir)
        self.report = EvalReport()
        self.figures_left = {model.label: config.eval.figure_samples if config.eval.figures else 0 for model in models}
        try:
            self.student_patch = resolve_spec(config.student.preset).patch_size
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _score(
        self, label: str, reference_name: str, sample: Sample, outputs: dict[str, np.ndarray], reference: Reference
    ) -> SampleResult:
        result = evaluate_prediction(outputs, reference, self.settings)
        self.report.rows.append(EvalRow(label, reference_name, sample.scene_id, sample.id, result.metrics))
        return result

    def run_sample(self, scene: Scene, sample: Sample) -> None:
        try:
            views = load_sample(scene, sample, self.config.scenes)
        except SampleError as exc:
            self.report.rejects.append((sample.id, str(exc)))
            return
        # keyed by is_teacher: students see the teacher's pixels cropped to their patch multiple, and are
        # scored on those pixels (never resampled)
        inputs = {True: views}
        ground_truth = {True: _ground_truth(sample, views)}
        predictions: dict[str, dict[str, np.ndarray]] = {}
        for model in self.models:
            try:
                if model.is_teacher not in inputs:
                    inputs[False] = crop_views_to_patch(views, self.student_patch)
                    ground_truth[False] = _ground_truth(sample, inputs[False])
                outputs = model.predict(inputs[model.is_teacher])
                predictions[model.label] = outputs
                if ground_truth[model.is_teacher] is None:
                    continue
                result = self._score(model.label, GROUND_TRUTH, sample, outputs, ground_truth[model.is_teacher])
            except Exception as exc:  # one model failing on one sample is a reject; the job goes on
                log.warning("%s on sample %s failed: %s", model.label, sample.id, exc)
                self.report.rejects.append((f"{model.label} on {sample.id}", f"{type(exc).__name__}: {exc}"))
                continue
            if self.figures_left[model.label] > 0:
                self.figures_left[model.label] -= 1
                self.report.files += _sample_figures(self.out_dir, model.label, sample, inputs[model.is_teacher],
                                                     outputs, result)
        self._score_agreement(sample, predictions)

    def _score_agreement(self, sample: Sample, predictions: dict[str, dict[str, np.ndarray]]) -> None:
        teacher = next((m.label for m in self.models if m.is_teacher and m.label in predictions), None)
        students = [label for label in predictions if label != teacher]
        if teacher is None or not students:
            return
        try:
            cropped, _ = crop_to_patch({key: predictions[teacher][key] for key in ("pts3d_global", "conf_global")},
                                       self.student_patch)
            reference = Reference.from_prediction(cropped["pts3d_global"], cropped["conf_global"])
        except ValueError as exc:
            self.report.rejects.append((f"teacher reference on {sample.id}", str(exc)))
            return
        for label in students:
            try:
                self._score(label, TEACHER_REFERENCE, sample, predictions[label], reference)
            except ValueError as exc:
                self.report.rejects.append((f"{label} vs teacher on {sample.id}", str(exc)))

    def write_outputs(self) -> None:
        self.report.files += self.report.write_tables(self.out_dir)
        if not self.config.eval.figures:
            return
        for reference in (GROUND_TRUTH, TEACHER_REFERENCE):
            table = self.report.mean_table(reference)
            if table:
                names = [n for n in SUMMARY_METRICS if any(n in metrics for metrics in table.values())]
                title = f"mean over scenes, vs {reference}"
                path = self.out_dir / f"metrics_vs_{reference}.png"
                self.report.files.append(figures.save_metric_bars(path, table, names, title, SUMMARY_METRICS))


def log_report(report: EvalReport, config: D3RConfig) -> str:
    """Log mean metrics (``<model>/<reference>/<metric>``), config and every written file; returns the run id."""
    import mlflow

    experiment_id = use_experiment(config.mlflow)
    with mlflow.start_run(experiment_id=experiment_id, run_name="eval") as run:
        mlflow.set_tag("d3r.job", "eval")
        mlflow.log_params({
            "eval.models": ",".join(config.eval.models), "eval.split": config.eval.split,
            "eval.alignment": config.eval.alignment, "eval.icp": config.eval.icp,
            "scenes.source": config.scenes.source, "teacher.name": config.teacher.name,
            "samples": len({row.sample for row in report.rows}), "rejects": len(report.rejects),
        })
        mlflow.log_metrics({
            f"{row.keys[0]}/{row.keys[1]}/{name}": value
            for row in report.means() for name, value in row.metrics.items() if not math.isnan(value)
        })
        out_dir = Path(config.eval.out_dir).resolve()
        for path in report.files:
            parent = Path(path).resolve().parent
            subdir = parent.relative_to(out_dir).as_posix() if parent.is_relative_to(out_dir) else ""
            mlflow.log_artifact(str(path), artifact_path="eval/" + subdir if subdir not in ("", ".") else "eval")
        return run.info.run_id


def run_eval(config: D3RConfig) -> EvalReport:
    """Evaluate every ``eval.models`` entry on the configured samples (see the module docstring).

    Raises:
        ConfigError: for a model that cannot be loaded, or when the source has no sample in
            ``eval.split``; both before any sample is evaluated.
    """
    use_experiment(config.mlflow)  # a tracking server that does not answer fails now; registered models load from it
    try:
        models = [load_model(entry, config) for entry in config.eval.models]
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"eval.models: {exc}") from exc
    if not models:
        raise ConfigError("eval.models is empty; name 'teacher', a checkpoint path or models:/NAME@ALIAS")
    labels = [model.label for model in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"eval.models: entries {config.eval.models} give duplicate names {labels}; rename a file")
    samples = list(eval_samples(config))
    if not samples:
        raise ConfigError(
            f"no samples to evaluate: scenes.source={config.scenes.source!r} has none in eval.split="
            f"{config.eval.split!r} (try eval.split=all)"
        )
    evaluation = _Evaluation(config, models)
    for index, (scene, sample) in enumerate(samples):
        log.info("eval sample %d/%d: %s (%s)", index + 1, len(samples), sample.id, scene.id)
        evaluation.run_sample(scene, sample)
    evaluation.write_outputs()
    report = evaluation.report
    report.run_id = log_report(report, config)
    return report
