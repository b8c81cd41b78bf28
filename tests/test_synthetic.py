"""Synthetic rooms: geometry that reprojects exactly, view-independent colour, determinism, valid cameras."""

import pickle

import numpy as np
import pytest

from d3r.config import ScenesConfig
from d3r.scenes.synthetic import (
    camera_poses,
    cast_rays,
    pixel_rays,
    render_scene,
    render_view,
    room_spec,
    synthetic_scenes,
)

SIZES = [(64, 48), (48, 64), (40, 40)]


def backproject(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points ``[H, W, 3]`` of a z-depth map (pixel centres at integer coordinates)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(depth, dtype=float)], -1)
    return (rays * depth[..., None]) @ pose[:3, :3].T + pose[:3, 3]


def project(points: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) of world points in a camera (c2w ``pose``)."""
    cam = (points - pose[:3, 3]) @ pose[:3, :3]
    z = cam[..., 2]
    return K[0, 0] * cam[..., 0] / z + K[0, 2], K[1, 1] * cam[..., 1] / z + K[1, 2], z


def bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples at (u, v) and the spread (max - min) of the four neighbours."""
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    corners = [image[v0, u0], image[v0, u0 + 1], image[v0 + 1, u0], image[v0 + 1, u0 + 1]]
    if image.ndim == 3:
        fu, fv = fu[:, None], fv[:, None]
    value = (corners[0] * (1 - fu) + corners[1] * fu) * (1 - fv) + (corners[2] * (1 - fu) + corners[3] * fu) * fv
    stack = np.stack(corners).astype(float)
    return value, stack.max(0) - stack.min(0)


def exact_depth(spec, view) -> np.ndarray:
    """float64 z-depth ``[H, W]`` of a view, re-cast through its pixel centres; checks the stored image too."""
    h, w = view.depth.shape
    t, colour = cast_rays(spec, view.pose[:3, 3], pixel_rays(view.K, view.pose, (w, h)).reshape(-1, 3))
    np.testing.assert_array_equal(colour.reshape(h, w, 3), view.image)
    np.testing.assert_allclose(view.depth, t.reshape(h, w), rtol=1e-6)
    return t.reshape(h, w)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_points_seen_in_one_view_lie_on_the_surface_seen_from_another(seed, size):
    """Ray from camera j towards each point of view i: first hit is exactly that point, or an occluder."""
    scene, spec = render_scene(seed, seed, 5, size, camera_path="mixed"), room_spec(seed, seed)
    total_agree = total_inside = 0
    for a, b in zip(scene.views[:-1], scene.views[1:], strict=True):
        points = backproject(exact_depth(spec, a), a.K, a.pose)
        u, v, z = project(points, b.K, b.pose)
        inside = (z > 1e-3) & (u >= -0.5) & (u <= size[0] - 0.5) & (v >= -0.5) & (v <= size[1] - 0.5)
        centre = b.pose[:3, 3]
        t, colour = cast_rays(spec, centre, points[inside] - centre)
        assert np.all(t <= 1 + 1e-9), f"a point of {a.name} lies in front of every surface seen from {b.name}"
        agree = np.abs(t - 1) < 1e-9
        total_agree += agree.sum()
        total_inside += inside.sum()
        if not agree.any():  # random look-at views may share nothing
            continue
        # Photometric: the same 3D point has the same colour from both cameras (float32 shading: ±1).
        diff = np.abs(colour[agree].astype(int) - a.image[inside][agree].astype(int)).max(axis=1)
        assert np.mean(diff <= 1) > 0.995, f"{a.name}->{b.name}: colours differ for the same 3D point"
        assert np.mean(diff == 0) > 0.95
    assert total_inside > 0
    assert total_agree / total_inside > 0.3, "too few co-visible points agree: depth/K/pose inconsistent"


@pytest.mark.parametrize("size", SIZES)
def test_depth_reprojects_between_rendered_views(size):
    """Image-only check: back-projected depth of view i matches view j's depth map where both see it.

    Inverse depth is affine in pixel coordinates on a plane, so bilinear interpolation of 1/z is exact on
    planes; curved surfaces and float32 storage make a small tail. A half-pixel error in K fails all three.
    """
    scene = render_scene(7, 3, 6, size, camera_path="orbit")
    errors = []
    for a, b in zip(scene.views[:-1], scene.views[1:], strict=True):
        points = backproject(a.depth.astype(np.float64), a.K, a.pose)
        u, v, z = project(points, b.K, b.pose)
        h, w = b.depth.shape
        inside = (z > 1e-3) & (u >= 0) & (u <= w - 1.001) & (v >= 0) & (v <= h - 1.001)
        inv_depth, spread = bilinear(1.0 / b.depth.astype(np.float64), u[inside], v[inside])
        smooth = spread < 0.02 * inv_depth  # one surface around the sample
        rel = np.abs(1.0 / inv_depth - z[inside]) / z[inside]
        errors.append(rel[smooth & (rel < 1e-2)])  # larger: occluded in view j
    errors = np.concatenate(errors)
    assert len(errors) > 200
    assert np.median(errors) < 1e-6
    assert np.mean(errors < 1e-4) > 0.75
    assert np.mean(errors < 1e-3) > 0.9


