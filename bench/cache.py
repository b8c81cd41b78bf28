"""Cache benchmarks. Sections (``--section``):

- ``codec``: rate–distortion of the supervision codecs on oracle outputs of synthetic rooms at 224x518
  (H x W): bytes per view (the codec's own bytes, and the bytes Lance stores on disk for the ``sup_*``
  columns of a ``large_binary`` table), the ratio to the official format (``np.savez_compressed`` of
  the four float16 maps, measured in the same run), relative pointmap errors (median and 99th percentile
  over pixels with a point and confidence above the map's 15th percentile, against what the codec is
  meant to store: the local head, and the aligned-local or raw global head), the worst relative error of
  ``C − 1``, and encode/decode views per second of CPU time (one thread: BLAS pinned to one thread
  before numpy loads; decode is plain numpy element-wise work and zstd). Targets for the default codec:
  >= 4x fewer bytes than the official format, median <= 1e-3, p99 <= 1e-2, confidence within 1%,
  decode >= 100 views/s on one core. A second table runs the same codecs on a teacher the model does not fit:
  Fast3R with random weights (tiny at 224x512, release at 224x224) on synthetic rooms, where d3r-v1 must fall
  back to plain values and cost no more than fp16.

- ``pipeline``: what the driver holds (peak RSS and bytes of results received against 8, 32 and 128
  samples of the tiny teacher; ``--before COMMIT`` also runs the d3r of that commit, e.g. the pipeline
  whose driver wrote every row), then end-to-end samples/s of the Ray cache job (``run_cache_job``)
  divided by a bare loop that only calls the same teacher on the same preprocessed samples: tiny and
  release Fast3R (random weights) on CPU at small sizes with 1 actor, and the release one with 2 actors
  on a 2-node local cluster, with the difference accounted for (teacher build, loading, encoding, the rest).
- ``gpu`` (``--gpu``, needs CUDA): the release teacher at 20 views x 512x384, bf16, one actor per GPU,
  against the bare loop on one GPU (goal: ratio >= 0.9).

Usage: ``python bench/cache.py [--section codec|pipeline|gpu] [--before COMMIT] [--scenes 3] [--views 8]``;
prints markdown tables and writes its sections into ``bench/results/cache.md`` (other sections of that file
are kept).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import lance  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from scipy import ndimage  # noqa: E402
from sections import write_sections  # noqa: E402  (bench/sections.py, beside this script)

from d3r.cache.codec import Codec, D3rV1Codec, aligned_global, get_codec, validate_outputs  # noqa: E402
from d3r.config import D3RConfig, load_config  # noqa: E402
from d3r.machine import describe_machine  # noqa: E402
from d3r.scenes.sampling import load_sample, sample_scene  # noqa: E402
from d3r.scenes.sources import list_scenes  # noqa: E402
from d3r.scenes.synthetic import render_scene  # noqa: E402
from d3r.teachers.base import build_teacher  # noqa: E402
from d3r.teachers.oracle import OracleParams, oracle_outputs, sample_generator  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cache.md"
REPO = Path(__file__).resolve().parents[1]
SIZE = (518, 224)  # (W, H), as the paper's cache
CONF_PERCENTILE = 15.0


@dataclass(frozen=True)
class CodecCase:
    """One row of the rate–distortion table: a codec and the global target it stores."""

    label: str
    codec: Codec
    global_target: str = "aligned_local"
    perturb: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None  # applied to the oracle first


def oracle_samples(scenes: int, views: int) -> list[dict[str, np.ndarray]]:
    """Oracle teacher maps (default corruptions) of rooms ``0..scenes-1`` of seed 0, ``views`` views each."""
    samples = []
    for index in range(scenes):
        scene = render_scene(index, 0, views, SIZE)
        depth = np.stack([view.depth for view in scene.views])
        K = np.stack([view.K for view in scene.views])
        poses = np.stack([view.pose for view in scene.views])
        outputs, _ = oracle_outputs(depth, K, poses, OracleParams(), sample_generator(0, depth, K, poses))
        samples.append(outputs)
    return samples


def bend_global_head(outputs: dict[str, np.ndarray], amplitude: float = 0.03, seed: int = 0) -> dict[str, np.ndarray]:
    """``outputs`` with each view's global points scaled by ``1 + amplitude · f`` about view 0's camera, ``f`` a
    smooth random field in [-1, 1] per view: a global head that is no Sim(3) of the local one (the oracle's always
    is), as a stand-in for a real teacher's disagreeing heads."""
    rng = np.random.default_rng(seed)
    n, h, w = outputs["conf_global"].shape
    field = np.stack([ndimage.zoom(rng.uniform(-1, 1, (5, 9)), (h / 5, w / 9), order=1) for _ in range(n)])
    return {**outputs, "pts3d_global": outputs["pts3d_global"] * (1 + amplitude * field[..., None]).astype(np.float32)}


