"""Preprocessing: aspect kept, centre crop to patch multiples, K exactly consistent with the pixels."""

import numpy as np
import pytest

from d3r.scenes.preprocess import (
    crop_to_patch,
    crop_views_to_patch,
    fit_sample,
    preprocess_views,
    resize_crop_view,
    target_size,
)
from d3r.scenes.records import View


def ramp_view(width: int, height: int) -> View:
    """An image whose red channel is the column index and green the row index (as 0..255 ramps)."""
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.round(u * 255 / (width - 1))
    image[..., 1] = np.round(v * 255 / (height - 1))
    K = np.array([[100.0, 0, (width - 1) / 2 + 3], [0, 100.0, (height - 1) / 2 - 2], [0, 0, 1]])
    depth = np.ones((height, width), np.float32)
    return View(name="ramp", image=image, K=K, depth=depth)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 480), (224, 160)), ((480, 640), (160, 224)), ((512, 384), (224, 160)), ((1920, 1080), (224, 112))],
)
def test_target_size_keeps_aspect_and_orientation(size, expected):
    assert target_size(*size, long_side=224, patch_size=16) == expected


def test_target_size_rejects_too_elongated():
    with pytest.raises(ValueError, match="too elongated"):
        target_size(4000, 10, long_side=224, patch_size=16)


@pytest.mark.parametrize(("width", "height", "tw", "th"), [(200, 150, 112, 80), (150, 200, 84, 112), (90, 60, 128, 96)])
def test_intrinsics_follow_the_pixels(width, height, tw, th):
    """A pixel's content and its projection both land where the updated K says (shrink and enlarge)."""
    view = ramp_view(width, height)
    out = resize_crop_view(view, tw, th)
    assert out.image.shape == (th, tw, 3) and out.depth.shape == (th, tw)
    # The ray through new pixel (u', v') under K' is the ray through source pixel (u, v) under K...
    v_new, u_new = np.mgrid[4:th - 4:5, 4:tw - 4:5]
    u_src = view.K[0, 0] * (u_new - out.K[0, 2]) / out.K[0, 0] + view.K[0, 2]
    v_src = view.K[1, 1] * (v_new - out.K[1, 2]) / out.K[1, 1] + view.K[1, 2]
    # ... and the pixel content says where it came from (the ramps encode source column/row).
    content_u = out.image[v_new, u_new, 0].astype(float) * (width - 1) / 255
    content_v = out.image[v_new, u_new, 1].astype(float) * (height - 1) / 255
    tol = 0.5 * (width - 1) / 255 + 0.3  # 8-bit quantisation of the ramp + resampling
    assert np.abs(content_u - u_src).max() < tol
    assert np.abs(content_v - v_src).max() < tol


def test_intrinsics_exact_formula():
    view = ramp_view(200, 100)
    out = resize_crop_view(view, 96, 64)
    # cover: scale = max(96/200, 64/100) = 0.64 → 128x64, crop x offset 16
    s = 0.64
    assert out.K[0, 0] == pytest.approx(100 * s)
    assert out.K[0, 2] == pytest.approx((view.K[0, 2] + 0.5) * s - 0.5 - 16)
    assert out.K[1, 2] == pytest.approx((view.K[1, 2] + 0.5) * s - 0.5)


def test_preprocess_views_brings_mixed_sizes_to_one():
    views = [ramp_view(320, 240), ramp_view(300, 240), ramp_view(240, 320)]
    out = preprocess_views(views, long_side=112, patch_size=16)
    assert {v.image.shape for v in out} == {(80, 112, 3)}
    assert all(v.K is not None for v in out)


def test_a_view_of_the_other_orientation_is_turned_and_kept_whole():
    """A landscape photo in a portrait sample was cover-cropped to 43% of its width; now it is turned."""
    views = [ramp_view(240, 320), ramp_view(320, 240), ramp_view(240, 320)]
    out = preprocess_views(views, long_side=112, patch_size=16)
    assert {v.image.shape for v in out} == {(112, 80, 3)}
    assert [v.meta["turns"] for v in out] == [0, 1, 0] and all(v.meta["crop_share"] == 0 for v in out)
    # the turned view still shows every column and row of the photo (red = column, green = row ramps)
    turned = out[1].image.astype(int)
    assert turned[..., 0].min() < 8 and turned[..., 0].max() > 247  # all 320 columns, now down the image
    assert turned[..., 1].min() < 8 and turned[..., 1].max() > 247
    assert np.abs(np.diff(turned[:, 40, 0])).max() < 12 and np.abs(np.diff(turned[40, :, 1])).max() < 12


