"""Procedural indoor rooms with exact ground truth: the embedded default dataset.

A room is an axis-aligned box (world frame: x, y on the floor, z up; floor at z = 0) holding 3-15
objects (boxes, possibly yawed; spheres; vertical cylinders) that rest on the floor and stay clear of
the walls. Rendering is exact ray casting on the CPU (vectorised numpy; geometry in float64, shading
in float32): one ray per pixel centre, analytic intersections, nearest hit. Colour depends only on
the hit point and its surface (solid procedural textures evaluated at the 3D point, Lambertian
shading from a fixed point light plus ambient, no shadows), so a surface looks the same from every
view. Depth is z in the camera frame.

Everything is deterministic for ``(index, seed)``; different seeds give different rooms.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3r.config import D3RConfig, ScenesConfig
from d3r.geometry import centred_K
from d3r.scenes.colmap import write_colmap_scene
from d3r.scenes.records import Scene, View

logger = logging.getLogger(__name__)

CAMERA_PATHS = ("orbit", "walkthrough", "lookat")
MIN_OBJECTS, MAX_OBJECTS = 3, 15
WALL_MARGIN = 0.3  # metres between a camera and the walls, floor and ceiling
OBJECT_CLEARANCE = 0.25  # metres between a camera and any object
WALL_GAP = 0.05  # metres between an object's footprint and the walls
AMBIENT = 0.3
DIFFUSE = 0.7
BAND_PIXELS = 16384  # rays per rendering band
NUM_ROOM_SURFACES = 6  # x=0, x=max, y=0, y=max, floor, ceiling
PATTERNS = ("checker", "stripes", "blotches")

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Material:
    """A solid texture: ``pattern`` mixes ``base`` and ``accent`` as a function of the 3D point.

    Attributes:
        base, accent: RGB in [0, 1].
        pattern: one of ``PATTERNS``.
        scale: pattern period in metres.
        offset: shift of the pattern lattice (keeps lattice planes off the room's planes).
        waves: 4 wave vectors (cycles per pattern period): stripes use the first, blotches all four
            (two domain-warped sines).
        grain: 3 wave vectors (cycles per metre) of the fine detail added to every pattern.
    """

    base: Vec3
    accent: Vec3
    pattern: str
    scale: float
    offset: Vec3
    waves: tuple[Vec3, ...]
    grain: tuple[Vec3, ...]


@dataclass(frozen=True)
class Primitive:
    """An object of the room.

    Attributes:
        kind: ``box`` | ``sphere`` | ``cylinder`` (vertical axis).
        center: centre of the shape (for all kinds the middle of its bounding box), world metres.
        half_size: box half extents (local x, y, z); sphere ``(r, r, r)``; cylinder ``(r, r, h / 2)``.
        yaw: box rotation about the world z axis (radians); 0 for the other kinds.
        material: its texture.
    """

    kind: str
    center: Vec3
    half_size: Vec3
    yaw: float
    material: Material

    @property
    def footprint_radius(self) -> float:
        return float(np.hypot(self.half_size[0], self.half_size[1]))

    @property
    def top(self) -> float:
        return self.center[2] + self.half_size[2]


@dataclass(frozen=True)
class RoomSpec:
    """The geometry and appearance of one room.

    Attributes:
        index, seed: what it was generated from.
        size: room extents (x, y, z) in metres; the room spans ``[0, size]`` on each axis.
        objects: the primitives standing on the floor.
        room_materials: 6 materials: walls x=0, x=max, y=0, y=max, then floor, ceiling.
        light: point-light position (world metres).
    """

    index: int
    seed: int
    size: Vec3
    objects: tuple[Primitive, ...]
    room_materials: tuple[Material, ...]
    light: Vec3

    @property
    def materials(self) -> tuple[Material, ...]:
        """Material per surface id: 0-5 the room's planes, then one per object."""
        return self.room_materials + tuple(o.material for o in self.objects)


# ---------------------------------------------------------------------------------------------
# Room generation


def _rng(*keys: int) -> np.random.Generator:
    if any(k < 0 for k in keys):
        raise ValueError(f"synthetic rooms need non-negative index and seed, got {keys}")
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


def _random_material(rng: np.random.Generator) -> Material:
    base = rng.uniform(0.15, 0.9, 3)
    accent = np.clip(base + rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.5, 3), 0.05, 1.0)
    waves = rng.normal(size=(4, 3))
    waves *= rng.uniform(0.5, 1.0, (4, 1)) / np.linalg.norm(waves, axis=1, keepdims=True)
    return Material(
        base=tuple(base.tolist()),
        accent=tuple(accent.tolist()),
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        scale=float(rng.uniform(0.12, 0.5)),
        offset=tuple(rng.uniform(0.1, 0.9, 3).tolist()),
        waves=tuple(tuple(w.tolist()) for w in waves),
        grain=tuple(tuple(w.tolist()) for w in rng.normal(size=(3, 3)) * rng.uniform(6.0, 14.0)),
    )


