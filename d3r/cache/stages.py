"""The per-sample stages of the cache job, as Ray Data UDFs over pyarrow batches.

- :func:`load_stage` (CPU tasks): items ``{"key": str, "payload": bytes}`` (``payload`` is
  :func:`pack_sample` of the sample and the views it needs) → rows of :data:`LOAD_SCHEMA`: the
  sample's columns of the cache row (:data:`d3r.cache.rows.SAMPLE_FIELDS`; each view once, encoded as
  ``cache.image_format``) and a status.
- :class:`TeacherStage` (actors): decodes the stored images (so the teacher sees exactly the pixels
  the table keeps, also for JPEG), runs the teacher, encodes its outputs, **writes each good sample as
  its own Lance fragment** into the cache table's folder and returns only rows of
  :data:`RESULT_SCHEMA`: the key, the fragment's metadata (JSON) and small facts for rejects and the
  summary. The driver commits the fragments (:meth:`d3r.cache.store.CacheStore.commit`); it never
  receives an image or a supervision array. One fragment per sample makes the exactly-once rule exact:
  a fragment whose key is already in the table is left out whole without losing any other sample.

Errors, per sample. A deterministic input error becomes a row with ``status="rejected"``, the
``stage`` (``load``, ``teacher``, ``encode``), a short ``kind`` for counting and the full ``reason``;
the rest of its batch goes on. A *transient* fault (:func:`transient_fault`: CUDA out of memory, other
CUDA errors, ``OSError`` from storage) in the teacher stage is never a reject: the call (or the
fragment write) is retried up to :data:`FAULT_ATTEMPTS` times (after an out-of-memory with the
teacher rebuilt at half its ``teacher.view_chunk``, down to 1, for the rest of the actor's life), and
when it persists the sample's result has ``status="fault"`` and a ``reason`` naming the sample and
the fault; the driver then commits what it has and fails the job with :class:`TeacherFaultError`.
(A result row, not an exception: Ray hands the driver a worker's exception only as text.) Likewise,
a teacher the actor cannot build for a config reason (a checkpoint file that does not load: the
driver never loads weights) gives rows with ``status="bad teacher"``, which the driver raises as a
:class:`~d3r.errors.ConfigError`.
"""

from __future__ import annotations

import gc
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from ray import cloudpickle

from d3r.cache.codec import get_codec
from d3r.cache.rows import (
    SAMPLE_FIELDS,
    cache_schema,
    decode_ground_truth,
    decode_images,
    encode_images,
    ground_truth_columns,
)
from d3r.cache.store import write_fragment
from d3r.config import CacheConfig, ScenesConfig, TeacherConfig
from d3r.errors import ConfigError
from d3r.scenes.records import Scene
from d3r.scenes.sampling import Sample, SampleError, load_sample
from d3r.teachers.base import OUTPUT_KEYS, Teacher, fingerprint_id, teacher_images

logger = logging.getLogger(__name__)

OK = "ok"
REJECTED = "rejected"
FAULT = "fault"  # a transient fault that persisted: the driver fails the job (never a reject row)
BAD_TEACHER = "bad teacher"  # the actor could not build the teacher (ConfigError): the driver exits 2
FAULT_ATTEMPTS = 4  # tries of one teacher call (or fragment write) against transient faults

STATUS_FIELDS = (
    pa.field("status", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("reason", pa.string()),
)
LOAD_SCHEMA = pa.schema([*SAMPLE_FIELDS, *STATUS_FIELDS])
RESULT_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("sample_id", pa.string()),
    pa.field("scene_id", pa.string()),
    pa.field("view_names", pa.list_(pa.string())),
    pa.field("N", pa.int32()),
    *STATUS_FIELDS,
    pa.field("fragment", pa.string()),  # the sample's Lance FragmentMetadata as JSON (null for a reject)
    pa.field("sup_bytes", pa.string()),  # JSON {sup column: encoded bytes} (null for a reject)
])
"""What a teacher actor returns per sample: metadata and small facts only."""

FaultKind = Literal["out of memory", "CUDA error", "storage error"]


class TeacherFaultError(RuntimeError):
    """A transient fault (out of memory, CUDA, storage) that persisted through every retry."""


