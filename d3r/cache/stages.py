"""The per-sample stages of the cache job, as Ray Data UDFs over pyarrow batches.

Every stage reads and writes rows of :data:`WORK_SCHEMA`: the cache row's columns (see
:mod:`d3r.cache.rows`) plus the raw pixels the teacher needs, the codec's columns as a name/value
list, and a status. Errors are caught per sample: a failing sample leaves its stage as a row with
``status="rejected"``, the ``stage`` (``load``, ``teacher``, ``encode``), a short ``kind`` for
counting and the full ``reason``; the rest of its batch goes on. Blocks are never dropped.

Items entering :func:`load_stage` are ``{"key": str, "payload": bytes}`` where the payload is
:func:`pack_sample` of the sample and the views it needs.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from ray import cloudpickle

from d3r.cache.codec import get_codec
from d3r.cache.rows import BASE_FIELDS, decode_ground_truth, encode_images, ground_truth_columns
from d3r.config import CacheConfig, ScenesConfig, TeacherConfig
from d3r.scenes.records import Scene
from d3r.scenes.sampling import Sample, SampleError, load_sample
from d3r.teachers.base import OUTPUT_KEYS, Teacher, fingerprint_id, teacher_images

logger = logging.getLogger(__name__)

OK = "ok"
REJECTED = "rejected"

WORK_SCHEMA = pa.schema([
    *BASE_FIELDS,
    pa.field("pixels", pa.large_binary()),
    pa.field("sup_names", pa.list_(pa.string())),
    pa.field("sup_values", pa.list_(pa.large_binary())),
    pa.field("status", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("reason", pa.string()),
])


def pack_sample(scene: Scene, sample: Sample) -> bytes:
    """The sample with only its own views (lazy, with loaders), pickled for a Ray item."""
    views = [scene.views[i] for i in sample.view_indices]
    own = Scene(id=scene.id, source=scene.source, views=views, meta=scene.meta)
    return cloudpickle.dumps((own, replace(sample, view_indices=tuple(range(len(views))))))


def reject(row: dict[str, Any], stage: str, kind: str, reason: str) -> None:
    row.update(status=REJECTED, stage=stage, kind=kind, reason=reason, pixels=None)


def _stacked(views: list, field: str) -> np.ndarray | None:
    values = [getattr(view, field) for view in views]
    return None if any(v is None for v in values) else np.stack(values)


def load_one(key: str, payload: bytes, scenes: ScenesConfig, image_format: str) -> dict[str, Any]:
    """One item → a work row: views loaded, preprocessed, encoded (or a ``load`` reject)."""
    scene, sample = cloudpickle.loads(payload)
    row: dict[str, Any] = {
        "key": key, "sample_id": sample.id, "scene_id": sample.scene_id, "source": sample.source,
        "split": sample.split, "view_names": list(sample.view_names), "N": len(sample.view_names),
    }
    try:
        views = load_sample(scene, sample, scenes)
        images = np.stack([view.image for view in views])
        row.update(
            H=images.shape[1], W=images.shape[2], images=encode_images(images, image_format),
            pixels=images.tobytes(), status=OK,
            **ground_truth_columns(_stacked(views, "depth"), _stacked(views, "K"), _stacked(views, "pose")),
        )
    except Exception as exc:  # per-sample robustness: any failure becomes a reject row
        # kind: what was wrong with the file (ImageLimitError, ImageReadError ...), not the SampleError around it
        cause = exc.__cause__ if isinstance(exc, SampleError) and exc.__cause__ is not None else exc
        reject(row, "load", type(cause).__name__, str(exc))
    return row


def load_stage(batch: pa.Table, scenes: ScenesConfig, image_format: str) -> pa.Table:
    """Ray Data task UDF: items → work rows (see :func:`load_one`)."""
    rows = [load_one(item["key"], item["payload"], scenes, image_format) for item in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def nonfinite_counts(outputs: dict[str, np.ndarray]) -> dict[str, int]:
    """Per output key, how many values are NaN or infinite (only keys with any)."""
    counts = {key: int((~np.isfinite(outputs[key])).sum()) for key in OUTPUT_KEYS}
    return {key: count for key, count in counts.items() if count}


def _group_key(row: dict[str, Any]) -> tuple:
    """Rows that can share one teacher call: same N, H, W and the same ground truth available."""
    return row["N"], row["H"], row["W"], row["gt_depth"] is None, row["gt_K"] is None, row["gt_poses"] is None


def _teacher_inputs(rows: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """``images`` uint8 ``[B, N, 3, H, W]`` and the ground truth (``depth [B, N, H, W]``, ``K [B, N, 3, 3]``,
    ``poses [B, N, 4, 4]``; None when the rows have none)."""
    n, h, w = rows[0]["N"], rows[0]["H"], rows[0]["W"]
    pixels = np.stack([np.frombuffer(r["pixels"], dtype=np.uint8).reshape(n, h, w, 3) for r in rows])
    images = teacher_images(pixels)
    truths = [decode_ground_truth(r) for r in rows]
    gt = {}
    for name in ("depth", "K", "poses"):
        values = [t[name] for t in truths]
        gt[name] = None if values[0] is None else torch.from_numpy(np.stack(values))
    return images, gt


class TeacherStage:
    """Ray Data actor UDF: builds the teacher once, then runs it on each batch and encodes its outputs.

    Args:
        teacher: the teacher's config.
        cache: codec name, ``global_target``, ``align_percentile``.
        expected_fingerprint: the fingerprint id the keys were made with; a teacher built here with
            another one (another device or dtype) is an error, not silently different keys.
        factory: builds the teacher from ``teacher`` (``d3r.teachers.base.build_teacher``).
    """

    def __init__(self, teacher: TeacherConfig, cache: CacheConfig, expected_fingerprint: str,
                 factory: Callable[[TeacherConfig], Teacher]):
        self.teacher = factory(teacher)
        fingerprint = self.teacher.fingerprint
        if fingerprint_id(fingerprint) != expected_fingerprint:
            raise RuntimeError(
                f"teacher fingerprint on this worker {fingerprint} (id {fingerprint_id(fingerprint)}) differs from "
                f"the one the job planned with (id {expected_fingerprint})"
            )
        self.fingerprint_id = expected_fingerprint
        self.fingerprint_json = json.dumps(fingerprint, sort_keys=True, default=str)
        self.codec = get_codec(cache.codec)
        self.cache = cache

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if row["status"] == OK:
                groups[_group_key(row)].append(row)
        for group in groups.values():
            for row, outputs in zip(group, self._predict(group), strict=True):
                self._finish(row, outputs)
        for row in rows:
            row["pixels"] = None
        return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)

    def _predict(self, rows: list[dict[str, Any]]) -> list[dict[str, np.ndarray] | Exception]:
        """Outputs per row (``[N, ...]`` numpy maps), or the exception its own teacher call raised."""
        try:
            return self._call(rows)
        except Exception as exc:
            if len(rows) == 1:
                return [exc]
            logger.info("teacher failed on a batch of %d (%s); retrying one sample at a time", len(rows), exc)
        results: list[dict[str, np.ndarray] | Exception] = []
        for row in rows:
            try:
                results.extend(self._call([row]))
            except Exception as exc:
                results.append(exc)
        return results

    def _call(self, rows: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        images, gt = _teacher_inputs(rows)
        outputs = self.teacher.predict(images, **gt)
        arrays = {key: outputs[key].detach().cpu().float().numpy() for key in OUTPUT_KEYS}
        return [{key: arrays[key][b] for key in OUTPUT_KEYS} for b in range(len(rows))]

    def _finish(self, row: dict[str, Any], outputs: dict[str, np.ndarray] | Exception) -> None:
        """Fill the teacher/codec columns of ``row``, or turn it into a ``teacher``/``encode`` reject."""
        if isinstance(outputs, Exception):
            reject(row, "teacher", type(outputs).__name__, str(outputs))
            return
        bad = nonfinite_counts(outputs)
        if bad:
            counts = ", ".join(f"{key}: {count}" for key, count in bad.items())
            reject(row, "teacher", "non-finite output", f"teacher output has NaN/inf values ({counts})")
            return
        try:
            columns = self.codec.encode(
                outputs, global_target=self.cache.global_target, align_percentile=self.cache.align_percentile
            )
        except Exception as exc:
            reject(row, "encode", type(exc).__name__, str(exc))
            return
        row.update(
            teacher_fingerprint=self.fingerprint_id, teacher_fingerprint_json=self.fingerprint_json,
            codec=self.codec.name, codec_version=self.codec.version,
            sup_names=list(columns), sup_values=list(columns.values()),
        )
