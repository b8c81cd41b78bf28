"""The one shape of a bad input file: it names the file and says what was wrong."""

from __future__ import annotations

from pathlib import Path


class InputFileError(ValueError):
    """A file that cannot be used. ``path`` names it, ``reason`` says what was wrong."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
