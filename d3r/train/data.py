"""Training data: one split of a cache table for one rank, decoded, cropped to the student's patch, bucketed.

Each Ray Train worker reads the Lance table itself (no Ray Data shard: 7x faster on one box):

1. :func:`build_cache_data` opens ``cache.uri`` at ``train.cache_version`` (a tag, default ``latest``,
   or a version number; a tag is resolved to its number once, so every rank reads the same rows) and
   reads only the small index columns (``split``, ``N``, ``H``, ``W``, ``codec``, ``codec_version``).
2. Each epoch, every rank computes the same global plan of batches from ``(train.seed, epoch)``:
   samples are grouped by shape after cropping and view subsampling (``N, H, W``), shuffled within
   their group (train split, ``train.shuffle``), cut into batches of ``train.batch_size``, and the
   batch order is shuffled. Batches are then dealt round-robin to the ranks. So that every rank gets
   the same number of batches (DDP would hang otherwise), the largest batches are halved until the
   count divides by the world size; each sample is then served exactly once per epoch. Only when that
   is impossible (fewer samples than needed: e.g. ``batch_size`` 1 with a count not divisible by the
   ranks) are single samples repeated, as torch's ``DistributedSampler`` does.
3. A batch is read with one ``take`` of its sorted row offsets and the needed columns, each row
   decoded once (:func:`d3r.cache.codec.decode_row`, PNG/JPEG for the kept views only), its views
   subsampled (train split, ``train.views_per_sample``), images, pointmaps, confidences, ground-truth
   depth and intrinsics centre-cropped together to the patch multiple
   (:func:`d3r.scenes.preprocess.crop_to_patch`: never resampled), stacked and handed to torch
   without another copy.

View subsampling draws a sorted random subset per sample and epoch. When view 0 is dropped, the
global targets are re-expressed in the new first view's camera frame through that view's
local-to-global Sim(3) (refitted on the decoded maps at ``cache.align_percentile``: exact for the
``aligned_local`` target, where the new first view's global map then equals its local map).
Ground-truth poses are always given relative to the sample's first view (camera-to-world with the
first camera as the world, the frame of ``pts3d_global``); metrics against them are frame-invariant.

Lance is not fork-safe: with ``train.loader_workers`` > 0 the batches are produced by DataLoader
processes started with ``spawn``; each opens the table lazily. The plan stays in the calling process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lance
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import d3r
from d3r.cache.codec import CODECS, has_point
from d3r.cache.codec import decode_row as decode_supervision
from d3r.cache.rows import BASE_FIELDS, SUP_PREFIX, decode_ground_truth, decode_images
from d3r.cache.store import open_dataset
from d3r.config import D3RConfig
from d3r.errors import ConfigError
from d3r.geometry import align_local_to_global
from d3r.scenes.preprocess import crop_to_patch, patch_crop_size
from d3r.teachers.base import OUTPUT_KEYS

logger = logging.getLogger(__name__)

Split = Literal["train", "val"]
INDEX_COLUMNS = ("split", "N", "H", "W", "codec", "codec_version")
READ_COLUMNS = ("sample_id", "scene_id", "N", "H", "W", "images", "gt_depth", "gt_K", "gt_poses", "codec",
                "codec_version")
FLOAT32_KEYS = (*OUTPUT_KEYS, "gt_depth")
FLOAT64_KEYS = ("gt_K", "gt_poses")


def open_cache(uri: str, version: int | str) -> lance.LanceDataset:
    """The cache table at ``uri`` at ``version`` (a version number or a tag).

    Raises:
        ConfigError: naming ``cache.uri`` when there is no table, ``train.cache_version`` when it has no
            such version or tag.
    """
    if open_dataset(uri) is None:
        raise ConfigError(f"cache.uri: there is no cache table at {uri!r}; run the cache job first")
    try:
        return lance.dataset(uri, version=version)
    except ValueError as exc:
        if "not found" not in str(exc).lower() and "does not exist" not in str(exc).lower():
            raise
        latest = lance.dataset(uri)
        versions = [v["version"] for v in latest.versions()]
        raise ConfigError(
            f"train.cache_version={version!r}: the cache table {uri} has no such version or tag "
            f"(tags: {sorted(latest.tags.list())}; versions {min(versions)}..{max(versions)})"
        ) from None


def resolved_uri(uri: str) -> str:
    """``uri`` with a local path made absolute (object-store URIs as given)."""
    return uri if "://" in uri else str(Path(uri).resolve())


def cache_lineage(uri: str, version: int | str) -> dict[str, str]:
    """What a training run learnt from: the table, its version, teacher, codec and the d3r doing it.

    Returns ``{"cache.uri", "cache.version", "cache.tag", "teacher.fingerprint", "codec", "d3r.version"}``
    (strings; ``cache.tag`` is the tag asked for, or ""; several teachers or codecs are joined by ",").

    Raises:
        ConfigError: see :func:`open_cache`.
    """
    dataset = open_cache(uri, version)
    table = dataset.to_table(columns=["teacher_fingerprint", "codec", "codec_version"])
    fingerprints = sorted(set(table["teacher_fingerprint"].to_pylist()))
    codecs = sorted({f"{name}:{v}" for name, v in zip(table["codec"].to_pylist(), table["codec_version"].to_pylist(),
                                                       strict=True)})
    return {
        "cache.uri": resolved_uri(uri),
        "cache.version": str(dataset.version),
        "cache.tag": version if isinstance(version, str) else "",
        "teacher.fingerprint": ",".join(fingerprints),
        "codec": ",".join(codecs),
        "d3r.version": d3r.__version__,
    }


@dataclass(frozen=True)
class BatchSpec:
    """One batch to read: row offsets in the table version (ascending) and, per row, the views kept
    (ascending indices, or None for all)."""

    rows: tuple[int, ...]
    views: tuple[tuple[int, ...] | None, ...]


def sample_arrays(row: dict[str, Any], views: Sequence[int] | None, patch_size: int,
                  align_percentile: float) -> dict[str, Any]:
    """One cache row → its training arrays: kept views, re-expressed when view 0 was dropped, cropped.

    Returns ``images [k, H, W, 3]`` uint8, ``pts3d_* [k, H, W, 3]`` and ``conf_* [k, H, W]`` float32,
    ``gt_depth [k, H, W]`` float32 (zeros without ground truth), ``gt_K [k, 3, 3]`` and ``gt_poses [k, 4, 4]``
    float64 (identity without; poses relative to the first kept view), ``has_gt``, ``sample_id``, ``scene_id``.

    Raises:
        ValueError: naming the sample when the row cannot be decoded.
    """
    n = int(row["N"])
    keep = list(range(n)) if views is None else list(views)
    try:
        maps = decode_supervision(row)
        images = decode_images([row["images"][i] for i in keep])
    except ValueError as exc:
        raise ValueError(f"cache row {row['sample_id']}: {exc}") from exc
    gt = decode_ground_truth(row)
    has_gt = all(value is not None for value in gt.values())
    if views is not None:
        maps = {key: value[keep] for key, value in maps.items()}
        gt = {key: None if value is None else value[keep] for key, value in gt.items()}
    if keep[0] != 0:
        maps["pts3d_global"] = in_first_view_frame(maps, align_percentile)
    depth = gt["depth"] if gt["depth"] is not None else np.zeros(maps["conf_local"].shape, np.float32)
    K = gt["K"] if gt["K"] is not None else np.tile(np.eye(3), (len(keep), 1, 1))
    poses = gt["poses"]
    poses = np.tile(np.eye(4), (len(keep), 1, 1)) if poses is None else np.linalg.inv(poses[0]) @ poses
    cropped, K = crop_to_patch({"images": images, **maps, "gt_depth": depth}, patch_size, K)
    return {**cropped, "gt_K": K, "gt_poses": poses, "has_gt": has_gt, "sample_id": row["sample_id"],
            "scene_id": row["scene_id"]}


def in_first_view_frame(maps: dict[str, np.ndarray], align_percentile: float) -> np.ndarray:
    """``pts3d_global [k, H, W, 3]`` moved into view 0's camera frame (float32): the inverse of view 0's
    local-to-global Sim(3), fitted on its decoded maps as the codec fits it. Pixels without a point stay 0."""
    _, sims = align_local_to_global(maps["pts3d_local"][:1], maps["pts3d_global"][:1], maps["conf_global"][:1],
                                    percentile=align_percentile)
    s, R, t = sims[0]
    glob = maps["pts3d_global"]
    moved = ((glob.astype(np.float64) - t) @ R / s).astype(np.float32)
    moved[~has_point(glob)] = 0.0
    return moved


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples of one shape → a batch of torch tensors (one stacking copy each, then zero-copy to torch)."""
    batch: dict[str, Any] = {
        "images": torch.from_numpy(np.stack([s["images"].transpose(0, 3, 1, 2) for s in samples])),
    }
    for key in FLOAT32_KEYS:
        batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]).astype(np.float32, copy=False))
    for key in FLOAT64_KEYS:
        batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]).astype(np.float64, copy=False))
    batch["has_gt"] = torch.tensor([s["has_gt"] for s in samples], dtype=torch.bool)
    batch["sample_id"] = [s["sample_id"] for s in samples]
    batch["scene_id"] = [s["scene_id"] for s in samples]
    return batch


