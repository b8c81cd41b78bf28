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

``step`` (CPU) and ``--gpu``: training-step throughput of our loop against the official one, same model,
same loss, same optimiser, same random batch (images and teacher maps drawn at random: the cost of a step
does not depend on the values), in one run:

- **ours** (:mod:`d3r.train.loop`): the B scenes in **one** forward ``[B, N, 3, H, W]``, heads on all B·N
  views at once: ``forward_loss`` → backward → ``optimiser_step`` (AdamW with decay/no-decay groups,
  gradient clipping);
- **official** (Distill3R's ``training_step``, reference §5): each scene forwarded alone ``[1, N, 3, H, W]``
  with the heads one view at a time (``head_chunk=1``), the B per-scene losses averaged and backpropagated
  once (Lightning's automatic optimisation, so all B graphs are alive at the backward), then the same
  ``optimiser_step``. The gradient is the same as ours (our loss averages over the B scenes too).

Samples/s = B / median step time over the timed steps after the warm-up. ``step``: ``tiny`` and ``d3r-s``
(``--step-students``) at ``--views`` views, ``--size`` HxW, B = ``--batch-size``, fp32, one thread, in
process CPU time (wall beside it), as the ``input`` section. ``--gpu``: ``distill3r-s`` and ``d3r-s`` at
20 views, ``--gpu-size`` (378x504: the crop of a 512x384 teacher's pixels), B in {1, 2, 4}, bf16 autocast
(``d3r.train.loop.resolve_precision``), wall time after CUDA synchronisation, and the peak
``torch.cuda.max_memory_allocated`` of the steps (model, gradients, AdamW state and activations);
a run out of memory is reported as such. ``--gpu`` without CUDA exits 2 saying so.

    .venv/bin/python bench/train.py [--section input] [--scenes 8] [--batch-size 2] [--steps 5 2]
    .venv/bin/python bench/train.py --section step [--views 4] [--size 112 112] [--timed-steps 3]
    .venv/bin/python bench/train.py --gpu [--gpu-size 378 504] [--timed-steps 5]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
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
from d3r.teachers.base import OUTPUT_KEYS  # noqa: E402
from d3r.train.data import CacheData, build_cache_data  # noqa: E402
from d3r.train.loop import Precision, forward_loss, optimiser_step, parameter_groups, resolve_precision  # noqa: E402
from d3r.train.loss import DistillLoss, build_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "train.md"
TITLE = "Training benchmarks"
STUDENTS = ("tiny", "distill3r-s")
PATCH = 14  # every student preset's
MIN_RATIO = 2.0
STEP_STUDENTS = ("tiny", "d3r-s")
GPU_STUDENTS = ("distill3r-s", "d3r-s")
GPU_VIEWS = 20
GPU_BATCHES = (1, 2, 4)
CPU_WARMUP, GPU_WARMUP = 1, 2  # untimed steps first (allocations, AdamW state, kernel selection)
STEP_TITLE = "## Training step, ours vs official"


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


def random_batch(scenes: int, views: int, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch shaped as ``CacheData.batches`` yields it, random: ``images`` uint8 ``[B, N, 3, H, W]``, teacher
    ``pts3d_*`` ``[B, N, H, W, 3]`` and ``conf_*`` ``[B, N, H, W]`` in [1, 11) (every pixel valid)."""
    generator = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (scenes, views, 3, height, width), dtype=torch.uint8,
                                     generator=generator)}
    for key in OUTPUT_KEYS:
        if key.startswith("pts3d"):
            batch[key] = torch.randn(scenes, views, height, width, 3, generator=generator)
        else:
            batch[key] = 1 + 10 * torch.rand(scenes, views, height, width, generator=generator)
    return {key: value.to(device) for key, value in batch.items()}


def scene_of(batch: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Scene ``index`` of a batch as a batch of one: every tensor ``[1, ...]``."""
    return {key: value[index : index + 1] for key, value in batch.items()}


LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], DistillLoss, torch.device, Precision], torch.Tensor]


def ours_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], loss_fn: DistillLoss, device: torch.device,
              precision: Precision) -> torch.Tensor:
    """d3r's loop: the B scenes in one forward."""
    return forward_loss(model, batch, loss_fn, device, precision)[0]