def _random_primitive(rng: np.random.Generator, material: Material) -> Primitive:
    kind = ("box", "sphere", "cylinder")[int(rng.integers(3))]
    if kind == "box":
        half = (rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6))
        yaw = float(rng.uniform(0, np.pi)) if rng.random() < 0.6 else 0.0
    elif kind == "sphere":
        r = rng.uniform(0.15, 0.5)
        half, yaw = (r, r, r), 0.0
    else:
        r = rng.uniform(0.1, 0.4)
        half, yaw = (r, r, rng.uniform(0.2, 0.7)), 0.0
    half = tuple(float(h) for h in half)
    return Primitive(kind, (0.0, 0.0, half[2]), half, yaw, material)


def _placed(rng: np.random.Generator, shape: Primitive, objects: list[Primitive], size: Vec3) -> Primitive | None:
    """``shape`` moved to a random floor spot clear of the walls and of ``objects`` (50 tries), or None."""
    radius = shape.footprint_radius
    for _attempt in range(50):
        xy = rng.uniform([radius + WALL_GAP] * 2, [size[0] - radius - WALL_GAP, size[1] - radius - WALL_GAP])
        if all(np.hypot(*(xy - o.center[:2])) > radius + o.footprint_radius + 0.05 for o in objects):
            center = (float(xy[0]), float(xy[1]), shape.center[2])
            return Primitive(shape.kind, center, shape.half_size, shape.yaw, shape.material)
    return None


def room_spec(index: int, seed: int) -> RoomSpec:
    """The room number ``index`` of dataset ``seed`` (deterministic).

    3-15 objects are drawn and placed by rejection so that footprints (bounding circles) neither
    cross the walls nor overlap each other; a shape that finds no spot is dropped, and shapes are
    drawn until at least MIN_OBJECTS stand in the room.
    """
    rng = _rng(seed, index, 0)
    size = (float(rng.uniform(4, 8)), float(rng.uniform(3, 6)), float(rng.uniform(2.5, 3.5)))
    wanted = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    objects: list[Primitive] = []
    drawn = 0
    while drawn < wanted or len(objects) < MIN_OBJECTS:
        drawn += 1
        if (obj := _placed(rng, _random_primitive(rng, _random_material(rng)), objects, size)) is not None:
            objects.append(obj)
    room_materials = tuple(_random_material(rng) for _ in range(NUM_ROOM_SURFACES))
    light = (size[0] * rng.uniform(0.3, 0.7), size[1] * rng.uniform(0.3, 0.7), size[2] - 0.2)
    return RoomSpec(index, seed, size, tuple(objects), room_materials, tuple(float(v) for v in light))


# ---------------------------------------------------------------------------------------------
# Ray casting: origins and directions as (x, y, z) component arrays, broadcastable to [N]


