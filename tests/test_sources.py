"""list_scenes: dispatch on scenes.source, config errors at once, per-item rejects through to the listing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from d3r.config import ScenesConfig
from d3r.errors import ConfigError
from d3r.scenes.errors import NOT_UTF8
from d3r.scenes.records import Scene, View
from d3r.scenes.sampling import sample_scene
from d3r.scenes.sources import SOURCES, list_scenes, names_as_text


def _image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)).save(path)


def test_every_configured_source_has_a_reader():
    from typing import get_args

    from d3r.config import SourceName

    assert set(get_args(SourceName)) == set(SOURCES)


def test_wrong_root_fails_at_once_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"scenes\.root: .*nowhere does not exist"):
        list_scenes(ScenesConfig(source="folders", root=missing))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"file\.txt is not a folder"):
        list_scenes(ScenesConfig(source="co3d", root=tmp_path / "file.txt"))
    with pytest.raises(ConfigError, match=r"scenes\.root is required"):
        list_scenes(ScenesConfig(source="habitat"))


def test_unknown_source_fails_naming_it(tmp_path):
    config = ScenesConfig.model_construct(**{**ScenesConfig().model_dump(), "source": "flickr", "root": tmp_path})
    with pytest.raises(ConfigError, match=r"unknown source 'flickr'"):
        list_scenes(config)


def test_folders_listing_goes_on_past_bad_items(tmp_path):
    for i in range(4):
        _image(tmp_path / "a" / f"f{i}.png", i)
    (tmp_path / "a" / "f9.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("x")
    for i in range(2):
        _image(tmp_path / "b" / f"f{i}.png", i)
    config = ScenesConfig(source="folders", root=tmp_path, views_per_sample=3, max_samples_per_scene=1, min_views=3)
    scenes = list(list_scenes(config))
    assert [s.id for s in scenes] == ["a", "b"]
    assert len(scenes[0]) == 5 and scenes[0].rejects[0][0].endswith("notes.txt")
    assert [len(sample_scene(s, config)) for s in scenes] == [1, 0]
    assert scenes[1].rejects == [("b", "scene b has 2 views, needs at least scenes.min_views=3 "
                                       "(or scenes.views_per_sample=3)")]


def test_video_root_may_be_a_file(tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 30 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (scene,) = list_scenes(ScenesConfig(source="video", root=path, video_stride=2))
    assert [v.meta["frame_index"] for v in scene.views] == [0, 2, 4]


def test_a_source_pointed_at_the_other_kind_of_input_says_so(tmp_path):
    """Not "0 scenes": the video source on image folders, the folders source on videos."""
    photos = tmp_path / "photos"
    for i in range(3):
        _image(photos / "tower" / f"IMG_{i}.jpg", i)
    with pytest.raises(ConfigError, match=r"scenes.source='video': scenes.root .*photos holds 3 images and no "
                                          r"video file .*set scenes.source=folders"):
        list_scenes(ScenesConfig(source="video", root=photos))
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("kitchen.mp4", "teddy.MOV"):
        (clips / name).write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match=r"scenes.source='folders': scenes.root .*clips holds 2 video files and no "
                                          r"image; for videos set scenes.source=video"):
        list_scenes(ScenesConfig(source="folders", root=clips))
    with pytest.raises(ConfigError, match=r"holds no video file itself; videos in its sub-folders are not read"):
        list_scenes(ScenesConfig(source="video", root=tmp_path))
    assert [s.id for s in list_scenes(ScenesConfig(source="folders", root=photos))] == ["tower"]


def _folder_config(root, **scenes):
    from d3r.config import D3RConfig

    return D3RConfig(scenes={"source": "folders", "root": root, "views_per_sample": 2, **scenes})


def test_scene_list_and_show(tmp_path, capsys):
    from d3r.cli import main
    from d3r.scenes.catalog import format_scene, format_scene_list

    for i in range(5):
        _image(tmp_path / "kitchen" / f"frame_{i}.png", i)
    _image(tmp_path / "short" / "only.png")
    (tmp_path / "kitchen" / "readme.md").write_text("x")
    text = format_scene_list(_folder_config(tmp_path))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith(("kitchen", "short"))}
    assert rows["kitchen"][:3] == ["5", "2", "1"]
    assert rows["short"][:3] == ["1", "0", "1"]
    assert "total (folders: 2 scenes)  6" in text
    assert "readme.md: not an image" in text and "scene short has 1 views, needs at least scenes.min_views=2" in text

    shown = format_scene(_folder_config(tmp_path), "kitchen")
    assert "frame_4  8x6   no  no    no" in shown
    with pytest.raises(ConfigError, match=r"no scene 'attic'.*kitchen, short"):
        format_scene(_folder_config(tmp_path), "attic")

    assert main(["scenes", "show", "--scene", "kitchen", "--scenes.source", "folders", "--scenes.root",
                 str(tmp_path)]) == 0
    assert "frame_0" in capsys.readouterr().out
    assert main(["scenes", "list", "--scenes.source", "folders", "--scenes.root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_synthetic_rooms_sample_covisible_and_load():
    from d3r.scenes.sampling import load_sample

    config = ScenesConfig(source="synthetic", num_scenes=2, views_per_scene=8, render_size=(32, 24),
                          views_per_sample=3, sampling="covisible", min_overlap=0.2, max_samples_per_scene=2,
                          long_side=32, patch_size=8)
    scenes = list(list_scenes(config))
    assert [s.source for s in scenes] == ["synthetic", "synthetic"]
    assert all(v.image is None for s in scenes for v in s.views)
    samples = sample_scene(scenes[0], config)
    assert samples, scenes[0].rejects
    views = load_sample(scenes[0], samples[0], config)
    assert [v.image.shape for v in views] == [(24, 32, 3)] * 3
    assert all(v.depth.shape == (24, 32) for v in views)


def test_colmap_missing_image_propagates_through_list_scenes(tmp_path):
    from d3r.scenes.colmap import write_colmap_scene
    from d3r.scenes.synthetic import render_scene

    for name in ("hall", "lab"):
        write_colmap_scene(render_scene(0, 0, 3, (16, 12)), tmp_path / name)
    missing = tmp_path / "lab" / "images" / "view_001.png"
    missing.unlink()
    scenes = list(list_scenes(ScenesConfig(source="colmap", root=tmp_path)))
    assert [s.id for s in scenes] == ["hall", "lab"]
    assert len(scenes[0]) == 3 and not scenes[0].rejects
    assert [v.name for v in scenes[1].views] == ["view_000", "view_002"]
    assert scenes[1].rejects[0][0] == str(missing)
    assert scenes[1].has_poses


def _sample_ids(config: ScenesConfig) -> set[str]:
    return {s.id for scene in list_scenes(config) for s in sample_scene(scene, config)}


def test_sample_ids_depend_on_where_the_content_comes_from(tmp_path):
    """Same scene ids and view names from another root or another generator seed are other samples."""
    for root in (tmp_path / "a", tmp_path / "b"):
        for i in range(4):
            _image(root / "scene" / f"frame_{i}.png", value=i)
    ids_a = _sample_ids(_folder_config(tmp_path / "a").scenes)
    ids_b = _sample_ids(_folder_config(tmp_path / "b").scenes)
    assert ids_a and ids_b and not ids_a & ids_b
    synthetic = {"source": "synthetic", "num_scenes": 1, "views_per_scene": 4, "views_per_sample": 2}
    seed0 = _sample_ids(ScenesConfig(**synthetic, seed=0))
    assert seed0 == _sample_ids(ScenesConfig(**synthetic, seed=0))
    assert not seed0 & _sample_ids(ScenesConfig(**synthetic, seed=1))
    assert not seed0 & _sample_ids(ScenesConfig(**synthetic, seed=0, render_size=(64, 48)))


def test_a_root_that_is_not_utf8_or_a_symlink_loop_fails_at_once_naming_scenes_root(tmp_path):
    bad = tmp_path / os.fsdecode(b"caf\xe9")
    _image(bad / "scene" / "a.png")
    with pytest.raises(ConfigError, match=r"scenes\.root: .*caf\\xe9: name is not valid UTF-8"):
        list_scenes(ScenesConfig(source="folders", root=bad))
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(ConfigError, match=r"scenes\.root: .*loop cannot be used: symlink loop"):
        list_scenes(ScenesConfig(source="folders", root=tmp_path / "loop"))


def test_names_that_are_not_utf8_never_leave_a_source(tmp_path):
    """Readers reject such file names while listing; names_as_text holds for names from anywhere else
    (a JSON annotation may carry an escaped lone surrogate)."""
    bad_name = os.fsdecode(b"fr\xff")
    views = [View(name="ok", path=str(tmp_path / "ok.png")),
             View(name=bad_name, path=str(tmp_path / f"{bad_name}.png"))]
    scene = names_as_text(Scene(id="s", source="co3d", views=views, rejects=[(str(tmp_path / bad_name), "odd")]))
    assert [v.name for v in scene.views] == ["ok"]
    assert scene.rejects == [(f"{tmp_path}/fr\\xff", "odd"), (f"{tmp_path}/fr\\xff.png", NOT_UTF8)]
    whole = names_as_text(Scene(id=bad_name, source="folders", views=views[:1], meta={"folder": str(tmp_path)}))
    assert (whole.id, whole.views, whole.rejects) == ("fr\\xff", [], [(str(tmp_path), NOT_UTF8)])
    assert all(text.encode("utf-8") for item in (*scene.rejects, *whole.rejects) for text in item)


def test_listing_says_per_scene_and_view_what_is_turned_cropped_and_enlarged(tmp_path):
    from d3r.scenes.catalog import format_scene, format_scene_list

    for name, size in [("a", (640, 480)), ("b", (480, 640)), ("c", (1280, 720)), ("d", (160, 120)), ("e", (300, 100))]:
        path = tmp_path / "tower" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(path)
    config = _folder_config(tmp_path, long_side=512, views_per_sample=20)
    text = format_scene_list(config)
    header, _, row = text.splitlines()[2:5]
    assert header.split()[-3:] == ["turned", "cropped", "enlarged"]
    assert row.split()[5:] == ["1", "4", "(≤13%)", "1", "(≤3.2x)"]  # b turned; a-d cropped; d enlarged 3.2x
    shown = {line.split()[0]: line.split()[-3:] for line in format_scene(config, "tower").splitlines()[4:9]}
    assert shown == {"a": ["no", "13%", "no"], "b": ["yes", "13%", "no"], "c": ["no", "13%", "no"],
                     "d": ["no", "13%", "3.2x"], "e": ["-", "-", "-"]}  # e (3:1) is in no sample: a reject
