"""COLMAP scenes in and out through pycolmap: sparse models (text and binary), dense depth maps, our scene records.

Layout of a scene folder (what ``d3r synth`` writes and what COLMAP's tools read)::

    images/NAME.png                 the pixels
    sparse/0/cameras.txt|.bin       intrinsics (we write PINHOLE)
    sparse/0/images.txt|.bin        world-to-camera quaternion (qw qx qy qz) + translation per image
    sparse/0/points3D.txt|.bin      may be empty
    sparse/0/rigs.*, frames.*       written by COLMAP ≥ 3.12 and pycolmap (optional when reading)
    depths/NAME.npy                 ours: float32 metres, image size, 0 = no value (optional)
    stereo/depth_maps/NAME.EXT.{geometric,photometric}.bin   COLMAP dense depth (optional)

A dense workspace (``sparse/`` holding the model directly) is read the same way.

pycolmap reads and writes the models and reads dense depth maps. It does not check a binary file's
length: a truncated or garbage ``.bin`` makes it read past the end (zeros, or an endless loop that
holds the process). So every binary file is walked for its layout first (:func:`check_binary_model`,
:func:`dense_depth_size`), and what pycolmap raises on a bad text file becomes a
:class:`ColmapFormatError`: a bad model is a named error, never a crash.

Conventions at the boundary (:func:`colmap_K` and :func:`cam_from_world` / :func:`c2w_from_colmap`, the
only conversions): COLMAP puts the centre of the first pixel at (0.5, 0.5), we put it at (0, 0), so
``cx_ours = cx_colmap - 0.5`` (same for cy). COLMAP stores world-to-camera; we store camera-to-world.
Both use x right, y down, z forward. Distortion is never silently dropped: it is recorded in
``view.meta["distortion"]`` and a warning is logged (the pixels are used as they are).
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from d3r.scenes.errors import InputFileError, display_path, is_utf8, os_error_reason
from d3r.scenes.folders import Rejects, sorted_entries
from d3r.scenes.images import ImageReadError, natural_key, read_image, read_image_size
from d3r.scenes.records import Scene, View

if TYPE_CHECKING:  # pycolmap takes a second to import: loaded where it is used
    import pycolmap

logger = logging.getLogger(__name__)

PIXEL_CENTRE_SHIFT = 0.5  # COLMAP pixel-centre coordinate minus ours
DENSE_DEPTH_KINDS = ("geometric", "photometric")
_PINHOLE_MODELS = frozenset({"SIMPLE_PINHOLE", "PINHOLE"})
# What pycolmap raises on a model it cannot read (C++ checks become ValueError, missing ids IndexError).
_PYCOLMAP_ERRORS = (RuntimeError, ValueError, IndexError, MemoryError)


class ColmapFormatError(InputFileError):
    """A malformed COLMAP file or model: names the file (or model folder), where in it, and the problem."""

    def __init__(self, path: str | Path, where: str, reason: str):
        super().__init__(path, f"{where}: {reason}")


# ---------------------------------------------------------------------------------------------
# Conversions between our conventions and COLMAP's


def colmap_K(K: np.ndarray, inverse: bool = False) -> np.ndarray:
    """COLMAP's ``[3, 3]`` calibration matrix of our ``K`` (ours of COLMAP's with ``inverse``): cx, cy ± 0.5 px."""
    shifted = np.array(K, dtype=np.float64)
    shifted[:2, 2] += -PIXEL_CENTRE_SHIFT if inverse else PIXEL_CENTRE_SHIFT
    return shifted


def cam_from_world(c2w: np.ndarray) -> pycolmap.Rigid3d:
    """COLMAP's world-to-camera transform of our camera-to-world ``[4, 4]`` pose."""
    import pycolmap

    return pycolmap.Rigid3d(np.asarray(c2w, dtype=np.float64)[:3, :4]).inverse()


