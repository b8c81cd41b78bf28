"""COLMAP models: `d3r synth` export read back, binary models, camera models, dense depth, bad input."""

import logging
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from d3r.cli import main
from d3r.config import ScenesConfig
from d3r.scenes.colmap import (
    ColmapFormatError,
    camera_intrinsics,
    find_colmap_scenes,
    read_colmap_scene,
    read_model,
    write_colmap_model,
    write_colmap_scene,
)
from d3r.scenes.sources import list_scenes
from d3r.scenes.synthetic import render_scene

SIZE = (40, 30)


@pytest.fixture
def scene_dir(tmp_path: Path) -> Path:
    return write_colmap_scene(render_scene(0, 3, 3, SIZE), tmp_path / "room")


def quaternion_matrix(qw, qx, qy, qz) -> np.ndarray:
    """Rotation matrix of a unit quaternion (Hamilton convention, as COLMAP)."""
    return np.array([
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)],
        [2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)],
        [2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)],
    ])


def data_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_synth_export_reads_back_exactly(tmp_path):
    assert main(["synth", "--out", str(tmp_path), "--scenes", "2", "--views", "3", "--size", "40x30",
                 "--seed", "1"]) == 0
    scene_dirs = find_colmap_scenes(tmp_path)
    assert [p.name for p in scene_dirs] == ["room_0000", "room_0001"]
    for index, folder in enumerate(scene_dirs):
        expected = render_scene(index, 1, 3, SIZE)
        scene = read_colmap_scene(folder)
        assert scene.source == "colmap" and scene.id == folder.name and not scene.rejects
        assert [v.name for v in scene.views] == [v.name for v in expected.views]
        for got, want in zip(scene.views, expected.views, strict=True):
            assert got.image is None
            got = pickle.loads(pickle.dumps(got)).load()
            np.testing.assert_allclose(got.K, want.K, atol=1e-6)
            np.testing.assert_allclose(got.pose, want.pose, atol=1e-6)
            np.testing.assert_array_equal(got.image, want.image)
            np.testing.assert_array_equal(got.depth, want.depth)
            assert "distortion" not in got.meta


def test_written_files_follow_colmap_conventions(scene_dir):
    """Checked against COLMAP's definitions directly, not through our reader."""
    scene = render_scene(0, 3, 3, SIZE)
    (camera_line,) = data_lines(scene_dir / "sparse/0/cameras.txt")
    _, model, width, height, fx, fy, cx, cy = camera_line.split()
    assert (model, int(width), int(height)) == ("PINHOLE", *SIZE)
    assert float(cx) == SIZE[0] / 2 and float(cy) == SIZE[1] / 2  # COLMAP: first pixel centre at 0.5
    lines = data_lines(scene_dir / "sparse/0/images.txt")
    assert len(lines) == 2 * len(scene.views) and all(line == "" for line in lines[1::2])
    point = np.array([1.0, 2.0, 1.5])
    for line, view in zip(lines[::2], scene.views, strict=True):
        fields = line.split()
        R = quaternion_matrix(*map(float, fields[1:5]))
        t = np.array(list(map(float, fields[5:8])))
        assert fields[9] == f"{view.name}.png"
        world_to_camera = np.linalg.inv(view.pose)
        np.testing.assert_allclose(R @ point + t, world_to_camera[:3, :3] @ point + world_to_camera[:3, 3], atol=1e-9)
        assert (scene_dir / "images" / fields[9]).is_file()
        depth = np.load(scene_dir / "depths" / f"{view.name}.npy")
        assert depth.dtype == np.float32 and depth.shape == (SIZE[1], SIZE[0])
    assert data_lines(scene_dir / "sparse/0/points3D.txt") == []
    with open(scene_dir / "sparse/0/points3D.txt", "a") as f:
        f.write("3 0.5 -1.25 2 255 128 0 0.7\n7 1 2 3 4 5 6 0.1\n")
    xyz, rgb = model_points(read_model(scene_dir / "sparse/0")[0])
    np.testing.assert_array_equal(xyz, [[0.5, -1.25, 2], [1, 2, 3]])
    np.testing.assert_array_equal(rgb, [[255, 128, 0], [4, 5, 6]])


