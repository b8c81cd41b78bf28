"""Export a student to ONNX for the edge: a fixed number of views and image size, a dynamic batch.

The exported graph:

- input ``images``: uint8 ``[batch, N, 3, H, W]`` (RGB 0..255, as every d3r model and the registered
  pyfunc take them; the ImageNet normalisation is inside the graph), ``batch`` dynamic, ``N``, ``H``,
  ``W`` fixed at export;
- outputs the four maps of :data:`d3r.teachers.base.OUTPUT_KEYS`, float32: ``pts3d_global`` and
  ``pts3d_local`` ``[batch, N, H, W, 3]``, ``conf_global`` and ``conf_local`` ``[batch, N, H, W]``
  (global = view 0's camera frame; the views get the sequential ids ``0..N-1`` the student uses at inference);
- metadata ``d3r.views``, ``d3r.size``, ``d3r.input`` (the input in words) and ``d3r.spec`` (the student's
  spec as JSON).

Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript). The legacy TorchScript
exporter (``dynamo=False``) fails on the student with torch 2.13: the confidence activation's
``aten::expm1`` has no ONNX symbolic (``UnsupportedOperatorError``). The dynamo exporter translates RoPE,
SDPA, the bicubic position-table resize and the heads as they are, with the batch a symbolic dimension.

Every export is verified before the file is published: :func:`onnx.checker.check_model`, then ONNX
Runtime (``CPUExecutionProvider``) against PyTorch on the same random images at batch 1 and 2. The error
of each output is normwise: ``max|ort - torch| / max|torch|`` (the largest deviation relative to the
map's own scale; an elementwise ratio is meaningless where a coordinate crosses zero). Above
``tolerance`` (1e-4) the export fails and nothing is written at ``path``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from d3r.config import D3RConfig
from d3r.errors import ConfigError
from d3r.teachers.base import OUTPUT_KEYS

if TYPE_CHECKING:
    import onnxruntime

    from d3r.student.model import Student

log = logging.getLogger(__name__)
logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # it logs every deduplicated initializer at INFO

TOLERANCE = 1e-4
PARITY_BATCHES = (1, 2)
INPUT_NAME = "images"


class ExportMismatch(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance; nothing was published."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the ONNX file.
        model: the model entry it came from (checkpoint path or ``models:/NAME@ALIAS``).
        views, height, width: the fixed input ``[batch, views, 3, height, width]``.
        exporter: the torch exporter used.
        opset: the ONNX default-domain opset of the file.
        parameters: the student's parameter count.
        file_bytes: size of the file.
        rel_error: per batch size checked, the largest normwise relative error over the four outputs.
        ort_seconds, torch_seconds: median latency of one batch-1 forward (ONNX Runtime CPU, PyTorch CPU),
            both on ``threads`` threads, in seconds of ``clock``.
        runs: forwards timed for each median (after two warm-up ones).
        threads: CPU threads of both runtimes (``torch.get_num_threads()``).
        clock: the name of the clock that timed them (``perf_counter``: wall time; ``process_time``: CPU time).
    """

    path: Path
    model: str
    views: int
    height: int
    width: int
    exporter: str
    opset: int
    parameters: int
    file_bytes: int
    rel_error: dict[int, float]
    ort_seconds: float
    torch_seconds: float
    runs: int
    threads: int
    clock: str

    def format(self) -> str:
        errors = ", ".join(f"batch {b}: {e:.2e}" for b, e in self.rel_error.items())
        return "\n".join([
            f"exported {self.model} -> {self.path}",
            f"  input      images uint8 [batch, {self.views}, 3, {self.height}, {self.width}] (batch dynamic)",
            f"  outputs    {', '.join(OUTPUT_KEYS)} (float32)",
            f"  exporter   {self.exporter}, opset {self.opset}; onnx.checker passed",
            f"  size       {self.file_bytes / 2**20:.1f} MiB ({self.parameters / 1e6:.2f}M parameters)",
            f"  parity     max |ort - torch| / max |torch| = {errors} (tolerance {TOLERANCE:g})",
            f"  latency    batch 1, CPU ({self.threads} threads), {self.clock}, median of {self.runs}: "
            f"ONNX Runtime {self.ort_seconds * 1e3:.1f} ms, PyTorch {self.torch_seconds * 1e3:.1f} ms "
            f"({self.torch_seconds / self.ort_seconds:.2f}x)",
        ])


