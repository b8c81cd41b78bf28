"""One way to run a job from a command line: resolve the config, run, map errors to exit codes.

Exit status: 0 done; 2 a bad configuration (the message names the field); 3 the job's resources are
busy (e.g. another job holds the cache table's lock). Used by ``jobs/*.py``, ``d3r.demo`` and ``d3r``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from d3r.config import ConfigError, D3RConfig, load_config, split_config_args

EXIT_CONFIG = 2
EXIT_BUSY = 3


class JobBusyError(RuntimeError):
    """What the job needs is held by another job; nothing was done."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def exit_code_for(prog: str, action: Callable[[], object]) -> int:
    """Run ``action``; print a ConfigError/JobBusyError as one line on stderr and return its exit status."""
    try:
        action()
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except JobBusyError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_BUSY
    return 0


def run_job(prog: str, argv: Sequence[str], job: Callable[[D3RConfig], object]) -> int:
    """``job(config)`` with the config from ``argv`` (``--config PATH`` and ``--section.field VALUE``)."""
    setup_logging()

    def action() -> None:
        path, overrides = split_config_args(argv)
        job(load_config(path, overrides))

    return exit_code_for(prog, action)
