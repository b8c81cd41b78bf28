"""Supervision codecs: round trips within the issue's bounds on analytic teacher-like pointmaps."""

from __future__ import annotations

import json

import lance
import numpy as np
import pyarrow as pa
import pytest

from d3r.cache.codec import CODECS, D3rV1Codec, decode_row, get_codec, pack_plane, unpack_views
from d3r.geometry import align_local_to_global, depth_to_points, transform_points

HEIGHT, WIDTH, VIEWS = 40, 64, 3


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    """``[H, W]`` smooth random field in about [-1, 1] (bilinear upsampling of a coarse grid)."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
    rows = np.linspace(0, cells, shape[0])
    cols = np.linspace(0, cells, shape[1])
    r0, c0 = np.minimum(rows.astype(int), cells - 1), np.minimum(cols.astype(int), cells - 1)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def plane_and_sphere_depth(K: np.ndarray, tilt: float) -> np.ndarray:
    """``[H, W]`` z-depth of a tilted back wall with a sphere in front of it, seen by pinhole ``K``."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    wall = 4.0 / (1.0 + tilt * rays[..., 0])
    centre, radius = np.array([0.3, 0.1, 2.5]), 0.6
    b = rays @ centre
    a = (rays**2).sum(-1)
    disc = b**2 - a * (centre @ centre - radius**2)
    hit = disc > 0
    sphere = np.where(hit, (b - np.sqrt(np.where(hit, disc, 0))) / a, np.inf)
    return np.minimum(wall, sphere)


def rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    return np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])


def teacher_like(seed: int = 0, global_warp: float = 0.0) -> dict[str, np.ndarray]:
    """Four teacher maps for ``VIEWS`` views of an analytic scene: local points with depth and lateral noise;
    global = the local points moved by each view's pose and a global scale (plus ``global_warp`` · a smooth
    non-Sim(3) bend); confidence ``1 + exp(smooth field)``; a block of pixels with no point (points 0, confidence 1)."""
    rng = np.random.default_rng(seed)
    K = np.array([[50.0, 0, (WIDTH - 1) / 2], [0, 50.0, (HEIGHT - 1) / 2], [0, 0, 1]])
    poses = np.tile(np.eye(4), (VIEWS, 1, 1))
    for i in range(1, VIEWS):
        poses[i, :3, :3] = rotation(0.15 * i, -0.05 * i)
        poses[i, :3, 3] = [0.3 * i, -0.1 * i, 0.2]
    local, glob, conf_local, conf_global = [], [], [], []
    for i in range(VIEWS):
        depth = plane_and_sphere_depth(K, tilt=0.2 * i - 0.1)
        depth *= 1 + 0.01 * smooth_field(rng, depth.shape) + 0.001 * rng.standard_normal(depth.shape)
        points = depth_to_points(depth, K)
        points[..., :2] += 0.001 * depth[..., None] * rng.standard_normal(depth.shape + (2,))
        world = transform_points(np.linalg.inv(poses[0]) @ poses[i], points) * 0.7
        bend = global_warp * smooth_field(rng, depth.shape)[..., None] * np.linalg.norm(world, axis=-1, keepdims=True)
        local.append(points)
        glob.append(world + bend)
        conf_local.append(1 + np.exp(2 + 2 * smooth_field(rng, depth.shape)))
        conf_global.append(1 + np.exp(1 + 3 * smooth_field(rng, depth.shape)))
    out = {
        "pts3d_global": np.stack(glob),
        "conf_global": np.stack(conf_global),
        "pts3d_local": np.stack(local),
        "conf_local": np.stack(conf_local),
    }
    out = {key: value.astype(np.float32) for key, value in out.items()}
    for key in out:
        out[key][1, 5:15, 10:30] = 1.0 if key.startswith("conf") else 0.0
    return out


