"""Synthetic room rendering speed: views/s on one core at 224x224 and 512x384 (W x H).

Two renderers over the same cameras (rooms 0..S-1 of seed 0, ``mixed`` camera paths):
- ``d3r render_view``: exact ray casting with each object intersected only inside its projected
  bounding box (a conservative cull: identical pixels).
- ``baseline: every ray x every object``: the same ray caster (``cast_rays``) on all pixel rays
  with no culling.

Threads are pinned to one (env set before numpy is imported). Both wall-clock and process CPU time
are reported, since the machine may be shared. Target: >= 10 views/s at 512x384.

Usage: ``python bench/synth.py [--scenes 4] [--views 6]``; prints a markdown table and writes
``bench/results/synth.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from d3r.machine import describe_machine  # noqa: E402
from d3r.scenes.synthetic import camera_poses, cast_rays, pixel_rays, render_view, room_spec  # noqa: E402

SIZES = [(224, 224), (512, 384)]
TARGET_VIEWS_PER_S = 10.0
RESULTS = Path(__file__).parent / "results" / "synth.md"


def baseline_render(spec, K: np.ndarray, pose: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every pixel ray against every object (no cull); returns the image ``[H, W, 3]``."""
    _, colour = cast_rays(spec, pose[:3, 3], pixel_rays(K, pose, size).reshape(-1, 3))
    return colour.reshape(size[1], size[0], 3)


def time_views(render: Callable, cameras: list, size: tuple[int, int]) -> tuple[float, float]:
    """(views/s wall-clock, views/s of process CPU time) over all cameras."""
    wall, cpu = time.perf_counter(), time.process_time()
    for spec, K, pose in cameras:
        render(spec, K, pose, size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(cameras) / wall, len(cameras) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--views", type=int, default=6)
    args = parser.parse_args()
    rows = []
    machine_line = describe_machine(threads=1)
    for size in SIZES:
        cameras = []
        for index in range(args.scenes):
            spec = room_spec(index, 0)
            K, poses = camera_poses(spec, args.views, size, "mixed", 0)
            cameras += [(spec, K, pose) for pose in poses]
        render_view(*cameras[0], size)  # warm-up
        ours_wall, ours_cpu = time_views(render_view, cameras, size)
        base_wall, base_cpu = time_views(baseline_render, cameras, size)
        rows.append(f"| {size[0]}x{size[1]} | {len(cameras)} | {ours_wall:.1f} | {ours_cpu:.1f} | {base_wall:.1f} | "
                    f"{base_cpu:.1f} | {ours_cpu / base_cpu:.2f}x | {ours_cpu / TARGET_VIEWS_PER_S:.2f}x |")
    report = "\n".join([
        "# Synthetic room rendering (one core)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line}",
        f"- rooms 0..{args.scenes - 1} of seed 0, {args.views} views each, camera path `mixed`; RGB + depth per view",
        "- baseline: the same exact ray caster with no screen-space cull (every ray against every object)",
        f"- target: >= {TARGET_VIEWS_PER_S:.0f} views/s at 512x384",
        "- CPU columns: views per second of process CPU time, i.e. the throughput of one free core; the wall-clock "
        "columns also count time spent waiting for a core when the machine is shared (see the load average)",
        "",
        "| size (WxH) | views | d3r views/s (wall) | d3r views/s (CPU) | baseline views/s (wall) | "
        "baseline views/s (CPU) | d3r / baseline (CPU) | d3r / target (CPU) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
