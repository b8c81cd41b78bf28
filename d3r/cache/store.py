"""The Lance side of the cache: exactly-once chunked appends, the rejects table, a job lock, orphan
cleanup, table metadata and tags.

Layout for a cache at ``uri`` (e.g. ``demo_out/cache.lance``):

- the cache table at ``uri``, rows as in :mod:`d3r.cache.rows`;
- its rejects at ``<uri without .lance>.rejects.lance`` (``demo_out/cache.rejects.lance``), one row per
  rejected item (:data:`d3r.cache.rows.REJECT_SCHEMA`);
- for local paths, a lock file ``<uri>.lock`` held (``fcntl.flock``) for as long as a job has the
  store open. A second job on the same table is refused with :class:`CacheLockedError`. The OS
  releases the lock when its holder dies, so a killed job never blocks the next one. A path where no
  lock can be taken (a file in the way, a read-only file system, ``ENOLCK``) is a
  :class:`~d3r.config.ConfigError` naming ``cache.uri``.

Ownership: d3r writes into and deletes from its own tables only. A local table folder that d3r
creates holds the file :data:`OWNER_FILE` from before its first commit, and both tables record
:data:`TABLE_KEY` in their schema metadata (remote tables are recognised by that alone; tables of
older d3r versions by :data:`CONFIG_KEY`). :func:`check_location` refuses, before any work, a
``cache.uri`` whose path (or its rejects' path) holds anything else.

Writers and the committer: rows reach a table as *fragments* (:func:`write_fragment`: Lance data files
that no version references yet), written by whoever holds the rows (the cache job's teacher actors,
on any node), and become visible when one process commits them (:meth:`KeyedTable.commit`: one Lance
version per call, ``LanceOperation.Overwrite`` for the version that creates the table, ``Append``
after). A :class:`WrittenFragment` is all a committer needs: the fragment's metadata (JSON) and the
keys of its rows.

Exactly once: a commit leaves out every fragment holding a key the table already has (or an earlier
fragment of the same commit has), re-reading the keys whenever the table's version moved since the last
look (someone else committed); a commit that conflicts with another writer's is retried with a fresh
read (:data:`COMMIT_ATTEMPTS`). A fragment left out is never rewritten: its files become orphans (the
cache job writes one sample per fragment, so no other sample is lost). Under the lock nobody else
commits, so no key is ever committed twice; two *simultaneous* unlocked writers (object stores) can
still race between that check and their commit.

Versions: each commit is one Lance version (the first creates the table). Nothing is ever
overwritten, so every version stays readable. Under the lock, files that no version references (left
by a killed write or a retried worker) are deleted (``cleanup_old_versions(retain_versions=<all>,
delete_unverified=True)``; with no version yet, the data files of the d3r-made folder) when the store
opens and in :meth:`CacheStore.finish`, i.e. never while workers may be writing fragments; unlocked
(remote) tables are never cleaned.
:meth:`CacheStore.finish` also removes from the rejects the keys now in the cache (a retried item that
succeeded), writes the resolved config and d3r version into the schema metadata (keys
:data:`CONFIG_KEY`, :data:`VERSION_KEY`) when this store wrote rows (a run that wrote nothing leaves
the record alone; each version keeps the metadata it had), then tags the final version
``cache-v<version>`` and moves tag ``latest`` to it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import lance
import pyarrow as pa
import pyarrow.compute as pc
from lance.commit import CommitConflictError
from lance.fragment import FragmentMetadata

from d3r.cache.rows import REJECT_SCHEMA
from d3r.errors import ConfigError, JobBusyError

logger = logging.getLogger(__name__)

CONFIG_KEY = "d3r.config"
VERSION_KEY = "d3r.version"
TABLE_KEY = "d3r.table"
LATEST_TAG = "latest"
OWNER_FILE = "d3r-table.txt"
COMMIT_ATTEMPTS = 5  # commits of one chunk, each after a fresh read, while other writers conflict

TableKind = Literal["cache", "rejects"]


class CacheLockedError(JobBusyError):
    """Another job holds the cache table's lock."""


def rejects_uri(uri: str) -> str:
    """Where the rejects of the cache at ``uri`` live: ``x.lance`` → ``x.rejects.lance``."""
    stem = uri.rstrip("/")
    stem = stem[: -len(".lance")] if stem.endswith(".lance") else stem
    return f"{stem}.rejects.lance"


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    """The file-system path of a local ``uri`` (``file://`` prefix and trailing slashes dropped)."""
    return Path(uri.removeprefix("file://").rstrip("/"))


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


