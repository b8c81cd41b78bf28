"""Readers for the six training datasets' published on-disk layouts, with their ground truth.

Every reader lists lazily: it reads directory entries and small metadata files (camera files,
annotations, trajectories), never pixels or depth; :func:`load_dataset_view` decodes a view's
image and, where the dataset ships it, its depth. Ground truth leaves here in our conventions:
OpenCV cameras, c2w float64 poses, K in pixels with pixel centres at integer coordinates, depth
float32 with 0 = no value.

Layouts and conversions:

- ``co3d`` (CO3D v2): ``CATEGORY/frame_annotations.jgz`` (gzipped JSON list) and
  ``CATEGORY/SEQUENCE/images/frameNNNNNN.jpg``, ``depths/frameNNNNNN.jpg.geometric.png``,
  ``depth_masks/frameNNNNNN.png``. One scene per sequence (id ``CATEGORY/SEQUENCE``). Viewpoints are
  PyTorch3D cameras (row vectors, ``X_view = X_world·R + T``, +x left, +y up): w2c = F·[Rᵀ | T]
  with F = diag(-1, -1, 1). Intrinsics are NDC: ``ndc_isotropic`` scales both axes by min(H, W)/2,
  ``ndc_norm_image_bounds`` by (W/2, H/2); NDC (0, 0) is the image centre, ``cx = W/2 - px·s - 0.5``.
  Depth PNGs hold float16 bit patterns in uint16, times the frame's ``scale_adjustment``; zero where
  the depth mask is 0. Sequences without annotations are listed as images only.
- ``scannetpp`` (ScanNet++ DSLR): ``[data/]SCENE/dslr/resized_images/*.JPG`` and
  ``dslr/nerfstudio/transforms.json`` (shared ``fl_x fl_y cx cy``, per-frame ``transform_matrix``
  c2w in OpenGL axes → columns y, z negated; cx, cy have pixel centres at +0.5 → minus 0.5).
  The images are fisheye-distorted (``camera_model`` and ``k1..k4`` are kept in ``meta["distortion"]``);
  frames marked ``is_bad`` are rejects. No per-frame depth ships with the DSLR images.
- ``arkitscenes``: ``.../VIDEO_frames/lowres_wide/VIDEO_TIMESTAMP.png``, ``lowres_wide_intrinsics/*.pincam``
  (``w h fx fy cx cy``), ``lowres_depth/*.png`` (uint16 millimetres), ``lowres_wide.traj`` (in the frames
  folder or its parent): lines ``timestamp ax ay az tx ty tz``, an axis-angle rotation and translation
  that map world to camera (OpenCV axes); the pose is its inverse. Frames take the trajectory entry
  nearest their timestamp within 50 ms, else no pose. Scene id: the video id.
- ``megadepth``: ``[MegaDepth_v1/]SCENE/dense*/imgs/*.jpg`` and ``depths/STEM.h5`` (dataset ``depth``,
  up to an unknown per-scene scale, not metres; read with h5py). No K or poses in this layout.
  Scene id ``SCENE/denseK``.
- ``blendedmvs``: ``PID/blended_images/NNNNNNNN.jpg`` (``*_masked.jpg`` skipped), ``cams/NNNNNNNN_cam.txt``
  (``extrinsic`` 4x4 w2c, ``intrinsic`` 3x3, OpenCV), ``rendered_depth_maps/NNNNNNNN.pfm`` (scene units).
- ``habitat`` (DUSt3R/Fast3R preprocessing): folders of ``NNNNN.jpeg``, ``NNNNN_depth.exr`` (float metres)
  and ``NNNNN_camera_params.json`` (``camera_intrinsics``, ``R_cam2world``, ``t_cam2world``, OpenCV).

K files of ARKitScenes, BlendedMVS and Habitat are taken as pixel-centre-at-integer as shipped.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from d3r.scenes.errors import InputFileError, display_path, os_error_reason
from d3r.scenes.folders import Rejects, rejected_scenes, sorted_entries
from d3r.scenes.images import is_image_file, natural_key, read_image
from d3r.scenes.records import Scene, View

logger = logging.getLogger(__name__)

_PYTORCH3D_TO_OPENCV = np.diag([-1.0, -1.0, 1.0])
_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
_ARKIT_POSE_TOLERANCE_S = 0.05


class DatasetFormatError(InputFileError):
    """A dataset file that does not follow its published layout: names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Depth decoders: path → [H, W] float32, 0 = no value


