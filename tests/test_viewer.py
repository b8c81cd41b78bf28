"""The one-file HTML viewer: embedded data, no network, and real drawing in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d3r.infer.reconstruction import Reconstruction, ViewReconstruction
from d3r.infer.viewer import write_viewer
from d3r.infer.writers import OPENCV_TO_GLTF, write_glb

BACKGROUND = (22, 24, 29)  # the page's clear colour, #16181d


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``[4, 4]`` OpenCV camera-to-world pose at ``eye`` looking at ``target`` (world y down)."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def _scene(views: int = 3, height: int = 60, width: int = 80) -> Reconstruction:
    """A ray-cast toy scene seen by ``views`` cameras: a sphere (coloured by its normal) on a checkered floor
    in front of a gradient wall. ``views * height * width`` points (14,400 by default), half kept by confidence."""
    K = np.array([[40.0, 0, (width - 1) / 2], [0, 40.0, (height - 1) / 2], [0, 0, 1]])
    centre, radius = np.array([0.0, 0.0, 4.0]), 1.0
    out = []
    for i in range(views):
        eye = np.array([1.2 * (i - (views - 1) / 2), -0.5, 0.0])
        c2w = _look_at(eye, centre)
        v, u = np.mgrid[0:height, 0:width].astype(np.float64)
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        rays = rays @ c2w[:3, :3].T
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        # Sphere hit (nearest root), floor y = 1, wall z = 7: take the nearest positive hit.
        oc = eye - centre
        b = rays @ oc
        disc = b**2 - (oc @ oc - radius**2)
        t_sphere = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        with np.errstate(divide="ignore"):
            t_floor = np.where(rays[..., 1] > 0, (1.0 - eye[1]) / rays[..., 1], np.inf)
            t_wall = np.where(rays[..., 2] > 0, (7.0 - eye[2]) / rays[..., 2], np.inf)
        t = np.minimum(np.minimum(t_sphere, t_floor), t_wall)
        points = eye + rays * t[..., None]
        normal = (points - centre) / radius
        checker = ((np.floor(points[..., 0] * 2) + np.floor(points[..., 2] * 2)) % 2)[..., None]
        wall = np.stack([np.clip((points[..., 0] + 4) / 8, 0, 1), np.full_like(t, 0.3),
                         np.clip((points[..., 1] + 3) / 4, 0, 1)], -1)
        colour = np.where((t == t_sphere)[..., None], (normal + 1) / 2,
                          np.where((t == t_floor)[..., None], 0.2 + 0.6 * checker, wall))
        conf = (1.0 + 5.0 * np.exp(-((u - width / 2) ** 2 + (v - height / 2) ** 2) / (width * height / 4)))
        depth = ((points - eye) @ c2w[:3, 2]).astype(np.float32)
        out.append(ViewReconstruction(
            name=f"view_{i}.png", image=(colour * 255).astype(np.uint8), points=points.astype(np.float32),
            conf=conf.astype(np.float32), depth=depth, K=K, c2w=c2w, keep=conf >= np.median(conf)))
    return Reconstruction(views=out, model="toy", confidence_rule="conf >= median (percentile 50)")


def _embedded(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="d3r-data">(.*?)</script>', html, re.S).group(1))


def test_page_embeds_the_kept_points_and_frustums(tmp_path: Path):
    rec = _scene()
    write_viewer(tmp_path / "v.html", rec)
    data = _embedded((tmp_path / "v.html").read_text())
    xyz, rgb, _, view = rec.kept_points()
    assert data["kept"] == data["shown"] == len(xyz) > 2000
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(data["xyz"]), "<f4").reshape(-1, 3), xyz)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(data["rgb"]), np.uint8).reshape(-1, 3), rgb)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(data["view"]), "<u2"), view)
    frustums = np.frombuffer(base64.b64decode(data["frustum_xyz"]), "<f4").reshape(-1, 3)
    assert frustums.shape == (3 * 22, 3)  # 11 segments a view: pyramid, image rectangle, "up" triangle
    # Each pyramid starts at its camera centre.
    for i, v in enumerate(rec.views):
        np.testing.assert_allclose(frustums[i * 22], v.c2w[:3, 3], atol=1e-6)
    assert data["model"] == "toy" and data["confidence_rule"].startswith("conf >= median")


def _glb_frustums(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each ``frustum_<i>`` mesh of a glTF binary as ``(POSITION [K, 3] float32, COLOR_0 [K, 4] uint8)``, read from
    its accessors (trimesh loads line primitives without their colours)."""
    blob = path.read_bytes()
    length = int.from_bytes(blob[12:16], "little")
    gltf = json.loads(blob[20:20 + length])
    binary = blob[20 + length + 8:]  # after the JSON chunk: the BIN chunk's length and type, then its data

    def accessor(index: int, dtype: str, width: int) -> np.ndarray:
        acc = gltf["accessors"][index]
        view = gltf["bufferViews"][acc["bufferView"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        return np.frombuffer(binary, dtype, acc["count"] * width, start).reshape(-1, width)

    return {mesh["name"]: (accessor(mesh["primitives"][0]["attributes"]["POSITION"], "<f4", 3),
                           accessor(mesh["primitives"][0]["attributes"]["COLOR_0"], np.uint8, 4))
            for mesh in gltf["meshes"] if mesh["name"].startswith("frustum_")}


def test_a_view_has_the_same_frustum_and_colour_in_the_glb_and_the_page(tmp_path: Path):
    rec = _scene(views=4)
    write_viewer(tmp_path / "v.html", rec)
    write_glb(tmp_path / "scene.glb", rec)
    data = _embedded((tmp_path / "v.html").read_text())
    page_xyz = np.frombuffer(base64.b64decode(data["frustum_xyz"]), "<f4").reshape(-1, 3)
    page_view = np.frombuffer(base64.b64decode(data["frustum_view"]), "<u2")
    glb = _glb_frustums(tmp_path / "scene.glb")
    colours = np.array(data["view_colours"])
    assert colours.shape == (4, 3) and len(np.unique(colours, axis=0)) == 4
    for i in range(4):
        glb_xyz, glb_rgba = glb[f"frustum_{i}"]
        np.testing.assert_array_equal(glb_rgba, np.tile([*colours[i], 255], (len(glb_rgba), 1)))
        # The same segments: every end point in one file is an end point in the other (glTF axes converted back).
        ours, theirs = page_xyz[page_view == i], glb_xyz @ OPENCV_TO_GLTF.T
        assert len(ours) == 22
        distance = np.linalg.norm(ours[:, None] - theirs[None], axis=-1)
        assert distance.min(1).max() < 1e-5 and distance.min(0).max() < 1e-5


def test_subsample_is_deterministic_and_said_on_the_page(tmp_path: Path):
    rec = _scene()
    write_viewer(tmp_path / "a.html", rec, max_points=1000)
    write_viewer(tmp_path / "b.html", rec, max_points=1000)
    html = (tmp_path / "a.html").read_text()
    assert html == (tmp_path / "b.html").read_text()
    data = _embedded(html)
    assert data["shown"] == 1000 and data["kept"] == len(rec.kept_points()[0]) > 1000
    shown = np.frombuffer(base64.b64decode(data["xyz"]), "<f4").reshape(-1, 3)
    kept = {tuple(p) for p in rec.kept_points()[0]}
    assert all(tuple(p) in kept for p in shown)
    assert "subsample" in html


def test_page_names_no_network_resource(tmp_path: Path):
    write_viewer(tmp_path / "v.html", _scene())
    html = (tmp_path / "v.html").read_text()
    assert re.findall(r"(?:https?|wss?|ftp)://", html) == []
    assert not re.search(r"<(?:script|img|link|iframe)[^>]*\s(?:src|href)=", html)
    assert "default-src 'none'" in html  # the Content-Security-Policy forbids any fetch


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("tests/test_viewer.py needs Chromium: run `make test` as root (it installs Debian's chromium) "
                    "or `apt-get install chromium`")
    return path


def _render(page: Path, hash_: str, out: Path) -> tuple[np.ndarray, str]:
    """Open ``page#hash_`` in headless Chromium with networking disabled.

    Returns:
        ``(screenshot [H, W, 3] uint8, the DOM after load)``.
    """
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run",
         f"--user-data-dir={out.parent / 'chromium-profile'}", "--window-size=960,720",
         "--virtual-time-budget=5000", f"--screenshot={out}", "--dump-dom", f"{page.as_uri()}#{hash_}"],
        capture_output=True, text=True, timeout=180, check=True).stdout
    return np.asarray(Image.open(out).convert("RGB")), dom


