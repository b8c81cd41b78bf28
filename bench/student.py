"""Student forward speed and peak memory against the ``release`` Fast3R, same run, as ratios.

CPU (default): ``tiny``, ``d3r-s``, ``distill3r-s`` and Fast3R ``release`` at 224x224 (a multiple of both
patch sizes, 14 and 16), batch 1, N = 2, 8, 16 views, fp32, random weights (speed does not depend on
them). Each (model, N) runs in a fresh single-threaded process: one warm-up forward on a single
2x2-patch view, then ``--repeats`` timed forwards (median). Time is the process's CPU time (robust to
other jobs sharing the machine); wall time is shown beside it. Peak memory on CPU is the growth of the
process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the
first timed forward, so it is the forward's own peak over the model and inputs already resident). Fast3R
runs only up to ``--fast3r-max-views`` (default 16, i.e. all; lower it to save minutes on a busy box:
Fast3R costs ~7 CPU s per view at 224x224 here).

``--gpu``: N = 12, 32, 64, 96, 128; students at 378x518, Fast3R at 384x512 (the official table's
resolutions), bf16 autocast, peak memory from ``torch.cuda.max_memory_allocated``. Both run their heads
25 views at a time (Fast3R's ``view_chunk``). Runs only where CUDA is available.

    .venv/bin/python bench/student.py [--gpu] [--views 2 8 16] [--repeats 1] [--fast3r-max-views 16]

Prints a markdown report and writes ``bench/results/student.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import torch

from d3r.machine import describe_machine

RESULTS = Path(__file__).resolve().parent / "results" / "student.md"
STUDENTS = ("tiny", "d3r-s", "distill3r-s")
BASELINE = "fast3r-release"
HEAD_CHUNK = 25
GPU_VIEWS = (12, 32, 64, 96, 128)
# distill3r-official.md section 6 (README "Inference Efficiency", one RTX 6000 Ada): seconds, GB.
OFFICIAL = {
    "Fast3R (teacher), 384x512": {12: (0.32, 6.86), 32: (1.14, 12.11), 64: (3.26, 21.11), 96: (6.35, 32.36),
                                  128: (10.11, 44.36)},
    "Distill3R, 378x518": {12: (0.13, 4.05), 32: (0.41, 9.97), 64: (1.02, 21.80), 96: (1.78, 28.69),
                           128: (2.69, 31.90)},
}


def build_model(name: str, device: str) -> tuple[torch.nn.Module, int]:
    """The named model in eval mode on ``device``, and its patch size."""
    if name == BASELINE:
        from d3r.teachers.fast3r import build_fast3r

        model = build_fast3r("release", view_chunk=HEAD_CHUNK)
        return model.to(device).eval(), model.config.patch_size
    from d3r.student import build_student

    model = build_student(name, head_chunk=HEAD_CHUNK)
    return model.to(device).eval(), model.spec.patch_size


def make_images(name: str, views: int, height: int, width: int, device: str) -> torch.Tensor:
    """Fast3R takes [-1, 1] floats; the students uint8 (they normalise themselves)."""
    if name == BASELINE:
        return torch.rand(1, views, 3, height, width, device=device) * 2 - 1
    return torch.randint(0, 256, (1, views, 3, height, width), dtype=torch.uint8, device=device)


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure_cpu(name: str, views: int, size: int, repeats: int) -> dict[str, float]:
    """In a fresh single-threaded process: median forward CPU seconds (``seconds``) and wall seconds
    (``wall``), and the peak RSS growth (GB) of ``name`` at ``views`` x size²."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, patch = build_model(name, "cpu")
    images = make_images(name, views, size, size, "cpu")
    cpu_times, wall_times = [], []
    with torch.inference_mode():
        model(make_images(name, 1, 2 * patch, 2 * patch, "cpu"))
        before = _resident_kib("VmRSS")
        _reset_peak_rss()
        for _ in range(repeats):
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            model(images)
            cpu_times.append(time.process_time() - cpu_start)
            wall_times.append(time.perf_counter() - wall_start)
        peak = _resident_kib("VmHWM")
    return {"seconds": statistics.median(cpu_times), "wall": statistics.median(wall_times),
            "peak_gb": (peak - before) * 1024 / 1e9}


