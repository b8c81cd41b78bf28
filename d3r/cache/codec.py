"""Supervision codecs: the teacher's four maps for one sample ⇄ binary ``sup_*`` columns of a cache row.

A codec is named and versioned; a cache row records both (``codec``, ``codec_version``) with ``N``,
``H``, ``W``, so :func:`decode_row` needs nothing else. Codecs in :data:`CODECS`:

- ``fp16``: the four maps as plain float16 bytes, one column each (the official format's precision;
  left uncompressed so Lance's per-value zstd on ``large_binary`` applies at rest). A finite value beyond
  float16's range (``|x| > 65504``, e.g. a confidence of 1e5) is refused with a ``ValueError`` naming the
  map, the value and the limit (the cache job records it as an ``encode`` reject), never stored as inf.
- ``d3r-v1`` (default; rows of version 2, version-1 rows still decode): exploits the structure of
  pointmaps, then zstd-compresses each column itself (so a column's bytes are what it costs):

  * local points: log-depth ``log z`` and ray residuals ``x/z − (u − cx)/fx``, ``y/z − (v − cy)/fy``
    (from a least-squares pinhole fit per view), each quantised with a relative step;
  * global points: a per-view Sim(3) of the local points (Fast3R's aligned-local target, fitted on the
    pixels at or above the ``align_percentile``-th global-confidence percentile). With
    ``global_target="global_head"`` the raw global head is kept too, as a quantised residual
    ``(global − Sim3(decoded local)) / ‖Sim3(decoded local)‖`` (a point whose prediction is more than twice
    as far from the origin as itself is an exception instead, so its error stays relative to itself);
  * confidence: ``log(C − 1)`` quantised; pixels with ``C == 1`` are exact (a bitmask); the global
    confidence is coded as its difference from the local one when that is smaller;
  * pixels with no point (all three coordinates 0) are exact (a bitmask); points the parametrisation
    cannot hold (``z`` outside [1e-30, 1e30] or ``≤ 0``, rays far off the pinhole fit) are kept as float32
    exceptions;
  * every integer plane is predicted from its left neighbour or not at all (whichever compresses
    better), zigzag-mapped, narrowed to the fewest bytes, byte-shuffled and zstd-compressed, one chunk
    per view.

  The relative error of a modelled point is bounded by about half a quantisation step per coordinate; the
  relative error of ``C − 1`` by ``exp(conf_step / 2) − 1``.

  **Plain fallback, per map and view.** Where the model does not fit (white noise, points behind the
  camera, a teacher with random weights), a map of a view is stored *plain* instead: float16, exactly as
  the ``fp16`` codec stores it (so its error is that codec's), or float32 when the view's map holds a value
  beyond float16's range (which ``fp16`` refuses). The encoder picks plain when the model's bytes for that
  map of that view (its planes, 16 bytes per exception and a bitmask, counted before the column-wide zstd;
  with ``zstd_level`` 0, the planes as zstd would store them) exceed the plain bytes, or when the model
  cannot hold the values (``C − 1`` above 1e30, a Sim(3) that overflows float32). With the aligned-local
  target, a view whose local points are plain keeps its global points plain too. So no view costs more
  than the ``fp16`` codec's bytes for it, plus a fixed ~160-byte overhead per view (view parameters, chunk
  lengths) and one header per sample; values of any finite magnitude are kept (only a Sim(3) that cannot
  be fitted, or an aligned-local target beyond float32, is refused with a ``ValueError``). The choice is
  recorded in the ``sup_header`` column: ``storage`` holds, per map, one character per view (``m`` model,
  ``d`` conf_global's codes as a difference from conf_local's, ``h`` float16, ``f`` float32); plain views
  are byte-shuffled and zstd-compressed together in ``sup_plain``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from d3r.geometry import align_local_to_global
from d3r.teachers.base import OUTPUT_KEYS

GlobalTarget = Literal["aligned_local", "global_head"]
GLOBAL_TARGETS: tuple[str, ...] = ("aligned_local", "global_head")
POINT_KEYS = ("pts3d_global", "pts3d_local")
CONF_KEYS = ("conf_global", "conf_local")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


class Codec(ABC):
    """Encodes one sample's teacher outputs into ``sup_*`` byte columns and back.

    ``encode`` takes float arrays ``pts3d_global [N, H, W, 3]``, ``conf_global [N, H, W]``,
    ``pts3d_local [N, H, W, 3]``, ``conf_local [N, H, W]``; ``decode`` returns them as float32.
    ``global_target`` chooses the global map stored: ``aligned_local`` = each view's local points
    moved by a Sim(3) fitted to the global head (the paper's target), ``global_head`` = the raw head.
    """

    name: str
    version: int  # of the rows it writes
    readable_versions: tuple[int, ...]  # of the rows it decodes

    @abstractmethod
    def encode(
        self,
        outputs: dict[str, np.ndarray],
        *,
        global_target: GlobalTarget = "aligned_local",
        align_percentile: float = 85.0,
    ) -> dict[str, bytes]:
        """The sample's ``sup_*`` columns.

        Raises:
            ValueError: bad maps (see :func:`validate_outputs`), an unknown ``global_target``, or a view whose
                local-to-global Sim(3) cannot be fitted (fewer than 3 distinct usable points).
        """

    @abstractmethod
    def decode(self, columns: dict[str, bytes], n: int, h: int, w: int) -> dict[str, np.ndarray]:
        """The four maps (float32) back from the ``sup_*`` columns of a sample of ``n`` views of ``h x w``."""


def validate_outputs(outputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
    """The four maps as float32 arrays, and ``(N, H, W)``.

    Raises:
        ValueError: a missing key, a wrong or inconsistent shape, a non-finite value, or a confidence below 1.
    """
    missing = [key for key in OUTPUT_KEYS if key not in outputs]
    if missing:
        raise ValueError(f"teacher outputs lack {missing}; expected keys {list(OUTPUT_KEYS)}")
    maps = {key: np.asarray(outputs[key], dtype=np.float32) for key in OUTPUT_KEYS}
    shape = maps["pts3d_local"].shape
    if len(shape) != 4 or shape[-1] != 3 or min(shape) == 0:
        raise ValueError(f"pts3d_local: expected a non-empty [N, H, W, 3] array, got shape {shape}")
    for key in OUTPUT_KEYS:
        expected = shape if key in POINT_KEYS else shape[:-1]
        if maps[key].shape != expected:
            raise ValueError(f"{key}: expected shape {expected}, got {maps[key].shape}")
        if not np.isfinite(maps[key]).all():
            raise ValueError(f"{key}: contains non-finite values (the pipeline must reject such samples)")
    for key in CONF_KEYS:
        if (maps[key] < 1).any():
            raise ValueError(f"{key}: confidence must be >= 1 (C = 1 + exp(x)), got min {maps[key].min()}")
    return maps, shape[:3]


def aligned_global(maps: dict[str, np.ndarray], align_percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Fast3R's aligned-local target: ``(pts3d_global [N, H, W, 3] float32, sim3 [N, 13] float64)``.

    Each row of ``sim3`` is ``(s, R row-major [9], t [3])`` with ``global ≈ s R local + t``; pixels with
    no local point stay (0, 0, 0).
    """
    aligned, sims = align_local_to_global(
        maps["pts3d_local"], maps["pts3d_global"], maps["conf_global"], percentile=align_percentile
    )
    aligned[~has_point(maps["pts3d_local"])] = 0.0
    params = np.array([np.concatenate([[s], R.ravel(), t]) for s, R, t in sims], dtype=np.float64)
    return aligned.astype(np.float32), params


def has_point(points: np.ndarray) -> np.ndarray:
    """``[..., H, W]`` bool: the pixel has a point (not all three coordinates exactly 0)."""
    return (points != 0).any(axis=-1)


class Fp16Codec(Codec):
    """Float16 of the four maps, one plain-bytes column each (the official format's precision)."""

    name = "fp16"
    version = 1
    readable_versions = (1,)

    def encode(
        self,
        outputs: dict[str, np.ndarray],
        *,
        global_target: GlobalTarget = "aligned_local",
        align_percentile: float = 85.0,
    ) -> dict[str, bytes]:
        maps, _ = validate_outputs(outputs)
        check_global_target(global_target)
        if global_target == "aligned_local":
            maps["pts3d_global"] = aligned_global(maps, align_percentile)[0]
        for key in OUTPUT_KEYS:
            check_float16_range(maps[key], f"{key} (aligned-local target)" if key == "pts3d_global" and
                                global_target == "aligned_local" else key)
        columns = {f"sup_{key}": maps[key].astype(np.float16).tobytes() for key in OUTPUT_KEYS}
        columns["sup_header"] = json.dumps({"global_target": global_target}).encode()
        return columns

    def decode(self, columns: dict[str, bytes], n: int, h: int, w: int) -> dict[str, np.ndarray]:
        out = {}
        for key in OUTPUT_KEYS:
            shape = (n, h, w, 3) if key in POINT_KEYS else (n, h, w)
            data = np.frombuffer(column(columns, f"sup_{key}"), dtype=np.float16)
            if data.size != np.prod(shape):
                raise ValueError(f"sup_{key}: {data.size} float16 values, expected {shape}")
            out[key] = data.reshape(shape).astype(np.float32)
        return out


def check_float16_range(values: np.ndarray, name: str) -> None:
    """Raises ValueError naming ``name``, the value and the limit when a value is beyond float16's range
    (it would become inf)."""
    peak = float(values.flat[np.argmax(np.abs(values))])
    if abs(peak) > FLOAT16_MAX:
        raise ValueError(
            f"{name}: value {peak:g} is beyond float16's range (|x| <= {FLOAT16_MAX:g}); the fp16 codec cannot "
            "store it (codec d3r-v1 can)"
        )


def check_global_target(global_target: str) -> None:
    if global_target not in GLOBAL_TARGETS:
        raise ValueError(f"global_target: expected one of {GLOBAL_TARGETS}, got {global_target!r}")


def column(columns: dict[str, bytes], name: str) -> bytes:
    """``columns[name]``, or a ValueError naming the missing column."""
    if name not in columns:
        raise ValueError(f"supervision column {name!r} is missing; got {sorted(columns)}")
    return columns[name]


# --- integer planes: prediction, zigzag, narrowest width, byte shuffle, zstd -------------------------

PREDICT_NONE, PREDICT_LEFT = 0, 1  # code as is / minus its left neighbour (first column: minus the one above)


def predict(codes: np.ndarray, predictor: int) -> np.ndarray:
    """``[..., H, W]`` int32 prediction residual (wrapping int32 arithmetic), inverted by :func:`unpredict`."""
    residual = codes.copy()
    if predictor == PREDICT_LEFT:
        residual[..., 1:] -= codes[..., :-1]
        residual[..., 1:, 0] -= codes[..., :-1, 0]
    return residual


def unpredict(residual: np.ndarray, predictor: int) -> np.ndarray:
    """Inverse of :func:`predict`, in place: cumulative sums down the first column, then along rows."""
    if predictor == PREDICT_LEFT:
        residual[..., 0] = np.cumsum(residual[..., 0], axis=-1, dtype=np.int32)
        np.cumsum(residual, axis=-1, dtype=np.int32, out=residual)
    return residual


def shuffle_bytes(values: np.ndarray) -> bytes:
    """The bytes of ``values`` grouped by position in the item (all first bytes, then all second bytes, ...):
    the high bytes of similar numbers then sit together, which compresses better."""
    width = values.dtype.itemsize
    return np.ascontiguousarray(values).view(np.uint8).reshape(-1, width).T.tobytes()


def unshuffle_bytes(raw: bytes, dtype: str, count: int) -> np.ndarray:
    """Inverse of :func:`shuffle_bytes`: ``count`` items of ``dtype`` ``[count]``."""
    width = np.dtype(dtype).itemsize
    planes = np.frombuffer(raw, dtype=np.uint8, count=count * width).reshape(width, count)
    if width == 1:
        return planes[0].view(dtype)
    interleaved = np.empty((count, width), dtype=np.uint8)
    for i in range(width):
        interleaved[:, i] = planes[i]
    return interleaved.view(dtype)[:, 0]


def pack_residual(residual: np.ndarray, predictor: int, zstd_level: int) -> bytes:
    """3 header bytes (predictor, item width, compressed?) then the zigzag-mapped, narrowed, byte-shuffled
    residual, zstd-compressed unless ``zstd_level`` is 0 (then left to the store's own compression)."""
    zigzag = ((residual << 1) ^ (residual >> 31)).view(np.uint32)
    top = int(zigzag.max(initial=0))
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4
    shuffled = shuffle_bytes(zigzag.astype(f"<u{width}"))
    payload = compress(shuffled, zstd_level) if zstd_level else shuffled
    return bytes([predictor, width, int(zstd_level > 0)]) + payload


def pack_plane(codes: np.ndarray, zstd_level: int) -> bytes:
    """``codes [..., H, W]`` int32 → bytes, with whichever predictor gives fewer bytes."""
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    packed = [pack_residual(predict(codes, p), p, zstd_level) for p in (PREDICT_NONE, PREDICT_LEFT)]
    return min(packed, key=len)


def unpack_plane(data: bytes, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Inverse of :func:`pack_plane`: ``[..., H, W]`` int32 codes."""
    if len(data) < 3 or data[0] not in (PREDICT_NONE, PREDICT_LEFT) or data[1] not in (1, 2, 4):
        raise ValueError(f"{name}: corrupt integer plane (bad header bytes)")
    predictor, width, compressed = data[:3]
    count = int(np.prod(shape))
    raw = decompress(data[3:], count * width) if compressed else data[3:]
    if len(raw) != count * width:
        raise ValueError(f"{name}: {len(raw)} bytes, expected {count * width} for shape {shape}")
    narrow = unshuffle_bytes(raw, f"<u{width}", count)
    signed = f"<i{width}"
    residual = ((narrow >> 1).view(signed) ^ -(narrow & 1).view(signed)).astype(np.int32)
    return unpredict(residual.reshape(shape), predictor)


def pack_views(codes: np.ndarray, zstd_level: int) -> list[bytes]:
    """``codes [..., N, H, W]`` → one :func:`pack_plane` per view (of ``codes[..., i, :, :]``)."""
    return [pack_plane(codes[..., i, :, :], zstd_level) for i in range(codes.shape[-3])]


def join_chunks(chunks: list[bytes]) -> bytes:
    """Each chunk after its length (uint32 little-endian), so empty chunks cost 4 bytes."""
    return b"".join(len(chunk).to_bytes(4, "little") + chunk for chunk in chunks)


def split_chunks(data: bytes, count: int, name: str) -> list[bytes]:
    """Inverse of :func:`join_chunks` for ``count`` chunks."""
    chunks, offset = [], 0
    for _ in range(count):
        size = int.from_bytes(data[offset : offset + 4], "little")
        chunks.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if offset != len(data):
        raise ValueError(f"{name}: corrupt view chunks ({len(data)} bytes, {offset} expected for {count} views)")
    return chunks


def unpack_views(data: bytes, shape: tuple[int, ...], name: str, chunked: bool = True) -> np.ndarray:
    """Inverse of :func:`join_chunks` of :func:`pack_views`: int32 codes of ``shape`` ``(..., N, H, W)``, zeros
    for a view with an empty chunk (stored otherwise). Not ``chunked`` (version 1): one plane for all views."""
    if not chunked:
        return unpack_plane(data, shape, name)
    *lead, n, h, w = shape
    codes = np.zeros(shape, dtype=np.int32)
    for i, chunk in enumerate(split_chunks(data, n, name)):
        if chunk:
            codes[..., i, :, :] = unpack_plane(chunk, (*lead, h, w), f"{name} (view {i})")
    return codes


def exp_of_codes(codes: np.ndarray, step: float) -> np.ndarray:
    """``exp(codes · step)`` as float32."""
    values = codes.astype(np.float32)
    values *= np.float32(step)
    return np.exp(values, out=values)


def compress(data: bytes, zstd_level: int) -> bytes:
    return pa.Codec("zstd", zstd_level).compress(data, asbytes=True)


def decompress(data: bytes, size: int) -> bytes:
    """zstd-decompress ``data`` into ``size`` bytes."""
    return pa.Codec("zstd").decompress(data, decompressed_size=size, asbytes=True)


def fill_gaps(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``values [N, H, W]`` with each pixel not in ``keep`` set to the previous kept one (raster order per
    view; before the first, the first kept one), so gaps cost nothing after prediction."""
    if keep.all():
        return values
    n = values.shape[0]
    flat, kept = values.reshape(n, -1), keep.reshape(n, -1)
    index = np.where(kept, np.arange(flat.shape[1]), 0)
    np.maximum.accumulate(index, axis=1, out=index)
    first = kept.argmax(axis=1)
    index = np.where(kept.cumsum(axis=1) == 0, first[:, None], index)
    return np.take_along_axis(flat, index, axis=1).reshape(values.shape)


def quantise(values: np.ndarray, step: float, keep: np.ndarray) -> np.ndarray:
    """``round(values / step)`` as int32, with pixels outside ``keep`` filled (see :func:`fill_gaps`)."""
    codes = np.rint(np.where(keep, values, 0.0) / step).astype(np.int32)
    return fill_gaps(codes, keep)


# --- d3r-v1 ------------------------------------------------------------------------------------------

RAY_LIMIT = 8.0  # |ray residual| above this (a point nearly parallel to the image plane) → exception
DEPTH_RANGE = (1e-30, 1e30)  # z the depth plane holds (outside: exceptions), so decoded points stay normal floats
CONF_LIMIT = 1e30  # a view whose C − 1 exceeds this keeps its confidence plain (exp of its code could overflow)
RESIDUAL_REACH = 2.0  # a global-head residual is coded only where ‖Sim3(local)‖ ≤ this · ‖global‖
EXCEPTION_BYTES = 16  # a flat pixel index (uint32) and a point (3 float32)
Exceptions = tuple[np.ndarray, np.ndarray]  # flat pixel indices [M] uint32, points [M, 3] float32

# How one map of one view is stored: the header's ``storage`` holds one character per view for each map.
MODEL, FROM_LOCAL, HALF, SINGLE = "m", "d", "h", "f"  # model codes; conf_global's as a difference; float16; float32
PLAIN_DTYPES = {HALF: "<f2", SINGLE: "<f4"}
Storage = dict[str, str]  # output key → one storage character per view


@dataclass(frozen=True)
class D3rV1Codec(Codec):
    """Structured, quantised supervision with a plain fallback per map and view (see the module docstring).
    Steps are relative:

    - ``depth_step``: of ``log z`` (relative depth error ≤ step / 2);
    - ``ray_step``: of ``x/z`` and ``y/z`` (lateral error ≤ z · step / 2);
    - ``residual_step``: of the global-head residual relative to ``‖Sim3(local)‖``;
    - ``conf_step``: of ``log(C − 1)`` (relative error of ``C − 1`` ≤ ``exp(step / 2) − 1``).

    Equal steps minimise the squared error for the bytes; at 1.6e-3 the three rounding errors together give a
    median relative point error of about 8e-4 when all three are busy (a real teacher's noisy rays).
    Steps are written into the ``sup_header`` column, so samples encoded with other steps decode too.
    ``zstd_level`` 0 leaves the columns uncompressed (for the store's own compression); the plain fallback then
    compares what zstd makes of the model's planes with the plain bytes.
    """

    depth_step: float = 1.6e-3
    ray_step: float = 1.6e-3
    residual_step: float = 1.6e-3
    conf_step: float = 0.019
    zstd_level: int = 9
    name: str = "d3r-v1"
    version: int = 2
    readable_versions: tuple[int, ...] = (1, 2)

    def encode(
        self,
        outputs: dict[str, np.ndarray],
        *,
        global_target: GlobalTarget = "aligned_local",
        align_percentile: float = 85.0,
    ) -> dict[str, bytes]:
        maps, _ = validate_outputs(outputs)
        check_global_target(global_target)
        aligned, sim3 = aligned_global(maps, align_percentile)
        header: dict[str, Any] = {
            "global_target": global_target,
            "depth_step": self.depth_step,
            "ray_step": self.ray_step,
            "residual_step": self.residual_step,
            "conf_step": self.conf_step,
        }
        columns: dict[str, bytes] = {}
        storage: Storage = {}
        planes, local_bits, local_exceptions = self._encode_local(maps["pts3d_local"], sim3, header, columns, storage)
        if global_target == "aligned_local":
            target, global_bits, global_exceptions = aligned, local_bits, np.zeros_like(local_bits)
            storage["pts3d_global"] = "".join(MODEL if model else plain_kind(view) for model, view
                                              in zip(is_model(storage["pts3d_local"]), aligned, strict=True))
            columns["sup_global_residual"] = b""
        else:
            target = maps["pts3d_global"]
            global_bits, global_exceptions = self._encode_global_head(target, sim3, planes, columns, storage)
        conf_bits = self._encode_conf(maps, columns, storage)
        columns["sup_masks"] = pack_bytes(np.packbits(np.stack([local_bits, global_bits, *conf_bits])).tobytes(),
                                          self.zstd_level)
        parts = (*make_exceptions(maps["pts3d_local"], local_exceptions), *make_exceptions(target, global_exceptions))
        header["exceptions"] = [len(parts[0]), len(parts[2])]
        columns["sup_exceptions"] = pack_bytes(b"".join(part.tobytes() for part in parts), self.zstd_level)
        columns["sup_plain"] = pack_plain({**maps, "pts3d_global": target}, storage, self.zstd_level)
        header["storage"] = storage
        columns["sup_header"] = json.dumps(header).encode()
        return columns

    def _encode_local(
        self, local: np.ndarray, sim3: np.ndarray, header: dict[str, Any], columns: dict[str, bytes], storage: Storage
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Store the local points (columns ``sup_view_params``, ``sup_local_depth``, ``sup_local_rays``; storage
        ``pts3d_local``). Returns the decoded local points as the decoder will see them (three coordinate planes
        ``[N, H, W]``), the valid-pixel bits to store ``[N, H, W]`` and the exception pixels ``[N, H, W]``."""
        n, h, w, _ = local.shape
        valid = has_point(local)
        pinhole, depth_codes, ray_codes, codable = self._local_codes(local, valid)
        exceptions = valid & ~codable
        planes = decode_local(header, pinhole, depth_codes, ray_codes, make_exceptions(local, exceptions))
        zero_missing(planes, valid)
        fits = np.logical_and.reduce([np.isfinite(plane).reshape(n, -1).all(1) for plane in sim3_planes(planes, sim3)])
        depth_chunks, ray_chunks = pack_views(depth_codes, self.zstd_level), pack_views(ray_codes, self.zstd_level)
        costs = self._cost(depth_chunks) + self._cost(ray_chunks) + view_bytes(exceptions) + mask_bytes(h, w)
        kinds = storage["pts3d_local"] = choose_storage(local, costs, fits)
        set_plain_planes(planes, local, kinds)
        columns["sup_view_params"] = np.concatenate([pinhole, sim3], axis=1).astype("<f8").tobytes()
        columns["sup_local_depth"] = join_chunks(keep_model(depth_chunks, kinds))
        columns["sup_local_rays"] = join_chunks(keep_model(ray_chunks, kinds))
        model = is_model(kinds)[:, None, None]
        return planes, valid & model, exceptions & model

    def _encode_global_head(
        self, glob: np.ndarray, sim3: np.ndarray, planes: list[np.ndarray], columns: dict[str, bytes],
        storage: Storage,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Store the raw global head as a residual from the Sim(3) of the decoded local ``planes`` (column
        ``sup_global_residual``, storage ``pts3d_global``). Returns the valid-pixel bits to store and the exception
        pixels (both ``[N, H, W]``)."""
        _, h, w, _ = glob.shape
        valid = has_point(glob)
        codes, codable = self._residual_codes(glob, valid & has_point(np.stack(planes, -1)), sim3_planes(planes, sim3))
        exceptions = valid & ~codable
        chunks = pack_views(codes, self.zstd_level)
        costs = self._cost(chunks) + view_bytes(exceptions) + mask_bytes(h, w)
        kinds = storage["pts3d_global"] = choose_storage(glob, costs, np.ones(len(glob), dtype=bool))
        columns["sup_global_residual"] = join_chunks(keep_model(chunks, kinds))
        model = is_model(kinds)[:, None, None]
        return valid & model, exceptions & model

    def _encode_conf(
        self, maps: dict[str, np.ndarray], columns: dict[str, bytes], storage: Storage
    ) -> list[np.ndarray]:
        """Store both confidences (columns ``sup_conf_local``, ``sup_conf_global``; storage of both; the global
        one as a difference from the local codes per view where that is smaller). Returns the ``C == 1`` bits to
        store ``[N, H, W]``, local then global."""
        n, h, w = maps["conf_local"].shape
        one = {key: maps[key] == 1 for key in CONF_KEYS}
        codes = {key: self._conf_codes(maps[key], ~one[key]) for key in CONF_KEYS}
        fits = {key: maps[key].reshape(n, -1).max(1) - 1 <= CONF_LIMIT for key in CONF_KEYS}
        chunks = pack_views(codes["conf_local"], self.zstd_level)
        kinds = storage["conf_local"] = choose_storage(maps["conf_local"], self._cost(chunks) + mask_bytes(h, w),
                                                       fits["conf_local"])
        columns["sup_conf_local"] = join_chunks(keep_model(chunks, kinds))
        own = pack_views(codes["conf_global"], self.zstd_level)
        difference = pack_views(codes["conf_global"] - codes["conf_local"], self.zstd_level)
        from_local = is_model(kinds) & (self._cost(difference) < self._cost(own))
        chunks = [d if use else o for d, o, use in zip(difference, own, from_local, strict=True)]
        kinds = choose_storage(maps["conf_global"], self._cost(chunks) + mask_bytes(h, w), fits["conf_global"])
        kinds = storage["conf_global"] = "".join(FROM_LOCAL if kind == MODEL and use else kind
                                                 for kind, use in zip(kinds, from_local, strict=True))
        columns["sup_conf_global"] = join_chunks(keep_model(chunks, kinds))
        return [one[key] & is_model(storage[key])[:, None, None] for key in ("conf_local", "conf_global")]

    def _cost(self, chunks: list[bytes]) -> np.ndarray:
        """``[N]`` bytes each view's chunk costs in :func:`join_chunks`. Chunks left uncompressed for the store
        (``zstd_level`` 0) count as zstd makes them, since that is what the store keeps at rest."""
        return np.array([4 + (len(chunk) if self.zstd_level else len(compress(chunk, 1))) for chunk in chunks])

    def _local_codes(
        self, local: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(pinhole [N, 4] (fx, cx, fy, cy), depth codes [N, H, W], ray codes [2, N, H, W], codable [N, H, W])``;
        valid pixels that are not codable (``z`` outside :data:`DEPTH_RANGE`, rays off the fit) are exceptions."""
        z = local[..., 2].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rays = local[..., :2] / z[..., None]
            codable = valid & (z >= DEPTH_RANGE[0]) & (z <= DEPTH_RANGE[1]) & (np.abs(rays) < RAY_LIMIT).all(-1)
            log_depth = np.log(z)
        pinhole = fit_pinhole(rays, codable)
        residual = rays - np.stack(np.broadcast_arrays(*pinhole_rays(pinhole, *z.shape[1:])), axis=-1)
        depth_codes = quantise(log_depth, self.depth_step, codable)
        ray_codes = np.stack([quantise(residual[..., i], self.ray_step, codable) for i in range(2)])
        return pinhole, depth_codes, ray_codes, codable

    def _residual_codes(
        self, glob: np.ndarray, codable: np.ndarray, predicted: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Codes ``[3, N, H, W]`` of ``(global − predicted) / ‖predicted‖`` and where they hold ``[N, H, W]``.

        ``predicted`` (three coordinate planes) is the Sim(3) of the *decoded* local points, exactly as the
        decoder computes it (closed loop): the global error is then only the residual's rounding, at most
        ``‖predicted‖ · step / 2`` per coordinate. Where ``‖predicted‖`` exceeds :data:`RESIDUAL_REACH` ·
        ``‖global‖`` (the heads disagree wildly) that would be too coarse: those points are exceptions.
        """
        scale = residual_scale(predicted, self.residual_step)
        glob = glob.astype(np.float64)
        reach = RESIDUAL_REACH * self.residual_step * np.sqrt((glob**2).sum(-1))
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            relative = np.stack([(glob[..., i] - plane) / scale for i, plane in enumerate(predicted)])
            codable = codable & np.isfinite(scale) & (scale > 0) & (scale <= reach)
            codable &= (np.abs(relative) < 2**30).all(0)
        codes = np.stack([quantise(relative[i], 1.0, codable) for i in range(3)])
        return codes, codable

    def _conf_codes(self, conf: np.ndarray, above_one: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return quantise(np.log(conf.astype(np.float64) - 1.0), self.conf_step, above_one)

    def decode(self, columns: dict[str, bytes], n: int, h: int, w: int) -> dict[str, np.ndarray]:
        header = json.loads(column(columns, "sup_header"))
        check_global_target(header["global_target"])
        storage, chunked = read_storage(header, n)
        params = np.frombuffer(column(columns, "sup_view_params"), dtype="<f8")
        if params.size != n * 17:
            raise ValueError(f"sup_view_params: {params.size} float64 values, expected {n} views x 17")
        params = params.reshape(n, 17)
        packed_masks = unpack_bytes(column(columns, "sup_masks"), (4 * n * h * w + 7) // 8, "sup_masks")
        masks = np.unpackbits(np.frombuffer(packed_masks, dtype=np.uint8), count=4 * n * h * w).view(bool)
        local_valid, global_valid, conf_local_one, conf_global_one = masks.reshape(4, n, h, w)
        counts = header["exceptions"]
        size = EXCEPTION_BYTES * sum(counts)
        local_exceptions, global_exceptions = split_exceptions(
            unpack_bytes(column(columns, "sup_exceptions"), size, "sup_exceptions"), counts
        )
        plain = unpack_plain(column(columns, "sup_plain"), storage, (n, h, w)) if chunked else {}
        depth_codes = unpack_views(column(columns, "sup_local_depth"), (n, h, w), "sup_local_depth", chunked)
        ray_codes = unpack_views(column(columns, "sup_local_rays"), (2, n, h, w), "sup_local_rays", chunked)
        planes = decode_local(header, params[:, :4], depth_codes, ray_codes, local_exceptions)
        zero_missing(planes, local_valid)
        set_plain_planes(planes, plain.get("pts3d_local", {}), storage["pts3d_local"])
        global_planes = sim3_planes(planes, params[:, 4:])
        if header["global_target"] == "global_head":
            shape = (3, n, h, w)
            codes = unpack_views(column(columns, "sup_global_residual"), shape, "sup_global_residual", chunked)
            scale = residual_scale(global_planes, header["residual_step"])
            with np.errstate(invalid="ignore"):  # inf · 0 where a point is an exception or plain: replaced below
                for plane, plane_codes in zip(global_planes, codes, strict=True):
                    plane += plane_codes.astype(np.float32) * scale
        glob = np.stack(global_planes, axis=-1)
        if not global_valid.all():
            glob[~global_valid] = 0.0
        set_exceptions(glob, global_exceptions)
        conf_step = header["conf_step"]
        conf_local_codes = unpack_views(column(columns, "sup_conf_local"), (n, h, w), "sup_conf_local", chunked)
        conf_global_codes = unpack_views(column(columns, "sup_conf_global"), (n, h, w), "sup_conf_global", chunked)
        from_local = np.array([kind == FROM_LOCAL for kind in storage["conf_global"]])
        conf_global_codes[from_local] += conf_local_codes[from_local]
        decoded = {
            "pts3d_global": glob,
            "conf_global": decode_conf(conf_global_codes, conf_global_one, conf_step),
            "pts3d_local": np.stack(planes, axis=-1),
            "conf_local": decode_conf(conf_local_codes, conf_local_one, conf_step),
        }
        for key, views in plain.items():
            for i, values in views.items():
                decoded[key][i] = values
        return decoded


def read_storage(header: dict[str, Any], n: int) -> tuple[Storage, bool]:
    """How each map of each view is stored, and whether planes are packed per view (version 2).

    A version-1 header (no ``storage``) had every map modelled and one plane across all views.
    """
    if "storage" not in header:
        conf_global = FROM_LOCAL if header["conf_global_from_local"] else MODEL
        return {key: (conf_global if key == "conf_global" else MODEL) * n for key in OUTPUT_KEYS}, False
    storage = header["storage"]
    allowed = {MODEL, HALF, SINGLE}
    for key in OUTPUT_KEYS:
        kinds = storage.get(key, "")
        if len(kinds) != n or not set(kinds) <= (allowed | {FROM_LOCAL} if key == "conf_global" else allowed):
            raise ValueError(f"sup_header: storage of {key} is {kinds!r}, expected one of {sorted(allowed)} per view")
    return storage, True


def is_model(kinds: str) -> np.ndarray:
    """``[N]`` bool: the view's map is stored by the model's codes (not plain)."""
    return np.array([kind in (MODEL, FROM_LOCAL) for kind in kinds])


def plain_kind(values: np.ndarray) -> str:
    """:data:`HALF` when every value fits float16's range (so rounding is no worse than the fp16 codec's),
    else :data:`SINGLE`."""
    return HALF if float(np.abs(values).max(initial=0.0)) <= FLOAT16_MAX else SINGLE


def choose_storage(values: np.ndarray, model_bytes: np.ndarray, model_fits: np.ndarray) -> str:
    """Per view of ``values [N, ...]``: :data:`MODEL` where the model holds the view (``model_fits``) in no more
    bytes (``model_bytes [N]``) than the plain kind would take, else the plain kind."""
    kinds = []
    for view, size, fits in zip(values, model_bytes, model_fits, strict=True):
        kind = plain_kind(view)
        kinds.append(MODEL if fits and size <= view.size * np.dtype(PLAIN_DTYPES[kind]).itemsize else kind)
    return "".join(kinds)


def mask_bytes(h: int, w: int) -> int:
    """Bytes of one bitmask plane of a view before compression (charged to the model's cost)."""
    return -(-h * w // 8)


def view_bytes(exceptions: np.ndarray) -> np.ndarray:
    """``[N]`` bytes of each view's exceptions (``exceptions [N, H, W]`` bool)."""
    return EXCEPTION_BYTES * exceptions.reshape(len(exceptions), -1).sum(1)


def keep_model(chunks: list[bytes], kinds: str) -> list[bytes]:
    """The chunks of views stored by the model; empty for the others."""
    return [chunk if model else b"" for chunk, model in zip(chunks, is_model(kinds), strict=True)]


def pack_plain(maps: dict[str, np.ndarray], storage: Storage, zstd_level: int) -> bytes:
    """The plain views of every map (in :data:`OUTPUT_KEYS` order, then view order), each as its kind's float,
    byte-shuffled, all in one :func:`pack_bytes`.

    Raises:
        ValueError: a plain view that holds a value float32 cannot (an aligned-local target that overflows).
    """
    parts = []
    for key in OUTPUT_KEYS:
        for i, kind in enumerate(storage[key]):
            if kind in PLAIN_DTYPES:
                values = maps[key][i].astype(PLAIN_DTYPES[kind])
                if not np.isfinite(values).all():
                    raise ValueError(f"{key}: view {i} holds values beyond float32's range (the aligned-local "
                                     "target overflows)")
                parts.append(shuffle_bytes(values))
    return pack_bytes(b"".join(parts), zstd_level)


def unpack_plain(data: bytes, storage: Storage, shape: tuple[int, int, int]) -> dict[str, dict[int, np.ndarray]]:
    """Inverse of :func:`pack_plain`: per map, its plain views (float32 ``[H, W, 3]`` or ``[H, W]``) by index."""
    _, h, w = shape
    sizes = {key: h * w * (3 if key in POINT_KEYS else 1) for key in OUTPUT_KEYS}
    wanted = [(key, i, kind) for key in OUTPUT_KEYS for i, kind in enumerate(storage[key]) if kind in PLAIN_DTYPES]
    total = sum(sizes[key] * np.dtype(PLAIN_DTYPES[kind]).itemsize for key, _, kind in wanted)
    raw = memoryview(unpack_bytes(data, total, "sup_plain"))
    out: dict[str, dict[int, np.ndarray]] = {}
    offset = 0
    for key, i, kind in wanted:
        size = sizes[key] * np.dtype(PLAIN_DTYPES[kind]).itemsize
        values = unshuffle_bytes(raw[offset : offset + size], PLAIN_DTYPES[kind], sizes[key])
        out.setdefault(key, {})[i] = values.astype(np.float32).reshape((h, w, 3) if key in POINT_KEYS else (h, w))
        offset += size
    return out


def set_plain_planes(planes: list[np.ndarray], points: np.ndarray | dict[int, np.ndarray], kinds: str) -> None:
    """Write the plain views' points (``points[i] [H, W, 3]``, rounded to their kind) into coordinate ``planes``."""
    for i, kind in enumerate(kinds):
        if kind in PLAIN_DTYPES:
            values = np.asarray(points[i]).astype(PLAIN_DTYPES[kind]).astype(np.float32)
            for c, plane in enumerate(planes):
                plane[i] = values[..., c]


def fit_pinhole(rays: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Least-squares ``x/z = (u − cx) / fx``, ``y/z = (v − cy) / fy`` per view → ``[N, 4]`` (fx, cx, fy, cy).

    ``rays [N, H, W, 2]`` are ``(x/z, y/z)``; a view with too few usable pixels gets ``(1, 0, 1, 0)``.
    """
    n, h, w = keep.shape
    grids = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    out = np.tile([1.0, 0.0, 1.0, 0.0], (n, 1))
    for i in range(n):
        for axis, coord in enumerate(grids):
            pixel, ray = coord[keep[i]], rays[i, ..., axis][keep[i]]
            if pixel.size < 2 or np.ptp(pixel) == 0:
                continue
            slope, intercept = np.polyfit(pixel, ray, 1)
            if slope != 0:
                out[i, 2 * axis : 2 * axis + 2] = 1.0 / slope, -intercept / slope
    return out


def pinhole_rays(pinhole: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Rays ``(u − cx) / fx`` ``[N, 1, W]`` and ``(v − cy) / fy`` ``[N, H, 1]`` (float32) of pinholes ``[N, 4]``."""
    fx, cx, fy, cy = (pinhole[:, i, None, None].astype(np.float32) for i in range(4))
    u = np.arange(w, dtype=np.float32)[None, None, :]
    v = np.arange(h, dtype=np.float32)[None, :, None]
    return (u - cx) / fx, (v - cy) / fy


def decode_local(
    header: dict[str, Any],
    pinhole: np.ndarray,
    depth_codes: np.ndarray,
    ray_codes: np.ndarray,
    exceptions: Exceptions,
) -> list[np.ndarray]:
    """Local points from their codes and exceptions as three coordinate planes ``[N, H, W]`` float32 (pixels with
    no point, or of views stored otherwise: arbitrary). Plain numpy element-wise work: one thread, no BLAS."""
    _, h, w = depth_codes.shape
    z = exp_of_codes(depth_codes, header["depth_step"])
    step = np.float32(header["ray_step"])
    planes = []
    for codes, ray in zip(ray_codes, pinhole_rays(pinhole, h, w), strict=True):
        plane = codes.astype(np.float32)
        plane *= step
        plane += ray
        plane *= z
        planes.append(plane)
    planes.append(z)
    index, values = exceptions
    for plane, value in zip(planes, values.T, strict=True):
        plane.reshape(-1)[index] = value
    return planes


def zero_missing(planes: list[np.ndarray], valid: np.ndarray) -> None:
    """Set the coordinate ``planes`` to 0 where ``valid [N, H, W]`` is False."""
    if not valid.all():
        for plane in planes:
            plane[~valid] = 0.0


def sim3_planes(planes: list[np.ndarray], sim3: np.ndarray) -> list[np.ndarray]:
    """Coordinate ``planes`` ``[N, H, W]`` moved by each view's Sim(3) ``[N, 13]`` (float32 arithmetic; values
    beyond float32's range become inf, which the encoder checks for)."""
    n = sim3.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        linear = (sim3[:, 0, None] * sim3[:, 1:10]).astype(np.float32).reshape(n, 3, 3, 1, 1)
        shift = sim3[:, 10:13].astype(np.float32).reshape(n, 3, 1, 1)
        moved, term = [], np.empty_like(planes[0])
        for r in range(3):
            plane = np.multiply(planes[0], linear[:, r, 0])
            for c in (1, 2):
                plane += np.multiply(planes[c], linear[:, r, c], out=term)
            plane += shift[:, r]
            moved.append(plane)
    return moved


def residual_scale(planes: list[np.ndarray], step: float) -> np.ndarray:
    """``[N, H, W]`` float32 ``‖point‖ · step`` of coordinate ``planes`` (inf where float32 overflows), computed
    the same way by encoder and decoder so the residual's closed loop is exact."""
    with np.errstate(over="ignore"):
        scale = np.sqrt(sum(plane * plane for plane in planes))
        scale *= np.float32(step)
    return scale


def decode_conf(codes: np.ndarray, one: np.ndarray, step: float) -> np.ndarray:
    """``[N, H, W]`` float32 confidence ``1 + exp(code · step)``, exactly 1 where ``one``."""
    conf = exp_of_codes(codes, step)
    conf += 1.0
    if one.any():
        conf[one] = 1.0
    return conf


def pack_bytes(data: bytes, zstd_level: int) -> bytes:
    """1 header byte (compressed?) then ``data``, zstd-compressed unless ``zstd_level`` is 0."""
    return bytes([int(zstd_level > 0)]) + (compress(data, zstd_level) if zstd_level else data)


def unpack_bytes(data: bytes, size: int, name: str) -> bytes:
    """Inverse of :func:`pack_bytes`, checking the size."""
    raw = decompress(data[1:], size) if data[:1] == b"\x01" else data[1:]
    if len(raw) != size:
        raise ValueError(f"{name}: {len(raw)} bytes, expected {size}")
    return raw


def make_exceptions(points: np.ndarray, where: np.ndarray) -> Exceptions:
    """``(flat pixel indices [M] uint32, points [M, 3] float32)`` of the pixels in ``where``."""
    index = np.flatnonzero(where).astype("<u4")
    return index, points.reshape(-1, 3)[index].astype("<f4")


def split_exceptions(raw: bytes, counts: list[int]) -> list[Exceptions]:
    """Inverse of the concatenated local and global :func:`make_exceptions` parts."""
    out, offset = [], 0
    for count in counts:
        index = np.frombuffer(raw, dtype="<u4", count=count, offset=offset)
        points = np.frombuffer(raw, dtype="<f4", count=3 * count, offset=offset + 4 * count).reshape(count, 3)
        out.append((index, points))
        offset += 16 * count
    return out


def set_exceptions(points: np.ndarray, exceptions: Exceptions) -> None:
    """Write exception points ``[M, 3]`` at their flat pixel indices of ``points [N, H, W, 3]``."""
    index, values = exceptions
    if len(index):
        points.reshape(-1, 3)[index] = values


CODECS: dict[str, Codec] = {codec.name: codec for codec in (Fp16Codec(), D3rV1Codec())}


def get_codec(name: str) -> Codec:
    """The registered codec called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; known codecs: {sorted(CODECS)}")
    return CODECS[name]


def decode_row(row: dict[str, Any]) -> dict[str, np.ndarray]:
    """The four maps (float32) of a cache row as read from the Lance table.

    ``row`` carries ``codec``, ``codec_version``, ``N``, ``H``, ``W`` and the ``sup_*`` columns.

    Raises:
        ValueError: a missing field, or a codec name/version this build cannot decode.
    """
    missing = [key for key in ("codec", "codec_version", "N", "H", "W") if key not in row]
    if missing:
        raise ValueError(f"cache row lacks {missing}")
    name, version = row["codec"], int(row["codec_version"])
    if name not in CODECS:
        raise ValueError(f"cache row has unknown codec {name!r} (version {version}); known codecs: {sorted(CODECS)}")
    codec = CODECS[name]
    if version not in codec.readable_versions:
        raise ValueError(
            f"cache row has codec {name!r} version {version}; this build decodes versions {codec.readable_versions}"
        )
    columns = {key: value for key, value in row.items() if key.startswith("sup_")}
    return codec.decode(columns, int(row["N"]), int(row["H"]), int(row["W"]))