def c2w_from_colmap(cam_from_world: pycolmap.Rigid3d) -> np.ndarray:
    """Our camera-to-world ``[4, 4]`` float64 pose of COLMAP's world-to-camera transform."""
    pose = np.eye(4)
    pose[:3] = cam_from_world.inverse().matrix()
    return pose


def camera_intrinsics(camera: pycolmap.Camera) -> tuple[np.ndarray, dict | None]:
    """Our ``[3, 3]`` K (pixel centres at integers) and the distortion (None for pinhole models).

    The distortion is ``{"model": NAME, "params": {param name: value}}`` with COLMAP's names of the
    parameters beyond focal length and principal point (empty for the fisheye models that have none).
    """
    K = colmap_K(camera.calibration_matrix(), inverse=True)
    if camera.model.name in _PINHOLE_MODELS:
        return K, None
    names = [name.strip() for name in camera.params_info.split(",")]
    extra = {names[i]: float(camera.params[i]) for i in camera.extra_params_idxs()}
    return K, {"model": camera.model.name, "params": extra}


# ---------------------------------------------------------------------------------------------
# Binary layout (checked before pycolmap reads a file: it does not check lengths)


class _Cursor:
    """Walks a binary model file; names the file and byte offset of whatever does not fit."""

    def __init__(self, path: Path):
        self.path, self.data, self.offset = path, path.read_bytes(), 0

    def error(self, reason: str) -> ColmapFormatError:
        return ColmapFormatError(self.path, f"byte {self.offset}", reason)

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise self.error(f"file ends early (needed {size} bytes, got {len(self.data) - self.offset})")
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values

    def skip(self, count: int, size: int, what: str) -> None:
        if self.offset + count * size > len(self.data):
            raise self.error(f"file ends inside a list of {count} {what}")
        self.offset += count * size

    def skip_name(self) -> None:
        end = self.data.find(b"\x00", self.offset)
        if end < 0:
            raise self.error("image name is not null-terminated")
        self.offset = end + 1

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise self.error(f"{len(self.data) - self.offset} bytes after the last record")


@functools.cache
def _num_params() -> dict[int, int]:
    """COLMAP camera model id → number of parameters, as pycolmap defines them."""
    import pycolmap

    return {int(model): len(pycolmap.Camera.create_from_model_id(0, model, 1.0, 1, 1).params)
            for model in pycolmap.CameraModelId.__members__.values() if int(model) >= 0}


def _walk_cameras(cursor: _Cursor) -> None:
    (count,) = cursor.take("Q")
    for _ in range(count):
        _, model_id, _, _ = cursor.take("IiQQ")
        if model_id not in _num_params():
            cursor.offset -= 24
            raise cursor.error(f"unknown camera model id {model_id}")
        cursor.take("d" * _num_params()[model_id])


def _walk_images(cursor: _Cursor) -> None:
    (count,) = cursor.take("Q")
    for _ in range(count):
        cursor.take("I7dI")  # image id, qw qx qy qz tx ty tz, camera id
        cursor.skip_name()
        (num_points,) = cursor.take("Q")
        cursor.skip(num_points, 24, "2D points")  # x, y, point3D id


def _walk_points3d(cursor: _Cursor) -> None:
    (count,) = cursor.take("Q")
    for _ in range(count):
        *_, track_length = cursor.take("Q3d3BdQ")  # id, xyz, rgb, error, track length
        cursor.skip(track_length, 8, "track elements")  # image id, point2D index


def _walk_rigs(cursor: _Cursor) -> None:
    (count,) = cursor.take("Q")
    for _ in range(count):
        _, num_sensors = cursor.take("II")
        if num_sensors > 0:
            cursor.take("iI")  # reference sensor type, id
        for _ in range(max(num_sensors - 1, 0)):
            *_, has_pose = cursor.take("iIB")
            if has_pose:
                cursor.take("7d")