def _metadata(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def is_d3r_table(uri: str) -> bool:
    """Whether d3r made the table at ``uri``: its folder holds :data:`OWNER_FILE` (local), or its schema
    metadata has :data:`TABLE_KEY` (or :data:`CONFIG_KEY`, written by older d3r versions)."""
    if is_local(uri) and (local_path(uri) / OWNER_FILE).is_file():
        return True
    dataset = open_dataset(uri)
    return dataset is not None and bool({TABLE_KEY, CONFIG_KEY} & set(_metadata(dataset.schema)))


def _check_local_location(uri: str) -> None:
    for path in (local_path(uri), local_path(rejects_uri(uri))):
        if not (path.exists() or path.is_symlink()):
            continue
        if not path.is_dir():
            raise ConfigError(f"cache.uri: {path} exists and is not a folder; choose another cache.uri")
        if not is_d3r_table(str(path)):
            raise ConfigError(
                f"cache.uri: {path} exists and is not a table d3r wrote; d3r never writes into or deletes what "
                "it did not create: choose another cache.uri"
            )
    folder = local_path(uri).parent
    while not folder.exists():  # the nearest existing folder: the job creates the rest
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"cache.uri: {uri} lies under {folder}, which is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cache.uri: {folder} is not writable (read-only file system or no permission), "
                          f"so {uri} cannot be written there")


def check_location(uri: str) -> None:
    """Check, before any work, that the cache at ``uri`` can be d3r's: an existing table there and at its
    rejects' uri was made by d3r; locally also that neither is a file, and that the folder they (and
    the lock) go in can be written.

    Raises:
        ConfigError: naming ``cache.uri`` and the path at fault.
    """
    if is_local(uri):
        _check_local_location(uri)
        return
    for table_uri in (uri, rejects_uri(uri)):
        if open_dataset(table_uri) is not None and not is_d3r_table(table_uri):
            raise ConfigError(f"cache.uri: {table_uri} is a Lance table d3r did not write; choose another cache.uri")


@dataclass(frozen=True)
class WrittenFragment:
    """A fragment written but not committed: its Lance ``FragmentMetadata`` as JSON and its rows' keys."""

    keys: tuple[str, ...]
    metadata: str


def write_fragment(rows: pa.Table, uri: str) -> WrittenFragment:
    """Write ``rows`` (with a ``key`` column) as one uncommitted fragment of the table at ``uri``; it takes
    part in no version until a :meth:`KeyedTable.commit`.

    Raises:
        ValueError: when ``rows`` do not fit the existing table's schema.
    """
    # Before the first commit there is no table: "create" writes the same files that "append" falls back to
    # there, without Lance warning for each fragment that the table "will be created". Should the table appear
    # meanwhile, the commit still checks the rows' columns against it (KeyedTable.commit).
    mode = "create" if open_dataset(uri) is None else "append"
    fragments = lance.fragment.write_fragments(rows, uri, schema=rows.schema, mode=mode,
                                               max_rows_per_file=max(rows.num_rows, 1))
    if len(fragments) != 1:
        raise RuntimeError(f"{uri}: {rows.num_rows} rows were written as {len(fragments)} fragments, not one")
    return WrittenFragment(tuple(rows["key"].to_pylist()), json.dumps(fragments[0].to_json()))


Committed = tuple[list[WrittenFragment], int | None]
"""What a commit did: the fragments committed and the new version (None when none was new)."""


