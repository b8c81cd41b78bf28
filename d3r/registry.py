"""The student in the MLflow model registry: a pyfunc model around a student checkpoint, and its aliases.

- :class:`StudentModel`: the pyfunc. Its one artifact is a student checkpoint
  (:func:`d3r.student.checkpoint.save_student`: weights and every spec field), loaded as tensors only.
  ``predict({"images": uint8 [B, N, 3, H, W]})`` or ``predict({"images_b64": [N base64 image files]})``
  (see :mod:`d3r.serving`) returns the four maps (float32 numpy): ``pts3d_global``/``pts3d_local``
  ``[B, N, H, W, 3]``, ``conf_global``/``conf_local`` ``[B, N, H, W]``; with ``params={"poses": True}``
  also ``focal`` ``[B]``, ``intrinsics`` ``[B, N, 3, 3]`` and ``poses`` ``[B, N, 4, 4]``.
- :func:`log_student_model`: logs it in the active run as an MLflow "model from code"
  (``d3r/registry_model.py``, passed by path, so nothing is cloudpickled), with a signature, a small
  input example, pinned pip requirements and the ``d3r`` package as code, so
  ``mlflow.pyfunc.load_model("models:/NAME@champion")`` and ``mlflow models serve`` work in a fresh process.
  The signature has no input schema (the two input forms are checked by :mod:`d3r.serving`, which
  answers a bad payload with HTTP 400 and a message); it names the outputs and the ``poses`` param.
  Serving limits (``long_side``, ``max_views``) are set at log time, in the model's config.
- :func:`register_student`: registers a logged model, points alias ``candidate`` at it, and moves
  ``champion`` to it only when its metric (lower is better) beats the current champion's value of the
  same metric. A champion chosen by a different metric is kept: values of two metrics do not compare
  (move it by hand with ``MlflowClient().set_registered_model_alias``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

import d3r
from d3r.config import MlflowConfig
from d3r.serving import ARRAY_KEY, DEFAULT_LONG_SIDE, DEFAULT_MAX_VIEWS, ServingLimits, cameras, request_images
from d3r.student.checkpoint import load_student
from d3r.teachers.base import OUTPUT_KEYS

logger = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
METRIC_TAG = "d3r.metric"
VALUE_TAG = "d3r.metric_value"
MODEL_CODE = Path(__file__).with_name("registry_model.py")
# what the pyfunc imports when it loads (d3r itself travels as code)
REQUIREMENTS = ("mlflow", "torch", "numpy", "pydantic", "pyyaml", "safetensors")

POSES_PARAM = "poses"
SIGNATURE = ModelSignature(
    outputs=Schema([
        TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1, 3) if key.startswith("pts3d") else (-1, -1, -1, -1), key)
        for key in OUTPUT_KEYS
    ]),
    params=ParamSchema([ParamSpec(POSES_PARAM, "boolean", False)]),
)


class StudentModel(mlflow.pyfunc.PythonModel):
    """The pyfunc around a student checkpoint (artifact ``checkpoint``); runs on CUDA when there is one.

    The model config (set at log time) holds the serving limits: ``long_side`` and ``max_views``
    (:class:`d3r.serving.ServingLimits`).
    """

    def load_context(self, context: Any) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.student = load_student(Path(context.artifacts["checkpoint"])).to(self.device).eval()
        config = context.model_config or {}
        self.limits = ServingLimits(patch_size=self.student.spec.patch_size,
                                    long_side=int(config.get("long_side", DEFAULT_LONG_SIDE)),
                                    max_views=int(config.get("max_views", DEFAULT_MAX_VIEWS)))

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """``{"images": uint8 [B, N, 3, H, W]}`` or ``{"images_b64": [N base64 image files]}`` → the four maps
        (float32 numpy), and the cameras when ``params["poses"]`` (see :mod:`d3r.serving`).

        ``model_input`` has no type hint: MLflow would read one as a schema, and knows only ``list[...]``
        (so MLflow warns once, on import, that ``predict`` lacks one).

        Raises:
            d3r.serving.BadRequest: (an MlflowException answered with HTTP 400, and a ValueError) for any
                other input, naming what is wrong.
        """
        images = torch.from_numpy(np.ascontiguousarray(request_images(model_input, self.limits))).to(self.device)
        with torch.inference_mode():
            outputs = self.student(images)
        maps = {key: outputs[key].float().cpu().numpy() for key in OUTPUT_KEYS}
        if (params or {}).get(POSES_PARAM):
            maps.update(cameras(maps["pts3d_global"], maps["conf_global"]))
        return maps


def _requirements() -> list[str]:
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def _input_example(patch_size: int) -> dict[str, np.ndarray]:
    """A small valid input: 1 sample of 2 views of 2x2 patches (``[1, 2, 3, 2p, 2p]`` uint8)."""
    side = 2 * patch_size
    ramp = np.linspace(0, 255, side * side * 3, dtype=np.float64).reshape(3, side, side).astype(np.uint8)
    return {ARRAY_KEY: np.stack([ramp, ramp[:, ::-1]])[None]}


def log_student_model(checkpoint_path: Path, *, name: str = "student", long_side: int = DEFAULT_LONG_SIDE,
                      max_views: int = DEFAULT_MAX_VIEWS) -> ModelInfo:
    """Log the student checkpoint at ``checkpoint_path`` as a pyfunc model named ``name`` in the active run.

    ``long_side`` (image files sent to the served model are resized to it) and ``max_views`` (most views
    in one request) go into the model's config (see :mod:`d3r.serving`).

    Raises:
        FileNotFoundError, ValueError: when the file is not a loadable student checkpoint, ``long_side`` is
            below its patch size, or ``max_views`` is not in 1..its ``max_views`` (view ids it knows).
    """
    checkpoint_path = Path(checkpoint_path)
    spec = load_student(checkpoint_path).spec
    if long_side < spec.patch_size or not 1 <= max_views <= spec.max_views:
        raise ValueError(f"log_student_model: long_side={long_side} must be at least the patch size "
                         f"{spec.patch_size} and max_views={max_views} in 1..{spec.max_views}")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts={"checkpoint": str(checkpoint_path)},
        code_paths=[str(Path(d3r.__file__).parent)],
        signature=SIGNATURE,
        input_example=_input_example(spec.patch_size),
        pip_requirements=_requirements(),
        model_config={"long_side": long_side, "max_views": max_views},
    )


@dataclass(frozen=True)
class Registration:
    """What :func:`register_student` did.

    Attributes:
        name, version: the registered model version.
        champion: whether alias ``champion`` now points at it.
        metric, value: the metric that decided (lower is better) and this version's value.
        previous_champion: the former champion's value of the same metric (None: no champion, or one
            chosen by another metric).
        reason: why the champion moved or stayed, in words.
    """

    name: str
    version: int
    champion: bool
    metric: str
    value: float
    previous_champion: float | None
    reason: str = ""


def _current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, str(version))


def _decide(champion: ModelVersion | None, metric: str, value: float) -> tuple[bool, float | None, str]:
    """(move champion?, the champion's value of ``metric`` or None, why)."""
    if not math.isfinite(value):
        return False, None, f"{metric}={value} is not finite; the champion stays"
    if champion is None:
        return True, None, "no champion yet"
    their_metric = champion.tags.get(METRIC_TAG)
    if their_metric != metric:
        return False, None, (
            f"champion version {champion.version} was chosen by {their_metric or 'no recorded metric'}, not {metric}; "
            "values of different metrics do not compare, so it stays"
        )
    theirs = float(champion.tags[VALUE_TAG])
    if value < theirs:
        return True, theirs, f"{metric}={value:.6g} beats champion version {champion.version} ({theirs:.6g})"
    return False, theirs, f"{metric}={value:.6g} does not beat champion version {champion.version} ({theirs:.6g})"


def register_student(model_info: ModelInfo, config: MlflowConfig, metric: str, value: float) -> Registration:
    """Register ``model_info`` as a new version of ``config.registered_model`` in the current registry.

    Alias ``candidate`` always moves to the new version; ``champion`` moves only when ``value`` (of
    ``metric``, lower is better) is below the current champion's value of the same metric, or when
    there is no champion. The version carries ``metric`` and ``value`` as tags; the logging run gets
    tags ``d3r.registry.*`` saying which metric decided and the outcome.
    """
    client = MlflowClient()
    name = config.registered_model
    version = mlflow.register_model(
        model_info.model_uri, name, tags={METRIC_TAG: metric, VALUE_TAG: repr(float(value))}
    )
    number = int(version.version)
    client.set_registered_model_alias(name, CANDIDATE, number)
    champion = _current_champion(client, name)
    move, previous, reason = _decide(champion, metric, float(value))
    if move:
        client.set_registered_model_alias(name, CHAMPION, number)
    outcome = CHAMPION if move else CANDIDATE
    logger.info("registered %s version %d as %s: %s", name, number, outcome, reason)
    if model_info.run_id:
        for key, text in (("model", name), ("version", str(number)), ("metric", metric),
                          ("value", repr(float(value))), ("outcome", outcome), ("reason", reason)):
            client.set_tag(model_info.run_id, f"d3r.registry.{key}", text)
    return Registration(name, number, move, metric, float(value), previous, reason)