def _differ(a: np.ndarray, b: np.ndarray | tuple[int, int, int]) -> np.ndarray:
    """``[H, W]`` bool: pixels of ``a`` that differ from ``b``, outside the control panel's corner."""
    mask = np.abs(a.astype(int) - b).sum(-1) > 30
    mask[:340, :400] = False
    return mask


def test_chromium_draws_points_and_the_camera_moves_them(tmp_path: Path):
    page = tmp_path / "v.html"
    write_viewer(page, _scene())
    front, dom = _render(page, "azimuth=0&elevation=0&distance=2.5", tmp_path / "front.png")
    assert 'data-drawn="1"' in dom and "data-error" not in dom
    fg = _differ(front, BACKGROUND)
    assert fg.sum() > 5000
    assert len(np.unique(front[fg], axis=0)) > 50  # image colours, not one flat colour
    side, _ = _render(page, "azimuth=60&elevation=30&distance=1.5", tmp_path / "side.png")
    assert _differ(side, BACKGROUND).sum() > 5000
    assert _differ(front, side).sum() > 5000


def test_chromium_toggles_frustums_and_confidence_colours(tmp_path: Path):
    page = tmp_path / "v.html"
    write_viewer(page, _scene())
    camera = "azimuth=30&elevation=40&distance=2.5"
    with_frustums, _ = _render(page, camera, tmp_path / "with.png")
    without, _ = _render(page, camera + "&frustums=0", tmp_path / "without.png")
    assert _differ(with_frustums, without).sum() > 100  # the frustum lines
    conf, _ = _render(page, camera + "&frustums=0&color=confidence", tmp_path / "conf.png")
    assert _differ(conf, without).sum() > 2000