def model_points(model: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """xyz ``[P, 3]`` and rgb ``[P, 3]`` of a model's points3D in id order."""
    points = [model.points3D[i] for i in sorted(model.points3D)]
    return np.array([p.xyz for p in points]).reshape(-1, 3), np.array([p.color for p in points]).reshape(-1, 3)


def write_binary_model(folder: Path, cameras: list, images: list, points: list) -> None:
    """cameras.bin / images.bin / points3D.bin exactly as COLMAP lays them out (little-endian)."""
    with open(folder / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cameras)))
        for camera_id, model_id, width, height, params in cameras:
            f.write(struct.pack("<iiQQ", camera_id, model_id, width, height))
            f.write(struct.pack(f"<{len(params)}d", *params))
    with open(folder / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for image_id, qvec, tvec, camera_id, name, points2d in images:
            f.write(struct.pack("<idddddddi", image_id, *qvec, *tvec, camera_id))
            f.write(name.encode() + b"\x00")
            f.write(struct.pack("<Q", len(points2d)))
            for x, y, point_id in points2d:
                f.write(struct.pack("<ddq", x, y, point_id))
    with open(folder / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", len(points)))
        for point_id, xyz, rgb, track in points:
            f.write(struct.pack("<QdddBBBd", point_id, *xyz, *rgb, 0.5))
            f.write(struct.pack("<Q", len(track)))
            for image_id, index in track:
                f.write(struct.pack("<ii", image_id, index))


def test_binary_model_reads_like_text(scene_dir):
    sparse = scene_dir / "sparse/0"
    from_text = read_colmap_scene(scene_dir)
    camera = data_lines(sparse / "cameras.txt")[0].split()
    image_lines = data_lines(sparse / "images.txt")[::2]
    images = [(int(f[0]), tuple(map(float, f[1:5])), tuple(map(float, f[5:8])), int(f[8]), f[9],
               [(1.5, 2.5, 7), (3.0, 4.0, -1)]) for f in (line.split() for line in image_lines)]
    points = [(7, (1.0, 2.0, 3.0), (10, 20, 30), [(1, 0), (2, 0)]), (9, (4.0, 5.0, 6.0), (1, 2, 3), [])]
    for path in sparse.glob("*.txt"):
        path.unlink()
    write_binary_model(sparse, [(1, 1, int(camera[2]), int(camera[3]), list(map(float, camera[4:])))],
                       images, points)
    from_binary = read_colmap_scene(scene_dir)
    assert from_binary.meta["format"] == "binary" and from_text.meta["format"] == "text"
    assert [v.name for v in from_binary.views] == [v.name for v in from_text.views]
    for a, b in zip(from_binary.views, from_text.views, strict=True):
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.pose, b.pose)
    xyz, rgb = model_points(read_model(sparse)[0])
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(rgb, [[10, 20, 30], [1, 2, 3]])


@pytest.mark.parametrize(
    ("model", "params", "focal", "distortion"),
    [
        ("SIMPLE_PINHOLE", (100.0, 20.0, 15.0), (100.0, 100.0), None),
        ("PINHOLE", (100.0, 90.0, 20.0, 15.0), (100.0, 90.0), None),
        ("SIMPLE_RADIAL", (100.0, 20.0, 15.0, 0.1), (100.0, 100.0), {"k": 0.1}),
        ("RADIAL", (100.0, 20.0, 15.0, 0.1, -0.02), (100.0, 100.0), {"k1": 0.1, "k2": -0.02}),
        ("OPENCV", (100.0, 90.0, 20.0, 15.0, 0.1, -0.02, 0.001, 0.002), (100.0, 90.0),
         {"k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.002}),
        ("OPENCV_FISHEYE", (100.0, 90.0, 20.0, 15.0, 0.0, 0.0, 0.0, 0.0), (100.0, 90.0),
         {"k1": 0.0, "k2": 0.0, "k3": 0.0, "k4": 0.0}),  # a fisheye is warned about even with zero k
    ],
)
def test_camera_models_convert_to_our_K_and_note_distortion(scene_dir, caplog, model, params, focal, distortion):
    camera = pycolmap.Camera(model=model, width=SIZE[0], height=SIZE[1], params=list(params), camera_id=1)
    K, noted = camera_intrinsics(camera)
    cx, cy = params[2:4] if focal[0] != focal[1] else params[1:3]
    np.testing.assert_array_equal(K, [[focal[0], 0, cx - 0.5], [0, focal[1], cy - 0.5], [0, 0, 1]])
    assert noted == (None if distortion is None else {"model": model, "params": distortion})
    cameras = scene_dir / "sparse/0/cameras.txt"
    cameras.write_text(f"1 {model} {SIZE[0]} {SIZE[1]} {' '.join(map(str, params))}\n")
    with caplog.at_level(logging.WARNING, logger="d3r.scenes.colmap"):
        scene = read_colmap_scene(scene_dir)
    view = scene.views[0]
    np.testing.assert_array_equal(view.K, K)
    assert view.meta["camera_model"] == model
    if distortion is None:
        assert "distortion" not in view.meta and not caplog.records
    else:
        assert view.meta["distortion"]["params"] == distortion
        assert any(model in r.getMessage() and "distortion" in r.getMessage() for r in caplog.records)


def test_missing_image_is_a_reject_and_the_rest_is_read(scene_dir):
    (scene_dir / "images/view_001.png").unlink()
    scene = read_colmap_scene(scene_dir)
    assert [v.name for v in scene.views] == ["view_000", "view_002"]
    ((item, reason),) = scene.rejects
    assert item.endswith("view_001.png") and "no such file" in reason


def test_image_without_a_rigid_pose_or_outside_images_is_a_reject(scene_dir):
    for stem in ("rigs", "frames"):  # a model as COLMAP < 3.12 writes it: poses in images.txt
        (scene_dir / f"sparse/0/{stem}.txt").unlink()
    images = scene_dir / "sparse/0/images.txt"
    lines = images.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith(" view_001.png"))
    fields = lines[index].split()
    lines[index] = " ".join([fields[0], "0", "0", "0", "0", *fields[5:]])
    lines.append(" ".join(["9", "1", "0", "0", "0", "0", "0", "0", fields[8], "../room/images/view_000.png"]) + "\n")
    images.write_text("\n".join(lines) + "\n")
    scene = read_colmap_scene(scene_dir)
    assert [v.name for v in scene.views] == ["view_000", "view_002"]
    reasons = dict(scene.rejects)
    assert "no rigid pose" in reasons[str(scene_dir / "images/view_001.png")]
    assert "not a path inside images/" in reasons[str(scene_dir / "images/../room/images/view_000.png")]


def test_depth_of_another_size_is_a_reject_naming_both_sizes(scene_dir):
    np.save(scene_dir / "depths/view_002.npy", np.ones((10, 12), dtype=np.float32))
    scene = read_colmap_scene(scene_dir)
    assert [v.name for v in scene.views] == ["view_000", "view_001"]
    ((item, reason),) = scene.rejects
    assert item.endswith("view_002.png")
    assert "view_002.npy" in reason and "12x10" in reason and f"{SIZE[0]}x{SIZE[1]}" in reason


def write_dense_map(path: Path, depth: np.ndarray) -> None:
    """COLMAP's dense map format: 'W&H&C&' then float32, channel by channel, x fastest."""
    height, width = depth.shape
    with open(path, "wb") as f:
        f.write(f"{width}&{height}&1&".encode())
        f.write(np.asarray(depth, dtype="<f4").tobytes())


def test_dense_depth_maps_are_read(scene_dir):
    expected = render_scene(0, 3, 3, SIZE).views
    shutil.rmtree(scene_dir / "depths")
    dense = scene_dir / "stereo/depth_maps"
    dense.mkdir(parents=True)
    write_dense_map(dense / "view_000.png.geometric.bin", expected[0].depth)
    write_dense_map(dense / "view_001.png.photometric.bin", expected[1].depth)
    write_dense_map(dense / "view_002.png.geometric.bin", np.ones((SIZE[0], SIZE[1])))  # transposed size
    scene = read_colmap_scene(scene_dir)
    assert [v.name for v in scene.views] == ["view_000", "view_001"]
    assert "view_002.png.geometric.bin" in scene.rejects[0][1]
    for view, want in zip(scene.views, expected, strict=False):
        np.testing.assert_array_equal(view.load().depth, want.depth)


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("cameras.txt", "# c\n1 PINHOLE 40 30 100 100 20\n"),  # a parameter short
        ("cameras.txt", "1 PINHOLE 40 30 100 abc 20 15\n"),
        ("cameras.txt", "1 WEIRD 40 30 100\n"),
        ("images.txt", "1 1 0 0 0 0 0 0 1\n\n"),  # no name
        ("images.txt", "1 1 0 0 x 0 0 0 1 a.png\n\n"),
        ("images.txt", "1 1 0 0 0 0 0 0 1 a.png\n1.0 2.0\n"),  # 2D point without its 3D id
        ("images.txt", "1 1 0 0 0 0 0 0 7 a.png\n\n"),  # camera 7 is not in the model
        ("points3D.txt", "1 1 2 3 255 128 0 -1 7 0\n"),  # track names image 7
        ("cameras.txt", "\x00\xff garbage \x01\x02\n\xfe"),
        ("images.txt", "\x00\xff garbage \x01\x02\n\xfe"),
        ("points3D.txt", "\x00\xff garbage \x01\x02\n\xfe"),
    ],
)
def test_malformed_text_model_is_a_named_error(tmp_path, scene_dir, file, text):
    """What pycolmap raises becomes a ColmapFormatError naming the model; the source turns it into a reject."""
    (scene_dir / "sparse/0" / file).write_bytes(text.encode("latin-1"))
    with pytest.raises(ColmapFormatError, match=r"sparse/0: text model: pycolmap cannot read it: .+"):
        read_colmap_scene(scene_dir)
    (scene,) = list_scenes(ScenesConfig(source="colmap", root=scene_dir))
    assert not scene.views and "pycolmap cannot read it" in scene.rejects[0][1]


