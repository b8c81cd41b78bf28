"""The Lance side of the cache: exactly-once chunked appends, the rejects table, a job lock, orphan
cleanup, table metadata and tags.

Layout for a cache at ``uri`` (e.g. ``demo_out/cache.lance``):

- the cache table at ``uri``, rows as in :mod:`d3r.cache.rows`;
- its rejects at ``<uri without .lance>.rejects.lance`` (``demo_out/cache.rejects.lance``), one row per
  rejected item (:data:`d3r.cache.rows.REJECT_SCHEMA`);
- for local paths, a lock file ``<uri>.lock`` held (``fcntl.flock``) for as long as a job has the
  store open. A second job on the same table is refused with :class:`CacheLockedError`. The OS
  releases the lock when its holder dies, so a killed job never blocks the next one.

Exactly once: every append first drops rows whose ``key`` the table already holds (re-reading the
keys whenever the table's version moved since the last look, i.e. someone else committed), so
even without the lock (object stores) a rerun never duplicates a row; two *simultaneous* unlocked
writers can still race between that check and their commit.

Versions: each append is one Lance version (the first creates the table). Nothing is ever
overwritten, so every version stays readable. On open, files that no version references (left by a
killed write) are deleted (``cleanup_old_versions(retain_versions=<all>, delete_unverified=True)``);
that is only safe under the lock, so it is skipped for unlocked (remote) tables. :meth:`CacheStore.finish`
writes the resolved config and d3r version into the schema metadata (keys :data:`CONFIG_KEY`,
:data:`VERSION_KEY`), then tags the final version ``cache-v<version>`` and moves tag ``latest`` to it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lance
import pyarrow as pa

from d3r.cache.rows import REJECT_SCHEMA
from d3r.entry import JobBusyError

logger = logging.getLogger(__name__)

CONFIG_KEY = "d3r.config"
VERSION_KEY = "d3r.version"
LATEST_TAG = "latest"


class CacheLockedError(JobBusyError):
    """Another job holds the cache table's lock."""


def rejects_uri(uri: str) -> str:
    """Where the rejects of the cache at ``uri`` live: ``x.lance`` → ``x.rejects.lance``."""
    stem = uri.rstrip("/")
    stem = stem[: -len(".lance")] if stem.endswith(".lance") else stem
    return f"{stem}.rejects.lance"


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def open_dataset(uri: str, version: int | str | None = None) -> lance.LanceDataset | None:
    """The Lance dataset at ``uri`` (optionally at a version or tag), or None when there is none yet."""
    try:
        return lance.dataset(uri, version=version)
    except ValueError as exc:
        if "not found" in str(exc).lower():
            return None
        raise


def version_tag(version: int) -> str:
    return f"cache-v{version}"


def _schema_signature(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(field.name, str(field.type)) for field in schema]


class KeyedTable:
    """A Lance table whose rows have a unique string ``key``: appends drop keys already present."""

    def __init__(self, uri: str):
        self.uri = uri
        self._keys: set[str] = set()
        self._seen_version: int | None = None

    def keys(self) -> set[str]:
        """Every key in the table's latest version."""
        self._refresh()
        return set(self._keys)

    def _refresh(self) -> lance.LanceDataset | None:
        dataset = open_dataset(self.uri)
        if dataset is None:
            self._keys, self._seen_version = set(), None
        elif dataset.version != self._seen_version:
            self._keys = set(dataset.to_table(columns=["key"])["key"].to_pylist())
            self._seen_version = dataset.version
        return dataset

    def remove_orphan_files(self) -> None:
        """Delete data files no version references (a killed write's); keeps every version."""
        dataset = open_dataset(self.uri)
        if dataset is None:
            return
        stats = dataset.cleanup_old_versions(
            retain_versions=len(dataset.versions()), delete_unverified=True, error_if_tagged_old_versions=False
        )
        if stats.data_files_removed or stats.bytes_removed:
            logger.info("%s: removed %d orphan data files (%d bytes)", self.uri, stats.data_files_removed,
                        stats.bytes_removed)

    def append(self, table: pa.Table) -> tuple[pa.Table, int | None]:
        """Append the rows of ``table`` whose key is new (first occurrence wins) as one version.

        Returns:
            (the rows written, the new version or None when nothing was new).

        Raises:
            ValueError: when ``table``'s columns differ from the existing table's.
        """
        dataset = self._refresh()
        if dataset is not None and _schema_signature(dataset.schema) != _schema_signature(table.schema):
            theirs, ours = _schema_signature(dataset.schema), _schema_signature(table.schema)
            diff = sorted(set(theirs) ^ set(ours))
            raise ValueError(f"{self.uri}: rows do not match the table's columns (differences: {diff}); "
                             "write to another uri for another codec")
        keys = table["key"].to_pylist()
        first = {}
        for index, key in enumerate(keys):
            if key not in self._keys and key not in first:
                first[key] = index
        if not first:
            return table.slice(0, 0), None
        fresh = table.take(pa.array(sorted(first.values()), type=pa.int64()))
        mode = "create" if dataset is None else "append"
        written = lance.write_dataset(fresh, self.uri, schema=table.schema, mode=mode)
        self._keys.update(first)
        self._seen_version = written.version
        return fresh, written.version