def read_co3d_depth(path: str, scale: float = 1.0, mask_path: str | None = None) -> np.ndarray:
    """CO3D depth: a 16-bit PNG whose values are float16 bit patterns, times ``scale``."""
    with Image.open(path) as image:
        bits = np.asarray(image, dtype=np.uint16)
    depth = bits.view(np.float16).astype(np.float32) * np.float32(scale)
    if mask_path is not None and Path(mask_path).is_file():
        with Image.open(mask_path) as mask:
            depth[np.asarray(mask.convert("L")) == 0] = 0.0
    return depth


def read_millimetre_png(path: str) -> np.ndarray:
    """uint16 PNG in millimetres → metres."""
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.uint16).astype(np.float32) / 1000.0


def read_h5_depth(path: str) -> np.ndarray:
    """MegaDepth ``.h5`` depth (dataset ``depth``); needs h5py."""
    import h5py

    with h5py.File(path, "r") as handle:
        if "depth" not in handle:
            raise DatasetFormatError(path, f"no 'depth' dataset (has {sorted(handle)})")
        return np.asarray(handle["depth"], dtype=np.float32)


def read_pfm(path: str) -> np.ndarray:
    """A PFM image: ``[H, W]`` (``Pf``) or ``[H, W, 3]`` (``PF``) float32, rows top to bottom."""
    with open(path, "rb") as handle:
        kind = handle.readline().strip()
        if kind not in (b"Pf", b"PF"):
            raise DatasetFormatError(path, f"not a PFM file (header {kind[:10]!r})")
        dims = handle.readline().split()
        scale = float(handle.readline().strip())
        width, height = int(dims[0]), int(dims[1])
        channels = 3 if kind == b"PF" else 1
        data = np.frombuffer(handle.read(), dtype="<f4" if scale < 0 else ">f4")
    if data.size != width * height * channels:
        raise DatasetFormatError(path, f"PFM holds {data.size} values, header says {width}x{height}x{channels}")
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.ascontiguousarray(np.flipud(data.reshape(shape))).astype(np.float32)


def read_exr_depth(path: str) -> np.ndarray:
    """One-channel float EXR (channel ``Y``, ``Z``, ``R`` or ``depth``, else the first) via OpenEXR."""
    import OpenEXR

    with OpenEXR.File(path) as exr:
        channels = exr.channels()
        if not channels:
            raise DatasetFormatError(path, "EXR file has no channels")
        name = next((c for c in ("Y", "Z", "R", "depth") if c in channels), next(iter(channels)))
        return np.asarray(channels[name].pixels, dtype=np.float32).copy()


def load_dataset_view(view: View, depth_reader: Callable[..., np.ndarray] | None = None,
                      depth_args: tuple = ()) -> View:
    """Loader for dataset views: image ``[H, W, 3]`` uint8 from ``view.path``; depth ``[H, W]``
    float32 from ``depth_reader(*depth_args)`` when given (bind both with functools.partial)."""
    image = read_image(view.path)
    if depth_reader is None:
        return view.with_(image=image)
    try:
        depth = depth_reader(*depth_args)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # OpenEXR raises RuntimeError
        raise DatasetFormatError(depth_args[0], f"cannot read depth: {exc}") from exc
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return view.with_(image=image, depth=depth)


def _view(name: str, path: Path, K=None, pose=None, depth_reader=None, depth_args: tuple = (), **meta: Any) -> View:
    if depth_reader is not None:
        meta["has_depth"] = True
    loader = functools.partial(load_dataset_view, depth_reader=depth_reader, depth_args=depth_args)
    return View(name=name, path=str(path), K=None if K is None else np.asarray(K, dtype=np.float64),
                pose=None if pose is None else np.asarray(pose, dtype=np.float64), loader=loader, meta=meta)


