"""What a cache holds, for people: ``d3r cache show URI`` and ``d3r cache rejects URI``.

Read-only: opens the cache table at ``URI`` and its rejects table (:func:`~d3r.cache.store.rejects_uri`)
and reads only small columns and Lance's own statistics; it never writes, locks or cleans anything.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import lance
import pyarrow.compute as pc
import yaml

from d3r.cache.store import CONFIG_KEY, VERSION_KEY, open_dataset, rejects_uri, table_metadata
from d3r.errors import ConfigError

SHOWN_VERSIONS = 10
"""``show`` lists the newest this many versions (and counts the older ones)."""

_SMALL_COLUMNS = ["scene_id", "split", "N", "H", "W", "teacher_fingerprint_json", "codec", "codec_version"]
_PATH_LIKE = re.compile(r"[/\\]|\.[A-Za-z]\w{0,4}$")


def _open(uri: str) -> lance.LanceDataset:
    dataset = open_dataset(uri)
    if dataset is None:
        raise ConfigError(f"{uri}: no Lance table there (give the cache.uri of a cache job that ran)")
    missing = [name for name in _SMALL_COLUMNS if name not in dataset.schema.names]
    if missing:
        raise ConfigError(f"{uri}: not a d3r cache table (no columns {missing})")
    return dataset


def reason_kind(reason: str) -> str:
    """A reject's reason without the file it names (``/a/b.jpg: cannot decode`` → ``cannot decode``), so
    that rejects of the same kind count together: leading ``NAME: `` parts that look like a path (a slash,
    or a file extension) are dropped."""
    text = reason.strip()
    while True:
        head, separator, tail = text.partition(": ")
        if not separator or not tail or not _PATH_LIKE.search(head):
            return text
        text = tail


@dataclass(frozen=True)
class Version:
    number: int
    written: datetime
    rows: int
    tags: tuple[str, ...]


@dataclass
class CacheOverview:
    """What ``d3r cache show`` prints (see :func:`cache_overview`)."""

    uri: str
    versions: list[Version]
    rows: int
    views: int
    scenes: int
    splits: dict[str, int]
    sizes: dict[str, int]
    teachers: list[str]
    codecs: list[str]
    column_bytes: dict[str, int]
    metadata: dict[str, str]
    rejects_uri: str
    rejects: Counter = field(default_factory=Counter)

    @property
    def rejects_total(self) -> int:
        return sum(self.rejects.values())

    def format(self) -> str:
        splits = ", ".join(f"{name} {count}" for name, count in sorted(self.splits.items()))
        sizes = ", ".join(f"{size} ({count} samples)" for size, count in sorted(self.sizes.items()))
        lines = [
            f"cache {self.uri}",
            f"  rows        {self.rows} samples, {self.views} views, from {self.scenes} scenes ({splits})",
            f"  image size  {sizes}",
            f"  teacher     {'; '.join(self.teachers)}",
            f"  codec       {', '.join(self.codecs)}",
        ]
        settings = _recorded_settings(self.metadata)
        if settings:
            lines.append(f"  written by  {settings}")
        older = len(self.versions) - SHOWN_VERSIONS
        lines.append(f"  versions    {len(self.versions)} (each commit is one; rows as of that version)")
        if older > 0:
            lines.append(f"    ... {older} older")
        for version in self.versions[-SHOWN_VERSIONS:]:
            tags = f"  tags: {', '.join(version.tags)}" if version.tags else ""
            lines.append(f"    v{version.number:<5} {version.written:%Y-%m-%d %H:%M:%S}  {version.rows:>7} rows{tags}")
        total = sum(self.column_bytes.values())
        lines.append(f"  bytes       {_size(total)} on disk, {_size(total / max(self.views, 1))} per view")
        for name, size in sorted(self.column_bytes.items(), key=lambda item: -item[1]):
            if size:
                lines.append(f"    {name:<26}{_size(size):>10}  {100 * size / max(total, 1):5.1f}%"
                             f"  {_size(size / max(self.views, 1)):>10}/view")
        lines.append(f"  rejects     {self.rejects_total} ({self.rejects_uri}; "
                     f"list them: d3r cache rejects {self.uri})")
        for (stage, kind), count in sorted(self.rejects.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"    {count:>5}  {stage}: {kind}")
        return "\n".join(lines)


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _recorded_settings(metadata: dict[str, str]) -> str:
    """``d3r 0.1.0, scenes.source synthetic, scenes.root ...`` from the table's recorded config."""
    parts = [f"d3r {metadata[VERSION_KEY]}"] if VERSION_KEY in metadata else []
    try:
        config = yaml.safe_load(metadata.get(CONFIG_KEY, "")) or {}
    except yaml.YAMLError:
        config = {}
    scenes = config.get("scenes", {}) if isinstance(config, dict) else {}
    for name in ("source", "root", "long_side", "patch_size", "views_per_sample"):
        if scenes.get(name) is not None:
            parts.append(f"scenes.{name} {scenes[name]}")
    return ", ".join(parts)


