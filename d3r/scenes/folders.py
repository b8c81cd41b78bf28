"""Source ``folders``: a folder of scene folders, or one flat folder of images that is one scene.

Listing reads directory entries only; pixels are decoded by each view's loader. Frames are in
natural order (``frame_2`` before ``frame_10``). Files that are not images become per-file
rejects and the listing goes on; hidden files (``.DS_Store`` ...) are skipped silently.

:func:`sorted_entries` is every reader's one way to list a folder. An entry that cannot be used
becomes a reject ``(path, reason)`` and the listing goes on (see :func:`entry_problem`): a name
that is not valid UTF-8, a symlink loop, a broken link, something that is neither a regular file
nor a folder (a FIFO would block a reader), or a file or folder that cannot be read.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from d3r.scenes.errors import NOT_UTF8, display_path, is_utf8, os_error_reason
from d3r.scenes.images import IMAGE_SUFFIXES, is_image_file, natural_key, read_image
from d3r.scenes.records import Scene, View

logger = logging.getLogger(__name__)

Rejects = list[tuple[str, str]]


def load_image_view(view: View) -> View:
    """Loader for views backed by one image file: fills ``image`` ``[H, W, 3]`` uint8 from ``view.path``."""
    return view.with_(image=read_image(view.path))


def _links_to_an_ancestor(path: Path) -> bool:
    """True for a folder symlink that resolves to a folder containing it (a walk would go round forever)."""
    target, parent = path.resolve(), path.parent.resolve()
    return target == parent or target in parent.parents


def entry_problem(path: Path) -> str | None:
    """Why the directory entry ``path`` cannot be used, or None when it can.

    Reads the entry's metadata, never its contents. Permissions are judged with ``os.access`` (the
    real user's rights: a root process reads everything).
    """
    if not is_utf8(path.name):
        return NOT_UTF8
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"broken symlink (its target {display_path(os.readlink(path))} does not exist)"
        return os_error_reason(exc)
    if stat.S_ISDIR(mode):
        if path.is_symlink() and _links_to_an_ancestor(path):
            return "symlink loop (links to a folder that contains it)"
        if not os.access(path, os.R_OK | os.X_OK):
            return "cannot read folder: permission denied"
        return None
    if not stat.S_ISREG(mode):
        return "not a regular file or folder"
    if not os.access(path, os.R_OK):
        return "cannot read file: permission denied"
    return None


def sorted_entries(folder: Path, rejects: Rejects) -> list[Path]:
    """Usable non-hidden entries of ``folder`` in natural order.

    Every other entry (see :func:`entry_problem`), or ``folder`` itself when it cannot be listed, is
    appended to ``rejects`` as ``(path, reason)`` and logged.
    """
    try:
        entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    except OSError as exc:
        entries, problems = [], [(folder, os_error_reason(exc, "folder"))]
    else:
        problems = [(p, problem) for p in entries if (problem := entry_problem(p)) is not None]
    for path, problem in problems:
        logger.info("skipping %s: %s", display_path(path), problem)
        rejects.append((display_path(path), problem))
    bad = {path for path, _ in problems}
    return [p for p in entries if p not in bad]


def rejected_scenes(rejects: Rejects, source: str) -> Iterator[Scene]:
    """One scene with no views per reject met while looking for scenes (it carries the reject to the rejects table)."""
    for item, reason in rejects:
        yield Scene(id=Path(item).name, source=source, views=[], rejects=[(item, reason)])


def image_views(paths: list[Path]) -> list[View]:
    """Lazy views for image files (name = file stem)."""
    return [View(name=path.stem, path=str(path), loader=load_image_view) for path in paths]


def _image_scene(folder: Path, entries: list[Path], rejects: Rejects, scene_id: str, source: str) -> Scene:
    """One scene from the image files among ``entries`` of ``folder``; anything else is added to ``rejects``."""
    images = []
    for path in entries:
        if path.is_dir():
            reason = "sub-folder inside a scene folder is not read"
        elif is_image_file(path):
            images.append(path)
            continue
        else:
            reason = f"not an image: suffix {path.suffix or '(none)'} (expected one of {sorted(IMAGE_SUFFIXES)})"
        logger.info("scene %s: skipping %s: %s", scene_id, path, reason)
        rejects.append((str(path), reason))
    return Scene(id=scene_id, source=source, views=image_views(images), meta={"folder": str(folder)},
                 rejects=rejects)


def image_folder_scene(folder: Path, scene_id: str, source: str = "folders") -> Scene:
    """One scene from the image files directly in ``folder``; anything else is a reject."""
    rejects: Rejects = []
    return _image_scene(folder, sorted_entries(folder, rejects), rejects, scene_id, source)


def list_folder_scenes(root: Path) -> Iterator[Scene]:
    """Scenes under ``root``: one per sub-folder, or ``root`` itself when it holds images directly.

    An entry of ``root`` that cannot be used comes as a scene with no views and its reject.
    """
    rejects: Rejects = []
    entries = sorted_entries(root, rejects)
    if any(p.is_file() and is_image_file(p) for p in entries):
        yield _image_scene(root, entries, rejects, root.name, "folders")
        return
    yield from rejected_scenes(rejects, "folders")
    for entry in entries:
        if entry.is_dir():
            yield image_folder_scene(entry, entry.name)