def _pose_from_w2c(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    w2c = np.eye(4)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = translation
    return np.linalg.inv(w2c)


def _find_dirs(root: Path, is_match: Callable[[Path], bool], rejects: Rejects, max_depth: int = 6) -> list[Path]:
    """Folders under ``root`` (itself included) for which ``is_match`` holds; no descent into matches.
    Entries that cannot be used are appended to ``rejects`` (see :func:`~d3r.scenes.folders.sorted_entries`)."""
    try:
        if is_match(root):
            return [root]
    except OSError as exc:
        rejects.append((display_path(root), os_error_reason(exc)))
        return []
    if max_depth == 0:
        return []
    found: list[Path] = []
    for entry in sorted_entries(root, rejects):
        if entry.is_dir():
            found.extend(_find_dirs(entry, is_match, rejects, max_depth - 1))
    return found


def _scene_id(root: Path, folder: Path) -> str:
    return folder.relative_to(root).as_posix() if folder != root else root.name


def _images_in(folder: Path, rejects: Rejects, skip: Callable[[Path], bool] = lambda p: False) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in sorted_entries(folder, rejects) if p.is_file() and is_image_file(p) and not skip(p)]


# ---------------------------------------------------------------------------------------------
# CO3D v2


def co3d_intrinsics(focal: list[float], principal_point: list[float], size_hw: list[int],
                    intrinsics_format: str = "ndc_isotropic") -> np.ndarray:
    """``[3, 3]`` K in pixels from CO3D NDC focal length and principal point."""
    height, width = size_hw
    if intrinsics_format == "ndc_norm_image_bounds":
        sx, sy = width / 2.0, height / 2.0
    elif intrinsics_format == "ndc_isotropic":
        sx = sy = min(height, width) / 2.0
    else:
        raise ValueError(f"unknown CO3D intrinsics_format {intrinsics_format!r}")
    return np.array([
        [focal[0] * sx, 0.0, width / 2.0 - principal_point[0] * sx - 0.5],
        [0.0, focal[1] * sy, height / 2.0 - principal_point[1] * sy - 0.5],
        [0.0, 0.0, 1.0],
    ])


def co3d_pose(R: list[list[float]], T: list[float]) -> np.ndarray:
    """``[4, 4]`` OpenCV c2w from a PyTorch3D viewpoint (``X_view = X_world·R + T``)."""
    rotation = _PYTORCH3D_TO_OPENCV @ np.asarray(R, dtype=np.float64).T
    return _pose_from_w2c(rotation, _PYTORCH3D_TO_OPENCV @ np.asarray(T, dtype=np.float64))


def _co3d_view(root: Path, frame: dict) -> View:
    image_path = root / frame["image"]["path"]
    viewpoint = frame.get("viewpoint")
    K = pose = None
    if viewpoint is not None:
        K = co3d_intrinsics(viewpoint["focal_length"], viewpoint["principal_point"], frame["image"]["size"],
                            viewpoint.get("intrinsics_format", "ndc_isotropic"))
        pose = co3d_pose(viewpoint["R"], viewpoint["T"])
    depth = frame.get("depth") or {}
    depth_args: tuple = ()
    if depth.get("path") and (root / depth["path"]).is_file():
        mask = str(root / depth["mask_path"]) if depth.get("mask_path") else None
        depth_args = (str(root / depth["path"]), float(depth.get("scale_adjustment", 1.0)), mask)
    height, width = frame["image"]["size"]
    return _view(image_path.stem, image_path, K, pose, read_co3d_depth if depth_args else None, depth_args,
                 frame_number=frame.get("frame_number"), size=(width, height))


def _co3d_annotated_scenes(root: Path, category: Path, annotations: Path) -> Iterator[Scene]:
    try:
        with gzip.open(annotations, "rt") as handle:
            frames = json.load(handle)
    except (OSError, ValueError) as exc:
        yield Scene(id=category.name, source="co3d", views=[], rejects=[(str(annotations), f"unreadable: {exc}")])
        return
    by_sequence: dict[str, list[dict]] = defaultdict(list)
    for frame in frames:
        by_sequence[frame["sequence_name"]].append(frame)
    for sequence in sorted(by_sequence, key=natural_key):
        views, rejects = [], []
        for frame in sorted(by_sequence[sequence], key=lambda f: f["frame_number"]):
            image_path = root / frame["image"]["path"]
            if image_path.is_file():
                views.append(_co3d_view(root, frame))
            else:
                rejects.append((str(image_path), f"listed in {annotations.name} but missing"))
        yield Scene(id=f"{category.name}/{sequence}", source="co3d", views=views,
                    meta={"category": category.name}, rejects=rejects)


