"""The files ``d3r reconstruct`` writes, each from one :class:`~d3r.infer.reconstruction.Reconstruction`.

- :func:`write_ply`: binary little-endian PLY of the kept points (plyfile): ``x y z`` float32,
  ``red green blue`` uint8, ``confidence`` float32 (the model's native value), ``view`` int32 (input order).
  Coordinates are d3r's world: view 0's camera frame, OpenCV axes (x right, y down, z forward), the
  model's unit. Blender, MeshLab and CloudCompare read the standard properties and keep the other two as
  scalar fields.
- :func:`write_glb`: glTF binary scene (trimesh): node ``points`` (the kept points, their colours) and one
  node ``frustum_<i>`` per view (:func:`d3r.infer.display.frustum_segments`: apex at the camera centre, the
  image rectangle at a depth of :data:`d3r.infer.display.FRUSTUM_DEPTH` x the framing radius, a triangle over
  the image's top edge marking "up"), in the view's :func:`d3r.infer.display.view_colours` colour (the viewer
  draws the same frustums in the same colours). **Axes:** glTF is y up with cameras looking down
  -z; d3r's world is OpenCV (y down, z forward). Every coordinate is converted by ``(x, y, z) → (x, -y, -z)``
  (a 180° turn about x, no mirroring), so view 0 looks down -z with its image up along +y, the way
  glTF viewers frame a scene.
- :func:`write_cameras_json`: every view's intrinsics and poses, see the function for the schema.
- :func:`write_depth_maps` / :func:`read_depth_map` (from :mod:`d3r.infer.depth_maps`): per-view depth and
  confidence maps as 16-bit PNG with a documented scale, or float32 EXR.
- :func:`write_colmap`: a COLMAP scene for SfM tools and Gaussian-splatting trainers, see the function.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from d3r.infer.depth_maps import read_depth_map, write_depth_maps
from d3r.infer.display import FRUSTUM_DEPTH, framing, frustum_segments, subsample, view_colours
from d3r.infer.reconstruction import Reconstruction
from d3r.scenes.colmap import colmap_K, write_colmap_model
from d3r.scenes.images import IMAGE_SUFFIXES

__all__ = ["read_depth_map", "write_cameras_json", "write_colmap", "write_depth_maps", "write_glb", "write_ply"]

logger = logging.getLogger(__name__)

COLMAP_MAX_POINTS = 200_000  # points3D cap: enough to seed Gaussian splatting, small enough to load fast
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0])  # (x, y, z) OpenCV → (x, -y, -z) glTF: y up, cameras look down -z


def write_ply(path: Path, rec: Reconstruction) -> int:
    """Write the kept points as a binary little-endian PLY; returns how many points it holds."""
    from plyfile import PlyData, PlyElement

    xyz, rgb, conf, view = rec.kept_points()
    vertices = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                          ("blue", "u1"), ("confidence", "<f4"), ("view", "<i4")])
    vertices["x"], vertices["y"], vertices["z"] = xyz.T
    vertices["red"], vertices["green"], vertices["blue"] = rgb.T
    vertices["confidence"], vertices["view"] = conf, view
    comments = [f"d3r model {rec.model}", f"confidence rule {rec.confidence_rule}",
                "world = view 0 camera frame, OpenCV axes (x right, y down, z forward)"]
    PlyData([PlyElement.describe(vertices, "vertex")], text=False, byte_order="<", comments=comments).write(str(path))
    logger.info("wrote %d points to %s", len(vertices), path)
    return len(vertices)


def write_glb(path: Path, rec: Reconstruction) -> None:
    """Write the kept points and one frustum per view as a glTF binary (axes converted: see the module)."""
    import trimesh
    from trimesh.path.entities import Line

    xyz, rgb, _, _ = rec.kept_points()
    depth = FRUSTUM_DEPTH * framing(xyz, rec.views)[1]
    scene = trimesh.Scene()
    if len(xyz):
        colours = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
        scene.add_geometry(trimesh.PointCloud(xyz.astype(np.float64) @ OPENCV_TO_GLTF.T, colors=colours),
                           geom_name="points", node_name="points")
    for i, (view, colour) in enumerate(zip(rec.views, view_colours(len(rec.views)), strict=True)):
        vertices, segments = frustum_segments(view, depth)
        frustum = trimesh.path.Path3D(entities=[Line(segment) for segment in segments],
                                      vertices=vertices @ OPENCV_TO_GLTF.T,
                                      colors=np.tile(colour, (len(segments), 1)),
                                      metadata={"view": view.name})
        scene.add_geometry(frustum, geom_name=f"frustum_{i}", node_name=f"frustum_{i}")
    Path(path).write_bytes(scene.export(file_type="glb"))
    logger.info("wrote %d points and %d camera frustums to %s", len(xyz), len(rec.views), path)


def _view_counts(rec: Reconstruction) -> list[dict[str, int]]:
    """Per view: ``valid`` (finite points) and ``kept`` (valid and kept by the confidence rule)."""
    counts = []
    for view in rec.views:
        valid = np.isfinite(view.points).all(-1)
        counts.append({"valid": int(valid.sum()), "kept": int((valid & view.keep).sum())})
    return counts


def _w2c(c2w: np.ndarray) -> np.ndarray:
    """``[4, 4]`` world-to-camera of a rigid camera-to-world ``c2w [4, 4]``."""
    rotation = c2w[:3, :3].T
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = rotation, -rotation @ c2w[:3, 3]
    return w2c


def write_cameras_json(path: Path, rec: Reconstruction) -> None:
    """Write every view's intrinsics and poses as JSON.

    Schema (``format: "d3r.cameras"``, ``version: 1``)::

        model             str    the model's label
        confidence_rule   str    the rule that kept the points (PLY, GLB, COLMAP)
        conventions       {str: str}  the frames and pixel convention, in words
        points            {"valid": int, "kept": int}   all views together (kept = the PLY's points)
        views             [ {name, index, width, height,
                             K [3][3], fx, fy, cx, cy          pixel centres at integers (d3r, OpenCV)
                             colmap: {fx, fy, cx, cy}          pixel centres at +0.5 (COLMAP, 3DGS, nerfstudio)
                             c2w [4][4], w2c [4][4]            OpenCV axes, world = view 0's camera
                             points: {"valid", "kept"}} ]
    """
    counts = _view_counts(rec)
    views = []
    for i, (view, count) in enumerate(zip(rec.views, counts, strict=True)):
        width, height = view.size
        K = np.asarray(view.K, dtype=np.float64)
        fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
        shifted = colmap_K(K)
        colmap = {"fx": fx, "fy": fy, "cx": float(shifted[0, 2]), "cy": float(shifted[1, 2])}
        views.append({
            "name": view.name, "index": i, "width": width, "height": height,
            "K": K.tolist(), "fx": fx, "fy": fy, "cx": cx, "cy": cy,
            "colmap": colmap,
            "c2w": np.asarray(view.c2w, dtype=np.float64).tolist(), "w2c": _w2c(view.c2w).tolist(),
            "points": count,
        })
    document = {
        "format": "d3r.cameras", "version": 1,
        "model": rec.model, "confidence_rule": rec.confidence_rule,
        "conventions": {
            "world": "view 0's camera frame, in the model's unit",
            "axes": "OpenCV: x right, y down, z forward",
            "c2w": "camera-to-world 4x4; w2c is its inverse",
            "pixels": "K, fx..cy: centre of the first pixel at (0, 0); colmap: at (0.5, 0.5)",
            "size": "width x height of the view as written (the photo's orientation)",
        },
        "points": {"valid": sum(c["valid"] for c in counts), "kept": sum(c["kept"] for c in counts)},
        "views": views,
    }
    Path(path).write_text(json.dumps(document, indent=2))
    logger.info("wrote %d cameras to %s", len(views), path)


def colmap_image_names(rec: Reconstruction) -> list[str]:
    """The file name of each view's image in a COLMAP scene: the view's name when it is an image file name
    (``IMG_1.jpg``), else the name with ``.png`` added (video frames: ``frame_000002`` → ``frame_000002.png``)."""
    names = []
    for view in rec.views:
        name = Path(view.name)
        if name.is_absolute() or ".." in name.parts or not name.name:
            raise ValueError(f"view name {view.name!r} is not a relative file name")
        names.append(view.name if name.suffix.lower() in IMAGE_SUFFIXES else f"{view.name}.png")
    if len(set(names)) != len(names):
        raise ValueError("view names are not unique")
    return names


def write_colmap(folder: Path, rec: Reconstruction) -> None:
    """Write a COLMAP scene into ``folder``, the layout Gaussian-splatting trainers (3DGS ``-s folder``,
    gsplat ``--data_dir folder``), COLMAP's own tools and :func:`d3r.scenes.colmap.read_colmap_scene` read::

        folder/images/NAME              each view's image as the model saw it (output size, the photo's
                                        orientation), so the intrinsics hold for its pixels
        folder/sparse/0/cameras.bin     PINHOLE cameras (views of one size and K share one; sizes may differ)
        folder/sparse/0/images.bin      one image per view: world-to-camera pose, camera id, NAME
        folder/sparse/0/points3D.bin    the kept points with their colours, at most COLMAP_MAX_POINTS of them
                                        (:func:`d3r.infer.display.subsample` when there are more), no tracks
        folder/sparse/0/{rigs,frames}.bin   pycolmap's trivial rigs and frames (COLMAP >= 3.12; others ignore them)

    ``NAME`` is :func:`colmap_image_names`; JPEG images are re-encoded at quality 95, others are lossless.
    The model is written by pycolmap through :func:`d3r.scenes.colmap.write_colmap_model`, which shifts the
    principal point by +0.5 px to COLMAP's pixel convention.
    """
    folder = Path(folder)
    names = colmap_image_names(rec)
    for name, view in zip(names, rec.views, strict=True):
        path = folder / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(view.image).save(path, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
    xyz, rgb, _, _ = rec.kept_points()
    chosen = subsample(len(xyz), COLMAP_MAX_POINTS)
    write_colmap_model(folder / "sparse" / "0", names, [view.size for view in rec.views],
                       np.stack([view.K for view in rec.views]), np.stack([view.c2w for view in rec.views]),
                       xyz[chosen], rgb[chosen])
    logger.info("wrote a COLMAP model of %d views and %d points to %s", len(names), len(chosen), folder)
