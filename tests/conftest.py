"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A private local Ray instance (2 CPUs, no dashboard), started once per test session.

    ``address="local"`` never joins a cluster that happens to run on the machine. Code under test that
    calls ``ray.init`` only when Ray is not initialised uses this one.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
