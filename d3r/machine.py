"""Describe the machine a measurement ran on (for benchmark results and run tags)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def describe_machine(threads: int | None = None, extra: str = "") -> str:
    """One line: CPU model, cores (and threads used), GPU, Python/numpy/torch versions, load, UTC time."""
    import numpy as np
    import torch

    used = f" ({threads} thread{'s' if threads > 1 else ''} used)" if threads else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"
    parts = [
        f"CPU {cpu_model()}, {os.cpu_count()} cores{used}",
        f"GPU {gpu}",
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}",
        f"load average {load} at start",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
    ]
    if extra:
        parts.insert(3, extra)
    return "; ".join(parts)