def relative_errors(decoded: np.ndarray, reference: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """``‖decoded − reference‖ / ‖reference‖`` over pixels with a point and confidence above the 15th percentile."""
    keep = (reference != 0).any(-1) & (conf > np.percentile(conf, 15))
    return np.linalg.norm(decoded - reference, axis=-1)[keep] / np.linalg.norm(reference, axis=-1)[keep]


def assert_within_bounds(decoded: np.ndarray, reference: np.ndarray, conf: np.ndarray) -> None:
    errors = relative_errors(decoded, reference, conf)
    assert np.median(errors) <= 1e-3, np.median(errors)
    assert np.percentile(errors, 99) <= 1e-2, np.percentile(errors, 99)


def assert_conf_within_one_percent(decoded: np.ndarray, reference: np.ndarray) -> None:
    above = reference > 1
    relative = np.abs((decoded[above] - 1) - (reference[above] - 1)) / (reference[above] - 1)
    assert relative.max() <= 0.01, relative.max()
    np.testing.assert_array_equal(decoded[~above], 1.0)


def roundtrip(name: str, outputs: dict[str, np.ndarray], **kwargs) -> dict[str, np.ndarray]:
    codec = get_codec(name)
    columns = codec.encode(outputs, **kwargs)
    assert all(key.startswith("sup_") and isinstance(value, bytes) for key, value in columns.items())
    return codec.decode(columns, VIEWS, HEIGHT, WIDTH)


def aligned_target(outputs: dict[str, np.ndarray]) -> np.ndarray:
    aligned, _ = align_local_to_global(outputs["pts3d_local"], outputs["pts3d_global"], outputs["conf_global"])
    aligned[~(outputs["pts3d_local"] != 0).any(-1)] = 0
    return aligned.astype(np.float32)


def test_registry_has_both_codecs_and_the_default():
    assert {"fp16", "d3r-v1"} <= set(CODECS)
    assert get_codec("d3r-v1").version >= 1


def test_fp16_global_head_is_exact_to_float16():
    outputs = teacher_like(global_warp=0.02)
    decoded = roundtrip("fp16", outputs, global_target="global_head")
    for key, value in outputs.items():
        np.testing.assert_array_equal(decoded[key], value.astype(np.float16).astype(np.float32))
        assert decoded[key].dtype == np.float32


def test_fp16_aligned_local_stores_the_aligned_target():
    outputs = teacher_like(global_warp=0.02)
    decoded = roundtrip("fp16", outputs, global_target="aligned_local")
    expected = aligned_target(outputs).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(decoded["pts3d_global"], expected)


def test_d3r_v1_aligned_local_within_bounds():
    outputs = teacher_like()
    decoded = roundtrip("d3r-v1", outputs)
    assert_within_bounds(decoded["pts3d_local"], outputs["pts3d_local"], outputs["conf_local"])
    assert_within_bounds(decoded["pts3d_global"], aligned_target(outputs), outputs["conf_global"])
    for key in ("conf_local", "conf_global"):
        assert_conf_within_one_percent(decoded[key], outputs[key])


def test_d3r_v1_global_head_keeps_a_non_sim3_global_map():
    outputs = teacher_like(global_warp=0.03)
    aligned = roundtrip("d3r-v1", outputs, global_target="aligned_local")["pts3d_global"]
    assert np.median(relative_errors(aligned, outputs["pts3d_global"], outputs["conf_global"])) > 1e-2
    decoded = roundtrip("d3r-v1", outputs, global_target="global_head")
    assert_within_bounds(decoded["pts3d_global"], outputs["pts3d_global"], outputs["conf_global"])
    assert_within_bounds(decoded["pts3d_local"], outputs["pts3d_local"], outputs["conf_local"])


def test_d3r_v1_keeps_pixels_without_points_exact():
    outputs = teacher_like(global_warp=0.03)
    outputs["pts3d_global"][2, 0, :5] = 0  # no global point where the local head has one
    outputs["conf_global"][2, 0, :5] = 1
    outputs["pts3d_local"][0, 2, :3] = 0  # a global point where the local head has none
    outputs["conf_local"][0, 2, :3] = 1
    local_empty = ~(outputs["pts3d_local"] != 0).any(-1)
    for target, global_empty in (
        ("aligned_local", local_empty),
        ("global_head", ~(outputs["pts3d_global"] != 0).any(-1)),
    ):
        decoded = roundtrip("d3r-v1", outputs, global_target=target)
        for key, empty in (("pts3d_local", local_empty), ("pts3d_global", global_empty)):
            np.testing.assert_array_equal(decoded[key][empty], 0.0)
            assert (decoded[key][~empty] != 0).any(-1).all()
        for key in ("conf_local", "conf_global"):
            np.testing.assert_array_equal(decoded[key] == 1, outputs[key] == 1)
    np.testing.assert_array_equal(decoded["pts3d_global"][0, 2, :3], outputs["pts3d_global"][0, 2, :3])


def test_d3r_v1_points_behind_the_camera_survive_as_exceptions():
    outputs = teacher_like()
    outputs["pts3d_local"][0, 3, 4] = [0.5, -0.2, -1.0]
    outputs["pts3d_local"][0, 3, 5] = [2.0, 0.1, 1e-6]
    decoded = roundtrip("d3r-v1", outputs)
    np.testing.assert_array_equal(decoded["pts3d_local"][0, 3, 4:6], outputs["pts3d_local"][0, 3, 4:6])


def test_d3r_v1_compresses_far_below_float16():
    outputs = teacher_like()
    columns = get_codec("d3r-v1").encode(outputs)
    fp16_bytes = sum(len(v) for v in get_codec("fp16").encode(outputs).values())
    assert sum(len(v) for v in columns.values()) < fp16_bytes / 3


def test_coarser_steps_give_fewer_bytes_and_larger_errors():
    outputs = teacher_like()
    fine, coarse = D3rV1Codec(), D3rV1Codec(depth_step=1e-2, ray_step=1e-2)
    sizes, errors = [], []
    for codec in (fine, coarse):
        columns = codec.encode(outputs)
        sizes.append(len(columns["sup_local_depth"]) + len(columns["sup_local_rays"]))
        decoded = get_codec("d3r-v1").decode(columns, VIEWS, HEIGHT, WIDTH)
        errors.append(np.median(relative_errors(decoded["pts3d_local"], outputs["pts3d_local"], outputs["conf_local"])))
    assert sizes[1] < sizes[0]
    assert errors[1] > errors[0]


def test_columns_left_uncompressed_for_the_store_decode_the_same():
    outputs = teacher_like(global_warp=0.02)
    plain = D3rV1Codec(zstd_level=0).encode(outputs, global_target="global_head")
    packed = get_codec("d3r-v1").encode(outputs, global_target="global_head")
    assert sum(map(len, plain.values())) > 2 * sum(map(len, packed.values()))
    expected = get_codec("d3r-v1").decode(packed, VIEWS, HEIGHT, WIDTH)
    for key, value in get_codec("d3r-v1").decode(plain, VIEWS, HEIGHT, WIDTH).items():
        np.testing.assert_array_equal(value, expected[key])


@pytest.mark.parametrize("key", ["pts3d_local", "conf_global", "pts3d_global"])
@pytest.mark.parametrize("name", ["fp16", "d3r-v1"])
def test_non_finite_input_is_rejected(name, key):
    outputs = teacher_like()
    outputs[key][0, 1, 2] = np.nan
    with pytest.raises(ValueError, match=key):
        get_codec(name).encode(outputs)


def test_bad_inputs_name_the_field():
    outputs = teacher_like()
    with pytest.raises(ValueError, match="conf_local"):
        get_codec("d3r-v1").encode({**outputs, "conf_local": outputs["conf_local"][:, :-1]})
    with pytest.raises(ValueError, match="conf_global"):
        get_codec("d3r-v1").encode({**outputs, "conf_global": outputs["conf_global"] - 1})
    with pytest.raises(ValueError, match="global_target"):
        get_codec("d3r-v1").encode(outputs, global_target="raw")
    with pytest.raises(ValueError, match="unknown codec 'zip'"):
        get_codec("zip")


def lance_like_row(name: str, outputs: dict[str, np.ndarray], **kwargs) -> dict:
    codec = get_codec(name)
    return {
        "sample_id": "abc",
        "codec": codec.name,
        "codec_version": np.int32(codec.version),
        "N": VIEWS,
        "H": HEIGHT,
        "W": WIDTH,
        "images": [b"png"] * VIEWS,
        **codec.encode(outputs, **kwargs),
    }


@pytest.mark.parametrize("name", ["fp16", "d3r-v1"])
def test_decode_row_matches_decode(name):
    outputs = teacher_like(global_warp=0.02)
    row = lance_like_row(name, outputs, global_target="global_head")
    decoded = decode_row(row)
    expected = get_codec(name).decode({k: v for k, v in row.items() if k.startswith("sup_")}, VIEWS, HEIGHT, WIDTH)
    assert set(decoded) == {"pts3d_global", "conf_global", "pts3d_local", "conf_local"}
    for key in decoded:
        np.testing.assert_array_equal(decoded[key], expected[key])
    assert decoded["pts3d_local"].shape == (VIEWS, HEIGHT, WIDTH, 3)


def test_decode_row_reads_a_lance_table_row(tmp_path):
    outputs = teacher_like(global_warp=0.02)
    row = lance_like_row("d3r-v1", outputs, global_target="global_head")
    columns = {key: pa.array([value], pa.large_binary()) for key, value in row.items() if key.startswith("sup_")}
    table = pa.table(
        {
            "codec": [row["codec"]],
            "codec_version": pa.array([int(row["codec_version"])], pa.int32()),
            "N": [VIEWS],
            "H": [HEIGHT],
            "W": [WIDTH],
            **columns,
        }
    )
    lance.write_dataset(table, str(tmp_path / "cache.lance"))
    (read,) = lance.dataset(str(tmp_path / "cache.lance")).to_table().to_pylist()
    decoded = decode_row(read)
    expected = decode_row(row)
    for key in expected:
        np.testing.assert_array_equal(decoded[key], expected[key])


def test_decode_row_rejects_unknown_codec_or_version():
    row = lance_like_row("d3r-v1", teacher_like())
    with pytest.raises(ValueError, match="'d3r-v9'"):
        decode_row({**row, "codec": "d3r-v9"})
    with pytest.raises(ValueError, match="version 7"):
        decode_row({**row, "codec_version": 7})
    with pytest.raises(ValueError, match="codec_version"):
        decode_row({k: v for k, v in row.items() if k != "codec_version"})
    with pytest.raises(ValueError, match="sup_local_depth"):
        decode_row({k: v for k, v in row.items() if k != "sup_local_depth"})


# ------------------------------------------------------------------ any finite input: bounded bytes and errors

FLOAT16_MAX = 65504.0
OVERHEAD_PER_VIEW = 160  # view parameters (136 bytes) and chunk lengths: the fixed cost of a view
OVERHEAD_PER_SAMPLE = 1024  # the JSON header, zstd frames, the fp16 codec's own header


def encoded_bytes(columns: dict[str, bytes]) -> int:
    return sum(len(value) for value in columns.values())


def stored_maps(outputs: dict[str, np.ndarray], global_target: str) -> dict[str, np.ndarray]:
    """The four float32 maps a codec is meant to store (the global one is the aligned-local target or the head)."""
    maps = {key: np.asarray(value, dtype=np.float32) for key, value in outputs.items()}
    if global_target == "aligned_local":
        maps["pts3d_global"] = aligned_target(maps)
    return maps


def plain_bytes(maps: dict[str, np.ndarray]) -> int:
    """Bytes of the maps as plain floats per view: float16 (the fp16 codec), float32 for a view's map holding a
    value beyond float16's range (which the fp16 codec refuses)."""
    return sum((2 if np.abs(view).max() <= FLOAT16_MAX else 4) * view.size for value in maps.values() for view in value)


def assert_safe_roundtrip(outputs: dict[str, np.ndarray], global_target: str) -> dict[str, str]:
    """d3r-v1 on ``outputs``: no more bytes than plain floats plus the fixed overhead; every decoded value finite;
    each map of each view either plain (float16-rounded, or exact float32) or within the model's bounds (points
    1e-2 relative, ``C − 1`` 1%). Returns the storage recorded per map."""
    codec = get_codec("d3r-v1")
    maps = stored_maps(outputs, global_target)
    n, h, w = maps["conf_local"].shape
    columns = codec.encode(outputs, global_target=global_target)
    assert encoded_bytes(columns) <= plain_bytes(maps) + OVERHEAD_PER_VIEW * n + OVERHEAD_PER_SAMPLE
    decoded = codec.decode(columns, n, h, w)
    storage = json.loads(columns["sup_header"])["storage"]
    for key, reference in maps.items():
        assert np.isfinite(decoded[key]).all(), key
        for i, kind in enumerate(storage[key]):
            got, want = decoded[key][i].astype(np.float64), reference[i].astype(np.float64)
            if kind == "h":
                np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float64), err_msg=key)
            elif kind == "f":
                np.testing.assert_array_equal(got, want, err_msg=key)
            elif key in ("pts3d_local", "pts3d_global"):
                error = np.linalg.norm(got - want, axis=-1)
                assert (error <= 1e-2 * np.linalg.norm(want, axis=-1)).all(), (key, i, error.max())
            else:
                np.testing.assert_array_equal(got == 1, want == 1)
                above = want > 1
                assert (np.abs(got - want)[above] <= 0.01 * (want[above] - 1)).all(), (key, i)
    return storage