class KeyedTable:
    """A Lance table whose rows have a unique string ``key``: appends drop keys already present.

    ``kind`` is recorded in the table's schema metadata (:data:`TABLE_KEY`). ``locked`` says that the
    caller holds the table's lock: only then are orphan files removed.
    """

    def __init__(self, uri: str, kind: TableKind, locked: bool = False):
        self.uri, self.kind, self.locked = uri, kind, locked
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
        """Delete data files no version references (a killed write's, a retried worker's); keeps every
        version. Only under the lock, and only on a table d3r made; with no version yet, the data files
        in the folder d3r made for it."""
        if not self.locked or not is_d3r_table(self.uri):
            return
        dataset = open_dataset(self.uri)
        if dataset is None:
            data = local_path(self.uri) / "data"
            orphans = sorted(data.glob("*.lance")) if data.is_dir() else []
            for path in orphans:
                path.unlink()
            if orphans:
                logger.info("%s: removed %d data files of a table never committed", self.uri, len(orphans))
            return
        stats = dataset.cleanup_old_versions(
            retain_versions=len(dataset.versions()), delete_unverified=True, error_if_tagged_old_versions=False
        )
        if stats.data_files_removed or stats.bytes_removed:
            logger.info("%s: removed %d orphan data files (%d bytes)", self.uri, stats.data_files_removed,
                        stats.bytes_removed)

    def create_folder(self) -> None:
        """Make the local table folder with :data:`OWNER_FILE` before any fragment is written into it (so a
        kill before the first commit leaves a folder d3r knows as its own); nothing for remote tables."""
        if not is_local(self.uri):
            return
        folder = local_path(self.uri)
        if (folder / OWNER_FILE).is_file():
            return
        folder.mkdir(parents=True)  # an existing folder without the owner file is not ours: fail
        (folder / OWNER_FILE).write_text(
            f"This folder is a Lance table ({self.kind}) written by d3r. d3r writes into and deletes from\n"
            "folders holding this file only.\n"
        )

    def commit(self, fragments: Sequence[WrittenFragment], schema: pa.Schema) -> Committed:
        """Commit as one version the ``fragments`` none of whose keys the table (or an earlier fragment in
        ``fragments``) holds; the others are left out (their files become orphans). ``schema`` (the rows'
        schema, its metadata included) creates the table when there is none yet.

        Returns:
            (the fragments committed, the new version or None when none was new).

        Raises:
            ValueError: when ``schema``'s columns differ from the existing table's.
            CommitConflictError: when other writers conflicted :data:`COMMIT_ATTEMPTS` times.
        """
        attempt = 1
        while True:
            dataset = self._refresh()
            self._check_columns(dataset, schema)
            fresh, keys = [], set()
            for fragment in fragments:
                if any(key in self._keys or key in keys for key in fragment.keys):
                    logger.info("%s: left out a fragment whose key is already committed (%s)", self.uri,
                                ", ".join(fragment.keys))
                    continue
                fresh.append(fragment)
                keys.update(fragment.keys)
            if not fresh:
                return [], None
            metadata = [FragmentMetadata.from_json(fragment.metadata) for fragment in fresh]
            try:
                if dataset is None:
                    self.create_folder()
                    operation = lance.LanceOperation.Overwrite(
                        schema.with_metadata({**_metadata(schema), TABLE_KEY: self.kind}), metadata)
                    committed = lance.LanceDataset.commit(self.uri, operation)
                else:
                    committed = lance.LanceDataset.commit(self.uri, lance.LanceOperation.Append(metadata),
                                                          read_version=dataset.version)
            except CommitConflictError:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                logger.warning("%s: commit conflicted with another writer; retrying with a fresh read", self.uri)
                attempt += 1
                continue
            self._keys.update(keys)
            self._seen_version = committed.version
            return fresh, committed.version

    def _check_columns(self, dataset: lance.LanceDataset | None, schema: pa.Schema) -> None:
        if dataset is not None and _schema_signature(dataset.schema) != _schema_signature(schema):
            diff = sorted(set(_schema_signature(dataset.schema)) ^ set(_schema_signature(schema)))
            raise ValueError(f"{self.uri}: rows do not match the table's columns (differences: {diff}); "
                             "write to another uri for another codec")

    def append(self, table: pa.Table) -> tuple[pa.Table, int | None]:
        """Append the rows of ``table`` whose key is new (first occurrence wins) as one version, from this
        process: one fragment, then :meth:`commit`.

        Returns:
            (the rows written, the new version or None when nothing was new).

        Raises:
            ValueError: when ``table``'s columns differ from the existing table's.
        """
        self._check_columns(self._refresh(), table.schema)
        first: dict[str, int] = {}
        for index, key in enumerate(table["key"].to_pylist()):
            if key not in self._keys and key not in first:
                first[key] = index
        if not first:
            return table.slice(0, 0), None
        fresh = table.take(pa.array(sorted(first.values()), type=pa.int64()))
        self.create_folder()
        committed, version = self.commit([write_fragment(fresh, self.uri)], fresh.schema)
        return (fresh if committed else fresh.slice(0, 0)), version

    def delete_keys(self, keys: set[str]) -> int:
        """Delete the rows whose key is in ``keys`` (one new version when any); returns how many."""
        dataset = self._refresh()
        present = sorted(keys & self._keys)
        if dataset is None or not present:
            return 0
        dataset.delete(pc.field("key").isin(present))
        self._refresh()
        return len(present)


