"""View-set sampling: turn a scene into samples of N views, and load a sample's views.

Strategies (N = ``views_per_sample``, s = ``stride``, V = number of views, cap = ``max_samples_per_scene``):

- ``consecutive``: temporal windows ``[a, a+s, ..., a+(N-1)s]``. Windows do not overlap: window k
  starts at ``k·((N-1)s + 1)``, one past the last view of window k-1. When there are more windows
  than the cap, the cap's worth is taken evenly spread over the scene.
- ``strided``: each sample spans the whole scene, one view per V/N block; sample j is offset by
  ``j·(V/N)/k`` within the blocks, so samples are disjoint (k = min(cap, ⌊V/N⌋)).
- ``random``: N distinct views per sample, sorted, distinct samples; the generator is seeded by
  ``config.seed`` and the scene id, so a rerun picks the same views.
- ``covisible`` (needs poses and K): reference views spread over the scene; each sample is its
  reference (first, so it defines the global frame) plus N-1 views whose overlap with it is at
  least ``min_overlap``, picked evenly over the qualifying views in scene order (wide baselines,
  not near-duplicates). Overlap is the
  fraction of reference points that project inside the other view with positive depth: the
  reference's depth map when it is loaded (and the other view's depth, when loaded, rejects
  occluded points), otherwise points in the reference frustum at depths 0.5-2x the median
  distance from the reference camera to the other cameras.

A view's image size for projection is ``view.meta["size"]`` (W, H) when the reader knows it,
else ``(2·cx + 1, 2·cy + 1)`` from K.

Views of unlike shapes are not mixed: a scene's views are first grouped by elongation (long side over
short side, from their headers; a portrait and a landscape view of one shape are alike, since a view
of the other orientation is turned, see :func:`d3r.scenes.preprocess.fit_sample`) so that no view of a
sample loses more than ``scenes.max_crop_fraction`` of its pixels to the crop to the sample's aspect
ratio: from the least elongated view up, each group takes every view within a factor
``1 / (1 − max_crop_fraction)²`` of its least elongated one (the fewest groups). Each group is sampled
on its own, in scene order; views whose size no header tells (or that are over the ``scenes.max_*``
limits, which their load then names) join the group of the nearest view in scene order. A group (the
whole scene, when its views are alike) with fewer than ``views_per_sample`` views but at least
``scenes.min_views`` becomes one sample of all its views.

A scene (or group) too short for one sample, or unfit for the strategy, yields no samples and gets a
reject entry ``(scene id or view file, reason)`` appended to ``scene.rejects`` (once), so the rejects
table sees it; a scene with no views whose listing rejects already say why gets no second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from d3r.config import ScenesConfig
from d3r.errors import ConfigError
from d3r.geometry import pixels_to_points, project, transform_points
from d3r.scenes.errors import InputFileError, display_path
from d3r.scenes.limits import ImageLimitError, check_upscale, header_size_within_limits, image_size_within_limits
from d3r.scenes.preprocess import SampleFit, elongation, fit_sample, fit_views
from d3r.scenes.records import Scene, View

logger = logging.getLogger(__name__)

Split = Literal["train", "val"]
_FRUSTUM_GRID = 12
_DEPTH_GRID = 32
_OCCLUSION_TOLERANCE = 0.05


class SampleError(ValueError):
    """A sample whose views cannot be loaded or preprocessed: names the sample and the file."""

    def __init__(self, sample_id: str, reason: str):
        self.sample_id = sample_id
        self.reason = reason
        super().__init__(f"sample {sample_id}: {reason}")


@dataclass(frozen=True)
class Sample:
    """N views of one scene that go through the teacher together.

    Attributes:
        id: content hash of (source, scene, view names and files, preprocessing), see :func:`sample_id`.
        source: the scene's source name.
        scene_id: the scene's id.
        view_indices: positions in ``scene.views``.
        view_names: the views' names (what the id is made of).
        split: ``"train"`` or ``"val"``, by scene (see :func:`split_for_scene`).
        fit: how its views will be turned, cropped and resized, from their headers (None when a view's
            size is known only once it is loaded); the load fits them from their sizes again.
    """

    id: str
    source: str
    scene_id: str
    view_indices: tuple[int, ...]
    view_names: tuple[str, ...]
    split: Split
    fit: SampleFit | None = None


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for_scene(scene_id: str, val_fraction: float) -> Split:
    """``"val"`` for a deterministic ``val_fraction`` of scene ids (by hash), else ``"train"``."""
    return "val" if _unit_hash(f"split:{scene_id}") < val_fraction else "train"


def sample_id(source: str, origin: str, scene_id: str, view_names: Sequence[str], long_side: int,
              patch_size: int, signatures: Sequence[str | None] = ()) -> str:
    """A 20-hex-digit content hash: same source, origin (``Scene.origin``: a dataset name, not a path), scene,
    view names, view files (``signatures``, see :func:`view_signature`) and preprocessing → same id."""
    payload = json.dumps([source, origin, scene_id, list(view_names), list(signatures), int(long_side),
                          int(patch_size)])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def view_signature(view: View, content_hash: bool = False) -> str | None:
    """What a sample id knows of a view's file: ``size:<bytes>:mtime_ns:<ns>`` (a stat, no read), or with
    ``content_hash`` (``scenes.content_hash_ids``) ``sha256:<hex>`` of its bytes. None for a view with no file
    (generated: its source's origin decides it) or one that cannot be read (its load names the problem).

    A file replaced under the same name changes its signature, so its samples get new ids and are computed
    again. Size and mtime survive ``mv``, ``cp -a``, ``rsync -a`` and another mount; a copy that does not
    keep mtimes (``cp`` without ``-p``) changes them, so its samples are computed again (content hashes do
    not: they only see bytes)."""
    if view.path is None:
        return None
    try:
        if content_hash:
            with open(view.path, "rb") as stream:
                return "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest()
        stat = os.stat(view.path)
    except OSError:
        return None
    return f"size:{stat.st_size}:mtime_ns:{stat.st_mtime_ns}"


def _consecutive(num_views: int, n: int, stride: int, cap: int) -> list[list[int]]:
    span = (n - 1) * stride + 1
    starts = list(range(0, num_views - span + 1, span))
    return [[start + i * stride for i in range(n)] for start in _spread(starts, cap)]


def _strided(num_views: int, n: int, cap: int) -> list[list[int]]:
    step = num_views / n
    count = min(cap, int(step))
    return [[int(i * step + j * step / count) for i in range(n)] for j in range(count)]


def _random(num_views: int, n: int, cap: int, seed: int, scene_id: str) -> list[list[int]]:
    rng = np.random.default_rng([seed, int(_unit_hash(f"random:{scene_id}") * 2**32)])
    chosen: list[list[int]] = []
    for _ in range(cap * 20):
        if len(chosen) == cap:
            break
        pick = sorted(int(i) for i in rng.choice(num_views, size=n, replace=False))
        if pick not in chosen:
            chosen.append(pick)
    return chosen


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    picks = np.round(np.linspace(0, len(items) - 1, count)).astype(int)
    return [items[i] for i in picks]


def _image_size(view: View) -> tuple[float, float]:
    if "size" in view.meta:
        width, height = view.meta["size"]
        return float(width), float(height)
    if view.image is not None:
        return float(view.image.shape[1]), float(view.image.shape[0])
    return 2.0 * view.K[0, 2] + 1.0, 2.0 * view.K[1, 2] + 1.0


def _reference_points(reference: View, others: list[View]) -> np.ndarray:
    """``[P, 3]`` world points seen by ``reference``: from its depth map, or sampled in its frustum."""
    width, height = _image_size(reference)
    if reference.depth is not None:
        rows = np.linspace(0, reference.depth.shape[0] - 1, _DEPTH_GRID).round().astype(int)
        cols = np.linspace(0, reference.depth.shape[1] - 1, _DEPTH_GRID).round().astype(int)
        v, u = np.meshgrid(rows, cols, indexing="ij")
        z = reference.depth[v, u].astype(np.float64)
        valid = z > 0
        u, v, z = u[valid], v[valid], z[valid]
    else:
        centre = reference.pose[:3, 3]
        distances = [np.linalg.norm(o.pose[:3, 3] - centre) for o in others]
        scale = max(float(np.median(distances)) if distances else 1.0, 1e-6)
        u1 = np.linspace(0, width - 1, _FRUSTUM_GRID)
        v1 = np.linspace(0, height - 1, _FRUSTUM_GRID)
        z1 = np.geomspace(0.5 * scale, 2.0 * scale, 4)
        u, v, z = (a.ravel() for a in np.meshgrid(u1, v1, z1, indexing="ij"))
    return transform_points(reference.pose, pixels_to_points(reference.K, np.stack([u, v], axis=1), z))


def view_overlap(points: np.ndarray, view: View) -> float:
    """Fraction of world points ``[P, 3]`` that land inside ``view`` in front of it (and unoccluded
    when the view's depth is loaded)."""
    if len(points) == 0:
        return 0.0
    cam = transform_points(np.linalg.inv(view.pose), points)
    z = cam[:, 2]
    front = z > 1e-9
    u, v = project(view.K, cam).T
    width, height = _image_size(view)
    inside = front & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
    if view.depth is not None and inside.any():
        rows = np.clip(np.round(v[inside]).astype(int), 0, view.depth.shape[0] - 1)
        cols = np.clip(np.round(u[inside]).astype(int), 0, view.depth.shape[1] - 1)
        seen = view.depth[rows, cols]
        visible = (seen <= 0) | (z[inside] <= seen * (1 + _OCCLUSION_TOLERANCE))
        inside[np.flatnonzero(inside)[~visible]] = False
    return float(inside.mean())


def _covisible(scene: Scene, n: int, cap: int, min_overlap: float) -> list[list[int]]:
    views = scene.views
    chosen: list[list[int]] = []
    for ref in _spread(list(range(len(views))), cap * 4):
        others = [i for i in range(len(views)) if i != ref]
        points = _reference_points(views[ref], [views[i] for i in others])
        good = [i for i in others if view_overlap(points, views[i]) >= min_overlap]
        if len(good) < n - 1:
            continue
        pick = [ref, *_spread(good, n - 1)]
        if sorted(pick) not in [sorted(c) for c in chosen]:
            chosen.append(pick)
        if len(chosen) == cap:
            break
    return chosen


def listed_size(view: View, config: ScenesConfig) -> tuple[int, int] | None:
    """(W, H) of a view from its header when that is readable and within the ``scenes.max_*`` limits, else
    None (a generated view; or a file whose load will name what is wrong). Decodes no pixels."""
    try:
        return header_size_within_limits(view, config)
    except (OSError, ValueError):
        return None


def _crop_ratio(config: ScenesConfig) -> float:
    """Most elongation ratio between views of one group: their geometric-mean aspect then cuts at most
    ``max_crop_fraction`` of either extreme view (loss = 1 − sqrt(low / high))."""
    keep = 1.0 - config.max_crop_fraction
    return np.inf if keep <= 0 else 1.0 / keep**2


def shape_groups(sizes: Sequence[tuple[int, int] | None], config: ScenesConfig) -> list[list[int]]:
    """Positions of views grouped by elongation (see the module docstring), each group in scene order,
    groups ordered by their first view. ``sizes`` holds each view's (W, H), or None when unknown."""
    known = [i for i, size in enumerate(sizes) if size is not None]
    ratio = _crop_ratio(config)
    groups: list[list[int]] = []
    for i in sorted(known, key=lambda i: elongation(sizes[i])):
        if groups and elongation(sizes[i]) <= elongation(sizes[groups[-1][0]]) * ratio * (1 + 1e-9):
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) <= 1:
        return [list(range(len(sizes)))] if sizes else []
    group_of = {i: g for g, group in enumerate(groups) for i in group}
    for i in (i for i, size in enumerate(sizes) if size is None):
        nearest = min(known, key=lambda k: (abs(k - i), k))
        groups[group_of[nearest]].append(i)
    return sorted((sorted(group) for group in groups), key=lambda group: group[0])


def _reject(scene: Scene, reason: str, item: str | None = None) -> None:
    entry = (scene.id if item is None else item, reason)
    if entry not in scene.rejects:
        scene.rejects.append(entry)
    logger.info("not sampled: %s", reason)


def _size_text(size: tuple[int, int] | None) -> str:
    return "size unknown" if size is None else f"{size[0]}x{size[1]}"


def _reject_small_group(scene: Scene, group: list[int], sizes: Sequence[tuple[int, int] | None],
                        config: ScenesConfig) -> None:
    if len(group) == len(scene.views):
        _reject(scene, f"scene {scene.id} has {len(group)} views, needs at least scenes.min_views="
                       f"{config.min_views} (or scenes.views_per_sample={config.views_per_sample})")
        return
    for i in group:
        view = scene.views[i]
        _reject(scene, item=display_path(view.path) if view.path else f"{scene.id}/{view.name}", reason=(
            f"view {view.name!r} ({_size_text(sizes[i])}) of scene {scene.id} is unlike its other views in shape: "
            f"a sample with them would cut more than scenes.max_crop_fraction={config.max_crop_fraction:g} of "
            f"some view's pixels, and only {len(group)} view(s) share its shape, fewer than scenes.min_views="
            f"{config.min_views}; raise scenes.max_crop_fraction to sample it with the others"))


def _group_index_sets(scene: Scene, group: list[int], sizes: Sequence[tuple[int, int] | None],
                      config: ScenesConfig) -> list[list[int]]:
    """The index sets (positions in ``scene.views``) that ``config.sampling`` draws from one group."""
    n, cap, num_views = config.views_per_sample, config.max_samples_per_scene, len(group)
    if num_views < n:
        if num_views >= config.min_views:
            return [list(group)]
        _reject_small_group(scene, group, sizes, config)
        return []
    views = [scene.views[i] for i in group]
    if config.sampling == "consecutive":
        local = _consecutive(num_views, n, config.stride, cap)
    elif config.sampling == "strided":
        local = _strided(num_views, n, cap)
    elif config.sampling == "random":
        local = _random(num_views, n, cap, config.seed, scene.id)
    elif not all(v.pose is not None and v.K is not None for v in views):
        _reject(scene, f"scene {scene.id} has views without pose or K; sampling 'covisible' needs both")
        return []
    else:
        local = _covisible(Scene(id=scene.id, source=scene.source, views=views), n, cap, config.min_overlap)
    if not local:
        span = f" (spans {(n - 1) * config.stride + 1} views)" if config.sampling == "consecutive" else ""
        _reject(scene, f"scene {scene.id}: no {config.sampling} set of {n} views{span} (stride {config.stride}, "
                       f"min_overlap {config.min_overlap}) among {num_views} views")
    return [[group[i] for i in indices] for indices in local]


def sample_scene(scene: Scene, config: ScenesConfig) -> list[Sample]:
    """The scene's samples by ``config.sampling`` within each group of like-shaped views (see the module
    docstring), at most ``config.max_samples_per_scene``. An unfit scene or group gives no samples and a
    reject entry."""
    if not scene.views:
        if not scene.rejects:  # a scene with no views and rejects already says why
            _reject(scene, f"scene {scene.id} has no views")
        return []
    sizes = [listed_size(view, config) for view in scene.views]
    index_sets: list[list[int]] = []
    for group in shape_groups(sizes, config):
        index_sets += _group_index_sets(scene, group, sizes, config)
    split = split_for_scene(scene.id, config.val_fraction)
    signatures: dict[str | None, str | None] = {None: None}  # by file: a video's frames share one
    samples = []
    for indices in _spread(index_sets, config.max_samples_per_scene):
        names = tuple(scene.views[i].name for i in indices)
        for view in (scene.views[i] for i in indices):
            if view.path not in signatures:
                signatures[view.path] = view_signature(view, config.content_hash_ids)
        known = [sizes[i] for i in indices]
        fit = None
        if all(size is not None for size in known):
            try:
                fit = fit_sample(known, config.long_side, config.patch_size)
            except ValueError:
                fit = None  # the load names the view
        samples.append(Sample(
            id=sample_id(scene.source, scene.origin, scene.id, names, config.long_side, config.patch_size,
                         [signatures[scene.views[i].path] for i in indices]),
            source=scene.source, scene_id=scene.id, view_indices=tuple(indices), view_names=names, split=split,
            fit=fit,
        ))
    return samples


CROP_NOTICE = 0.001
"""A view that loses more than this share of its pixels to the crop to its sample's aspect is reported as cropped."""


@dataclass
class FitReport:
    """What fitting a scene's samples to one size per sample does to its views (from the samples' :class:`SampleFit`).

    Attributes:
        turned: names of views turned a quarter turn in some sample.
        cropped: view name → the largest share of its pixels cut to fit a sample's aspect (above :data:`CROP_NOTICE`).
        enlarged: view name → the largest factor it is enlarged by (above 1).
    """

    turned: set[str]
    cropped: dict[str, float]
    enlarged: dict[str, float]

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> FitReport:
        report = cls(set(), {}, {})
        for sample in samples:
            if sample.fit is None:
                continue
            for name, fit in zip(sample.view_names, sample.fit.views, strict=True):
                if fit.turns % 2:
                    report.turned.add(name)
                if fit.crop_share > CROP_NOTICE:
                    report.cropped[name] = max(report.cropped.get(name, 0.0), fit.crop_share)
                if fit.scale > 1.0 + 1e-9:
                    report.enlarged[name] = max(report.enlarged.get(name, 1.0), fit.scale)
        return report

    def cells(self) -> tuple[str, str, str]:
        """Counts of turned, cropped and enlarged views, with the largest crop and enlargement."""
        return (str(len(self.turned)),
                f"{len(self.cropped)} (≤{max(self.cropped.values()):.0%})" if self.cropped else "0",
                f"{len(self.enlarged)} (≤{max(self.enlarged.values()):.1f}x)" if self.enlarged else "0")

    def describe(self) -> str:
        """``2 views turned, 1 cropped by up to 13%, 3 enlarged up to 3.2x``, or "" when no view is changed."""
        parts = []
        if self.turned:
            parts.append(f"{len(self.turned)} views turned a quarter turn")
        if self.cropped:
            parts.append(f"{len(self.cropped)} cropped by up to {max(self.cropped.values()):.0%}")
        if self.enlarged:
            parts.append(f"{len(self.enlarged)} enlarged up to {max(self.enlarged.values()):.1f}x")
        return ", ".join(parts)


_INPUT_HINTS = {
    "folders": "a folder of images, or a folder of scene folders of images",
    "video": "a video file, or a folder of video files",
    "colmap": "COLMAP scene folders (images/ and sparse/)",
}


@dataclass
class SamplingTally:
    """What listing and sampling a source found, to say why a job found no sample (:meth:`check`)."""

    scenes: int = 0
    views: int = 0
    samples: int = 0
    rejects: list[tuple[str, str]] = field(default_factory=list)

    def add(self, scene: Scene, samples: Sequence[Sample]) -> None:
        """Count one listed scene, its views, its samples and its rejects (after :func:`sample_scene`)."""
        self.scenes += 1
        self.views += len(scene.views)
        self.samples += len(samples)
        self.rejects += scene.rejects

    def check(self, config: ScenesConfig) -> None:
        """Nothing to do is an error, not an empty success.

        Raises:
            ConfigError: when no sample was found, saying what the source held, why none of it made a
                sample (the first rejects, each naming the setting to change) and what it expects.
        """
        if self.samples:
            return
        where = f"scenes.source={config.source!r}" + (f" at scenes.root={config.root}" if config.root else "")
        if not self.views and not self.rejects:
            expected = _INPUT_HINTS.get(config.source, "its dataset's layout")
            raise ConfigError(f"no input: {where} holds no scene (expected {expected})")
        shown = [f"  {item}: {reason}" for item, reason in self.rejects[:8]]
        more = [f"  ... and {len(self.rejects) - 8} more"] if len(self.rejects) > 8 else []
        raise ConfigError("\n".join([
            f"no usable sample: {where} holds {self.scenes} scenes with {self.views} views, and none makes a sample "
            f"of scenes.views_per_sample={config.views_per_sample} views (or at least scenes.min_views="
            f"{config.min_views}); why:", *shown, *more]))


def _view_error(sample: Sample, view: View, exc: Exception) -> SampleError:
    """``exc`` met on one view, as a :class:`SampleError` naming the sample, the view and its file."""
    path = display_path(view.path) if view.path else None
    own = isinstance(exc, InputFileError) and exc.path in (path, view.name)
    label = f"view {view.name!r}" + (f" ({path})" if path else "")
    return SampleError(sample.id, f"{label}: {exc.reason if own else exc}")


def _load_view(view: View, sample: Sample) -> View:
    try:
        loaded = view.load()
    except (OSError, ValueError) as exc:
        raise _view_error(sample, view, exc) from exc
    if loaded.depth is not None and loaded.depth.shape != loaded.image.shape[:2]:
        h, w = loaded.image.shape[:2]
        dh, dw = loaded.depth.shape
        raise _view_error(sample, view, ValueError(f"depth map is {dw}x{dh}, image is {w}x{h}"))
    return loaded


def _fit_within_limits(views: list[View], sample: Sample, config: ScenesConfig) -> tuple[list[View], SampleFit]:
    """``views`` and their fit (:func:`~d3r.scenes.preprocess.fit_sample`), after checking every view's header
    size against the ``scenes.max_*`` limits, its enlargement and its crop; nothing is decoded or resampled
    yet, except generated views that no header describes (returned loaded)."""
    sized = []
    for view in views:
        try:
            sized.append(image_size_within_limits(view, config))
        except (OSError, ValueError) as exc:
            raise _view_error(sample, view, exc) from exc
    sizes = [size for _, size in sized]
    try:
        fit = fit_sample(sizes, config.long_side, config.patch_size)
    except ValueError as exc:
        raise SampleError(sample.id, str(exc)) from exc
    for index, (view, size) in enumerate(sized):
        try:
            check_upscale(view.path or view.name, fit.turned_size(index, size), fit.size, config)
        except ImageLimitError as exc:
            raise _view_error(sample, view, exc) from exc
        share = fit.views[index].crop_share
        if share > config.max_crop_fraction + 1e-9:
            raise _view_error(sample, view, ImageLimitError(
                view.path or view.name, f"{size[0]}x{size[1]} would lose {share:.0%} of its pixels to the crop to "
                f"the sample's {fit.size[0]}x{fit.size[1]}, more than scenes.max_crop_fraction="
                f"{config.max_crop_fraction:g}"))
    return [view for view, _ in sized], fit


def load_sample(scene: Scene, sample: Sample, config: ScenesConfig) -> list[View]:
    """The sample's views loaded and preprocessed to one size (``config.long_side``, ``config.patch_size``).

    Every view's size is checked from its header against ``scenes.max_pixels``,
    ``scenes.max_aspect_ratio``, ``scenes.max_upscale`` and ``scenes.max_crop_fraction`` before any view
    is decoded. Views are turned, cropped and resized as :func:`~d3r.scenes.preprocess.fit_sample` says.

    Returns:
        views with ``image`` ``[H, W, 3]`` uint8, ``depth`` ``[H, W]``, K and pose at the preprocessed size
        and orientation; ``meta`` records each view's fit (``turns``, ``crop_share``, ``scale``).

    Raises:
        SampleError: naming the sample and the view's file when a view is over a limit, cannot be
            read, its depth does not match its image, or it cannot be preprocessed.
    """
    views = []
    for index, name in zip(sample.view_indices, sample.view_names, strict=True):
        if index >= len(scene.views) or scene.views[index].name != name:
            raise SampleError(sample.id, f"scene {scene.id} has no view {name!r} at position {index}")
        views.append(scene.views[index])
    if not views:
        return []
    checked, fit = _fit_within_limits(views, sample, config)
    loaded = [_load_view(view, sample) for view in checked]
    try:
        return fit_views(loaded, fit)
    except ValueError as exc:
        raise SampleError(sample.id, f"scene {scene.id}: {exc}") from exc
