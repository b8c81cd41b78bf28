"""Aspect-preserving resize and centre crop to patch multiples, with intrinsics kept exact.

:func:`crop_to_patch` is the crop alone, for a student meeting a teacher's pixels (training, eval).

Never stretches, never transposes. A resize by (sx, sy) maps a pixel centre u to (u + 0.5)·s − 0.5;
a crop by (ox, oy) shifts it by −(ox, oy). K follows both.

All views of a sample share one size (:func:`fit_sample`). The sample is portrait or landscape as most
of its views are (the first non-square view decides a tie); a view of the other orientation is turned a
quarter turn clockwise, a rolled camera with K, pose and depth turned exactly (:mod:`d3r.scenes.rotation`),
never cropped to the other orientation. The sample's aspect ratio is the geometric mean of its most and
least elongated views' (their own when all views share one), so that the view cut most by the cover crop
loses as little as possible; :attr:`ViewFit.crop_share` says how much each loses. The views' sampling
keeps that share under ``scenes.max_crop_fraction`` (see :mod:`d3r.scenes.sampling`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from d3r.scenes.records import View
from d3r.scenes.rotation import turn_view


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


@dataclass(frozen=True)
class ViewFit:
    """How one view is brought to its sample's size.

    Attributes:
        turns: quarter turns clockwise (0 or 1) before resizing (see :mod:`d3r.scenes.rotation`).
        crop_share: share of the turned view's pixels cut away to fit the sample's aspect ratio (0: none),
            not counting the crop of the sample's size to patch multiples.
        scale: the resize factor (above 1: the view is enlarged).
    """

    turns: int
    crop_share: float
    scale: float


@dataclass(frozen=True)
class SampleFit:
    """The one size of a sample's views and how each view gets there.

    Attributes:
        size: (W, H), multiples of the patch size.
        views: one :class:`ViewFit` per view, in the sample's order.
    """

    size: tuple[int, int]
    views: tuple[ViewFit, ...]

    def turned_size(self, index: int, size: tuple[int, int]) -> tuple[int, int]:
        """(W, H) of view ``index`` of (W, H) ``size`` once turned as its fit says."""
        return (size[1], size[0]) if self.views[index].turns % 2 else size


def is_portrait_sample(sizes: Sequence[tuple[int, int]]) -> bool:
    """Whether a sample of views of these (W, H) sizes is portrait: as most non-square views are, the first
    non-square view deciding a tie (landscape when every view is square)."""
    portrait = sum(h > w for w, h in sizes)
    landscape = sum(w > h for w, h in sizes)
    if portrait != landscape:
        return portrait > landscape
    return next((h > w for w, h in sizes if w != h), False)


def elongation(size: tuple[int, int]) -> float:
    """Long side over short side of a (W, H) size (1 for a square)."""
    return max(size) / min(size)


def fit_sample(sizes: Sequence[tuple[int, int]], long_side: int, patch_size: int) -> SampleFit:
    """The size and per-view fit of a sample whose views have these (W, H) sizes (see the module docstring).

    Views of one aspect ratio give :func:`target_size` of the first view (after any turn).

    Raises:
        ValueError: when a view is too elongated for ``long_side`` and ``patch_size`` (naming its size).
    """
    portrait = is_portrait_sample(sizes)
    turns = [int(w != h and (h > w) != portrait) for w, h in sizes]
    turned = [(h, w) if turn else (w, h) for (w, h), turn in zip(sizes, turns, strict=True)]
    ratios = [elongation(size) for size in turned]
    if all(w * turned[0][1] == h * turned[0][0] for w, h in turned):
        target, aspect = target_size(*turned[0], long_side, patch_size), ratios[0]
    else:
        target_size(*turned[ratios.index(max(ratios))], long_side, patch_size)  # fails naming the most elongated
        aspect = math.sqrt(min(ratios) * max(ratios))
        target = target_size(*((1.0, aspect) if portrait else (aspect, 1.0)), long_side, patch_size)
    views = tuple(
        ViewFit(turns=turn, crop_share=1.0 - min(ratio, aspect) / max(ratio, aspect),
                scale=max(target[0] / w, target[1] / h))
        for turn, ratio, (w, h) in zip(turns, ratios, turned, strict=True)
    )
    return SampleFit(size=target, views=views)


def fit_views(views: Sequence[View], fit: SampleFit) -> list[View]:
    """Loaded views turned, resized and cropped to ``fit.size`` as ``fit`` says; each view's ``meta`` records
    its fit (``turns``, ``crop_share``, ``scale``), so outputs can be turned back (:mod:`d3r.scenes.rotation`)."""
    fitted = []
    for view, view_fit in zip(views, fit.views, strict=True):
        turned = turn_view(view) if view_fit.turns % 2 else view
        out = resize_crop_view(turned, *fit.size)
        meta = {**view.meta, "turns": view_fit.turns, "crop_share": view_fit.crop_share, "scale": view_fit.scale}
        fitted.append(out.with_(meta=meta))
    return fitted


def preprocess_views(views: Sequence[View], long_side: int, patch_size: int) -> list[View]:
    """Bring all views of one sample to one size (:func:`fit_sample` of their sizes, :func:`fit_views`)."""
    loaded = [v.load() for v in views]
    if not loaded:
        return []
    return fit_views(loaded, fit_sample([v.size for v in loaded], long_side, patch_size))
