"""Sample ids survive a new working directory or mount, and see a replaced image (size + mtime, or content)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d3r.config import ScenesConfig
from d3r.scenes.sampling import sample_id, sample_scene
from d3r.scenes.sources import list_scenes

SECOND = 1_000_000_000


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def scenes(tmp_path) -> Path:
    """``data/scenes/{hall,lab}/frame_{0..3}.png``: two samples of 2 views per scene."""
    root = tmp_path / "data" / "scenes"
    for s, scene in enumerate(("hall", "lab")):
        for i in range(4):
            _image(root / scene / f"frame_{i}.png", value=10 * s + i)
    return root


def ids(root: Path | str, **fields) -> dict[tuple[str, tuple[str, ...]], str]:
    """(scene id, view names) → sample id, as a job plans them."""
    config = ScenesConfig(source="folders", root=root, views_per_sample=2, **fields)
    return {(s.scene_id, s.view_names): s.id for scene in list_scenes(config) for s in sample_scene(scene, config)}


def test_the_same_data_from_another_working_directory_keeps_its_ids(scenes, monkeypatch):
    planned = ids(scenes)
    assert len(planned) == 4
    monkeypatch.chdir(scenes.parent)
    assert ids("scenes") == planned
    monkeypatch.chdir(scenes)
    assert ids(".") == planned  # the dataset's name is the folder "." resolves to
    monkeypatch.chdir(scenes / "hall")
    assert ids("..") == planned


def test_a_moved_or_remounted_root_keeps_its_ids(scenes, tmp_path):
    planned = ids(scenes)
    copied = shutil.copytree(scenes, tmp_path / "mnt" / "scenes", copy_function=shutil.copy2)  # keeps mtimes
    assert ids(copied) == planned
    moved = tmp_path / "elsewhere" / "scenes"
    moved.parent.mkdir()
    os.rename(copied, moved)
    assert ids(moved) == planned
    renamed = tmp_path / "elsewhere" / "scenes_v2"
    os.rename(moved, renamed)  # another folder name is another dataset, unless scenes.dataset_name says
    assert not set(ids(renamed).values()) & set(planned.values())
    assert ids(renamed, dataset_name="scenes") == planned
    assert not set(ids(scenes, dataset_name="other").values()) & set(planned.values())


def test_a_copy_without_mtimes_is_recomputed_unless_ids_hash_content(scenes, tmp_path):
    planned, hashed = ids(scenes), ids(scenes, content_hash_ids=True)
    assert not set(planned.values()) & set(hashed.values())
    plain = shutil.copytree(scenes, tmp_path / "plain" / "scenes", copy_function=shutil.copy)  # new mtimes
    for path in plain.rglob("*.png"):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * SECOND))  # however coarse the clock
    assert not set(ids(plain).values()) & set(planned.values())
    assert ids(plain, content_hash_ids=True) == hashed


def test_a_replaced_image_changes_only_its_samples_ids(scenes):
    planned, hashed = ids(scenes), ids(scenes, content_hash_ids=True)
    replaced = scenes / "hall" / "frame_1.png"
    before = replaced.stat()
    _image(replaced, value=200)  # other bytes under the same name
    os.utime(replaced, ns=(before.st_atime_ns, before.st_mtime_ns + 5 * SECOND))
    for now, then in ((ids(scenes), planned), (ids(scenes, content_hash_ids=True), hashed)):
        changed = {key for key in then if now[key] != then[key]}
        assert changed == {("hall", ("frame_0", "frame_1"))}
        assert now.keys() == then.keys()


def test_content_hash_ids_ignore_mtime_but_see_bytes(scenes):
    hashed = ids(scenes, content_hash_ids=True)
    touched = scenes / "lab" / "frame_2.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 7 * SECOND))
    assert ids(scenes, content_hash_ids=True) == hashed
    _image(touched, value=250)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # other bytes, the old mtime
    now = ids(scenes, content_hash_ids=True)
    assert {key for key in hashed if now[key] != hashed[key]} == {("lab", ("frame_2", "frame_3"))}


def test_synthetic_ids_come_from_the_generator_settings_not_the_working_directory(tmp_path, monkeypatch):
    config = ScenesConfig(source="synthetic", num_scenes=1, views_per_scene=4, views_per_sample=2)
    planned = [s.id for scene in list_scenes(config) for s in sample_scene(scene, config)]
    monkeypatch.chdir(tmp_path)
    assert [s.id for scene in list_scenes(config) for s in sample_scene(scene, config)] == planned


def test_sample_id_includes_the_view_signatures():
    plain = sample_id("folders", '{"dataset": "d"}', "s", ("a", "b"), 224, 16)
    signed = sample_id("folders", '{"dataset": "d"}', "s", ("a", "b"), 224, 16, ["size:1:mtime_ns:2", None])
    other = sample_id("folders", '{"dataset": "d"}', "s", ("a", "b"), 224, 16, ["size:1:mtime_ns:3", None])
    assert len({plain, signed, other}) == 3
