"""View-set sampling: strategies, ids, splits, rejects, and loading a sample."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

from d3r.config import ScenesConfig
from d3r.scenes.records import Scene, View
from d3r.scenes.sampling import (
    SampleError,
    _reference_points,
    load_sample,
    sample_id,
    sample_scene,
    split_for_scene,
    view_overlap,
)

K = np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]])


def _pose(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    a = np.deg2rad(yaw_deg)
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    pose[0, 3] = x
    return pose


def _scene(num_views: int, scene_id: str = "s", poses: bool = False) -> Scene:
    views = [View(name=f"frame_{i}", K=K if poses else None, pose=_pose(0.1 * i) if poses else None,
                  meta={"size": (64, 48)}) for i in range(num_views)]
    return Scene(id=scene_id, source="folders", views=views)


def _config(**kw) -> ScenesConfig:
    return ScenesConfig(**{"views_per_sample": 3, "max_samples_per_scene": 10, **kw})


def test_consecutive_windows_do_not_overlap_and_respect_stride():
    samples = sample_scene(_scene(12), _config(sampling="consecutive", stride=2))
    assert [s.view_indices for s in samples] == [(0, 2, 4), (5, 7, 9)]
    samples = sample_scene(_scene(9), _config(sampling="consecutive"))
    assert [s.view_indices for s in samples] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    assert samples[1].view_names == ("frame_3", "frame_4", "frame_5")


def test_cap_spreads_windows_over_scene():
    samples = sample_scene(_scene(30), _config(sampling="consecutive", max_samples_per_scene=3))
    assert [s.view_indices[0] for s in samples] == [0, 12, 27]


def test_strided_spans_scene_and_samples_are_disjoint():
    samples = sample_scene(_scene(12), _config(sampling="strided"))
    assert samples[0].view_indices == (0, 4, 8)
    assert len(samples) == 4
    used = [i for s in samples for i in s.view_indices]
    assert len(used) == len(set(used))
    assert all(s.view_indices[-1] - s.view_indices[0] >= 8 for s in samples)


def test_random_is_seeded_and_distinct():
    config = _config(sampling="random", max_samples_per_scene=5, seed=3)
    first = [s.view_indices for s in sample_scene(_scene(10), config)]
    again = [s.view_indices for s in sample_scene(_scene(10), config)]
    other = [s.view_indices for s in sample_scene(_scene(10), _config(sampling="random", max_samples_per_scene=5))]
    assert first == again and first != other
    assert len(set(first)) == 5
    assert all(list(ix) == sorted(set(ix)) and len(ix) == 3 for ix in first)


def test_covisible_views_overlap_reference():
    views = [View(name=f"v{i}", K=K, pose=_pose(0.05 * i), meta={"size": (64, 48)}) for i in range(6)]
    views += [View(name=f"away{i}", K=K, pose=_pose(0.05 * i, yaw_deg=180), meta={"size": (64, 48)})
              for i in range(6)]
    scene = Scene(id="cov", source="colmap", views=views)
    samples = sample_scene(scene, _config(sampling="covisible", min_overlap=0.3))
    assert samples
    for s in samples:
        facing = {name.startswith("away") for name in s.view_names}
        assert len(facing) == 1, s.view_names


def test_depth_overlap_uses_depth_and_occlusion():
    depth = np.full((48, 64), 2.0, dtype=np.float32)
    ref = View(name="r", K=K, pose=_pose(0.0), depth=depth, meta={"size": (64, 48)})
    shifted = View(name="s", K=K, pose=_pose(1.0), meta={"size": (64, 48)})
    points = _reference_points(ref, [shifted])
    # a 1 m shift at 2 m depth with f=40 moves points by 20 px of 64: about 2/3 stay inside
    assert view_overlap(points, shifted) == pytest.approx(44 / 64, abs=0.05)
    occluder = View(name="o", K=K, pose=_pose(1.0), depth=np.full((48, 64), 0.5, dtype=np.float32),
                    meta={"size": (64, 48)})
    assert view_overlap(points, occluder) == 0.0


def test_covisible_without_poses_is_rejected():
    scene = _scene(6)
    assert sample_scene(scene, _config(sampling="covisible")) == []
    assert "needs both" in scene.rejects[0][1]


def test_too_few_views_rejected_once():
    scene = _scene(2, scene_id="tiny")
    config = _config(views_per_sample=4, min_views=3)
    assert sample_scene(scene, config) == []
    assert sample_scene(scene, config) == []
    assert scene.rejects == [("tiny", "scene tiny has 2 views, needs at least scenes.min_views=3 "
                                      "(or scenes.views_per_sample=4)")]


@pytest.mark.parametrize("sampling", ["consecutive", "strided", "random", "covisible"])
def test_a_scene_shorter_than_views_per_sample_is_one_sample_of_all_its_views(sampling):
    """5 photos with the shipped views_per_sample=20: one sample of all 5 (scenes.min_views=2), not none."""
    scene = _scene(5, poses=True)
    (sample,) = sample_scene(scene, _config(views_per_sample=20, sampling=sampling))
    assert sample.view_indices == (0, 1, 2, 3, 4) and not scene.rejects
    single = _scene(1, scene_id="one")
    assert sample_scene(single, _config(views_per_sample=20)) == []
    assert "needs at least scenes.min_views=2" in single.rejects[0][1]


def test_sample_id_is_content_hash_and_split_deterministic():
    a = sample_id("folders", "/r", "s", ("a", "b"), 224, 16)
    assert a == sample_id("folders", "/r", "s", ["a", "b"], 224, 16)
    others = {
        sample_id("folders", "/r", "s", ("a", "c"), 224, 16),
        sample_id("folders", "/r", "s", ("a", "b"), 512, 16),
        sample_id("video", "/r", "s", ("a", "b"), 224, 16),
        sample_id("folders", "/r", "s", ("a", "b"), 224, 14),
        sample_id("folders", "/other", "s", ("a", "b"), 224, 16),
    }
    assert len(others | {a}) == 6
    splits = [split_for_scene(f"scene_{i}", 0.25) for i in range(400)]
    assert splits == [split_for_scene(f"scene_{i}", 0.25) for i in range(400)]
    assert 60 < splits.count("val") < 140
    assert all(split_for_scene(f"scene_{i}", 0.0) == "train" for i in range(50))


def _load_png(view: View, depth_shape: tuple[int, int] | None = None) -> View:
    image = np.asarray(Image.open(view.path).convert("RGB"))
    depth = None if depth_shape is None else np.ones(depth_shape, dtype=np.float32)
    return view.with_(image=image, depth=depth)


def _file_scene(tmp_path, depth_shape=None) -> Scene:
    views = []
    for i in range(3):
        path = tmp_path / f"f{i}.png"
        Image.fromarray(np.full((30, 40, 3), 20 * i, dtype=np.uint8)).save(path)
        views.append(View(name=f"f{i}", K=np.array([[30.0, 0, 19.5], [0, 30, 14.5], [0, 0, 1]]), path=str(path),
                          loader=functools.partial(_load_png, depth_shape=depth_shape)))
    return Scene(id="files", source="folders", views=views)


def test_load_sample_preprocesses_to_patch_multiples(tmp_path):
    scene = _file_scene(tmp_path, depth_shape=(30, 40))
    config = _config(long_side=64, patch_size=16)
    sample = sample_scene(scene, config)[0]
    views = load_sample(scene, sample, config)
    assert [v.image.shape for v in views] == [(48, 64, 3)] * 3
    assert views[0].depth.shape == (48, 64)
    assert views[0].K[0, 0] == pytest.approx(30 * 64 / 40)


def test_load_sample_errors_name_the_file(tmp_path):
    scene = _file_scene(tmp_path, depth_shape=(10, 10))
    config = _config(long_side=64, patch_size=16)
    sample = sample_scene(scene, config)[0]
    with pytest.raises(SampleError, match=r"f0\.png.*depth map is 10x10, image is 40x30"):
        load_sample(scene, sample, config)
    good = _file_scene(tmp_path)
    (tmp_path / "f1.png").write_bytes(b"")
    with pytest.raises(SampleError, match=r"f1\.png") as info:
        load_sample(good, sample, config)
    assert info.value.sample_id == sample.id


def test_generated_views_are_made_once_and_checked_against_every_limit():
    """A view no header describes (a generator's) is loaded to learn its size, then used as loaded."""
    made: list[str] = []

    def render(view: View) -> View:
        made.append(view.name)
        width, height = view.meta["render"]
        return view.with_(image=np.zeros((height, width, 3), dtype=np.uint8))

    def scene(*sizes) -> Scene:
        views = [View(name=f"v{i}", loader=render, meta={"render": size}) for i, size in enumerate(sizes)]
        return Scene(id="gen", source="synthetic", views=views)

    config = _config(long_side=64, patch_size=16, views_per_sample=2, max_samples_per_scene=1)
    good = scene((64, 48), (80, 60))
    assert [v.image.shape for v in load_sample(good, sample_scene(good, config)[0], config)] == [(48, 64, 3)] * 2
    assert made == ["v0", "v1"]
    for sizes, limit in [(((64, 48), (300, 20)), "scenes.max_aspect_ratio=8.0"),
                         (((64, 48), (10, 8)), "scenes.max_upscale=4.0"),
                         (((64, 48), (2000, 1500)), "scenes.max_pixels=1000000")]:
        bad = scene(*sizes)
        with pytest.raises(SampleError, match=rf"view 'v1': \d+x\d+ .*{limit}"):
            load_sample(bad, sample_scene(bad, config)[0], config.model_copy(update={"max_pixels": 1_000_000}))


def _sized_scene(sizes, scene_id: str = "mixed") -> Scene:
    views = [View(name=f"v{i}", meta={} if size is None else {"size": size}) for i, size in enumerate(sizes)]
    return Scene(id=scene_id, source="folders", views=views)


def test_views_of_unlike_shapes_go_to_separate_samples_and_every_sample_says_its_fit():
    """4:3 and 3:4 photos sample together (turned); a 16:9 frame joins them (13% cut, under 15%); a 3:1
    panorama would lose more: it is left out, named. A view of unknown size joins its neighbour's group."""
    sizes = [(400, 300), (300, 400), None, (1600, 900), (400, 300), (300, 100), (400, 300)]
    scene = _sized_scene(sizes)
    config = _config(views_per_sample=3, long_side=64, patch_size=16)
    samples = sample_scene(scene, config)
    assert [sample.view_indices for sample in samples] == [(0, 1, 2), (3, 4, 6)]
    assert samples[0].fit is None  # view 2's size is known only once it is loaded
    assert [fit.turns for fit in samples[1].fit.views] == [0, 0, 0]
    assert 0.13 < max(fit.crop_share for fit in samples[1].fit.views) < 0.14
    (reject,) = scene.rejects
    assert reject[0] == "mixed/v5" and "300x100" in reject[1] and "scenes.max_crop_fraction=0.15" in reject[1]
    # no limit on the crop: one group, as before groups existed
    assert [s.view_indices for s in sample_scene(_sized_scene(sizes), config.model_copy(
        update={"max_crop_fraction": 1.0}))] == [(0, 1, 2), (3, 4, 5)]


def test_a_sample_with_16_9_and_4_3_views_is_cropped_within_the_limit_and_reported():
    from d3r.scenes.sampling import FitReport

    scene = _sized_scene([(400, 300), (1600, 900), (300, 400)])
    (sample,) = sample_scene(scene, _config(views_per_sample=3, long_side=64, patch_size=16))
    shares = [fit.crop_share for fit in sample.fit.views]
    assert 0.13 < max(shares) < 0.14 and shares[0] == shares[2]
    report = FitReport.of([sample])
    assert report.turned == {"v2"} and set(report.cropped) == {"v0", "v1", "v2"}
    assert report.describe() == "1 views turned a quarter turn, 3 cropped by up to 13%"
    with pytest.raises(ValueError, match="max_crop_fraction"):
        _config(max_crop_fraction=1.5)
