import numpy as np
import pytest
import torch

from d3r.config import TeacherConfig
from d3r.geometry import depth_to_points, project, transform_points
from d3r.scenes.synthetic import render_scene
from d3r.teachers.base import OUTPUT_KEYS, Teacher, fingerprint_id
from d3r.teachers.oracle import (
    OracleParams,
    OracleTeacher,
    build_oracle,
    depth_edges,
    oracle_outputs,
    sample_generator,
)

SIZE = (48, 36)  # (W, H)


def room_sample(index: int) -> dict[str, np.ndarray]:
    """A 3-view synthetic room; view 1 has a 6x8 corner where nothing was hit (depth 0)."""
    views = render_scene(index, seed=0, num_views=3, size=SIZE).views
    depth = np.stack([v.depth for v in views]).astype(np.float64)
    depth[1, :6, :8] = 0.0
    return {
        "images": np.stack([v.image.transpose(2, 0, 1) for v in views]),
        "depth": depth,
        "K": np.stack([v.K for v in views]),
        "poses": np.stack([v.pose for v in views]),
    }


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return room_sample(0)


def run_oracle(sample: dict[str, np.ndarray], params: OracleParams, seed: int = 0):
    geometry = (sample["depth"], sample["K"], sample["poses"])
    return oracle_outputs(*geometry, params, sample_generator(seed, *geometry))


