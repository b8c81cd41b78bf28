"""COLMAP models in and out: sparse models (text and binary), dense depth maps, our scene records.

Layout of a scene folder (what ``d3r synth`` writes and what COLMAP's tools read)::

    images/NAME.png                 the pixels
    sparse/0/cameras.txt|.bin       intrinsics (we write PINHOLE)
    sparse/0/images.txt|.bin        world-to-camera quaternion (qw qx qy qz) + translation per image
    sparse/0/points3D.txt|.bin      may be empty
    depths/NAME.npy                 ours: float32 metres, image size, 0 = no value (optional)
    stereo/depth_maps/NAME.EXT.{geometric,photometric}.bin   COLMAP dense depth (optional)

A dense workspace (``sparse/`` holding the model directly) is read the same way.

Conventions at the boundary: COLMAP puts the centre of the first pixel at (0.5, 0.5), we put it at
(0, 0), so ``cx_ours = cx_colmap - 0.5`` (same for cy). COLMAP stores world-to-camera; we store
camera-to-world. Both use x right, y down, z forward. Distortion is never silently dropped: it is
recorded in ``view.meta["distortion"]`` and a warning is logged (the pixels are used as they are).
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pycolmap
from PIL import Image
from scipy.spatial.transform import Rotation

from d3r.scenes.errors import InputFileError, display_path, os_error_reason
from d3r.scenes.folders import Rejects, sorted_entries
from d3r.scenes.images import ImageReadError, natural_key, read_image, read_image_size
from d3r.scenes.records import Scene, View

logger = logging.getLogger(__name__)

PIXEL_CENTRE_SHIFT = 0.5  # COLMAP pixel-centre coordinate minus ours

# COLMAP camera models: id → (name, parameter names). Focal and principal point come first.
CAMERA_MODELS: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("SIMPLE_PINHOLE", ("f", "cx", "cy")),
    1: ("PINHOLE", ("fx", "fy", "cx", "cy")),
    2: ("SIMPLE_RADIAL", ("f", "cx", "cy", "k")),
    3: ("RADIAL", ("f", "cx", "cy", "k1", "k2")),
    4: ("OPENCV", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    5: ("OPENCV_FISHEYE", ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")),
    6: ("FULL_OPENCV", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    7: ("FOV", ("fx", "fy", "cx", "cy", "omega")),
    8: ("SIMPLE_RADIAL_FISHEYE", ("f", "cx", "cy", "k")),
    9: ("RADIAL_FISHEYE", ("f", "cx", "cy", "k1", "k2")),
    10: ("THIN_PRISM_FISHEYE", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1")),
}
MODEL_IDS = {name: model_id for model_id, (name, _) in CAMERA_MODELS.items()}
_INTRINSIC_NAMES = frozenset({"f", "fx", "fy", "cx", "cy"})
DENSE_DEPTH_KINDS = ("geometric", "photometric")


class ColmapFormatError(InputFileError):
    """A malformed COLMAP file: names the file, the line (text) or byte offset (binary), and the problem."""

    def __init__(self, path: str | Path, where: str, reason: str):
        super().__init__(path, f"{where}: {reason}")


@dataclass(frozen=True)
class ColmapCamera:
    """One row of cameras.txt / cameras.bin (COLMAP's pixel convention: params as stored)."""

    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class ColmapImage:
    """One image of images.txt / images.bin: world-to-camera rotation (quaternion) and translation."""

    id: int
    qvec: tuple[float, float, float, float]  # qw, qx, qy, qz
    tvec: tuple[float, float, float]
    camera_id: int
    name: str


# ---------------------------------------------------------------------------------------------
# Conversions


def camera_intrinsics(camera: ColmapCamera) -> tuple[np.ndarray, dict | None]:
    """Our ``[3, 3]`` K (pixel centres at integers) and the distortion (None for pinhole models)."""
    if camera.model not in MODEL_IDS:
        raise ValueError(f"camera {camera.id}: unknown COLMAP model {camera.model!r}")
    names = CAMERA_MODELS[MODEL_IDS[camera.model]][1]
    values = dict(zip(names, camera.params, strict=True))
    fx, fy = values.get("fx", values.get("f")), values.get("fy", values.get("f"))
    K = np.array([
        [fx, 0.0, values["cx"] - PIXEL_CENTRE_SHIFT],
        [0.0, fy, values["cy"] - PIXEL_CENTRE_SHIFT],
        [0.0, 0.0, 1.0],
    ])
    extra = {name: float(value) for name, value in values.items() if name not in _INTRINSIC_NAMES}
    return K, ({"model": camera.model, "params": extra} if extra else None)


def image_pose(image: ColmapImage) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` float64 from COLMAP's world-to-camera quaternion and translation."""
    qw, qx, qy, qz = image.qvec
    if qw == qx == qy == qz == 0:
        raise ValueError(f"image {image.name!r}: quaternion is zero")
    rotation = Rotation.from_quat([qx, qy, qz, qw]).as_matrix()
    pose = np.eye(4)
    pose[:3, :3] = rotation.T
    pose[:3, 3] = -rotation.T @ np.asarray(image.tvec, dtype=np.float64)
    return pose


# ---------------------------------------------------------------------------------------------
# Text files


def _data_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of every line that is not a comment."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text.startswith("#"):
                yield number, text


def _bad_line(path: Path, number: int, reason: str) -> ColmapFormatError:
    return ColmapFormatError(path, f"line {number}", reason)


def _parse(path: Path, number: int, what: str, convert, text: str):
    try:
        return convert(text)
    except ValueError:
        raise _bad_line(path, number, f"{what} {text!r} is not a valid {convert.__name__}") from None


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    """cameras.txt: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line."""
    cameras = {}
    for number, text in _data_lines(path):
        if not text:
            continue
        fields = text.split()
        if len(fields) < 4:
            raise _bad_line(path, number, f"expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[], got {text!r}")
        model = fields[1]
        if model not in MODEL_IDS:
            raise _bad_line(path, number, f"unknown camera model {model!r} (known: {sorted(MODEL_IDS)})")
        expected = len(CAMERA_MODELS[MODEL_IDS[model]][1])
        if len(fields) - 4 != expected:
            raise _bad_line(path, number, f"model {model} needs {expected} parameters, got {len(fields) - 4}")
        camera_id = _parse(path, number, "camera id", int, fields[0])
        width, height = (_parse(path, number, "size", int, v) for v in fields[2:4])
        params = tuple(_parse(path, number, "parameter", float, v) for v in fields[4:])
        cameras[camera_id] = ColmapCamera(camera_id, model, width, height, params)
    return cameras


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    """images.txt: per image a line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then a 2D-points line."""
    images = {}
    lines = iter(_data_lines(path))
    for number, text in lines:
        if not text:
            continue
        fields = text.split(maxsplit=9)
        if len(fields) < 10:
            raise _bad_line(path, number, f"expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {text!r}")
        image_id = _parse(path, number, "image id", int, fields[0])
        values = [_parse(path, number, "pose value", float, v) for v in fields[1:8]]
        camera_id = _parse(path, number, "camera id", int, fields[8])
        points = next(lines, (number + 1, ""))
        if len(points[1].split()) % 3:
            raise _bad_line(path, points[0], "2D points line must hold triples X Y POINT3D_ID")
        images[image_id] = ColmapImage(image_id, tuple(values[:4]), tuple(values[4:]), camera_id, fields[9])
    return images


def read_points3d_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """points3D.txt → xyz ``[P, 3]`` float64 and rgb ``[P, 3]`` uint8 (tracks are not kept)."""
    xyz, rgb = [], []
    for number, text in _data_lines(path):
        if not text:
            continue
        fields = text.split()
        if len(fields) < 8:
            raise _bad_line(path, number, f"expected POINT3D_ID X Y Z R G B ERROR TRACK[], got {text!r}")
        xyz.append([_parse(path, number, "coordinate", float, v) for v in fields[1:4]])
        rgb.append([_parse(path, number, "colour", int, v) for v in fields[4:7]])
    return np.asarray(xyz, dtype=np.float64).reshape(-1, 3), np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)


# ---------------------------------------------------------------------------------------------
# Binary files (little-endian, as COLMAP writes them)


def _read(handle: BinaryIO, path: Path, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    offset = handle.tell()
    data = handle.read(size)
    if len(data) != size:
        raise ColmapFormatError(path, f"byte {offset}", f"file ends early (needed {size} bytes, got {len(data)})")
    return struct.unpack("<" + fmt, data)


def _read_name(handle: BinaryIO, path: Path) -> str:
    offset, chars = handle.tell(), bytearray()
    while (char := handle.read(1)) != b"\x00":
        if not char:
            raise ColmapFormatError(path, f"byte {offset}", "image name is not null-terminated")
        chars += char
    return chars.decode("utf-8")


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    with open(path, "rb") as handle:
        (count,) = _read(handle, path, "Q")
        for _ in range(count):
            offset = handle.tell()
            camera_id, model_id, width, height = _read(handle, path, "iiQQ")
            if model_id not in CAMERA_MODELS:
                raise ColmapFormatError(path, f"byte {offset}", f"unknown camera model id {model_id}")
            model, names = CAMERA_MODELS[model_id]
            params = _read(handle, path, "d" * len(names))
            cameras[camera_id] = ColmapCamera(camera_id, model, width, height, tuple(params))
    return cameras


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    images = {}
    with open(path, "rb") as handle:
        (count,) = _read(handle, path, "Q")
        for _ in range(count):
            image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = _read(handle, path, "idddddddi")
            name = _read_name(handle, path)
            (num_points,) = _read(handle, path, "Q")
            handle.seek(24 * num_points, 1)  # (x, y, point3D_id) triples are not kept
            images[image_id] = ColmapImage(image_id, (qw, qx, qy, qz), (tx, ty, tz), camera_id, name)
        offset = handle.tell()
        if handle.seek(0, 2) < offset:
            raise ColmapFormatError(path, f"byte {offset}", "file ends inside a 2D points list")
    return images


def read_points3d_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """points3D.bin → xyz ``[P, 3]`` float64 and rgb ``[P, 3]`` uint8 (tracks are skipped)."""
    xyz, rgb = [], []
    with open(path, "rb") as handle:
        (count,) = _read(handle, path, "Q")
        for _ in range(count):
            _, x, y, z, r, g, b, _, track_length = _read(handle, path, "QdddBBBdQ")
            handle.seek(8 * track_length, 1)
            xyz.append((x, y, z))
            rgb.append((r, g, b))
    return np.asarray(xyz, dtype=np.float64).reshape(-1, 3), np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)


# ---------------------------------------------------------------------------------------------
# Depth maps


def read_dense_depth(path: str | Path) -> np.ndarray:
    """COLMAP dense map → ``[H, W]`` float32 (first channel).

    Layout: text header ``W&H&C&``, then float32 little-endian, one channel after another, each
    channel row by row (x fastest), i.e. a ``[W, H, C]`` array in Fortran order.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        width, height, channels = _dense_header(handle, path)
        data = np.fromfile(handle, dtype="<f4")
    if data.size != width * height * channels:
        raise ColmapFormatError(path, "data", f"holds {data.size} values, header says {width}x{height}x{channels}")
    array = data.reshape((width, height, channels), order="F").transpose(1, 0, 2)
    return np.ascontiguousarray(array[..., 0]).astype(np.float32)


def _dense_header(handle: BinaryIO, path: Path) -> tuple[int, int, int]:
    header = b""
    while header.count(b"&") < 3:
        char = handle.read(1)
        if not char or len(header) > 64:
            raise ColmapFormatError(path, "header", "expected 'WIDTH&HEIGHT&CHANNELS&'")
        header += char
    try:
        width, height, channels = (int(v) for v in header.split(b"&")[:3])
    except ValueError:
        raise ColmapFormatError(path, "header", f"expected 'WIDTH&HEIGHT&CHANNELS&', got {header!r}") from None
    return width, height, channels


def depth_map_size(path: Path) -> tuple[int, int]:
    """(W, H) of a depth file (``.npy`` or COLMAP dense ``.bin``) from its header only."""
    if path.suffix == ".npy":
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) != 2:
            raise ColmapFormatError(path, "header", f"depth must be 2D [H, W], got shape {shape}")
        return shape[1], shape[0]
    with open(path, "rb") as handle:
        width, height, _ = _dense_header(handle, path)
    return width, height


def read_depth(path: str | Path) -> np.ndarray:
    """``[H, W]`` float32 metres from ``.npy`` or COLMAP dense ``.bin``; non-finite or ≤ 0 become 0."""
    path = Path(path)
    depth = np.load(path).astype(np.float32) if path.suffix == ".npy" else read_dense_depth(path)
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def _depth_path(scene_dir: Path, image_name: str) -> Path | None:
    candidates = [scene_dir / "depths" / Path(image_name).with_suffix(".npy")]
    candidates += [scene_dir / "stereo" / "depth_maps" / f"{image_name}.{kind}.bin" for kind in DENSE_DEPTH_KINDS]
    return next((p for p in candidates if p.is_file()), None)


# ---------------------------------------------------------------------------------------------
# Writing (pycolmap)


def colmap_from_K(K: np.ndarray) -> tuple[float, float, float, float]:
    """COLMAP PINHOLE params ``(fx, fy, cx, cy)`` of our ``[3, 3]`` K: the one place the pixel-centre shift is added."""
    K = np.asarray(K, dtype=np.float64)
    return float(K[0, 0]), float(K[1, 1]), float(K[0, 2] + PIXEL_CENTRE_SHIFT), float(K[1, 2] + PIXEL_CENTRE_SHIFT)


def cam_from_world(c2w: np.ndarray) -> pycolmap.Rigid3d:
    """COLMAP's world-to-camera transform of our camera-to-world ``[4, 4]`` pose."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return pycolmap.Rigid3d(c2w[:3, :4]).inverse()


def _check_model_inputs(names: Sequence[str], sizes: Sequence[tuple[int, int]], K: np.ndarray, c2w: np.ndarray,
                        text: bool) -> None:
    """Raise ValueError for inputs a COLMAP model cannot hold exactly."""
    if not (len(names) == len(sizes) == len(K) == len(c2w)) or K.shape[1:] != (3, 3) or c2w.shape[1:] != (4, 4):
        raise ValueError(f"write_colmap_model: {len(names)} names, {len(sizes)} sizes, K {K.shape}, c2w {c2w.shape}: "
                         "expected N of each, K [N, 3, 3] and c2w [N, 4, 4]")
    if len(set(names)) != len(names) or not all(names):
        raise ValueError("write_colmap_model: image names must be unique and not empty")
    for name, k, pose in zip(names, K, c2w, strict=True):
        if text and any(char.isspace() for char in name):
            raise ValueError(f"image {name!r}: COLMAP's text format cannot hold a name with white space "
                             "(write binary instead)")
        if not (np.isfinite(k).all() and np.isfinite(pose).all()):
            raise ValueError(f"image {name!r}: K or pose is not finite")
        if abs(k[0, 1]) > 1e-12 or not np.allclose(k[2], [0, 0, 1]):
            raise ValueError(f"image {name!r}: K {k.tolist()} is not a pinhole K without skew (COLMAP PINHOLE)")
        rotation = pose[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) or np.linalg.det(rotation) <= 0:
            raise ValueError(f"image {name!r}: the pose's rotation is not a rotation matrix")


def write_colmap_model(
    folder: Path,
    names: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    K: np.ndarray,
    c2w: np.ndarray,
    points: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    text: bool = False,
) -> Path:
    """Write a COLMAP sparse model with pycolmap: PINHOLE cameras, one posed image per view, points3D.

    Views with the same size and K share a camera. Points have no tracks (error -1); without
    ``colors`` they are grey (128). Besides ``cameras``, ``images`` and ``points3D``, pycolmap writes
    ``rigs`` and ``frames`` (trivial: one camera per rig, one image per frame), which COLMAP ≥ 3.12 reads.

    Args:
        folder: the model folder (created if missing); files ``*.bin``, or ``*.txt`` when ``text``.
        names: ``N`` image names relative to the images folder (UTF-8; no white space when ``text``).
        sizes: ``N`` image sizes ``(width, height)``.
        K: ``[N, 3, 3]`` intrinsics, ours (centre of the first pixel at (0, 0)).
        c2w: ``[N, 4, 4]`` camera-to-world poses, OpenCV axes.
        points: ``[M, 3]`` world points, or None for an empty points3D.
        colors: ``[M, 3]`` uint8 RGB of ``points``.
        text: write the text format instead of binary.

    Returns:
        ``folder``.

    Raises:
        ValueError: inputs a COLMAP PINHOLE model cannot hold (skew, non-finite or non-rigid poses,
            mismatched lengths, duplicate names, white space in a text model's names).
    """
    folder = Path(folder)
    K, c2w = np.asarray(K, dtype=np.float64), np.asarray(c2w, dtype=np.float64)
    _check_model_inputs(names, sizes, K, c2w, text)
    model = pycolmap.Reconstruction()
    camera_ids: dict[tuple, int] = {}
    for image_id, (name, (width, height), k, pose) in enumerate(zip(names, sizes, K, c2w, strict=True), start=1):
        params = colmap_from_K(k)
        key = (int(width), int(height), params)
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            model.add_camera_with_trivial_rig(pycolmap.Camera(
                model="PINHOLE", width=int(width), height=int(height), params=list(params),
                camera_id=camera_ids[key]))
        image = pycolmap.Image(name=str(name), camera_id=camera_ids[key], image_id=image_id)
        model.add_image_with_trivial_frame(image, cam_from_world(pose))
    if points is not None:
        xyz = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        rgb = (np.full(xyz.shape, 128, dtype=np.uint8) if colors is None
               else np.asarray(colors, dtype=np.uint8).reshape(-1, 3))
        if len(rgb) != len(xyz):
            raise ValueError(f"write_colmap_model: {len(xyz)} points but {len(rgb)} colours")
        track = pycolmap.Track()
        for point, color in zip(xyz, rgb, strict=True):
            model.add_point3D(point, track, color)
    folder.mkdir(parents=True, exist_ok=True)
    (model.write_text if text else model.write_binary)(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Scenes


def model_dir(scene_dir: Path) -> Path | None:
    """Where the sparse model of ``scene_dir`` lives (``sparse/0``, ``sparse`` or the folder itself)."""
    for folder in (scene_dir / "sparse" / "0", scene_dir / "sparse", scene_dir):
        if any((folder / f"cameras.{ext}").is_file() for ext in ("txt", "bin")):
            return folder
    return None


def read_model(folder: Path) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], str]:
    """Cameras and images of a sparse model folder, text preferred over binary; also says which it read."""
    if (folder / "cameras.txt").is_file():
        return read_cameras_text(folder / "cameras.txt"), read_images_text(folder / "images.txt"), "text"
    return read_cameras_binary(folder / "cameras.bin"), read_images_binary(folder / "images.bin"), "binary"


def load_colmap_view(view: View, depth_path: str | None = None) -> View:
    """Loader of a COLMAP view: image ``[H, W, 3]`` uint8 and, when present, depth ``[H, W]`` float32."""
    image = read_image(view.path)
    if depth_path is None:
        return view.with_(image=image)
    depth = read_depth(depth_path)
    if depth.shape != image.shape[:2]:
        raise ValueError(f"{depth_path}: depth is {depth.shape[1]}x{depth.shape[0]}, "
                         f"image {view.path} is {image.shape[1]}x{image.shape[0]}")
    return view.with_(image=image, depth=depth)


def _colmap_view(scene_dir: Path, image: ColmapImage, camera: ColmapCamera) -> tuple[View | None, str | None]:
    """A lazy view for one registered image, or (None, reason) when its files do not fit the model."""
    path = scene_dir / "images" / image.name
    try:
        width, height = read_image_size(path)
    except ImageReadError as exc:
        return None, f"image listed in the model cannot be read: {exc.reason}"
    if (width, height) != (camera.width, camera.height):
        return None, f"image is {width}x{height}, its camera {camera.id} is {camera.width}x{camera.height}"
    depth_path = _depth_path(scene_dir, image.name)
    if depth_path is not None:
        try:
            depth_size = depth_map_size(depth_path)
        except (OSError, ValueError) as exc:
            return None, f"depth map {depth_path} cannot be read: {exc}"
        if depth_size != (width, height):
            return None, f"depth map {depth_path} is {depth_size[0]}x{depth_size[1]}, image is {width}x{height}"
    K, distortion = camera_intrinsics(camera)
    meta = {"camera_id": camera.id, "camera_model": camera.model, "has_depth": depth_path is not None}
    if distortion is not None:
        meta["distortion"] = distortion
    loader = functools.partial(load_colmap_view, depth_path=None if depth_path is None else str(depth_path))
    name = Path(image.name).with_suffix("").as_posix()
    return View(name=name, K=K, pose=image_pose(image), path=str(path), loader=loader, meta=meta), None


def _warn_distortion(scene_id: str, cameras: Iterable[ColmapCamera]) -> None:
    for camera in cameras:
        _, distortion = camera_intrinsics(camera)
        if distortion is not None and any(v != 0 for v in distortion["params"].values()):
            logger.warning("scene %s: camera %d is %s with distortion %s; images are used as they are (not "
                           "undistorted), so K is approximate", scene_id, camera.id, camera.model, distortion["params"])


def read_colmap_scene(scene_dir: Path, scene_id: str | None = None) -> Scene:
    """A lazy scene (source ``colmap``) from a COLMAP scene folder; views in natural name order.

    Images that are missing, unreadable, of another size than their camera, or whose depth map has
    another size, are left out and listed in ``scene.rejects`` as (file, reason).

    Raises:
        ValueError: no model in ``scene_dir``, a malformed model file (naming file and line), or an
            image that refers to a camera the model does not have.
    """
    scene_dir = Path(scene_dir)
    scene_id = scene_id or scene_dir.name
    folder = model_dir(scene_dir)
    if folder is None:
        raise ValueError(f"{scene_dir}: no COLMAP model (cameras.txt or cameras.bin in sparse/0, sparse or here)")
    cameras, images, file_format = read_model(folder)
    _warn_distortion(scene_id, cameras.values())
    views, rejects = [], []
    for image in sorted(images.values(), key=lambda i: natural_key(i.name)):
        if image.camera_id not in cameras:
            raise ValueError(f"{folder}: image {image.name!r} refers to camera {image.camera_id}, "
                             f"which is not in the model (cameras {sorted(cameras)})")
        view, reason = _colmap_view(scene_dir, image, cameras[image.camera_id])
        if view is None:
            logger.info("scene %s: skipping %s: %s", scene_id, image.name, reason)
            rejects.append((str(scene_dir / "images" / image.name), reason))
        else:
            views.append(view)
    meta = {"model": str(folder), "format": file_format}
    return Scene(id=scene_id, source="colmap", views=views, meta=meta, rejects=rejects)


def find_colmap_scenes(root: Path, rejects: Rejects | None = None, max_depth: int = 4) -> list[Path]:
    """Scene folders under ``root``: ``root`` itself when it holds a model, else the folders below that do.

    Entries that cannot be used (see :func:`~d3r.scenes.folders.sorted_entries`) are appended to
    ``rejects`` when given, else only logged.

    Raises:
        ValueError: when ``root`` is not a folder.
    """
    root = Path(root)
    rejects = [] if rejects is None else rejects
    if not root.is_dir():
        raise ValueError(f"COLMAP root {display_path(root)} is not a folder")
    try:
        if model_dir(root) is not None:
            return [root]
    except OSError as exc:
        rejects.append((display_path(root), os_error_reason(exc)))
        return []
    if max_depth == 0:
        return []
    found: list[Path] = []
    for entry in sorted_entries(root, rejects):
        if entry.is_dir() and entry.name not in ("images", "depths", "stereo"):
            found.extend(find_colmap_scenes(entry, rejects, max_depth - 1))
    return found


def write_colmap_scene(scene: Scene, out_dir: Path) -> Path:
    """Write ``scene`` as a COLMAP scene folder: PNG images, ``depths/*.npy``, a text model in ``sparse/0``.

    Every view needs K and a pose (see :func:`write_colmap_model`).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    names, sizes, Ks, poses = [], [], [], []
    for view in scene.views:
        if view.K is None or view.pose is None:
            raise ValueError(f"scene {scene.id}, view {view.name!r}: a COLMAP model needs K and a pose")
        view = view.load()
        name = f"{view.name}.png"
        (out_dir / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(view.image).save(out_dir / "images" / name)
        if view.depth is not None:
            (out_dir / "depths" / name).parent.mkdir(parents=True, exist_ok=True)
            np.save(out_dir / "depths" / f"{view.name}.npy", np.asarray(view.depth, dtype=np.float32))
        names.append(name)
        sizes.append(view.size)
        Ks.append(view.K)
        poses.append(view.pose)
    return write_colmap_model(out_dir / "sparse" / "0", names, sizes, np.asarray(Ks).reshape(-1, 3, 3),
                              np.asarray(poses).reshape(-1, 4, 4), text=True).parent.parent