class _MapsTuple(torch.nn.Module):
    """The student with its output dict as a tuple in ``OUTPUT_KEYS`` order (ONNX outputs are positional)."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.student(images)
        return tuple(maps[key] for key in OUTPUT_KEYS)


def load_student_module(model: str, config: D3RConfig) -> Student:
    """The student (CPU, eval mode) of a checkpoint path or a registered ``models:/NAME@ALIAS`` (looked up in
    ``mlflow.tracking_uri``); see :func:`d3r.eval.models.load_student_module`.

    Raises:
        ConfigError: naming ``--model`` when it is not a student checkpoint or not registered.
    """
    from d3r.eval.models import REGISTRY_PREFIX, load_student_module

    if model.startswith(REGISTRY_PREFIX):
        import mlflow

        from d3r.tracking import check_server

        check_server(config.mlflow)
        mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    try:
        return load_student_module(model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {model!r}: not a student checkpoint or registered student ({exc})") from None


def check_export_shape(student: Student, views: int, height: int, width: int) -> None:
    """Raises ConfigError naming ``--views`` or ``--size`` when the student cannot take that input."""
    if not 1 <= views <= student.spec.max_views:
        raise ConfigError(f"--views: need 1..{student.spec.max_views} views (the student's max_views), got {views}")
    patch = student.spec.patch_size
    if height <= 0 or width <= 0 or height % patch or width % patch:
        raise ConfigError(
            f"--size: {width}x{height} (WxH) must be positive multiples of the student's patch size {patch}"
        )


def random_images(batch: int, views: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Reproducible random uint8 images ``[batch, views, 3, height, width]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, views, 3, height, width), dtype=torch.uint8, generator=generator)


def onnx_session(path: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on the CPU for an exported student, on ``threads`` intra-op threads (None:
    ONNX Runtime's default, one per physical core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: onnxruntime.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 ``[batch, N, 3, H, W]`` through an exported student → the four maps (float32 numpy).

    Raises:
        ValueError: when ``images`` is not uint8 of the exported ``[batch, N, 3, H, W]`` (the message says which).
    """
    expected = session.get_inputs()[0].shape  # ["batch", N, 3, H, W]
    images = np.asarray(images)
    fixed = tuple(expected[1:])
    if images.dtype != np.uint8 or images.ndim != 5 or tuple(images.shape[1:]) != fixed:
        views, _, height, width = fixed
        raise ValueError(
            f"this ONNX student takes uint8 images [batch, {views}, 3, {height}, {width}] ({views} views of "
            f"{width}x{height}, fixed at export), got {images.dtype} {list(images.shape)}"
        )
    return dict(zip(OUTPUT_KEYS, session.run(None, {INPUT_NAME: images}), strict=True))


def relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    """Normwise relative error ``max|got - reference| / max|reference|`` (0 when both are 0)."""
    scale = float(np.abs(reference).max())
    diff = float(np.abs(got.astype(np.float64) - reference.astype(np.float64)).max())
    return diff / scale if scale > 0 else diff