def official_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], loss_fn: DistillLoss,
                  device: torch.device, precision: Precision) -> torch.Tensor:
    """Distill3R's ``training_step``: one forward per scene, the per-scene losses averaged."""
    scenes = batch["images"].shape[0]
    return torch.stack([forward_loss(model, scene_of(batch, b), loss_fn, device, precision)[0]
                        for b in range(scenes)]).mean()


# loop name -> (student head_chunk, loss of one batch)
LOOPS: dict[str, tuple[int | None, LossFn]] = {"ours": (None, ours_loss), "official": (1, official_loss)}


@dataclass(frozen=True)
class StepResult:
    """Samples/s of process CPU time and of wall time, and the peak CUDA memory (GB; None on CPU)."""

    cpu: float
    wall: float
    peak_gb: float | None


def measure_loop(loop: str, preset: str, config: D3RConfig, batch: dict[str, torch.Tensor], warmup: int,
                 steps: int, device: torch.device) -> StepResult:
    """Train ``preset`` (random init, seed 0) with ``loop`` on ``batch`` for ``warmup`` + ``steps`` optimiser
    steps; rates from the median timed step."""
    head_chunk, loss_of = LOOPS[loop]
    torch.manual_seed(0)
    student = build_student(preset, head_chunk=head_chunk, image_ids=config.student.image_ids).to(device).train()
    precision = resolve_precision(config.train.precision, device)
    loss_fn = build_loss(config.train)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(student, config.train.weight_decay), lr=config.train.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    cpu_times, wall_times = [], []
    for i in range(warmup + steps):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        scaler.scale(loss_of(student, batch, loss_fn, device, precision)).backward()
        optimiser_step(params, optimizer, scaler, config.train.grad_clip)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            cpu_times.append(time.process_time() - cpu_start)
            wall_times.append(time.perf_counter() - wall_start)
    scenes = batch["images"].shape[0]
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
    return StepResult(scenes / statistics.median(cpu_times), scenes / statistics.median(wall_times), peak)


def compare_loops(preset: str, config: D3RConfig, batch: dict[str, torch.Tensor], warmup: int, steps: int,
                  device: torch.device) -> dict[str, StepResult | None]:
    """Ours then official on the same batch; None where a loop ran out of CUDA memory."""
    results: dict[str, StepResult | None] = {}
    for loop in LOOPS:
        try:
            results[loop] = measure_loop(loop, preset, config, batch, warmup, steps, device)
        except torch.cuda.OutOfMemoryError:
            results[loop] = None
        gc.collect()  # the failed step's tensors, before the next loop measures its peak
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"  {preset} B={batch['images'].shape[0]} {loop}: {results[loop]}", flush=True)
    return results


def run_command() -> str:
    """This run's command line, for the results file."""
    return " ".join(["bench/train.py", *sys.argv[1:]])


def step_setup(config: D3RConfig) -> list[str]:
    """The bullets both step sections share."""
    return [
        "- ours: `d3r.train.loop` pieces: the B scenes in one forward `[B, N, 3, H, W]`, heads on all B·N views "
        "at once; `forward_loss` → backward → `optimiser_step` (AdamW decay/no-decay groups, gradient clipping "
        f"at {config.train.grad_clip})",
        "- official: Distill3R's `training_step` (reference §5): each scene forwarded alone `[1, N, 3, H, W]`, "
        "heads one view at a time (`head_chunk=1`), the B per-scene losses averaged, one backward (Lightning: "
        "all B graphs alive at the backward), then the same `optimiser_step`; same gradient as ours",
        "- same student (random init, seed 0), loss (`build_loss`, robust variant, defaults), optimiser and batch "
        "(random images and teacher maps: a step's cost does not depend on the values); `student.image_ids: random`",
    ]


def step_section(args: argparse.Namespace) -> str:
    """Ours vs official on CPU (markdown)."""
    torch.set_num_threads(1)
    machine = describe_machine(threads=1)
    config = load_config(None, [], environ={})
    device = torch.device("cpu")
    height, width = args.size
    batch = random_batch(args.batch_size, args.views, height, width, device)
    rows = []
    for preset in args.step_students:
        ours, official = compare_loops(preset, config, batch, CPU_WARMUP, args.timed_steps, device).values()
        rows.append(f"| {preset} | {ours.cpu:.3f} ({ours.wall:.3f}) | {official.cpu:.3f} ({official.wall:.3f}) | "
                    f"**{ours.cpu / official.cpu:.2f}x** |")
    return "\n".join([
        f"{STEP_TITLE} (CPU)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine}",
        f"- command: `{run_command()}`",
        f"- B = {args.batch_size} scenes of {args.views} views at {width}x{height} (WxH), fp32, "
        f"{CPU_WARMUP} warm-up step then the median of {args.timed_steps} timed optimiser steps",
        *step_setup(config),
        "- one thread; samples per second of process CPU time (wall time in brackets); ratio on CPU time",
        "",
        "| student | ours samples/s | official samples/s | ours / official |",
        "|---|---:|---:|---:|",
        *rows,
    ])