def transient_fault(exc: BaseException) -> FaultKind | None:
    """What kind of transient fault ``exc`` is, or None for an error the input causes."""
    text = str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in text):
        return "out of memory"
    if isinstance(exc, torch.AcceleratorError) or (isinstance(exc, RuntimeError) and "CUDA" in text):
        return "CUDA error"
    if isinstance(exc, OSError):
        return "storage error"
    return None


def pack_sample(scene: Scene, sample: Sample) -> bytes:
    """The sample with only its own views (lazy, with loaders), pickled for a Ray item."""
    views = [scene.views[i] for i in sample.view_indices]
    own = Scene(id=scene.id, source=scene.source, views=views, meta=scene.meta)
    return cloudpickle.dumps((own, replace(sample, view_indices=tuple(range(len(views))))))


def _stacked(views: list, field: str) -> np.ndarray | None:
    values = [getattr(view, field) for view in views]
    return None if any(v is None for v in values) else np.stack(values)


def load_one(key: str, payload: bytes, scenes: ScenesConfig, image_format: str) -> dict[str, Any]:
    """One item → a :data:`LOAD_SCHEMA` row: views loaded, preprocessed, encoded (or a ``load`` reject)."""
    scene, sample = cloudpickle.loads(payload)
    row: dict[str, Any] = {
        "key": key, "sample_id": sample.id, "scene_id": sample.scene_id, "source": sample.source,
        "split": sample.split, "view_names": list(sample.view_names), "N": len(sample.view_names),
    }
    try:
        views = load_sample(scene, sample, scenes)
        images = np.stack([view.image for view in views])
        row.update(
            H=images.shape[1], W=images.shape[2], images=encode_images(images, image_format), status=OK,
            **ground_truth_columns(_stacked(views, "depth"), _stacked(views, "K"), _stacked(views, "pose")),
        )
    except Exception as exc:  # per-sample robustness: any failure becomes a reject row
        # kind: what was wrong with the file (ImageLimitError, ImageReadError ...), not the SampleError around it
        cause = exc.__cause__ if isinstance(exc, SampleError) and exc.__cause__ is not None else exc
        row.update(status=REJECTED, stage="load", kind=type(cause).__name__, reason=str(exc))
    return row


def load_stage(batch: pa.Table, scenes: ScenesConfig, image_format: str) -> pa.Table:
    """Ray Data task UDF: items → :data:`LOAD_SCHEMA` rows (see :func:`load_one`)."""
    rows = [load_one(key, payload, scenes, image_format)
            for key, payload in zip(batch["key"].to_pylist(), batch["payload"].to_pylist(), strict=True)]
    return pa.Table.from_pylist(rows, schema=LOAD_SCHEMA)


def nonfinite_counts(outputs: dict[str, np.ndarray]) -> dict[str, int]:
    """Per output key, how many values are NaN or infinite (only keys with any)."""
    counts = {key: int((~np.isfinite(outputs[key])).sum()) for key in OUTPUT_KEYS}
    return {key: count for key, count in counts.items() if count}


