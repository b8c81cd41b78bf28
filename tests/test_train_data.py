"""Training data from a real cache table: decoded as the codec decodes, cropped to the student's patch,
sharded by rank, split, shuffled, bucketed by shape, views subsampled, spawned loader workers, versions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lance
import numpy as np
import pytest
import torch

from d3r.cache.codec import CODECS, decode_row
from d3r.cache.pipeline import run_cache_job
from d3r.cache.rows import decode_ground_truth, decode_images
from d3r.config import D3RConfig, load_config
from d3r.errors import ConfigError
from d3r.geometry import depth_to_points, transform_points
from d3r.train.data import build_cache_data, cache_lineage

pytestmark = pytest.mark.usefixtures("ray_local")

PATCH = 14  # the student's; the cache below is made for a patch-16 teacher
# 64x48 (landscape) and 48x64 (portrait) rows: centre-cropped to 56x42 and 42x56 (offsets 4 and 3 pixels)
CROPS = {(48, 64): (3, 4, 42, 56), (64, 48): (4, 3, 56, 42)}  # (H, W) → (oy, ox, H', W')
CACHE_SCENES = [
    "--scenes.num_scenes", "3", "--scenes.views_per_scene", "5", "--scenes.long_side", "64",
    "--scenes.patch_size", "16", "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2",
    "--scenes.val_fraction", "0.4",
    # exact oracle geometry (small depth noise only) so that frames can be checked against ground truth
    "--teacher.corrupt_blobs", "0", "--teacher.corrupt_edge_bleed", "false", "--teacher.corrupt_scale_view_prob", "0",
]


def cache_config(uri: str, *overrides: str) -> D3RConfig:
    return load_config(None, [*CACHE_SCENES, "--cache.uri", uri, *overrides], environ={})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One table, two cache jobs: first 2-view landscape samples (tagged ``cache-v<n>``), then 3-view portrait
    ones appended (``latest``); train and val rows in both."""
    uri = str(tmp_path_factory.mktemp("train_data") / "cache.lance")
    first = run_cache_job(cache_config(uri, "--scenes.render_size", "[64,48]", "--scenes.views_per_sample", "2"))
    second = run_cache_job(cache_config(uri, "--scenes.render_size", "[48,64]", "--scenes.views_per_sample", "3"))
    rows = {row["sample_id"]: row for row in lance.dataset(uri).to_table().to_pylist()}
    shapes = Counter((row["split"], row["N"], row["H"], row["W"]) for row in rows.values())
    assert shapes == {("train", 2, 48, 64): 4, ("val", 2, 48, 64): 2, ("train", 3, 64, 48): 2, ("val", 3, 64, 48): 1}
    return {"uri": uri, "rows": rows, "first": first, "second": second}


def train_config(cache: dict, *overrides: str) -> D3RConfig:
    return load_config(None, ["--cache.uri", cache["uri"], "--train.batch_size", "2", *overrides], environ={})


def every_batch(config: D3RConfig, split: str, world_size: int = 1, epoch: int = 0) -> list[list[dict]]:
    """Per rank, the batches of one epoch (each rank's data built as a worker would build it)."""
    ranks = [build_cache_data(config, split, rank, world_size, PATCH) for rank in range(world_size)]
    assert len({data.batches_per_epoch for data in ranks}) == 1
    out = [list(data.batches(epoch)) for data in ranks]
    assert [len(batches) for batches in out] == [ranks[0].batches_per_epoch] * world_size
    return out


def sample_ids(batches: list[dict]) -> list[str]:
    return [sid for batch in batches for sid in batch["sample_id"]]


