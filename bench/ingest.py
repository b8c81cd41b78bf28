"""Ingest benchmark: images/s decoded and preprocessed to a 518 px long side.

Three ways over the same generated JPEG photos (1920x1440, quality 90):
- ``PIL baseline``: a plain loop of PIL open → convert RGB → resize LANCZOS → centre crop.
- ``d3r, one core``: a plain loop of d3r's ``read_image`` + ``preprocess_views`` (EXIF, mode
  handling, exact K bookkeeping).
- ``d3r, all cores (Ray Data)``: ``ray.data.from_items(paths).map(...)`` on a local Ray instance.

Usage: ``python bench/ingest.py [--images 64] [--repeats 2]``; prints a markdown table and writes
``bench/results/ingest.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from d3r.machine import describe_machine
from d3r.scenes.folders import load_image_view
from d3r.scenes.preprocess import preprocess_views, target_size
from d3r.scenes.records import View

LONG_SIDE = 518
PATCH_SIZE = 14
PHOTO_SIZE = (1920, 1440)
RESULTS = Path(__file__).parent / "results" / "ingest.md"


def photo_like(index: int, size: tuple[int, int] = PHOTO_SIZE) -> np.ndarray:
    """``[H, W, 3]`` uint8 with smooth gradients, sensor-like noise and a few filled shapes."""
    rng = np.random.default_rng(index)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(x / rng.uniform(150, 600) + rng.uniform(0, 6)),
        128 + 100 * np.cos(y / rng.uniform(150, 600) + rng.uniform(0, 6)),
        128 + 80 * np.sin((x + y) / rng.uniform(200, 900)),
    ], axis=-1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(40, 300)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < r**2 if rng.random() < 0.5 else (
            (np.abs(x - cx) < r) & (np.abs(y - cy) < r * rng.uniform(0.3, 1.0)))
        base[inside] = rng.uniform(0, 255, size=3)
    base += rng.normal(0, 6, size=base.shape).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_photos(folder: Path, count: int) -> list[str]:
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(photo_like(i)).save(path, quality=90)
        paths.append(str(path))
    return paths


def pil_baseline(path: str) -> np.ndarray:
    """Plain PIL: open, RGB, LANCZOS resize of the long side, centre crop to patch multiples."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = target_size(image.width, image.height, LONG_SIDE, PATCH_SIZE)
        scale = max(width / image.width, height / image.height)
        new_w, new_h = round(image.width * scale), round(image.height * scale)
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return np.asarray(image.crop((left, top, left + width, top + height)))


def d3r_ingest(path: str) -> np.ndarray:
    """d3r: robust read (EXIF, modes) and preprocessing with K bookkeeping."""
    view = View(name=Path(path).stem, path=path, K=np.eye(3), loader=load_image_view)
    return preprocess_views([view], LONG_SIDE, PATCH_SIZE)[0].image


def _ray_row(row: dict) -> dict:
    image = d3r_ingest(row["path"])
    return {"path": row["path"], "height": image.shape[0], "width": image.shape[1]}


def time_loops(loops: dict[str, Callable[[str], np.ndarray]], paths: list[str], repeats: int) -> dict[str, float]:
    """Best images/s of each plain loop over ``repeats`` passes. The loops alternate image by image,
    so a busy neighbour on a shared box slows them alike."""
    best = dict.fromkeys(loops, 0.0)
    for _ in range(repeats):
        elapsed = dict.fromkeys(loops, 0.0)
        for path in paths:
            for name, fn in loops.items():
                start = time.perf_counter()
                fn(path)
                elapsed[name] += time.perf_counter() - start
        for name in loops:
            best[name] = max(best[name], len(paths) / elapsed[name])
    return best


def time_ray(paths: list[str], repeats: int, num_cpus: int) -> float:
    """Best images/s over ``repeats`` Ray Data passes (Ray started once, before timing)."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            rows = ray.data.from_items([{"path": p} for p in paths]).map(_ray_row).take_all()
            elapsed = time.perf_counter() - start
            if len(rows) != len(paths):
                raise RuntimeError(f"Ray Data returned {len(rows)} rows for {len(paths)} images")
            best = max(best, len(paths) / elapsed)
        return best
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp), args.images)
        out_shape = d3r_ingest(paths[0]).shape
        if pil_baseline(paths[0]).shape != out_shape:
            raise RuntimeError("baseline and d3r disagree on the output size")
        load_before = os.getloadavg()[0]
        rates = time_loops({"baseline": pil_baseline, "one_core": d3r_ingest}, paths, args.repeats)
        all_cores = time_ray(paths, args.repeats, cores)
        load_after = os.getloadavg()[0]
    baseline, one_core = rates["baseline"], rates["one_core"]
    rows = [
        ("PIL baseline (plain loop)", baseline),
        ("d3r read_image + preprocess, one core", one_core),
        (f"d3r via Ray Data, all cores ({cores})", all_cores),
    ]
    table = ["| pipeline | images/s | vs PIL baseline |", "|---|---:|---:|"]
    table += [f"| {name} | {rate:.1f} | {rate / baseline:.2f}x |" for name, rate in rows]
    report = "\n".join([
        "# Ingest: JPEG decode + preprocess to a 518 px long side",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {describe_machine(extra='Pillow ' + Image.__version__)}",
        f"- input: {args.images} generated photo-like JPEGs, {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, quality 90;"
        f" output {out_shape[1]}x{out_shape[0]} (long side {LONG_SIDE}, patch {PATCH_SIZE});"
        f" best of {args.repeats} passes",
        f"- load average (1 min) {load_before:.1f} before, {load_after:.1f} after: the box is shared, so rates"
        " are noisy; the PIL and d3r loops alternate image by image so they see the same load",
        "",
        *table,
        "",
    ])
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