class CacheReader(Dataset):
    """Reads and decodes :class:`BatchSpec` batches from one version of a cache table.

    Picklable: the Lance dataset is opened lazily in whichever process reads (DataLoader workers).
    """

    def __init__(self, uri: str, version: int, columns: Sequence[str], patch_size: int,
                 align_percentile: float) -> None:
        self.uri = uri
        self.version = version
        self.columns = list(columns)
        self.patch_size = patch_size
        self.align_percentile = align_percentile
        self._dataset: lance.LanceDataset | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    def __getitem__(self, spec: BatchSpec) -> dict[str, Any]:
        if self._dataset is None:
            self._dataset = lance.dataset(self.uri, version=self.version)
        rows = self._dataset.take(list(spec.rows), columns=self.columns).to_pylist()
        return collate([sample_arrays(row, views, self.patch_size, self.align_percentile)
                        for row, views in zip(rows, spec.views, strict=True)])


class BatchPlanner:
    """The global plan of one epoch's batches (the same on every rank), see the module docstring.

    Args:
        rows: ``[S]`` row offsets of the split's samples.
        num_views: ``[S]`` views per row.
        sizes: ``[S, 2]`` (H, W) per row after cropping.
    """

    def __init__(self, rows: np.ndarray, num_views: np.ndarray, sizes: np.ndarray, *, batch_size: int,
                 world_size: int, views_per_sample: int | None, shuffle: bool, seed: int) -> None:
        self.rows = rows
        self.num_views = num_views
        self.views_per_sample = views_per_sample
        self.batch_size = batch_size
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        kept = num_views if views_per_sample is None else np.minimum(num_views, views_per_sample)
        shapes = np.column_stack([kept, sizes]) if len(rows) else np.zeros((0, 3), dtype=np.int64)
        keys, self.bucket_of = np.unique(shapes, axis=0, return_inverse=True)
        self.buckets = [tuple(int(x) for x in key) for key in keys]

    def epoch(self, epoch: int) -> list[BatchSpec]:
        """Every batch of ``epoch``, in order; the count is a multiple of the world size and the same each epoch."""
        rng = np.random.default_rng((self.seed % 2**32, epoch))
        batches: list[list[int]] = []
        for bucket in range(len(self.buckets)):
            members = np.flatnonzero(self.bucket_of == bucket)
            if self.shuffle:
                members = rng.permutation(members)
            batches += [members[i:i + self.batch_size].tolist() for i in range(0, len(members), self.batch_size)]
        batches = self._even_out(batches)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [self._spec(members, rng) for members in batches]

    def _even_out(self, batches: list[list[int]]) -> list[list[int]]:
        """Halve the largest batches, then (only if that is not enough) repeat single samples, until the
        number of batches divides by the world size."""
        while len(batches) % self.world_size:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            members = batches[largest]
            if len(members) < 2:
                break
            half = (len(members) + 1) // 2
            batches[largest:largest + 1] = [members[:half], members[half:]]
        missing = -len(batches) % self.world_size
        return batches + [batches[i % len(batches)][:1] for i in range(missing)]

    def _spec(self, members: list[int], rng: np.random.Generator) -> BatchSpec:
        order = sorted(members, key=lambda m: self.rows[m])
        views: list[tuple[int, ...] | None] = []
        for m in order:
            n = int(self.num_views[m])
            if self.views_per_sample is None or self.views_per_sample >= n:
                views.append(None)
            else:
                views.append(tuple(sorted(int(v) for v in rng.choice(n, self.views_per_sample, replace=False))))
        return BatchSpec(tuple(int(self.rows[m]) for m in order), tuple(views))


