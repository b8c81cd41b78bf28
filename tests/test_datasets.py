"""The six dataset layouts: miniature fixtures written here, GT read back in our conventions."""

from __future__ import annotations

import gzip
import json
import pickle

import h5py
import numpy as np
import OpenEXR
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from d3r.config import ScenesConfig
from d3r.scenes.sampling import SampleError, load_sample, sample_scene
from d3r.scenes.sources import list_scenes

W, H = 8, 6
RNG = np.random.default_rng(0)


def _image(path, size=(W, H), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _c2w(seed: int) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    pose[:3, 3] = np.random.default_rng(seed).normal(size=3)
    return pose


def _project(K, pose, points):
    cam = (np.linalg.inv(pose) @ np.c_[points, np.ones(len(points))].T)[:3]
    uv = K @ cam
    return (uv[:2] / uv[2]).T, cam[2]


def _scenes(source, root):
    return list(list_scenes(ScenesConfig(source=source, root=root)))


def test_co3d_viewpoints_project_like_pytorch3d_and_depth_reads_back(tmp_path):
    frames = []
    R = Rotation.random(random_state=1).as_matrix()
    T = np.array([0.2, -0.1, 3.0])
    focal, pp = [1.7, 1.9], [0.05, -0.1]
    depth16 = RNG.uniform(0.5, 3.0, size=(H, W)).astype(np.float16)
    seq = tmp_path / "apple" / "seq_a"
    for folder in ("images", "depths", "depth_masks"):
        (seq / folder).mkdir(parents=True)
    mask = np.full((H, W), 255, dtype=np.uint8)
    mask[0, 0] = 0
    for i in (2, 1, 3):
        stem = f"frame{i:06d}"
        if i != 3:  # frame 3 is annotated but its files are missing
            _image(seq / "images" / f"{stem}.jpg")
            Image.fromarray(depth16.view(np.uint16)).save(seq / "depths" / f"{stem}.jpg.geometric.png")
            Image.fromarray(mask).save(seq / "depth_masks" / f"{stem}.png")
        frames.append({
            "sequence_name": "seq_a", "frame_number": i, "frame_timestamp": 0.1 * i,
            "image": {"path": f"apple/seq_a/images/{stem}.jpg", "size": [H, W]},
            "depth": {"path": f"apple/seq_a/depths/{stem}.jpg.geometric.png", "scale_adjustment": 2.0,
                      "mask_path": f"apple/seq_a/depth_masks/{stem}.png"},
            "viewpoint": {"R": R.tolist(), "T": T.tolist(), "focal_length": focal, "principal_point": pp,
                          "intrinsics_format": "ndc_isotropic"},
        })
    with gzip.open(tmp_path / "apple" / "frame_annotations.jgz", "wt") as handle:
        json.dump(frames, handle)

    (scene,) = _scenes("co3d", tmp_path)
    assert scene.id == "apple/seq_a"
    assert [v.name for v in scene.views] == ["frame000001", "frame000002"]
    assert scene.rejects == [(str(tmp_path / "apple/seq_a/images/frame000003.jpg"),
                              "listed in frame_annotations.jgz but missing")]
    view = scene.views[0]
    # PyTorch3D: X_view = X_world R + T, NDC x = f X/Z + p, +x left and +y up, s = min(H, W) / 2.
    cam_points = np.c_[RNG.uniform(-1, 1, (5, 2)), RNG.uniform(2, 4, 5)]
    world = (cam_points - T) @ R.T
    ndc = focal * cam_points[:, :2] / cam_points[:, 2:] + pp
    s = min(H, W) / 2
    expected_uv = np.c_[W / 2 - ndc[:, 0] * s, H / 2 - ndc[:, 1] * s] - 0.5
    uv, z = _project(view.K, view.pose, world)
    np.testing.assert_allclose(uv, expected_uv, atol=1e-9)
    np.testing.assert_allclose(z, cam_points[:, 2], atol=1e-9)
    loaded = pickle.loads(pickle.dumps(view)).load()
    expected_depth = depth16.astype(np.float32) * 2.0
    expected_depth[0, 0] = 0.0
    np.testing.assert_allclose(loaded.depth, expected_depth)
    assert loaded.image.shape == (H, W, 3)


def test_scannetpp_transforms_to_opencv(tmp_path):
    scene_dir = tmp_path / "data" / "0a5c013435"
    poses = [_c2w(i) for i in range(3)]
    frames = []
    for i, pose in enumerate(poses):
        name = f"DSC{i:05d}.JPG"
        _image(scene_dir / "dslr" / "resized_images" / name)
        frames.append({"file_path": name, "transform_matrix": (pose @ np.diag([1, -1, -1, 1])).tolist(),
                       "is_bad": i == 2})
    transforms = {"fl_x": 7.0, "fl_y": 7.5, "cx": 4.0, "cy": 3.0, "w": W, "h": H, "camera_model": "OPENCV_FISHEYE",
                  "k1": 0.1, "k2": 0.0, "k3": 0.0, "k4": 0.0, "frames": frames[:2], "test_frames": frames[2:]}
    (scene_dir / "dslr" / "nerfstudio").mkdir(parents=True)
    (scene_dir / "dslr" / "nerfstudio" / "transforms.json").write_text(json.dumps(transforms))
    (scene,) = _scenes("scannetpp", tmp_path)
    assert scene.id == "0a5c013435" and len(scene) == 2
    assert "marked is_bad" in scene.rejects[0][1] and scene.rejects[0][0].endswith("DSC00002.JPG")
    for view, pose in zip(scene.views, poses, strict=False):
        np.testing.assert_allclose(view.pose, pose, atol=1e-12)
        np.testing.assert_allclose(view.K, [[7.0, 0, 3.5], [0, 7.5, 2.5], [0, 0, 1]])
        assert "OPENCV_FISHEYE" in view.meta["distortion"]
    # OpenGL cameras look down -z: the OpenCV forward axis is minus the stored matrix's third column.
    np.testing.assert_allclose(scene.views[0].pose[:3, 2], -np.asarray(frames[0]["transform_matrix"])[:3, 2])


def test_arkitscenes_traj_pincam_and_millimetre_depth(tmp_path):
    frames_dir = tmp_path / "raw" / "Training" / "41069021" / "41069021_frames"
    stamps = [10.0, 10.1, 20.0]
    poses = [_c2w(i) for i in range(2)]
    lines = []
    for stamp, pose in zip([10.001, 10.099], poses, strict=True):
        w2c = np.linalg.inv(pose)
        lines.append(" ".join(str(v) for v in [stamp, *Rotation.from_matrix(w2c[:3, :3]).as_rotvec(), *w2c[:3, 3]]))
    (frames_dir / "lowres_wide_intrinsics").mkdir(parents=True)
    (frames_dir / "lowres_wide.traj").write_text("\n".join(lines) + "\n")
    depth_mm = RNG.integers(300, 5000, size=(H, W)).astype(np.uint16)
    for stamp in stamps:
        stem = f"41069021_{stamp:.3f}"
        _image(frames_dir / "lowres_wide" / f"{stem}.png")
        (frames_dir / "lowres_wide_intrinsics" / f"{stem}.pincam").write_text(f"{W} {H} 5.5 5.25 3.4 2.6")
        (frames_dir / "lowres_depth").mkdir(exist_ok=True)
        Image.fromarray(depth_mm).save(frames_dir / "lowres_depth" / f"{stem}.png")
    (scene,) = _scenes("arkitscenes", tmp_path)
    assert scene.id == "41069021" and len(scene) == 3
    np.testing.assert_allclose(scene.views[0].pose, poses[0], atol=1e-12)
    np.testing.assert_allclose(scene.views[1].pose, poses[1], atol=1e-12)
    assert scene.views[2].pose is None
    np.testing.assert_allclose(scene.views[0].K, [[5.5, 0, 3.4], [0, 5.25, 2.6], [0, 0, 1]])
    np.testing.assert_allclose(scene.views[1].load().depth, depth_mm / 1000.0, rtol=1e-6)


def test_megadepth_h5_depth(tmp_path):
    dense = tmp_path / "MegaDepth_v1" / "0001" / "dense0"
    depth = RNG.uniform(1, 9, size=(H, W)).astype(np.float32)
    depth[1, 1] = 0.0
    for stem in ("b_img", "a_img"):
        _image(dense / "imgs" / f"{stem}.jpg")
    (dense / "depths").mkdir()
    with h5py.File(dense / "depths" / "a_img.h5", "w") as handle:
        handle.create_dataset("depth", data=depth)
    (scene,) = _scenes("megadepth", tmp_path / "MegaDepth_v1")
    assert scene.id == "0001/dense0" and [v.name for v in scene.views] == ["a_img", "b_img"]
    np.testing.assert_array_equal(scene.views[0].load().depth, depth)
    assert scene.views[1].load().depth is None


def _write_pfm(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"Pf\n{data.shape[1]} {data.shape[0]}\n-1.0\n".encode()
    path.write_bytes(header + np.flipud(data).astype("<f4").tobytes())


def test_blendedmvs_cams_and_pfm(tmp_path):
    scene_dir = tmp_path / "5a3ca9cb270f0e3f14d0eddb"
    pose = _c2w(5)
    w2c = np.linalg.inv(pose)
    K = np.array([[6.0, 0, 3.5], [0, 6.2, 2.5], [0, 0, 1]])
    depth = RNG.uniform(100, 900, size=(H, W)).astype(np.float32)
    for i in range(2):
        _image(scene_dir / "blended_images" / f"{i:08d}.jpg")
        _image(scene_dir / "blended_images" / f"{i:08d}_masked.jpg")
        (scene_dir / "cams").mkdir(exist_ok=True)
        rows = "\n".join(" ".join(f"{v:.17g}" for v in row) for row in w2c)
        krows = "\n".join(" ".join(f"{v:.17g}" for v in row) for row in K)
        (scene_dir / "cams" / f"{i:08d}_cam.txt").write_text(
            f"extrinsic\n{rows}\n\nintrinsic\n{krows}\n\n425.0 2.5 192 905.0\n")
    _write_pfm(scene_dir / "rendered_depth_maps" / "00000000.pfm", depth)
    _write_pfm(scene_dir / "rendered_depth_maps" / "00000001.pfm", depth[:3, :4])
    (scene,) = _scenes("blendedmvs", tmp_path)
    assert [v.name for v in scene.views] == ["00000000", "00000001"]
    np.testing.assert_allclose(scene.views[0].pose, pose, atol=1e-12)
    np.testing.assert_allclose(scene.views[0].K, K)
    np.testing.assert_array_equal(scene.views[0].load().depth, depth)
    config = ScenesConfig(source="blendedmvs", root=tmp_path, views_per_sample=2, long_side=16, patch_size=8)
    (sample,) = sample_scene(scene, config)
    with pytest.raises(SampleError, match=r"00000001\.jpg.*depth map is 4x3, image is 8x6"):
        load_sample(scene, sample, config)


def test_habitat_json_and_exr(tmp_path):
    scene_dir = tmp_path / "habitat_processed" / "17DRP5sb8fy" / "000"
    scene_dir.mkdir(parents=True)
    pose = _c2w(7)
    K = np.array([[5.0, 0, 3.5], [0, 5.0, 2.5], [0, 0, 1]])
    depth = RNG.uniform(0.5, 6, size=(H, W)).astype(np.float32)
    for i in range(2):
        _image(scene_dir / f"{i:05d}.jpeg")
        params = {"camera_intrinsics": K.tolist(), "R_cam2world": pose[:3, :3].tolist(),
                  "t_cam2world": pose[:3, 3].tolist()}
        (scene_dir / f"{i:05d}_camera_params.json").write_text(json.dumps(params))
        OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                     {"Y": depth}).write(str(scene_dir / f"{i:05d}_depth.exr"))
    (scene_dir / "00002_camera_params.json").write_text("{}")
    (scene,) = _scenes("habitat", tmp_path / "habitat_processed")
    assert scene.id == "17DRP5sb8fy/000" and len(scene) == 2
    assert scene.rejects[0][0].endswith("00002_camera_params.json") and "no image" in scene.rejects[0][1]
    np.testing.assert_allclose(scene.views[1].pose, pose)
    np.testing.assert_allclose(scene.views[1].K, K)
    np.testing.assert_array_equal(scene.views[1].load().depth, depth)
    assert scene.has_depth and scene.has_poses


def test_corrupt_depth_file_is_a_sample_error_naming_it(tmp_path):
    scene_dir = tmp_path / "hab" / "s"
    scene_dir.mkdir(parents=True)
    for i in range(2):
        _image(scene_dir / f"{i:05d}.jpeg")
        params = {"camera_intrinsics": np.eye(3).tolist(), "R_cam2world": np.eye(3).tolist(), "t_cam2world": [0, 0, i]}
        (scene_dir / f"{i:05d}_camera_params.json").write_text(json.dumps(params))
        (scene_dir / f"{i:05d}_depth.exr").write_bytes(b"not an exr")
    config = ScenesConfig(source="habitat", root=tmp_path / "hab", views_per_sample=2, long_side=16, patch_size=8)
    (scene,) = list_scenes(config)
    (sample,) = sample_scene(scene, config)
    with pytest.raises(SampleError, match=r"00000_depth\.exr: cannot read depth"):
        load_sample(scene, sample, config)
