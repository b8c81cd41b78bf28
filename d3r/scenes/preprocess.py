"""Aspect-preserving resize and centre crop to patch multiples, with intrinsics kept exact.

:func:`crop_to_patch` is the crop alone, for a student meeting a teacher's pixels (training, eval).

Never stretches, never transposes: portrait stays portrait. A resize by (sx, sy) maps a pixel
centre u to (u + 0.5)·s − 0.5; a crop by (ox, oy) shifts it by −(ox, oy). K follows both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from d3r.scenes.records import View


def target_size(width: int, height: int, long_side: int, patch_size: int) -> tuple[int, int]:
    """(W, H) after scaling the long side to ``long_side`` and cropping to multiples of ``patch_size``.

    Raises:
        ValueError: when the short side would be smaller than one patch.
    """
    scale = long_side / max(width, height)
    w, h = round(width * scale), round(height * scale)
    tw, th = (w // patch_size) * patch_size, (h // patch_size) * patch_size
    if tw == 0 or th == 0:
        raise ValueError(
            f"image {width}x{height} is too elongated for long side {long_side} and patch {patch_size}"
        )
    return tw, th


def resize_crop_intrinsics(K: np.ndarray, sx: float, sy: float, ox: int, oy: int) -> np.ndarray:
    """``[3, 3]`` K after resizing by (sx, sy) then cropping from (ox, oy) (pixel centres at integers)."""
    out = np.asarray(K, dtype=np.float64).copy()
    out[0, 0] *= sx
    out[0, 1] *= sx
    out[1, 1] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5 - ox
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5 - oy
    return out


def patch_crop_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(H, W) after :func:`crop_to_patch`: each side cut down to a multiple of ``patch_size``.

    Raises:
        ValueError: when a side is shorter than one patch.
    """
    crop_h, crop_w = (height // patch_size) * patch_size, (width // patch_size) * patch_size
    if crop_h == 0 or crop_w == 0:
        raise ValueError(f"{width}x{height} (WxH) is smaller than one {patch_size}-pixel patch")
    return crop_h, crop_w


def crop_to_patch(
    maps: Mapping[str, np.ndarray], patch_size: int, K: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Centre-crop per-pixel arrays and intrinsics together to the largest multiples of ``patch_size``.

    The student meets the teacher's pixels this way: nothing is resampled (a patch-16 teacher's 512x384
    becomes 504x378 for a patch-14 student). ``maps`` are ``[N, H, W, ...]`` arrays sharing ``N, H, W``
    (images ``[N, H, W, 3]``, pointmaps ``[N, H, W, 3]``, confidences and depth ``[N, H, W]``; numpy or
    torch); they come back as views (no copy). ``K [N, 3, 3]`` (pixels) comes back as a new float64
    array whose principal points are shifted by the crop offset.

    Raises:
        ValueError: when the maps disagree on ``N, H, W`` or a side is shorter than one patch.
    """
    shapes = {name: tuple(array.shape[:3]) for name, array in maps.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"crop_to_patch: expected one or more maps sharing [N, H, W], got {shapes}")
    _, height, width = next(iter(shapes.values()))
    crop_h, crop_w = patch_crop_size(height, width, patch_size)
    oy, ox = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = {name: array[:, oy:oy + crop_h, ox:ox + crop_w] for name, array in maps.items()}
    cropped_K = None if K is None else np.stack([resize_crop_intrinsics(k, 1.0, 1.0, ox, oy) for k in K])
    return cropped, cropped_K


def crop_views_to_patch(views: Sequence[View], patch_size: int) -> list[View]:
    """Loaded views of one size, centre-cropped with their depth and K by :func:`crop_to_patch`.

    Depth (or K) is kept only when every view has it; otherwise it becomes None (it could not be cropped
    consistently).
    """
    maps = {"image": np.stack([v.image for v in views])}
    if all(v.depth is not None for v in views):
        maps["depth"] = np.stack([v.depth for v in views])
    K = np.stack([v.K for v in views]) if all(v.K is not None for v in views) else None
    cropped, K = crop_to_patch(maps, patch_size, K)
    return [
        view.with_(image=cropped["image"][i], depth=cropped["depth"][i] if "depth" in cropped else None,
                   K=None if K is None else K[i])
        for i, view in enumerate(views)
    ]


def resize_crop_view(view: View, width: int, height: int) -> View:
    """Resize ``view`` (isotropically, to cover ``width x height``) and centre-crop to exactly that.

    Image: LANCZOS when shrinking, BICUBIC when enlarging. Depth: nearest neighbour (no blending
    across depth edges). K is updated exactly. The view must be loaded.
    """
    view = view.load()
    src_w, src_h = view.size
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    ox, oy = (new_w - width) // 2, (new_h - height) // 2
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    image = Image.fromarray(view.image).resize((new_w, new_h), resample)
    image = np.asarray(image)[oy:oy + height, ox:ox + width]
    depth = view.depth
    if depth is not None:
        depth = np.asarray(Image.fromarray(depth.astype(np.float32)).resize((new_w, new_h), Image.Resampling.NEAREST))
        depth = np.ascontiguousarray(depth[oy:oy + height, ox:ox + width])
    # Per-axis effective scales: rounding makes them differ by < 1 px over the image.
    K = None if view.K is None else resize_crop_intrinsics(view.K, new_w / src_w, new_h / src_h, ox, oy)
    return view.with_(image=np.ascontiguousarray(image), depth=depth, K=K)


def preprocess_views(views: Sequence[View], long_side: int, patch_size: int) -> list[View]:
    """Bring all views of one sample to one size (the first view's target size).

    Each view keeps its aspect ratio; views of another shape are covered and centre-cropped.
    """
    loaded = [v.load() for v in views]
    if not loaded:
        return []
    width, height = target_size(*loaded[0].size, long_side, patch_size)
    return [resize_crop_view(v, width, height) for v in loaded]
