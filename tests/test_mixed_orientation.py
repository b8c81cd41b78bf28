"""Mixed orientations are kept, not cut (issue 14, item 1): a synthetic room's renders, some stored rotated with
an EXIF orientation tag and some transposed (pixels, depth, K and pose turned in the COLMAP model), cache to the
same geometry as the unrotated set, every view whole, through the real cache job and the oracle teacher."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pytest
from PIL import Image

from d3r.cache.codec import decode_row
from d3r.cache.pipeline import run_cache_job
from d3r.cache.rows import decode_images
from d3r.config import load_config
from d3r.scenes.colmap import write_colmap_scene
from d3r.scenes.images import read_image
from d3r.scenes.records import Scene, View
from d3r.scenes.rotation import unturn_map, unturn_points
from d3r.scenes.sampling import sample_scene
from d3r.scenes.sources import list_scenes
from d3r.scenes.synthetic import render_scene

EXIF_ORIENTATION = 0x0112
SIZE = (64, 48)
# per view: how the photo is stored. "exif": pixels turned counter-clockwise with EXIF orientation 6 (a viewer
# turns them back: the photo is the render); "ccw" / "cw": the photo itself is the render turned a quarter turn
# counter-clockwise / clockwise (a rolled camera: K and pose in the model turned with it)
STORED = ["as is", "exif", "cw", "as is", "ccw"]

pytestmark = pytest.mark.usefixtures("ray_local")


def rolled(view: View, direction: str) -> View:
    """The render seen by a camera rolled so that its image is the render turned a quarter turn (written out
    here, independently of d3r.scenes.rotation). Counter-clockwise: pixel (u, v) → (v, W-1-u), camera
    coordinates (x, y, z) → (y, -x, z); clockwise: (u, v) → (H-1-v, u), (x, y, z) → (-y, x, z)."""
    h, w = view.depth.shape
    (fx, _, cx), (_, fy, cy) = view.K[0], view.K[1]
    if direction == "ccw":
        k, roll, K = 1, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], [[fy, 0, cy], [0, fx, w - 1 - cx], [0, 0, 1]]
    else:
        k, roll, K = -1, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], [[fy, 0, h - 1 - cy], [0, fx, cx], [0, 0, 1]]
    pose = view.pose.copy()
    pose[:3, :3] = view.pose[:3, :3] @ np.array(roll, dtype=float).T
    return view.with_(image=np.ascontiguousarray(np.rot90(view.image, k)),
                      depth=np.ascontiguousarray(np.rot90(view.depth, k)), K=np.array(K, dtype=float), pose=pose)


def turn_like_the_photo(values: np.ndarray, direction: str, points: bool = False) -> np.ndarray:
    """Maps ``[H, W, ...]`` of the render as the photo stored ``direction`` shows them (camera-frame points
    expressed in the rolled camera when ``points``)."""
    if direction not in ("ccw", "cw"):
        return values
    out = np.rot90(values, 1 if direction == "ccw" else -1)
    if points:
        x, y, z = out[..., 0], out[..., 1], out[..., 2]
        out = np.stack([y, -x, z] if direction == "ccw" else [-y, x, z], axis=-1)
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path, Scene]:
    """The room's renders as a COLMAP scene folder, twice: as rendered, and stored as :data:`STORED` says."""
    base = tmp_path_factory.mktemp("orientation")
    scene = render_scene(0, 0, len(STORED), SIZE, "orbit")
    write_colmap_scene(scene, base / "plain" / "room")
    mixed = [rolled(view, how) if how in ("ccw", "cw") else view for view, how in zip(scene.views, STORED, strict=True)]
    folder = write_colmap_scene(Scene(id=scene.id, source="synthetic", views=mixed), base / "mixed" / "room")
    for view, how in zip(scene.views, STORED, strict=True):
        if how == "exif":
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = 6  # "turn 90° clockwise to show"
            Image.fromarray(np.ascontiguousarray(np.rot90(view.image, 1))).save(folder / "images" / f"{view.name}.png",
                                                                                exif=exif)
    return base / "plain", base / "mixed", scene


def cache(root: Path, uri: Path) -> tuple[dict, object]:
    config = load_config(None, [
        "--scenes.source", "colmap", "--scenes.root", str(root), "--scenes.long_side", "64",
        "--scenes.views_per_sample", str(len(STORED)), "--cache.uri", str(uri),
        "--teacher.noise", "0", "--teacher.corrupt_blobs", "0", "--teacher.corrupt_edge_bleed", "false",
        "--teacher.corrupt_scale_view_prob", "0"], environ={})
    summary = run_cache_job(config)
    assert (summary.written, summary.rejected_total) == (1, 0), summary.format()
    (row,) = lance.dataset(str(uri)).to_table().to_pylist()
    return row, config, summary


def test_mixed_orientations_keep_every_view_whole_and_give_the_same_geometry(roots, tmp_path):
    plain_root, mixed_root, scene = roots
    plain, _, _ = cache(plain_root, tmp_path / "plain.lance")
    mixed, config, summary = cache(mixed_root, tmp_path / "mixed.lance")
    (listed,) = list(list_scenes(config.scenes))
    (sample,) = sample_scene(listed, config.scenes)
    turns = [fit.turns for fit in sample.fit.views]
    assert turns == [int(how in ("ccw", "cw")) for how in STORED]  # portrait photos turned to the landscape sample
    assert "room: 2 views turned a quarter turn" in summary.format()
    assert (mixed["W"], mixed["H"]) == SIZE and mixed["view_names"] == plain["view_names"]

    # every view whole: each cached image, turned back, is the photo as a viewer shows it, every pixel of it
    images = decode_images(mixed["images"])
    for i, view in enumerate(listed.views):
        assert np.array_equal(unturn_map(images[i], turns[i]), read_image(view.path)), view.name

    # the same geometry: the mixed set's decoded maps, turned back to each photo, are the plain set's maps as that
    # photo shows them, within the codec's error (both rows went through it)
    ours, theirs = decode_row(mixed), decode_row(plain)
    for i, how in enumerate(STORED):
        local = unturn_points(unturn_map(ours["pts3d_local"][i], turns[i]), turns[i])
        glob = unturn_map(ours["pts3d_global"][i], turns[i])  # one world: view 0's camera, not turned
        for key, got, points in (("pts3d_local", local, True), ("pts3d_global", glob, False)):
            want = turn_like_the_photo(theirs[key][i], how, points)
            assert got.shape == want.shape, (key, how)
            scale = np.linalg.norm(want, axis=-1)
            keep = scale > 0
            np.testing.assert_array_equal(keep, np.linalg.norm(got, axis=-1) > 0, err_msg=f"{key} {how}")
            error = np.linalg.norm(got - want, axis=-1)[keep] / scale[keep]
            assert np.median(error) <= 1e-3 and np.quantile(error, 0.99) <= 1e-2, (key, how, error.max())
        np.testing.assert_allclose(unturn_map(ours["conf_local"][i], turns[i]),
                                   turn_like_the_photo(theirs["conf_local"][i], how), rtol=0.02, err_msg=how)