@dataclass(frozen=True)
class FinishedCache:
    """What :meth:`CacheStore.finish` leaves: the final version and its tag (None for an empty table)."""

    version: int | None
    tag: str | None


class CacheStore:
    """The cache table and its rejects, opened by one job at a time (use as a context manager).

    ``with CacheStore(uri) as store:`` takes the lock (local tables), removes orphan files, and
    gives :meth:`done_keys`, :meth:`append`, :meth:`append_rejects` and :meth:`finish`.
    """

    def __init__(self, uri: str | Path):
        self.uri = str(uri)
        self.cache = KeyedTable(self.uri)
        self.rejects = KeyedTable(rejects_uri(self.uri))
        self._lock_file: IO[str] | None = None

    @property
    def lock_path(self) -> Path:
        return Path(self.uri.removeprefix("file://").rstrip("/") + ".lock")

    def __enter__(self) -> CacheStore:
        if is_local(self.uri):
            self._acquire_lock()
            self.cache.remove_orphan_files()
            self.rejects.remove_orphan_files()
        else:
            logger.warning("%s is not a local path: no lock and no orphan cleanup; run one job at a time", self.uri)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _acquire_lock(self) -> None:
        path = self.lock_path
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CacheLockedError(
                f"another cache job ({holder}) is writing {self.uri} (lock {path}); wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._lock_file = handle

    def done_keys(self) -> set[str]:
        """Keys of samples already in the cache."""
        return self.cache.keys()

    def rejected_keys(self) -> set[str]:
        """Keys of items already in the rejects table."""
        return self.rejects.keys()

    def append(self, rows: pa.Table) -> tuple[pa.Table, int | None]:
        """Commit one chunk of cache rows (one version); rows whose key exists are dropped.

        Returns:
            (the rows written, the new version or None when none was new).
        """
        return self.cache.append(rows)

    def append_rejects(self, rejects: list[Mapping[str, Any]]) -> int:
        """Commit reject rows (:data:`REJECT_SCHEMA`) not already present; returns how many were new."""
        if not rejects:
            return 0
        written, _ = self.rejects.append(pa.Table.from_pylist(list(rejects), schema=REJECT_SCHEMA))
        return written.num_rows

    def finish(self, metadata: Mapping[str, str]) -> FinishedCache:
        """Record ``metadata`` (e.g. :data:`CONFIG_KEY`, :data:`VERSION_KEY`) in the schema, tag the
        final version ``cache-v<version>`` and move ``latest`` to it."""
        dataset = open_dataset(self.uri)
        if dataset is None:
            return FinishedCache(None, None)
        current = {k.decode(): v.decode() for k, v in (dataset.schema.metadata or {}).items()}
        if any(current.get(key) != value for key, value in metadata.items()):
            dataset.update_schema_metadata(dict(metadata))
            dataset = open_dataset(self.uri)
        tags = dataset.tags.list()
        tag = version_tag(dataset.version)
        if tag not in tags:
            dataset.tags.create(tag, dataset.version)
        if LATEST_TAG in tags:
            dataset.tags.update(LATEST_TAG, dataset.version)
        else:
            dataset.tags.create(LATEST_TAG, dataset.version)
        return FinishedCache(dataset.version, tag)


def table_metadata(uri: str, version: int | str | None = None) -> dict[str, str]:
    """The schema metadata of the cache at ``uri`` (e.g. ``{CONFIG_KEY: yaml, VERSION_KEY: "0.1.0"}``)."""
    dataset = open_dataset(uri, version)
    if dataset is None:
        raise FileNotFoundError(f"no Lance table at {uri}")
    return {k.decode(): v.decode() for k, v in (dataset.schema.metadata or {}).items()}

