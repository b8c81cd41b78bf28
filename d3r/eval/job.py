"""The eval job: score teachers and students, write tables and figures, log to MLflow.

``run_eval(config)`` (``d3r eval``, ``jobs/eval.py``):

1. loads every ``eval.models`` entry first (a bad path or registry URI fails before any work). The
   ``teacher`` entry, with ``eval.teacher_outputs: cache`` (the default), is the teacher's outputs the
   cache job stored in ``cache.uri`` (:mod:`d3r.eval.cached`: read, never recomputed; the teacher is
   not built); with ``run``, the configured teacher, run on every sample;
2. lists the configured scene source's samples (``scenes.*``; ``eval.split``, ``eval.max_samples``);
   when nothing can be scored (no ground truth in the scenes and no student-and-teacher pair) it
   stops here with a :class:`~d3r.errors.ConfigError` saying why;
3. per sample, runs each model, scores it against the ground truth where the scenes have it
   (:func:`evaluate_prediction`) and, when a teacher is among the models, scores every other model
   against the teacher's output (student-vs-teacher agreement; this needs no ground truth). Students
   see the teacher's pixels centre-cropped to a multiple of their patch (``student.preset``'s; never
   resampled) and are scored on those pixels: ground truth and the teacher's output are cropped the
   same way;
4. writes per-sample, per-scene and mean tables (CSV + Markdown) and figures to ``eval.out_dir``:
   view grids and point clouds against the ground truth, and per-view student-vs-teacher figures
   (:mod:`d3r.eval.agreement`), each view in its photo's orientation;
5. logs the mean metrics (``<model>/<reference>/<metric>``), the tables and figures to one MLflow
   run in ``mlflow.experiment``.

A sample that cannot be loaded or a prediction that cannot be scored becomes a reject; the job goes on.
A job that scores nothing (every sample a reject) ends with a ConfigError naming the rejects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3r.config import D3RConfig
from d3r.errors import ConfigError
from d3r.eval import figures
from d3r.eval.agreement import save_agreement_views
from d3r.eval.cached import CachedTeacher
from d3r.eval.evaluate import EvalSettings, Reference, SampleResult, evaluate_prediction
from d3r.eval.models import TEACHER, load_model, model_label
from d3r.eval.report import GROUND_TRUTH, SUMMARY_METRICS, TEACHER_REFERENCE, EvalReport, EvalRow
from d3r.scenes.preprocess import crop_to_patch, crop_views_to_patch
from d3r.scenes.records import Scene, View
from d3r.scenes.sampling import Sample, SampleError, SamplingTally, load_sample, sample_scene
from d3r.scenes.sources import list_scenes
from d3r.student.presets import resolve_spec
from d3r.tracking import use_experiment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scorer:
    """A model in the eval loop: its label, whether it is the teacher, and its outputs for one sample's views
    (``pts3d_* [N, H, W, 3]``, ``conf_* [N, H, W]``)."""

    label: str
    is_teacher: bool
    predict: Callable[[Sample, list[View]], dict[str, np.ndarray]]


def load_scorers(config: D3RConfig) -> tuple[list[Scorer], CachedTeacher | None]:
    """One :class:`Scorer` per ``eval.models`` entry, and the cache table the teacher's outputs come from
    (``eval.teacher_outputs=cache``; None when the teacher runs or is not among the models).

    Raises:
        ConfigError: for an entry that cannot be loaded, duplicate labels, or no cache table for the teacher.
    """
    if not config.eval.models:
        raise ConfigError("eval.models is empty; name 'teacher', a checkpoint path or models:/NAME@ALIAS")
    labels = [model_label(entry) for entry in config.eval.models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"eval.models: entries {config.eval.models} give duplicate names {labels}; rename a file")
    scorers, cached = [], None
    for entry in config.eval.models:
        if entry == TEACHER and config.eval.teacher_outputs == "cache":
            cached = CachedTeacher(config.cache.uri)
            scorers.append(Scorer(TEACHER, True, cached.outputs))
            continue
        try:
            model = load_model(entry, config)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"eval.models: {exc}") from exc
        scorers.append(Scorer(model.label, model.is_teacher, lambda _, views, run=model.predict: run(views)))
    return scorers, cached


def eval_samples(config: D3RConfig) -> list[tuple[Scene, Sample]]:
    """The configured source's samples in ``eval.split`` (``all``: every split), at most ``eval.max_samples``.

    Raises:
        ConfigError: when the source yields no sample at all, saying why (:meth:`SamplingTally.check`).
    """
    tally = SamplingTally()
    chosen: list[tuple[Scene, Sample]] = []
    for scene in list_scenes(config.scenes):
        samples = sample_scene(scene, config.scenes)
        tally.add(scene, samples)
        for sample in samples:
            if config.eval.split != "all" and sample.split != config.eval.split:
                continue
            if config.eval.max_samples is not None and len(chosen) >= config.eval.max_samples:
                return chosen
            chosen.append((scene, sample))
    tally.check(config.scenes)
    return chosen


def has_ground_truth(scene: Scene) -> bool:
    """Whether every view of ``scene`` has depth, K and a pose (what scoring against ground truth needs)."""
    return scene.has_depth and scene.has_poses and all(view.K is not None for view in scene.views)


def check_something_to_score(config: D3RConfig, scorers: list[Scorer], samples: list[tuple[Scene, Sample]]) -> None:
    """Scores need ground truth, or a teacher and a student to compare.

    Raises:
        ConfigError: saying what is missing and what to add.
    """
    if any(has_ground_truth(scene) for scene, _ in samples):
        return
    teacher = any(scorer.is_teacher for scorer in scorers)
    students = any(not scorer.is_teacher for scorer in scorers)
    if teacher and students:
        return
    missing = ("no student to compare with the teacher: add a student checkpoint or models:/NAME@ALIAS to "
               "eval.models" if teacher else "no 'teacher' to compare the students with: add teacher to eval.models")
    raise ConfigError(f"nothing to score: the scenes of scenes.source={config.scenes.source!r} have no ground truth "
                      f"(depth, K and poses), and eval.models={config.eval.models} has {missing}")


def _sample_figures(out_dir: Path, label: str, name: str, sample: Sample, views: list[View],
                    outputs: dict[str, np.ndarray], result: SampleResult, reference: Reference) -> list[Path]:
    """The view grid and point cloud of one model (files named by ``label``, titled by ``name``) against GT:
    the cloud is the prediction aligned to the ground truth, drawn above the ground truth's own cloud."""
    stem = out_dir / "figures" / f"{label}_{sample.scene_id}_{sample.id[:8]}"
    title = f"{name} · {sample.scene_id} · views {', '.join(sample.view_names)}"
    images = np.stack([v.image for v in views])
    return [
        figures.save_view_grid(f"{stem}_views.png", images, result.depth, outputs["conf_global"], result.error, title,
                               view_names=sample.view_names),
        figures.save_point_cloud_views(
            f"{stem}_cloud.png", result.aligned, outputs["conf_global"], title=title, images=images,
            ground_truth=np.where(reference.valid[..., None], reference.points, np.nan), view0_c2w=reference.c2w[0],
            label=f"{name}, aligned"),
    ]


