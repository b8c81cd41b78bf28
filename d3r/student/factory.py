"""Build the student a config asks for, with its pretrained encoder when one is named."""

from __future__ import annotations

import logging

from d3r.checkpoints import CheckpointError
from d3r.config import StudentConfig
from d3r.student.model import Student, build_student
from d3r.student.weights import load_encoder_weights

logger = logging.getLogger(__name__)


def build_student_from_config(config: StudentConfig) -> Student:
    """``student.preset`` with ``activation_checkpointing`` and ``image_ids``; loads ``encoder_weights`` if set
    (tensors only, unless ``student.trust_checkpoint``).

    Raises:
        CheckpointError: (a ConfigError) naming ``student.encoder_weights`` when the file cannot be used.
    """
    student = build_student(
        config.preset, activation_checkpointing=config.activation_checkpointing, image_ids=config.image_ids
    )
    if config.encoder_weights is not None:
        try:
            load_encoder_weights(student, config.encoder_weights, trust=config.trust_checkpoint)
        except CheckpointError as error:
            raise CheckpointError(f"student.encoder_weights={str(config.encoder_weights)!r}: {error}") from error
    return student