def noise_outputs(seed: int = 0) -> dict[str, np.ndarray]:
    """White-noise points (half of them behind the camera) and confidences."""
    rng = np.random.default_rng(seed)
    shape = (VIEWS, HEIGHT, WIDTH)
    return {
        "pts3d_global": rng.standard_normal((*shape, 3)).astype(np.float32),
        "conf_global": (1 + rng.exponential(3.0, shape)).astype(np.float32),
        "pts3d_local": rng.standard_normal((*shape, 3)).astype(np.float32),
        "conf_local": (1 + rng.exponential(3.0, shape)).astype(np.float32),
    }


def behind_the_camera() -> dict[str, np.ndarray]:
    outputs = teacher_like(global_warp=0.02)
    outputs["pts3d_local"][..., 2] *= -1
    return outputs


def huge_values() -> dict[str, np.ndarray]:
    """Teacher-like maps scaled far beyond float16's range (confidences by 1e5, points by 1e20)."""
    outputs = teacher_like(global_warp=0.02)
    for key in ("pts3d_local", "pts3d_global"):
        outputs[key] = outputs[key] * np.float32(1e20)
    for key in ("conf_local", "conf_global"):
        outputs[key] = 1 + (outputs[key] - 1) * np.float32(1e5)
    return outputs


def mixed_views() -> dict[str, np.ndarray]:
    """View 0 teacher-like; view 1 white noise up to 1e6; view 2 behind the camera, with a global confidence
    beyond 1e30 (C − 1 too large to model)."""
    outputs, noise = teacher_like(global_warp=0.02), noise_outputs(1)
    outputs["pts3d_local"][1] = noise["pts3d_local"][1] * 1e6
    outputs["pts3d_global"][1] = noise["pts3d_global"][1]
    outputs["pts3d_local"][2, ..., 2] *= -1
    outputs["conf_global"][2] = 1 + (outputs["conf_global"][2] - 1) * np.float32(1e32)
    return outputs