def list_co3d_scenes(root: Path) -> Iterator[Scene]:
    """CO3D v2 sequences under ``root`` (a folder of category folders)."""
    rejects: Rejects = []
    for category in (p for p in sorted_entries(root, rejects) if p.is_dir()):
        annotations = category / "frame_annotations.jgz"
        if annotations.is_file():
            yield from _co3d_annotated_scenes(root, category, annotations)
            continue
        for sequence in (p for p in sorted_entries(category, rejects) if (p / "images").is_dir()):
            images_rejects: Rejects = []
            views = [_view(p.stem, p) for p in _images_in(sequence / "images", images_rejects)]
            yield Scene(id=f"{category.name}/{sequence.name}", source="co3d", views=views,
                        meta={"category": category.name, "note": "no frame_annotations.jgz: images only"},
                        rejects=images_rejects)
    yield from rejected_scenes(rejects, "co3d")


# ---------------------------------------------------------------------------------------------
# ScanNet++ (DSLR)


def _scannetpp_scene(scene_dir: Path) -> Scene:
    dslr = scene_dir / "dslr"
    images_dir = dslr / "resized_images"
    transforms_path = dslr / "nerfstudio" / "transforms.json"
    if not transforms_path.is_file():
        images_rejects: Rejects = []
        views = [_view(p.stem, p) for p in _images_in(images_dir, images_rejects)]
        return Scene(id=scene_dir.name, source="scannetpp", views=views,
                     meta={"note": "no dslr/nerfstudio/transforms.json: images only"}, rejects=images_rejects)
    try:
        transforms = json.loads(transforms_path.read_text())
        K = np.array([[transforms["fl_x"], 0.0, transforms["cx"] - 0.5],
                      [0.0, transforms["fl_y"], transforms["cy"] - 0.5], [0.0, 0.0, 1.0]])
        frames = transforms.get("frames", []) + transforms.get("test_frames", [])
    except (ValueError, KeyError) as exc:
        return Scene(id=scene_dir.name, source="scannetpp", views=[],
                     rejects=[(str(transforms_path), f"not a nerfstudio transforms file: {exc!r}")])
    coefficients = {k: transforms[k] for k in ("k1", "k2", "k3", "k4", "p1", "p2") if k in transforms}
    distortion = f"{transforms.get('camera_model', 'OPENCV')} {coefficients}"
    size = (int(transforms["w"]), int(transforms["h"])) if "w" in transforms and "h" in transforms else None
    views, rejects = [], []
    for frame in sorted(frames, key=lambda f: natural_key(f["file_path"])):
        path = images_dir / Path(frame["file_path"]).name
        if not path.is_file():
            rejects.append((str(path), f"listed in {transforms_path.name} but missing"))
        elif frame.get("is_bad"):
            rejects.append((str(path), f"marked is_bad in {transforms_path.name}"))
        else:
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64) @ _OPENGL_TO_OPENCV
            extra = {"size": size} if size else {}
            views.append(_view(path.stem, path, K, pose, distortion=distortion, **extra))
    return Scene(id=scene_dir.name, source="scannetpp", views=views, meta={"distortion": distortion},
                 rejects=rejects)


def list_scannetpp_scenes(root: Path) -> Iterator[Scene]:
    """ScanNet++ DSLR scenes under ``root`` (the dataset root or its ``data`` folder)."""
    data = root / "data" if (root / "data").is_dir() else root
    rejects: Rejects = []
    for scene_dir in (p for p in sorted_entries(data, rejects) if (p / "dslr").is_dir()):
        yield _scannetpp_scene(scene_dir)
    yield from rejected_scenes(rejects, "scannetpp")


# ---------------------------------------------------------------------------------------------
# ARKitScenes


