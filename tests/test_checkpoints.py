"""The one checkpoint reader (``d3r.checkpoints``) behind the Fast3R teacher and the student's encoder weights:
no file runs code unless the user opted in, and every unreadable file is a CheckpointError naming it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from d3r.checkpoints import CheckpointError, read_checkpoint
from d3r.config import StudentConfig, TeacherConfig
from d3r.errors import ConfigError
from d3r.student import build_student, build_student_from_config, load_encoder_weights
from d3r.teachers.base import build_teacher
from d3r.teachers.fast3r import build_fast3r, load_fast3r, save_fast3r

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Pickles as a call that creates ``marker``: unpickling it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def tiny_fast3r() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_fast3r("tiny").eval()


def fast3r_images() -> torch.Tensor:
    return torch.rand(1, 2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1


def student_encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in build_student("tiny").encoder.state_dict().items()}


def evil_teacher_checkpoint(model: torch.nn.Module, directory: Path) -> tuple[Path, Path]:
    """A Lightning-style ``.ckpt``: valid ``net.`` weights beside a payload. Returns (checkpoint, marker)."""
    marker = directory / "payload-ran"
    path = directory / "evil.ckpt"
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "evil": Payload(marker)}, path)
    return path, marker


def test_teacher_pickle_payload_does_not_run_without_the_opt_in(tiny_fast3r, tmp_path):
    path, marker = evil_teacher_checkpoint(tiny_fast3r, tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_fast3r(path, preset="tiny")
    message = str(info.value)
    assert str(path) in message and "set teacher.trust_checkpoint: true only if you trust this file" in message.lower()
    assert "unpickling runs any code it holds" in message
    config = TeacherConfig(name="fast3r", checkpoint=path, preset="tiny", device="cpu")
    with pytest.raises(ConfigError, match=r"teacher.checkpoint=.*\(GLOBAL getattr\)\. Set teacher.trust_checkpoint"):
        build_teacher(config)
    assert not marker.exists()

    # with the opt-in, it loads and the payload runs: this test can see a payload run
    loaded = load_fast3r(path, preset="tiny", trust=True)
    assert marker.exists()
    x = fast3r_images()
    for key, value in loaded(x).items():
        assert torch.equal(value, tiny_fast3r(x)[key]), key
    marker.unlink()
    build_teacher(config.model_copy(update={"trust_checkpoint": True}))
    assert marker.exists()


def test_student_pickle_payload_does_not_run_without_the_opt_in(tmp_path):
    marker = tmp_path / "payload-ran"
    encoder = student_encoder_state()
    path = tmp_path / "dune.pth"
    torch.save({"model": {f"encoder.{k}": v for k, v in encoder.items()}, "evil": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="student.trust_checkpoint: true only if you trust"):
        load_encoder_weights(build_student("tiny"), path)
    with pytest.raises(ConfigError, match="student.encoder_weights=.*student.trust_checkpoint"):
        build_student_from_config(StudentConfig(preset="tiny", encoder_weights=path))
    assert not marker.exists()

    student = build_student_from_config(StudentConfig(preset="tiny", encoder_weights=path, trust_checkpoint=True))
    assert marker.exists()
    for key, value in encoder.items():
        assert torch.equal(student.encoder.state_dict()[key], value), key


def test_cache_job_exits_2_before_any_work_on_a_pickle_payload(tiny_fast3r, tmp_path):
    path, marker = evil_teacher_checkpoint(tiny_fast3r, tmp_path)
    uri = tmp_path / "cache.lance"
    command = [sys.executable, "jobs/cache.py", "--config", "conf/demo.yaml", "--teacher.name", "fast3r",
               "--teacher.preset", "tiny", "--teacher.device", "cpu", "--teacher.checkpoint", str(path),
               "--scenes.patch_size", "16", "--cache.uri", str(uri)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert str(path) in done.stderr and "teacher.trust_checkpoint: true" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]  # no table, no rejects, no lock


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def saved(value: object) -> Callable[[Path], None]:
    return lambda path: torch.save(value, path)


# (case, file name, writer, message fragment): every one is unreadable for the teacher and the student alike
UNREADABLE = [
    ("random bytes", "w.pth", lambda p: p.write_bytes(random.Random(0).randbytes(4096)), "refuses it"),
    ("random bytes, safetensors", "w.safetensors", lambda p: p.write_bytes(random.Random(0).randbytes(4096)),
     "cannot be read as a checkpoint"),
    ("empty file", "w.pth", lambda p: p.write_bytes(b""), "is empty"),
    ("truncated zip", "w.pth", lambda p: (torch.save({"a": torch.zeros(99)}, p),
                                          p.write_bytes(truncated(p.read_bytes()))), "cannot be read as a checkpoint"),
    ("truncated safetensors", "w.safetensors",
     lambda p: (save_fast3r(build_fast3r("tiny"), p.parent / "s"),
                p.write_bytes(truncated((p.parent / "s" / "model.safetensors").read_bytes()))),
     "cannot be read as a checkpoint"),
    ("missing file", "w.pth", lambda p: None, "does not exist"),
    ("a tensor, not a mapping", "w.pth", saved(torch.zeros(3)), "expected a mapping at the top level, got Tensor"),
    ("a list", "w.pth", saved([torch.zeros(3)]), "expected a mapping at the top level, got list"),
    ("'model' is a list", "w.pth", saved({"model": [torch.zeros(3)]}), "'model' must be a mapping of tensors"),
    ("'model' holds a string", "w.pth", saved({"model": {"encoder.w": "x"}}), "'model' must map names to tensors"),
    ("integer keys", "w.pth", saved({1: torch.zeros(1), "patch_embed.proj.weight": torch.zeros(1)}),
     "must map names to tensors"),
]


def teacher_load(path: Path) -> object:
    return load_fast3r(path, preset="tiny")


def student_load(path: Path) -> object:
    return load_encoder_weights(build_student("tiny"), path)


@pytest.mark.parametrize("load", [teacher_load, student_load], ids=["teacher", "student"])
@pytest.mark.parametrize(("case", "name", "write", "fragment"), UNREADABLE, ids=[c[0] for c in UNREADABLE])
def test_unreadable_checkpoints_are_checkpoint_errors(tmp_path, load, case, name, write, fragment):
    path = tmp_path / name
    write(path)
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert str(path) in str(info.value) and fragment in str(info.value), case


def test_any_random_bytes_are_a_checkpoint_error(tmp_path):
    path = tmp_path / "w.pth"
    for seed in range(40):  # torch.load raises UnpicklingError, IndexError, KeyError, UnicodeDecodeError... on these
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError, match="w.pth"):
            read_checkpoint(path, opt_in="teacher.trust_checkpoint")


def test_a_folder_is_a_checkpoint_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no weights here")
    with pytest.raises(CheckpointError, match=f"{tmp_path} is a directory without model.safetensors"):
        load_fast3r(tmp_path)
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is not a file"):
        load_encoder_weights(build_student("tiny"), tmp_path)


def config_json_writer(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        save_fast3r(build_fast3r("tiny"), directory)
        data = json.loads((directory / "config.json").read_text())
        change(data)
        (directory / "config.json").write_text(json.dumps(data))

    return write


# (case, writer of a Fast3R checkpoint directory or file, message fragment)
UNREADABLE_FAST3R = [
    ("config.json is not JSON", lambda d: (save_fast3r(build_fast3r("tiny"), d),
                                          (d / "config.json").write_text("{not json")), "cannot be read as JSON"),
    ("config.json is not UTF-8", lambda d: (save_fast3r(build_fast3r("tiny"), d),
                                           (d / "config.json").write_bytes(b"\xff\xfe{")), "cannot be read as JSON"),
    ("config.json is a list", lambda d: (save_fast3r(build_fast3r("tiny"), d),
                                        (d / "config.json").write_text("[1]")), "expected a JSON object, got list"),
    ("decoder depth is text", config_json_writer(lambda c: c["decoder_args"].update(depth="4")),
     "decoder_args.depth='4': expected an integer > 0"),
    ("encoder heads are 0", config_json_writer(lambda c: c["encoder_args"].update(num_heads=0)),
     "encoder_args.num_heads=0: expected an integer > 0"),
    ("qkv_bias is a number", config_json_writer(lambda c: c["decoder_args"].update(qkv_bias=1)),
     "decoder_args.qkv_bias=1: expected true or false"),
    ("mlp ratio is infinite", config_json_writer(lambda c: c["encoder_args"].update(mlp_ratio=float("inf"))),
     "encoder_args.mlp_ratio=inf: expected a finite number > 0"),
    ("layer dims are 3", config_json_writer(lambda c: c["head_args"].update(layer_dims=[16, 32, 48])),
     "head_args.layer_dims=[16, 32, 48]: expected a list of 4 integers > 0"),
    ("decoder_args is a list", config_json_writer(lambda c: c.update(decoder_args=[1])),
     "decoder_args: expected an object"),
    ("'state_dict' is a number", lambda d: torch.save({"state_dict": 5}, d / "last.ckpt"),
     "'state_dict' must be a mapping of tensors, got int"),
    ("'state_dict' without 'net.' keys", lambda d: torch.save({"state_dict": {"model.w": torch.zeros(1)}},
                                                              d / "last.ckpt"), "no 'net.'-prefixed keys"),
    ("'state_dict' holds a string", lambda d: torch.save({"state_dict": {"net.a": "x"}}, d / "last.ckpt"),
     "'state_dict' must map names to tensors"),
    ("an integer weight", lambda d: torch.save({k: v.long() if k.endswith("enc_norm.weight") else v
                                                for k, v in build_fast3r("tiny").state_dict().items()}, d / "w.pth"),
     "1 mis-typed: ['encoder.enc_norm.weight torch.int64']"),
]


@pytest.mark.parametrize(("case", "write", "fragment"), UNREADABLE_FAST3R, ids=[c[0] for c in UNREADABLE_FAST3R])
def test_unreadable_fast3r_checkpoints_are_checkpoint_errors(tmp_path, case, write, fragment):
    directory = tmp_path / "fast3r"
    directory.mkdir()
    write(directory)
    files = [p for p in directory.iterdir() if p.suffix in {".ckpt", ".pth"}]
    path = files[0] if files else directory
    with pytest.raises(CheckpointError) as info:
        load_fast3r(path)
    assert str(path) in str(info.value) and fragment in str(info.value), case


def test_reader_allows_tensors_containers_and_argparse_namespaces(tmp_path):
    import argparse

    path = tmp_path / "dune.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(image_size=448), "iter": 7}, path)
    data = read_checkpoint(path, opt_in="student.trust_checkpoint")
    assert data["args"].image_size == 448 and data["iter"] == 7 and torch.equal(data["model"]["w"], torch.ones(2))