@pytest.mark.parametrize(("sizes", "size", "shares"), [
    # one shape in both orientations: the first view's target, nothing cut
    ([(640, 480), (480, 640), (320, 240)], (224, 160), [0.0, 0.0, 0.0]),
    # 4:3 with 16:9: the geometric mean aspect cuts both by the same least share, 1 - sqrt(3/4 * 16/9 ...)
    ([(640, 480), (1920, 1080)], (224, 144), [1 - (4 / 3) / (64 / 27) ** 0.5, 1 - (64 / 27) ** 0.5 / (16 / 9)]),
])
def test_fit_sample_turns_and_shares_the_crop(sizes, size, shares):
    fit = fit_sample(sizes, long_side=224, patch_size=16)
    assert fit.size == size
    np.testing.assert_allclose([v.crop_share for v in fit.views], shares, atol=1e-12)
    assert [v.turns for v in fit.views] == [int(h > w) for w, h in sizes]


def test_depth_is_resampled_without_blending():
    view = ramp_view(64, 48)
    depth = np.zeros((48, 64), np.float32)
    depth[:, 32:] = 5.0
    out = resize_crop_view(view.with_(depth=depth), 32, 24)
    assert set(np.unique(out.depth)) <= {0.0, 5.0}


def test_crop_to_patch_keeps_the_teachers_pixels_and_moves_K_with_them():
    """512x384 → 504x378 for patch 14 (offsets 4, 3): pixels, maps and K cropped together, nothing resampled."""
    views = [ramp_view(512, 384), ramp_view(512, 384)]
    images = np.stack([v.image for v in views])
    points = np.random.default_rng(0).normal(size=(2, 384, 512, 3)).astype(np.float32)
    K = np.stack([v.K for v in views])
    cropped, cropped_K = crop_to_patch({"images": images, "points": points}, 14, K)
    assert cropped["images"].shape == (2, 378, 504, 3) and cropped["points"].shape == (2, 378, 504, 3)
    np.testing.assert_array_equal(cropped["images"], images[:, 3:381, 4:508])
    np.testing.assert_array_equal(cropped["points"], points[:, 3:381, 4:508])
    expected = K.copy()
    expected[:, 0, 2] -= 4
    expected[:, 1, 2] -= 3
    np.testing.assert_allclose(cropped_K, expected, rtol=0, atol=1e-12)
    # a pixel's ray under the new K is the ray of the same content under the old one
    u, v = 100, 50
    np.testing.assert_allclose(np.linalg.solve(cropped_K[0], [u, v, 1]), np.linalg.solve(K[0], [u + 4, v + 3, 1]))
    same, same_K = crop_to_patch({"images": images[:, :378, :504]}, 14, K)
    assert same["images"].shape == (2, 378, 504, 3) and np.array_equal(same_K, K)


def test_crop_to_patch_refuses_mismatched_or_tiny_maps():
    with pytest.raises(ValueError, match="sharing"):
        crop_to_patch({"a": np.zeros((2, 48, 64)), "b": np.zeros((2, 48, 60))}, 14)
    with pytest.raises(ValueError, match="smaller than one 14-pixel patch"):
        crop_to_patch({"a": np.zeros((1, 10, 64))}, 14)


def test_crop_views_to_patch_crops_image_depth_and_K_together():
    view = ramp_view(64, 48)
    view = view.with_(depth=np.arange(48 * 64, dtype=np.float32).reshape(48, 64))
    (out,) = crop_views_to_patch([view], 14)
    assert out.image.shape == (42, 56, 3) and out.depth.shape == (42, 56)
    np.testing.assert_array_equal(out.image, view.image[3:45, 4:60])
    np.testing.assert_array_equal(out.depth, view.depth[3:45, 4:60])
    assert out.K[0, 2] == pytest.approx(view.K[0, 2] - 4) and out.K[1, 2] == pytest.approx(view.K[1, 2] - 3)
    (no_depth,) = crop_views_to_patch([view.with_(depth=None, K=None)], 14)
    assert no_depth.depth is None and no_depth.K is None and no_depth.image.shape == (42, 56, 3)
