"""Bad input files are per-item rejects naming the file and the reason, never crashes or memory blow-ups
(issue 12, section 5): names that are not UTF-8, unreadable files and folders, symlink loops, FIFOs,
decompression bombs and extreme dimensions, through the real cache job and its Lance rejects table."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import lance
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from ray import cloudpickle
from wall_teacher import brightness_wall

from d3r.cache.pipeline import run_cache_job
from d3r.cache.store import rejects_uri
from d3r.config import ScenesConfig, TeacherConfig, load_config
from d3r.entry import exit_code_for
from d3r.scenes.errors import NOT_UTF8
from d3r.scenes.sampling import SampleError, load_sample, sample_scene
from d3r.scenes.sources import list_scenes

# The test teacher must reach the Ray workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parents[1]
NOT_UTF8_DIR = os.fsdecode(b"caf\xe9")  # Latin-1 "café": not valid UTF-8
NOT_UTF8_FILE = os.fsdecode(b"frame_\xff.png")


class BrightnessTeacher:
    """A test teacher: points on rays at depth 1 + brightness (finite, never degenerate)."""

    name = "brightness"
    needs_ground_truth = False
    patch_size = 1
    fingerprint = {"name": "brightness", "version": 1}

    def predict(self, images: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        points = brightness_wall(images)
        conf = torch.full(points.shape[:-1], 3.0)
        return {"pts3d_global": points, "conf_global": conf, "pts3d_local": points.clone(), "conf_local": conf}


def brightness_factory(config: TeacherConfig) -> BrightnessTeacher:
    return BrightnessTeacher()


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_png_header(path: Path, width: int, height: int) -> None:
    """A 60-byte PNG whose header declares ``width x height`` RGB pixels (its data would not decode)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def write_png_with_text_after_data(path: Path, width: int, height: int) -> None:
    """A real PNG with a text chunk after its image data: PIL looks there for EXIF only by decoding."""
    Image.new("RGB", (width, height)).save(path)
    data = path.read_bytes()
    end = data.rindex(b"IEND") - 4
    text = b"Comment\x00late"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    path.write_bytes(data[:end] + chunk + data[end:])


def scene_with_second_view(root: Path, name: str, make_second) -> None:
    """A two-view scene: a good ``a.png`` first, so only a check of *every* view catches ``b.png``."""
    write_image(root / name / "a.png")
    make_second(root / name / "b.png")


def tree_state(root: Path) -> dict[bytes, tuple]:
    """Every entry under ``root`` (not following links): its type, size, mtime and link target."""
    state = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else None
            state[path] = (info.st_mode, info.st_size, info.st_mtime_ns, target)
    return state


