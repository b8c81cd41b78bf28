"""Training benchmarks; results in ``bench/results/train.md`` (one ``##`` section per mode, each run
replaces only its own).

``input`` (CPU, the default): can the input pipeline feed the training step? In one run:

- a cache table is written by the real cache job (oracle teacher on synthetic rooms rendered at
  320x240, preprocessed for a patch-16 teacher to 224x160, 4 views per sample, codec ``d3r-v1``);
- **loader**: samples/s of :meth:`d3r.train.data.CacheData.batches` over whole epochs of the train
  split (Lance ``take`` + codec and PNG decode + crop to the student's patch 14, i.e. 224x154 + collate
  to torch), in this process;
- **step**: samples/s the training step consumes: the student (``tiny``, ``distill3r-s``; random
  weights) forward + :func:`d3r.train.loss.build_loss` loss + backward + AdamW step on the loader's
  batches (already in memory), fp32, median of the timed steps after one warm-up step;
- ratio = loader samples/s / step samples/s; the loader must stay >= 2x ahead.

Both sides run on one thread (``torch.set_num_threads(1)``, BLAS/OpenMP pinned to one thread before
numpy loads), as a training worker with ``train.cpus_per_worker: 1`` does, and are timed in process CPU
time (robust to other jobs on a shared box); wall time is shown beside it.

GPU mode (``--gpu``, issue 10): samples/s per GPU and peak memory for ``distill3r-s`` and ``d3r-s`` at
20 views against the official serial-scene, one-view-per-head loop. It is not written yet: it goes in
as its own section function registered in :data:`SECTIONS` (see there), writing its own ``##`` section.

    .venv/bin/python bench/train.py [--section input] [--scenes 8] [--batch-size 2] [--steps 5 2]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import lance  # noqa: E402
import torch  # noqa: E402
from sections import write_sections  # noqa: E402  (bench/sections.py, beside this script)

from d3r.config import D3RConfig, load_config  # noqa: E402
from d3r.machine import describe_machine  # noqa: E402
from d3r.student import build_student  # noqa: E402
from d3r.train.data import CacheData, build_cache_data  # noqa: E402
from d3r.train.loss import build_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "train.md"
TITLE = "Training benchmarks"
STUDENTS = ("tiny", "distill3r-s")
PATCH = 14  # every student preset's
MIN_RATIO = 2.0


def bench_config(uri: str, scenes: int, views: int, batch_size: int) -> D3RConfig:
    """Synthetic rooms at 320x240 → 224x160 for a patch-16 teacher, two samples of ``views`` per room."""
    return load_config(None, [
        "--scenes.num_scenes", str(scenes), "--scenes.views_per_scene", str(2 * views),
        "--scenes.render_size", "[320,240]", "--scenes.long_side", "224", "--scenes.patch_size", "16",
        "--scenes.views_per_sample", str(views), "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2",
        "--scenes.val_fraction", "0", "--cache.uri", uri, "--train.batch_size", str(batch_size),
    ], environ={})


def write_cache(config: D3RConfig) -> int:
    """Run the cache job on a private local Ray; returns the samples written."""
    import ray

    from d3r.cache.pipeline import run_cache_job

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        return run_cache_job(config).written
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Rate:
    """Samples per second of process CPU time and of wall time."""

    cpu: float
    wall: float


def loader_rate(data: CacheData, epochs: int) -> tuple[Rate, list[dict]]:
    """Samples/s of ``epochs`` whole epochs of ``data.batches``, and the last epoch's batches."""
    samples, cpu, wall = 0, 0.0, 0.0
    batches: list[dict] = []
    for epoch in range(epochs):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        batches = list(data.batches(epoch))
        cpu += time.process_time() - cpu_start
        wall += time.perf_counter() - wall_start
        samples += sum(len(batch["sample_id"]) for batch in batches)
    return Rate(samples / cpu, samples / wall), batches


