"""The error types every layer may raise or catch; imports nothing of d3r.

:mod:`d3r.entry` maps them to exit codes: :class:`ConfigError` → 2, :class:`JobBusyError` → 3,
:class:`JobInterrupted` → 128 + the signal's number.
"""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A bad configuration: names the field(s), the value(s) and what is allowed."""


class JobBusyError(RuntimeError):
    """What the job needs is held by another job; nothing was done."""


class JobInterrupted(BaseException):
    """SIGTERM or SIGINT reached the job. A BaseException, so that the per-item ``except Exception``
    of library code never swallows it. ``detail`` says what was kept (set by the job as it unwinds)."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(signum, detail)
        self.signum, self.detail = signum, detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"interrupted by {name}: {self.detail}" if self.detail else f"interrupted by {name}"
