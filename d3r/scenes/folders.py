"""Source ``folders``: a folder of scene folders, or one flat folder of images that is one scene.

Listing reads directory entries only; pixels are decoded by each view's loader. Frames are in
natural order (``frame_2`` before ``frame_10``). Files that are not images become per-file
rejects and the listing goes on; hidden files (``.DS_Store`` ...) are skipped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from d3r.scenes.images import IMAGE_SUFFIXES, is_image_file, natural_key, read_image
from d3r.scenes.records import Scene, View

logger = logging.getLogger(__name__)


def load_image_view(view: View) -> View:
    """Loader for views backed by one image file: fills ``image`` ``[H, W, 3]`` uint8 from ``view.path``."""
    return view.with_(image=read_image(view.path))


def sorted_entries(folder: Path) -> list[Path]:
    """Non-hidden entries of ``folder`` in natural order."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def image_views(paths: list[Path]) -> list[View]:
    """Lazy views for image files (name = file stem)."""
    return [View(name=path.stem, path=str(path), loader=load_image_view) for path in paths]


def image_folder_scene(folder: Path, scene_id: str, source: str = "folders") -> Scene:
    """One scene from the image files directly in ``folder``; anything else is a reject."""
    images, rejects = [], []
    for path in sorted_entries(folder):
        if path.is_dir():
            rejects.append((str(path), "sub-folder inside a scene folder is not read"))
        elif is_image_file(path):
            images.append(path)
        else:
            suffix = path.suffix or "(none)"
            rejects.append((str(path), f"not an image: suffix {suffix} (expected one of {sorted(IMAGE_SUFFIXES)})"))
    for item, reason in rejects:
        logger.info("scene %s: skipping %s: %s", scene_id, item, reason)
    return Scene(id=scene_id, source=source, views=image_views(images), meta={"folder": str(folder)},
                 rejects=rejects)


def list_folder_scenes(root: Path) -> Iterator[Scene]:
    """Scenes under ``root``: one per sub-folder, or ``root`` itself when it holds images directly."""
    entries = sorted_entries(root)
    if any(p.is_file() and is_image_file(p) for p in entries):
        yield image_folder_scene(root, root.name)
        return
    for entry in entries:
        if entry.is_dir():
            yield image_folder_scene(entry, entry.name)
