"""The Lance cache store: exactly-once appends, versions, rejects, lock, orphan cleanup, tags, row codecs."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from lance.commit import CommitConflictError

from d3r.cache.rows import (
    cache_key,
    cache_schema,
    decode_ground_truth,
    decode_images,
    encode_images,
    ground_truth_columns,
)
from d3r.cache.store import (
    CONFIG_KEY,
    LATEST_TAG,
    OWNER_FILE,
    TABLE_KEY,
    CacheLockedError,
    CacheStore,
    KeyedTable,
    open_dataset,
    rejects_uri,
    table_metadata,
    write_fragment,
)
from d3r.errors import ConfigError

SUP = ["sup_a", "sup_b"]


def make_rows(sample_ids: list[str], rng: np.random.Generator | None = None) -> pa.Table:
    rng = rng or np.random.default_rng(0)
    rows = []
    for sid in sample_ids:
        images = rng.integers(0, 256, size=(2, 8, 12, 3), dtype=np.uint8)
        rows.append({
            "key": cache_key(sid, "fp", "test", 1), "sample_id": sid, "scene_id": "s0", "source": "synthetic",
            "split": "train", "view_names": ["a", "b"], "N": 2, "H": 8, "W": 12,
            "images": encode_images(images, "png"),
            **ground_truth_columns(None, None, None),
            "teacher_fingerprint": "fp", "teacher_fingerprint_json": "{}", "codec": "test", "codec_version": 1,
            "sup_a": rng.bytes(10), "sup_b": b"x" * 5,
        })
    return pa.Table.from_pylist(rows, schema=cache_schema(SUP))


def keys_in(uri: str) -> list[str]:
    return lance.dataset(uri).to_table(columns=["key"])["key"].to_pylist()


def test_each_append_is_one_version_and_existing_keys_are_dropped(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    with CacheStore(uri) as store:
        assert store.done_keys() == set()
        written, version = store.append(make_rows(["s1", "s2"]))
        assert (written.num_rows, version) == (2, 1)
        written, version = store.append(make_rows(["s2", "s3", "s3"]))
        assert (written["sample_id"].to_pylist(), version) == (["s3"], 2)
        written, version = store.append(make_rows(["s1"]))
        assert (written.num_rows, version) == (0, None)
        assert store.done_keys() == {cache_key(s, "fp", "test", 1) for s in ["s1", "s2", "s3"]}
    assert sorted(keys_in(uri)) == sorted(cache_key(s, "fp", "test", 1) for s in ["s1", "s2", "s3"])
    assert [v["version"] for v in lance.dataset(uri).versions()] == [1, 2]


def test_append_rereads_keys_committed_by_another_writer(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    first, second = KeyedTable(uri, "cache"), KeyedTable(uri, "cache")
    assert second.keys() == set()
    first.append(make_rows(["s1", "s2"]))
    written, _ = second.append(make_rows(["s2", "s3"]))
    assert written["sample_id"].to_pylist() == ["s3"]
    assert sorted(keys_in(uri)) == sorted(cache_key(s, "fp", "test", 1) for s in ["s1", "s2", "s3"])


def test_append_with_other_columns_names_the_difference(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    with CacheStore(uri) as store:
        store.append(make_rows(["s1"]))
        other = make_rows(["s2"]).rename_columns([*make_rows(["s2"]).column_names[:-1], "sup_c"])
        with pytest.raises(ValueError, match="sup_c"):
            store.append(other)


def test_rejects_are_kept_beside_the_table_once_per_key(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    assert rejects_uri(uri) == str(tmp_path / "cache.rejects.lance")
    reject = {"key": "k1", "sample_id": "s1", "scene_id": "room", "item": "v0.png", "stage": "load",
              "reason": "corrupt image"}
    with CacheStore(uri) as store:
        assert store.append_rejects([reject, reject]) == 1
        assert store.append_rejects([reject, {**reject, "key": "k2"}]) == 1
        assert store.rejected_keys() == {"k1", "k2"}
    table = lance.dataset(rejects_uri(uri)).to_table()
    assert sorted(table["key"].to_pylist()) == ["k1", "k2"]
    assert table["reason"].to_pylist() == ["corrupt image"] * 2


def test_a_second_job_is_refused_while_the_first_holds_the_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    with CacheStore(uri), pytest.raises(CacheLockedError, match="another cache job"):
        CacheStore(uri).__enter__()
    with CacheStore(uri) as store:
        assert store.done_keys() == set()


def test_the_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from d3r.cache.store import CacheStore
        with CacheStore({uri!r}):
            Path({str(ready)!r}).touch()
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "lock holder did not start"
            time.sleep(0.05)
        with pytest.raises(CacheLockedError, match=f"pid {holder.pid}"):
            CacheStore(uri).__enter__()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with CacheStore(uri) as store:
        assert store.done_keys() == set()


def test_opening_removes_orphan_files_and_keeps_every_version(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    with CacheStore(uri) as store:
        store.append(make_rows(["s1"]))
        store.append(make_rows(["s2"]))
    lance.fragment.write_fragments(make_rows(["s3"]), uri)  # a killed write: files, no commit
    data = Path(uri) / "data"
    assert len(list(data.iterdir())) == 3
    with CacheStore(uri) as store:
        assert len(list(data.iterdir())) == 2
        assert [v["version"] for v in lance.dataset(uri).versions()] == [1, 2]
        assert store.done_keys() == {cache_key(s, "fp", "test", 1) for s in ["s1", "s2"]}


def test_a_resume_removes_the_files_of_a_kill_in_the_creating_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    with CacheStore(uri) as store:
        store.append(make_rows(["s1"]))
    for folder in ("_versions", "_transactions"):  # as if killed before the first manifest was written
        shutil.rmtree(Path(uri) / folder)
    killed = {p.name for p in (Path(uri) / "data").iterdir()}
    assert killed and open_dataset(uri) is None
    with CacheStore(uri) as store:
        assert store.done_keys() == set()
        store.append(make_rows(["s2"]))
        left = {p.name for p in (Path(uri) / "data").iterdir()}
    assert left and not left & killed
    assert keys_in(uri) == [cache_key("s2", "fp", "test", 1)]


def test_both_tables_are_marked_as_d3rs(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    reject = {"key": "k1", "sample_id": "s1", "scene_id": "room", "item": "v0.png", "stage": "load", "reason": "bad"}
    with CacheStore(uri) as store:
        store.append(make_rows(["s1"]))
        store.append_rejects([reject])
    assert table_metadata(uri)[TABLE_KEY] == "cache" and table_metadata(rejects_uri(uri))[TABLE_KEY] == "rejects"
    assert (Path(uri) / OWNER_FILE).is_file() and (Path(rejects_uri(uri)) / OWNER_FILE).is_file()


def test_a_table_d3r_did_not_write_is_neither_cleaned_nor_written(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    lance.write_dataset(pa.table({"id": [1, 2]}), uri)
    lance.fragment.write_fragments(pa.table({"id": [3]}), uri)  # uncommitted files: not d3r's to delete
    before = sorted(p.name for p in (Path(uri) / "data").iterdir())
    with pytest.raises(ConfigError, match="not a table d3r wrote"):
        CacheStore(uri).__enter__()
    assert sorted(p.name for p in (Path(uri) / "data").iterdir()) == before
    with open(f"{uri}.lock") as handle:  # the refusal released the lock
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_finish_drops_rejects_whose_key_is_now_cached(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    rows = make_rows(["s1", "s2"])
    retried = {"key": rows["key"][0].as_py(), "sample_id": "s1", "scene_id": "s0", "item": "a,b", "stage": "teacher",
               "reason": "NaN"}
    with CacheStore(uri) as store:
        store.append_rejects([retried, {**retried, "key": "other", "sample_id": "s9"}])
        store.append(rows)
        store.finish({})
        assert store.rejected_keys() == {"other"}
    assert lance.dataset(rejects_uri(uri), version=1).count_rows() == 2  # the history stays readable


def test_finish_records_metadata_and_tags_the_final_version(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    with CacheStore(uri) as store:
        assert store.finish({CONFIG_KEY: "a: 1\n"}).version is None
        store.append(make_rows(["s1"]))
        first = store.finish({CONFIG_KEY: "a: 1\n"})
        assert first.tag == f"cache-v{first.version}"
        assert store.finish({CONFIG_KEY: "a: 1\n"}) == first  # nothing new: no new version or tag
        store.append(make_rows(["s2"]))
        second = store.finish({CONFIG_KEY: "a: 2\n"})
    with CacheStore(uri) as store:  # wrote nothing: the record stays the last writer's
        assert store.finish({CONFIG_KEY: "a: 3\n"}) == second
    assert second.version > first.version
    assert table_metadata(uri)[CONFIG_KEY] == "a: 2\n"
    assert table_metadata(uri, first.tag)[CONFIG_KEY] == "a: 1\n"
    assert lance.dataset(uri, version=LATEST_TAG).version == second.version
    assert open_dataset(uri, first.tag).count_rows() == 1


def test_images_round_trip_exactly_as_png_and_closely_as_jpeg() -> None:
    rng = np.random.default_rng(1)
    gradient = np.linspace(0, 255, 24 * 32 * 3).reshape(1, 24, 32, 3)
    images = np.concatenate([gradient, rng.integers(0, 256, size=(1, 24, 32, 3))]).astype(np.uint8)
    np.testing.assert_array_equal(decode_images(encode_images(images, "png")), images)
    jpeg = decode_images(encode_images(images[:1], "jpeg"))
    assert jpeg.shape == (1, 24, 32, 3)
    assert np.abs(jpeg.astype(int) - images[:1]).mean() < 3
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
        encode_images(images[0], "png")
    with pytest.raises(ValueError, match=r"images\[0\]"):
        decode_images([b"not an image"])


def test_ground_truth_round_trips_and_absent_is_null() -> None:
    rng = np.random.default_rng(2)
    depth = rng.random((2, 4, 5), dtype=np.float32)
    K = rng.random((2, 3, 3))
    poses = rng.random((2, 4, 4))
    row = {"N": 2, "H": 4, "W": 5, **ground_truth_columns(depth, K, poses)}
    gt = decode_ground_truth(row)
    np.testing.assert_array_equal(gt["depth"], depth)
    np.testing.assert_array_equal(gt["K"], K)
    np.testing.assert_array_equal(gt["poses"], poses)
    empty = decode_ground_truth({"N": 2, "H": 4, "W": 5, **ground_truth_columns(None, None, None)})
    assert empty == {"depth": None, "K": None, "poses": None}


def test_codec_columns_must_be_named_sup() -> None:
    assert cache_schema(["sup_b", "sup_a"]).names[-2:] == ["sup_a", "sup_b"]
    with pytest.raises(ValueError, match="sup_"):
        cache_schema(["pts3d"])


def test_a_commit_leaves_out_fragments_whose_key_is_committed_and_finish_removes_their_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "cache.lance")
    schema = cache_schema(SUP)
    with CacheStore(uri) as store:
        store.prepare_fragments()
        first, retried, second = (write_fragment(make_rows([sid]), uri) for sid in ("s1", "s1", "s2"))
        assert first.keys == retried.keys  # a worker retried: the same sample written twice
        committed, version = store.commit([first, retried, second], schema)
        assert (committed, version) == ([first, second], 1)
        other_chunk = write_fragment(make_rows(["s2"]), uri)  # a later chunk holding a committed key
        assert store.commit([other_chunk], schema) == ([], None)
        assert KeyedTable(uri, "cache").commit([write_fragment(make_rows(["s1"]), uri)], schema) == ([], None)
        assert len(list((Path(uri) / "data").iterdir())) == 5
        store.finish({})
    assert sorted(keys_in(uri)) == sorted(cache_key(s, "fp", "test", 1) for s in ["s1", "s2"])
    referenced = {f.path for fragment in lance.dataset(uri).get_fragments() for f in fragment.data_files()}
    assert {p.name for p in (Path(uri) / "data").iterdir()} == referenced and len(referenced) == 2


def test_fragments_written_before_the_first_commit_log_no_warning_and_commit_later(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "cache.lance")
    schema = cache_schema(SUP)
    with CacheStore(uri) as store:
        store.prepare_fragments()
        early = [write_fragment(make_rows([sid]), uri) for sid in ("s1", "s2")]  # no table yet
        assert "will be created" not in capfd.readouterr().err  # Lance's Rust log, on this process's stderr
        assert store.commit(early[:1], schema) == (early[:1], 1)  # creates the table
        assert store.commit(early[1:], schema) == (early[1:], 2)  # written before it existed, appended after
        assert store.commit([write_fragment(make_rows(["s3"]), uri)], schema)[1] == 3
        store.finish({})
    assert sorted(keys_in(uri)) == sorted(cache_key(s, "fp", "test", 1) for s in ["s1", "s2", "s3"])


def test_a_conflicting_commit_is_retried_with_a_fresh_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "cache.lance")
    schema = cache_schema(SUP)
    table = KeyedTable(uri, "cache")
    table.append(make_rows(["s1"]))
    commit = lance.LanceDataset.commit
    calls = []

    def conflicting(*args: object, **kwargs: object) -> lance.LanceDataset:
        calls.append(kwargs.get("read_version"))
        if len(calls) == 1:  # another writer commits s2 between our read and our commit (its commit: calls[1])
            KeyedTable(uri, "cache").append(make_rows(["s2"]))
            raise CommitConflictError("conflict")
        return commit(*args, **kwargs)

    monkeypatch.setattr(lance.LanceDataset, "commit", conflicting)
    fragments = [write_fragment(make_rows([sid]), uri) for sid in ("s2", "s3")]
    committed, version = table.commit(fragments, schema)
    assert calls[0] == 1 and calls[-1] == 2  # the retry read the version the other writer made
    assert (committed, version) == ([fragments[1]], 3)  # s2 is the other writer's now: left out
    def always_conflicting(*args: object, **kwargs: object) -> lance.LanceDataset:
        raise CommitConflictError("conflict")

    monkeypatch.setattr(lance.LanceDataset, "commit", always_conflicting)
    with pytest.raises(CommitConflictError):  # bounded: COMMIT_ATTEMPTS, then the job fails
        table.commit([write_fragment(make_rows(["s4"]), uri)], schema)
    monkeypatch.undo()
    assert sorted(keys_in(uri)) == sorted(cache_key(s, "fp", "test", 1) for s in ["s1", "s2", "s3"])
