"""Inference benchmarks; results in ``bench/results/inference.md`` (one ``##`` section per mode, each run replaces
only its own).

``e2e`` (CPU): end-to-end seconds of :func:`d3r.infer.reconstruct.reconstruct_to_folder` from image files to
written outputs (PLY, GLB, COLMAP model, cameras.json, 16-bit PNG depth and confidence maps, timings; no HTML
viewer) for 8 and 32 views, with the students ``tiny``, ``d3r-s``, ``distill3r-s`` and the release Fast3R teacher
(``teacher.checkpoint: random``: the published 648M architecture with seeded random weights; no weights are
downloaded, and speed does not depend on them). Students are saved as checkpoints with random weights and loaded
by path, as a user would. Input: one synthetic room (``d3r synth``, orbit) rendered at 224x168 whose PNGs are
copied into a plain image folder; the models see them at ``--long-side`` (default 112: 112x84 for the patch-14
students, 112x80 for the patch-16 teacher) so the whole run stays within minutes on a shared 2-core CPU. One
run per cell, timed in process CPU time (the primary ratio: robust to other jobs on a shared box) and wall time,
with reconstruct's own stage timings; ratios are against the teacher in the same run. The teacher's
``load_model`` is a random initialisation of 648M parameters (slower than reading its safetensors would be).

``onnx`` (CPU): each student exported by :func:`d3r.infer.export.export_onnx` at ``--views`` views of the same
size: file size, the parity check (normwise relative error at batch 1 and 2) and batch-1 latency of ONNX
Runtime (``CPUExecutionProvider``) against PyTorch (process CPU time, median of ``--runs`` after 2 warm-ups), in
one run.

Both CPU sections run on one thread (``torch.set_num_threads(1)``, BLAS/OpenMP pinned before numpy loads; ONNX
Runtime on as many intra-op threads as torch); the machine is shared, so its load average is recorded beside the
numbers.

``--gpu``: forward seconds and peak ``torch.cuda.max_memory_allocated`` (batch 1, bf16 autocast, median of
``--runs`` after one warm-up; :func:`bench/teacher.py time_forward`) at 12/32/64/128 views: ``distill3r-s`` and
``d3r-s`` at 378x504 (H x W; heads on 25 views at a time, as Fast3R's ``view_chunk``) against the release
teacher at 384x512, beside the official table (``distill3r-official.md`` §6, RTX 6000 Ada; Distill3R 3.76x at
128 views). Without CUDA it writes its section saying "not run", with the official numbers only.

    .venv/bin/python bench/inference.py [--section cpu|e2e|onnx] [--long-side 112] [--views 8] [--runs 3]
    .venv/bin/python bench/inference.py --gpu [--runs 3]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import onnxruntime  # noqa: E402
import torch  # noqa: E402
from sections import write_sections  # noqa: E402  (bench/sections.py, beside this script)
from teacher import time_forward  # noqa: E402  (bench/teacher.py, beside this script)

from d3r.config import D3RConfig, TeacherConfig  # noqa: E402
from d3r.infer.export import ExportReport, export_onnx  # noqa: E402
from d3r.infer.reconstruct import ReconstructOptions, reconstruct_to_folder  # noqa: E402
from d3r.machine import describe_machine  # noqa: E402
from d3r.scenes.synthetic import export_scenes  # noqa: E402
from d3r.student import build_student  # noqa: E402
from d3r.student.checkpoint import save_student  # noqa: E402
from d3r.teachers.fast3r import build_fast3r  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "inference.md"
TITLE = "Inference benchmarks"
STUDENTS = ("tiny", "d3r-s", "distill3r-s")
TEACHER = "teacher"  # the reconstruct MODEL that names the configured teacher
E2E_VIEWS = (8, 32)
PHOTO_SIZE = (224, 168)  # (W, H) of the rendered photos
GPU_VIEWS = (12, 32, 64, 128)
GPU_STUDENTS = ("distill3r-s", "d3r-s")
GPU_STUDENT_SIZE = (378, 504)  # (H, W): the crop of a 512x384 teacher's pixels to patch 14
GPU_TEACHER_SIZE = (384, 512)  # (H, W)
GPU_HEAD_CHUNK = 25
# distill3r-official.md section 6, README "Inference Efficiency" (RTX 6000 Ada): (seconds, peak GB)
OFFICIAL = {
    "Fast3R (teacher)": {12: (0.32, 6.86), 32: (1.14, 12.11), 64: (3.26, 21.11), 128: (10.11, 44.36)},
    "Distill3R": {12: (0.13, 4.05), 32: (0.41, 9.97), 64: (1.02, 21.80), 128: (2.69, 31.90)},
}


def run_command() -> str:
    return " ".join(["python bench/inference.py", *sys.argv[1:]])


def header(title: str, machine: str, lines: list[str]) -> list[str]:
    return [title, "", f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}", f"- machine: {machine}",
            f"- command: `{run_command()}`", *lines, ""]


# ---- e2e ----


@dataclass(frozen=True)
class E2EResult:
    model: str
    views: int
    size: tuple[int, int]  # (W, H) the model saw
    total: float  # wall seconds of reconstruct_to_folder
    cpu: float  # process CPU seconds of reconstruct_to_folder
    timings: dict[str, float]  # its stages' wall seconds

    @property
    def load(self) -> float:
        return self.timings.get("load_model", 0.0)

    @property
    def forward(self) -> float:
        return self.timings.get("model", 0.0)


def photo_folders(root: Path) -> dict[int, Path]:
    """One synthetic room's PNGs copied into plain image folders of 8 and 32 views."""
    scene = export_scenes(root / "synth", 1, max(E2E_VIEWS), PHOTO_SIZE, seed=0, camera_path="orbit")[0]
    photos = sorted((scene / "images").iterdir())
    folders = {}
    for views in E2E_VIEWS:
        folders[views] = root / f"photos_{views}"
        folders[views].mkdir()
        for photo in photos[:views]:
            shutil.copy(photo, folders[views] / photo.name)
    return folders