def _yaw_to_local(v: tuple[np.ndarray, ...], yaw: float) -> tuple[np.ndarray, ...]:
    c, s = np.cos(yaw), np.sin(yaw)
    return (c * v[0] + s * v[1], -s * v[0] + c * v[1], v[2])


def _intersect_room(size: Vec3, o, d) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance of rays starting inside the room, and the id (0-5) of the plane hit."""
    t, surface = None, None
    for axis in range(3):
        ahead = d[axis] > 0
        with np.errstate(divide="ignore"):
            t_axis = np.where(ahead, size[axis] - o[axis], o[axis]) / np.abs(d[axis])
        sid = 2 * axis + ahead
        if t is None:
            t, surface = t_axis, sid.astype(np.int64)
        else:
            closer = t_axis < t
            t = np.where(closer, t_axis, t)
            surface = np.where(closer, sid, surface)
    return t, surface


def _intersect_box(obj: Primitive, o, d) -> np.ndarray:
    oc = tuple(o[i] - obj.center[i] for i in range(3))
    ol, dl = _yaw_to_local(oc, obj.yaw), _yaw_to_local(d, obj.yaw)
    t_near, t_far = -np.inf, np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):
            inv = 1.0 / dl[axis]
            t1 = (-obj.half_size[axis] - ol[axis]) * inv
            t2 = (obj.half_size[axis] - ol[axis]) * inv
            t_near = np.maximum(t_near, np.minimum(t1, t2))
            t_far = np.minimum(t_far, np.maximum(t1, t2))
    return np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)


def _intersect_sphere(obj: Primitive, o, d) -> np.ndarray:
    oc = tuple(o[i] - obj.center[i] for i in range(3))
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = d[0] * oc[0] + d[1] * oc[1] + d[2] * oc[2]
    c = oc[0] * oc[0] + oc[1] * oc[1] + oc[2] * oc[2] - obj.half_size[0] ** 2
    return _nearest_root(a, b, c)


def _nearest_root(a, b, c) -> np.ndarray:
    """Smallest positive root of a t² + 2 b t + c = 0 (inf when none)."""
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(np.maximum(disc, 0.0))
        near, far = (-b - sq) / a, (-b + sq) / a
    t = np.where(near > 0, near, np.where(far > 0, far, np.inf))
    return np.where((disc >= 0) & (a > 0), t, np.inf)


def _intersect_cylinder(obj: Primitive, o, d) -> np.ndarray:
    r, hz = obj.half_size[0], obj.half_size[2]
    oc = tuple(o[i] - obj.center[i] for i in range(3))
    a = d[0] * d[0] + d[1] * d[1]
    b = d[0] * oc[0] + d[1] * oc[1]
    c = oc[0] * oc[0] + oc[1] * oc[1] - r * r
    t_side = _nearest_root(a, b, c)
    z_side = oc[2] + t_side * d[2]
    best = np.where(np.abs(z_side) <= hz, t_side, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for cap in (hz, -hz):
            t_cap = (cap - oc[2]) / d[2]
            x, y = oc[0] + t_cap * d[0], oc[1] + t_cap * d[1]
            ok = (t_cap > 0) & (x * x + y * y <= r * r)
            best = np.minimum(best, np.where(ok, t_cap, np.inf))
    return best


_INTERSECT = {"box": _intersect_box, "sphere": _intersect_sphere, "cylinder": _intersect_cylinder}


Components = tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, y, z), each [M]: structure of arrays


def _object_normals(obj: Primitive, p: Components) -> Components:
    """Outward unit normals at points ``p`` on the object's surface."""
    local = tuple(p[i] - obj.center[i] for i in range(3))
    half = obj.half_size
    if obj.kind == "sphere":
        return tuple(c / half[0] for c in local)
    if obj.kind == "cylinder":
        radial = np.hypot(local[0], local[1])
        on_cap = np.abs(np.abs(local[2]) - half[2]) < np.abs(radial - half[0])
        side = 1.0 - on_cap
        return (local[0] / half[0] * side, local[1] / half[0] * side, np.sign(local[2]) * on_cap)
    boxed = _yaw_to_local(local, obj.yaw)
    ratio = [np.abs(boxed[i]) / half[i] for i in range(3)]
    largest = np.maximum(np.maximum(ratio[0], ratio[1]), ratio[2])
    normal = tuple(np.sign(boxed[i]) * (ratio[i] == largest) for i in range(3))
    return _yaw_to_local(normal, -obj.yaw)


