"""Configuration: precedence, nested merge, and errors that name the field."""

import subprocess
import sys
from pathlib import Path

import pytest

from d3r.config import ConfigError, cli_overrides, load_config

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
    with pytest.raises(ConfigError, match=r"teacher\.nam\b"):
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
