"""Small real sets with the shipped configs (issue 14, item 2): a scene shorter than views_per_sample is one
sample; a job that finds no sample says why and exits 2 instead of "version None" and exit 0."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pytest
from PIL import Image

from d3r.cache.pipeline import run_cache_job
from d3r.cli import main as d3r_main
from d3r.config import load_config

REPO = Path(__file__).resolve().parents[1]
EXIF_ORIENTATION = 0x0112

pytestmark = pytest.mark.usefixtures("ray_local")


def write_photo(path: Path, width: int, height: int, seed: int, orientation: int = 1) -> None:
    """A JPEG of smooth random colour (like a photo, not noise), with an EXIF orientation tag when not 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    image.save(path, quality=90, exif=exif)


def test_five_phone_photos_cache_with_the_shipped_fast3r_config(tmp_path):
    """conf/fast3r.yaml samples 20 views; 5 photos (one portrait through EXIF, one stored portrait) become one
    sample of all 5 with the views turned to landscape, cached by a random tiny Fast3R."""
    root = tmp_path / "tower"
    for i in range(3):
        write_photo(root / f"IMG_{i:04d}.jpg", 640, 480, seed=i)
    write_photo(root / "IMG_0003.jpg", 640, 480, seed=3, orientation=6)  # shown 480x640
    write_photo(root / "IMG_0004.jpg", 480, 640, seed=4)
    config = load_config(REPO / "conf" / "fast3r.yaml", [
        "--scenes.root", str(root), "--teacher.checkpoint", "random", "--teacher.preset", "tiny",
        "--cache.uri", str(tmp_path / "cache.lance"), "--cache.num_gpus", "0"], environ={})  # it asks a GPU
    assert config.scenes.views_per_sample > 5

    summary = run_cache_job(config)

    assert (summary.samples, summary.written, summary.rejected_total) == (1, 1, 0), summary.format()
    assert summary.views_written == 5 and summary.version is not None
    assert "tower: 2 views turned a quarter turn" in summary.format()
    (row,) = lance.dataset(config.cache.uri).to_table().to_pylist()
    assert (row["N"], row["W"], row["H"]) == (5, 512, 384)
    assert row["view_names"] == [f"IMG_{i:04d}" for i in range(5)]


def test_a_job_that_finds_no_sample_exits_2_saying_why_and_what_to_change(tmp_path, capsys):
    for scene in ("a", "b"):
        write_photo(tmp_path / "photos" / scene / "only.jpg", 64, 48, seed=0)
    args = ["cache", "run", "--scenes.source", "folders", "--scenes.root", str(tmp_path / "photos"),
            "--scenes.long_side", "64", "--teacher.name", "fast3r", "--teacher.checkpoint", "random",
            "--teacher.preset", "tiny", "--cache.uri", str(tmp_path / "cache.lance")]

    assert d3r_main(args) == 2

    err = capsys.readouterr().err
    assert "no usable sample: scenes.source='folders'" in err and "holds 2 scenes with 2 views" in err
    assert "scene a has 1 views, needs at least scenes.min_views=2" in err
    assert not (tmp_path / "cache.lance").exists()  # nothing written, no "version None"
    assert d3r_main([*args, "--scenes.min_views", "1"]) == 0
    assert "written           2 (2 views)" in capsys.readouterr().out


def test_an_empty_input_exits_2_saying_what_was_expected(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["cache", "run", "--scenes.source", "folders", "--scenes.root", str(tmp_path / "empty"),
            "--cache.uri", str(tmp_path / "cache.lance")]
    assert d3r_main(args) == 2
    assert "holds no scene (expected a folder of images, or a folder of scene folders" in capsys.readouterr().err
