"""Student checkpoints: every spec field round-trips, old layout loads, bad files are named."""

from __future__ import annotations

import pytest
import torch

from d3r.checkpoints import CheckpointError
from d3r.student import build_student
from d3r.student.checkpoint import load_student, save_student, student_checkpoint


def test_round_trip_rebuilds_the_exact_student(tmp_path):
    student = build_student("tiny", head_shared_trunk=True, image_ids="random", head_chunk=3)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(torch.randn_like(param))
    loaded = load_student(save_student(student, tmp_path / "s.pt"))
    assert loaded.spec == student.spec
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert load_student(student_checkpoint(student)).spec == student.spec


def test_old_preset_layout_loads(tmp_path):
    student = build_student("tiny")
    torch.save({"preset": "tiny", "state_dict": student.state_dict()}, tmp_path / "old.pt")
    assert load_student(tmp_path / "old.pt").spec == student.spec


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_student(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_student(tmp_path / "junk.pt")
    checkpoint = student_checkpoint(build_student("tiny"))
    checkpoint["spec"]["encoder_dim"] = 96
    torch.save(checkpoint, tmp_path / "misfit.pt")
    with pytest.raises(ValueError, match="misfit.pt: weights do not fit"):
        load_student(tmp_path / "misfit.pt")
    torch.save({"state_dict": {}}, tmp_path / "nospec.pt")
    with pytest.raises(ValueError, match="nospec.pt"):
        load_student(tmp_path / "nospec.pt")