def _walk_frames(cursor: _Cursor) -> None:
    (count,) = cursor.take("Q")
    for _ in range(count):
        *_, num_data_ids = cursor.take("II7dI")  # frame id, rig id, rig_from_world, count
        cursor.skip(num_data_ids, 16, "data ids")  # sensor type, sensor id, data id


_BINARY_FILES = {"cameras": _walk_cameras, "images": _walk_images, "points3D": _walk_points3d,
                 "rigs": _walk_rigs, "frames": _walk_frames}


def check_binary_model(folder: Path) -> None:
    """Check that every binary file of the model in ``folder`` has exactly the length its records need.

    Raises:
        ColmapFormatError: naming the file and byte offset (a truncated file, a garbage count, an
            unknown camera model, bytes after the last record).
        OSError: a file that cannot be read.
    """
    for stem, walk in _BINARY_FILES.items():
        path = Path(folder) / f"{stem}.bin"
        if stem in ("rigs", "frames") and not path.exists():
            continue
        cursor = _Cursor(path)
        walk(cursor)
        cursor.finish()


# ---------------------------------------------------------------------------------------------
# Reading a model


def read_model(folder: Path) -> tuple[pycolmap.Reconstruction, str]:
    """The pycolmap model in ``folder`` (text preferred over binary) and which format it read.

    Raises:
        ColmapFormatError: a malformed model: binary files name the file and byte offset, text models
            the folder and pycolmap's reason; also image names that are not UTF-8.
        OSError: a file that cannot be read.
    """
    import pycolmap

    folder = Path(folder)
    file_format = "text" if (folder / "cameras.txt").is_file() else "binary"
    if file_format == "binary":
        check_binary_model(folder)
    model = pycolmap.Reconstruction()
    try:
        (model.read_text if file_format == "text" else model.read_binary)(folder)
        if any(not image.name for image in model.images.values()):  # pycolmap decodes a name when read
            raise ColmapFormatError(folder, f"{file_format} model", "an image has an empty name")
    except UnicodeDecodeError:
        raise ColmapFormatError(folder, f"{file_format} model", "an image name is not valid UTF-8") from None
    except _PYCOLMAP_ERRORS as exc:
        raise ColmapFormatError(folder, f"{file_format} model", f"pycolmap cannot read it: {exc}") from None
    return model, file_format


# ---------------------------------------------------------------------------------------------
# Depth maps


def _dense_header(handle: BinaryIO, path: Path) -> tuple[int, int, int, int]:
    """``(W, H, C, header bytes)`` of a COLMAP dense map (header ``W&H&C&``)."""
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
    if min(width, height, channels) <= 0:
        raise ColmapFormatError(path, "header", f"size {width}x{height}x{channels} is not positive")
    return width, height, channels, len(header)


def dense_depth_size(path: Path) -> tuple[int, int]:
    """(W, H) of a COLMAP dense map from its header, checking the file holds exactly W x H x C float32."""
    with open(path, "rb") as handle:
        width, height, channels, header = _dense_header(handle, path)
        size = handle.seek(0, 2)
    if size != header + 4 * width * height * channels:
        raise ColmapFormatError(path, "data", f"holds {size - header} bytes, header says {width}x{height}x{channels} "
                                              f"float32 ({4 * width * height * channels} bytes)")
    return width, height


def read_dense_depth(path: str | Path) -> np.ndarray:
    """COLMAP dense map → ``[H, W]`` float32 (first channel), read by pycolmap after its size is checked."""
    import pycolmap

    path = Path(path)
    dense_depth_size(path)
    depth_map = pycolmap.DepthMap()
    depth_map.read(path)
    return np.asarray(depth_map.to_array(), dtype=np.float32)


def depth_map_size(path: Path) -> tuple[int, int]:
    """(W, H) of a depth file (``.npy`` or COLMAP dense ``.bin``) from its header only."""
    if path.suffix == ".npy":
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) != 2:
            raise ColmapFormatError(path, "header", f"depth must be 2D [H, W], got shape {shape}")
        return shape[1], shape[0]
    return dense_depth_size(path)


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
# Scenes