def overflowing_sim3() -> dict[str, np.ndarray]:
    """Local points of about 1e-9 seen as global points of about 1e31: a Sim(3) scale of 1e40 (beyond float32)."""
    outputs = teacher_like()
    outputs["pts3d_local"] = outputs["pts3d_local"] * np.float32(1e-9)
    outputs["pts3d_global"] = outputs["pts3d_global"] * np.float32(1e31)
    return outputs


ADVERSARIAL = {
    "white noise": noise_outputs,
    "behind the camera": behind_the_camera,
    "huge values": huge_values,
    "mixed views": mixed_views,
    "overflowing Sim(3)": overflowing_sim3,
}


@pytest.mark.parametrize("global_target", ["aligned_local", "global_head"])
@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_d3r_v1_is_safe_on_adversarial_input(case, global_target):
    storage = assert_safe_roundtrip(ADVERSARIAL[case](), global_target)
    if case != "huge values":  # huge but smooth maps are modelled (log depth holds any magnitude)
        assert any(kind in "hf" for kinds in storage.values() for kind in kinds), storage


def test_d3r_v1_falls_back_per_view():
    storage = assert_safe_roundtrip(mixed_views(), "aligned_local")
    assert storage["pts3d_local"] == "mfh"  # modelled, float32 (values up to 1e6), float16
    assert storage["pts3d_global"][0] == "m"
    assert storage["conf_global"][:2] in ("mm", "md", "dm", "dd") and storage["conf_global"][2] == "f"