def deny_read(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: mode 000. Root ignores permission bits, so when the tests run as root
    ``os.access`` is also made to answer for ``path`` as the kernel does for an unprivileged user; this
    proves the listing asks for the real user's rights and turns a refusal into a reject, and
    :func:`test_unreadable_files_and_folders_are_rejects_for_an_unprivileged_user` checks the kernel's
    own answer as user ``nobody``."""
    path.chmod(0)
    if os.geteuid() == 0:
        real_access, denied = os.access, os.fsencode(path)
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: os.fsencode(p) != denied and real_access(p, mode, **kw))


# (case, how to make it under the scenes root, stage of its reject, item fragment, reason fragment)
CASES = [
    ("folder name not UTF-8", lambda root: write_image(root / NOT_UTF8_DIR / "a.png"),
     "list", "caf\\xe9", NOT_UTF8),
    ("file name not UTF-8", lambda root: write_image(root / "good" / NOT_UTF8_FILE),
     "list", "frame_\\xff.png", NOT_UTF8),
    ("symlink loop in a scene", lambda root: os.symlink("loop.png", root / "good" / "loop.png"),
     "list", "good/loop.png", "symlink loop"),
    ("symlink loop at the root", lambda root: os.symlink("rootloop", root / "rootloop"),
     "list", "scenes/rootloop", "symlink loop"),
    ("FIFO named like an image", lambda root: os.mkfifo(root / "good" / "pipe.png"),
     "list", "good/pipe.png", "not a regular file"),
    ("decompression bomb", lambda root: scene_with_second_view(
        root, "bomb", lambda p: write_png_header(p, 12000, 12000)),
     "load", "bomb/b.png", "144000000 pixels, more than scenes.max_pixels=120000000"),
    ("bomb beyond PIL's own limit", lambda root: scene_with_second_view(
        root, "bigbomb", lambda p: write_png_header(p, 20000, 10000)),
     "load", "bigbomb/b.png", "scenes.max_pixels=120000000"),
    ("200000x2 pixels", lambda root: scene_with_second_view(
        root, "thin", lambda p: Image.new("RGB", (200000, 2)).save(p)),
     "load", "thin/b.png", "200000x2 has aspect ratio 100000.0, more than scenes.max_aspect_ratio=8.0"),
    ("tiny view enlarged 8x", lambda root: scene_with_second_view(root, "tiny", lambda p: write_image(p, 8, 6)),
     "load", "tiny/b.png", "enlarged 8.0x to cover 64x48, more than scenes.max_upscale=4.0"),
]


@pytest.mark.usefixtures("ray_local")
def test_every_bad_file_is_a_reject_naming_it_and_the_job_goes_on(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "scenes"
    write_image(root / "good" / "a.png", seed=1)
    write_image(root / "good" / "b.png", seed=2)
    for _, make, *_ in CASES:
        make(root)
    write_image(root / "locked" / "a.png")
    write_image(root / "locked" / "b.png")
    write_image(root / "good" / "locked.png")
    deny_read(root / "locked", monkeypatch)
    deny_read(root / "good" / "locked.png", monkeypatch)
    cases = [*CASES, ("unreadable folder", None, "list", "scenes/locked", "cannot read folder: permission denied"),
             ("unreadable file", None, "list", "good/locked.png", "cannot read file: permission denied")]
    before = tree_state(root)
    config = load_config(None, [
        "--scenes.source", "folders", "--scenes.root", str(root), "--scenes.long_side", "64",
        "--scenes.views_per_sample", "2", "--cache.uri", str(tmp_path / "cache.lance")], environ={})

    summaries = []

    def job() -> None:
        summaries.append(run_cache_job(config, teacher_factory=brightness_factory))

    code = exit_code_for("jobs/cache.py", job)

    assert code == 0
    (summary,) = summaries
    assert summary.rejected[("load", "ImageLimitError")] == 4  # counted by what was wrong, not "SampleError"
    rows = lance.dataset(config.cache.uri).to_table().to_pylist()
    assert [(r["scene_id"], r["view_names"]) for r in rows] == [("good", ["a", "b"])]
    rejects = lance.dataset(rejects_uri(config.cache.uri)).to_table().to_pylist()
    for case, _, stage, item, reason in cases:
        matches = [r for r in rejects if r["stage"] == stage and item in (r["item"] + r["reason"])
                   and reason in r["reason"]]
        assert len(matches) == 1, f"{case}: expected one {stage} reject naming {item!r} and {reason!r}; got {rejects}"
    assert len(rejects) == len(cases)
    assert tree_state(root) == before  # nothing of the user's was written, moved or deleted


@pytest.mark.parametrize("second", [
    pytest.param(lambda p: Image.new("RGB", (200000, 2)).save(p), id="200000x2"),
    pytest.param(lambda p: write_png_with_text_after_data(p, 200000, 2), id="200000x2-text-after-data"),
    pytest.param(lambda p: write_png_header(p, 12000, 12000), id="bomb"),
    pytest.param(lambda p: write_png_header(p, 20000, 10000), id="bomb-beyond-PIL"),
    pytest.param(lambda p: write_image(p, 8, 6), id="tiny"),
])
def test_extreme_dimensions_are_refused_from_the_header_before_any_decode_or_resample(tmp_path, monkeypatch, second):
    """The 1.2 KB 200000x2 PNG took the job to 2.6 GB RSS: it was decoded and enlarged in full. Now its
    header refuses it before any view of the sample is decoded (ImageFile.load) or resampled (resize)."""
    scene_with_second_view(tmp_path, "s", second)
    config = ScenesConfig(source="folders", root=tmp_path, long_side=64, views_per_sample=2)
    (scene,) = list(list_scenes(config))
    (sample,) = sample_scene(scene, config)
    calls = []
    for owner, name in ((ImageFile.ImageFile, "load"), (Image.Image, "resize")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda self, *a, _real=real, _name=name, **kw: (
            calls.append(_name), _real(self, *a, **kw))[1])
    with pytest.raises(SampleError, match=r"view 'b' \(.*b\.png\): .*scenes\.max_"):
        load_sample(scene, sample, config)
    assert calls == []


def test_a_folder_link_to_its_own_ancestor_is_a_symlink_loop_not_a_walk_in_circles(tmp_path):
    """The dataset readers walk folders; a link back up would find every scene again under longer paths."""
    scene = tmp_path / "PID0"
    write_image(scene / "blended_images" / "00000000.jpg")
    write_image(scene / "blended_images" / "00000001.jpg")
    os.symlink("..", tmp_path / "PID0" / "up")
    os.symlink(".", tmp_path / "here")
    scenes = list(list_scenes(ScenesConfig(source="blendedmvs", root=tmp_path)))
    assert [s.id for s in scenes if s.views] == ["PID0"]
    rejects = sorted(r for s in scenes for r in s.rejects)
    assert rejects == [(str(tmp_path / "here"), "symlink loop (links to a folder that contains it)")]


_AS_NOBODY = """
import json, sys
from d3r.config import ScenesConfig
from d3r.scenes.images import ImageReadError, read_image
from d3r.scenes.sources import list_scenes
root = sys.argv[1]
scenes = list(list_scenes(ScenesConfig(source="folders", root=root, views_per_sample=2)))
try:
    read_image(root + "/good/locked.png")
    error = None
except ImageReadError as exc:
    error = str(exc)
print(json.dumps({"rejects": [r for s in scenes for r in s.rejects], "views": {s.id: len(s) for s in scenes if len(s)},
                  "read_error": error}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a check as user nobody")
def test_unreadable_files_and_folders_are_rejects_for_an_unprivileged_user() -> None:
    """The kernel's own answer: listing and reading as user ``nobody``, permission bits refuse for real."""
    root = Path(tempfile.mkdtemp(prefix="d3r-unreadable-"))
    try:
        root.chmod(0o755)
        for name in ("good/a.png", "good/b.png", "good/locked.png", "locked/a.png", "nosearch/a.png"):
            write_image(root / name)
        (root / "good" / "locked.png").chmod(0)
        (root / "locked").chmod(0)
        (root / "nosearch").chmod(0o644)  # listable, but its entries cannot be looked at
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c"]
        probe = subprocess.run([*as_nobody, "import d3r.scenes.sources"], cwd=REPO, capture_output=True, text=True,
                               timeout=120)
        if probe.returncode:
            pytest.skip(f"user nobody cannot import d3r here: {probe.stderr[-200:]}")
        done = subprocess.run([*as_nobody, _AS_NOBODY, str(root)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
    finally:
        for folder in ("locked", "nosearch"):
            (root / folder).chmod(0o755)
        shutil.rmtree(root)
    assert sorted(map(tuple, result["rejects"])) == [
        (f"{root}/good/locked.png", "cannot read file: permission denied"),
        (f"{root}/locked", "cannot read folder: permission denied"),
        (f"{root}/nosearch", "cannot read folder: permission denied"),
    ]
    assert result["views"] == {"good": 2}
    assert result["read_error"] == f"{root}/good/locked.png: cannot read file: permission denied"