def model_dir(scene_dir: Path) -> Path | None:
    """Where the sparse model of ``scene_dir`` lives (``sparse/0``, ``sparse`` or the folder itself)."""
    for folder in (scene_dir / "sparse" / "0", scene_dir / "sparse", scene_dir):
        if any((folder / f"cameras.{ext}").is_file() for ext in ("txt", "bin")):
            return folder
    return None


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


def _image_pose(image: pycolmap.Image) -> np.ndarray | None:
    """Camera-to-world ``[4, 4]`` of a registered image, None when it has no rigid pose (zero or NaN quaternion)."""
    if not image.has_pose:
        return None
    rotation = image.cam_from_world().rotation.quat
    if not np.isfinite(rotation).all() or abs(np.linalg.norm(rotation) - 1) > 1e-6:
        return None
    pose = c2w_from_colmap(image.cam_from_world())
    return pose if np.isfinite(pose).all() else None


def _colmap_view(scene_dir: Path, image: pycolmap.Image, camera: pycolmap.Camera) -> tuple[View | None, str | None]:
    """A lazy view for one registered image, or (None, reason) when its files do not fit the model."""
    if Path(image.name).is_absolute() or ".." in Path(image.name).parts:
        return None, "image name in the model is not a path inside images/"
    path = scene_dir / "images" / image.name
    try:
        width, height = read_image_size(path)
    except ImageReadError as exc:
        return None, f"image listed in the model cannot be read: {exc.reason}"
    if (width, height) != (camera.width, camera.height):
        return None, f"image is {width}x{height}, its camera {camera.camera_id} is {camera.width}x{camera.height}"
    if camera.is_spherical():
        return None, f"camera {camera.camera_id} is {camera.model.name}, which has no pinhole intrinsics"
    pose = _image_pose(image)
    if pose is None:
        return None, "image has no rigid pose in the model (unregistered, or a zero or non-finite quaternion)"
    depth_path = _depth_path(scene_dir, image.name)
    if depth_path is not None:
        try:
            depth_size = depth_map_size(depth_path)
        except (OSError, ValueError) as exc:
            return None, f"depth map {depth_path} cannot be read: {exc}"
        if depth_size != (width, height):
            return None, f"depth map {depth_path} is {depth_size[0]}x{depth_size[1]}, image is {width}x{height}"
    K, distortion = camera_intrinsics(camera)
    meta = {"camera_id": camera.camera_id, "camera_model": camera.model.name, "has_depth": depth_path is not None}
    if distortion is not None:
        meta["distortion"] = distortion
    loader = functools.partial(load_colmap_view, depth_path=None if depth_path is None else str(depth_path))
    name = Path(image.name).with_suffix("").as_posix()
    return View(name=name, K=K, pose=pose, path=str(path), loader=loader, meta=meta), None


def _warn_distortion(scene_id: str, cameras: Iterable[pycolmap.Camera]) -> None:
    for camera in cameras:
        _, distortion = camera_intrinsics(camera)
        if distortion is not None and (camera.is_perspective_fisheye()
                                       or any(v != 0 for v in distortion["params"].values())):
            logger.warning("scene %s: camera %d is %s with distortion %s; images are used as they are (not "
                           "undistorted), so K is approximate", scene_id, camera.camera_id, camera.model.name,
                           distortion["params"])


