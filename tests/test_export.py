"""ONNX export of a student: checker, ONNX Runtime parity with PyTorch at two batch sizes, fixed views, CLI."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from d3r.teachers.base import OUTPUT_KEYS

VIEWS, HEIGHT, WIDTH = 3, 42, 56  # 3x4 patches of 14


def _relative(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(got - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny student with random weights, exported by ``d3r export`` (one export for the module)."""
    from d3r.cli import main
    from d3r.student import build_student
    from d3r.student.checkpoint import save_student

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    checkpoint = save_student(build_student("tiny"), root / "tiny.pt")
    out = root / "tiny.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--model", str(checkpoint), "--format", "onnx", "-o", str(out),
                     "--views", str(VIEWS), "--size", f"{WIDTH}x{HEIGHT}"])
    return code, stdout.getvalue(), checkpoint, out


def test_cli_export_writes_a_valid_onnx_file_and_prints_the_report(exported):
    import onnx

    code, report, _, out = exported
    assert code == 0
    assert out.is_file()
    assert not list(out.parent.glob(".*partial*"))
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["d3r.views"] == str(VIEWS) and metadata["d3r.size"] == f"{WIDTH}x{HEIGHT}"
    for text in ("onnx.checker passed", "parity", "batch 2", "ONNX Runtime", "PyTorch", "MiB"):
        assert text in report


@pytest.mark.parametrize("batch", [1, 2])
def test_onnx_runtime_matches_pytorch_at_each_batch_size(exported, batch):
    from d3r.infer.export import onnx_session, random_images, run_onnx
    from d3r.student.checkpoint import load_student

    _, _, checkpoint, out = exported
    session = onnx_session(out)
    assert session.get_inputs()[0].shape[1:] == [VIEWS, 3, HEIGHT, WIDTH]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    images = random_images(batch, VIEWS, HEIGHT, WIDTH, seed=100 + batch)
    with torch.inference_mode():
        reference = load_student(checkpoint).eval()(images)
    got = run_onnx(session, images.numpy())
    for key in OUTPUT_KEYS:
        assert got[key].shape == tuple(reference[key].shape)
        assert _relative(got[key], reference[key].numpy()) <= 1e-4, key


def test_wrong_view_count_is_a_clear_error(exported):
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    from d3r.infer.export import onnx_session, random_images, run_onnx

    session = onnx_session(exported[3])
    images = random_images(1, VIEWS + 1, HEIGHT, WIDTH).numpy()
    with pytest.raises(ValueError, match=rf"\[batch, {VIEWS}, 3, {HEIGHT}, {WIDTH}\].*got uint8 \[1, {VIEWS + 1}"):
        run_onnx(session, images)
    with pytest.raises(InvalidArgument, match="images"):  # ONNX Runtime itself refuses it too, naming the input
        session.run(None, {"images": images})


@pytest.mark.parametrize(("flags", "named"), [
    (["--size", "50x42"], "--size"),  # 50 is not a multiple of 14
    (["--size", "56by42"], "--size"),
    (["--views", "0"], "--views"),
    (["--model", "no_such_checkpoint.pt"], "--model"),
    (["--out", "EXISTING"], "-o"),
])
def test_bad_arguments_exit_2_naming_the_flag(exported, tmp_path, capsys, flags, named):
    from d3r.cli import main

    checkpoint = exported[2]
    existing = tmp_path / "taken.onnx"
    existing.write_bytes(b"not ours")
    args = {"--model": str(checkpoint), "--format": "onnx", "-o": str(tmp_path / "new.onnx"),
            "--views": str(VIEWS), "--size": f"{WIDTH}x{HEIGHT}"}
    flag, value = flags
    args["-o" if flag == "--out" else flag] = str(existing) if value == "EXISTING" else value
    code = main(["export", *[item for pair in args.items() for item in pair]])
    assert code == 2
    assert named in capsys.readouterr().err
    assert existing.read_bytes() == b"not ours"
    assert not (tmp_path / "new.onnx").exists()


def test_unknown_format_is_refused_by_the_parser(capsys):
    from d3r.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["export", "--model", "x.pt", "--format", "tflite", "-o", "x.onnx", "--views", "2", "--size", "28x28"])
    assert exit_.value.code == 2
    assert "--format" in capsys.readouterr().err


def test_registered_student_exports(tmp_path):
    """``models:/NAME@ALIAS`` from a real sqlite registry: the exported graph matches the registered student."""
    import mlflow

    from d3r.config import D3RConfig, MlflowConfig
    from d3r.infer.export import export_onnx, onnx_session, random_images, run_onnx
    from d3r.registry import log_student_model, register_student
    from d3r.student import build_student
    from d3r.student.checkpoint import load_student, save_student
    from d3r.tracking import use_experiment

    mlflow_config = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="export-test",
                                 registered_model="export-student")
    experiment = use_experiment(mlflow_config)
    torch.manual_seed(1)
    checkpoint = save_student(build_student("tiny"), tmp_path / "student.pt")
    with mlflow.start_run(experiment_id=experiment):
        info = log_student_model(checkpoint)
    register_student(info, mlflow_config, "val/gt/abs_rel", 0.5)

    out = tmp_path / "registered.onnx"
    report = export_onnx("models:/export-student@champion", D3RConfig(mlflow=mlflow_config), 2, 28, 28, out, runs=1)
    assert report.path == out and out.is_file() and max(report.rel_error.values()) <= 1e-4
    images = random_images(2, 2, 28, 28, seed=7)
    with torch.inference_mode():
        reference = load_student(checkpoint).eval()(images)
    got = run_onnx(onnx_session(out), images.numpy())
    assert _relative(got["pts3d_global"], reference["pts3d_global"].numpy()) <= 1e-4
