"""The registered student behind the real ``mlflow models serve``: real HTTP requests, good, bad and concurrent."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

LONG_SIDE, MAX_VIEWS = 56, 4  # logged with the model: 64x48 files → 56x42 maps (patch 14)
MAPS = {"pts3d_global": 3, "conf_global": 0, "pts3d_local": 3, "conf_local": 0}  # key → trailing channels
STARTUP_LIMIT_S = 300  # a server that never answers /ping fails the test instead of hanging it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _image_file(width: int, height: int, seed: int, image_format: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _files(count: int, width: int = 64, height: int = 48) -> list[str]:
    return [_b64(_image_file(width, height, seed, "JPEG" if seed % 2 else "PNG")) for seed in range(count)]


class Server:
    def __init__(self, url: str):
        self.url = url

    def post(self, body: dict | bytes) -> tuple[int, str]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/invocations", data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def ping(self) -> int:
        with urllib.request.urlopen(f"{self.url}/ping", timeout=10) as response:
            return response.status


def _register(root: Path) -> str:
    """A random tiny student (its global head biased to point forward, so cameras can be recovered) logged
    with this test's serving limits and registered as ``d3r-student@champion``; returns the tracking URI."""
    import mlflow
    import torch

    from d3r.config import MlflowConfig
    from d3r.registry import log_student_model, register_student
    from d3r.student import build_student
    from d3r.student.checkpoint import save_student
    from d3r.tracking import use_experiment

    config = MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="serving-test")
    experiment = use_experiment(config)
    torch.manual_seed(0)
    student = build_student("tiny")
    with torch.no_grad():
        student.heads.global_head.head[-1].bias[2] += 2.0  # z > 0: points in front of the camera
    checkpoint = save_student(student, root / "student.pt")
    with mlflow.start_run(experiment_id=experiment):
        info = log_student_model(checkpoint, long_side=LONG_SIDE, max_views=MAX_VIEWS)
    assert register_student(info, config, "val/gt/abs_rel", 0.1).champion
    return config.tracking_uri


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    tracking_uri = _register(root)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (root / "server.log").open("w")
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/d3r-student@champion",
               "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
    process = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        serving = Server(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                if serving.ping() == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield serving
    finally:
        process.terminate()  # mlflow's uvicorn child gets SIGTERM when its parent dies
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the session this test started, by its id
            process.wait()
        log.close()


def _predictions(status: int, body: str) -> dict[str, np.ndarray]:
    assert status == 200, body[-2000:]
    return {key: np.asarray(value) for key, value in json.loads(body)["predictions"].items()}


def _assert_maps(out: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    for key, channels in MAPS.items():
        assert out[key].shape == shape + ((channels,) if channels else ()), key
        assert np.isfinite(out[key]).all(), key
    assert (out["conf_global"] >= 1).all()


def test_base64_image_files_give_the_four_maps_at_the_fitted_size(server):
    out = _predictions(*server.post({"inputs": {"images_b64": _files(3)}}))
    assert set(out) == set(MAPS)  # no cameras unless asked for
    _assert_maps(out, (1, 3, 42, 56))  # 64x48 → long side 56 → 56x42, multiples of 14


def test_array_form_keeps_its_size(server):
    images = np.random.default_rng(0).integers(0, 256, (2, 2, 3, 28, 42), dtype=np.uint8)
    out = _predictions(*server.post({"inputs": {"images": images.tolist()}}))
    _assert_maps(out, (2, 2, 28, 42))


def test_cameras_on_request(server):
    out = _predictions(*server.post({"inputs": {"images_b64": _files(2)}, "params": {"poses": True}}))
    _assert_maps(out, (1, 2, 42, 56))
    assert out["focal"].shape == (1,) and np.isfinite(out["focal"]).all()
    K, poses = out["intrinsics"], out["poses"]
    assert K.shape == (1, 2, 3, 3) and poses.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(K[0, :, 0, 0], out["focal"][0])
    np.testing.assert_allclose(K[0, :, :2, 2], [[27.5, 20.5]] * 2)  # the centre of 56x42
    np.testing.assert_allclose(poses[0, :, 3], [[0, 0, 0, 1]] * 2)
    np.testing.assert_allclose(poses[0, :, :3, :3] @ poses[0, :, :3, :3].transpose(0, 2, 1), [np.eye(3)] * 2,
                               atol=1e-6)  # rotations


def _truncated_png() -> str:
    data = _image_file(64, 48, 0)
    return _b64(data[: len(data) // 2])


def _png_declaring(width: int, height: int) -> str:
    """A small PNG whose header declares ``width x height`` pixels (a decompression bomb's header)."""
    data = bytearray(_image_file(8, 8, 0))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data follows the signature and IHDR's length, type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return _b64(bytes(data))


BAD = {
    "missing key": ({"inputs": {"pixels": [1, 2]}}, "exactly one of 'images_b64'"),
    "both keys": ({"inputs": {"images": [[[[[0]]]]], "images_b64": ["x"]}}, "exactly one of 'images_b64'"),
    "wrong shape": ({"inputs": {"images": np.zeros((1, 2, 28, 28), int).tolist()}}, "must be [B, N, 3, H, W]"),
    "wrong dtype": ({"inputs": {"images": np.full((1, 2, 3, 28, 28), 0.5).tolist()}}, "must be integers 0..255"),
    "out of range": ({"inputs": {"images": np.full((1, 2, 3, 28, 28), 300).tolist()}}, "got values 300..300"),
    "size not a patch multiple": ({"inputs": {"images": np.zeros((1, 2, 3, 29, 28), int).tolist()}},
                                  "multiple of the patch size 14, got HxW 29x28"),
    "too many views (array)": ({"inputs": {"images": np.zeros((1, 5, 3, 28, 28), int).tolist()}},
                               "5 views in one request, more than this model's max_views=4"),
    "too many views (files)": ({"inputs": {"images_b64": _files(5)}},
                               "5 views in one request, more than this model's max_views=4"),
    "not base64": ({"inputs": {"images_b64": ["@@@ not base64 @@@"]}}, "images_b64[0] is not valid base64"),
    "not an image": ({"inputs": {"images_b64": _files(1) + [_b64(b"GIF89a? no: plain text")]}},
                     "images_b64[1] is not a PNG, JPEG, WEBP image file"),
    "truncated image": ({"inputs": {"images_b64": [_truncated_png()]}}, "images_b64[0]: corrupt or truncated"),
    "decompression bomb": ({"inputs": {"images_b64": [_png_declaring(20_000, 20_000)]}},
                           "images_b64[0]: more pixels than PIL opens"),
    "over max_pixels": ({"inputs": {"images_b64": [_png_declaring(12_000, 11_000)]}},
                        "more than scenes.max_pixels=120000000"),
    "sizes differ": ({"inputs": {"images_b64": _files(1) + _files(1, 48, 64)}},
                     "images_b64[0] is 64x48, images_b64[1] is 48x64"),
    "too small to enlarge": ({"inputs": {"images_b64": _files(2, 8, 6)}}, "more than scenes.max_upscale=4.0"),
    "strings nested": ({"inputs": {"images_b64": [_files(2)]}}, "must be a list of N base64 strings"),
    "param of a wrong type": ({"inputs": {"images_b64": _files(2)}, "params": {"poses": [1, 2]}}, "poses"),
    "ragged lists": ({"inputs": {"images": [[1, 2], [3]]}}, "inhomogeneous"),
    "not JSON": (b"{images: nope", "valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_payload_gets_a_4xx_with_a_message(server, case):
    body, expected = BAD[case]
    status, text = server.post(body)
    assert 400 <= status < 500, (status, text[-2000:])
    message = json.loads(text)["message"]
    assert expected in message, message[-2000:]
    assert "Traceback" not in text and "stack_trace" not in text


def test_a_burst_of_concurrent_requests_all_succeed_and_the_server_stays_up(server):
    bodies = [{"inputs": {"images_b64": _files(2)}}, {"inputs": {"images": np.zeros((1, 2, 3, 28, 28), int).tolist()}}]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(server.post, [bodies[i % 2] for i in range(16)]))  # 8 threads x 2 requests
    assert [status for status, _ in results] == [200] * 16, [text[-500:] for _, text in results]
    _assert_maps(_predictions(*results[0]), (1, 2, 42, 56))
    _assert_maps(_predictions(*results[1]), (1, 2, 28, 28))
    assert server.ping() == 200
