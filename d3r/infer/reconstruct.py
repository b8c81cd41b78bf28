"""``d3r reconstruct``: photos or a video in, a reconstruction out (points, cameras, depth), optionally as files.

:func:`reconstruct` runs the pipeline and writes nothing; :func:`reconstruct_to_folder` also writes every output
(see :mod:`d3r.infer.outputs` for the folder's layout and its safety rule). Stages, each timed into
``Reconstruction.timings`` (seconds, in order): ``read`` (list the input), ``load_model``, ``load_views`` (decode,
turn to one orientation, resize and crop to one size: :mod:`d3r.infer.inputs`), ``model`` (all passes:
:mod:`d3r.infer.passes`), ``cameras`` (poses, intrinsics, depth, the confidence rule, every view turned back to
its photo's orientation: :mod:`d3r.infer.cameras`), then one ``write_*`` stage per output file kind.

MODEL is ``teacher`` (the configured ``teacher``: ``--teacher.name oracle``, or ``fast3r`` with
``--teacher.checkpoint``), a student checkpoint file, or ``models:/NAME@ALIAS`` from the registry at
``mlflow.tracking_uri``; they load as the eval job loads them (:func:`d3r.eval.models.load_model`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from d3r.config import ConfigError, D3RConfig
from d3r.eval.models import REGISTRY_PREFIX, TEACHER, EvaluatedModel, load_model
from d3r.infer.cameras import view_reconstructions
from d3r.infer.confidence import confidence_threshold
from d3r.infer.depth_maps import DepthFormat
from d3r.infer.inputs import Skipped, prepare_views, read_input
from d3r.infer.outputs import check_out_dir, write_outputs
from d3r.infer.passes import predict_in_passes
from d3r.infer.reconstruction import Reconstruction
from d3r.infer.timings import timed
from d3r.scenes.records import View

logger = logging.getLogger(__name__)

DEFAULT_CONF_PERCENTILE = 10.0


@dataclass(frozen=True)
class ReconstructOptions:
    """How ``d3r reconstruct`` runs and what it writes.

    Attributes:
        conf_percentile: keep points at or above this percentile (0..100) of the run's confidences.
        conf_threshold: or: keep points with confidence at or above this value. Give at most one of the two
            (neither: ``conf_percentile=10``); see :mod:`d3r.infer.confidence`.
        max_views_per_pass: the most views the model sees at once; more views run in passes sharing view 0
            (:mod:`d3r.infer.passes`).
        depth_format: ``png16`` (16-bit PNG) or ``exr`` (float32) depth and confidence maps (scales: see
            :func:`d3r.infer.writers.write_depth_maps`).
        html: also write the one-file viewer ``viewer.html``.
        device: where a student checkpoint runs (``auto``: CUDA when there is one); the teacher runs on
            ``teacher.device``, a registered model on CUDA when there is one.
        long_side: the model input's long side in pixels before the crop to patch multiples (None:
            ``scenes.long_side``).
    """

    conf_percentile: float | None = None
    conf_threshold: float | None = None
    max_views_per_pass: int = 64
    depth_format: DepthFormat = "png16"
    html: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    long_side: int | None = None

    def __post_init__(self) -> None:
        if self.conf_percentile is not None and self.conf_threshold is not None:
            raise ConfigError("--conf-percentile and --conf-threshold: give one confidence rule, not both")
        if self.conf_percentile is not None and not 0.0 <= self.conf_percentile <= 100.0:
            raise ConfigError(f"--conf-percentile must lie in [0, 100], got {self.conf_percentile}")
        if self.max_views_per_pass < 2:
            raise ConfigError(f"--max-views-per-pass must be at least 2, got {self.max_views_per_pass}")
        if self.depth_format not in ("png16", "exr"):
            raise ConfigError(f"--depth-format must be png16 or exr, got {self.depth_format!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.long_side is not None and self.long_side < 16:
            raise ConfigError(f"--long-side must be at least 16, got {self.long_side}")

    @property
    def percentile(self) -> float | None:
        """The percentile rule in force (None when the absolute threshold is)."""
        if self.conf_threshold is not None:
            return None
        return DEFAULT_CONF_PERCENTILE if self.conf_percentile is None else self.conf_percentile


def _load_model(model: str, config: D3RConfig, options: ReconstructOptions) -> EvaluatedModel:
    """The model MODEL names; a bad MODEL or teacher config is a ConfigError naming it."""
    if model != TEACHER and not model.startswith(REGISTRY_PREFIX) and not Path(model).is_file():
        raise ConfigError(f"--model {model!r}: no such checkpoint file (expected a student checkpoint, "
                          f"{REGISTRY_PREFIX}NAME@ALIAS or {TEACHER!r})")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine has no CUDA device (use auto or cpu)")
    if model.startswith(REGISTRY_PREFIX):
        import mlflow

        from d3r.tracking import check_server

        check_server(config.mlflow)
        mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    try:
        return load_model(model, config, options.device)
    except (OSError, ValueError) as exc:
        what = f"--teacher.name {config.teacher.name}" if model == TEACHER else f"--model {model!r}"
        raise ConfigError(f"{what}: cannot load the model: {exc}") from exc


def _check_ground_truth(views: list[View], model: EvaluatedModel, config: D3RConfig) -> None:
    if not (model.is_teacher and config.teacher.name == "oracle"):
        return
    for view in views:
        missing = [name for name in ("depth", "K", "pose") if getattr(view, name) is None]
        if missing:
            raise ConfigError(f"--teacher.name oracle needs ground-truth depth, K and poses; view {view.name!r} "
                              f"({view.path}) has no {', '.join(missing)} (use a `d3r synth` scene folder, or a "
                              "real model)")


def run_reconstruction(input_path: Path, model: str, config: D3RConfig,
                       options: ReconstructOptions) -> tuple[Reconstruction, list[Skipped]]:
    """:func:`reconstruct`, and the input items it left out with their reasons."""
    timings: dict[str, float] = {}
    with timed(timings, "read"):
        scene = read_input(Path(input_path), config.scenes)
    with timed(timings, "load_model"):
        loaded = _load_model(model, config, options)
    long_side = options.long_side or config.scenes.long_side
    with timed(timings, "load_views"):
        views, skipped = prepare_views(scene, long_side, loaded.patch_size, config.scenes)
    _check_ground_truth(views, loaded, config)
    logger.info("reconstructing %d views with %s", len(views), loaded.label)
    with timed(timings, "model"):
        points, conf = predict_in_passes(loaded.predict, views, options.max_views_per_pass)
    with timed(timings, "cameras"):
        threshold, rule = confidence_threshold(conf, options.percentile, options.conf_threshold)
        recovered = view_reconstructions(views, points, conf, threshold)
    kept = sum(int(v.keep.sum()) for v in recovered)
    logger.info("%s keeps %d of %d points", rule, kept, int(np.prod(conf.shape)))
    return Reconstruction(views=recovered, model=loaded.label, confidence_rule=rule, timings=timings), skipped


def reconstruct(input_path: Path, model: str, config: D3RConfig, options: ReconstructOptions) -> Reconstruction:
    """Reconstruct the photos or video at ``input_path`` with ``model``; writes nothing.

    Raises:
        ConfigError: for a bad INPUT (not a folder or a video, fewer than two usable views), MODEL or option.
    """
    return run_reconstruction(input_path, model, config, options)[0]


def reconstruct_to_folder(input_path: Path, model: str, out_dir: Path, config: D3RConfig,
                          options: ReconstructOptions) -> Reconstruction:
    """:func:`reconstruct`, then every output written into ``out_dir`` (see :mod:`d3r.infer.outputs`).

    ``out_dir`` is checked before any work: it must be new, empty, or a previous ``d3r reconstruct`` output.

    Raises:
        ConfigError: as :func:`reconstruct`, and for an ``out_dir`` that d3r did not make.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    rec, skipped = run_reconstruction(input_path, model, config, options)
    write_outputs(out_dir, rec, skipped, options, source={"input": str(input_path), "model": model})
    return rec

