"""The models an evaluation can score, behind one interface: a sample's views in, its maps out.

``eval.models`` entries:

- ``"teacher"``: the configured teacher (:func:`d3r.teachers.base.build_teacher`);
- a path to a student checkpoint (:func:`d3r.student.checkpoint.save_student`: weights and every spec
  field; the older ``{"preset", "state_dict"}`` layout too), rebuilt with
  :func:`d3r.student.checkpoint.load_student`; it runs on ``eval.device``;
- ``"models:/NAME@ALIAS"`` (or ``models:/NAME/VERSION``): a registered MLflow model in the
  configured tracking/registry store, loaded as a pyfunc (:class:`d3r.registry.StudentModel`, which
  runs on CUDA when there is one) with ``predict({"images": uint8 [B, N, 3, H, W]})`` returning a dict
  of the four maps (``d3r.teachers.base.OUTPUT_KEYS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from d3r.config import D3RConfig
from d3r.scenes.records import View
from d3r.teachers.base import OUTPUT_KEYS, Teacher, build_teacher, teacher_images

if TYPE_CHECKING:
    from d3r.student.model import Student

REGISTRY_PREFIX = "models:/"
TEACHER = "teacher"

Predict = Callable[[list[View]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class EvaluatedModel:
    """A model under evaluation.

    Attributes:
        label: short name used in tables and MLflow metric keys (letters, digits, ``_ - .``).
        source: the ``eval.models`` entry it came from.
        is_teacher: the configured teacher (the reference for student-vs-teacher agreement).
        predict: one sample's loaded views → ``pts3d_global`` ``[N, H, W, 3]``, ``conf_global``
            ``[N, H, W]``, ``pts3d_local``, ``conf_local`` (float32 numpy).
        patch_size: the views' H and W must be multiples of this (1: any size).
    """

    label: str
    source: str
    is_teacher: bool
    predict: Predict
    patch_size: int = 1


def images_tensor(views: list[View]) -> torch.Tensor:
    """Loaded views → uint8 ``[1, N, 3, H, W]``."""
    return teacher_images(np.stack([v.image for v in views])[None])


def _to_numpy(outputs: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    missing = [key for key in OUTPUT_KEYS if key not in outputs]
    if missing:
        raise ValueError(f"{source}: the model's output lacks {missing}; expected {list(OUTPUT_KEYS)}")
    out = {}
    for key in OUTPUT_KEYS:
        value = outputs[key]
        value = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        out[key] = value[0].astype(np.float32)
    return out


def _teacher_predict(teacher: Teacher) -> Predict:
    def predict(views: list[View]) -> dict[str, np.ndarray]:
        ground_truth: dict[str, torch.Tensor] = {}
        if teacher.needs_ground_truth:
            for name, attr in (("depth", "depth"), ("K", "K"), ("poses", "pose")):
                if any(getattr(v, attr) is None for v in views):
                    raise ValueError(f"teacher {teacher.name!r} needs ground-truth {name}, which this sample lacks")
                ground_truth[name] = torch.from_numpy(np.stack([getattr(v, attr) for v in views])[None])
        return _to_numpy(teacher.predict(images_tensor(views), **ground_truth), f"teacher {teacher.name!r}")

    return predict


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _module_predict(module: torch.nn.Module, device: torch.device, source: str) -> Predict:
    module = module.to(device).eval()

    def predict(views: list[View]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return _to_numpy(module(images_tensor(views).to(device)), source)

    return predict


def _pyfunc_predict(pyfunc: Any, source: str) -> Predict:
    def predict(views: list[View]) -> dict[str, np.ndarray]:
        return _to_numpy(pyfunc.predict({"images": images_tensor(views).numpy()}), source)

    return predict


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def model_label(entry: str) -> str:
    """The name an ``eval.models`` entry has in tables and metric keys (``teacher``, ``student_<file stem>``,
    ``<NAME>_<ALIAS or VERSION>``)."""
    if entry == TEACHER:
        return TEACHER
    if entry.startswith(REGISTRY_PREFIX):
        return _label(entry[len(REGISTRY_PREFIX):])
    return _label(f"student_{Path(entry).stem}")


def load_student_checkpoint(path: Path, device: torch.device) -> tuple[Predict, int]:
    """A student from a checkpoint file (see :func:`d3r.student.checkpoint.load_student`), and its patch size.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file when it is not a student checkpoint or its weights do not fit its spec.
    """
    from d3r.student.checkpoint import load_student

    student = load_student(path)
    return _module_predict(student, device, str(path)), student.spec.patch_size


def load_registered_pyfunc(uri: str) -> Any:
    """The pyfunc (:class:`d3r.registry.StudentModel`) registered as ``uri`` in the current tracking URI's registry.

    Raises:
        ValueError: naming the URI when the registry has no such model.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise ValueError(
            f"eval.models: cannot load {uri!r} from the registry at {mlflow.get_tracking_uri()} ({exc}); "
            "register a model first, or pass a checkpoint path"
        ) from exc


def load_registered_model(uri: str) -> tuple[Predict, int]:
    """A model from the MLflow registry of the current tracking URI (``models:/NAME@ALIAS``), and its patch size.

    Raises:
        ValueError: naming the URI when the registry has no such model.
    """
    pyfunc = load_registered_pyfunc(uri)
    return _pyfunc_predict(pyfunc, uri), pyfunc.unwrap_python_model().student.spec.patch_size


def load_student_module(entry: str) -> Student:
    """The student module itself (CPU, eval mode) of a checkpoint path or a registered ``models:/NAME@ALIAS``
    (current tracking URI), for code that needs the ``torch.nn.Module`` (the ONNX export).

    Raises:
        FileNotFoundError: when a checkpoint path does not exist.
        ValueError: naming the entry when it is not a student checkpoint or not in the registry.
    """
    from d3r.student.checkpoint import load_student

    if entry.startswith(REGISTRY_PREFIX):
        return load_registered_pyfunc(entry).unwrap_python_model().student.cpu().eval()
    return load_student(Path(entry)).eval()


def load_model(entry: str, config: D3RConfig, device: str | None = None) -> EvaluatedModel:
    """The model named by one ``eval.models`` entry (see the module docstring); a student checkpoint runs on
    ``device`` (``auto``, ``cpu``, ``cuda``; None: ``eval.device``)."""
    label = model_label(entry)
    if entry == TEACHER:
        teacher = build_teacher(config.teacher)
        return EvaluatedModel(label, entry, True, _teacher_predict(teacher), teacher.patch_size)
    if entry.startswith(REGISTRY_PREFIX):
        return EvaluatedModel(label, entry, False, *load_registered_model(entry))
    predict, patch_size = load_student_checkpoint(Path(entry), _device(device or config.eval.device))
    return EvaluatedModel(label, entry, False, predict, patch_size)