def median_seconds(forward: Callable[[], object], runs: int, warmup: int = 2,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds (of ``clock``: wall by default) of ``runs`` calls of ``forward`` after ``warmup`` untimed
    ones (PyTorch's first CPU forwards are several times slower than the steady state)."""
    for _ in range(warmup):
        forward()
    times = []
    for _ in range(runs):
        start = clock()
        forward()
        times.append(clock() - start)
    return statistics.median(times)


def _verify(student: Student, path: Path, views: int, height: int, width: int,
            runs: int, clock: Callable[[], float]) -> tuple[dict[int, float], float, float]:
    """Normwise relative error per batch size of ``PARITY_BATCHES``, and the median batch-1 seconds of PyTorch
    and of ONNX Runtime (same thread count). PyTorch runs before the ONNX Runtime session exists: the session's
    idle threads spin for a while after each run and would slow PyTorch down."""
    batches = {batch: random_images(batch, views, height, width, seed=batch) for batch in PARITY_BATCHES}
    with torch.inference_mode():
        references = {batch: student(images) for batch, images in batches.items()}
        torch_seconds = median_seconds(lambda: student(batches[1]), runs, clock=clock)
    session = onnx_session(path, threads=torch.get_num_threads())
    errors = {}
    for batch, images in batches.items():
        got = run_onnx(session, images.numpy())
        errors[batch] = max(relative_error(got[key], references[batch][key].numpy()) for key in OUTPUT_KEYS)
    ort_seconds = median_seconds(lambda: run_onnx(session, batches[1].numpy()), runs, clock=clock)
    return errors, torch_seconds, ort_seconds


def _export_file(student: Student, views: int, height: int, width: int, path: Path) -> int:
    """Write the ONNX file of ``student`` at ``path``; returns its default-domain opset."""
    example = random_images(2, views, height, width)  # batch 2: a batch of 1 would be specialised
    program = torch.onnx.export(
        _MapsTuple(student).eval(), (example,), dynamo=True, verbose=False,
        input_names=[INPUT_NAME], output_names=list(OUTPUT_KEYS),
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
    )
    metadata = {
        "d3r.views": str(views),
        "d3r.size": f"{width}x{height}",
        "d3r.input": f"images uint8 [batch, {views}, 3, {height}, {width}] RGB 0..255",
        "d3r.spec": json.dumps(dataclasses.asdict(student.spec)),
    }
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)
    return int(program.model.opset_imports[""])


def export_onnx(
    model: str,
    config: D3RConfig,
    views: int,
    height: int,
    width: int,
    path: Path,
    *,
    runs: int = 5,
    clock: Callable[[], float] = time.perf_counter,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Export the student ``model`` (checkpoint path or ``models:/NAME@ALIAS``) to ONNX at ``path`` for
    ``views`` views of ``width`` x ``height`` (dynamic batch), verify it and measure it (see the module docstring).

    The file is written beside ``path`` under a temporary name and renamed only once verified; an existing
    ``path`` is never replaced. Latencies are median ``clock`` seconds: wall time by default; a benchmark on a
    shared machine may pass ``time.process_time`` (CPU time, robust to other jobs when single-threaded).

    Raises:
        ConfigError: naming ``--model``, ``--views``, ``--size`` or ``-o`` for a bad argument.
        ExportMismatch: when ONNX Runtime and PyTorch differ by more than ``tolerance``.
    """
    import onnx

    path = Path(path)
    if path.exists():
        raise ConfigError(f"-o {path}: exists; d3r does not replace files (choose a new path or remove it)")
    if not path.parent.is_dir():
        raise ConfigError(f"-o {path}: the folder {path.parent} does not exist")
    student = load_student_module(model, config)
    check_export_shape(student, views, height, width)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        started = time.perf_counter()
        opset = _export_file(student, views, height, width, partial)
        log.info("exported %s in %.1f s; verifying", model, time.perf_counter() - started)
        onnx.checker.check_model(str(partial), full_check=True)
        errors, torch_seconds, ort_seconds = _verify(student, partial, views, height, width, runs, clock)
        if max(errors.values()) > tolerance:
            raise ExportMismatch(
                f"ONNX Runtime differs from PyTorch by {errors} (normwise relative, per batch size) > {tolerance:g}"
            )
        file_bytes = partial.stat().st_size
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    return ExportReport(
        path=path, model=model, views=views, height=height, width=width, exporter="torch.onnx.export(dynamo=True)",
        opset=opset, parameters=sum(p.numel() for p in student.parameters()), file_bytes=file_bytes,
        rel_error=errors, ort_seconds=ort_seconds, torch_seconds=torch_seconds, runs=runs,
        threads=torch.get_num_threads(), clock=getattr(clock, "__name__", repr(clock)),
    )