def read_arkit_trajectory(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``lowres_wide.traj`` → timestamps ``[T]`` and OpenCV c2w poses ``[T, 4, 4]``."""
    timestamps, poses = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        values = line.split()
        if len(values) != 7:
            raise DatasetFormatError(path, f"line {number}: expected 7 numbers, got {len(values)}")
        numbers = [float(v) for v in values]
        timestamps.append(numbers[0])
        poses.append(_pose_from_w2c(Rotation.from_rotvec(numbers[1:4]).as_matrix(), np.array(numbers[4:7])))
    return np.array(timestamps), np.array(poses).reshape(-1, 4, 4)


def read_pincam(path: Path) -> tuple[tuple[int, int], np.ndarray]:
    """ARKit ``.pincam`` (``w h fx fy cx cy``) → ((W, H), K ``[3, 3]``)."""
    values = path.read_text().split()
    if len(values) != 6:
        raise DatasetFormatError(path, f"expected 6 numbers 'w h fx fy cx cy', got {len(values)}")
    w, h, fx, fy, cx, cy = (float(v) for v in values)
    return (int(w), int(h)), np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _arkit_timestamp(stem: str) -> float | None:
    match = re.search(r"_(\d+(?:\.\d+)?)$", stem)
    return float(match.group(1)) if match else None


def _arkit_scene(frames_dir: Path) -> Scene:
    video_id = frames_dir.name.removesuffix("_frames")
    rejects: list[tuple[str, str]] = []
    traj = next((p for p in (frames_dir / "lowres_wide.traj", frames_dir.parent / "lowres_wide.traj") if p.is_file()),
                None)
    timestamps, poses = np.zeros(0), np.zeros((0, 4, 4))
    if traj is not None:
        try:
            timestamps, poses = read_arkit_trajectory(traj)
        except (OSError, ValueError) as exc:
            rejects.append((str(traj), f"unreadable trajectory: {exc}"))
    views = []
    for path in _images_in(frames_dir / "lowres_wide", rejects):
        K = pose = size = None
        pincam = frames_dir / "lowres_wide_intrinsics" / f"{path.stem}.pincam"
        if pincam.is_file():
            try:
                size, K = read_pincam(pincam)
            except (OSError, ValueError) as exc:
                rejects.append((str(pincam), str(exc)))
        stamp = _arkit_timestamp(path.stem)
        if stamp is not None and len(timestamps):
            nearest = int(np.argmin(np.abs(timestamps - stamp)))
            if abs(timestamps[nearest] - stamp) <= _ARKIT_POSE_TOLERANCE_S:
                pose = poses[nearest]
        depth_path = frames_dir / "lowres_depth" / path.name
        extra = {"size": size} if size else {}
        views.append(_view(path.stem, path, K, pose, read_millimetre_png if depth_path.is_file() else None,
                           (str(depth_path),), timestamp=stamp, **extra))
    return Scene(id=video_id, source="arkitscenes", views=views, meta={"trajectory": str(traj) if traj else None},
                 rejects=rejects)


def list_arkitscenes_scenes(root: Path) -> Iterator[Scene]:
    """ARKitScenes videos under ``root``: every folder holding ``lowres_wide/``."""
    rejects: Rejects = []
    for frames_dir in _find_dirs(root, lambda p: (p / "lowres_wide").is_dir(), rejects):
        yield _arkit_scene(frames_dir)
    yield from rejected_scenes(rejects, "arkitscenes")


# ---------------------------------------------------------------------------------------------
# MegaDepth


def list_megadepth_scenes(root: Path) -> Iterator[Scene]:
    """MegaDepth v1 reconstructions: ``SCENE/dense*/imgs`` with ``depths/*.h5`` (relative scale)."""
    rejects: Rejects = []
    for dense in _find_dirs(root, lambda p: p.name.startswith("dense") and (p / "imgs").is_dir(), rejects, 3):
        views, images_rejects = [], []
        for path in _images_in(dense / "imgs", images_rejects):
            depth_path = dense / "depths" / f"{path.stem}.h5"
            views.append(_view(path.stem, path, depth_reader=read_h5_depth if depth_path.is_file() else None,
                               depth_args=(str(depth_path),), depth_units="relative (unknown per-scene scale)"))
        yield Scene(id=_scene_id(root, dense), source="megadepth", views=views,
                    meta={"note": "depth up to scale; no K or poses in this layout"}, rejects=images_rejects)
    yield from rejected_scenes(rejects, "megadepth")


# ---------------------------------------------------------------------------------------------
# BlendedMVS


def read_mvsnet_cam(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MVSNet ``*_cam.txt`` → (w2c ``[4, 4]``, K ``[3, 3]``)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    try:
        ext = lines.index("extrinsic")
        intr = lines.index("intrinsic")
        w2c = np.array([[float(v) for v in lines[ext + 1 + r].split()] for r in range(4)])
        K = np.array([[float(v) for v in lines[intr + 1 + r].split()] for r in range(3)])
    except (ValueError, IndexError) as exc:
        raise DatasetFormatError(path, f"expected 'extrinsic' 4x4 and 'intrinsic' 3x3 blocks: {exc}") from None
    if w2c.shape != (4, 4) or K.shape != (3, 3):
        raise DatasetFormatError(path, f"extrinsic is {w2c.shape}, intrinsic is {K.shape}")
    return w2c, K


def _blendedmvs_scene(scene_dir: Path) -> Scene:
    views, rejects = [], []
    for path in _images_in(scene_dir / "blended_images", rejects, skip=lambda p: p.stem.endswith("_masked")):
        cam = scene_dir / "cams" / f"{path.stem}_cam.txt"
        K = pose = None
        if cam.is_file():
            try:
                w2c, K = read_mvsnet_cam(cam)
                pose = np.linalg.inv(w2c)
            except (OSError, ValueError) as exc:
                rejects.append((str(cam), str(exc)))
        depth_path = scene_dir / "rendered_depth_maps" / f"{path.stem}.pfm"
        views.append(_view(path.stem, path, K, pose, read_pfm if depth_path.is_file() else None, (str(depth_path),)))
    return Scene(id=scene_dir.name, source="blendedmvs", views=views, rejects=rejects)


def list_blendedmvs_scenes(root: Path) -> Iterator[Scene]:
    """BlendedMVS scenes: every folder under ``root`` holding ``blended_images/``."""
    rejects: Rejects = []
    for scene_dir in _find_dirs(root, lambda p: (p / "blended_images").is_dir(), rejects, 3):
        yield _blendedmvs_scene(scene_dir)
    yield from rejected_scenes(rejects, "blendedmvs")


# ---------------------------------------------------------------------------------------------
# Habitat (DUSt3R/Fast3R preprocessing)


def read_habitat_camera(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``NNNNN_camera_params.json`` → (K ``[3, 3]``, c2w ``[4, 4]``)."""
    try:
        params = json.loads(path.read_text())
        K = np.asarray(params["camera_intrinsics"], dtype=np.float64).reshape(3, 3)
        pose = np.eye(4)
        pose[:3, :3] = np.asarray(params["R_cam2world"], dtype=np.float64).reshape(3, 3)
        pose[:3, 3] = np.asarray(params["t_cam2world"], dtype=np.float64).reshape(3)
    except (ValueError, KeyError) as exc:
        raise DatasetFormatError(path, f"expected camera_intrinsics, R_cam2world, t_cam2world: {exc!r}") from None
    return K, pose


def _habitat_scene(root: Path, scene_dir: Path) -> Scene:
    views, rejects = [], []
    for cam in (p for p in sorted_entries(scene_dir, rejects) if p.name.endswith("_camera_params.json")):
        stem = cam.name.removesuffix("_camera_params.json")
        candidates = (scene_dir / f"{stem}{suffix}" for suffix in (".jpeg", ".jpg", ".png"))
        image = next((p for p in candidates if p.is_file()), None)
        if image is None:
            rejects.append((str(cam), f"no image {stem}.jpeg next to it"))
            continue
        try:
            K, pose = read_habitat_camera(cam)
        except (OSError, ValueError) as exc:
            rejects.append((str(cam), str(exc)))
            continue
        depth_path = scene_dir / f"{stem}_depth.exr"
        views.append(_view(stem, image, K, pose, read_exr_depth if depth_path.is_file() else None, (str(depth_path),)))
    return Scene(id=_scene_id(root, scene_dir), source="habitat", views=views, rejects=rejects)


def list_habitat_scenes(root: Path) -> Iterator[Scene]:
    """Habitat stills: every folder under ``root`` holding ``*_camera_params.json`` files."""
    rejects: Rejects = []
    for scene_dir in _find_dirs(root, lambda p: next(p.glob("*_camera_params.json"), None) is not None, rejects):
        yield _habitat_scene(root, scene_dir)
    yield from rejected_scenes(rejects, "habitat")


DATASET_READERS: dict[str, Callable[[Path], Iterator[Scene]]] = {
    "co3d": list_co3d_scenes,
    "scannetpp": list_scannetpp_scenes,
    "arkitscenes": list_arkitscenes_scenes,
    "megadepth": list_megadepth_scenes,
    "blendedmvs": list_blendedmvs_scenes,
    "habitat": list_habitat_scenes,
}
