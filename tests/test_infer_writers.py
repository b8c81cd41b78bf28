"""Reconstruct output files: each writer on a small hand-made reconstruction of a plane, read back by the
library people open it with (plyfile, trimesh, json, PIL/OpenEXR, pycolmap)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from d3r.geometry import depth_to_points, transform_points
from d3r.infer import writers
from d3r.infer.depth_maps import view_file_stems
from d3r.infer.reconstruction import Reconstruction, ViewReconstruction
from d3r.infer.writers import (
    OPENCV_TO_GLTF,
    read_depth_map,
    write_cameras_json,
    write_colmap,
    write_depth_maps,
    write_glb,
    write_ply,
)
from d3r.scenes.colmap import read_colmap_scene

PLANE_Z = 3.0  # the scene: the plane z = 3 in view 0's camera frame


def _view(index: int, width: int, height: int, c2w: np.ndarray, rng: np.random.Generator) -> ViewReconstruction:
    """A view of the plane ``z = PLANE_Z``: depth from ray–plane intersection, colours that name the view."""
    K = np.array([[0.9 * width, 0, (width - 1) / 2], [0, 0.9 * width, (height - 1) / 2], [0, 0, 1]])
    rays = depth_to_points(np.ones((height, width)), K)  # camera-frame rays with z = 1
    world_rays = rays @ c2w[:3, :3].T
    depth = (PLANE_Z - c2w[2, 3]) / world_rays[..., 2]
    points = transform_points(c2w, rays * depth[..., None]).astype(np.float32)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 80 * index + 10
    image[..., 1] = np.arange(width, dtype=np.uint8)[None] * 7
    image[..., 2] = np.arange(height, dtype=np.uint8)[:, None] * 5
    conf = rng.uniform(1.0, 20.0, size=(height, width)).astype(np.float32)
    depth = depth.astype(np.float32)
    if index == 1:  # a pixel the model gave no finite point for
        points[0, 0], depth[0, 0], conf[0, 0] = np.nan, np.nan, np.nan
    return ViewReconstruction(name=f"IMG_{index}.jpg" if index < 2 else "frame_000002", image=image,
                              points=points, conf=conf, depth=depth, K=K, c2w=c2w, keep=conf >= 5.0)


def plane_reconstruction() -> Reconstruction:
    """Three views of a plane: two landscape 8x6, one portrait 6x8, the last two moved and turned."""
    rng = np.random.default_rng(0)
    poses = [np.eye(4)]
    for angle, shift in ((8.0, [0.4, -0.1, 0.2]), (-12.0, [-0.3, 0.2, -0.1])):
        pose = np.eye(4)
        pose[:3, :3] = Rotation.from_euler("yx", [angle, angle / 2], degrees=True).as_matrix()
        pose[:3, 3] = shift
        poses.append(pose)
    views = [_view(0, 8, 6, poses[0], rng), _view(1, 8, 6, poses[1], rng), _view(2, 6, 8, poses[2], rng)]
    return Reconstruction(views=views, model="test_plane", confidence_rule="conf >= 5 (absolute)")


@pytest.fixture
def rec() -> Reconstruction:
    return plane_reconstruction()


def test_ply_holds_the_kept_points_with_colours_confidence_and_view(tmp_path, rec):
    from plyfile import PlyData

    count = write_ply(tmp_path / "points.ply", rec)
    xyz, rgb, conf, view = rec.kept_points()
    assert count == len(xyz) > 0 and count < sum(v.keep.size for v in rec.views)
    ply = PlyData.read(str(tmp_path / "points.ply"))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "red", "green", "blue", "confidence", "view"]
    assert vertex.data.dtype["red"] == np.uint8 and vertex.data.dtype["view"] == np.int32
    assert vertex.count == count
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], -1), xyz)
    np.testing.assert_array_equal(np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1), rgb)
    np.testing.assert_array_equal(vertex["confidence"], conf)
    np.testing.assert_array_equal(np.bincount(vertex["view"]), [int(v.keep.sum()) for v in rec.views])
    np.testing.assert_allclose(vertex["z"], PLANE_Z, atol=1e-5)  # the plane came through
    assert set(vertex["red"][vertex["view"] == 2]) == {170}


def test_glb_has_the_points_and_one_frustum_per_view_in_gltf_axes(tmp_path, rec):
    import trimesh

    write_glb(tmp_path / "scene.glb", rec)
    scene = trimesh.load(tmp_path / "scene.glb", file_type="glb")
    xyz, rgb, _, _ = rec.kept_points()
    points = scene.geometry["points"]
    assert isinstance(points, trimesh.PointCloud) and len(points.vertices) == len(xyz)
    np.testing.assert_allclose(points.vertices, xyz @ OPENCV_TO_GLTF.T, atol=1e-5)
    np.testing.assert_allclose(points.vertices[:, 2], -PLANE_Z, atol=1e-5)  # in front of view 0: down -z
    np.testing.assert_array_equal(points.colors[:, :3], rgb)
    frustums = sorted(name for name in scene.geometry if name.startswith("frustum_"))
    assert frustums == ["frustum_0", "frustum_1", "frustum_2"]
    for i, view in enumerate(rec.views):
        vertices = scene.geometry[f"frustum_{i}"].vertices
        apex = OPENCV_TO_GLTF @ view.c2w[:3, 3]
        assert np.isclose(vertices, apex, atol=1e-6).all(-1).any()  # drawn from the camera centre
        assert np.ptp(vertices, axis=0).max() < 0.2 * np.linalg.norm(np.ptp(xyz, axis=0))  # small next to the scene
    gltf = json.loads(_glb_json(tmp_path / "scene.glb"))
    lines = [m for m in gltf["meshes"] if m["name"].startswith("frustum_")]
    assert all(m["primitives"][0]["mode"] == 1 and "COLOR_0" in m["primitives"][0]["attributes"] for m in lines)


def _glb_json(path) -> str:
    """The JSON chunk of a glTF binary (header 12 bytes, then chunk length, chunk type, chunk data)."""
    data = path.read_bytes()
    length = int.from_bytes(data[12:16], "little")
    assert data[16:20] == b"JSON"
    return data[20:20 + length].decode()


def test_cameras_json_schema(tmp_path, rec):
    write_cameras_json(tmp_path / "cameras.json", rec)
    document = json.loads((tmp_path / "cameras.json").read_text())
    assert document["format"] == "d3r.cameras" and document["version"] == 1
    assert document["model"] == "test_plane" and document["confidence_rule"] == "conf >= 5 (absolute)"
    assert document["points"]["kept"] == len(rec.kept_points()[0])
    assert document["points"]["valid"] == sum(v.keep.size for v in rec.views) - 1  # one NaN point
    assert [v["name"] for v in document["views"]] == [v.name for v in rec.views]
    for entry, view in zip(document["views"], rec.views, strict=True):
        assert (entry["width"], entry["height"]) == view.size
        np.testing.assert_allclose(entry["K"], view.K)
        assert (entry["fx"], entry["cx"], entry["cy"]) == (view.K[0, 0], view.K[0, 2], view.K[1, 2])
        assert entry["colmap"]["cx"] == view.K[0, 2] + 0.5 and entry["colmap"]["cy"] == view.K[1, 2] + 0.5
        np.testing.assert_allclose(entry["c2w"], view.c2w)
        np.testing.assert_allclose(np.array(entry["w2c"]) @ view.c2w, np.eye(4), atol=1e-12)
        assert entry["points"]["kept"] == int(view.keep.sum())
    assert document["views"][2]["width"] == 6 and document["views"][2]["height"] == 8  # portrait stays portrait


@pytest.mark.parametrize("fmt", ["png16", "exr"])
def test_depth_maps_round_trip_within_the_documented_precision(tmp_path, rec, fmt):
    write_depth_maps(tmp_path / "depth", rec, fmt)
    index = json.loads((tmp_path / "depth" / "depth_maps.json").read_text())
    assert index["format"] == fmt and len(index["views"]) == 3
    suffix = ".png" if fmt == "png16" else ".exr"
    for stem, entry, view in zip(["IMG_0", "IMG_1", "frame_000002"], index["views"], rec.views, strict=True):
        for kind, written in (("depth", view.depth), ("conf", view.conf)):
            assert entry[kind]["file"] == f"{stem}.{kind}{suffix}"
            values = read_depth_map(tmp_path / "depth" / entry[kind]["file"])
            assert values.dtype == np.float32 and values.shape == view.depth.shape  # portrait stays H x W
            valid = np.isfinite(written)
            assert (values[~valid] == 0).all()  # no value
            if fmt == "png16":
                scale = entry[kind]["scale"]
                assert scale == pytest.approx(np.nanmax(written) / 65535)
                assert np.abs(values[valid] - written[valid]).max() <= scale / 2 * (1 + 1e-5)
            else:
                np.testing.assert_array_equal(values[valid], written[valid])


def test_view_file_stems_are_unique_and_flat():
    assert view_file_stems(["IMG_1.jpg", "frame_000002", "a/b.png"]) == ["IMG_1", "frame_000002", "a__b"]
    assert view_file_stems(["a.jpg", "a.png", "b.jpg"]) == ["a.jpg", "a.png", "b"]
    with pytest.raises(ValueError, match="not unique"):
        view_file_stems(["a.jpg", "a.jpg"])


def _assert_kept_points(points: list, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Every pycolmap ``Point3D`` is one of the kept points (within 1e-5) with that point's colour."""
    from scipy.spatial import cKDTree

    distance, index = cKDTree(xyz).query(np.array([p.xyz for p in points]))
    assert distance.max() < 1e-5
    np.testing.assert_array_equal(np.array([p.color for p in points]), rgb[index])
    assert len(set(index.tolist())) == len(points)  # no point written twice