def model_entries(root: Path) -> dict[str, str]:
    """Label → reconstruct MODEL: student checkpoints with seeded random weights, and the teacher."""
    entries = {}
    for preset in STUDENTS:
        torch.manual_seed(0)
        entries[preset] = str(save_student(build_student(preset), root / f"{preset}.pt"))
    entries["release teacher"] = TEACHER
    return entries


def e2e_section(args: argparse.Namespace) -> str:
    machine = describe_machine(threads=1)
    config = D3RConfig(teacher=TeacherConfig(name="fast3r", checkpoint=Path("random"), preset="release",
                                             device="cpu"))
    options = ReconstructOptions(device="cpu", long_side=args.long_side)
    results: list[E2EResult] = []
    with tempfile.TemporaryDirectory(prefix="d3r-bench-inference-") as tmp:
        root = Path(tmp)
        folders = photo_folders(root)
        for label, entry in model_entries(root).items():
            for views, folder in folders.items():
                out = root / f"out_{label.replace(' ', '_')}_{views}"
                start, cpu_start = time.perf_counter(), time.process_time()
                rec = reconstruct_to_folder(folder, entry, out, config, options)
                total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                height, width = rec.views[0].image.shape[:2]
                results.append(E2EResult(label, views, (width, height), total, cpu, dict(rec.timings)))
                print(f"{label} {views} views: {total:.1f} s {rec.timings}", flush=True)
    teacher = {r.views: r for r in results if r.model == "release teacher"}
    rows = []
    for r in results:
        base = teacher[r.views]
        rows.append(
            f"| {r.model} | {r.views} | {r.size[0]}x{r.size[1]} | {r.cpu:.2f} | {r.total:.2f} | {r.load:.2f} | "
            f"{r.forward:.2f} | {r.total - r.load - r.forward:.2f} | **{base.cpu / r.cpu:.2f}x** | "
            f"{base.total / r.total:.2f}x | {base.forward / r.forward:.2f}x |")
    stages = ", ".join(results[0].timings) if results else ""
    return "\n".join([
        *header("## End to end on CPU: image files to written outputs", machine, [
            f"- input: one synthetic room (`d3r synth`, orbit, seed 0) rendered at {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, "
            f"its PNGs in a plain image folder; models see them at long side {args.long_side}",
            "- `reconstruct_to_folder` with default options (confidence percentile 10, png16 depth maps, no HTML), "
            "device cpu, one thread, one run per cell",
            "- students: checkpoints of random weights loaded by path; teacher: Fast3R `release` with "
            "`teacher.checkpoint: random` (its load is a random init of 648M parameters)",
            f"- stages timed by reconstruct: {stages}; other = everything but load and model (read, decode, "
            "cameras by PnP, confidence rule, writers)",
            "- end to end: process CPU time (robust to other jobs on a shared box, one thread) and wall time of "
            "`reconstruct_to_folder`; load, model and other: reconstruct's own stage timings (wall)",
            "- vs teacher = teacher seconds / model seconds at the same number of views (CPU: end to end CPU time; "
            "wall: end to end wall time; model stage: wall time of the forward passes)",
            "- random weights make degenerate point maps, so the cameras stage (PnP) costs what it costs on bad "
            "geometry, not on a trained model's",
        ]),
        "| model | views | model input WxH | end to end CPU s | end to end wall s | load s | model s | other s | "
        "vs teacher, CPU | vs teacher, wall | vs teacher, model stage |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])


# ---- onnx ----


def onnx_section(args: argparse.Namespace) -> str:
    machine = describe_machine(threads=1, extra=f"onnxruntime {onnxruntime.__version__}")
    height = args.long_side * 3 // 4 // 14 * 14
    width = args.long_side // 14 * 14
    reports: dict[str, tuple[ExportReport, float]] = {}
    with tempfile.TemporaryDirectory(prefix="d3r-bench-onnx-") as tmp:
        root = Path(tmp)
        for preset in STUDENTS:
            torch.manual_seed(0)
            checkpoint = save_student(build_student(preset), root / f"{preset}.pt")
            start = time.perf_counter()
            report = export_onnx(str(checkpoint), D3RConfig(), args.views, height, width, root / f"{preset}.onnx",
                                 runs=args.runs, clock=time.process_time)
            reports[preset] = (report, time.perf_counter() - start)
            print(report.format(), flush=True)
    rows = [
        f"| {preset} | {r.parameters / 1e6:.2f}M | {r.file_bytes / 2**20:.1f} | {max(r.rel_error.values()):.1e} | "
        f"{r.torch_seconds * 1e3:.1f} | {r.ort_seconds * 1e3:.1f} | **{r.torch_seconds / r.ort_seconds:.2f}x** | "
        f"{seconds:.0f} |"
        for preset, (r, seconds) in reports.items()
    ]
    any_report = next(iter(reports.values()))[0]
    return "\n".join([
        *header("## ONNX Runtime vs PyTorch on CPU", machine, [
            f"- `d3r.infer.export.export_onnx` of each student (random weights) for {args.views} views at "
            f"{width}x{height}, dynamic batch, uint8 input; {any_report.exporter}, opset {any_report.opset}",
            "- parity: the largest normwise relative error max|ort - torch| / max|torch| over the four maps, at "
            "batch 1 and 2 (export fails above 1e-4)",
            f"- latency: batch 1, one thread each, process CPU time, median of {args.runs} after 2 warm-ups; "
            "export s = export + checker + parity + timing",
        ]),
        "| student | parameters | ONNX MiB | max rel. error | PyTorch ms | ONNX Runtime ms | PyTorch / ORT | "
        "export s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])


# ---- gpu ----


def _gpu_row(model: torch.nn.Module, images: Callable[[int], torch.Tensor],
             runs: int) -> dict[int, tuple[float, float] | None]:
    """Per view count: (median seconds, peak GB) of ``model`` on CUDA, or None where it ran out of memory."""
    model = model.cuda().eval()
    row: dict[int, tuple[float, float] | None] = {}
    for views in GPU_VIEWS:
        try:
            row[views] = time_forward(model, images(views), runs)
        except torch.cuda.OutOfMemoryError:
            row[views] = None
        torch.cuda.empty_cache()
    return row


def _cell(result: tuple[float, float] | None) -> str:
    return "OOM" if result is None else f"{result[0]:.2f} / {result[1]:.2f}"


def gpu_section(args: argparse.Namespace) -> str:
    official = [f"| official {name} | " + " | ".join(f"{t:.2f} / {m:.2f}" for t, m in values.values()) + " |"
                for name, values in OFFICIAL.items()]
    columns = " | ".join(f"N={n}" for n in GPU_VIEWS)
    table_head = [f"| model | {columns} |", "|---|" + "---:|" * len(GPU_VIEWS)]
    title = "## GPU: forward seconds / peak GB, students at 378x504 vs the teacher at 384x512"
    common = [
        f"- batch 1, bf16 autocast, random weights, median of {args.runs} forwards after one warm-up "
        "(CUDA synchronised), peak = `torch.cuda.max_memory_allocated` after the warm-up (weights included); "
        f"student heads on {GPU_HEAD_CHUNK} views at a time, teacher `view_chunk` {GPU_HEAD_CHUNK}",
        "- official: `distill3r-official.md` §6 (RTX 6000 Ada; students at 378x518, Fast3R at 384x512); "
        "Distill3R is 3.76x faster than Fast3R at 128 views there",
    ]
    if not torch.cuda.is_available():
        return "\n".join([
            *header(title, describe_machine(), [
                *common, "- **not run**: no CUDA device on this machine; the official numbers for comparison:"]),
            *table_head, *official,
        ])
    teacher_h, teacher_w = GPU_TEACHER_SIZE
    student_h, student_w = GPU_STUDENT_SIZE
    torch.manual_seed(0)
    results = {"release teacher": _gpu_row(
        build_fast3r("release", view_chunk=GPU_HEAD_CHUNK),
        lambda views: torch.rand(1, views, 3, teacher_h, teacher_w, device="cuda") * 2 - 1, args.runs)}
    for preset in GPU_STUDENTS:
        results[preset] = _gpu_row(
            build_student(preset, head_chunk=GPU_HEAD_CHUNK),
            lambda views: torch.randint(0, 256, (1, views, 3, student_h, student_w), dtype=torch.uint8, device="cuda"),
            args.runs)
    rows = [f"| ours: {label} | " + " | ".join(_cell(row[n]) for n in GPU_VIEWS) + " |"
            for label, row in results.items()]
    seconds = {(label, n): row[n][0] if row[n] else None for label, row in results.items() for n in GPU_VIEWS}
    speedups = []
    for label in GPU_STUDENTS:
        cells = [f"{seconds['release teacher', n] / seconds[label, n]:.2f}x"
                 if seconds[label, n] and seconds["release teacher", n] else "-" for n in GPU_VIEWS]
        speedups.append(f"| ours: teacher s / {label} s | " + " | ".join(cells) + " |")
    official_speedup = " | ".join(
        f"{OFFICIAL['Fast3R (teacher)'][n][0] / OFFICIAL['Distill3R'][n][0]:.2f}x" for n in GPU_VIEWS)
    return "\n".join([
        *header(title, describe_machine(), common),
        *table_head, *rows, *official, *speedups, f"| official: Fast3R s / Distill3R s | {official_speedup} |",
    ])


SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {"e2e": e2e_section, "onnx": onnx_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=[*SECTIONS, "cpu"], default="cpu", help="cpu: e2e and onnx")
    parser.add_argument("--long-side", type=int, default=112, help="model input long side in pixels (CPU sections)")
    parser.add_argument("--views", type=int, default=8, help="onnx section: views of the exported graphs")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per median (onnx and GPU)")
    parser.add_argument("--gpu", action="store_true", help="the GPU section only (writes 'not run' without CUDA)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    names = ["gpu"] if args.gpu else list(SECTIONS) if args.section == "cpu" else [args.section]
    functions = {**SECTIONS, "gpu": gpu_section}
    sections = []
    for name in names:
        sections.append(functions[name](args))
        print(sections[-1], flush=True)
    write_sections(RESULTS, TITLE, sections)


if __name__ == "__main__":
    main()
