"""One way to run a job from a command line: resolve the config, run, map errors to exit codes.

Exit status: 0 done; 2 a bad configuration (the message names the field); 3 the job's resources are
busy (e.g. another job holds the cache table's lock); 128 + the signal's number when SIGTERM (143) or
SIGINT (130) stopped the job. Used by ``jobs/*.py``, ``d3r.demo`` and ``d3r``.

While a job runs, SIGTERM and SIGINT raise :class:`JobInterrupted` in the main thread, so the job
unwinds (locks released, Ray shut down, committed work kept) and its message says what is safe; a
second signal ends the process at once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from d3r.config import D3RConfig, load_config, split_config_args
from d3r.errors import ConfigError, JobBusyError, JobInterrupted

EXIT_CONFIG = 2
EXIT_BUSY = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    for stop in STOP_SIGNALS:  # a second signal ends the process at once
        signal.signal(stop, signal.SIG_DFL)
    raise JobInterrupted(signum)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Inside: SIGTERM and SIGINT raise :class:`JobInterrupted` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {stop: signal.getsignal(stop) for stop in STOP_SIGNALS}
    for stop in STOP_SIGNALS:
        signal.signal(stop, _raise_interrupted)
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, signal.SIG_DFL if handler is None else handler)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def exit_code_for(prog: str, action: Callable[[], object]) -> int:
    """Run ``action`` (SIGTERM/SIGINT raising :class:`JobInterrupted`); print a ConfigError, JobBusyError or
    JobInterrupted as one line on stderr and return its exit status."""
    try:
        with stop_signals_raise():
            action()
    except JobInterrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
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
