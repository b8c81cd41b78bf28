"""The one shape of a bad input file: it names the file and says what was wrong.

Names are text everywhere in d3r (scene ids, view names, Arrow columns, JSON, hashes), so a file
name that is not valid UTF-8 is never carried: it becomes a reject, and messages show it with
:func:`display_path` (the undecodable bytes as ``\\xNN``).
"""

from __future__ import annotations

import errno
from pathlib import Path

NOT_UTF8 = "name is not valid UTF-8 (d3r keeps names as text: rename it)"


def is_utf8(name: str | Path) -> bool:
    """True when ``name`` is valid UTF-8 text (Python keeps undecodable bytes of a file name as lone surrogates)."""
    try:
        str(name).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_path(path: str | Path) -> str:
    """``path`` as valid UTF-8 text: bytes of a name that are not UTF-8 are shown as ``\\xNN``."""
    text = str(path)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to (e.g. from a JSON escape)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def os_error_reason(exc: OSError, what: str = "file") -> str:
    """What an ``OSError`` met while reading a ``what`` (file or folder) says about it, in a few words."""
    if exc.errno == errno.ENOENT:
        return f"no such {what}"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read {what}: permission denied"
    return f"cannot read {what}: {exc.strerror or exc}"


class InputFileError(ValueError):
    """A file that cannot be used. ``path`` names it (see :func:`display_path`), ``reason`` says what was wrong."""

    def __init__(self, path: str | Path, reason: str):
        self.path = display_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