def gb(result: StepResult | None) -> str:
    return "out of memory" if result is None else f"{result.peak_gb:.2f}"


def gpu_section(args: argparse.Namespace) -> str:
    """Ours vs official on one GPU, B in ``GPU_BATCHES`` (markdown)."""
    machine = describe_machine()
    config = load_config(None, [], environ={})
    device = torch.device("cuda")
    height, width = args.gpu_size
    precision = resolve_precision(config.train.precision, device)
    rows = []
    for preset in GPU_STUDENTS:
        for scenes in GPU_BATCHES:
            batch = random_batch(scenes, GPU_VIEWS, height, width, device)
            ours, official = compare_loops(preset, config, batch, GPU_WARMUP, args.timed_steps, device).values()
            speed = f"**{ours.wall / official.wall:.2f}x**" if ours and official else "-"
            memory = f"{ours.peak_gb / official.peak_gb:.2f}x" if ours and official else "-"
            rows.append(f"| {preset} | {scenes} | {f'{ours.wall:.2f}' if ours else '-'} | "
                        f"{f'{official.wall:.2f}' if official else '-'} | {speed} | {gb(ours)} | {gb(official)} | "
                        f"{memory} |")
    return "\n".join([
        f"{STEP_TITLE} (GPU)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine}",
        f"- command: `{run_command()}`",
        f"- B scenes of {GPU_VIEWS} views at {width}x{height} (WxH), {precision} autocast, {GPU_WARMUP} warm-up "
        f"steps then the median of {args.timed_steps} timed optimiser steps, one GPU",
        *step_setup(config),
        "- samples per second of wall time (CUDA synchronised after each step) per GPU; peak = "
        "`torch.cuda.max_memory_allocated` over the steps (model, gradients, AdamW state, activations)",
        "",
        "| student | B | ours samples/s | official samples/s | ours / official | ours peak GB | official peak GB | "
        "ours / official memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])


# One section function per mode, each writing its own "## ..." section.
SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "input": input_section, "step": step_section, "gpu": gpu_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=list(SECTIONS), default="input")
    parser.add_argument("--scenes", type=int, default=8, help="synthetic rooms (two samples each)")
    parser.add_argument("--views", type=int, default=4, help="views per sample")
    parser.add_argument("--batch-size", type=int, default=2, help="scenes per forward")
    parser.add_argument("--epochs", type=int, default=2, help="loader epochs timed")
    parser.add_argument("--steps", type=int, nargs=len(STUDENTS), default=[10, 3],
                        help=f"input section: timed training steps for {', '.join(STUDENTS)}")
    parser.add_argument("--step-students", nargs="+", default=list(STEP_STUDENTS), help="step section: presets")
    parser.add_argument("--size", type=int, nargs=2, default=[112, 112], metavar=("H", "W"),
                        help="step section: image size (multiples of 14)")
    parser.add_argument("--gpu", action="store_true", help="the GPU section (same as --section gpu; needs CUDA)")
    parser.add_argument("--gpu-size", type=int, nargs=2, default=[378, 504], metavar=("H", "W"),
                        help="GPU section: image size (224 518 is the official training size)")
    parser.add_argument("--timed-steps", type=int, default=3, help="step and GPU sections: timed optimiser steps")
    args = parser.parse_args()
    if args.gpu:
        args.section = "gpu"
    if args.section == "gpu" and not torch.cuda.is_available():
        parser.error(f"the GPU section needs a CUDA device; torch {torch.__version__} sees none "
                     "(nothing run, results unchanged)")
    section = SECTIONS[args.section](args)
    print(section)
    write_sections(RESULTS, TITLE, [section])


if __name__ == "__main__":
    main()