def test_batches_are_the_decoded_rows_cropped_to_the_patch(cache: dict) -> None:
    config = train_config(cache)
    for split in ("train", "val"):
        (batches,) = every_batch(config, split)
        assert len(sample_ids(batches)) == sum(row["split"] == split for row in cache["rows"].values())
        for batch in batches:
            b, n, _, h, w = batch["images"].shape
            assert batch["images"].dtype == torch.uint8 and batch["has_gt"].all()
            assert batch["gt_K"].dtype == batch["gt_poses"].dtype == torch.float64
            assert batch["pts3d_global"].shape == (b, n, h, w, 3) and batch["gt_poses"].shape == (b, n, 4, 4)
            for i, sample_id in enumerate(batch["sample_id"]):
                row = cache["rows"][sample_id]
                assert row["split"] == split and batch["scene_id"][i] == row["scene_id"]
                oy, ox, ch, cw = CROPS[(row["H"], row["W"])]
                assert (n, h, w) == (row["N"], ch, cw)
                window = (slice(None), slice(oy, oy + ch), slice(ox, ox + cw))
                images = decode_images(row["images"])[window]
                np.testing.assert_array_equal(batch["images"][i].permute(0, 2, 3, 1).numpy(), images)
                for key, value in decode_row(row).items():
                    np.testing.assert_allclose(batch[key][i].numpy(), value[window], rtol=1e-6, atol=1e-6, err_msg=key)
                gt = decode_ground_truth(row)
                np.testing.assert_array_equal(batch["gt_depth"][i].numpy(), gt["depth"][window])
                K = gt["K"].copy()
                K[:, 0, 2] -= ox
                K[:, 1, 2] -= oy
                np.testing.assert_allclose(batch["gt_K"][i].numpy(), K, rtol=0, atol=1e-9)
                relative = np.linalg.inv(gt["poses"][0]) @ gt["poses"]  # the first view is the world
                np.testing.assert_allclose(batch["gt_poses"][i].numpy(), relative, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("split", "batch_size", "world_size"),
                         [("train", 2, 2), ("train", 2, 3), ("train", 2, 4), ("train", 4, 4), ("val", 2, 2),
                          ("val", 1, 3)])
def test_ranks_share_every_sample_exactly_once_in_equal_batch_counts(cache, split, batch_size, world_size):
    """6 train samples in shapes of 4 + 2, 3 val samples in 2 + 1: counts that divide by no world size."""
    config = train_config(cache, "--train.batch_size", str(batch_size))
    per_rank = every_batch(config, split, world_size)
    ids = [sample_ids(batches) for batches in per_rank]
    everything = [sid for rank_ids in ids for sid in rank_ids]
    expected = sorted(sid for sid, row in cache["rows"].items() if row["split"] == split)
    assert sorted(everything) == expected  # exactly once across ranks
    assert all(len(batch["sample_id"]) <= batch_size for batches in per_rank for batch in batches)


def test_too_few_samples_for_the_ranks_repeat_some_rather_than_starve_one(cache, caplog):
    config = train_config(cache, "--train.batch_size", "1")
    per_rank = every_batch(config, "val", world_size=4)  # 3 samples, 4 ranks
    ids = [sid for batches in per_rank for sid in sample_ids(batches)]
    assert len(ids) == 4 and set(ids) == {sid for sid, row in cache["rows"].items() if row["split"] == "val"}
    assert "1 are served twice" in caplog.text


def test_splits_are_separate_and_cover_the_table(cache: dict) -> None:
    config = train_config(cache)
    (train,), (val,) = every_batch(config, "train"), every_batch(config, "val")
    assert not set(sample_ids(train)) & set(sample_ids(val))
    assert set(sample_ids(train)) | set(sample_ids(val)) == set(cache["rows"])


def test_train_order_is_shuffled_per_epoch_and_repeatable_per_seed(cache: dict) -> None:
    def order(seed: int, epoch: int, split: str = "train") -> list[str]:
        (batches,) = every_batch(train_config(cache, "--train.seed", str(seed)), split, epoch=epoch)
        return sample_ids(batches)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert sorted(order(0, 0)) == sorted(order(0, 1))
    assert order(0, 1) != order(5, 1)
    assert order(0, 0, "val") == order(0, 1, "val") == order(5, 3, "val")  # validation: one fixed order
    resumed = build_cache_data(train_config(cache, "--train.seed", "0"), "train", 0, 1, PATCH).batches(1, start=2)
    assert sample_ids(list(resumed)) == order(0, 1)[4:]  # batches of 2: a resumed epoch skips to batch 2
    unshuffled = train_config(cache, "--train.shuffle", "false")
    assert sample_ids(every_batch(unshuffled, "train")[0]) == sample_ids(every_batch(unshuffled, "train", epoch=4)[0])


def test_each_batch_has_one_shape_and_both_shapes_are_served(cache: dict) -> None:
    (batches,) = every_batch(train_config(cache, "--train.batch_size", "8"), "val")
    shapes = sorted(tuple(batch["images"].shape[1:]) for batch in batches)
    assert shapes == [(2, 3, 42, 56), (3, 3, 56, 42)]
    assert [len(batch["sample_id"]) for batch in sorted(batches, key=lambda b: b["images"].shape[1])] == [2, 1]


