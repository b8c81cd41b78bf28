"""Build the student a config asks for, with its pretrained encoder when one is named."""

from __future__ import annotations

import logging

from d3r.config import StudentConfig
from d3r.student.model import Student, build_student
from d3r.student.weights import load_encoder_weights

logger = logging.getLogger(__name__)


def build_student_from_config(config: StudentConfig) -> Student:
    """``student.preset`` with ``activation_checkpointing`` and ``image_ids``; loads ``encoder_weights`` if set."""
    student = build_student(
        config.preset, activation_checkpointing=config.activation_checkpointing, image_ids=config.image_ids
    )
    if config.encoder_weights is not None:
        load_encoder_weights(student, config.encoder_weights)
    return student