def add_lateral_noise(outputs: dict[str, np.ndarray], relative: float = 1e-3, seed: int = 0) -> dict[str, np.ndarray]:
    """``outputs`` with iid noise of ``relative`` · z on the local x and y (the oracle's noise is along the ray
    only, so its ray residuals are nearly free; a real teacher's are not)."""
    rng = np.random.default_rng(seed)
    local = outputs["pts3d_local"].copy()
    local[..., :2] += relative * local[..., 2:3] * rng.standard_normal(local[..., :2].shape).astype(np.float32)
    return {**outputs, "pts3d_local": local}


DEFAULT_CASE = CodecCase("**d3r-v1 (default)**", get_codec("d3r-v1"))
LANCE_ZSTD_CASE = CodecCase("d3r-v1, zstd left to Lance (level 0)", D3rV1Codec(zstd_level=0))
CASES = [
    CodecCase("fp16 (official precision)", get_codec("fp16")),
    DEFAULT_CASE,
    CodecCase("d3r-v1, global_target=global_head", get_codec("d3r-v1"), "global_head"),
    CodecCase("d3r-v1, global_head, head bent ±3% (non-Sim(3))", get_codec("d3r-v1"), "global_head", bend_global_head),
    CodecCase("d3r-v1, local with 0.1% lateral noise", get_codec("d3r-v1"), perturb=add_lateral_noise),
    LANCE_ZSTD_CASE,
    CodecCase("d3r-v1, zstd level 1", D3rV1Codec(zstd_level=1)),
    *(
        CodecCase(f"d3r-v1, steps {step:g}", D3rV1Codec(depth_step=step, ray_step=step, residual_step=step))
        for step in (1e-3, 2.5e-3, 4e-3)
    ),
]


def official_bytes(outputs: dict[str, np.ndarray]) -> int:
    """Size of the official cache file: ``np.savez_compressed`` of the four float16 maps (global = aligned local)."""
    maps, _ = validate_outputs(outputs)
    arrays = {
        "xyz_local": maps["pts3d_local"],
        "xyz_global": aligned_global(maps, 85.0)[0],
        "conf_local": maps["conf_local"],
        "conf_global": maps["conf_global"],
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{key: value.astype(np.float16) for key, value in arrays.items()})
    return buffer.getbuffer().nbytes


