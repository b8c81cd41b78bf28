"""MLflow tracking for every d3r job: one place that points MLflow at the configured store and experiment.

The tracking URI is ``mlflow.tracking_uri`` (sqlite by default). A new experiment keeps its artifacts in
``mlartifacts/`` beside a sqlite store, never in the current working directory (which, under
``ray job submit``, is a temporary upload).
"""

from __future__ import annotations

from pathlib import Path

from d3r.config import MlflowConfig


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside a sqlite store (not the CWD)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


def use_experiment(config: MlflowConfig) -> str:
    """Point MLflow at ``config.tracking_uri`` and return the id of ``config.experiment`` (created if new)."""
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(config.experiment, artifact_location=artifact_location(config.tracking_uri))