def _room_normal(surface: int) -> tuple[float, float, float]:
    n = [0.0, 0.0, 0.0]
    n[surface // 2] = -1.0 if surface % 2 else 1.0
    return (n[0], n[1], n[2])


# ---------------------------------------------------------------------------------------------
# Solid textures and shading (float32, structure of arrays: no BLAS, no short-row reductions)

_TWO_PI = np.float32(2 * np.pi)


def _dot(p: Components, w) -> np.ndarray:
    return p[0] * np.float32(w[0]) + p[1] * np.float32(w[1]) + p[2] * np.float32(w[2])


def _texture(material: Material, p: Components) -> np.ndarray:
    """Albedo ``[3, M]`` float32 (about [0, 1]) of the solid texture at world points ``p`` (float32)."""
    q = tuple(p[i] * np.float32(1.0 / material.scale) + np.float32(material.offset[i]) for i in range(3))
    if material.pattern == "checker":
        mix = np.mod(np.floor(q[0]) + np.floor(q[1]) + np.floor(q[2]), np.float32(2.0))
    elif material.pattern == "stripes":
        mix = 0.5 + 0.5 * np.sin(_TWO_PI * _dot(q, material.waves[0]))
    else:
        w = [_TWO_PI * _dot(q, wave) for wave in material.waves]
        blobs = np.sin(w[0] + 1.7 * np.sin(w[1])) + np.sin(w[2] + 1.7 * np.sin(w[3]))
        mix = np.clip(0.5 + 0.6 * blobs, 0.0, 1.0)
    grain = 1.0 + np.float32(0.4 / 3) * sum(np.sin(_TWO_PI * _dot(p, wave)) for wave in material.grain)
    return np.stack([
        (np.float32(b) + np.float32(a - b) * mix) * grain for b, a in zip(material.base, material.accent, strict=True)
    ])


def _shade(spec: RoomSpec, surface: int, p: Components) -> np.ndarray:
    """RGB ``[3, M]`` float32 in [0, 1] of surface ``surface`` at points ``p`` (float64 components)."""
    if surface < NUM_ROOM_SURFACES:
        normal = _room_normal(surface)
    else:
        normal = _object_normals(spec.objects[surface - NUM_ROOM_SURFACES], p)
    p32 = tuple(c.astype(np.float32) for c in p)
    to_light = tuple(np.float32(spec.light[i]) - p32[i] for i in range(3))
    facing = sum(np.asarray(normal[i], dtype=np.float32) * to_light[i] for i in range(3))
    distance = np.sqrt(to_light[0] ** 2 + to_light[1] ** 2 + to_light[2] ** 2)
    light = AMBIENT + DIFFUSE * np.maximum(facing, 0.0) / distance
    albedo = _texture(spec.materials[surface], p32)
    return np.clip(albedo * light, 0.0, 1.0)


Region = tuple[slice, ...]
FULL: Region = (Ellipsis,)


def _nearest_hits(spec: RoomSpec, o, d, regions: list[Region | None]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit distance and surface id for rays with components ``o``, ``d`` (same shape, or scalar o).

    ``regions[k]`` is the part of the ray arrays that object k can be hit in (None: nowhere).
    """
    t, surface = _intersect_room(spec.size, o, d)
    for k, (obj, region) in enumerate(zip(spec.objects, regions, strict=True)):
        if region is None:
            continue
        o_r = tuple(c if np.ndim(c) == 0 else c[region] for c in o)
        t_obj = _INTERSECT[obj.kind](obj, o_r, tuple(c[region] for c in d))
        closer = t_obj < t[region]
        t[region] = np.where(closer, t_obj, t[region])
        surface[region] = np.where(closer, NUM_ROOM_SURFACES + k, surface[region])
    return t, surface


def _colours(spec: RoomSpec, points: Components, surface: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[N, 3]`` of ``points`` (components ``[N]``) lying on surfaces ``surface`` ``[N]``.

    Pixels are grouped by surface with one stable radix sort, shaded per group, and put back.
    """
    order = np.argsort(surface.astype(np.uint8), kind="stable")
    counts = np.bincount(surface, minlength=len(spec.materials))
    grouped = tuple(np.take(c, order) for c in points)
    colour = np.empty((3, len(order)), dtype=np.float32)
    start = 0
    for sid, count in enumerate(counts):
        if count:
            group = slice(start, start + count)
            colour[:, group] = _shade(spec, sid, tuple(c[group] for c in grouped))
        start += count
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return np.round(np.take(colour, inverse, axis=1) * np.float32(255.0)).astype(np.uint8).T


def cast_rays(spec: RoomSpec, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trace arbitrary rays from inside the room.

    Args:
        origins: ``[3]`` or ``[N, 3]`` world points inside the room.
        directions: ``[N, 3]`` (need not be unit length).

    Returns:
        ``t`` ``[N]`` float64 such that the hit point is ``origin + t * direction``, and its colour
        ``[N, 3]`` uint8.
    """
    origins = np.asarray(origins, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64)
    o = tuple(np.asarray(origins[..., i]) for i in range(3))
    d = tuple(np.ascontiguousarray(directions[:, i]) for i in range(3))
    t, surface = _nearest_hits(spec, o, d, [FULL] * len(spec.objects))
    return t, _colours(spec, tuple(o[i] + t * d[i] for i in range(3)), surface)


def _object_corners(obj: Primitive) -> np.ndarray:
    """``[8, 3]`` world corners of a box that contains the object."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs * np.asarray(obj.half_size)
    x, y, z = _yaw_to_local((local[:, 0], local[:, 1], local[:, 2]), -obj.yaw)
    return np.stack([x, y, z], axis=1) + np.asarray(obj.center)


Window = tuple[int, int, int, int]  # rows v0:v1, columns u0:u1 of an image


def _screen_window(obj: Primitive, K: np.ndarray, pose: np.ndarray, size: tuple[int, int]) -> Window | None:
    """Pixels (v0, v1, u0, u1) outside which no ray of this camera can hit ``obj``; None if none can."""
    width, height = size
    cam = (_object_corners(obj) - pose[:3, 3]) @ pose[:3, :3]
    if np.all(cam[:, 2] <= 0):
        return None
    if np.any(cam[:, 2] <= 1e-6):
        return (0, height, 0, width)
    pix = cam @ np.asarray(K).T
    u, v = pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2]
    u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, width)
    v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, height)
    return (v0, v1, u0, u1) if u0 < u1 and v0 < v1 else None


