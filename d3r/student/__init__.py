"""d3r.student: the student model (encoder → fusion → heads), its presets and encoder weight loaders."""

from d3r.student.factory import build_student_from_config
from d3r.student.model import Student, build_student, parameter_breakdown
from d3r.student.presets import PRESETS, StudentSpec
from d3r.student.weights import KeyReport, load_encoder_weights

__all__ = [
    "PRESETS",
    "KeyReport",
    "Student",
    "StudentSpec",
    "build_student",
    "build_student_from_config",
    "load_encoder_weights",
    "parameter_breakdown",
]
