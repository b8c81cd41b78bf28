"""Sources ``folders`` and ``video``: lazy listing, natural order, per-item rejects, frame selection."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from d3r.scenes.errors import NOT_UTF8
from d3r.scenes.folders import list_folder_scenes
from d3r.scenes.images import ImageReadError
from d3r.scenes.video import VideoReadError, frame_indices, list_video_scenes, probe_video, video_scene


def _write_image(path: Path, value: int, size=(8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_folder_of_scene_folders_natural_order_and_rejects(tmp_path):
    for i in (10, 2, 1):
        _write_image(tmp_path / "scene_a" / f"frame_{i}.png", i)
    _write_image(tmp_path / "scene_b" / "x.jpg", 5)
    (tmp_path / "scene_a" / "notes.txt").write_text("hello")
    (tmp_path / "scene_a" / ".DS_Store").write_bytes(b"x")
    scenes = list(list_folder_scenes(tmp_path))
    assert [s.id for s in scenes] == ["scene_a", "scene_b"]
    a = scenes[0]
    assert [v.name for v in a.views] == ["frame_1", "frame_2", "frame_10"]
    assert all(v.image is None for v in a.views)
    assert a.rejects == [(str(tmp_path / "scene_a" / "notes.txt"),
                          "not an image: suffix .txt (expected one of ['.jpeg', '.jpg', '.png', '.webp'])")]
    view = pickle.loads(pickle.dumps(a.views[2]))
    assert view.load().image[0, 0, 0] == 10


def test_flat_folder_is_one_scene(tmp_path):
    for i in range(3):
        _write_image(tmp_path / "flat" / f"IMG_{i}.JPG", i)
    (scene,) = list(list_folder_scenes(tmp_path / "flat"))
    assert scene.id == "flat" and len(scene) == 3


def test_corrupt_and_empty_images_are_listed_and_fail_on_load_naming_the_file(tmp_path):
    _write_image(tmp_path / "s" / "good.png", 1)
    (tmp_path / "s" / "empty.png").write_bytes(b"")
    (tmp_path / "s" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (scene,) = list(list_folder_scenes(tmp_path / "s"))
    assert len(scene) == 3
    by_name = {v.name: v for v in scene.views}
    with pytest.raises(ImageReadError, match=r"empty\.png: file is empty"):
        by_name["empty"].load()
    with pytest.raises(ImageReadError, match=r"corrupt\.jpg"):
        by_name["corrupt"].load()
    assert by_name["good"].load().image.shape == (6, 8, 3)


def _write_video(path: Path, num_frames: int, rate: int = 10, codec: str = "mpeg4") -> list[int]:
    """A 32x24 video whose frame i is a flat grey of value 8*i; returns those values."""
    values = [8 * i for i in range(num_frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.options = {"g": "5"}
        for value in values:
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), value, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return values


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_video_frames_by_stride_decode_the_right_frame(tmp_path, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    values = _write_video(tmp_path / "clip.mp4", 20, codec=codec)
    scene = video_scene(tmp_path / "clip.mp4", stride=3)
    assert scene.meta["num_frames"] == 20
    assert [v.meta["frame_index"] for v in scene.views] == list(range(0, 20, 3))
    assert all(v.image is None for v in scene.views)
    for view in reversed(scene.views):
        image = pickle.loads(pickle.dumps(view)).load().image
        assert image.shape == (24, 32, 3)
        assert abs(float(image.mean()) - values[view.meta["frame_index"]]) < 3, view.name


def test_video_fps_selection(tmp_path):
    _write_video(tmp_path / "clip.mp4", 30, rate=10)
    info = probe_video(tmp_path / "clip.mp4")
    assert info.num_frames == 30 and float(info.rate) == 10 and info.duration == pytest.approx(3.0)
    assert frame_indices(info, None, 2.0) == [0, 5, 10, 15, 20, 25]
    assert frame_indices(info, 4, None) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert frame_indices(info, None, None) == list(range(30))


@pytest.mark.parametrize("rotation", [90, -90])
def test_a_phone_videos_rotation_tag_is_honoured(tmp_path, rotation):
    """A portrait phone video is landscape frames plus a display matrix; frames come out as a player shows them."""
    stored = np.zeros((24, 32, 3), dtype=np.uint8)
    stored[:8, :16] = 255  # a bright block in the top-left corner of the stored frame
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.set_display_rotation(rotation)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe_video(path)
    assert (info.size, info.rotation) == ((24, 32), rotation % 360)
    (scene,) = list_video_scenes(path)
    assert scene.views[0].meta["size"] == (24, 32)
    image = scene.views[1].load().image
    assert image.shape == (32, 24, 3)
    expected = np.rot90(stored, k=rotation // 90)  # counter-clockwise by the tag's angle
    assert np.abs(image.astype(int) - expected).mean() < 10


def test_setting_both_video_stride_and_video_fps_is_a_config_error_naming_both():
    from d3r.config import load_config
    from d3r.errors import ConfigError

    with pytest.raises(ConfigError, match=r"video_stride=2 and scenes.video_fps=5 are both set") as info:
        load_config(None, ["--scenes.video_stride", "2"], environ={"D3R_SCENES__VIDEO_FPS": "5"})
    assert "video_stride from command line" in str(info.value) and "D3R_SCENES__VIDEO_FPS" in str(info.value)


def test_unreadable_video_is_a_reject_and_listing_goes_on(tmp_path):
    _write_video(tmp_path / "a_good.mp4", 4)
    (tmp_path / "b_broken.mp4").write_bytes(b"this is not a video at all" * 10)
    (tmp_path / "c_empty.mov").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("ignored")
    scenes = list(list_video_scenes(tmp_path, stride=1))
    assert [s.id for s in scenes] == ["a_good", "b_broken", "c_empty"]
    assert len(scenes[0]) == 4 and not scenes[0].rejects
    assert scenes[1].views == [] and scenes[1].rejects[0][0].endswith("b_broken.mp4")
    assert "not a readable video" in scenes[1].rejects[0][1]
    assert scenes[2].rejects == [(str(tmp_path / "c_empty.mov"), "file is empty (0 bytes)")]
    with pytest.raises(VideoReadError, match="b_broken.mp4"):
        probe_video(tmp_path / "b_broken.mp4")


def test_frame_past_end_is_reported(tmp_path):
    _write_video(tmp_path / "v.mp4", 4)
    scene = video_scene(tmp_path / "v.mp4")
    late = scene.views[0].with_(meta={"frame_index": 50})
    with pytest.raises(VideoReadError, match=r"v\.mp4: video ends before frame 50"):
        late.load()


def test_entries_that_cannot_be_used_are_rejects_naming_them(tmp_path):
    _write_image(tmp_path / "scene" / "a.png", 1)
    _write_image(tmp_path / "scene" / os.fsdecode(b"b\xff.png"), 2)  # not valid UTF-8
    os.symlink("loop.png", tmp_path / "scene" / "loop.png")
    os.symlink("gone.png", tmp_path / "scene" / "dangling.png")
    os.mkfifo(tmp_path / "scene" / "pipe.png")
    _write_image(tmp_path / os.fsdecode(b"caf\xe9") / "a.png", 3)
    os.symlink("rootloop", tmp_path / "rootloop")
    scenes = list(list_folder_scenes(tmp_path))
    assert [(s.id, len(s)) for s in scenes] == [("caf\\xe9", 0), ("rootloop", 0), ("scene", 1)]
    assert scenes[0].rejects == [(f"{tmp_path}/caf\\xe9", NOT_UTF8)]
    assert scenes[1].rejects == [(f"{tmp_path}/rootloop", "symlink loop")]
    assert sorted(scenes[2].rejects) == [
        (f"{tmp_path}/scene/b\\xff.png", NOT_UTF8),
        (f"{tmp_path}/scene/dangling.png", "broken symlink (its target gone.png does not exist)"),
        (f"{tmp_path}/scene/loop.png", "symlink loop"),
        (f"{tmp_path}/scene/pipe.png", "not a regular file or folder"),
    ]
    (flat,) = list(list_folder_scenes(tmp_path / "scene"))  # a flat folder keeps its rejects too
    assert len(flat) == 1 and len(flat.rejects) == 4


def test_a_folder_that_cannot_be_listed_is_a_reject(tmp_path, monkeypatch):
    """Root lists any folder, so the listing is made to meet the PermissionError an unprivileged user
    gets (tests/test_bad_inputs.py checks the kernel's answer as user nobody)."""
    _write_image(tmp_path / "a.png", 1)
    real_iterdir = Path.iterdir

    def refuse(self):
        if self == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    (scene,) = list(list_folder_scenes(tmp_path))
    assert scene.views == [] and scene.rejects == [(str(tmp_path), "cannot read folder: permission denied")]


def test_video_entries_that_cannot_be_used_are_rejects(tmp_path):
    _write_video(tmp_path / "good.mp4", 2)
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    _write_video(tmp_path / os.fsdecode(b"clip\xff.mp4"), 2)
    scenes = list(list_video_scenes(tmp_path, stride=1))
    assert [(s.id, len(s)) for s in scenes] == [("clip\\xff.mp4", 0), ("loop.mp4", 0), ("good", 2)]
    assert [s.rejects for s in scenes[:2]] == [[(f"{tmp_path}/clip\\xff.mp4", NOT_UTF8)],
                                                [(f"{tmp_path}/loop.mp4", "symlink loop")]]