def test_image_name_that_is_not_utf8_is_a_named_error(scene_dir):
    images = scene_dir / "sparse/0/images.txt"
    images.write_bytes(images.read_bytes().replace(b"view_001.png", b"view_\xff01.png"))
    with pytest.raises(ColmapFormatError, match="not valid UTF-8"):
        read_colmap_scene(scene_dir)


def test_truncated_binary_names_file_and_offset(scene_dir):
    sparse = scene_dir / "sparse/0"
    for path in sparse.glob("*.txt"):
        path.unlink()
    write_binary_model(sparse, [(1, 1, *SIZE, [100.0, 100.0, 20.0, 15.0])], [], [])
    data = (sparse / "cameras.bin").read_bytes()
    (sparse / "cameras.bin").write_bytes(data[:-4])
    with pytest.raises(ColmapFormatError, match=r"cameras.bin: byte 32: file ends early"):
        read_colmap_scene(scene_dir)


# Run in a child process: unchecked, pycolmap reads a truncated images.bin in an endless loop (holding the GIL).
BINARY_FUZZ = """
import sys
from pathlib import Path
from d3r.scenes.colmap import ColmapFormatError, read_model
folder, original = Path(sys.argv[1]), {p: p.read_bytes() for p in Path(sys.argv[1]).glob("*.bin")}
rng, checked = __import__("random").Random(0), 0
for path, data in original.items():
    garbage = bytes(rng.randrange(256) for _ in range(len(data)))
    for broken in [data[:cut] for cut in range(len(data))] + [data + b"\\x00", garbage, data[:8] + garbage[8:]]:
        path.write_bytes(broken)
        try:
            read_model(folder)
        except ColmapFormatError as exc:
            assert path.name in str(exc), exc
            checked += 1
        else:
            raise AssertionError(f"{path.name} with {len(broken)} of {len(data)} bytes was read")
    path.write_bytes(data)
read_model(folder)
print(checked)
"""