class _Rows:
    """Row access to a :data:`LOAD_SCHEMA` batch without converting its big columns to Python objects:
    images and depth come out as zero-copy buffers."""

    def __init__(self, batch: pa.Table):
        self.batch = batch.combine_chunks()
        small = self.batch.select(["key", "sample_id", "scene_id", "view_names", "N", "H", "W", *(
            f.name for f in STATUS_FIELDS)]).to_pylist()
        present = {name: self.batch[name].is_valid().to_pylist() for name in ("gt_depth", "gt_K", "gt_poses")}
        for i, row in enumerate(small):
            row.update({f"has_{name}": present[name][i] for name in present})
        self.small = small

    def group_key(self, i: int) -> tuple:
        """Rows that can share one teacher call: same N, H, W and the same ground truth available."""
        row = self.small[i]
        return row["N"], row["H"], row["W"], row["has_gt_depth"], row["has_gt_K"], row["has_gt_poses"]

    def pixels(self, i: int) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` decoded from the row's stored images."""
        return decode_images([blob.as_buffer() for blob in self.batch["images"].chunk(0)[i].values])

    def ground_truth(self, i: int) -> dict[str, np.ndarray | None]:
        """``depth [N, H, W]``, ``K [N, 3, 3]``, ``poses [N, 4, 4]`` (None when absent)."""
        row, chunk = self.small[i], {name: self.batch[name].chunk(0) for name in ("gt_depth", "gt_K", "gt_poses")}
        return decode_ground_truth({
            "N": row["N"], "H": row["H"], "W": row["W"],
            "gt_depth": chunk["gt_depth"][i].as_buffer() if row["has_gt_depth"] else None,
            "gt_K": chunk["gt_K"][i].values.to_numpy() if row["has_gt_K"] else None,
            "gt_poses": chunk["gt_poses"][i].values.to_numpy() if row["has_gt_poses"] else None,
        })


class TeacherStage:
    """Ray Data actor UDF: builds the teacher once, then per batch runs it, encodes its outputs and writes
    each good sample as a Lance fragment of the table at ``uri``; returns :data:`RESULT_SCHEMA` rows.

    Args:
        teacher: the teacher's config.
        cache: codec name, ``global_target``, ``align_percentile``, ``uri``.
        expected_fingerprint: the fingerprint id the keys were made with; a teacher built here with
            another one (another device or dtype) is an error, not silently different keys.
        factory: builds the teacher from ``teacher`` (``d3r.teachers.base.build_teacher``).
    """

    def __init__(self, teacher: TeacherConfig, cache: CacheConfig, expected_fingerprint: str,
                 factory: Callable[[TeacherConfig], Teacher]):
        self.factory, self.expected_fingerprint = factory, expected_fingerprint
        self.teacher_config = teacher
        self.codec = get_codec(cache.codec)
        self.cache = cache
        self.teacher: Teacher | None = None  # None after an out-of-memory: rebuilt smaller by the next call
        try:
            self.teacher = self._build(teacher)
        except ConfigError as exc:  # reported per batch (see the module docstring)
            self.build_error: str | None = str(exc)
            return
        self.build_error = None
        self.teacher_columns = {
            "teacher_fingerprint": expected_fingerprint,
            "teacher_fingerprint_json": json.dumps(self.teacher.fingerprint, sort_keys=True, default=str),
        }

    def _build(self, config: TeacherConfig) -> Teacher:
        teacher = self.factory(config)
        fingerprint = teacher.fingerprint
        if fingerprint_id(fingerprint) != self.expected_fingerprint:
            raise RuntimeError(
                f"teacher fingerprint on this worker {fingerprint} (id {fingerprint_id(fingerprint)}) differs from "
                f"the one the job planned with (id {self.expected_fingerprint})"
            )
        return teacher

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = _Rows(batch)
        results = [{name: row[name] for name in RESULT_SCHEMA.names if name in row} for row in rows.small]
        if self.build_error is not None:
            for result in results:
                result.update(status=BAD_TEACHER, stage="teacher", kind="ConfigError", reason=self.build_error)
            return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, row in enumerate(rows.small):
            if row["status"] == OK:
                groups[rows.group_key(i)].append(i)
        for group in groups.values():
            for i, outputs in zip(group, self._predict(rows, group), strict=True):
                self._finish(rows, i, outputs, results[i])
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _predict(self, rows: _Rows, group: list[int]) -> list[dict[str, np.ndarray] | Exception]:
        """Outputs per row (``[N, ...]`` numpy maps), or the error its own teacher call raised (an input
        error, or a :class:`TeacherFaultError` when a transient fault persisted)."""
        try:
            return self._call(rows, group)
        except Exception as exc:
            if len(group) == 1:
                return [exc]
            logger.info("teacher failed on a batch of %d (%s); retrying one sample at a time", len(group), exc)
        results: list[dict[str, np.ndarray] | Exception] = []
        for i in group:
            try:
                results.extend(self._call(rows, [i]))
            except Exception as exc:
                results.append(exc)
        return results

    def _call(self, rows: _Rows, group: list[int]) -> list[dict[str, np.ndarray]]:
        """One teacher call on ``group``, retried against transient faults.

        Raises:
            TeacherFaultError: naming the samples, when a transient fault persists.
            Exception: whatever input error the teacher raised.
        """
        images = teacher_images(np.stack([rows.pixels(i) for i in group]))
        truths = [rows.ground_truth(i) for i in group]
        gt = {name: None if truths[0][name] is None else torch.from_numpy(np.stack([t[name] for t in truths]))
              for name in ("depth", "K", "poses")}
        outputs = self._retrying(lambda: self._teacher().predict(images, **gt),
                                 [rows.small[i]["sample_id"] for i in group], out_of_memory=self._shrink)
        arrays = {key: outputs[key].detach().cpu().float().numpy() for key in OUTPUT_KEYS}
        return [{key: arrays[key][b] for key in OUTPUT_KEYS} for b in range(len(group))]

    def _teacher(self) -> Teacher:
        if self.teacher is None:
            self.teacher = self._build(self.teacher_config)
        return self.teacher

    def _shrink(self) -> None:
        """After an out-of-memory: drop the teacher, to be rebuilt (by :meth:`_teacher`, within the retried
        call) with ``teacher.view_chunk`` halved, down to 1 (the chunk bounds memory only: the fingerprint
        stays); free the CUDA cache."""
        chunk = self.teacher_config.view_chunk
        if chunk > 1:
            logger.warning("teacher out of memory: rebuilding it with teacher.view_chunk %d -> %d", chunk, chunk // 2)
            self.teacher_config = self.teacher_config.model_copy(update={"view_chunk": chunk // 2})
            self.teacher = None
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def _retrying(action: Callable[[], Any], sample_ids: Sequence[str],
                  out_of_memory: Callable[[], None] | None = None) -> Any:
        """``action()``, tried up to :data:`FAULT_ATTEMPTS` times while it raises a transient fault
        (``out_of_memory()`` runs after an out-of-memory)."""
        attempt = 1
        while True:
            try:
                return action()
            except Exception as exc:
                kind = transient_fault(exc)
                if kind is None:
                    raise
                logger.warning("sample %s: %s (%s), attempt %d of %d", ", ".join(sample_ids), kind, exc, attempt,
                               FAULT_ATTEMPTS)
                if attempt == FAULT_ATTEMPTS:
                    raise TeacherFaultError(
                        f"sample {', '.join(sample_ids)}: {kind} persisted through {FAULT_ATTEMPTS} attempts: "
                        f"{type(exc).__name__}: {exc}") from exc
                if kind == "out of memory" and out_of_memory is not None:
                    out_of_memory()
                attempt += 1

    def _finish(self, rows: _Rows, i: int, outputs: dict[str, np.ndarray] | Exception, result: dict[str, Any]) -> None:
        """Write the sample's fragment and fill ``result``, or turn it into a ``teacher``/``encode`` reject
        (or a fault)."""
        if isinstance(outputs, TeacherFaultError):
            result.update(status=FAULT, stage="teacher", kind="transient fault", reason=str(outputs))
            return
        if isinstance(outputs, Exception):
            result.update(status=REJECTED, stage="teacher", kind=type(outputs).__name__, reason=str(outputs))
            return
        bad = nonfinite_counts(outputs)
        if bad:
            counts = ", ".join(f"{key}: {count}" for key, count in bad.items())
            result.update(status=REJECTED, stage="teacher", kind="non-finite output",
                          reason=f"teacher output has NaN/inf values ({counts})")
            return
        try:
            columns = self.codec.encode(
                outputs, global_target=self.cache.global_target, align_percentile=self.cache.align_percentile
            )
        except Exception as exc:
            result.update(status=REJECTED, stage="encode", kind=type(exc).__name__, reason=str(exc))
            return
        row = self._cache_row(rows, i, columns)
        try:
            fragment = self._retrying(lambda: write_fragment(row, self.cache.uri), [rows.small[i]["sample_id"]])
        except TeacherFaultError as exc:
            result.update(status=FAULT, stage="write", kind="transient fault", reason=str(exc))
            return
        result.update(fragment=fragment.metadata,
                      sup_bytes=json.dumps({name: len(value) for name, value in columns.items()}))

    def _cache_row(self, rows: _Rows, i: int, columns: dict[str, bytes]) -> pa.Table:
        """The sample's cache row: its load-stage columns (Arrow slices, not copied through Python), the
        teacher's columns and the codec's."""
        schema = cache_schema(list(columns))
        sample = rows.batch.select([field.name for field in SAMPLE_FIELDS]).slice(i, 1)
        codec = {"codec": self.codec.name, "codec_version": self.codec.version}
        arrays = [*sample.columns]
        for field in list(schema)[len(SAMPLE_FIELDS):]:
            value = {**self.teacher_columns, **codec, **columns}[field.name]
            arrays.append(pa.array([value], type=field.type))
        return pa.Table.from_arrays(arrays, schema=schema)