def _band_region(window: Window | None, r0: int, r1: int) -> Region | None:
    """The part of ``window`` inside image rows r0:r1, as slices into that band."""
    if window is None or window[1] <= r0 or window[0] >= r1:
        return None
    return (slice(max(window[0], r0) - r0, min(window[1], r1) - r0), slice(window[2], window[3]))


def _ray_components(K: np.ndarray, pose: np.ndarray, width: int, r0: int, r1: int) -> tuple[np.ndarray, ...]:
    """(dx, dy, dz), each ``[r1 - r0, W]``: world directions through the pixel centres of rows r0:r1,
    scaled so that the ray parameter t is the camera z."""
    pixel_to_world = np.asarray(pose, dtype=np.float64)[:3, :3] @ np.linalg.inv(K)
    u = np.arange(width, dtype=np.float64)
    v = np.arange(r0, r1, dtype=np.float64)[:, None]
    return tuple(m[0] * u + (m[1] * v + m[2]) for m in pixel_to_world)


def pixel_rays(K: np.ndarray, pose: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """World directions ``[H, W, 3]`` through every pixel centre, scaled so that t is camera z."""
    width, height = size
    return np.stack(_ray_components(K, pose, width, 0, height), axis=-1)


def render_view(
    spec: RoomSpec, K: np.ndarray, pose: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Render one camera: image ``[H, W, 3]`` uint8 and depth ``[H, W]`` float32 (camera z, metres).

    ``size`` is (W, H); ``pose`` is camera-to-world (OpenCV); ``K`` has pixel centres at integers.
    Objects are only intersected inside their projected bounding boxes (exact: a conservative cull);
    rows are processed in bands of about BAND_PIXELS rays so temporaries stay small and cached.
    """
    width, height = size
    pose = np.asarray(pose, dtype=np.float64)
    origin = tuple(np.asarray(c) for c in pose[:3, 3])
    windows = [_screen_window(obj, K, pose, size) for obj in spec.objects]
    image = np.empty((height, width, 3), dtype=np.uint8)
    depth = np.empty((height, width), dtype=np.float32)
    band_rows = max(1, BAND_PIXELS // width)
    for r0 in range(0, height, band_rows):
        r1 = min(r0 + band_rows, height)
        d = _ray_components(K, pose, width, r0, r1)
        t, surface = _nearest_hits(spec, origin, d, [_band_region(w, r0, r1) for w in windows])
        points = tuple((o + t * di).ravel() for o, di in zip(origin, d, strict=True))
        image[r0:r1] = _colours(spec, points, surface.ravel()).reshape(r1 - r0, width, 3)
        depth[r0:r1] = t
    return image, depth


# ---------------------------------------------------------------------------------------------
# Cameras


def intrinsics(size: tuple[int, int], hfov_deg: float) -> np.ndarray:
    """``[3, 3]`` pinhole K for (W, H) and a horizontal field of view; principal point at the centre."""
    width, height = size
    return centred_K(width / (2.0 * np.tan(np.radians(hfov_deg) / 2.0)), width, height)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` (OpenCV: x right, y down, z forward) with zero roll (world z up)."""
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    norm = np.linalg.norm(right)
    if norm < 1e-6:
        raise ValueError(f"look_at: view direction {forward} is vertical; roll is undefined")
    right /= norm
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def object_clearance_violated(spec: RoomSpec, point: np.ndarray, clearance: float = OBJECT_CLEARANCE) -> int | None:
    """Index of an object that ``point`` ``[3]`` is inside of (or closer than ``clearance`` to), else None.

    Tests each object's shape grown by ``clearance`` (boxes grown per axis: conservative).
    """
    for k, obj in enumerate(spec.objects):
        rel = np.asarray(point, dtype=np.float64) - np.asarray(obj.center)
        half = np.asarray(obj.half_size) + clearance
        if obj.kind == "sphere":
            inside = np.linalg.norm(rel) < half[0]
        elif obj.kind == "box":
            local = np.array(_yaw_to_local(tuple(rel), obj.yaw))
            inside = bool(np.all(np.abs(local) < half))
        else:
            inside = np.hypot(rel[0], rel[1]) < half[0] and abs(rel[2]) < half[2]
        if inside:
            return k
    return None


def camera_is_valid(spec: RoomSpec, position: np.ndarray) -> bool:
    """Inside the room at least WALL_MARGIN from its planes, and clear of every object."""
    p = np.asarray(position, dtype=np.float64)
    inside = bool(np.all(p >= WALL_MARGIN - 1e-9) and np.all(p <= np.asarray(spec.size) - WALL_MARGIN + 1e-9))
    return inside and object_clearance_violated(spec, p) is None


def _place_camera(spec: RoomSpec, position: np.ndarray) -> np.ndarray:
    """Clamp into the room's margins, then lift above any object the camera would be in or touch."""
    p = np.clip(np.asarray(position, dtype=np.float64), WALL_MARGIN, np.asarray(spec.size) - WALL_MARGIN)
    while (k := object_clearance_violated(spec, p)) is not None:
        p[2] = spec.objects[k].top + OBJECT_CLEARANCE + 1e-3
    if not camera_is_valid(spec, p):
        raise ValueError(f"room {spec.index} (seed {spec.seed}): no valid camera position near {position}")
    return p


def _orbit(spec: RoomSpec, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    size = np.asarray(spec.size)
    centre = np.array([size[0] / 2, size[1] / 2, rng.uniform(0.4, 1.0)])
    radii = (size[:2] / 2 - WALL_MARGIN) * rng.uniform(0.55, 0.95)
    start, span = rng.uniform(0, 2 * np.pi), rng.uniform(np.pi / 2, 2 * np.pi)
    height = rng.uniform(1.2, 1.9)
    angles = start + span * np.arange(n) / max(n, 1)
    eyes = [np.array([centre[0] + radii[0] * np.cos(a), centre[1] + radii[1] * np.sin(a), height]) for a in angles]
    return [(eye, centre) for eye in eyes]


def _walkthrough(spec: RoomSpec, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    size = np.asarray(spec.size)
    amp = (size[:2] / 2 - WALL_MARGIN) * rng.uniform(0.5, 0.9, 2)
    freq, phase = rng.uniform(0.7, 1.6, 2), rng.uniform(0, 2 * np.pi, 2)
    s = rng.uniform(0, 1) + rng.uniform(0.25, 0.5) * np.arange(n) / max(n - 1, 1)
    height, pitch = rng.uniform(1.3, 1.7), np.tan(np.radians(rng.uniform(-20, -3)))
    views = []
    for si in s:
        arg = 2 * np.pi * freq * si + phase
        eye = np.array([size[0] / 2 + amp[0] * np.sin(arg[0]), size[1] / 2 + amp[1] * np.sin(arg[1]), height])
        tangent = amp * freq * np.cos(arg)
        tangent /= max(np.linalg.norm(tangent), 1e-9)
        views.append((eye, eye + np.array([tangent[0], tangent[1], pitch])))
    return views


def _lookat(spec: RoomSpec, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    size = np.asarray(spec.size)
    views = []
    for _ in range(n):
        eye = rng.uniform([WALL_MARGIN, WALL_MARGIN, 0.9], [size[0] - WALL_MARGIN, size[1] - WALL_MARGIN, 2.0])
        obj = spec.objects[int(rng.integers(len(spec.objects)))]
        target = np.asarray(obj.center) + rng.uniform(-0.5, 0.5, 3) * np.asarray(obj.half_size)
        views.append((eye, target))
    return views


_PATHS = {"orbit": _orbit, "walkthrough": _walkthrough, "lookat": _lookat}


def resolve_camera_path(spec: RoomSpec, path: str, seed: int) -> str:
    """The concrete path: ``mixed`` picks one of CAMERA_PATHS per scene from the seed."""
    if path == "mixed":
        return CAMERA_PATHS[int(_rng(seed, spec.index, 1).integers(len(CAMERA_PATHS)))]
    if path not in _PATHS:
        raise ValueError(f"camera_path: expected one of {(*CAMERA_PATHS, 'mixed')}, got {path!r}")
    return path


def _aim(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pose looking from ``eye`` to ``target``, with the pitch kept within ±70° (no vertical views)."""
    delta = target - eye
    horizontal = np.hypot(delta[0], delta[1])
    if horizontal < 1e-6:
        delta = np.array([1.0, 0.0, 0.0])
        horizontal = 1.0
    max_vertical = np.tan(np.radians(70)) * horizontal
    delta[2] = np.clip(delta[2], -max_vertical, max_vertical)
    return look_at(eye, eye + delta)


def camera_poses(
    spec: RoomSpec, num_views: int, size: tuple[int, int], path: str = "mixed", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cameras of one scene (no rendering): K ``[3, 3]`` and c2w poses ``[N, 4, 4]``, both float64.

    Positions stay inside the room (≥ WALL_MARGIN from every plane) and ≥ OBJECT_CLEARANCE from
    every object; roll is 0; the horizontal field of view is 55-75° (per scene).
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    path = resolve_camera_path(spec, path, seed)
    rng = _rng(seed, spec.index, 2, CAMERA_PATHS.index(path))
    K = intrinsics(size, rng.uniform(55.0, 75.0))
    poses = [_aim(_place_camera(spec, eye), target) for eye, target in _PATHS[path](spec, num_views, rng)]
    return K, np.stack(poses)


# ---------------------------------------------------------------------------------------------
# Scenes


def _view_name(i: int) -> str:
    return f"view_{i:03d}"


def _scene_meta(spec: RoomSpec, path: str) -> dict:
    return {"room_size": spec.size, "num_objects": len(spec.objects), "camera_path": path, "seed": spec.seed}


def render_scene(
    index: int, seed: int, num_views: int, size: tuple[int, int], camera_path: str = "mixed"
) -> Scene:
    """Room ``index`` of dataset ``seed`` with every view rendered (image, depth, K, pose)."""
    spec = room_spec(index, seed)
    K, poses = camera_poses(spec, num_views, size, camera_path, seed)
    views = []
    for i, pose in enumerate(poses):
        image, depth = render_view(spec, K, pose, size)
        views.append(View(name=_view_name(i), image=image, K=K.copy(), pose=pose, depth=depth))
    path = resolve_camera_path(spec, camera_path, seed)
    return Scene(f"room_{index:04d}", "synthetic", views, meta=_scene_meta(spec, path))


def _render_loader(spec: RoomSpec, size: tuple[int, int], view: View) -> View:
    """Lazy loader of a synthetic view (module level, so it pickles)."""
    image, depth = render_view(spec, view.K, view.pose, size)
    return view.with_(image=image, depth=depth)


def synthetic_scenes(config: ScenesConfig | D3RConfig) -> Iterator[Scene]:
    """``num_scenes`` rooms, lazily: views carry K and pose; pixels and depth render on ``view.load()``."""
    scenes = config.scenes if isinstance(config, D3RConfig) else config
    size = (int(scenes.render_size[0]), int(scenes.render_size[1]))
    for index in range(scenes.num_scenes):
        spec = room_spec(index, scenes.seed)
        K, poses = camera_poses(spec, scenes.views_per_scene, size, scenes.camera_path, scenes.seed)
        loader = functools.partial(_render_loader, spec, size)
        views = [
            View(name=_view_name(i), K=K.copy(), pose=pose, loader=loader, meta={"has_depth": True})
            for i, pose in enumerate(poses)
        ]
        path = resolve_camera_path(spec, scenes.camera_path, scenes.seed)
        yield Scene(f"room_{index:04d}", "synthetic", views, meta=_scene_meta(spec, path))


def export_scenes(
    out_dir: str | Path,
    num_scenes: int,
    num_views: int,
    size: tuple[int, int],
    seed: int,
    camera_path: str = "mixed",
) -> list[Path]:
    """Render rooms 0..num_scenes-1 and write each to ``out_dir/room_NNNN`` in the COLMAP text layout."""
    out_dir = Path(out_dir)
    paths = []
    for index in range(num_scenes):
        scene = render_scene(index, seed, num_views, size, camera_path)
        paths.append(write_colmap_scene(scene, out_dir / scene.id))
        logger.info("wrote %s (%s, %d views)", paths[-1], scene.meta["camera_path"], len(scene))
    return paths
