"""MLflow tracking setup: a real sqlite store works; an unreachable or silent server is a config error."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from d3r.config import MlflowConfig
from d3r.errors import ConfigError
from d3r.tracking import use_experiment


@pytest.fixture
def bound_port() -> Iterator[socket.socket]:
    """A local TCP port that is bound (no one else gets it) but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A local TCP port that accepts connections (the kernel's backlog) but never answers a request."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def test_sqlite_store_creates_then_finds_the_experiment(tmp_path):
    config = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="tracking-test")
    created = use_experiment(config)
    assert use_experiment(config) == created
    assert (tmp_path / "mlflow.db").is_file()


def test_unreachable_server_is_a_config_error_naming_the_field(bound_port):
    uri = f"http://127.0.0.1:{bound_port.getsockname()[1]}"
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri=.*127\.0\.0\.1.*mlflow\.timeout_s=10 s"):
        use_experiment(MlflowConfig(tracking_uri=uri))


def test_silent_server_times_out_as_a_config_error(silent_server):
    uri = f"http://127.0.0.1:{silent_server.getsockname()[1]}/"
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri=.*mlflow\.timeout_s=0\.5 s.*timed out"):
        use_experiment(MlflowConfig(tracking_uri=uri, timeout_s=0.5))


def test_eval_job_checks_the_server_before_any_sample(bound_port, tmp_path):
    from d3r.config import D3RConfig
    from d3r.eval.job import run_eval

    config = D3RConfig.model_validate({
        "scenes": {"num_scenes": 1, "views_per_scene": 2, "render_size": [28, 28], "long_side": 28, "patch_size": 14,
                   "views_per_sample": 2},
        "teacher": {"name": "oracle"},
        "eval": {"models": ["teacher"], "split": "all", "out_dir": str(tmp_path / "eval")},
        "mlflow": {"tracking_uri": f"http://127.0.0.1:{bound_port.getsockname()[1]}"},
    })
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri"):
        run_eval(config)
    assert not (tmp_path / "eval").exists()
