"""The cache job submitted with ``ray job submit`` to a head node this test starts and stops.

The head runs under ``ray start --head --block`` in its own process group, with its own temp dir and
free ports, so it neither joins nor disturbs any other Ray on the machine (the session fixture's
private instance included). It is stopped by SIGTERM to that ``ray start`` process, which tears
down exactly the processes it started — never ``ray stop``, which would end every Ray of the user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lance
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
PORT_OPTIONS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout_s: float, head: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert head.poll() is None, "ray start --head exited"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # the server answers (e.g. 401 without the token): it is up
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not come up in {timeout_s} s"
            time.sleep(0.5)


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A private ``ray start --head``: yields the dashboard address and the environment to talk to it."""
    temp_dir = tempfile.mkdtemp(prefix="d3r-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ports = {option: free_port() for option in PORT_OPTIONS}
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    command = [RAY, "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats",
               "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
               *(f"{option}={port}" for option, port in ports.items())]
    log = (tmp_path / "ray-head.log").open("w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        wait_for_http(f"{address}/api/version", 120, head)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_cache_job_runs_through_ray_job_submit(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_head
    uri = str(tmp_path / "cache.lance")
    runtime_env = {"env_vars": {"D3R_CACHE__CHUNK_SAMPLES": "2"}}
    job_args = ["--config", "conf/demo.yaml", "--scenes.num_scenes", "2", "--scenes.views_per_scene", "4",
                "--scenes.render_size", "[64,48]", "--scenes.long_side", "64", "--scenes.views_per_sample", "2",
                "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2", "--cache.uri", uri]
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", ".",
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/cache.py", *job_args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=480,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output
    assert "written           4" in output
    # A run that succeeds logs nothing at error level (Ray's restartable-actor line came on every run).
    errors = [line for line in output.splitlines() if re.search(r"\bERROR\b|\[[^]]* E \d+ \d+\]", line)]
    assert not errors, errors
    dataset = lance.dataset(uri)
    assert dataset.count_rows() == 4
    assert len(dataset.versions()) == 2  # chunks of 2: the env var reached the job (default 16 gives 1)


def submit(address: str, env: dict[str, str], script: str, job_args: list[str]) -> str:
    """``ray job submit`` of ``python script job_args`` from the repository; returns its output (asserted ok)."""
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--", "python", script, *job_args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output
    return output


def test_the_train_job_runs_through_ray_job_submit_after_the_cache_job(ray_head: tuple[str, dict[str, str]],
                                                                       tmp_path: Path) -> None:
    from mlflow import MlflowClient

    address, env = ray_head
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    job_args = ["--config", "conf/demo.yaml", "--scenes.num_scenes", "4", "--scenes.views_per_scene", "4",
                "--scenes.render_size", "[64,48]", "--scenes.long_side", "64", "--scenes.views_per_sample", "2",
                "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2", "--cache.uri",
                str(tmp_path / "cache.lance"), "--mlflow.tracking_uri", tracking_uri,
                "--train.storage_path", str(tmp_path / "runs"), "--train.max_steps", "4",
                "--train.checkpoint_every", "2", "--train.val_every", "4"]
    assert "written           8" in submit(address, env, "jobs/cache.py", job_args)
    output = submit(address, env, "jobs/train.py", job_args)
    assert "steps             4" in output and "registered        d3r-student version 1" in output
    assert len(list((tmp_path / "runs" / "d3r-student").glob("checkpoint_*/train_state.pt"))) == 2
    version = MlflowClient(tracking_uri).get_model_version_by_alias("d3r-student", "candidate")
    assert int(version.version) == 1
