"""The student in the MLflow registry: pyfunc logging, registration, aliases, loading in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

METRIC = "val/gt/abs_rel"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real sqlite tracking + registry store, with a tiny student checkpoint and one logged model."""
    import mlflow
    import torch

    from d3r.config import MlflowConfig
    from d3r.registry import log_student_model
    from d3r.student import build_student
    from d3r.student.checkpoint import save_student
    from d3r.tracking import use_experiment

    root = tmp_path_factory.mktemp("registry")
    config = MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="registry-test")
    experiment = use_experiment(config)
    torch.manual_seed(0)
    checkpoint = save_student(build_student("tiny"), root / "student.pt")
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_student_model(checkpoint)
    assert info.run_id == run.info.run_id
    return root, config, experiment, checkpoint, info


def _log(store):
    import mlflow

    from d3r.registry import log_student_model

    _, _, experiment, checkpoint, _ = store
    with mlflow.start_run(experiment_id=experiment):
        return log_student_model(checkpoint)


def test_logged_model_has_signature_and_small_example(store):
    import mlflow

    _, _, _, _, info = store
    signature = mlflow.models.get_model_info(info.model_uri).signature  # as stored
    assert signature.inputs is None  # two input forms, checked by d3r.serving (tests/test_serving.py)
    (poses,) = signature.params.params
    assert (poses.name, poses.dtype.name, poses.default) == ("poses", "boolean", False)
    outputs = {spec.name: (spec.type, spec.shape) for spec in signature.outputs.inputs}
    assert outputs["pts3d_global"] == (np.dtype(np.float32), (-1, -1, -1, -1, 3))
    assert outputs["conf_local"] == (np.dtype(np.float32), (-1, -1, -1, -1))
    assert set(outputs) == {"pts3d_global", "conf_global", "pts3d_local", "conf_local"}
    example = mlflow.models.Model.load(info.model_uri).load_input_example(
        mlflow.artifacts.download_artifacts(info.model_uri))
    assert example["images"].shape == (1, 2, 3, 28, 28)  # patch 14; integers 0..255 (int64 once read from JSON)
    assert example["images"].dtype.kind in "iu" and 0 <= example["images"].min() <= example["images"].max() <= 255


def test_register_candidate_and_champion_moves_only_on_a_better_value(store):
    from mlflow.tracking import MlflowClient

    from d3r.registry import register_student

    _, config, _, _, info = store
    config = config.model_copy(update={"registered_model": "moves"})
    client = MlflowClient()
    first = register_student(info, config, METRIC, 0.5)
    assert first.champion and first.previous_champion is None
    outcomes = []
    for value in (0.3, 0.4, 0.2):  # better, worse, better
        registration = register_student(_log(store), config, METRIC, value)
        candidate = client.get_model_version_by_alias("moves", "candidate")
        champion = client.get_model_version_by_alias("moves", "champion")
        assert int(candidate.version) == registration.version
        assert champion.tags["d3r.metric"] == METRIC
        outcomes.append((registration.version, registration.champion, registration.previous_champion,
                         int(champion.version), float(champion.tags["d3r.metric_value"])))
    assert outcomes == [(2, True, 0.5, 2, 0.3), (3, False, 0.3, 2, 0.3), (4, True, 0.3, 4, 0.2)]
    run = client.get_run(client.get_model_version("moves", "3").run_id)
    assert run.data.tags["d3r.registry.metric"] == METRIC
    assert run.data.tags["d3r.registry.outcome"] == "candidate"
    assert "does not beat champion version 2" in run.data.tags["d3r.registry.reason"]


def test_a_champion_chosen_by_another_metric_stays(store):
    from mlflow.tracking import MlflowClient

    from d3r.registry import register_student

    _, config, _, _, info = store
    config = config.model_copy(update={"registered_model": "metrics"})
    assert register_student(info, config, "val/teacher/loss", 0.9).champion
    other = register_student(_log(store), config, METRIC, 0.01)
    assert not other.champion and other.previous_champion is None
    assert "val/teacher/loss" in other.reason
    client = MlflowClient()
    assert int(client.get_model_version_by_alias("metrics", "champion").version) == 1
    assert int(client.get_model_version_by_alias("metrics", "candidate").version) == 2
    assert not register_student(_log(store), config, "val/teacher/loss", float("nan")).champion


def test_pyfunc_predicts_in_a_fresh_process(store):
    from d3r.registry import register_student

    root, config, _, _, info = store
    register_student(info, config.model_copy(update={"registered_model": "fresh"}), METRIC, 0.1)
    script = textwrap.dedent("""
        import json, sys
        import mlflow, numpy as np
        model = mlflow.pyfunc.load_model("models:/fresh@champion")
        out = model.predict({"images": np.zeros((2, 3, 3, 28, 42), np.uint8)})
        import d3r
        print(json.dumps({"shapes": {k: [list(v.shape), str(v.dtype)] for k, v in out.items()},
                          "d3r": d3r.__file__}))
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.tracking_uri}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shapes"] == {
        "pts3d_global": [[2, 3, 28, 42, 3], "float32"], "conf_global": [[2, 3, 28, 42], "float32"],
        "pts3d_local": [[2, 3, 28, 42, 3], "float32"], "conf_local": [[2, 3, 28, 42], "float32"],
    }
    assert "/code/d3r/" in result["d3r"]  # d3r came with the model, not from the working tree


def test_bad_input_is_refused_with_a_clear_error(store):
    import mlflow
    from mlflow.exceptions import MlflowException

    from d3r.registry import StudentModel

    _, _, _, _, info = store
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        pyfunc.predict({"images": np.zeros((1, 2, 3, 29, 28), np.uint8)})
    with pytest.raises(MlflowException, match=r"integers 0..255 \(uint8\), got float32"):  # HTTP 400 when served
        pyfunc.predict({"images": np.zeros((1, 2, 3, 28, 28), np.float32)})
    model = pyfunc.unwrap_python_model()
    assert isinstance(model, StudentModel)
    with pytest.raises(ValueError, match=r"exactly one of 'images_b64' .* or 'images' .*, got \['pixels'\]"):
        model.predict(None, {"pixels": np.zeros((1, 2, 3, 28, 28), np.uint8)})
    with pytest.raises(ValueError, match=r"\[B, N, 3, H, W\], got shape \[2, 3, 28, 28\]"):
        model.predict(None, {"images": np.zeros((2, 3, 28, 28), np.uint8)})
