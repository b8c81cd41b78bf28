"""One entry point for every scene source: ``list_scenes(config)`` dispatches on ``scenes.source``.

The configuration is checked before any listing starts (unknown source, missing or wrong root, or a
root holding the other kind of input: videos for ``folders``, images for ``video``, fail at once with
:class:`~d3r.errors.ConfigError` naming it); after that, per-item problems are scene rejects and the
listing goes on.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from d3r.config import ScenesConfig
from d3r.errors import ConfigError
from d3r.scenes.datasets import DATASET_READERS
from d3r.scenes.errors import NOT_UTF8, display_path, is_utf8, os_error_reason
from d3r.scenes.folders import Rejects, list_folder_scenes, rejected_scenes
from d3r.scenes.images import is_image_file
from d3r.scenes.records import Scene
from d3r.scenes.video import VIDEO_SUFFIXES, is_video_file, list_video_scenes

logger = logging.getLogger(__name__)


def _synthetic(config: ScenesConfig) -> Iterator[Scene]:
    from d3r.scenes.synthetic import synthetic_scenes

    return synthetic_scenes(config)


def _folders(config: ScenesConfig) -> Iterator[Scene]:
    return list_folder_scenes(config.root)


def _video(config: ScenesConfig) -> Iterator[Scene]:
    return list_video_scenes(config.root, config.video_stride, config.video_fps)


def _colmap(config: ScenesConfig) -> Iterator[Scene]:
    from d3r.scenes.colmap import find_colmap_scenes, read_colmap_scene

    root = config.root
    rejects: Rejects = []
    for scene_dir in find_colmap_scenes(root, rejects):
        scene_id = scene_dir.relative_to(root).as_posix() if scene_dir != root else root.name
        try:
            yield read_colmap_scene(scene_dir, scene_id)
        except (OSError, ValueError) as exc:
            logger.info("skipping COLMAP scene %s: %s", scene_dir, exc)
            yield Scene(id=scene_id, source="colmap", views=[], rejects=[(str(scene_dir), str(exc))])
    yield from rejected_scenes(rejects, "colmap")


def _dataset(name: str) -> Callable[[ScenesConfig], Iterator[Scene]]:
    def read(config: ScenesConfig) -> Iterator[Scene]:
        return DATASET_READERS[name](config.root)

    return read


SOURCES: dict[str, Callable[[ScenesConfig], Iterator[Scene]]] = {
    "synthetic": _synthetic,
    "folders": _folders,
    "video": _video,
    "colmap": _colmap,
    **{name: _dataset(name) for name in DATASET_READERS},
}
_FILE_ROOT_SOURCES = frozenset({"video"})


def check_source(config: ScenesConfig) -> None:
    """Fail at once on an unknown ``scenes.source`` or a missing or wrong ``scenes.root``.

    Raises:
        ConfigError: naming the field, the value and what was expected.
    """
    if config.source not in SOURCES:
        raise ConfigError(f"scenes.source: unknown source {config.source!r}; expected one of {sorted(SOURCES)}")
    if config.source == "synthetic":
        return
    root = config.root
    if root is None:
        raise ConfigError(f"scenes.root is required for scenes.source={config.source!r}")
    if not is_utf8(root):
        raise ConfigError(f"scenes.root: {display_path(root)}: {NOT_UTF8} (scenes.source={config.source!r})")
    try:
        Path(root).stat()
    except OSError as exc:
        reason = "does not exist" if exc.errno == errno.ENOENT else f"cannot be used: {os_error_reason(exc, 'folder')}"
        raise ConfigError(f"scenes.root: {root} {reason} (scenes.source={config.source!r})") from None
    if not Path(root).is_dir() and config.source not in _FILE_ROOT_SOURCES:
        raise ConfigError(f"scenes.root: {root} is not a folder (scenes.source={config.source!r} needs one)")
    check_input_kind(config)


def _files(folder: Path, depth: int) -> Iterator[Path]:
    """Non-hidden files in ``folder`` and, ``depth`` levels down, its sub-folders (unusable entries skipped:
    the listing reports them)."""
    try:
        entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_file():
                yield entry
            elif depth > 0 and entry.is_dir():
                yield from _files(entry, depth - 1)
        except OSError:
            continue


def check_input_kind(config: ScenesConfig) -> None:
    """A ``video`` root with images but no videos, or a ``folders`` root with videos but no images (in it or
    its sub-folders), is the wrong source, not "0 scenes".

    Raises:
        ConfigError: naming ``scenes.source``, the root, what it holds and the source that reads it.
    """
    root = Path(config.root)
    if config.source not in ("video", "folders") or not root.is_dir():
        return
    files = list(_files(root, depth=1))  # what both sources read: the root and its sub-folders
    videos = sum(is_video_file(path) for path in files)
    images = sum(is_image_file(path) for path in files)
    if config.source == "video" and not any(is_video_file(path) and path.parent == root for path in files):
        if images:
            raise ConfigError(
                f"scenes.source='video': scenes.root {root} holds {images} images and no video file "
                f"({', '.join(sorted(VIDEO_SUFFIXES))}); for images set scenes.source=folders")
        if videos:
            raise ConfigError(f"scenes.source='video': scenes.root {root} holds no video file itself; videos in "
                              "its sub-folders are not read: point scenes.root at their folder")
    if config.source == "folders" and not images and videos:
        raise ConfigError(
            f"scenes.source='folders': scenes.root {root} holds {videos} video files and no image; for videos "
            "set scenes.source=video (scenes.video_stride or scenes.video_fps choose the frames)")


def dataset_name(config: ScenesConfig) -> str:
    """``scenes.dataset_name``, else the name of the folder ``scenes.root`` resolves to (the same from any
    working directory)."""
    return config.dataset_name if config.dataset_name is not None else Path(config.root).resolve().name


def source_origin(config: ScenesConfig) -> str:
    """What, besides scene ids and views, decides a source's content (see ``Scene.origin``): a synthetic
    source's generator settings; for files, the dataset's name (:func:`dataset_name`) and a video's frame
    choice, never the root's absolute path, so that the same data under another working directory or
    mount keeps its sample ids (the views' files are signed in each id, see
    :func:`~d3r.scenes.sampling.view_signature`)."""
    if config.source == "synthetic":
        values = {name: getattr(config, name) for name in ("seed", "render_size", "camera_path", "views_per_scene")}
    else:
        values = {"dataset": dataset_name(config)}
        if config.source == "video":
            values |= {"video_stride": config.video_stride, "video_fps": config.video_fps}
    return json.dumps(values, sort_keys=True, default=list)


def names_as_text(scene: Scene) -> Scene:
    """``scene`` holding only names that are valid UTF-8 (ids, view names and paths go into Arrow, JSON
    and hashes as text): a view whose name or file is not becomes a reject, and a scene whose id is not
    keeps no views. Readers already reject such file names while listing; this holds for any source."""
    rejects = [(display_path(item), display_path(reason)) for item, reason in scene.rejects]
    if not is_utf8(scene.id):
        folder = scene.meta.get("folder", scene.id)
        return Scene(id=display_path(scene.id), source=scene.source, views=[],
                     rejects=[*rejects, (display_path(folder), NOT_UTF8)])
    views = []
    for view in scene.views:
        if is_utf8(view.name) and is_utf8(view.path or ""):
            views.append(view)
        else:
            rejects.append((display_path(view.path or view.name), NOT_UTF8))
    if len(views) == len(scene.views) and rejects == scene.rejects:
        return scene
    return dataclasses.replace(scene, views=views, rejects=rejects)


def list_scenes(config: ScenesConfig) -> Iterator[Scene]:
    """Lazy scenes of ``config.source`` under ``config.root`` (views carry loaders, not pixels).

    Every scene holds only valid UTF-8 names (see :func:`names_as_text`).

    Raises:
        ConfigError: at the call, before any listing, for an unknown source or a bad root.
    """
    check_source(config)
    if config.root is not None:
        config = config.model_copy(update={"root": Path(config.root)})
    origin = source_origin(config)
    return (dataclasses.replace(names_as_text(scene), origin=origin) for scene in SOURCES[config.source](config))
