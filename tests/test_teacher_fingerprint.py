"""A teacher's fingerprint from its config alone (no weights loaded, no GPU touched) equals the built teacher's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from d3r.config import TeacherConfig
from d3r.errors import ConfigError
from d3r.teachers.base import build_teacher, fingerprint_id, resolve_device, resolve_dtype, teacher_fingerprint
from d3r.teachers.fast3r import build_fast3r, checkpoint_sha256, save_fast3r


def fast3r(checkpoint, **fields) -> TeacherConfig:
    return TeacherConfig(**{"name": "fast3r", "checkpoint": checkpoint, "preset": "tiny", "device": "cpu", **fields})


def seeded_tiny(seed: int, **overrides):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_fast3r("tiny", **overrides)


@pytest.fixture
def deeper_dir(tmp_path) -> Path:
    """A config.json + model.safetensors directory whose architecture is not the preset's (enc_depth 3)."""
    return save_fast3r(seeded_tiny(1, enc_depth=3), tmp_path / "deeper")


@pytest.fixture
def weights_file(tmp_path) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_file(seeded_tiny(2).state_dict(), str(path))
    return path


def test_oracle_fingerprint_without_building_equals_the_built_one_on_any_device():
    config = TeacherConfig(name="oracle", noise=0.01, corrupt_blobs=3, seed=7)
    built = build_teacher(config).fingerprint
    assert teacher_fingerprint(config) == built
    assert teacher_fingerprint(config, device_kind="cuda") == built  # NumPy float64 wherever it runs
    other = teacher_fingerprint(config.model_copy(update={"seed": 8}))
    assert fingerprint_id(other) != fingerprint_id(built)


@pytest.mark.parametrize("image_ids", ["sequential", "random"])
def test_fast3r_fingerprint_without_weights_equals_the_built_teacher(deeper_dir, weights_file, image_ids):
    for checkpoint in (deeper_dir, weights_file, Path("random")):
        config = fast3r(checkpoint, image_ids=image_ids, image_ids_seed=4, dtype="bfloat16")
        planned = teacher_fingerprint(config, device_kind="cpu")
        assert planned == build_teacher(config).fingerprint, checkpoint
        assert planned["device"] == "cpu" and planned["dtype"] == "float32"  # CPU runs float32
    deeper = teacher_fingerprint(fast3r(deeper_dir))
    assert deeper["model"]["enc_depth"] == 3  # the architecture config.json resolves, not the preset's
    assert deeper["weights_sha256"] == hashlib.sha256((deeper_dir / "model.safetensors").read_bytes()).hexdigest()
    assert teacher_fingerprint(fast3r(Path("random"), seed=3))["weights_sha256"] == "random-seed-3"


def test_a_changed_checkpoint_file_changes_the_fingerprint(weights_file):
    before = teacher_fingerprint(fast3r(weights_file))
    save_file(seeded_tiny(5).state_dict(), str(weights_file))  # same name, same architecture, other weights
    after = teacher_fingerprint(fast3r(weights_file))
    assert after["weights_sha256"] != before["weights_sha256"]
    assert fingerprint_id(after) != fingerprint_id(before)
    assert build_teacher(fast3r(weights_file)).fingerprint == after


def test_the_fingerprint_needs_no_gpu_and_refuses_what_the_build_would(weights_file, tmp_path):
    config = fast3r(weights_file, dtype="bfloat16", device="auto")
    on_gpu = teacher_fingerprint(config, device_kind="cuda")  # computed here, on a host that may have no GPU
    assert (on_gpu["device"], on_gpu["dtype"]) == ("cuda", "bfloat16")
    assert on_gpu["weights_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert fingerprint_id(on_gpu) != fingerprint_id(teacher_fingerprint(config, device_kind="cpu"))
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    for find in (teacher_fingerprint, build_teacher):  # the header is read (no weights) as the load reads it
        with pytest.raises(ConfigError, match="teacher.checkpoint=.*cannot be read as a checkpoint"):
            find(fast3r(junk))


def test_the_job_hashes_the_checkpoint_once_and_workers_reuse_the_hash(weights_file, deeper_dir):
    assert checkpoint_sha256(weights_file) == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert checkpoint_sha256(deeper_dir) == checkpoint_sha256(deeper_dir / "model.safetensors")
    config = fast3r(weights_file)
    given = teacher_fingerprint(config, checkpoint_sha256="hashed-by-the-driver")
    assert given["weights_sha256"] == "hashed-by-the-driver"  # taken, not recomputed
    assert build_teacher(config, checkpoint_sha256="hashed-by-the-driver").fingerprint == given


def test_bad_settings_fail_as_the_build_would_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="teacher.checkpoint is required"):
        teacher_fingerprint(fast3r(None))
    with pytest.raises(ConfigError, match="teacher.checkpoint=.*nope"):
        teacher_fingerprint(fast3r(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="teacher.checkpoint=.*without model.safetensors"):
        teacher_fingerprint(fast3r(tmp_path))
    with pytest.raises(ConfigError, match="teacher.preset='huge'"):
        teacher_fingerprint(fast3r(Path("random"), preset="huge"))
    sequential_ids = save_fast3r(seeded_tiny(1, random_image_idx_embedding=False), tmp_path / "sequential")
    with pytest.raises(ConfigError, match="teacher.image_ids='random'"):
        teacher_fingerprint(fast3r(sequential_ids, image_ids="random"))
    with pytest.raises(ValueError, match="device kind 'cuda:8.0'"):
        teacher_fingerprint(fast3r(Path("random")), device_kind="cuda:8.0")


def test_device_kind_and_dtype_follow_the_settings():
    assert [resolve_device(device, cuda) for device, cuda in
            (("auto", False), ("auto", True), ("cpu", True), ("cuda", True))] == ["cpu", "cuda", "cpu", "cuda"]
    assert (resolve_dtype("float16", "cuda"), resolve_dtype("float16", "cpu")) == ("float16", "float32")
