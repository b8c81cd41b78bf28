"""The cache job and the fp16 codec's limit: a value float16 cannot hold is an ``encode`` reject naming the map,
the value and the limit (``d3r-v1`` keeps such values: see test_codec.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import lance
import pytest
import torch
from ray import cloudpickle
from wall_teacher import brightness_wall

from d3r.cache.pipeline import run_cache_job
from d3r.cache.store import rejects_uri
from d3r.config import TeacherConfig, load_config

# The test teacher below must reach the Ray workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_local")

CONFIDENCE = 1e5  # beyond float16's 65504


class ConfidentTeacher:
    """A pinhole view of a wall at a depth set by the image's brightness, with confidence 1e5 everywhere."""

    name = "confident"
    needs_ground_truth = False
    patch_size = 1
    fingerprint = {"name": "confident", "version": 1}

    def predict(self, images: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        points = brightness_wall(images)
        conf = torch.full(points.shape[:-1], CONFIDENCE)
        return {"pts3d_global": points, "conf_global": conf, "pts3d_local": points.clone(), "conf_local": conf}


def confident_factory(config: TeacherConfig) -> ConfidentTeacher:
    return ConfidentTeacher()


def test_confidence_beyond_float16_is_a_named_encode_reject_under_fp16(tmp_path: Path):
    config = load_config(None, [
        "--scenes.num_scenes", "1", "--scenes.views_per_scene", "2", "--scenes.render_size", "[32,32]",
        "--scenes.long_side", "32", "--scenes.patch_size", "16", "--scenes.views_per_sample", "2",
        "--cache.uri", str(tmp_path / "cache.lance"), "--cache.codec", "fp16",
    ], environ={})
    summary = run_cache_job(config, teacher_factory=confident_factory)
    assert (summary.written, summary.rejected_total) == (0, 1)
    (reject,) = lance.dataset(rejects_uri(config.cache.uri)).to_table().to_pylist()
    assert reject["stage"] == "encode"
    assert "100000" in reject["reason"] and "65504" in reject["reason"] and "conf_" in reject["reason"]