def test_truncated_or_garbage_binary_files_are_named_errors_never_a_hang(tmp_path):
    """Every truncation, a trailing byte and garbage of each of the five binary files: a ColmapFormatError."""
    sizes, K, c2w = random_cameras(np.random.default_rng(1), 2)
    rng = np.random.default_rng(2)
    folder = write_colmap_model(tmp_path / "model", ["a.png", "b.png"], sizes, K, c2w, rng.normal(size=(3, 3)),
                                rng.integers(0, 256, (3, 3)))
    assert sorted(p.name for p in folder.iterdir()) == [
        "cameras.bin", "frames.bin", "images.bin", "points3D.bin", "rigs.bin"]
    total = sum(p.stat().st_size + 3 for p in folder.iterdir())
    result = subprocess.run([sys.executable, "-c", BINARY_FUZZ, str(folder)], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) == total


def test_dense_workspace_layout_is_read(scene_dir):
    """COLMAP's undistorted workspace: the model directly in sparse/, depth in stereo/depth_maps."""
    expected = render_scene(0, 3, 3, SIZE).views
    for path in (scene_dir / "sparse/0").iterdir():
        path.rename(scene_dir / "sparse" / path.name)
    (scene_dir / "sparse/0").rmdir()
    shutil.rmtree(scene_dir / "depths")
    (scene_dir / "stereo/depth_maps").mkdir(parents=True)
    for view in expected:
        write_dense_map(scene_dir / f"stereo/depth_maps/{view.name}.png.geometric.bin", view.depth)
    scene = read_colmap_scene(scene_dir)
    assert scene.meta["model"] == str(scene_dir / "sparse") and not scene.rejects
    for got, want in zip(scene.views, expected, strict=True):
        np.testing.assert_allclose(got.pose, want.pose, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(got.load().depth, want.depth)


def test_bad_dense_depth_is_a_reject_not_garbage(scene_dir):
    shutil.rmtree(scene_dir / "depths")
    dense = scene_dir / "stereo/depth_maps"
    dense.mkdir(parents=True)
    depth = render_scene(0, 3, 3, SIZE).views[0].depth
    write_dense_map(dense / "view_000.png.geometric.bin", depth)
    data = (dense / "view_000.png.geometric.bin").read_bytes()
    (dense / "view_001.png.geometric.bin").write_bytes(data[:-8])  # pycolmap alone would pad it silently
    (dense / "view_002.png.geometric.bin").write_bytes(b"\xff\x00garbage" * 40)
    scene = read_colmap_scene(scene_dir)
    assert [v.name for v in scene.views] == ["view_000"]
    np.testing.assert_array_equal(scene.views[0].load().depth, depth)
    reasons = dict(scene.rejects)
    assert "holds 4792 bytes, header says 40x30x1" in reasons[str(scene_dir / "images/view_001.png")]
    assert "expected 'WIDTH&HEIGHT&CHANNELS&'" in reasons[str(scene_dir / "images/view_002.png")]


def test_find_scenes_root_or_folder_of_models(tmp_path, scene_dir):
    assert find_colmap_scenes(scene_dir) == [scene_dir]
    other = write_colmap_scene(render_scene(1, 3, 2, (16, 12)), tmp_path / "nested/room_b")
    (tmp_path / "not_a_scene").mkdir()
    assert find_colmap_scenes(tmp_path) == [other, scene_dir]
    with pytest.raises(ValueError, match="not a folder"):
        find_colmap_scenes(tmp_path / "missing")
    with pytest.raises(ValueError, match="no COLMAP model"):
        read_colmap_scene(tmp_path / "not_a_scene")


def random_cameras(rng: np.random.Generator, count: int) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """``count`` sizes, Ks ``[N, 3, 3]`` (ours) and camera-to-world poses ``[N, 4, 4]``, all different."""
    from scipy.spatial.transform import Rotation

    sizes = [(int(rng.integers(20, 60)), int(rng.integers(20, 60))) for _ in range(count)]
    K = np.zeros((count, 3, 3))
    K[:, 0, 0], K[:, 1, 1] = rng.uniform(30, 90, count), rng.uniform(30, 90, count)
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = rng.uniform(5, 15, count), rng.uniform(5, 15, count), 1.0
    c2w = np.tile(np.eye(4), (count, 1, 1))
    c2w[:, :3, :3] = Rotation.random(count, random_state=int(rng.integers(1 << 31))).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(count, 3)) * 3
    return sizes, K, c2w