class _Specs(Sampler):
    """The batches a DataLoader reads next (set before each epoch; iterated in the calling process)."""

    def __init__(self) -> None:
        self.specs: list[BatchSpec] = []

    def __iter__(self) -> Iterator[BatchSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


class CacheData:
    """One split of a cache table for one rank: decoded, cropped to the student's patch, bucketed by shape.

    Attributes:
        num_samples: samples of this split in the whole table (all ranks).
        batches_per_epoch: batches :meth:`batches` yields per epoch, identical on every rank.
    """

    def __init__(self, reader: CacheReader, planner: BatchPlanner, rank: int, loader_workers: int) -> None:
        self.reader = reader
        self.planner = planner
        self.rank = rank
        self.loader_workers = loader_workers
        self.num_samples = len(planner.rows)
        plan = planner.epoch(0)
        self.batches_per_epoch = len(plan) // planner.world_size
        repeated = sum(len(spec.rows) for spec in plan) - self.num_samples
        if repeated:
            logger.warning("%d samples cannot fill %d batches on each of %d ranks: %d are served twice per epoch",
                           self.num_samples, self.batches_per_epoch, planner.world_size, repeated)
        self._specs = _Specs()
        self._loader: DataLoader | None = None

    def specs(self, epoch: int) -> list[BatchSpec]:
        """This rank's batches of ``epoch``."""
        return self.planner.epoch(epoch)[self.rank::self.planner.world_size]

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]:
        """Exactly ``batches_per_epoch`` batches (from batch ``start`` on, without reading the ones before it:
        resuming mid-epoch): ``images`` uint8 ``[B, N, 3, H, W]``; ``pts3d_global``, ``pts3d_local`` float32
        ``[B, N, H, W, 3]``; ``conf_global``, ``conf_local``, ``gt_depth`` float32 ``[B, N, H, W]``; ``gt_K``
        float64 ``[B, N, 3, 3]``; ``gt_poses`` float64 ``[B, N, 4, 4]``; ``has_gt`` bool ``[B]``;
        ``sample_id``, ``scene_id`` lists of B strings."""
        specs = self.specs(epoch)[start:]
        if self.loader_workers == 0:
            for spec in specs:
                yield self.reader[spec]
            return
        if self._loader is None:
            self._loader = DataLoader(self.reader, batch_size=None, sampler=self._specs,
                                      num_workers=self.loader_workers, multiprocessing_context="spawn",
                                      persistent_workers=True)
        self._specs.specs = specs
        yield from self._loader


