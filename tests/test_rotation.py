"""Quarter turns: the pixels turn, the camera rolls with them exactly, and outputs turn back."""

import numpy as np

from d3r.geometry import depth_to_points, project, transform_points
from d3r.scenes.records import View
from d3r.scenes.rotation import turn_map, turn_view, unturn_camera, unturn_map, unturn_points


def _view(width: int = 7, height: int = 5) -> View:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth = (1.0 + rng.random((height, width))).astype(np.float32)
    K = np.array([[20.0, 0.7, 3.2], [0.0, 18.0, 2.1], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    pose[:3, 3] = [0.5, -0.2, 3.0]
    return View(name="v", image=image, depth=depth, K=K, pose=pose)


def test_a_turned_view_sees_the_same_world_points_at_its_turned_pixels():
    view = _view()
    turned = turn_view(view)
    assert turned.image.shape == (7, 5, 3) and turned.depth.shape == (7, 5)
    # pixel (u, v) of the photo is pixel (H - 1 - v, u) of the turned view, with the same colour and depth
    assert turned.image[3, 5 - 1 - 2].tolist() == view.image[2, 3].tolist()
    world = transform_points(view.pose, depth_to_points(view.depth.astype(np.float64), view.K))
    world_turned = transform_points(turned.pose, depth_to_points(turned.depth.astype(np.float64), turned.K))
    np.testing.assert_allclose(world_turned, turn_map(world), atol=1e-12)
    # and the turned camera projects a world point where the turned image shows it
    camera = transform_points(np.linalg.inv(turned.pose), world[2, 3])
    np.testing.assert_allclose(project(turned.K, camera[None])[0], [5 - 1 - 2, 3], atol=1e-9)


def test_outputs_of_a_turned_view_turn_back_to_the_photo():
    view = _view()
    turned = turn_view(view)
    local = depth_to_points(turned.depth.astype(np.float64), turned.K)  # [W, H, 3] in the turned camera
    back = unturn_points(unturn_map(local, 1), 1)
    np.testing.assert_allclose(back, depth_to_points(view.depth.astype(np.float64), view.K), atol=1e-12)
    assert np.array_equal(unturn_map(turned.image, 1), view.image)
    assert np.array_equal(unturn_map(turn_map(turn_map(view.depth), 1), 2), view.depth)


def test_unturn_camera_gives_back_the_photo_camera():
    view = _view()
    once = turn_view(view)
    K, pose = unturn_camera(once.K, once.pose, once.size, 1)
    np.testing.assert_allclose(K, view.K, atol=1e-12)
    np.testing.assert_allclose(pose, view.pose, atol=1e-12)
    thrice = turn_view(turn_view(once))
    K, pose = unturn_camera(thrice.K, thrice.pose, thrice.size, 3)
    np.testing.assert_allclose(K, view.K, atol=1e-12)
    np.testing.assert_allclose(pose, view.pose, atol=1e-12)