def _ground_truth(sample: Sample, views: list[View]) -> Reference | None:
    try:
        return Reference.from_views(views)
    except ValueError as exc:
        log.info("sample %s: no ground truth (%s); agreement only", sample.id, exc)
        return None


class _Evaluation:
    """The per-sample loop's state: settings, where files go, and the report being filled."""

    def __init__(self, config: D3RConfig, scorers: list[Scorer], teacher_kind: str) -> None:
        self.config = config
        self.scorers = scorers
        self.teacher_kind = teacher_kind
        self.settings = EvalSettings.from_config(config.eval)
        self.out_dir = Path(config.eval.out_dir)
        self.report = EvalReport()
        budget = config.eval.figure_samples if config.eval.figures else 0
        self.figures_left = dict.fromkeys((scorer.label for scorer in scorers), budget)
        self.agreement_figures_left = dict(self.figures_left)
        try:
            self.student_patch = resolve_spec(config.student.preset).patch_size
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _name(self, scorer_label: str) -> str:
        return f"{scorer_label} ({self.teacher_kind})" if scorer_label == TEACHER else scorer_label

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
        for scorer in self.scorers:
            try:
                if scorer.is_teacher not in inputs:
                    inputs[False] = crop_views_to_patch(views, self.student_patch)
                    ground_truth[False] = _ground_truth(sample, inputs[False])
                outputs = scorer.predict(sample, inputs[scorer.is_teacher])
                predictions[scorer.label] = outputs
                if ground_truth[scorer.is_teacher] is None:
                    continue
                result = self._score(scorer.label, GROUND_TRUTH, sample, outputs, ground_truth[scorer.is_teacher])
            except Exception as exc:  # one model failing on one sample is a reject; the job goes on
                log.warning("%s on sample %s failed: %s", scorer.label, sample.id, exc)
                self.report.rejects.append((f"{scorer.label} on {sample.id}", f"{type(exc).__name__}: {exc}"))
                continue
            if self.figures_left[scorer.label] > 0:
                self.figures_left[scorer.label] -= 1
                self.report.files += _sample_figures(self.out_dir, scorer.label, self._name(scorer.label), sample,
                                                     inputs[scorer.is_teacher], outputs, result,
                                                     ground_truth[scorer.is_teacher])
        self._score_agreement(sample, predictions, inputs.get(False, []))

    def _score_agreement(self, sample: Sample, predictions: dict[str, dict[str, np.ndarray]],
                         student_views: list[View]) -> None:
        teacher = next((s.label for s in self.scorers if s.is_teacher and s.label in predictions), None)
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
                result = self._score(label, TEACHER_REFERENCE, sample, predictions[label], reference)
            except ValueError as exc:
                self.report.rejects.append((f"{label} vs teacher on {sample.id}", str(exc)))
                continue
            if self.agreement_figures_left[label] > 0:
                self.agreement_figures_left[label] -= 1
                stem = self.out_dir / "figures" / f"{label}_vs_teacher_{sample.scene_id}_{sample.id[:8]}"
                self.report.files += save_agreement_views(
                    stem, f"{label} vs {self._name(teacher)} · {sample.scene_id}", student_views, result.depth,
                    reference.depth, reference.valid, predictions[label]["conf_global"], cropped["conf_global"])

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
                self.report.files.append(figures.save_metric_bars(
                    path, table, names, title, SUMMARY_METRICS, model_names={TEACHER: self._name(TEACHER)}))


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
        ConfigError: before any sample is evaluated: for a model that cannot be loaded, no cache table (or
            none of the samples in it) for the teacher's outputs, a source with no sample in ``eval.split``,
            or nothing to score; after the samples, when every one was a reject.
    """
    use_experiment(config.mlflow)  # a tracking server that does not answer fails now; registered models load from it
    scorers, cached = load_scorers(config)
    samples = eval_samples(config)
    if not samples:
        raise ConfigError(
            f"no samples to evaluate: scenes.source={config.scenes.source!r} has none in eval.split="
            f"{config.eval.split!r} (try eval.split=all)"
        )
    check_something_to_score(config, scorers, samples)
    if cached is not None:
        cached.check_covers([sample for _, sample in samples])
    evaluation = _Evaluation(config, scorers, cached.teacher if cached is not None else config.teacher.name)
    for index, (scene, sample) in enumerate(samples):
        log.info("eval sample %d/%d: %s (%s)", index + 1, len(samples), sample.id, scene.id)
        evaluation.run_sample(scene, sample)
    report = evaluation.report
    if not report.rows:
        shown = "; ".join(f"{item}: {reason}" for item, reason in report.rejects[:5])
        raise ConfigError(f"nothing was scored: {len(samples)} samples, {len(report.rejects)} rejects ({shown})")
    evaluation.write_outputs()
    report.run_id = log_report(report, config)
    return report
