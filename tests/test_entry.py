"""Command-line entry points: config and busy errors raised anywhere in a job, and stop signals, become
exit codes."""

import os
import signal
import time

import pytest

from d3r.cli import main as cli_main
from d3r.entry import EXIT_BUSY, EXIT_CONFIG, STOP_SIGNALS, run_job
from d3r.errors import ConfigError, JobBusyError


def test_errors_inside_the_job_become_exit_codes(capsys):
    def bad_config(config):
        raise ConfigError("cache.codec: 'nope' is unknown")

    def busy(config):
        raise JobBusyError("cache table is locked by pid 1")

    assert run_job("prog", [], bad_config) == EXIT_CONFIG
    assert "prog: cache.codec" in capsys.readouterr().err
    assert run_job("prog", [], busy) == EXIT_BUSY
    assert "locked by pid 1" in capsys.readouterr().err
    assert run_job("prog", ["--cache.bogus", "1"], lambda config: None) == EXIT_CONFIG
    seen = []
    assert run_job("prog", ["--cache.batch_size", "3"], lambda config: seen.append(config.cache.batch_size)) == 0
    assert seen == [3]


def test_error_types_live_in_one_low_module_and_stay_importable_from_the_old_places():
    import subprocess
    import sys

    import d3r.config
    import d3r.entry
    import d3r.errors

    assert d3r.config.ConfigError is d3r.errors.ConfigError
    assert d3r.entry.JobBusyError is d3r.errors.JobBusyError
    assert d3r.entry.JobInterrupted is d3r.errors.JobInterrupted
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, d3r.errors; print(sorted(m for m in sys.modules if m.startswith('d3r')))"],
        capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['d3r', 'd3r.errors']"  # imports nothing of d3r: every layer may import it


def test_cli_eval_with_a_missing_model_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    argv = ["eval", "--eval.models", f"[{missing}]", "--mlflow.tracking_uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert cli_main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "eval.models" in err and "missing.pt" in err


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_unwinds_the_job_and_exits_128_plus_its_number(capsys, stop, status):
    unwound = []

    def job(config):
        try:
            os.kill(os.getpid(), stop)
            time.sleep(60)  # the signal interrupts this
        except Exception:  # library code's per-item robustness must not swallow it
            unwound.append("swallowed")
        finally:
            unwound.append("finally")

    def unhandled(signum, frame):
        raise AssertionError(f"run_job left signal {signum} to the test's handler")

    before = {s: signal.signal(s, unhandled) for s in STOP_SIGNALS}
    try:
        assert run_job("prog", [], job) == status
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == dict.fromkeys(STOP_SIGNALS, unhandled)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert unwound == ["finally"]
    assert f"prog: interrupted by {stop.name}" in capsys.readouterr().err
