"""MLflow tracking for every d3r job: one place that points MLflow at the configured store and experiment.

The tracking URI is ``mlflow.tracking_uri`` (sqlite by default). A new experiment keeps its artifacts in
``mlartifacts/`` beside a sqlite store, never in the current working directory (which, under
``ray job submit``, is a temporary upload).

An ``http(s)://`` tracking server is probed first with one plain request bounded by ``mlflow.timeout_s``:
MLflow's own client retries an unreachable server with backoff for about four minutes
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), so a job would otherwise hang before it fails.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

from d3r.config import MlflowConfig
from d3r.errors import ConfigError

log = logging.getLogger(__name__)


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside a sqlite store (not the CWD)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


def check_server(config: MlflowConfig) -> None:
    """For an ``http(s)://`` tracking URI: a server must answer ``GET <uri>/health`` within ``config.timeout_s``.

    Any HTTP answer counts (a proxy or an auth layer may refuse the path); only no answer fails.
    Other URIs (sqlite, file, databases) are left to MLflow.

    Raises:
        ConfigError: naming ``mlflow.tracking_uri`` and ``mlflow.timeout_s`` when no server answered.
    """
    uri = config.tracking_uri
    if not uri.lower().startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=config.timeout_s):
            pass
    except urllib.error.HTTPError as exc:  # the server answered, with an error status
        log.debug("tracking server %s answered %s on /health", uri, exc.code)
    except (OSError, ValueError) as exc:  # URLError, refused, timeout, bad URL
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"mlflow.tracking_uri={uri!r}: no tracking server answered {url} within mlflow.timeout_s="
            f"{config.timeout_s:g} s ({reason}); start the server or fix the URI"
        ) from None


def use_experiment(config: MlflowConfig) -> str:
    """Point MLflow at ``config.tracking_uri`` and return the id of ``config.experiment`` (created if new).

    Raises:
        ConfigError: an ``http(s)://`` tracking server that does not answer within ``config.timeout_s``.
    """
    import mlflow

    check_server(config)
    mlflow.set_tracking_uri(config.tracking_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(config.experiment, artifact_location=artifact_location(config.tracking_uri))
