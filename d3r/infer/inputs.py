"""What ``d3r reconstruct`` reads: a folder of images, a video, or a COLMAP (``d3r synth``) scene folder, brought
to one model input size.

Readers are the scene readers of :mod:`d3r.scenes` (:func:`~d3r.scenes.folders.image_folder_scene`,
:func:`~d3r.scenes.video.video_scene` with ``scenes.video_stride`` / ``scenes.video_fps``,
:func:`~d3r.scenes.colmap.read_colmap_scene`, whose ground truth the ``oracle`` teacher needs). Views are
sized from their headers, checked against the ``scenes.max_*`` limits, fitted to one size and orientation
(:func:`~d3r.scenes.preprocess.fit_sample`: a view of the other orientation is turned a quarter turn), then
decoded and fitted one at a time (only the fitted pixels stay in memory).

A view that cannot be used (unreadable, over a limit, cut by more than ``scenes.max_crop_fraction`` or enlarged
by more than ``scenes.max_upscale`` to fit the others) is skipped with a logged reason; the input as a whole is
bad (:class:`~d3r.config.ConfigError`, exit 2) when it is neither a folder nor a video, or fewer than two views
remain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from d3r.config import ConfigError, ScenesConfig
from d3r.scenes.colmap import model_dir, read_colmap_scene
from d3r.scenes.errors import InputFileError, display_path
from d3r.scenes.folders import image_folder_scene
from d3r.scenes.images import IMAGE_SUFFIXES
from d3r.scenes.limits import check_upscale, image_size_within_limits
from d3r.scenes.preprocess import SampleFit, fit_sample, fit_views
from d3r.scenes.records import Scene, View
from d3r.scenes.video import VIDEO_SUFFIXES, is_video_file, video_scene

logger = logging.getLogger(__name__)

MIN_VIEWS = 2
PROGRESS_EVERY = 50  # views loaded between progress lines


@dataclass(frozen=True)
class Skipped:
    """An input item left out of the reconstruction: its file (or view name) and why."""

    item: str
    reason: str


def read_input(path: Path, scenes: ScenesConfig) -> Scene:
    """The lazy scene at ``path``: a video file, a COLMAP scene folder (a sparse model in ``sparse/0``, ``sparse``
    or the folder itself), or a folder of images.

    Raises:
        ConfigError: naming INPUT when it does not exist, is neither a folder nor a video, or its COLMAP model
            cannot be read.
    """
    where = f"INPUT {display_path(path)}"
    if path.is_file():
        if not is_video_file(path):
            raise ConfigError(f"{where}: not a folder of images or a video (video suffixes: {sorted(VIDEO_SUFFIXES)})")
        return video_scene(path, scenes.video_stride, scenes.video_fps)
    if not path.is_dir():
        raise ConfigError(f"{where}: no such file or folder")
    if model_dir(path) is not None:
        try:
            return read_colmap_scene(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: COLMAP model cannot be read: {exc}") from exc
    return image_folder_scene(path, path.name)


def _skip(skipped: list[Skipped], view: View, exc: Exception) -> None:
    reason = exc.reason if isinstance(exc, InputFileError) else str(exc)
    item = display_path(view.path) if view.path else view.name
    if view.meta.get("frame_index") is not None:
        item = f"{item} frame {view.meta['frame_index']}"
    logger.warning("skipping %s: %s", item, reason)
    skipped.append(Skipped(item, reason))


def _fit(views: list[View], sizes: list[tuple[int, int]], long_side: int, patch_size: int, scenes: ScenesConfig,
         skipped: list[Skipped]) -> tuple[list[View], SampleFit]:
    """The views that fit one size within ``scenes.max_upscale`` and ``scenes.max_crop_fraction``, and that fit;
    a view over a limit is skipped and the rest are fitted again."""
    while True:
        if len(views) < MIN_VIEWS:
            return views, SampleFit((0, 0), ())
        try:
            fit = fit_sample(sizes, long_side, patch_size)
        except ValueError as exc:
            raise ConfigError(f"the views do not fit one model input (long side {long_side}, patch {patch_size}): "
                              f"{exc}") from exc
        over = []
        for index, (view, size) in enumerate(zip(views, sizes, strict=True)):
            where = view.path or view.name
            try:
                check_upscale(where, fit.turned_size(index, size), fit.size, scenes)
                share = fit.views[index].crop_share
                if share > scenes.max_crop_fraction + 1e-9:
                    raise InputFileError(where, f"{size[0]}x{size[1]} would lose {share:.0%} of its pixels to the "
                                                f"crop to {fit.size[0]}x{fit.size[1]}, more than "
                                                f"scenes.max_crop_fraction={scenes.max_crop_fraction:g}")
            except InputFileError as exc:
                _skip(skipped, view, exc)
                over.append(index)
        if not over:
            return views, fit
        views = [v for i, v in enumerate(views) if i not in over]
        sizes = [s for i, s in enumerate(sizes) if i not in over]


def _too_few(scene: Scene, count: int, skipped: list[Skipped]) -> ConfigError:
    shown = "".join(f"\n  {s.item}: {s.reason}" for s in skipped[:8])
    more = f"\n  ... and {len(skipped) - 8} more" if len(skipped) > 8 else ""
    expected = f"images ({', '.join(sorted(IMAGE_SUFFIXES))}) or a video"
    return ConfigError(f"INPUT {scene.meta.get('folder') or scene.meta.get('video') or scene.id}: {count} usable "
                       f"view(s), a reconstruction needs at least {MIN_VIEWS} ({expected}){shown}{more}")


def prepare_views(scene: Scene, long_side: int, patch_size: int,
                  scenes: ScenesConfig) -> tuple[list[View], list[Skipped]]:
    """``scene``'s usable views decoded and fitted to one model input size.

    Returns:
        ``(views, skipped)``: views in input order with ``image`` ``[H, W, 3]`` uint8 at the model's size and
        orientation (depth, K and pose fitted with them when the scene has them; ``meta["turns"]`` says how each
        was turned), and every item left out with its reason (the scene's own rejects first).

    Raises:
        ConfigError: when fewer than two views remain (naming what was skipped and why).
    """
    skipped = [Skipped(item, reason) for item, reason in scene.rejects]
    views, sizes = [], []
    for view in scene.views:
        try:
            view, size = image_size_within_limits(view, scenes)
        except (OSError, ValueError) as exc:
            _skip(skipped, view, exc)
            continue
        views.append(view)
        sizes.append(size)
    views, fit = _fit(views, sizes, long_side, patch_size, scenes, skipped)
    if len(views) < MIN_VIEWS:
        raise _too_few(scene, len(views), skipped)
    fitted = []
    for number, (view, view_fit) in enumerate(zip(views, fit.views, strict=True), start=1):
        try:
            loaded = view.load()
            if loaded.depth is not None and loaded.depth.shape != loaded.image.shape[:2]:
                raise ValueError(f"depth map is {loaded.depth.shape[1]}x{loaded.depth.shape[0]}, image is "
                                 f"{loaded.image.shape[1]}x{loaded.image.shape[0]}")
            fitted.extend(fit_views([loaded], SampleFit(fit.size, (view_fit,))))
        except (OSError, ValueError) as exc:
            _skip(skipped, view, exc)
        if number % PROGRESS_EVERY == 0:
            logger.info("read %d of %d views", number, len(views))
    if len(fitted) < MIN_VIEWS:
        raise _too_few(scene, len(fitted), skipped)
    logger.info("%d views at %dx%d (%d turned a quarter turn), %d skipped", len(fitted), *fit.size,
                sum(v.meta["turns"] % 2 for v in fitted), len(skipped))
    return fitted, skipped
