"""Text reports behind ``d3r scenes list`` and ``d3r scenes show``.

``list``: one row per scene (views, samples, rejects, split, and how many views its samples turn a
quarter turn, crop to the sample's aspect and enlarge: :class:`~d3r.scenes.sampling.FitReport`) and a
total row for the source; ``show``: one row per view of one scene (size, whether K, pose and depth are
known, and whether its samples turn, crop or enlarge it), then the scene's rejects. Listing reads image
headers, no pixels; ``show`` loads a view only when neither its file header nor its reader gives its size.
"""

from __future__ import annotations

from collections.abc import Sequence

from d3r.config import D3RConfig
from d3r.errors import ConfigError
from d3r.scenes.images import ImageReadError
from d3r.scenes.limits import header_size
from d3r.scenes.records import Scene, View
from d3r.scenes.sampling import FitReport, sample_scene, split_for_scene
from d3r.scenes.sources import list_scenes


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table (columns padded to their widest cell)."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_scene_list(config: D3RConfig) -> str:
    """Scenes of the configured source with views, samples (by the configured strategy) and rejects."""
    scenes_config = config.scenes
    rows, rejects = [], []
    totals = [0, 0, 0, 0]
    for scene in list_scenes(scenes_config):
        samples = sample_scene(scene, scenes_config)
        rows.append([scene.id, len(scene), len(samples), len(scene.rejects),
                     split_for_scene(scene.id, scenes_config.val_fraction), *FitReport.of(samples).cells()])
        rejects.extend(scene.rejects)
        for i, value in enumerate((1, len(scene), len(samples), len(scene.rejects))):
            totals[i] += value
    rows.append([f"total ({scenes_config.source}: {totals[0]} scenes)", *totals[1:], "", "", "", ""])
    text = format_table(["scene", "views", "samples", "rejects", "split", "turned", "cropped", "enlarged"], rows)
    title = (f"source {scenes_config.source}" + (f" at {scenes_config.root}" if scenes_config.root else "")
             + f"; samples: {scenes_config.sampling}, {scenes_config.views_per_sample} views"
             f" (at least {scenes_config.min_views}), at most {scenes_config.max_samples_per_scene} per scene;"
             f" views {scenes_config.long_side} px on the long side, turned to the sample's orientation, cropped"
             f" by at most {scenes_config.max_crop_fraction:.0%}, enlarged at most {scenes_config.max_upscale:g}x")
    parts = [title, "", text]
    if rejects:
        parts += ["", "rejects:", *(f"  {item}: {reason}" for item, reason in rejects)]
    return "\n".join(parts)


def view_size(view: View) -> tuple[int, int]:
    """(W, H) of a view: from its header (:func:`~d3r.scenes.limits.header_size`), else by loading it."""
    size = header_size(view)
    return size if size is not None else view.load().size


def _find_scene(config: D3RConfig, scene_id: str) -> Scene:
    seen = []
    for scene in list_scenes(config.scenes):
        if scene.id == scene_id:
            return scene
        seen.append(scene.id)
    listed = ", ".join(seen[:10]) + (" ..." if len(seen) > 10 else "")
    raise ConfigError(f"--scene: no scene {scene_id!r} in source {config.scenes.source!r} (scenes: {listed or 'none'})")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def format_scene(config: D3RConfig, scene_id: str) -> str:
    """One scene's views: name, size (W x H), whether K, pose and depth are known, and whether its samples
    turn it, crop it (the largest share) or enlarge it (the largest factor); ``-`` for a view in no sample.

    Raises:
        ConfigError: when the source has no scene ``scene_id`` (naming the scenes it has).
    """
    scene = _find_scene(config, scene_id)
    samples = sample_scene(scene, config.scenes)
    fits = FitReport.of(samples)
    sampled = {name for sample in samples for name in sample.view_names}
    rows = []
    for view in scene.views:
        try:
            width, height = view_size(view)
            size = f"{width}x{height}"
        except (ImageReadError, OSError, ValueError) as exc:
            size = f"unreadable ({exc})"
        depth = view.depth is not None or bool(view.meta.get("has_depth"))
        cropped, enlarged = fits.cropped.get(view.name), fits.enlarged.get(view.name)
        fitted = [_yes(view.name in fits.turned), "no" if cropped is None else f"{cropped:.0%}",
                  "no" if enlarged is None else f"{enlarged:.1f}x"] if view.name in sampled else ["-"] * 3
        rows.append([view.name, size, _yes(view.K is not None), _yes(view.pose is not None), _yes(depth), *fitted])
    parts = [f"scene {scene.id} (source {scene.source}, {len(scene)} views)", "",
             format_table(["view", "size", "K", "pose", "depth", "turned", "cropped", "enlarged"], rows)]
    notes = {k: v for k, v in scene.meta.items() if k in ("note", "distortion", "category", "fps", "rotation")}
    if notes:
        parts += ["", *(f"{key}: {value}" for key, value in notes.items())]
    if scene.rejects:
        parts += ["", "rejects:", *(f"  {item}: {reason}" for item, reason in scene.rejects)]
    return "\n".join(parts)