def read_colmap_scene(scene_dir: Path, scene_id: str | None = None) -> Scene:
    """A lazy scene (source ``colmap``) from a COLMAP scene folder; views in natural name order.

    Images that are missing, unreadable, of another size than their camera, without a rigid pose,
    or whose depth map has another size, are left out and listed in ``scene.rejects`` as (file, reason).

    Raises:
        ValueError: no model in ``scene_dir``; :class:`ColmapFormatError` for a malformed model (see
            :func:`read_model`; an image whose camera is not in the model is one).
    """
    scene_dir = Path(scene_dir)
    scene_id = scene_id or scene_dir.name
    folder = model_dir(scene_dir)
    if folder is None:
        raise ValueError(f"{scene_dir}: no COLMAP model (cameras.txt or cameras.bin in sparse/0, sparse or here)")
    model, file_format = read_model(folder)
    _warn_distortion(scene_id, model.cameras.values())
    views, rejects = [], []
    for image in sorted(model.images.values(), key=lambda i: natural_key(i.name)):
        view, reason = _colmap_view(scene_dir, image, model.cameras[image.camera_id])
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


# ---------------------------------------------------------------------------------------------
# Writing


def _check_model_inputs(names: Sequence[str], sizes: Sequence[tuple[int, int]], K: np.ndarray, c2w: np.ndarray,
                        text: bool) -> None:
    """Raise ValueError for inputs a COLMAP model cannot hold exactly."""
    if not (len(names) == len(sizes) == len(K) == len(c2w)) or K.shape[1:] != (3, 3) or c2w.shape[1:] != (4, 4):
        raise ValueError(f"write_colmap_model: {len(names)} names, {len(sizes)} sizes, K {K.shape}, c2w {c2w.shape}: "
                         "expected N of each, K [N, 3, 3] and c2w [N, 4, 4]")
    if len(set(names)) != len(names) or not all(names):
        raise ValueError("write_colmap_model: image names must be unique and not empty")
    for name, k, pose in zip(names, K, c2w, strict=True):
        if not is_utf8(name) or "\x00" in name:
            raise ValueError(f"image {display_path(name)}: a COLMAP image name is UTF-8 text without NUL")
        if text and any(char.isspace() for char in name):
            raise ValueError(f"image {name!r}: COLMAP's text format cannot hold a name with white space "
                             "(write binary instead)")
        if not (np.isfinite(k).all() and np.isfinite(pose).all()):
            raise ValueError(f"image {name!r}: K or pose is not finite")
        if abs(k[0, 1]) > 1e-12 or abs(k[1, 0]) > 1e-12 or not np.allclose(k[2], [0, 0, 1]):
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
    import pycolmap

    folder = Path(folder)
    K, c2w = np.asarray(K, dtype=np.float64), np.asarray(c2w, dtype=np.float64)
    _check_model_inputs(names, sizes, K, c2w, text)
    xyz = np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 3)
    rgb = (np.full(xyz.shape, 128, dtype=np.uint8) if colors is None
           else np.asarray(colors, dtype=np.uint8).reshape(-1, 3))
    if len(rgb) != len(xyz) or not np.isfinite(xyz).all():
        raise ValueError(f"write_colmap_model: {len(xyz)} points and {len(rgb)} colours; points must be finite")
    model = pycolmap.Reconstruction()
    camera_ids: dict[tuple, int] = {}
    for image_id, (name, (width, height), k, pose) in enumerate(zip(names, sizes, K, c2w, strict=True), start=1):
        calibration = colmap_K(k)
        params = (calibration[0, 0], calibration[1, 1], calibration[0, 2], calibration[1, 2])
        key = (int(width), int(height), params)
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            model.add_camera_with_trivial_rig(pycolmap.Camera(
                model="PINHOLE", width=int(width), height=int(height), params=list(params),
                camera_id=camera_ids[key]))
        image = pycolmap.Image(name=str(name), camera_id=camera_ids[key], image_id=image_id)
        model.add_image_with_trivial_frame(image, cam_from_world(pose))
    track = pycolmap.Track()
    for point, color in zip(xyz, rgb, strict=True):
        model.add_point3D(point, track, color)
    folder.mkdir(parents=True, exist_ok=True)
    (model.write_text if text else model.write_binary)(folder)
    return folder


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
