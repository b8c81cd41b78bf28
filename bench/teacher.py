"""Fast3R teacher forward speed (random weights: speed does not depend on them).

CPU: seconds per view for the ``tiny`` and ``release`` presets at 224x224 with 4 views (fp32), baseline
``release``. ``--gpu``: the release model at 512x384 (W x H) in bf16 for 12..128 views, with peak memory,
beside the official README table (RTX 6000 Ada, 384x512); runs only where CUDA is available.

    .venv/bin/python bench/teacher.py [--gpu] [--repeats 2]

Prints a markdown report and writes it to ``bench/results/teacher.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from d3r.machine import describe_machine
from d3r.teachers.fast3r import build_fast3r

RESULTS = Path(__file__).resolve().parent / "results" / "teacher.md"
GPU_VIEWS = (12, 32, 64, 96, 128)
# distill3r-official.md section 6: Fast3R row of the README "Inference Efficiency" table (s, GB).
OFFICIAL_FAST3R = {12: (0.32, 6.86), 32: (1.14, 12.11), 64: (3.26, 21.11), 96: (6.35, 32.36), 128: (10.11, 44.36)}


def time_forward(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of ``repeats`` forwards after one warm-up, and peak CUDA memory in GB (0 on CPU)."""
    cuda = images.is_cuda
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        model(images)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
    return statistics.median(times), peak


def cpu_section(repeats: int, views: int = 4, size: int = 224) -> list[str]:
    seconds = {}
    for preset in ("tiny", "release"):
        torch.manual_seed(0)
        model = build_fast3r(preset).eval()
        images = torch.rand(1, views, 3, size, size) * 2 - 1
        seconds[preset], _ = time_forward(model, images, repeats)
        del model
    lines = [
        f"## CPU: {views} views at {size}x{size}, fp32, batch 1, median of {repeats} after 1 warm-up",
        "",
        "| preset | forward s | s per view | speed vs release |",
        "|---|---|---|---|",
    ]
    for preset, value in seconds.items():
        lines.append(f"| {preset} | {value:.3f} | {value / views:.4f} | {seconds['release'] / value:.1f}x |")
    return lines


def gpu_section(repeats: int) -> list[str]:
    header = ["## GPU: release at 512x384 (W x H), bf16 autocast, batch 1", ""]
    table = [
        "| views | ours s | ours s per view | ours peak GB | official s | official peak GB | official s / ours s |",
        "|---|---|---|---|---|---|---|",
    ]
    if not torch.cuda.is_available():
        header.append("Not run: no CUDA device on this machine. The official numbers (RTX 6000 Ada, 384x512; "
                      "`distill3r-official.md` section 6) for comparison when it is run:")
        rows = [f"| {n} | - | - | - | {t:.2f} | {m:.2f} | - |" for n, (t, m) in OFFICIAL_FAST3R.items()]
        return header + [""] + table + rows
    torch.manual_seed(0)
    model = build_fast3r("release").cuda().eval()
    rows = []
    for views in GPU_VIEWS:
        images = torch.rand(1, views, 3, 384, 512, device="cuda") * 2 - 1
        seconds, peak = time_forward(model, images, repeats)
        official_s, official_gb = OFFICIAL_FAST3R[views]
        rows.append(f"| {views} | {seconds:.3f} | {seconds / views:.4f} | {peak:.2f} | {official_s:.2f} | "
                    f"{official_gb:.2f} | {official_s / seconds:.2f} |")
    return header + table + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="also run the GPU sweep (needs CUDA)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    machine = describe_machine(threads=torch.get_num_threads())
    lines = ["# Fast3R teacher forward speed", "", f"Machine: {machine}", "", *cpu_section(args.repeats), ""]
    if args.gpu:
        lines += gpu_section(args.repeats)
    else:
        lines.append("GPU sweep not requested (`--gpu`).")
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