@dataclass(frozen=True)
class FinishedCache:
    """What :meth:`CacheStore.finish` leaves: the final version and its tag (None for an empty table)."""

    version: int | None
    tag: str | None


class CacheStore:
    """The cache table and its rejects, opened by one job at a time (use as a context manager).

    ``with CacheStore(uri) as store:`` takes the lock (local tables), checks that both tables are d3r's,
    removes orphan files, and gives :meth:`done_keys`, :meth:`append`, :meth:`append_rejects` and
    :meth:`finish`.
    """

    def __init__(self, uri: str | Path):
        self.uri = str(uri)
        self.cache = KeyedTable(self.uri, "cache")
        self.rejects = KeyedTable(rejects_uri(self.uri), "rejects")
        self.wrote = False
        self._lock_file: IO[str] | None = None

    @property
    def lock_path(self) -> Path:
        return Path(str(local_path(self.uri)) + ".lock")

    def __enter__(self) -> CacheStore:
        if not is_local(self.uri):
            logger.warning("%s is not a local path: no lock and no orphan cleanup; run one job at a time", self.uri)
            check_location(self.uri)
            return self
        self._acquire_lock()
        try:
            check_location(self.uri)
            for table in (self.cache, self.rejects):
                table.locked = True
                table.remove_orphan_files()
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
        self.cache.locked = self.rejects.locked = False

    def _acquire_lock(self) -> None:
        path = self.lock_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a+")
        except OSError as exc:
            raise ConfigError(f"cache.uri: cannot create the lock file {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CacheLockedError(
                f"another cache job ({holder}) is writing {self.uri} (lock {path}); wait for it to finish"
            ) from None
        except OSError as exc:
            handle.close()
            name = errno.errorcode.get(exc.errno or 0, "error")
            raise ConfigError(
                f"cache.uri: the file system of {path} cannot take a lock ({name}: {exc.strerror or exc}); "
                "put cache.uri on a local file system"
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

    def prepare_fragments(self) -> None:
        """Make the cache table's folder (local) so that workers can write fragments into it."""
        self.cache.create_folder()

    def commit(self, fragments: Sequence[WrittenFragment], schema: pa.Schema) -> Committed:
        """Commit one chunk of worker-written cache fragments as one version (see :meth:`KeyedTable.commit`).

        Returns:
            (the fragments committed, the new version or None when none was new).
        """
        committed, version = self.cache.commit(fragments, schema)
        self.wrote = self.wrote or version is not None
        return committed, version

    def append(self, rows: pa.Table) -> tuple[pa.Table, int | None]:
        """Commit one chunk of cache rows from this process (one version); rows whose key exists are dropped.

        Returns:
            (the rows written, the new version or None when none was new).
        """
        written, version = self.cache.append(rows)
        self.wrote = self.wrote or version is not None
        return written, version

    def append_rejects(self, rejects: list[Mapping[str, Any]]) -> int:
        """Commit reject rows (:data:`REJECT_SCHEMA`) not already present; returns how many were new."""
        if not rejects:
            return 0
        written, _ = self.rejects.append(pa.Table.from_pylist(list(rejects), schema=REJECT_SCHEMA))
        return written.num_rows

    def finish(self, metadata: Mapping[str, str]) -> FinishedCache:
        """Drop from the rejects the keys now cached; record ``metadata`` (e.g. :data:`CONFIG_KEY`,
        :data:`VERSION_KEY`) in the schema when this store wrote rows; tag the final version
        ``cache-v<version>`` and move ``latest`` to it. Under the lock, first remove the files of fragments
        no version took (retried workers, fragments left out): call it when no worker writes any more."""
        self.cache.remove_orphan_files()
        resolved = self.rejects.delete_keys(self.cache.keys())
        if resolved:
            logger.info("%s: %d rejected items are now cached; removed them from the rejects", self.uri, resolved)
        dataset = open_dataset(self.uri)
        if dataset is None:
            return FinishedCache(None, None)
        current = _metadata(dataset.schema)
        if self.wrote and any(current.get(key) != value for key, value in metadata.items()):
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
    return _metadata(dataset.schema)