def _teacher_name(fingerprint_json: str) -> str:
    """``fast3r preset release, weights 1a2b3c4d5e6f, bfloat16`` from a row's teacher fingerprint."""
    try:
        fingerprint = json.loads(fingerprint_json)
    except (TypeError, ValueError):
        return "unknown"
    parts = [str(fingerprint.get("name", "unknown"))]
    if "preset" in fingerprint:
        parts.append(f"preset {fingerprint['preset']}")
    if "weights_sha256" in fingerprint:
        weights = str(fingerprint["weights_sha256"])
        parts.append(f"weights {weights[:12] if re.fullmatch(r'[0-9a-f]{64}', weights) else weights}")
    if "dtype" in fingerprint:
        parts.append(str(fingerprint["dtype"]))
    return " ".join(parts[:1]) + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _column_bytes(dataset: lance.LanceDataset) -> dict[str, int]:
    """Bytes on disk per top-level column (a list column's items counted in it), from Lance's statistics."""
    owner: dict[int, str] = {}

    def walk(lance_field: object, name: str) -> None:
        owner[lance_field.id()] = name
        for child in lance_field.children():
            walk(child, name)

    for top in dataset.lance_schema.fields():
        walk(top, top.name())
    sizes = dict.fromkeys(dataset.schema.names, 0)
    for stats in dataset.stats.data_stats().fields:
        if stats.id in owner:
            sizes[owner[stats.id]] += stats.bytes_on_disk
    return sizes


def _reject_rows(uri: str) -> list[dict[str, str | None]]:
    rejects = open_dataset(rejects_uri(uri))
    return [] if rejects is None else rejects.to_table().to_pylist()


def cache_overview(uri: str) -> CacheOverview:
    """Versions (rows and tags of each), rows, views, scenes and splits, image sizes, teachers, codecs,
    bytes per column, the recorded settings, and rejects counted by stage and reason.

    Raises:
        ConfigError: when ``uri`` holds no Lance table, or one that is not a d3r cache.
    """
    dataset = _open(uri)
    tags: dict[int, list[str]] = {}
    for name, tag in dataset.tags.list().items():
        tags.setdefault(tag["version"], []).append(name)
    versions = [
        Version(v["version"], v["timestamp"], int(v["metadata"].get("total_rows", 0)) -
                int(v["metadata"].get("total_deletion_file_rows", 0)), tuple(sorted(tags.get(v["version"], []))))
        for v in dataset.versions()
    ]
    table = dataset.to_table(columns=_SMALL_COLUMNS)
    codecs = sorted({f"{codec} v{version}" for codec, version in
                     zip(table["codec"].to_pylist(), table["codec_version"].to_pylist(), strict=True)})
    sizes = Counter(f"{w}x{h}" for w, h in zip(table["W"].to_pylist(), table["H"].to_pylist(), strict=True))
    rejects = Counter((row["stage"] or "?", reason_kind(row["reason"] or "")) for row in _reject_rows(uri))
    return CacheOverview(
        uri=uri,
        versions=versions,
        rows=table.num_rows,
        views=int(pc.sum(table["N"]).as_py() or 0),
        scenes=len(set(table["scene_id"].to_pylist())),
        splits=dict(Counter(table["split"].to_pylist())),
        sizes=dict(sizes),
        teachers=sorted({_teacher_name(text) for text in table["teacher_fingerprint_json"].to_pylist()}),
        codecs=codecs,
        column_bytes=_column_bytes(dataset),
        metadata=table_metadata(uri),
        rejects_uri=rejects_uri(uri),
        rejects=rejects,
    )


def format_rejects(uri: str) -> str:
    """The rejects table of the cache at ``uri`` as a list: one block per reject (stage, scene, item, reason),
    grouped by stage.

    Raises:
        ConfigError: when ``uri`` holds no Lance table, or one that is not a d3r cache.
    """
    _open(uri)
    rows = sorted(_reject_rows(uri), key=lambda row: (row["stage"] or "", row["scene_id"] or "", row["item"] or ""))
    lines = [f"{len(rows)} rejects of {uri} (table {rejects_uri(uri)})"]
    for row in rows:
        where = ", ".join(part for part in (f"scene {row['scene_id']}" if row["scene_id"] else "",
                                            f"sample {row['sample_id'][:12]}" if row["sample_id"] else "") if part)
        lines.append(f"[{row['stage']}] {where}")
        if row["item"]:
            lines.append(f"    item:   {row['item']}")
        lines.append(f"    reason: {row['reason']}")
    return "\n".join(lines)
