"""`teacher.checkpoint: random` (for testing only) and a preset mismatch that names the preset it looks like."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from d3r.checkpoints import CheckpointError
from d3r.config import load_config
from d3r.teachers.base import build_teacher
from d3r.teachers.fast3r import build_fast3r, load_fast3r


def random_teacher(seed: int, caplog: pytest.LogCaptureFixture | None = None):
    config = load_config(None, ["--teacher.name", "fast3r", "--teacher.checkpoint", "random", "--teacher.preset",
                                "tiny", "--teacher.seed", str(seed)], environ={})
    return build_teacher(config.teacher)


def test_random_checkpoint_builds_the_preset_with_seeded_weights_and_says_it_is_for_testing(caplog):
    with caplog.at_level(logging.WARNING):
        teacher = random_teacher(3)
    assert any("teacher.checkpoint=random" in r.getMessage() and "FOR TESTING ONLY" in r.getMessage()
               for r in caplog.records)
    assert teacher.fingerprint["preset"] == "tiny" and teacher.fingerprint["weights_sha256"] == "random-seed-3"
    same, other = random_teacher(3).model.state_dict(), random_teacher(4).model.state_dict()
    weights = teacher.model.state_dict()
    assert all(torch.equal(weights[key], same[key]) for key in weights)  # same process: bit-exact is fair
    assert not all(torch.equal(weights[key], other[key]) for key in weights)
    images = torch.randint(0, 256, (1, 2, 3, 32, 48), dtype=torch.uint8)
    outputs = teacher.predict(images)
    assert outputs["pts3d_global"].shape == (1, 2, 32, 48, 3) and torch.isfinite(outputs["conf_local"]).all()


def test_preset_mismatch_names_the_preset_the_checkpoint_looks_like(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(build_fast3r("tiny").state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"does not fit the Fast3R model.*it looks like preset 'tiny' "
                                              r"\(teacher\.preset: tiny\)"):
        load_fast3r(path, preset="release")
    assert load_fast3r(path, preset="tiny").weights_sha256  # the named preset loads it


def test_a_checkpoint_that_fits_no_preset_gets_no_hint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(build_fast3r("tiny", enc_depth=3).state_dict(), str(path))
    with pytest.raises(CheckpointError) as info:
        load_fast3r(path, preset="tiny")
    assert "looks like preset" not in str(info.value)
