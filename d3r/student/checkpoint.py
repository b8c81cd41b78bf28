"""A student's weights together with its full spec: one file that rebuilds the exact model.

Layout (a plain dict of tensors and Python scalars, loadable with ``weights_only=True``)::

    {"format": "d3r-student", "version": 1, "spec": dataclasses.asdict(StudentSpec), "state_dict": {...}}

Every ``StudentSpec`` field is stored, not only a preset name, so a checkpoint of a student built with
overrides rebuilds that student. The older ``{"preset": str, "state_dict": dict}`` layout still loads
(as the named preset).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from d3r.checkpoints import read_checkpoint
from d3r.student.model import Student
from d3r.student.presets import StudentSpec, resolve_spec

FORMAT = "d3r-student"
VERSION = 1


def student_checkpoint(student: Student) -> dict[str, Any]:
    """The checkpoint dict of ``student`` (CPU tensors; ``spec`` holds every ``StudentSpec`` field)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "spec": dataclasses.asdict(student.spec),
        "state_dict": {key: value.detach().cpu() for key, value in student.state_dict().items()},
    }


def save_student(student: Student, path: Path) -> Path:
    """Write ``student_checkpoint(student)`` to ``path`` (parents created) and return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(student_checkpoint(student), path)
    return path


def _spec_from(data: dict[str, Any], source: str) -> StudentSpec:
    if data.get("format") == FORMAT:
        if data.get("version") != VERSION:
            raise ValueError(f"{source}: student checkpoint version {data.get('version')!r} is not {VERSION}")
        fields = data.get("spec")
        if not isinstance(fields, dict):
            raise ValueError(f"{source}: 'spec' must be a dict of StudentSpec fields")
        known = {field.name for field in dataclasses.fields(StudentSpec)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"{source}: spec fields {unknown} are unknown to this d3r (valid: {sorted(known)})")
        return StudentSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    if isinstance(data.get("preset"), str):
        return resolve_spec(data["preset"])
    raise ValueError(
        f"{source}: expected {{'format': {FORMAT!r}, 'spec', 'state_dict'}} or {{'preset', 'state_dict'}}, "
        f"got keys {sorted(data)}"
    )


def load_student(path: Path | dict[str, Any], *, trust: bool = False,
                 opt_in: str = "load_student(trust=True)") -> Student:
    """The exact student a checkpoint (a file, or its already-loaded dict) describes, weights loaded.

    The file is read by :func:`d3r.checkpoints.read_checkpoint`: tensors only, unless ``trust`` (the
    setting named ``opt_in``) allows full unpickling, which runs any code the file holds.

    Raises:
        CheckpointError: (a ValueError) naming the file when it cannot be read.
        ValueError: naming the file when it is not a student checkpoint or its weights do not fit its spec.
    """
    source = "checkpoint dict" if isinstance(path, dict) else str(path)
    data = path if isinstance(path, dict) else dict(read_checkpoint(path, opt_in=opt_in, trust=trust))
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{source}: a student checkpoint holds a 'state_dict' dict, got {found}")
    try:
        spec = _spec_from(data, source)
    except TypeError as exc:
        raise ValueError(f"{source}: spec does not build a student: {exc}") from exc
    student = Student(spec)
    try:
        student.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{source}: weights do not fit the stored spec: {exc}") from exc
    return student
