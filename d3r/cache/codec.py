"""Supervision codecs: the teacher's four maps for one sample ⇄ binary ``sup_*`` columns of a cache row.

A codec is named and versioned; a cache row records both (``codec``, ``codec_version``) with ``N``,
``H``, ``W``, so :func:`decode_row` needs nothing else. Codecs in :data:`CODECS`:

- ``fp16``: the four maps as plain float16 bytes, one column each (the official format's precision;
  values beyond float16's range become inf, as there; left uncompressed so Lance's per-value zstd on
  ``large_binary`` applies at rest).
- ``d3r-v1`` (default): exploits the structure of pointmaps, then zstd-compresses each column itself
  (so a column's bytes are what it costs):

  * local points: log-depth ``log z`` and ray residuals ``x/z − (u − cx)/fx``, ``y/z − (v − cy)/fy``
    (from a least-squares pinhole fit per view), each quantised with a relative step;
  * global points: a per-view Sim(3) of the local points (Fast3R's aligned-local target, fitted on the
    pixels at or above the ``align_percentile``-th global-confidence percentile). With
    ``global_target="global_head"`` the raw global head is kept too, as a quantised residual
    ``(global − Sim3(decoded local)) / ‖Sim3(decoded local)‖``;
  * confidence: ``log(C − 1)`` quantised; pixels with ``C == 1`` are exact (a bitmask); the global
    confidence is coded as its difference from the local one when that is smaller;
  * pixels with no point (all three coordinates 0) are exact (a bitmask); points the parametrisation
    cannot hold (``z ≤ 0``, rays far off the pinhole fit) are kept as float32 exceptions;
  * every integer plane is predicted from its left neighbour or not at all (whichever compresses
    better), zigzag-mapped, narrowed to the fewest bytes, byte-shuffled and zstd-compressed.

The relative error of a point is bounded by about half a quantisation step per coordinate; the
relative error of ``C − 1`` by ``exp(conf_step / 2) − 1``.
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


class Codec(ABC):
    """Encodes one sample's teacher outputs into ``sup_*`` byte columns and back.

    ``encode`` takes float arrays ``pts3d_global [N, H, W, 3]``, ``conf_global [N, H, W]``,
    ``pts3d_local [N, H, W, 3]``, ``conf_local [N, H, W]``; ``decode`` returns them as float32.
    ``global_target`` chooses the global map stored: ``aligned_local`` = each view's local points
    moved by a Sim(3) fitted to the global head (the paper's target), ``global_head`` = the raw head.
    """

    name: str
    version: int

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


def pack_residual(residual: np.ndarray, predictor: int, zstd_level: int) -> bytes:
    """3 header bytes (predictor, item width, compressed?) then the zigzag-mapped, narrowed, byte-shuffled
    residual, zstd-compressed unless ``zstd_level`` is 0 (then left to the store's own compression)."""
    zigzag = ((residual << 1) ^ (residual >> 31)).view(np.uint32)
    top = int(zigzag.max(initial=0))
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4
    shuffled = zigzag.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T.tobytes()
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
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(width, count)
    if width == 1:
        narrow = planes[0]
    else:
        interleaved = np.empty((count, width), dtype=np.uint8)
        for i in range(width):
            interleaved[:, i] = planes[i]
        narrow = interleaved.view(f"<u{width}")[:, 0]
    signed = f"<i{width}"
    residual = ((narrow >> 1).view(signed) ^ -(narrow & 1).view(signed)).astype(np.int32)
    return unpredict(residual.reshape(shape), predictor)


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
Exceptions = tuple[np.ndarray, np.ndarray]  # flat pixel indices [M] uint32, points [M, 3] float32


@dataclass(frozen=True)
class D3rV1Codec(Codec):
    """Structured, quantised supervision (see the module docstring). Steps are relative:

    - ``depth_step``: of ``log z`` (relative depth error ≤ step / 2);
    - ``ray_step``: of ``x/z`` and ``y/z`` (lateral error ≤ z · step / 2);
    - ``residual_step``: of the global-head residual relative to ``‖Sim3(local)‖``;
    - ``conf_step``: of ``log(C − 1)`` (relative error of ``C − 1`` ≤ ``exp(step / 2) − 1``).

    Equal steps minimise the squared error for the bytes; at 1.6e-3 the three rounding errors together give a
    median relative point error of about 8e-4 when all three are busy (a real teacher's noisy rays).
    Steps are written into the ``sup_header`` column, so samples encoded with other steps decode too.
    ``zstd_level`` 0 leaves the columns uncompressed (for the store's own compression).
    """

    depth_step: float = 1.6e-3
    ray_step: float = 1.6e-3
    residual_step: float = 1.6e-3
    conf_step: float = 0.019
    zstd_level: int = 9
    name: str = "d3r-v1"
    version: int = 1

    def encode(
        self,
        outputs: dict[str, np.ndarray],
        *,
        global_target: GlobalTarget = "aligned_local",
        align_percentile: float = 85.0,
    ) -> dict[str, bytes]:
        maps, _ = validate_outputs(outputs)
        check_global_target(global_target)
        local = maps["pts3d_local"]
        local_valid = has_point(local)
        sim3 = aligned_global(maps, align_percentile)[1]
        pinhole, depth_codes, ray_codes, local_exceptions = self._encode_local(local, local_valid)
        header: dict[str, Any] = {
            "global_target": global_target,
            "depth_step": self.depth_step,
            "ray_step": self.ray_step,
            "residual_step": self.residual_step,
            "conf_step": self.conf_step,
        }
        columns = {
            "sup_view_params": np.concatenate([pinhole, sim3], axis=1).astype("<f8").tobytes(),
            "sup_local_depth": pack_plane(depth_codes, self.zstd_level),
            "sup_local_rays": pack_plane(ray_codes, self.zstd_level),
            "sup_global_residual": b"",
        }
        global_valid, global_exceptions = local_valid, empty_exceptions()
        if global_target == "global_head":
            glob = maps["pts3d_global"]
            global_valid = has_point(glob)
            _, predicted = decode_geometry(header, pinhole, sim3, depth_codes, ray_codes, local_valid, local_exceptions)
            residual_codes, global_exceptions = self._encode_residual(glob, global_valid & local_valid, predicted)
            columns["sup_global_residual"] = pack_plane(residual_codes, self.zstd_level)
        conf_one = {key: maps[key] == 1 for key in CONF_KEYS}
        conf_codes = {key: self._conf_codes(maps[key], ~conf_one[key]) for key in CONF_KEYS}
        columns["sup_conf_local"] = pack_plane(conf_codes["conf_local"], self.zstd_level)
        own = pack_plane(conf_codes["conf_global"], self.zstd_level)
        from_local = pack_plane(conf_codes["conf_global"] - conf_codes["conf_local"], self.zstd_level)
        header["conf_global_from_local"] = len(from_local) < len(own)
        columns["sup_conf_global"] = from_local if header["conf_global_from_local"] else own
        masks = np.packbits(np.stack([local_valid, global_valid, conf_one["conf_local"], conf_one["conf_global"]]))
        columns["sup_masks"] = pack_bytes(masks.tobytes(), self.zstd_level)
        header["exceptions"] = [len(local_exceptions[0]), len(global_exceptions[0])]
        parts = (*local_exceptions, *global_exceptions)
        columns["sup_exceptions"] = pack_bytes(b"".join(part.tobytes() for part in parts), self.zstd_level)
        columns["sup_header"] = json.dumps(header).encode()
        return columns

    def _encode_local(
        self, local: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Exceptions]:
        """``(pinhole [N, 4] (fx, cx, fy, cy), depth codes [N, H, W], ray codes [2, N, H, W], exceptions)``."""
        z = local[..., 2].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rays = local[..., :2] / z[..., None]
            codable = valid & (z > 0) & (np.abs(rays) < RAY_LIMIT).all(-1)
            log_depth = np.log(z)
        pinhole = fit_pinhole(rays, codable)
        residual = rays - np.stack(np.broadcast_arrays(*pinhole_rays(pinhole, *z.shape[1:])), axis=-1)
        depth_codes = quantise(log_depth, self.depth_step, codable)
        ray_codes = np.stack([quantise(residual[..., i], self.ray_step, codable) for i in range(2)])
        return pinhole, depth_codes, ray_codes, make_exceptions(local, valid & ~codable)

    def _encode_residual(
        self, glob: np.ndarray, codable: np.ndarray, predicted: list[np.ndarray]
    ) -> tuple[np.ndarray, Exceptions]:
        """Codes ``[3, N, H, W]`` of ``(global − predicted) / ‖predicted‖`` and the global points not codable so.

        ``predicted`` (three coordinate planes) is the Sim(3) of the *decoded* local points, exactly as the
        decoder computes it (closed loop): the global error is then only the residual's rounding.
        """
        scale = np.sqrt(sum(plane.astype(np.float64) ** 2 for plane in predicted)) * self.residual_step
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.stack([(glob[..., i] - plane) / scale for i, plane in enumerate(predicted)])
            codable = codable & (scale > 0) & (np.abs(relative) < 2**30).all(0)
        codes = np.stack([quantise(relative[i], 1.0, codable) for i in range(3)])
        return codes, make_exceptions(glob, has_point(glob) & ~codable)

    def _conf_codes(self, conf: np.ndarray, above_one: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return quantise(np.log(conf.astype(np.float64) - 1.0), self.conf_step, above_one)

    def decode(self, columns: dict[str, bytes], n: int, h: int, w: int) -> dict[str, np.ndarray]:
        header = json.loads(column(columns, "sup_header"))
        check_global_target(header["global_target"])
        params = np.frombuffer(column(columns, "sup_view_params"), dtype="<f8")
        if params.size != n * 17:
            raise ValueError(f"sup_view_params: {params.size} float64 values, expected {n} views x 17")
        params = params.reshape(n, 17)
        mask_bytes = unpack_bytes(column(columns, "sup_masks"), (4 * n * h * w + 7) // 8, "sup_masks")
        masks = np.unpackbits(np.frombuffer(mask_bytes, dtype=np.uint8), count=4 * n * h * w).view(bool)
        local_valid, global_valid, conf_local_one, conf_global_one = masks.reshape(4, n, h, w)
        counts = header["exceptions"]
        exception_bytes = unpack_bytes(column(columns, "sup_exceptions"), 16 * sum(counts), "sup_exceptions")
        local_exceptions, global_exceptions = split_exceptions(exception_bytes, counts)
        depth_codes = unpack_plane(column(columns, "sup_local_depth"), (n, h, w), "sup_local_depth")
        ray_codes = unpack_plane(column(columns, "sup_local_rays"), (2, n, h, w), "sup_local_rays")
        local, global_planes = decode_geometry(
            header, params[:, :4], params[:, 4:], depth_codes, ray_codes, local_valid, local_exceptions
        )
        if header["global_target"] == "global_head":
            codes = unpack_plane(column(columns, "sup_global_residual"), (3, n, h, w), "sup_global_residual")
            scale = np.sqrt(sum(plane * plane for plane in global_planes))
            scale *= np.float32(header["residual_step"])
            for plane, plane_codes in zip(global_planes, codes, strict=True):
                plane += plane_codes.astype(np.float32) * scale
        glob = np.stack(global_planes, axis=-1)
        if not global_valid.all():
            glob[~global_valid] = 0.0
        set_exceptions(glob, global_exceptions)
        conf_step = header["conf_step"]
        conf_local_codes = unpack_plane(column(columns, "sup_conf_local"), (n, h, w), "sup_conf_local")
        conf_global_codes = unpack_plane(column(columns, "sup_conf_global"), (n, h, w), "sup_conf_global")
        if header["conf_global_from_local"]:
            conf_global_codes += conf_local_codes
        return {
            "pts3d_global": glob,
            "conf_global": decode_conf(conf_global_codes, conf_global_one, conf_step),
            "pts3d_local": local,
            "conf_local": decode_conf(conf_local_codes, conf_local_one, conf_step),
        }


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


def decode_geometry(
    header: dict[str, Any],
    pinhole: np.ndarray,
    sim3: np.ndarray,
    depth_codes: np.ndarray,
    ray_codes: np.ndarray,
    local_valid: np.ndarray,
    local_exceptions: Exceptions,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Local points ``[N, H, W, 3]`` float32 from their codes, and the same moved by each view's Sim(3)
    ``[N, 13]`` as three coordinate planes ``[N, H, W]`` (where the local point is missing: arbitrary).

    Plain numpy element-wise work on contiguous planes: one thread, no BLAS.
    """
    n, h, w = depth_codes.shape
    z = exp_of_codes(depth_codes, header["depth_step"])
    step = np.float32(header["ray_step"])
    local_planes = []
    for codes, ray in zip(ray_codes, pinhole_rays(pinhole, h, w), strict=True):
        plane = codes.astype(np.float32)
        plane *= step
        plane += ray
        plane *= z
        local_planes.append(plane)
    local_planes.append(z)
    index, values = local_exceptions
    for plane, value in zip(local_planes, values.T, strict=True):
        plane.reshape(-1)[index] = value
    linear = (sim3[:, 0, None] * sim3[:, 1:10]).astype(np.float32).reshape(n, 3, 3, 1, 1)
    shift = sim3[:, 10:13].astype(np.float32).reshape(n, 3, 1, 1)
    global_planes, term = [], np.empty_like(z)
    for r in range(3):
        plane = np.multiply(local_planes[0], linear[:, r, 0])
        for c in (1, 2):
            plane += np.multiply(local_planes[c], linear[:, r, c], out=term)
        plane += shift[:, r]
        global_planes.append(plane)
    local = np.stack(local_planes, axis=-1)
    if not local_valid.all():
        local[~local_valid] = 0.0
    return local, global_planes


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


def empty_exceptions() -> Exceptions:
    return np.zeros(0, dtype="<u4"), np.zeros((0, 3), dtype="<f4")


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
    if version != codec.version:
        raise ValueError(f"cache row has codec {name!r} version {version}; this build decodes version {codec.version}")
    columns = {key: value for key, value in row.items() if key.startswith("sup_")}
    return codec.decode(columns, int(row["N"]), int(row["H"]), int(row["W"]))
