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

A scene too short for one sample, or unfit for the strategy, yields no samples and gets a reject
entry ``(scene id, reason)`` appended to ``scene.rejects`` (once), so the rejects table sees it;
a scene with no views whose listing rejects already say why gets no second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from d3r.config import ScenesConfig
from d3r.geometry import pixels_to_points, project, transform_points
from d3r.scenes.errors import InputFileError, display_path
from d3r.scenes.limits import ImageLimitError, check_upscale, image_size_within_limits
from d3r.scenes.preprocess import preprocess_views, target_size
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
        id: content hash of (source, scene, view names, preprocessing), see :func:`sample_id`.
        source: the scene's source name.
        scene_id: the scene's id.
        view_indices: positions in ``scene.views``.
        view_names: the views' names (what the id is made of).
        split: ``"train"`` or ``"val"``, by scene (see :func:`split_for_scene`).
    """

    id: str
    source: str
    scene_id: str
    view_indices: tuple[int, ...]
    view_names: tuple[str, ...]
    split: Split


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for_scene(scene_id: str, val_fraction: float) -> Split:
    """``"val"`` for a deterministic ``val_fraction`` of scene ids (by hash), else ``"train"``."""
    return "val" if _unit_hash(f"split:{scene_id}") < val_fraction else "train"


def sample_id(source: str, origin: str, scene_id: str, view_names: tuple[str, ...] | list[str], long_side: int,
              patch_size: int) -> str:
    """A 20-hex-digit content hash: same source, origin, scene, views and preprocessing → same id."""
    payload = json.dumps([source, origin, scene_id, list(view_names), int(long_side), int(patch_size)])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


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


def _unfit_reason(scene: Scene, config: ScenesConfig) -> str | None:
    n = config.views_per_sample
    if len(scene.views) < n:
        return f"scene {scene.id} has {len(scene.views)} views, needs {n}"
    if config.sampling == "covisible" and not all(v.pose is not None and v.K is not None for v in scene.views):
        return f"scene {scene.id} has views without pose or K; sampling 'covisible' needs both"
    return None


def _reject(scene: Scene, reason: str) -> None:
    entry = (scene.id, reason)
    if entry not in scene.rejects:
        scene.rejects.append(entry)
    logger.info("no samples: %s", reason)


def sample_scene(scene: Scene, config: ScenesConfig) -> list[Sample]:
    """The scene's samples by ``config.sampling`` (see the module docstring), at most
    ``config.max_samples_per_scene``. An unfit scene gives ``[]`` and a reject entry."""
    reason = _unfit_reason(scene, config)
    if reason is not None:
        if scene.views or not scene.rejects:  # a scene with no views and rejects already says why
            _reject(scene, reason)
        return []
    n, cap, num_views = config.views_per_sample, config.max_samples_per_scene, len(scene.views)
    if config.sampling == "consecutive":
        index_sets = _consecutive(num_views, n, config.stride, cap)
    elif config.sampling == "strided":
        index_sets = _strided(num_views, n, cap)
    elif config.sampling == "random":
        index_sets = _random(num_views, n, cap, config.seed, scene.id)
    else:
        index_sets = _covisible(scene, n, cap, config.min_overlap)
    if not index_sets:
        _reject(scene, f"scene {scene.id}: no {config.sampling} set of {n} views "
                       f"(stride {config.stride}, min_overlap {config.min_overlap}) among {num_views} views")
    split = split_for_scene(scene.id, config.val_fraction)
    samples = []
    for indices in index_sets:
        names = tuple(scene.views[i].name for i in indices)
        samples.append(Sample(
            id=sample_id(scene.source, scene.origin, scene.id, names, config.long_side, config.patch_size),
            source=scene.source, scene_id=scene.id, view_indices=tuple(indices), view_names=names, split=split,
        ))
    return samples


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


def _within_limits(views: list[View], sample: Sample, config: ScenesConfig) -> list[View]:
    """``views`` after checking every one's header size against the ``scenes.max_*`` limits and its
    enlargement to the sample's size (see :mod:`d3r.scenes.limits`); nothing is decoded or resampled
    yet, except generated views that no header describes (returned loaded)."""
    sized = []
    for view in views:
        try:
            sized.append(image_size_within_limits(view, config))
        except (OSError, ValueError) as exc:
            raise _view_error(sample, view, exc) from exc
    first, first_size = sized[0]
    try:
        target = target_size(*first_size, config.long_side, config.patch_size)
    except ValueError as exc:
        raise _view_error(sample, first, exc) from exc
    for view, size in sized:
        try:
            check_upscale(view.path or view.name, size, target, config)
        except ImageLimitError as exc:
            raise _view_error(sample, view, exc) from exc
    return [view for view, _ in sized]


def load_sample(scene: Scene, sample: Sample, config: ScenesConfig) -> list[View]:
    """The sample's views loaded and preprocessed to one size (``config.long_side``, ``config.patch_size``).

    Every view's size is checked from its header against ``scenes.max_pixels``,
    ``scenes.max_aspect_ratio`` and ``scenes.max_upscale`` before any view is decoded.

    Returns:
        views with ``image`` ``[H, W, 3]`` uint8, ``depth`` ``[H, W]`` and K at the preprocessed size.

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
    loaded = [_load_view(view, sample) for view in _within_limits(views, sample, config)]
    try:
        return preprocess_views(loaded, config.long_side, config.patch_size)
    except ValueError as exc:
        raise SampleError(sample.id, f"scene {scene.id}: {exc}") from exc