def read_index(dataset: lance.LanceDataset, uri: str) -> dict[str, np.ndarray]:
    """The index columns of the table (:data:`INDEX_COLUMNS`) as arrays, after checking the table is a
    d3r cache whose codecs this build decodes.

    Raises:
        ConfigError: naming ``cache.uri``.
    """
    names = set(dataset.schema.names)
    missing = [field.name for field in BASE_FIELDS if field.name not in names]
    if missing:
        raise ConfigError(f"cache.uri: {uri} is not a d3r cache table (no columns {missing})")
    table = dataset.to_table(columns=list(INDEX_COLUMNS))
    index = {name: table[name].to_numpy(zero_copy_only=False) for name in INDEX_COLUMNS}
    for name, version in sorted(set(zip(index["codec"].tolist(), index["codec_version"].tolist(), strict=True))):
        if name not in CODECS or version not in CODECS[name].readable_versions:
            readable = sorted(f"{c.name}:{v}" for c in CODECS.values() for v in c.readable_versions)
            raise ConfigError(f"cache.uri: {uri} holds rows of codec {name!r} version {version}, which this build "
                              f"cannot decode (it decodes {readable})")
    return index


def build_cache_data(config: D3RConfig, split: Split, rank: int, world_size: int, patch_size: int) -> CacheData:
    """The ``split`` rows of ``cache.uri`` at ``train.cache_version`` for ``rank`` of ``world_size``.

    Train: shuffled by ``(train.seed, epoch)`` when ``train.shuffle``, views subsampled to
    ``train.views_per_sample``. Val: table order, all views, at most ``train.val_max_samples`` samples.
    Rows smaller than one patch are left out (logged).

    Raises:
        ConfigError: for a missing table, version or tag, a table this build cannot decode, or no
            train rows.
        ValueError: for a rank outside ``0..world_size-1``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    train = config.train
    dataset = open_cache(config.cache.uri, train.cache_version)
    index = read_index(dataset, config.cache.uri)
    rows = np.flatnonzero(index["split"] == split)
    heights, widths = index["H"][rows], index["W"][rows]
    fits = (heights >= patch_size) & (widths >= patch_size)
    if not fits.all():
        logger.warning("%s: %d %s rows are smaller than one %d-pixel patch and are left out",
                       config.cache.uri, int((~fits).sum()), split, patch_size)
        rows = rows[fits]
    if split == "val" and train.val_max_samples is not None:
        rows = rows[:train.val_max_samples]
    if split == "train" and len(rows) == 0:
        raise ConfigError(f"train.cache_version={train.cache_version!r}: the cache table {config.cache.uri} "
                          f"(version {dataset.version}) has no usable train rows")
    sizes = np.array([patch_crop_size(int(h), int(w), patch_size) for h, w in zip(index["H"][rows],
                                                                                 index["W"][rows], strict=True)])
    planner = BatchPlanner(
        rows, index["N"][rows], sizes, batch_size=train.batch_size, world_size=world_size,
        views_per_sample=train.views_per_sample if split == "train" else None,
        shuffle=train.shuffle and split == "train", seed=train.seed,
    )
    sup_columns = sorted(name for name in dataset.schema.names if name.startswith(SUP_PREFIX))
    reader = CacheReader(config.cache.uri, dataset.version, [*READ_COLUMNS, *sup_columns], patch_size,
                         config.cache.align_percentile)
    data = CacheData(reader, planner, rank, train.loader_workers)
    logger.info("%s@%d %s rank %d/%d: %d samples in %d shapes, %d batches per epoch", config.cache.uri,
                dataset.version, split, rank, world_size, data.num_samples, len(planner.buckets),
                data.batches_per_epoch)
    return data