@pytest.mark.parametrize("text", [False, True])
def test_write_colmap_model_reads_back_in_pycolmap(tmp_path, text):
    """pycolmap reads what we write: COLMAP's K is ours + 0.5 px, poses world-to-camera, points with colours."""
    import pycolmap

    rng = np.random.default_rng(3)
    names = ["a.png", "sub/ü.jpg", "c.png", "d.png"]
    sizes, K, c2w = random_cameras(rng, len(names))
    K[3], sizes[3] = K[2], sizes[2]  # shares view 2's camera
    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    folder = write_colmap_model(tmp_path / "model", names, sizes, K, c2w, xyz, rgb, text=text)
    assert sorted(p.name for p in folder.iterdir() if p.stem in ("cameras", "images", "points3D")) == \
        sorted(f"{stem}.{'txt' if text else 'bin'}" for stem in ("cameras", "images", "points3D"))
    model = pycolmap.Reconstruction(folder)
    assert model.num_cameras() == 3
    for i, name in enumerate(names):
        image = model.find_image_with_name(name)
        camera = model.cameras[image.camera_id]
        assert camera.model.name == "PINHOLE" and (camera.width, camera.height) == sizes[i]
        want = K[i].copy()
        want[:2, 2] += 0.5
        np.testing.assert_allclose(camera.calibration_matrix(), want, rtol=0, atol=1e-9)
        w2c = np.linalg.inv(c2w[i])
        np.testing.assert_allclose(image.cam_from_world().matrix(), w2c[:3], rtol=0, atol=1e-9)
    points = sorted(model.points3D.values(), key=lambda p: tuple(p.xyz))
    order = np.lexsort(xyz.T[::-1])
    np.testing.assert_allclose([p.xyz for p in points], xyz[order], rtol=0, atol=1e-9)
    np.testing.assert_array_equal([p.color for p in points], rgb[order])


