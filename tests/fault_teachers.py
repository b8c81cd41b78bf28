"""Test teachers that fail like a cluster does: CUDA out of memory once or for good, or their process
killed. They keep their state in files under a folder every Ray worker (and node) sees."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import ray
import torch
from ray import cloudpickle
from wall_teacher import brightness_wall

from d3r.config import TeacherConfig

# These teachers reach the Ray workers by value (the workers cannot import the tests folder).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"


def _claim(path: Path) -> bool:
    """Create ``path``; False when it already existed (one winner across processes)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class FaultyTeacher:
    """The brightness wall, with a fault:

    - ``oom_once``: each sample's first call raises ``torch.cuda.OutOfMemoryError``;
    - ``oom_after``: after ``healthy`` samples succeeded, every call raises it;
    - ``kill_once``: the ``healthy``-th call (counted over all actors) SIGKILLs its own process, once.

    Every success writes ``ok-<sample>`` holding the ``teacher.view_chunk`` it was built with and the node
    it ran on.
    """

    name = "faulty"
    needs_ground_truth = False
    patch_size = 1
    fingerprint = {"name": "faulty", "version": 1}

    def __init__(self, folder: Path, mode: str, healthy: int, view_chunk: int):
        self.folder, self.mode, self.healthy, self.view_chunk = folder, mode, healthy, view_chunk

    def predict(self, images: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        sample = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
        if self.mode == "oom_once" and _claim(self.folder / f"oom-{sample}"):
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)
        if self.mode == "oom_after" and len(list(self.folder.glob("ok-*"))) >= self.healthy:
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)
        if self.mode == "kill_once":
            calls = len(list(self.folder.glob("call-*")))
            _claim(self.folder / f"call-{calls}-{os.getpid()}-{sample}")
            if calls >= self.healthy and _claim(self.folder / "killed"):
                os.kill(os.getpid(), signal.SIGKILL)
        (self.folder / f"ok-{sample}").write_text(f"{self.view_chunk} {ray.get_runtime_context().get_node_id()}")
        points = brightness_wall(images)
        conf = torch.full(points.shape[:-1], 3.0)
        return {"pts3d_global": points, "conf_global": conf, "pts3d_local": points.clone(), "conf_local": conf}


class FaultyFactory:
    """Builds a :class:`FaultyTeacher` (picklable, so the actors build their own)."""

    def __init__(self, folder: Path, mode: str, healthy: int = 0):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.mode, self.healthy = folder, mode, healthy

    def __call__(self, config: TeacherConfig) -> FaultyTeacher:
        return FaultyTeacher(self.folder, self.mode, self.healthy, config.view_chunk)


def successes(folder: Path) -> dict[str, tuple[int, str]]:
    """Sample → (the view_chunk it succeeded with, the node it ran on)."""
    out = {}
    for path in folder.glob("ok-*"):
        chunk, node = path.read_text().split()
        out[path.name.removeprefix("ok-")] = (int(chunk), node)
    return out