def step_rate(preset: str, config: D3RConfig, batches: list[dict], steps: int) -> Rate:
    """Samples/s of the training step (forward, loss, backward, AdamW), median over ``steps`` timed steps
    after one warm-up step, cycling through ``batches``."""
    torch.manual_seed(0)
    student = build_student(preset).train()
    loss_fn = build_loss(config.train)
    optimiser = torch.optim.AdamW(student.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    cpu_times, wall_times, sizes = [], [], []
    for i in range(steps + 1):
        batch = batches[i % len(batches)]
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        outputs = student(batch["images"])
        loss, _ = loss_fn(outputs, batch)
        loss.backward()
        optimiser.step()
        if i:  # the first step warms up (allocations, AdamW state)
            cpu_times.append(time.process_time() - cpu_start)
            wall_times.append(time.perf_counter() - wall_start)
            sizes.append(len(batch["sample_id"]))
    size = statistics.mean(sizes)
    return Rate(size / statistics.median(cpu_times), size / statistics.median(wall_times))


def input_section(args: argparse.Namespace) -> str:
    """The loader-vs-step section (markdown)."""
    torch.set_num_threads(1)
    machine = describe_machine(threads=1, extra="pylance " + lance.__version__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(str(Path(tmp) / "cache.lance"), args.scenes, args.views, args.batch_size)
        written = write_cache(config)
        data = build_cache_data(config, "train", 0, 1, PATCH)
        loader, batches = loader_rate(data, args.epochs)
        shape = tuple(batches[0]["images"].shape[1:])
        print(f"loader: {loader.cpu:.1f} samples/s CPU ({loader.wall:.1f} wall), batches {shape}", flush=True)
        for preset, steps in zip(STUDENTS, args.steps, strict=True):
            step = step_rate(preset, config, batches, steps)
            ratio = loader.cpu / step.cpu
            print(f"{preset}: step {step.cpu:.2f} samples/s CPU ({step.wall:.2f} wall); loader/step {ratio:.1f}x",
                  flush=True)
            verdict = "yes" if ratio >= MIN_RATIO else "**no**"
            rows.append(f"| {preset} | {steps} | {step.cpu:.2f} ({step.wall:.2f}) | "
                        f"{loader.cpu:.1f} ({loader.wall:.1f}) | **{ratio:.1f}x** | {verdict} |")
    views, _, height, width = shape
    return "\n".join([
        "## Input pipeline vs training step (CPU)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine}",
        f"- data: the cache job (oracle teacher, codec d3r-v1, PNG images) on {args.scenes} synthetic rooms, "
        f"{written} samples of {views} views at 224x160 (a patch-16 teacher's size); the student sees them "
        f"cropped to {width}x{height} (patch 14); batches of {args.batch_size} scenes",
        f"- loader: `CacheData.batches` (Lance take of the batch's rows and needed columns, codec + PNG decode, "
        f"crop, collate to torch) over {args.epochs} epochs of the {written} samples, in this process, "
        "`train.loader_workers: 0`",
        "- step: student forward + `build_loss` (robust variant, defaults) + backward + AdamW step, fp32, on "
        "batches already in memory; median of the timed steps after one warm-up step",
        "- both on one thread, rates in samples per second of process CPU time (wall time in brackets); "
        f"ratio = loader / step on CPU time; target >= {MIN_RATIO:.0f}x",
        "",
        "| student | timed steps | step samples/s | loader samples/s | loader / step | >= 2x ahead |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
    ])


# One section function per mode. The GPU mode (`--gpu`, issue 10) registers its own function here
# (e.g. "gpu": gpu_section) and writes its own "## ..." section; nothing here stands in for it.
SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {"input": input_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=list(SECTIONS), default="input")
    parser.add_argument("--scenes", type=int, default=8, help="synthetic rooms (two samples each)")
    parser.add_argument("--views", type=int, default=4, help="views per sample")
    parser.add_argument("--batch-size", type=int, default=2, help="scenes per forward")
    parser.add_argument("--epochs", type=int, default=2, help="loader epochs timed")
    parser.add_argument("--steps", type=int, nargs=len(STUDENTS), default=[10, 3],
                        help=f"timed training steps for {', '.join(STUDENTS)}")
    args = parser.parse_args()
    section = SECTIONS[args.section](args)
    print(section)
    write_sections(RESULTS, TITLE, [section])


if __name__ == "__main__":
    main()
