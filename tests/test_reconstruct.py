"""``d3r reconstruct`` (issue 11, item 1): synthetic rooms reconstructed with the oracle and a tiny student into
every output file; COLMAP poses read back with pycolmap against ground truth; portrait photos among landscape
ones come back portrait with their true pose; many views in passes; bad inputs exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from d3r.cli import main
from d3r.config import ConfigError, D3RConfig, load_config
from d3r.eval.models import load_model
from d3r.geometry import estimate_poses
from d3r.infer.inputs import prepare_views, read_input
from d3r.infer.passes import plan_passes, predict_in_passes
from d3r.infer.reconstruct import ReconstructOptions, reconstruct, reconstruct_to_folder
from d3r.scenes.colmap import write_colmap_scene
from d3r.scenes.records import Scene
from d3r.scenes.rotation import turn_view
from d3r.scenes.synthetic import render_scene

SIZE = (64, 48)
EXIF_ORIENTATION = 0x0112
ORACLE = ["--teacher.name", "oracle"]


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle of the rotation between the rotation parts of two ``[4, 4]`` poses, in degrees."""
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def relative_to_first(poses: list[np.ndarray]) -> list[np.ndarray]:
    """Camera-to-world poses in the first camera's frame (d3r's world)."""
    return [np.linalg.inv(poses[0]) @ pose for pose in poses]


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> tuple[Path, Scene]:
    """A rendered room of 6 views as a COLMAP scene folder (what `d3r synth` writes), and the scene."""
    scene = render_scene(0, 0, 6, SIZE, "orbit")
    return write_colmap_scene(scene, tmp_path_factory.mktemp("room") / "room"), scene


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A tiny student checkpoint with random weights."""
    from d3r.student import build_student
    from d3r.student.checkpoint import save_student

    return save_student(build_student("tiny"), tmp_path_factory.mktemp("student") / "tiny.pt")


def oracle_config() -> D3RConfig:
    return load_config(None, ORACLE)


def assert_all_outputs(out: Path, views: int, html: bool = True) -> None:
    """Every file of the layout is there and parses."""
    import pycolmap
    from plyfile import PlyData

    ply = PlyData.read(str(out / "points.ply"))
    assert ply["vertex"].count > 0 and {"x", "red", "confidence", "view"} <= set(ply["vertex"].data.dtype.names)
    assert (out / "scene.glb").read_bytes()[:4] == b"glTF"
    model = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert model.num_images() == views and model.num_points3D() > 0
    assert len(json.loads((out / "cameras.json").read_text())["views"]) == views
    assert len(json.loads((out / "depth" / "depth_maps.json").read_text())["views"]) == views
    timings = json.loads((out / "timings.json").read_text())
    assert {"read", "load_model", "load_views", "model", "cameras", "write_ply", "write_colmap"} <= set(
        timings["seconds"])
    assert (out / "viewer.html").is_file() == html
    marker = json.loads((out / "reconstruct.json").read_text())
    assert marker["complete"] and "points.ply" in marker["files"] and "sparse/0/images.bin" in marker["files"]


def test_oracle_writes_every_output_and_colmap_poses_match_ground_truth(room, tmp_path):
    folder, scene = room
    out = tmp_path / "out"
    options = ReconstructOptions(html=True, long_side=SIZE[0])
    rec = reconstruct_to_folder(folder, "teacher", out, oracle_config(), options)
    assert_all_outputs(out, len(scene.views))
    assert rec.model == "teacher" and "percentile 10" in rec.confidence_rule
    import pycolmap

    model = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    truth = dict(zip([f"{v.name}.png" for v in scene.views], relative_to_first([v.pose for v in scene.views]),
                     strict=True))
    assert {image.name for image in model.images.values()} == set(truth)
    for image in model.images.values():
        c2w = np.linalg.inv(np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]]))
        assert rotation_error_deg(c2w, truth[image.name]) < 0.1, image.name
    for view, gt in zip(rec.views, scene.views, strict=True):
        assert view.image.shape == (SIZE[1], SIZE[0], 3)
        np.testing.assert_allclose(view.K[0, 0], gt.K[0, 0], rtol=0.01)


def test_tiny_student_writes_every_output_for_a_folder_with_an_exif_portrait_and_a_broken_file(room, student, tmp_path):
    """An image folder: a photo stored landscape with EXIF orientation 6 (shown portrait) comes back portrait; an
    unreadable file is skipped and listed; the student's run writes every file."""
    folder, scene = room
    photos = tmp_path / "photos"
    photos.mkdir()
    for view in scene.views[:4]:
        Image.fromarray(view.image).save(photos / f"{view.name}.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "turn 90° clockwise to show": stored landscape, shown portrait
    Image.fromarray(scene.views[4].image).save(photos / "portrait.png", exif=exif)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert main(["reconstruct", str(photos), "--model", str(student), "-o", str(out), "--long-side", "64",
                 "--device", "cpu"]) == 0
    assert_all_outputs(out, 5, html=False)
    cameras = {view["name"]: view for view in json.loads((out / "cameras.json").read_text())["views"]}
    assert cameras["portrait"]["height"] > cameras["portrait"]["width"]
    assert all(cameras[v.name]["width"] > cameras[v.name]["height"] for v in scene.views[:4])
    skipped = json.loads((out / "reconstruct.json").read_text())["skipped"]
    assert [Path(s["item"]).name for s in skipped] == ["broken.jpg"]


@pytest.mark.parametrize("portrait", [2, 0])
def test_a_turned_photo_comes_back_in_its_orientation_with_its_true_pose(portrait, tmp_path):
    """A rolled camera's photo (pixels, depth, K and pose turned a quarter turn) among landscape ones, also as the
    first view (the world is the first photo's camera): its output is portrait, with its ground-truth pose and K."""
    scene = render_scene(0, 0, 5, SIZE, "orbit")
    views = [turn_view(v) if i == portrait else v for i, v in enumerate(scene.views)]
    folder = write_colmap_scene(Scene(scene.id, "synthetic", views), tmp_path / "room")
    config = load_config(None, [*ORACLE, "--teacher.corrupt_scale_view_prob", "0"])  # each view's depth true to scale
    rec = reconstruct(folder, "teacher", config, ReconstructOptions(long_side=SIZE[0]))
    truth = relative_to_first([v.pose for v in views])
    for i, (view, gt) in enumerate(zip(rec.views, views, strict=True)):
        assert view.image.shape[:2] == gt.image.shape[:2], i
        assert view.depth.shape == gt.depth.shape
        assert rotation_error_deg(view.c2w, truth[i]) < 0.1, i
        np.testing.assert_allclose(view.K, gt.K, rtol=0.01, atol=0.05)
    assert np.array_equal(rec.views[portrait].image, views[portrait].image)
    valid = (views[portrait].depth > 0) & (rec.views[portrait].depth > 0)  # the oracle is metric
    np.testing.assert_allclose(np.median(rec.views[portrait].depth[valid] / views[portrait].depth[valid]), 1.0,
                               rtol=0.01)


def test_passes_share_the_anchor():
    assert plan_passes(5, 8) == [[0, 1, 2, 3, 4]]
    assert plan_passes(7, 3) == [[0, 1, 2], [0, 3, 4], [0, 5, 6]]
    assert plan_passes(6, 4) == [[0, 1, 2, 3], [0, 4, 5]]


def test_many_views_in_passes_give_the_poses_of_one_pass(tmp_path):
    """Split into passes of 3 views, by a model whose scale differs per pass as a learned model's does (the oracle,
    scaled per pass), the anchor Sim(3) brings every pass into the first one's frame: the poses are those of one
    pass over all views (up to the first pass's scale), and those of the ground truth."""
    scene = render_scene(1, 0, 7, SIZE, "orbit")
    folder = write_colmap_scene(scene, tmp_path / "room")
    config = oracle_config()
    views, _ = prepare_views(read_input(folder, config.scenes), 64, 1, config.scenes)
    oracle = load_model("teacher", config).predict

    def scaled_per_pass(pass_views):
        outputs = dict(oracle(pass_views))
        outputs["pts3d_global"] = (0.5 + 0.3 * int(pass_views[-1].name.split("_")[-1])) * outputs["pts3d_global"]
        return outputs

    split = estimate_poses(*predict_in_passes(scaled_per_pass, views, 3))[0]
    whole = estimate_poses(*predict_in_passes(oracle, views, 64))[0]
    truth = relative_to_first([v.pose for v in scene.views])
    scale = np.linalg.norm(split[1][:3, 3]) / np.linalg.norm(whole[1][:3, 3])
    for i in range(len(views)):
        assert rotation_error_deg(split[i], whole[i]) < 0.1, i
        assert rotation_error_deg(split[i], truth[i]) < 0.1, i
        np.testing.assert_allclose(split[i][:3, 3], scale * whole[i][:3, 3], atol=0.01 * np.linalg.norm(
            whole[1][:3, 3]) * scale)
    rec = reconstruct(folder, "teacher", config, ReconstructOptions(max_views_per_pass=3, long_side=SIZE[0]))
    for i, view in enumerate(rec.views):
        assert rotation_error_deg(view.c2w, truth[i]) < 0.1, i


def test_a_video_reconstructs_frame_by_frame(room, student, tmp_path):
    _, scene = room
    video = tmp_path / "walk.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for view in scene.views:
            for packet in stream.encode(av.VideoFrame.from_ndarray(view.image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    config = load_config(None, ["--scenes.video_stride", "2"])
    rec = reconstruct(video, str(student), config, ReconstructOptions(long_side=64, device="cpu"))
    assert [view.name for view in rec.views] == ["frame_000000", "frame_000002", "frame_000004"]


def test_a_rerun_replaces_its_own_output_and_leaves_other_files(room, tmp_path):
    folder, scene = room
    out = tmp_path / "out"
    config = oracle_config()
    reconstruct_to_folder(folder, "teacher", out, config, ReconstructOptions(html=True, long_side=SIZE[0]))
    (out / "notes.txt").write_text("mine")
    reconstruct_to_folder(folder, "teacher", out, config, ReconstructOptions(depth_format="exr", long_side=SIZE[0]))
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "viewer.html").exists()
    assert sorted(p.suffix for p in (out / "depth").iterdir() if p.suffix != ".json") == [".exr"] * 2 * len(
        scene.views)


def test_bad_inputs_exit_2_naming_the_argument(room, student, tmp_path, capsys):
    folder, scene = room
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    Image.fromarray(scene.views[0].image).save(lonely / "a.png")
    (lonely / "b.png").write_bytes(b"\x89PNG broken")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    run = ["--model", str(student), "-o", str(tmp_path / "out")]
    cases = [
        ([str(tmp_path / "missing")] + run, "no such file or folder"),
        ([str(text)] + run, "not a folder of images or a video"),
        ([str(lonely)] + run, "1 usable view(s)"),
        ([str(folder), "--model", str(tmp_path / "none.pt"), "-o", str(tmp_path / "out")], "no such checkpoint"),
        ([str(folder), "--model", str(student), "-o", str(taken)], "not a d3r reconstruct output"),
        ([str(lonely), "--model", "teacher", "-o", str(tmp_path / "out"), *ORACLE], "1 usable view"),
        ([str(folder), "--model", str(student), "-o", str(tmp_path / "out"), "--max-views-per-pass", "1"],
         "--max-views-per-pass"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(folder), *run, "--device", "cuda"], "--device cuda"))
    for argv, message in cases:
        assert main(["reconstruct", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert (taken / "keep.txt").read_text() == "mine" and sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", str(folder), *run, "--conf-percentile", "5", "--conf-threshold", "2"])
    assert exc.value.code == 2


def test_the_oracle_on_photos_without_ground_truth_is_a_config_error(room, tmp_path):
    _, scene = room
    photos = tmp_path / "photos"
    photos.mkdir()
    for view in scene.views[:3]:
        Image.fromarray(view.image).save(photos / f"{view.name}.png")
    with pytest.raises(ConfigError, match="oracle needs ground-truth depth"):
        reconstruct(photos, "teacher", oracle_config(), ReconstructOptions())


def test_a_registered_model_reconstructs_by_its_alias(room, student, tmp_path):
    """``models:/NAME@ALIAS`` from a real sqlite registry (the tiny student logged and registered); an alias the
    registry does not have exits 2 naming MODEL."""
    import mlflow

    from d3r.config import MlflowConfig
    from d3r.registry import log_student_model, register_student
    from d3r.tracking import use_experiment

    folder, _ = room
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = MlflowConfig(tracking_uri=uri, experiment="reconstruct-test")
    with mlflow.start_run(experiment_id=use_experiment(config)):
        register_student(log_student_model(student), config, "val/gt/abs_rel", 0.5)
    model = f"models:/{config.registered_model}@champion"
    common = ["--mlflow.tracking_uri", uri, "--long-side", "64"]
    assert main(["reconstruct", str(folder), "--model", model, "-o", str(tmp_path / "out"), *common]) == 0
    assert len(json.loads((tmp_path / "out" / "cameras.json").read_text())["views"]) == 6
    missing = f"models:/{config.registered_model}@nobody"
    assert main(["reconstruct", str(folder), "--model", missing, "-o", str(tmp_path / "out2"), *common]) == 2
