"""Ray for a d3r job: join the configured cluster (checked reachable first) or start a local one.

Used by the cache and the train job alike; the jobs' SIGTERM handling (:mod:`d3r.entry`) survives ``ray.init``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from d3r.config import RayConfig
from d3r.errors import ConfigError


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``host:port``, ``ray://host:port``); None for ``auto``, ``local``."""
    host, colon, port = address.split("://", 1)[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if colon and port.isdigit() else None


def check_ray_reachable(config: RayConfig) -> None:
    """The Ray address the job will join (``ray.address``, else ``RAY_ADDRESS``) answers within
    ``ray.connect_timeout_s`` (``ray.init`` itself would wait minutes).

    Raises:
        ConfigError: naming ``ray.address`` and the address.
    """
    address = config.address or os.environ.get("RAY_ADDRESS")
    endpoint = ray_endpoint(address) if address else None
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=config.connect_timeout_s).close()
    except OSError as exc:
        origin = "ray.address" if config.address else "ray.address (unset; RAY_ADDRESS)"
        raise ConfigError(
            f"{origin}: cannot reach the Ray cluster at {address} within ray.connect_timeout_s="
            f"{config.connect_timeout_s:g} s ({exc}); check the address, or unset it to start a local Ray"
        ) from None


@contextmanager
def ray_session(config: RayConfig) -> Iterator[None]:
    """Ray for the job: the caller's when already initialised, else ``ray.init`` (shut down after).

    ``ray.init`` replaces the SIGTERM handler with its own; the caller's is put back, so that SIGTERM
    still stops the job cleanly (see :mod:`d3r.entry`).
    """
    if ray.is_initialized():
        yield
        return
    check_ray_reachable(config)
    kwargs: dict[str, Any] = {}
    if config.address:
        kwargs["address"] = config.address
    if config.num_cpus:
        kwargs["num_cpus"] = config.num_cpus
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(**kwargs)
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield
    finally:
        ray.shutdown()
