"""Configuration: precedence, nested merge, and errors that name the field."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from d3r.config import cli_overrides, load_config
from d3r.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("scenes:\n  num_scenes: 3\n  views_per_scene: 5\ncache:\n  batch_size: 7\n")
    return path


def test_defaults_without_file():
    config = load_config(None, [], environ={})
    assert config.scenes.source == "synthetic"
    assert config.teacher.name == "oracle"


def test_precedence_cli_over_env_over_yaml_over_defaults(yaml_file):
    env = {"D3R_SCENES__NUM_SCENES": "9", "D3R_CACHE__BATCH_SIZE": "5"}
    config = load_config(yaml_file, ["--cache.batch_size", "3"], environ=env)
    assert config.scenes.num_scenes == 9  # env over YAML
    assert config.cache.batch_size == 3  # CLI over env
    assert config.scenes.views_per_scene == 5  # YAML over default
    assert config.scenes.long_side == 224  # default kept: nested merge, not replacement


def test_cli_equals_form_and_lists(yaml_file):
    config = load_config(yaml_file, ["--scenes.render_size=[64,48]", "--teacher.noise", "0.01"], environ={})
    assert config.scenes.render_size == (64, 48)
    assert config.teacher.noise == pytest.approx(0.01)


def test_unknown_key_names_it(yaml_file):
    with pytest.raises(ConfigError, match=r"scenes\.num_scene.*unknown key"):
        load_config(yaml_file, ["--scenes.num_scene", "3"], environ={})


def test_bad_value_names_field_value_and_rule(yaml_file):
    with pytest.raises(ConfigError) as info:
        load_config(yaml_file, ["--cache.batch_size", "-1"], environ={})
    message = str(info.value)
    assert "cache.batch_size" in message and "-1" in message and "greater than or equal to 1" in message


def test_bad_literal_lists_allowed(yaml_file):
    with pytest.raises(ConfigError, match=r"scenes\.source.*'nope'.*synthetic"):
        load_config(yaml_file, ["--scenes.source", "nope"], environ={})


def test_unknown_env_key_is_an_error(yaml_file):
    with pytest.raises(ConfigError, match=r"teacher\.nam\b.*environment variable D3R_TEACHER__NAM.*did you mean "
                                          r"teacher\.name"):
        load_config(yaml_file, [], environ={"D3R_TEACHER__NAM": "x"})


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="teacher.checkpoint is required"):
        load_config(None, ["--teacher.name", "fast3r"], environ={})


def test_malformed_cli_arguments():
    with pytest.raises(ConfigError, match="section.field"):
        cli_overrides(["--nodot", "1"])
    with pytest.raises(ConfigError, match="needs a value"):
        cli_overrides(["--a.b"])


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/c.yaml", [], environ={})


def test_cli_config_show_and_exit_status_2(yaml_file):
    ok = subprocess.run(
        [sys.executable, "-m", "d3r.cli", "config", "show", "--config", str(yaml_file), "--cache.batch_size", "4"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert "batch_size: 4" in ok.stdout and "num_scenes: 3" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "d3r.cli", "config", "show", "--config", str(yaml_file), "--cache.bogus", "1"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert bad.returncode == 2
    assert "cache.bogus" in bad.stderr


def test_every_shipped_config_is_valid_and_says_what_it_means():
    configs = {path.stem: load_config(path, [], environ={}) for path in sorted((ROOT / "conf").glob("*.yaml"))}
    assert {"demo", "fast3r"} <= set(configs)
    demo, fast3r = configs["demo"], configs["fast3r"]
    assert (demo.scenes.source, demo.teacher.name, demo.student.preset) == ("synthetic", "oracle", "tiny")
    assert demo.scenes.patch_size % 14 == 0  # the student's patch: the demo cache is what a student trains on
    assert (fast3r.teacher.name, fast3r.teacher.preset, fast3r.scenes.long_side) == ("fast3r", "release", 512)
    assert fast3r.scenes.patch_size % 16 == 0 and fast3r.scenes.views_per_sample == 20


def test_values_are_typed_by_their_field_on_every_source(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("mlflow:\n  experiment: 2024\n  registered_model: yes\ntrain:\n  use_gpu: on\n"
                         "  cache_version: 3\neval:\n  models: [teacher, off]\n")
    config = load_config(yaml_file, [], environ={})
    assert (config.mlflow.experiment, config.mlflow.registered_model, config.eval.models) == (
        "2024", "yes", ["teacher", "off"])  # text fields: YAML 1.1 would give 2024, True, False
    assert config.train.use_gpu is True and config.train.cache_version == 3  # other fields: YAML's types
    config = load_config(None, ["--mlflow.experiment", "2024", "--eval.models", "[teacher, 2024]",
                                "--train.cache_version", "3", "--train.max_steps", "null", "--ray.address", "null"],
                         environ={"D3R_MLFLOW__REGISTERED_MODEL": "off", "D3R_TRAIN__USE_GPU": "yes"})
    assert (config.mlflow.experiment, config.mlflow.registered_model, config.eval.models) == (
        "2024", "off", ["teacher", "2024"])
    assert (config.train.cache_version, config.train.max_steps, config.ray.address, config.train.use_gpu) == (
        3, None, None, True)


def test_errors_say_where_the_bad_value_came_from(tmp_path):
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("cache:\n  batch_size: 0\nscenes:\n  num_scene: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(yaml_file, ["--eval.max_samples", "-2"], environ={"D3R_TEACHER__NOISE": "abc"})
    message = str(info.value)
    assert f"cache.batch_size: got 0 from config file {yaml_file}" in message
    assert f"scenes.num_scene: unknown key (value 3, from config file {yaml_file}); did you mean scenes.num_scenes?" \
        in message
    assert "teacher.noise: got 'abc' from environment variable D3R_TEACHER__NOISE" in message
    assert "eval.max_samples: got -2 from command line --eval.max_samples" in message


def test_cross_field_error_names_where_the_deciding_value_came_from():
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint is required.*teacher\.name from environment variable "
                                          r"D3R_TEACHER__NAME"):
        load_config(None, [], environ={"D3R_TEACHER__NAME": "fast3r"})


def test_d3r_variable_that_sets_no_field_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="d3r.config"):
        config = load_config(None, [], environ={"D3R_CACHE_URI": "x.lance", "D3R_CACHEURI": "y", "OTHER": "1"})
    assert config.cache.uri == "demo_out/cache.lance"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("D3R_CACHE_URI sets no config field; did you mean D3R_CACHE__URI?" in w for w in warnings)
    assert any("D3R_CACHEURI sets no config field" in w and "D3R_SECTION__FIELD" in w for w in warnings)
    assert len(warnings) == 2