def test_colmap_scene_reads_back_in_pycolmap_with_poses_intrinsics_and_coloured_points(tmp_path, rec):
    import pycolmap
    from PIL import Image

    write_colmap(tmp_path / "scene", rec)
    model = pycolmap.Reconstruction(str(tmp_path / "scene" / "sparse" / "0"))
    assert model.num_images() == 3
    for name, view in zip(["IMG_0.jpg", "IMG_1.jpg", "frame_000002.png"], rec.views, strict=True):
        image = model.find_image_with_name(name)
        camera = model.cameras[image.camera_id]
        assert camera.model_name == "PINHOLE" and (camera.width, camera.height) == view.size
        colmap_K = view.K + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])  # COLMAP: first pixel centre at 0.5
        np.testing.assert_allclose(camera.calibration_matrix(), colmap_K, atol=1e-6)
        np.testing.assert_allclose(image.cam_from_world().matrix(), np.linalg.inv(view.c2w)[:3], atol=1e-6)
        with Image.open(tmp_path / "scene" / "images" / name) as written:
            assert written.size == view.size  # the pixels the intrinsics describe, portrait stays portrait
            if name.endswith(".png"):
                np.testing.assert_array_equal(np.asarray(written), view.image)
    scene = read_colmap_scene(tmp_path / "scene")  # and d3r's own reader gives back our convention
    assert [v.name for v in scene.views] == ["frame_000002", "IMG_0", "IMG_1"] and not scene.rejects
    for read, view in zip(scene.views, [rec.views[2], *rec.views[:2]], strict=True):
        np.testing.assert_allclose(read.K, view.K, atol=1e-6)
        np.testing.assert_allclose(read.pose, view.c2w, atol=1e-6)
    xyz, rgb, _, _ = rec.kept_points()
    points = list(model.points3D.values())
    assert len(points) == len(xyz)
    _assert_kept_points(points, xyz, rgb)


