"""The README's data and configuration commands, run as written (in a scratch folder holding the repo's
``conf/``), through the ``d3r`` console script that ``make`` installs. The job commands are run by
test_cache_job, test_train_job, test_eval_job, test_ray_job_submit, test_cli and test_demo; the cluster
lines (``ray start``, ``/shared`` paths) and real-weight lines need a cluster or weights."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
D3R = Path(sys.executable).with_name("d3r")
COMMANDS = {
    "config": "d3r config show --config conf/demo.yaml --cache.batch_size 4",
    "env": "D3R_TEACHER__NOISE=0.01 d3r config show --config conf/demo.yaml",
    "synth": "d3r synth --out data/rooms --scenes 8 --views 24 --size 512x384 --seed 0",
    "list": "d3r scenes list --config conf/demo.yaml",
    "list_colmap": "d3r scenes list --config conf/fast3r.yaml --scenes.source colmap --scenes.root data/rooms",
    "show": "d3r scenes show --config conf/demo.yaml --scene room_0000",
}


def test_every_command_here_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for command in COMMANDS.values():
        assert command in readme, command


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("readme")
    (directory / "conf").symlink_to(REPO / "conf")
    return directory


def run(command: str, cwd: Path) -> str:
    """``VAR=value d3r ...`` as a shell would run it, with the venv's ``d3r``."""
    words = shlex.split(command)
    env = dict(os.environ)
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0] == "d3r" and D3R.is_file(), f"{D3R} (installed by make) is missing"
    done = subprocess.run([str(D3R), *words[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_config_show_applies_the_command_line_and_the_environment(workdir: Path):
    assert re.search(r"^  batch_size: 4$", run(COMMANDS["config"], workdir), re.M)
    assert re.search(r"^  noise: 0\.01$", run(COMMANDS["env"], workdir), re.M)


def test_synth_then_list_and_show_the_scenes(workdir: Path):
    assert "wrote 8 scenes (24 views each, 512x384)" in run(COMMANDS["synth"], workdir)
    assert len(list((workdir / "data" / "rooms").iterdir())) == 8
    listing = run(COMMANDS["list_colmap"], workdir)
    assert "room_0007" in listing and "colmap" in listing
    assert "room_0000" in run(COMMANDS["list"], workdir)
    assert "room_0000" in run(COMMANDS["show"], workdir)