def ground_truth(sample: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(local, global)`` points ``[N, H, W, 3]``, from world points through view 0's pose."""
    local = depth_to_points(sample["depth"], sample["K"])
    world = transform_points(sample["poses"], local)
    return local, transform_points(np.linalg.inv(sample["poses"][0]), world)


def as_batch(sample: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images = torch.from_numpy(sample["images"])[None]
    return images, {key: torch.from_numpy(sample[key])[None] for key in ("depth", "K", "poses")}


def test_noise_free_outputs_equal_ground_truth_where_uncorrupted(sample):
    outputs, corrupted = run_oracle(sample, OracleParams(noise=0.0, corrupt_scale_view_prob=1.0))
    local, glob = ground_truth(sample)
    valid = sample["depth"] > 0
    for head, truth in (("local", local), ("global", glob)):
        clean = valid & ~corrupted[head]
        assert clean.mean() > 0.2
        np.testing.assert_allclose(outputs[f"pts3d_{head}"][clean], truth[clean], rtol=1e-6, atol=1e-6)
        error = np.linalg.norm(outputs[f"pts3d_{head}"] - truth, axis=-1)[corrupted[head]]
        assert np.median(error) > 1e-3
    np.testing.assert_array_equal(corrupted["global"][1:], valid[1:])  # every view but 0 scale-shifted
    centre = np.linalg.inv(sample["poses"][0])[:3] @ sample["poses"][2][:, 3]
    ratio = np.linalg.norm(outputs["pts3d_global"][2] - centre, axis=-1) / np.linalg.norm(glob[2] - centre, axis=-1)
    scale = np.median(ratio[valid[2] & ~corrupted["local"][2]])
    assert 1.14 < max(scale, 1 / scale) < 1.41


def test_clean_noise_is_multiplicative_depth_noise_of_the_configured_level(sample):
    noise = 0.01
    outputs, corrupted = run_oracle(
        sample, OracleParams(noise=noise, corrupt_blobs=0, corrupt_edge_bleed=False, corrupt_scale_view_prob=0.0)
    )
    assert not corrupted["global"].any() and not corrupted["local"].any()
    local, _ = ground_truth(sample)
    valid = sample["depth"] > 0
    relative = np.abs(outputs["pts3d_local"][..., 2] / np.where(valid, sample["depth"], 1.0) - 1.0)[valid]
    assert 0.3 * noise < np.median(relative) < 3 * noise
    rays = np.cross(outputs["pts3d_local"][valid], local[valid])  # points only move along their rays
    np.testing.assert_allclose(rays, 0.0, atol=1e-4)


def test_confidence_is_lower_in_each_kind_of_corruption(sample):
    valid = sample["depth"] > 0
    only = {"corrupt_blobs": 0, "corrupt_edge_bleed": False, "corrupt_scale_view_prob": 0.0}
    clean, _ = run_oracle(sample, OracleParams(**only))
    blobs, corrupted = run_oracle(sample, OracleParams(**dict(only, corrupt_blobs=3)))
    for head in ("global", "local"):
        conf = blobs[f"conf_{head}"]
        assert corrupted[head].sum() > 20
        assert np.median(conf[corrupted[head]]) < 0.5 * np.median(conf[valid & ~corrupted[head]])
    bled, corrupted = run_oracle(sample, OracleParams(**dict(only, corrupt_edge_bleed=True)))
    assert corrupted["local"].sum() > 20
    assert (bled["conf_local"][corrupted["local"]] < clean["conf_local"][corrupted["local"]]).all()
    scaled, corrupted = run_oracle(sample, OracleParams(**dict(only, corrupt_scale_view_prob=1.0)))
    assert not corrupted["local"].any() and corrupted["global"][1:].any()
    np.testing.assert_array_equal(scaled["conf_global"][0], scaled["conf_local"][0])
    assert (scaled["conf_global"][1:][valid[1:]] < scaled["conf_local"][1:][valid[1:]]).all()
    for outputs in (blobs, bled, scaled):
        assert all((outputs[f"conf_{head}"] >= 1.0).all() for head in ("global", "local"))


def test_clean_confidence_decreases_with_distance_and_at_depth_edges(sample):
    outputs, _ = run_oracle(sample, OracleParams(corrupt_blobs=0, corrupt_edge_bleed=False, corrupt_scale_view_prob=0))
    conf, depth = outputs["conf_local"], sample["depth"]
    valid = depth > 0
    edges = depth_edges(depth, valid)
    smooth = valid & (edges == 0)
    near = depth <= np.median(depth[smooth])
    assert np.median(conf[smooth & near]) > np.median(conf[smooth & ~near])
    assert np.median(conf[valid & (edges > 0.1)]) < 0.5 * np.median(conf[smooth])


def test_pixels_without_depth_get_unit_confidence_and_zero_points(sample):
    broken = dict(sample, depth=sample["depth"].copy())
    broken["depth"][2, -3:, -3:] = np.nan
    outputs, corrupted = run_oracle(broken, OracleParams(corrupt_blobs=5))
    missing = ~(np.isfinite(broken["depth"]) & (broken["depth"] > 0))
    assert missing[1, :6, :8].all() and missing[2, -3:, -3:].all()
    for key, value in outputs.items():
        assert value.dtype == np.float32 and np.isfinite(value).all(), key
    for head in ("global", "local"):
        assert (outputs[f"conf_{head}"][missing] == 1.0).all()
        assert (outputs[f"pts3d_{head}"][missing] == 0.0).all()
        assert not corrupted[head][missing].any()
        assert (outputs[f"conf_{head}"][~missing] > 1.0).all()


def test_global_map_is_in_view_zero_frame_and_views_agree_on_covisible_surfaces(sample):
    outputs, _ = run_oracle(sample, OracleParams(noise=0.0, corrupt_blobs=0, corrupt_edge_bleed=False))
    np.testing.assert_array_equal(outputs["pts3d_global"][0], outputs["pts3d_local"][0])
    width, height = SIZE
    for view in (1, 2):
        points = outputs["pts3d_global"][view][sample["depth"][view] > 0].astype(np.float64)
        pixels = np.rint(project(sample["K"][0], points)).astype(int)
        inside = (points[:, 2] > 0) & (pixels >= 0).all(-1) & (pixels[:, 0] < width) & (pixels[:, 1] < height)
        assert inside.sum() > 100
        seen = sample["depth"][0][pixels[inside, 1], pixels[inside, 0]]
        assert np.median(np.abs(points[inside, 2] / seen - 1.0)) < 0.01


def test_teacher_predict_is_deterministic_per_sample_and_follows_the_seed(sample):
    teacher = build_oracle(TeacherConfig(name="oracle", corrupt_scale_view_prob=0.5, seed=3))
    assert isinstance(teacher, Teacher) and teacher.needs_ground_truth
    images, geometry = as_batch(sample)
    other_images, other_geometry = as_batch(room_sample(1))
    batch = teacher.predict(
        torch.cat([images, other_images]), **{k: torch.cat([geometry[k], other_geometry[k]]) for k in geometry}
    )
    assert set(batch) == set(OUTPUT_KEYS)
    assert batch["pts3d_global"].shape == (2, 3, SIZE[1], SIZE[0], 3) and batch["conf_local"].shape == (2, 3, 36, 48)
    assert all(value.dtype == torch.float32 for value in batch.values())
    alone = teacher.predict(images, **geometry)
    for key in OUTPUT_KEYS:
        assert torch.equal(alone[key][0], batch[key][0])
    reseeded = OracleTeacher(teacher.params, seed=4).predict(images, **geometry)
    assert not torch.equal(reseeded["conf_local"], alone["conf_local"])
    _, first = run_oracle(sample, OracleParams())
    _, second = run_oracle(dict(sample, depth=sample["depth"] * 1.001), OracleParams())
    assert not np.array_equal(first["local"], second["local"])


def test_predict_rejects_missing_or_misshapen_ground_truth(sample):
    teacher = build_oracle(TeacherConfig(name="oracle"))
    images, geometry = as_batch(sample)
    with pytest.raises(ValueError, match="depth is required"):
        teacher.predict(images, K=geometry["K"], poses=geometry["poses"])
    with pytest.raises(ValueError, match=r"K of shape \[1, 3, 3, 3\]"):
        teacher.predict(images, depth=geometry["depth"], K=geometry["K"][:, :, :2], poses=geometry["poses"])
    with pytest.raises(ValueError, match="images"):
        teacher.predict(images[0], **geometry)


def test_fingerprint_names_every_parameter_and_the_registry_builds_it():
    config = TeacherConfig(name="oracle", noise=0.01, corrupt_blobs=3, seed=7)
    fingerprint = build_oracle(config).fingerprint
    assert fingerprint["name"] == "oracle" and fingerprint["version"] >= 1
    assert {k: fingerprint[k] for k in ("noise", "corrupt_blobs", "corrupt_edge_bleed", "seed")} == {
        "noise": 0.01,
        "corrupt_blobs": 3,
        "corrupt_edge_bleed": True,
        "seed": 7,
    }
    assert fingerprint["corrupt_scale_view_prob"] == config.corrupt_scale_view_prob
    changed = build_oracle(config.model_copy(update={"corrupt_edge_bleed": False})).fingerprint
    assert fingerprint_id(changed) != fingerprint_id(fingerprint)
    from d3r.teachers.base import build_teacher

    assert build_teacher(config).fingerprint == fingerprint