def test_colmap_points_are_capped_to_a_subset_of_the_kept_points(tmp_path, rec, monkeypatch):
    import pycolmap

    monkeypatch.setattr(writers, "COLMAP_MAX_POINTS", 25)
    write_colmap(tmp_path / "scene", rec)
    points = list(pycolmap.Reconstruction(str(tmp_path / "scene" / "sparse" / "0")).points3D.values())
    assert len(points) == 25
    _assert_kept_points(points, *rec.kept_points()[:2])


def test_a_rule_that_keeps_no_point_still_writes_every_file(tmp_path, rec):
    import pycolmap
    import trimesh
    from plyfile import PlyData

    for view in rec.views:
        view.keep[:] = False
    assert write_ply(tmp_path / "points.ply", rec) == 0
    assert PlyData.read(str(tmp_path / "points.ply"))["vertex"].count == 0
    write_glb(tmp_path / "scene.glb", rec)
    geometry = trimesh.load(tmp_path / "scene.glb", file_type="glb").geometry
    assert sorted(geometry) == ["frustum_0", "frustum_1", "frustum_2"]
    write_cameras_json(tmp_path / "cameras.json", rec)
    assert json.loads((tmp_path / "cameras.json").read_text())["points"]["kept"] == 0
    write_colmap(tmp_path, rec)
    model = pycolmap.Reconstruction(str(tmp_path / "sparse" / "0"))
    assert model.num_images() == 3 and model.num_points3D() == 0