def test_d3r_v1_keeps_teacher_like_maps_modelled():
    outputs = teacher_like(global_warp=0.02)
    for target in ("aligned_local", "global_head"):
        storage = assert_safe_roundtrip(outputs, target)
        assert all(set(kinds) <= {"m", "d"} for kinds in storage.values()), storage


@pytest.fixture(scope="module")
def random_fast3r_outputs() -> dict[str, np.ndarray]:
    """The tiny Fast3R teacher with random weights on 3 synthetic views of 96x64: maps the model does not fit."""
    from d3r.config import TeacherConfig
    from d3r.scenes.synthetic import render_scene
    from d3r.teachers.base import build_teacher, teacher_images

    teacher = build_teacher(TeacherConfig(name="fast3r", checkpoint="random", preset="tiny", device="cpu"))
    pixels = np.stack([view.image for view in render_scene(0, 0, 3, (96, 64)).views])
    return {key: value[0].numpy() for key, value in teacher.predict(teacher_images(pixels[None])).items()}


@pytest.mark.parametrize("global_target", ["aligned_local", "global_head"])
def test_d3r_v1_on_random_weight_fast3r_costs_no_more_than_fp16(random_fast3r_outputs, global_target):
    storage = assert_safe_roundtrip(random_fast3r_outputs, global_target)
    assert "h" in storage["pts3d_local"], storage  # its points lie behind the camera: plain float16
    fp16 = encoded_bytes(get_codec("fp16").encode(random_fast3r_outputs, global_target=global_target))
    d3r = encoded_bytes(get_codec("d3r-v1").encode(random_fast3r_outputs, global_target=global_target))
    assert d3r <= fp16 + OVERHEAD_PER_VIEW * 3 + OVERHEAD_PER_SAMPLE, (d3r, fp16, storage)