def relative_errors(decoded: np.ndarray, reference: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """``‖decoded − reference‖ / ‖reference‖`` over pixels with a point and confidence above the 15th percentile."""
    keep = (reference != 0).any(-1) & (conf > np.percentile(conf, CONF_PERCENTILE))
    return np.linalg.norm(decoded[keep] - reference[keep], axis=-1) / np.linalg.norm(reference[keep], axis=-1)


def conf_error(decoded: np.ndarray, reference: np.ndarray) -> float:
    """Worst relative error of ``C − 1`` over pixels with ``C > 1``."""
    above = reference > 1
    return float(np.max(np.abs(decoded[above] - reference[above]) / (reference[above] - 1), initial=0.0))


def timed(function: Callable, *args, repeats: int = 1, **kwargs) -> tuple[object, float, float]:
    """``(result, wall seconds, CPU seconds)``, each time the best of ``repeats`` calls (the machine is shared)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, min(walls), min(cpus)


def lance_column_bytes(rows: list[dict], directory: Path) -> dict[str, int]:
    """Bytes on disk per ``sup_*`` column of a Lance table (``large_binary``) holding ``rows``."""
    names = sorted(rows[0])
    table = pa.table({name: pa.array([row[name] for row in rows], pa.large_binary()) for name in names})
    dataset = lance.write_dataset(table, str(directory), mode="overwrite")
    stats = dataset.stats.data_stats().fields
    return {name: stats[dataset.schema.get_field_index(name)].bytes_on_disk for name in names}


@dataclass
class CaseResult:
    codec_bytes: dict[str, int]
    lance_bytes: dict[str, int]
    local_errors: np.ndarray
    global_errors: np.ndarray
    conf_error: float
    encode_wall: float
    encode_cpu: float
    decode_wall: float
    decode_cpu: float


def run_case(case: CodecCase, samples: list[dict[str, np.ndarray]], directory: Path) -> CaseResult:
    """Encode and decode every sample with one codec; sizes, errors and times."""
    rows, local, glob, conf = [], [], [], 0.0
    times = np.zeros(4)
    for outputs in samples:
        outputs = case.perturb(outputs) if case.perturb else outputs
        n, h, w = outputs["conf_local"].shape
        columns, wall, cpu = timed(case.codec.encode, outputs, global_target=case.global_target)
        decoded, dwall, dcpu = timed(case.codec.decode, columns, n, h, w, repeats=3)
        times += (wall, cpu, dwall, dcpu)
        rows.append(columns)
        if case.global_target == "aligned_local":
            target = aligned_global(validate_outputs(outputs)[0], 85.0)[0]
        else:
            target = outputs["pts3d_global"]
        local.append(relative_errors(decoded["pts3d_local"], outputs["pts3d_local"], outputs["conf_local"]))
        glob.append(relative_errors(decoded["pts3d_global"], target, outputs["conf_global"]))
        conf = max(conf, *(conf_error(decoded[key], outputs[key]) for key in ("conf_local", "conf_global")))
    codec_bytes = {name: sum(len(row[name]) for row in rows) for name in rows[0]}
    return CaseResult(
        codec_bytes, lance_column_bytes(rows, directory), np.concatenate(local), np.concatenate(glob), conf, *times
    )


@dataclass(frozen=True)
class RandomTeacherCase:
    """One teacher of the random-weight table: a Fast3R preset with random weights on one synthetic room."""

    label: str
    preset: str
    views: int
    size: tuple[int, int]  # (W, H)


RANDOM_TEACHER_CASES = (
    RandomTeacherCase("Fast3R tiny", "tiny", views=8, size=(512, 224)),  # Fast3R takes multiples of 16
    RandomTeacherCase("Fast3R release", "release", views=2, size=(224, 224)),
)


def random_fast3r_outputs(case: RandomTeacherCase) -> dict[str, np.ndarray]:
    """The four maps (``[N, H, W, ...]``) of the ``fast3r`` teacher with random weights (``teacher.checkpoint:
    random``, seed 0) on room 0 of seed 0."""
    from d3r.config import TeacherConfig
    from d3r.teachers.base import teacher_images

    teacher = build_teacher(TeacherConfig(name="fast3r", checkpoint="random", preset=case.preset, device="cpu"))
    pixels = np.stack([view.image for view in render_scene(0, 0, case.views, case.size).views])
    return {key: value[0].numpy() for key, value in teacher.predict(teacher_images(pixels[None])).items()}


def storage_summary(columns: dict[str, bytes]) -> str:
    """How d3r-v1 stored each map, per view (``m`` model, ``d`` difference, ``h`` float16, ``f`` float32)."""
    storage = json.loads(columns["sup_header"])["storage"]
    return " / ".join(f"{storage[key]}" for key in ("pts3d_local", "pts3d_global", "conf_local", "conf_global"))


def random_teacher_rows() -> list[str]:
    """Rows of the random-weight table: fp16 and d3r-v1 (both global targets) per teacher."""
    rows = []
    for case in RANDOM_TEACHER_CASES:
        outputs = random_fast3r_outputs(case)
        n, h, w = outputs["conf_local"].shape
        fp16_kb = None
        for codec, target in (("fp16", "aligned_local"), ("d3r-v1", "aligned_local"), ("d3r-v1", "global_head")):
            columns = get_codec(codec).encode(outputs, global_target=target)
            decoded = get_codec(codec).decode(columns, n, h, w)
            reference = outputs["pts3d_global"] if target == "global_head" else aligned_global(
                validate_outputs(outputs)[0], 85.0)[0]
            local = relative_errors(decoded["pts3d_local"], outputs["pts3d_local"], outputs["conf_local"])
            glob = relative_errors(decoded["pts3d_global"], reference, outputs["conf_global"])
            kb = sum(map(len, columns.values())) / n / 1e3
            fp16_kb = fp16_kb or kb
            rows.append(
                f"| {case.label} | {n} x {h}x{w} | {codec}, {target} | {kb:.1f} | {kb / fp16_kb:.2f} | "
                f"{storage_summary(columns) if codec == 'd3r-v1' else '-'} | "
                f"{np.median(local):.2e} / {np.median(glob):.2e} | "
                f"{np.percentile(local, 99):.2e} / {np.percentile(glob, 99):.2e} |"
            )
    return rows


def codec_section(args: argparse.Namespace) -> str:
    """The rate–distortion section (markdown)."""
    samples = oracle_samples(args.scenes, args.views)
    views = sum(len(s["conf_local"]) for s in samples)
    official = sum(official_bytes(s) for s in samples) / views
    raw_fp16 = sum(sum(v.astype(np.float16).nbytes for v in s.values()) for s in samples) / views
    gap = np.concatenate(
        [
            relative_errors(aligned_global(validate_outputs(s)[0], 85.0)[0], s["pts3d_global"], s["conf_global"])
            for s in samples
        ]
    )
    rows, breakdown, results = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            result = results[case.label] = run_case(case, samples, Path(tmp) / f"case{i}.lance")
            codec_kb = sum(result.codec_bytes.values()) / views / 1e3
            lance_kb = sum(result.lance_bytes.values()) / views / 1e3
            rows.append(
                f"| {case.label} | {codec_kb:.1f} | {lance_kb:.1f} | {official / 1e3 / lance_kb:.2f}x | "
                f"{np.median(result.local_errors):.2e} / {np.median(result.global_errors):.2e} | "
                f"{np.percentile(result.local_errors, 99):.2e} / {np.percentile(result.global_errors, 99):.2e} | "
                f"{100 * result.conf_error:.2f}% | "
                f"{views / result.encode_cpu:.1f} ({views / result.encode_wall:.1f}) | "
                f"{views / result.decode_cpu:.0f} ({views / result.decode_wall:.0f}) |"
            )
            if case is DEFAULT_CASE:
                breakdown = [
                    f"| `{name}` | {result.codec_bytes[name] / views / 1e3:.2f} | "
                    f"{result.lance_bytes[name] / views / 1e3:.2f} |"
                    for name in sorted(result.codec_bytes, key=lambda k: -result.codec_bytes[k])
                ]
    default = results[DEFAULT_CASE.label]
    lance_zstd = results[LANCE_ZSTD_CASE.label]
    default_kb = sum(default.lance_bytes.values()) / views / 1e3
    errors = np.concatenate([default.local_errors, default.global_errors])
    verdict = (
        f"**Targets, default codec** (local and global errors pooled): {official / 1e3 / default_kb:.1f}x fewer "
        f"bytes than the official format (target >= 4x); median error {np.median(errors):.2e} (<= 1e-3); "
        f"p99 {np.percentile(errors, 99):.2e} (<= 1e-2); confidence {100 * default.conf_error:.2f}% (<= 1%); "
        f"decode {views / default.decode_cpu:.0f} views/s of CPU time on one thread (>= 100). "
        f"Entropy coding: zstd inside the codec ({default_kb:.1f} kB/view on disk) beats leaving it to Lance's "
        f"zstd on the raw shuffled planes ({sum(lance_zstd.lance_bytes.values()) / views / 1e3:.1f} kB/view), "
        "so the codec compresses its columns itself and Lance stores them as they are."
    )
    return "\n".join(
        [
            "## Codec rate–distortion",
            "",
            f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- machine: {describe_machine(threads=1, extra='pylance ' + lance.__version__)}",
            f"- data: oracle teacher (default corruptions: noise, blobs, edge bleeding, scale-shifted views) on "
            f"synthetic rooms 0..{args.scenes - 1} of seed 0, {args.views} views each, {SIZE[1]}x{SIZE[0]} (HxW): "
            f"{views} views",
            f"- official format (`np.savez_compressed` of the four float16 maps, global = aligned local): "
            f"**{official / 1e3:.1f} kB/view** (raw float16: {raw_fp16 / 1e3:.1f} kB/view)",
            "- errors: relative pointmap error local / global, over pixels with a point and confidence above the "
            "map's 15th percentile; global against the aligned-local target (or the raw head for `global_head`). "
            "Confidence: worst relative error of C − 1 over C > 1",
            f"- Lance: one table per codec, {len(samples)} rows (one per sample) of `large_binary` `sup_*` columns, "
            "bytes on disk from `dataset.stats.data_stats()`; Lance's default per-value zstd applies (pylance 14 left "
            "a one-row table uncompressed in our trials, so use >= 3 scenes)",
            "- speeds: views per second of process CPU time (wall-clock in brackets), one thread; decode: best of 3",
            f"- the aligned-local target differs from the oracle's raw global head by a median {np.median(gap):.2e} "
            f"(p99 {np.percentile(gap, 99):.2e}) relative: the oracle's global head is always a Sim(3) of its local "
            "head (its scale-shifted views are scaled about their camera centre), so the `global_head` residual "
            "only carries the local rounding; the *bent* row adds a smooth ±3% non-Sim(3) field to the global head "
            "to show the cost when the heads disagree, as a real teacher's do. The oracle's noise is along the ray "
            "only (its ray residuals are nearly free): the *lateral noise* row shows the cost of noisy rays",
            "",
            "| codec | codec kB/view | Lance on-disk kB/view | official / Lance | median rel. error (local / global) "
            "| p99 rel. error (local / global) | conf error | encode views/s CPU (wall) | decode views/s CPU (wall) |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            verdict,
            "",
            "Default codec, bytes per view by column:",
            "",
            "| column | codec kB/view | Lance on-disk kB/view |",
            "|---|---|---|",
            *breakdown,
            "",
            "### A teacher the model does not fit: Fast3R with random weights",
            "",
            "- data: the `fast3r` teacher with `teacher.checkpoint: random` (seed 0) on CPU, on synthetic room 0 of "
            "seed 0; its local points lie behind the camera, so d3r-v1's depth model cannot hold them and it stores "
            "those maps plain (float16, as fp16 does). Bound: no view costs more than fp16 plus ~160 bytes",
            "- storage: per map (local points / global points / local confidence / global confidence), one letter "
            "per view as recorded in the row's header: `m` model, `d` model as a difference from the local "
            "confidence, `h` float16, `f` float32",
            "- errors: as above (global against the aligned-local target, or the raw head for `global_head`)",
            "",
            "| teacher (random weights) | views x HxW | codec, global target | codec kB/view | / fp16 | storage | "
            "median rel. error (local / global) | p99 rel. error (local / global) |",
            "|---|---|---|---|---|---|---|---|",
            *random_teacher_rows(),
            "",
        ]
    )


@dataclass(frozen=True)
class PipelineCase:
    """One row of the pipeline-efficiency table: a Fast3R preset (random weights) on square synthetic views,
    ``actors`` teacher actors on a local Ray cluster of ``nodes`` nodes (2 CPUs each)."""

    label: str
    preset: str
    views: int
    size: int
    samples: int
    actors: int = 1
    nodes: int = 1
    num_gpus: float = 0.0
    dtype: str = "float32"

    @property
    def height(self) -> int:
        """CPU cases render square views, GPU cases 4:3 ones (512x384)."""
        return self.size * 3 // 4 if self.num_gpus else self.size


PIPELINE_CASES = (
    PipelineCase("Fast3R tiny", "tiny", views=4, size=64, samples=8),
    PipelineCase("Fast3R release", "release", views=2, size=224, samples=12),
    PipelineCase("Fast3R release, 2 actors on 2 nodes", "release", views=2, size=224, samples=12, actors=2, nodes=2),
)
DRIVER_SAMPLES = (8, 32, 128)
DRIVER_CASE = PipelineCase("Fast3R tiny", "tiny", views=4, size=128, samples=0)
GPU_CASE = PipelineCase("Fast3R release, 1 actor per GPU", "release", views=20, size=512, samples=8, num_gpus=1.0,
                        dtype="bfloat16")


def pipeline_argv(case: PipelineCase, checkpoint: Path, uri: str, samples: int | None = None) -> list[str]:
    """The job's command-line overrides: two samples per synthetic room, batch 1, chunks of 4 samples."""
    samples = samples or case.samples
    return [
        "--scenes.num_scenes", str(samples // 2), "--scenes.views_per_scene", str(2 * case.views),
        "--scenes.render_size", f"[{case.size},{case.height}]", "--scenes.long_side", str(case.size),
        "--scenes.views_per_sample", str(case.views), "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2",
        "--teacher.name", "fast3r", "--teacher.preset", case.preset, "--teacher.checkpoint", str(checkpoint),
        "--teacher.dtype", case.dtype, "--cache.uri", uri, "--cache.batch_size", "1",
        "--cache.num_actors", str(case.actors), "--cache.num_gpus", str(case.num_gpus), "--cache.chunk_samples", "4",
    ]


def pipeline_config(case: PipelineCase, checkpoint: Path, uri: str) -> D3RConfig:
    return load_config(None, pipeline_argv(case, checkpoint, uri), environ={})


@dataclass
class BareLoop:
    """Seconds of each step of the cache job done serially in this process, without Ray or Lance."""

    build: float = 0.0
    load: float = 0.0
    predict: float = 0.0
    encode: float = 0.0


def bare_loop(config: D3RConfig) -> BareLoop:
    """The same teacher on the same preprocessed samples; only ``predict`` is the baseline, the other steps
    are timed to account for the job's overhead."""
    import torch

    times = BareLoop()
    start = time.perf_counter()
    teacher = build_teacher(config.teacher)
    times.build = time.perf_counter() - start
    start = time.perf_counter()
    inputs = []
    for scene in list_scenes(config.scenes):
        for sample in sample_scene(scene, config.scenes):
            views = load_sample(scene, sample, config.scenes)
            inputs.append(torch.from_numpy(np.stack([v.image for v in views])).permute(0, 3, 1, 2)[None].contiguous())
    times.load = time.perf_counter() - start
    outputs = []
    if torch.cuda.is_available():
        teacher.predict(inputs[0])  # warm-up: kernels, allocator
        torch.cuda.synchronize()
    start = time.perf_counter()
    for images in inputs:
        outputs.append({key: value[0].numpy() for key, value in teacher.predict(images).items()})
    times.predict = time.perf_counter() - start
    codec = get_codec(config.cache.codec)
    start = time.perf_counter()
    for maps in outputs:
        codec.encode(maps, global_target=config.cache.global_target, align_percentile=config.cache.align_percentile)
    times.encode = time.perf_counter() - start
    return times


def efficiency_rows(cases: tuple[PipelineCase, ...], directory: Path, cpus_per_node: int) -> tuple[list, list]:
    """Run each case's job on a local Ray cluster (``ray.cluster_utils.Cluster``, nodes of ``cpus_per_node``
    CPUs, driven from this process) and its bare loop; the table rows and notes."""
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from d3r.cache.pipeline import run_cache_job
    from d3r.teachers.fast3r import build_fast3r, save_fast3r

    rows, notes, bare_cache = [], [], {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        for i, case in enumerate(cases):
            while len(ray.nodes()) < case.nodes:
                cluster.add_node(num_cpus=cpus_per_node)
                cluster.wait_for_nodes()
            torch.manual_seed(0)
            checkpoint = save_fast3r(build_fast3r(case.preset), directory / f"{case.preset}-weights-{i}")
            config = pipeline_config(case, checkpoint, str(directory / f"pipeline{i}.lance"))
            start = time.perf_counter()
            summary = run_cache_job(config)
            job = time.perf_counter() - start
            key = (case.preset, case.views, case.size)
            bare = bare_cache.get(key) or bare_loop(config)  # the same bare loop for 1 and 2 actors
            bare_cache[key] = bare
            shutil.rmtree(checkpoint)
            n = summary.written
            ratio = (n / job) / (n / bare.predict)
            rest = job - bare.predict / case.actors - bare.build - bare.encode / case.actors
            fixed = job - (bare.predict + bare.encode) / case.actors
            if case.actors == 1:
                projected = 100 * bare.predict / n / (fixed + 100 * (bare.predict + bare.encode) / n)
                notes.append(
                    f"- {case.label}: {bare.predict / n:.2f} s of teacher per sample; the job's fixed cost "
                    f"(job − predict − encode = {fixed:.1f} s) is {fixed * n / bare.predict:.0f} samples' worth of "
                    f"teacher time. If it stays fixed, 100 samples would give a ratio of {projected:.2f} "
                    "(a projection from these timings, not a measurement)")
            rows.append(
                f"| {case.label} | {case.actors} / {case.nodes} | {case.views} x {case.size}x{case.height} | {n} | "
                f"{job:.1f} | {n / job:.3f} | {bare.predict:.1f} | {n / bare.predict:.3f} | **{ratio:.2f}** | "
                f"{bare.build:.1f} | {bare.load:.1f} | {bare.encode:.1f} | {rest:.1f} |")
    finally:
        ray.shutdown()
        cluster.shutdown()
    return rows, notes


DRIVER_JOB = """
import json, resource, sys
import ray
from d3r.cache import pipeline
from d3r.config import load_config

received = 0
committer = getattr(pipeline, "ChunkCommitter", None) or pipeline.ChunkWriter  # after / before
add = committer.add
def counting_add(self, batch):
    global received
    received += batch.nbytes
    return add(self, batch)
committer.add = counting_add
ray.init(address=sys.argv[1], log_to_driver=False, runtime_env={"env_vars": json.loads(sys.argv[2])})
summary = pipeline.run_cache_job(load_config(None, sys.argv[4:], environ={}))
print(json.dumps({"written": summary.written, "received": received,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), file=open(sys.argv[3], "w"))
"""


def driver_rows(directory: Path, before: Path | None) -> list[str]:
    """Driver peak RSS and bytes received for :data:`DRIVER_SAMPLES` samples of the tiny teacher, each job in
    its own driver process on one local Ray cluster; ``before``: a tree of the previous pipeline's d3r."""
    import torch
    from ray.cluster_utils import Cluster

    from d3r.teachers.fast3r import build_fast3r, save_fast3r

    torch.manual_seed(0)
    checkpoint = save_fast3r(build_fast3r(DRIVER_CASE.preset), directory / "driver-weights")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count(), "include_dashboard": False})
    versions = [("after (workers write)", None)] + ([("before (driver writes)", before)] if before else [])
    results: dict[tuple[str, int], dict] = {}
    try:
        for label, tree in versions:
            env = {**os.environ, "PYTHONPATH": str(tree)} if tree else dict(os.environ)
            env.pop("RAY_ADDRESS", None)
            for n in DRIVER_SAMPLES:
                uri, out = directory / f"driver-{len(results)}.lance", directory / f"driver-{len(results)}.json"
                argv = pipeline_argv(DRIVER_CASE, checkpoint, str(uri), n)
                workers = json.dumps({"PYTHONPATH": str(tree)} if tree else {})
                subprocess.run([sys.executable, "-c", DRIVER_JOB, cluster.address, workers, str(out), *argv],
                               env=env, check=True, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results[(label, n)] = json.loads(out.read_text())
    finally:
        cluster.shutdown()
    rows = []
    for label, _ in versions:
        cells = [results[(label, n)] for n in DRIVER_SAMPLES]
        assert all(c["written"] == n for c, n in zip(cells, DRIVER_SAMPLES, strict=True)), cells
        rows.append(f"| {label} | " + " | ".join(f"{c['peak_rss'] / 2**20:.0f}" for c in cells) + " | "
                    + " | ".join(f"{c['received'] / 1e3:.0f}" for c in cells) + " | "
                    + " | ".join(f"{c['received'] / n:.0f}" for c, n in zip(cells, DRIVER_SAMPLES, strict=True))
                    + " |")
    return rows


def previous_pipeline(directory: Path, commit: str) -> Path:
    """The ``d3r`` package as of ``commit`` (``git archive``), for the before/after driver table."""
    tree = directory / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit, "d3r"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def pipeline_section(args: argparse.Namespace) -> str:
    """The pipeline sections (markdown): driver memory and bytes against samples, then the Ray job's
    samples/s over a bare teacher loop's."""
    if args.before:
        args.before = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=REPO, check=True,
                                     capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        before = previous_pipeline(Path(tmp), args.before) if args.before else None
        driver = driver_rows(Path(tmp), before)
        rows, notes = efficiency_rows(PIPELINE_CASES, Path(tmp), cpus_per_node=2)
    n = DRIVER_SAMPLES
    return "\n".join([
        "## Pipeline: what the driver holds",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {describe_machine(extra='pylance ' + lance.__version__)}",
        f"- job: `run_cache_job`, {DRIVER_CASE.label} (random weights), {DRIVER_CASE.views} views x "
        f"{DRIVER_CASE.size}x{DRIVER_CASE.size} per sample, 1 actor, batch 1, chunks of 4 samples, codec d3r-v1; "
        "each job in a fresh driver process connected to one local Ray cluster started beforehand",
        "- peak RSS: the driver process's `ru_maxrss` (imports and `ray.init` included); bytes received: the "
        "Arrow bytes of every result batch the driver's committer was handed",
        "- *before*: the pipeline of commit " + (args.before or "-") + " (the driver received each sample's "
        "images and encoded supervision and wrote the rows); *after*: workers write Lance fragments and "
        "return their metadata",
        "",
        "| pipeline | " + " | ".join(f"peak RSS MiB, {k} samples" for k in n) + " | "
        + " | ".join(f"kB received, {k}" for k in n) + " | " + " | ".join(f"bytes/sample, {k}" for k in n) + " |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *driver,
        "",
        "## Pipeline efficiency",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {describe_machine(threads=1, extra='pylance ' + lance.__version__)}",
        "- job: `run_cache_job` end to end (fingerprint from the config and the checkpoint's hash, listing, Ray "
        "Data load tasks, teacher actors with batch 1 writing Lance fragments, codec d3r-v1, the driver's "
        "commits of 4 samples, tag) on a local `ray.cluster_utils.Cluster` of 2-CPU nodes started beforehand "
        "(each actor gets 1 CPU, so one torch thread); Fast3R with random weights saved as safetensors + "
        "config.json; synthetic rooms, 2 samples per room",
        "- baseline: a bare loop in this process calling the same teacher's `predict` on the same preprocessed "
        "samples, batch 1, no I/O, one torch thread (this script pins OMP to 1 thread); the same run",
        "- ratio = job samples/s / bare-loop samples/s (target >= 0.9 once the teacher dominates; with 2 actors "
        "the bare loop is still one thread, so 2 is the ideal). The last four columns account for the "
        "difference, timed serially here: the teacher build (once per actor; the driver builds none), loading "
        "and rendering (in parallel Ray tasks in the job, so partly hidden), encoding (in the actors); *rest* = "
        "job − (predict + encode) / actors − build: Ray Data start-up, worker and actor processes, object "
        "transfers, fragment writes and commits",
        "",
        "| teacher | actors / nodes | views x size | samples | job s | job samples/s | bare predict s | "
        "bare samples/s | ratio | teacher build s | load s | encode s | rest s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
    ])


def gpu_section(args: argparse.Namespace) -> str:
    """Pipeline efficiency on the GPUs of this machine: :data:`GPU_CASE` with one actor per GPU (markdown)."""
    import torch

    case = replace(GPU_CASE, actors=torch.cuda.device_count(), samples=GPU_CASE.samples * torch.cuda.device_count())
    with tempfile.TemporaryDirectory() as tmp:
        rows, notes = efficiency_rows((case,), Path(tmp), cpus_per_node=os.cpu_count() or 1)
    return "\n".join([
        "## Pipeline efficiency (GPU)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {describe_machine(extra='pylance ' + lance.__version__)}",
        f"- {case.label}: {case.views} views x 512x384, bf16, batch 1, {case.samples} samples, "
        "`cache.num_gpus 1`; baseline: the bare loop on one GPU after one warm-up call. Goal: ratio >= 0.9 "
        "per actor",
        "",
        "| teacher | actors / nodes | views x size | samples | job s | job samples/s | bare predict s | "
        "bare samples/s | ratio | teacher build s | load s | encode s | rest s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
    ])


SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {"codec": codec_section, "pipeline": pipeline_section,
                                                          "gpu": gpu_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=[*SECTIONS, "all"], default="all")
    parser.add_argument("--scenes", type=int, default=3, help="synthetic rooms (one sample each)")
    parser.add_argument("--views", type=int, default=8, help="views per sample")
    parser.add_argument("--before", default=None, help="pipeline section: also measure the driver of the d3r of "
                        "this commit (e.g. the commit before workers wrote fragments)")
    parser.add_argument("--gpu", action="store_true", help="the GPU section (same as --section gpu; needs CUDA)")
    args = parser.parse_args()
    if args.gpu:
        args.section = "gpu"
    if args.section == "gpu":
        import torch

        if not torch.cuda.is_available():
            parser.error("the GPU section needs a CUDA device; torch sees none (nothing run, results unchanged)")
    names = [name for name in SECTIONS if name != "gpu"] if args.section == "all" else [args.section]
    sections = [SECTIONS[name](args) for name in names]
    for section in sections:
        print(section)
    write_sections(RESULTS, "Cache benchmarks", sections)


if __name__ == "__main__":
    main()