def test_write_colmap_model_refuses_what_colmap_cannot_hold(tmp_path):
    sizes, K, c2w = random_cameras(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="white space"):
        write_colmap_model(tmp_path / "m", ["a b.png", "c.png"], sizes, K, c2w, text=True)
    skewed = K.copy()
    skewed[1, 0, 1] = 0.5
    with pytest.raises(ValueError, match="skew"):
        write_colmap_model(tmp_path / "m", ["a.png", "c.png"], sizes, skewed, c2w)
    scaled = c2w.copy()
    scaled[0, :3, :3] *= 2
    with pytest.raises(ValueError, match="not a rotation"):
        write_colmap_model(tmp_path / "m", ["a.png", "c.png"], sizes, K, scaled)
    with pytest.raises(ValueError, match="unique"):
        write_colmap_model(tmp_path / "m", ["a.png", "a.png"], sizes, K, c2w)
    assert not (tmp_path / "m").exists()


def test_text_and_binary_models_read_back_alike_and_as_written(tmp_path):
    """write_colmap_model → read_colmap_scene: our K and poses to 1e-9, text and binary alike, points with colours."""
    rng = np.random.default_rng(5)
    names = ["b.png", "a.png", "sub/ü.png"]
    sizes, K, c2w = random_cameras(rng, len(names))
    xyz, rgb = rng.normal(size=(20, 3)), rng.integers(0, 256, (20, 3)).astype(np.uint8)
    scenes = {}
    for text in (True, False):
        scene_dir = tmp_path / ("text" if text else "binary")
        for name, (width, height) in zip(names, sizes, strict=True):
            (scene_dir / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(scene_dir / "images" / name)
        write_colmap_model(scene_dir / "sparse/0", names, sizes, K, c2w, xyz, rgb, text=text)
        scenes[text] = read_colmap_scene(scene_dir)
        assert scenes[text].meta["format"] == ("text" if text else "binary") and not scenes[text].rejects
        got_xyz, got_rgb = model_points(read_model(scene_dir / "sparse/0")[0])
        np.testing.assert_allclose(got_xyz, xyz, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got_rgb, rgb)
    order = [names.index(n) for n in ("a.png", "b.png", "sub/ü.png")]
    for text_view, binary_view, i in zip(scenes[True].views, scenes[False].views, order, strict=True):
        assert text_view.name == binary_view.name == Path(names[i]).with_suffix("").as_posix()
        for view in (text_view, binary_view):
            np.testing.assert_allclose(view.K, K[i], rtol=0, atol=1e-9)
            np.testing.assert_allclose(view.pose, c2w[i], rtol=0, atol=1e-9)
            assert view.meta["camera_model"] == "PINHOLE" and "distortion" not in view.meta
        np.testing.assert_allclose(text_view.K, binary_view.K, rtol=0, atol=1e-12)
        np.testing.assert_allclose(text_view.pose, binary_view.pose, rtol=0, atol=1e-12)