def test_same_seed_same_scene_and_different_seeds_differ():
    first, again = render_scene(2, 5, 3, (32, 24)), render_scene(2, 5, 3, (32, 24))
    assert room_spec(2, 5) == room_spec(2, 5)
    for x, y in zip(first.views, again.views, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.depth, y.depth)
        np.testing.assert_array_equal(x.pose, y.pose)
    other = render_scene(2, 6, 3, (32, 24))
    assert room_spec(2, 6) != room_spec(2, 5)
    assert not np.array_equal(other.views[0].image, first.views[0].image)
    assert room_spec(3, 5) != room_spec(2, 5)


def distance_outside(obj, p: np.ndarray) -> float:
    """Lower bound of the distance from p to the object (negative inside), computed independently."""
    rel = p - np.asarray(obj.center)
    half = np.asarray(obj.half_size)
    if obj.kind == "sphere":
        return np.linalg.norm(rel) - half[0]
    if obj.kind == "cylinder":
        return max(np.hypot(rel[0], rel[1]) - half[0], abs(rel[2]) - half[2])
    c, s = np.cos(obj.yaw), np.sin(obj.yaw)
    local = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]])
    return float(np.max(np.abs(local) - half))


@pytest.mark.parametrize("path", ["orbit", "walkthrough", "lookat", "mixed"])
def test_cameras_inside_room_clear_of_objects_and_level(path):
    for index in range(12):
        spec = room_spec(index, 11)
        assert 3 <= len(spec.objects) <= 15
        size = np.asarray(spec.size)
        for obj in spec.objects:  # resting on the floor, inside the walls
            assert obj.center[2] - obj.half_size[2] == pytest.approx(0.0, abs=1e-12)
            assert np.all(np.abs(np.asarray(obj.center[:2]) - size[:2] / 2) + obj.footprint_radius < size[:2] / 2)
        K, poses = camera_poses(spec, 8, (64, 48), path, 11)
        assert K[0, 2] == 31.5 and K[1, 2] == 23.5 and K[0, 0] == K[1, 1]
        hfov = np.degrees(2 * np.arctan(32 / K[0, 0]))
        assert 55 <= hfov <= 75
        for pose in poses:
            centre = pose[:3, 3]
            assert np.all(centre >= 0.3 - 1e-9) and np.all(centre <= size - 0.3 + 1e-9)
            assert all(distance_outside(obj, centre) > 0.2 for obj in spec.objects)
            np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-12)
            assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
            assert abs(pose[2, 0]) < 1e-12, "camera x axis must be horizontal (no roll)"
            assert pose[2, 1] < 0, "camera y (down in the image) must point down in the world"


def test_mixed_path_uses_every_path_and_unknown_path_fails():
    paths = {render_scene(i, 0, 1, (8, 6)).meta["camera_path"] for i in range(12)}
    assert paths == {"orbit", "walkthrough", "lookat"}
    with pytest.raises(ValueError, match="camera_path"):
        camera_poses(room_spec(0, 0), 2, (8, 6), "spiral", 0)


def test_image_and_depth_shapes_and_textures_are_detailed():
    scene = render_scene(1, 0, 2, (48, 64))
    view = scene.views[0]
    assert scene.id == "room_0001" and scene.source == "synthetic"
    assert view.image.shape == (64, 48, 3) and view.image.dtype == np.uint8
    assert view.depth.shape == (64, 48) and view.depth.dtype == np.float32
    assert np.all(view.depth > 0)
    assert len(np.unique(view.image.reshape(-1, 3), axis=0)) > 300, "textures are too flat"


def test_lazy_scenes_render_on_load_and_pickle():
    config = ScenesConfig(num_scenes=2, views_per_scene=3, render_size=(32, 24), camera_path="lookat", seed=4)
    scenes = list(synthetic_scenes(config))
    assert [s.id for s in scenes] == ["room_0000", "room_0001"]
    view = scenes[1].views[2]
    assert view.image is None and view.K is not None and view.pose is not None
    loaded = pickle.loads(pickle.dumps(view)).load()
    image, depth = render_view(room_spec(1, 4), view.K, view.pose, (32, 24))
    np.testing.assert_array_equal(loaded.image, image)
    np.testing.assert_array_equal(loaded.depth, depth)
    eager = render_scene(1, 4, 3, (32, 24), camera_path="lookat").views[2]
    np.testing.assert_array_equal(loaded.image, eager.image)
    np.testing.assert_array_equal(loaded.pose, eager.pose)
