"""Command-line entry points: config and busy errors raised anywhere in a job become exit codes."""

from d3r.cli import main as cli_main
from d3r.config import ConfigError
from d3r.entry import EXIT_BUSY, EXIT_CONFIG, JobBusyError, run_job


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


def test_cli_eval_with_a_missing_model_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    argv = ["eval", "--eval.models", f"[{missing}]", "--mlflow.tracking_uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert cli_main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "eval.models" in err and "missing.pt" in err