def test_subsampled_views_without_view_0_are_in_the_new_first_views_frame(cache: dict) -> None:
    """3-view rows drawn down to 2: where view 0 is dropped, the global targets move into the new first
    view's camera frame (where its global map is its local map) and agree there with the exact geometry."""
    config = train_config(cache, "--train.views_per_sample", "2")
    data = build_cache_data(config, "train", 0, 1, PATCH)
    assert sorted(data.planner.buckets) == [(2, 42, 56), (2, 56, 42)]  # 3 views drawn to 2 share a shape now
    epoch, spec = next((epoch, spec) for epoch in range(50) for spec in data.specs(epoch)
                       if any(views is not None and views[0] != 0 for views in spec.views))
    batch = data.reader[spec]  # what batches(epoch) serves for this spec (rows ascending, as in the spec)
    assert batch["sample_id"] in [served["sample_id"] for served in data.batches(epoch)]
    checked = 0
    for i, (sample_id, views) in enumerate(zip(batch["sample_id"], spec.views, strict=True)):
        if views is None or views[0] == 0:
            continue
        checked += 1
        glob, local = batch["pts3d_global"][i].numpy(), batch["pts3d_local"][i].numpy()
        valid = np.linalg.norm(local[0], axis=-1) > 0
        error = np.linalg.norm(glob[0] - local[0], axis=-1)[valid] / np.linalg.norm(local[0], axis=-1)[valid]
        assert np.median(error) < 1e-4 and error.max() < 1e-3
        # ground truth: each kept view's points, seen from the new first camera
        truth = transform_points(batch["gt_poses"][i].numpy(),
                                 depth_to_points(batch["gt_depth"][i].numpy(), batch["gt_K"][i].numpy()))
        has = batch["gt_depth"][i].numpy() > 0
        new_error = np.median(np.linalg.norm(glob - truth, axis=-1)[has] / np.linalg.norm(truth, axis=-1)[has])
        assert new_error < 0.01
        # the row's own global map (view 0's frame) is far from that: the check tells frames apart
        row = cache["rows"][sample_id]
        oy, ox, ch, cw = CROPS[(row["H"], row["W"])]
        stale = decode_row(row)["pts3d_global"][list(views), oy:oy + ch, ox:ox + cw]
        stale_error = np.median(np.linalg.norm(stale - truth, axis=-1)[has] / np.linalg.norm(truth, axis=-1)[has])
        assert stale_error > 10 * new_error
    assert checked


def test_spawned_loader_workers_serve_the_same_batches(cache: dict) -> None:
    config = train_config(cache, "--train.views_per_sample", "2")
    spawned = build_cache_data(config.model_copy(update={"train": config.train.model_copy(
        update={"loader_workers": 1})}), "train", 0, 1, PATCH)
    in_process = build_cache_data(config, "train", 0, 1, PATCH)
    for epoch in (0, 1):  # the second epoch reuses the persistent worker
        theirs, ours = list(spawned.batches(epoch)), list(in_process.batches(epoch))
        assert len(theirs) == len(ours) == spawned.batches_per_epoch
        for a, b in zip(theirs, ours, strict=True):
            assert a["sample_id"] == b["sample_id"]
            for key in ("images", "pts3d_global", "conf_local", "gt_poses"):
                np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-5, err_msg=key)


def test_cache_version_by_tag_or_number_and_lineage(cache: dict) -> None:
    first = cache["first"]
    for version in (first.tag, str(first.version)):
        data = build_cache_data(train_config(cache, "--train.cache_version", version), "train", 0, 1, PATCH)
        assert data.num_samples == 4 and data.planner.buckets == [(2, 42, 56)]  # before the 3-view rows
    assert build_cache_data(train_config(cache), "train", 0, 1, PATCH).num_samples == 6  # default: latest
    lineage = cache_lineage(cache["uri"], first.tag)
    assert lineage["cache.version"] == str(first.version) and lineage["cache.tag"] == first.tag
    assert lineage["codec"] == f"d3r-v1:{CODECS['d3r-v1'].version}" and len(lineage["teacher.fingerprint"]) > 8
    assert lineage["cache.uri"] == str(Path(cache["uri"]).resolve()) and lineage["d3r.version"]
    latest = cache_lineage(cache["uri"], "latest")
    assert latest["cache.version"] == str(cache["second"].version) and latest["cache.tag"] == "latest"


def test_a_missing_version_tag_or_table_is_a_config_error(cache: dict, tmp_path: Path) -> None:
    for version in ("no-such-tag", "999"):
        with pytest.raises(ConfigError, match="train.cache_version"):
            build_cache_data(train_config(cache, "--train.cache_version", version), "train", 0, 1, PATCH)
        with pytest.raises(ConfigError, match="train.cache_version"):
            cache_lineage(cache["uri"], int(version) if version.isdigit() else version)
    with pytest.raises(ConfigError, match="cache.uri"):
        build_cache_data(load_config(None, ["--cache.uri", str(tmp_path / "none.lance")], environ={}),
                         "train", 0, 1, PATCH)
