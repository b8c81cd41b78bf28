"""Scene and view records: the one shape every reader produces and every job consumes.

Conventions (see ARCHITECTURE.md): OpenCV cameras (x right, y down, z forward); ``pose`` is
camera-to-world 4x4 float64; ``K`` is 3x3 float64 in pixels at the stored resolution with pixel
centres at integer coordinates; ``depth`` is float32 metres along z with 0 meaning "no value".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class View:
    """One image of a scene, with whatever geometry the source knows.

    Attributes:
        name: the view's name within its scene (e.g. a file stem).
        image: ``[H, W, 3]`` uint8 RGB, or None until :meth:`load` is called.
        K: ``[3, 3]`` float64 intrinsics in pixels, or None when unknown.
        pose: ``[4, 4]`` float64 camera-to-world (OpenCV), or None when unknown.
        depth: ``[H, W]`` float32 metres (0 = none), or None when the source has none.
        path: where the pixels come from (for messages and lazy loading).
        loader: a picklable callable returning this view with pixels (and depth) filled in.
        meta: free-form facts (e.g. ``{"distortion": "OPENCV k1=..."}``).
    """

    name: str
    image: np.ndarray | None = None
    K: np.ndarray | None = None
    pose: np.ndarray | None = None
    depth: np.ndarray | None = None
    path: str | None = None
    loader: Callable[[View], View] | None = field(default=None, compare=False, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def loaded(self) -> bool:
        return self.image is not None

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the loaded image."""
        if self.image is None:
            raise ValueError(f"view {self.name!r} ({self.path}) has no pixels loaded")
        return int(self.image.shape[1]), int(self.image.shape[0])

    def load(self) -> View:
        """Return this view with its pixels loaded (no-op when already loaded)."""
        if self.image is not None:
            return self
        if self.loader is None:
            raise ValueError(f"view {self.name!r} has no image and no loader")
        return self.loader(self)

    def with_(self, **changes: Any) -> View:
        return replace(self, **changes)


@dataclass(frozen=True)
class Scene:
    """An ordered list of views of one place.

    Attributes:
        id: unique within its source (e.g. ``"room_0003"`` or a sequence name).
        source: the reader that produced it (``synthetic``, ``folders``, ``colmap`` ...).
        views: ordered views (temporal order where the source has one).
        meta: free-form facts about the scene (dataset split, category, notes).
        rejects: per-item problems met while listing (``[(item, reason), ...]``); listing goes on.
        origin: what makes the content what it is beyond ``id`` and its views (a dataset's name, or a
            generator's parameters); part of every sample id (see ``d3r.scenes.sources.source_origin``).
    """

    id: str
    source: str
    views: list[View]
    meta: dict[str, Any] = field(default_factory=dict)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    origin: str = ""

    def __len__(self) -> int:
        return len(self.views)

    @property
    def has_poses(self) -> bool:
        return bool(self.views) and all(v.pose is not None for v in self.views)

    @property
    def has_depth(self) -> bool:
        return bool(self.views) and all(v.depth is not None or v.meta.get("has_depth") for v in self.views)