def measure_gpu(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of ``repeats`` forwards after one warm-up, and the peak allocated CUDA memory (GB)."""
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(images)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


def ratio_table(
    results: dict[tuple[str, int], dict[str, float] | None], views: list[int], names: list[str]
) -> list[str]:
    """One row per (model, N): seconds, s/view, [wall s,] peak GB, and Fast3R's / the model's (speed-up,
    memory saving); a missing entry was not run, ``None`` ran out of memory."""
    wall = any(row and "wall" in row for row in results.values())
    lines = ["| model | views | forward s | s per view |" + (" wall s |" if wall else "")
             + " peak GB | Fast3R s / model s | Fast3R GB / model GB |",
             "|---|---:|---:|---:|" + ("---:|" if wall else "") + "---:|---:|---:|"]
    for n in views:
        base = results.get((BASELINE, n))
        for name in names:
            if (name, n) not in results or results[name, n] is None:
                status = "not run" if (name, n) not in results else "out of memory"
                lines.append(f"| {name} | {n} | {status} |" + " |" * (5 if wall else 4))
                continue
            row = results[name, n]
            speed = f"{base['seconds'] / row['seconds']:.2f}x" if base else "-"
            memory = f"{base['peak_gb'] / row['peak_gb']:.2f}x" if base and row["peak_gb"] > 0 else "-"
            wall_cell = f" {row['wall']:.2f} |" if wall else ""
            lines.append(f"| {name} | {n} | {row['seconds']:.3f} | {row['seconds'] / n:.4f} |{wall_cell} "
                         f"{row['peak_gb']:.3f} | {speed} | {memory} |")
    return lines


def cpu_section(views: list[int], size: int, repeats: int, fast3r_max_views: int) -> list[str]:
    names = [*STUDENTS, BASELINE]
    load = os.getloadavg()[0]
    jobs = [(name, n) for n in views for name in names if name != BASELINE or n <= fast3r_max_views]
    results = {}
    spawn = multiprocessing.get_context("spawn")
    for name, n in jobs:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            results[name, n] = pool.submit(measure_cpu, name, n, size, repeats).result()
        print(f"  {name} N={n}: {results[name, n]}", flush=True)
    skipped = [n for n in views if n > fast3r_max_views]
    lines = [f"## CPU: {size}x{size}, fp32, batch 1, one torch thread, median of {repeats} timed forward(s) "
             "after a 1-view warm-up", "",
             "Forward s is the process's CPU time (`time.process_time`, one thread), robust to other jobs sharing "
             f"the machine (1-minute load average at the start: {load:.1f} on {os.cpu_count()} cores); wall time "
             "is shown beside it. Ratios use CPU time.", "",
             "Peak memory: growth of the process's peak resident set during the timed forwards "
             "(Linux VmHWM reset via /proc/self/clear_refs), each (model, N) in a fresh process.", ""]
    if skipped:
        lines += [f"Fast3R not run at N = {', '.join(map(str, skipped))} (over --fast3r-max-views "
                  f"{fast3r_max_views}, to keep the run within minutes): no ratio there.", ""]
    return lines + ratio_table(results, views, names)


def gpu_section(repeats: int) -> list[str]:
    header = ["## GPU: students at 378x518, Fast3R at 384x512 (H x W), bf16 autocast, batch 1", ""]
    names = [*STUDENTS[1:], BASELINE]
    if not torch.cuda.is_available():
        return header + ["Not run: no CUDA device on this machine (run `bench/student.py --gpu` on one)."]
    results = {}
    for name in names:
        torch.manual_seed(0)
        model, _ = build_model(name, "cuda")
        height, width = (384, 512) if name == BASELINE else (378, 518)
        for n in GPU_VIEWS:
            try:
                results[name, n] = measure_gpu(model, make_images(name, n, height, width, "cuda"), repeats)
            except torch.cuda.OutOfMemoryError:
                results[name, n] = None
                torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()
    return header + ratio_table(results, list(GPU_VIEWS), names)


def official_section() -> list[str]:
    lines = ["## For reference: the official README table (one RTX 6000 Ada; s / peak GB)", "",
             "| method | " + " | ".join(f"N={n}" for n in GPU_VIEWS) + " |", "|---|" + "---:|" * len(GPU_VIEWS)]
    for method, row in OFFICIAL.items():
        lines.append(f"| {method} | " + " | ".join(f"{t:.2f} / {m:.2f}" for t, m in row.values()) + " |")
    fast3r, distill3r = OFFICIAL["Fast3R (teacher), 384x512"], OFFICIAL["Distill3R, 378x518"]
    lines.append("| speed-up (Fast3R s / Distill3R s) | "
                 + " | ".join(f"{fast3r[n][0] / distill3r[n][0]:.2f}x" for n in GPU_VIEWS) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="also run the GPU sweep (needs CUDA)")
    parser.add_argument("--views", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fast3r-max-views", type=int, default=16)
    args = parser.parse_args()
    machine = describe_machine(threads=1)
    lines = ["# Student forward speed and memory vs the release Fast3R", "", f"Machine: {machine}", "",
             "Parameters (M): " + parameter_summary(), "",
             *cpu_section(args.views, args.size, args.repeats, args.fast3r_max_views), ""]
    if args.gpu:
        lines += gpu_section(args.repeats)
    else:
        no_cuda = "" if torch.cuda.is_available() else "; there is no CUDA device on this machine anyway"
        lines += ["## GPU", "", f"Not run: `--gpu` not given{no_cuda}."]
    lines += ["", *official_section()]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


def parameter_summary() -> str:
    from d3r.student import build_student, parameter_breakdown
    from d3r.teachers.fast3r import build_fast3r

    with torch.device("meta"):
        counts = {name: parameter_breakdown(build_student(name))["total"] for name in STUDENTS}
        counts[BASELINE] = sum(p.numel() for p in build_fast3r("release").parameters())
    return ", ".join(f"{name} {count / 1e6:.2f}" for name, count in counts.items())


if __name__ == "__main__":
    main()