@pytest.mark.parametrize(("key", "value"), [("conf_local", 1e5), ("pts3d_local", -7e4), ("pts3d_global", 7e4)])
def test_fp16_refuses_values_beyond_float16_range(key, value):
    outputs = teacher_like()
    outputs[key][1, 2, 3] = value
    with pytest.raises(ValueError, match=rf"{key}.*value {value:g} .*beyond float16's range.*65504"):
        get_codec("fp16").encode(outputs, global_target="global_head")
    storage = assert_safe_roundtrip(outputs, "global_head")
    assert storage[key][1] in "mf", storage  # d3r-v1 keeps it: modelled, or float32


def as_version_1(columns: dict[str, bytes], shape: tuple[int, int, int]) -> dict[str, bytes]:
    """The same sample in the version-1 layout (one integer plane across all views, no storage, no plain column),
    rebuilt from a version-2 encoding whose maps are all modelled."""
    n, h, w = shape
    header = json.loads(columns["sup_header"])
    storage = header.pop("storage")
    assert all(set(kinds) <= {"m", "d"} for kinds in storage.values()) and len(set(storage["conf_global"])) == 1
    header["conf_global_from_local"] = storage["conf_global"][0] == "d"
    planes = {"sup_local_depth": (n, h, w), "sup_local_rays": (2, n, h, w), "sup_conf_local": (n, h, w),
              "sup_conf_global": (n, h, w)}
    if header["global_target"] == "global_head":
        planes["sup_global_residual"] = (3, n, h, w)
    old = {name: value for name, value in columns.items() if name != "sup_plain"}
    for name, plane_shape in planes.items():
        old[name] = pack_plane(unpack_views(columns[name], plane_shape, name), 9)
    old["sup_header"] = json.dumps(header).encode()
    return old


@pytest.mark.parametrize("global_target", ["aligned_local", "global_head"])
def test_version_1_rows_still_decode(global_target):
    outputs = teacher_like(global_warp=0.02)
    row = lance_like_row("d3r-v1", outputs, global_target=global_target)
    assert row["codec_version"] == 2
    columns = {key: value for key, value in row.items() if key.startswith("sup_")}
    expected = decode_row(row)
    decoded = decode_row({**row, **as_version_1(columns, (VIEWS, HEIGHT, WIDTH)), "codec_version": 1})
    for key, value in expected.items():
        np.testing.assert_array_equal(decoded[key], value)
