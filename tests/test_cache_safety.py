"""The cache job against careless or hostile input (issue 12): for each case the exit status, a fragment
of the message, and what is left of the table and of the user's files (nothing deleted, nothing doubled).

Sections: 3 d3r never writes into or deletes what it did not create; 4 one table, one teacher, one
encoding; 6 bad places and unreachable services fail before any work; 7 SIGTERM/SIGINT end cleanly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lance
import pyarrow as pa
import pytest
import torch
import yaml
from ray import cloudpickle

from d3r.cache.pipeline import run_cache_job
from d3r.cache.store import CONFIG_KEY, CacheStore, open_dataset, rejects_uri, table_metadata
from d3r.config import TeacherConfig, load_config
from d3r.entry import run_job

REPO = Path(__file__).resolve().parents[1]
TINY = [  # 2 rooms x 2 samples of 2 views at 64x48
    "--scenes.num_scenes", "2", "--scenes.views_per_scene", "4", "--scenes.render_size", "[64,48]",
    "--scenes.long_side", "64", "--scenes.views_per_sample", "2", "--scenes.max_samples_per_scene", "2",
]

# The test teacher below must reach the Ray workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_local")


def cache_job_main() -> Callable[[list[str]], int]:
    """``main`` of jobs/cache.py (run in this process, so on the session's Ray)."""
    spec = importlib.util.spec_from_file_location("cache_job_entry", REPO / "jobs" / "cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def no_teacher(config: TeacherConfig) -> None:
    raise AssertionError("the teacher was built: the job started work before refusing")


def run_refused_before_work(argv: list[str]) -> int:
    """The cache job's exit status for ``argv``, with a teacher factory that fails the test if called."""
    return run_job("jobs/cache.py", argv, lambda config: run_cache_job(config, teacher_factory=no_teacher))


def files_under(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (folders as ``b"<dir>"``)."""
    return {str(p.relative_to(root)): b"<dir>" if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def table_state(uri: str) -> tuple[list[int], list[str], dict[str, str]]:
    """(versions, sorted keys, schema metadata) of the table at ``uri``."""
    dataset = lance.dataset(uri)
    keys = sorted(dataset.to_table(columns=["key"])["key"].to_pylist())
    return [v["version"] for v in dataset.versions()], keys, table_metadata(uri)


def assert_each_key_once(uri: str, count: int) -> None:
    keys = lance.dataset(uri).to_table(columns=["key"])["key"].to_pylist()
    assert len(keys) == len(set(keys)) == count


def orphan_free(uri: str) -> bool:
    dataset = lance.dataset(uri)
    referenced = {f.path for fragment in dataset.get_fragments() for f in fragment.data_files()}
    return referenced == {p.name for p in (Path(uri) / "data").iterdir()}


# ---------------------------------------------------------------- 3 and 6: places d3r must not write to


def user_results_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "results.lance"  # a user's folder that merely looks like a table
    folder.mkdir(parents=True)
    (folder / "results.csv").write_text("scene,score\nroom,0.9\n")
    (folder / "notes.txt").write_text("do not delete\n")
    return folder


def user_lance_table(tmp_path: Path) -> Path:
    uri = tmp_path / "cache.lance"
    lance.write_dataset(pa.table({"id": [1, 2, 3], "score": [0.1, 0.2, 0.3]}), uri)
    return uri


def user_folder_at_the_rejects_path(tmp_path: Path) -> Path:
    folder = tmp_path / "cache.rejects.lance"
    folder.mkdir()
    (folder / "mine.txt").write_text("a user's file\n")
    return tmp_path / "cache.lance"


def regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "cache.lance"
    path.write_text("a user's file\n")
    return path


def under_a_regular_file(tmp_path: Path) -> Path:
    (tmp_path / "results.csv").write_text("scene,score\n")
    return tmp_path / "results.csv" / "out" / "cache.lance"


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """``folder`` made unwritable like a read-only mount: mode 0555, or immutable (chattr +i) for root,
    whom modes do not stop."""
    folder.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        made, undo = True, None
    try:
        if not made or os.access(folder, os.W_OK):
            pytest.skip(f"cannot make {folder} unwritable here")
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        folder.chmod(0o755)


PLACES = [  # (case, setup → cache.uri, exit status, message fragments)
    ("a user's folder", lambda tmp: user_results_folder(tmp), 2, ["cache.uri", "results.lance", "not a table d3r"]),
    ("a Lance table d3r did not write", user_lance_table, 2, ["cache.uri", "cache.lance", "not a table d3r"]),
    ("a user's folder at the rejects path", user_folder_at_the_rejects_path, 2,
     ["cache.uri", "cache.rejects.lance", "not a table d3r"]),
    ("a regular file", regular_file, 2, ["cache.uri", "is not a folder"]),
    ("under a regular file", under_a_regular_file, 2, ["cache.uri", "results.csv", "which is a file"]),
]


@pytest.mark.parametrize(("setup", "status", "fragments"), [case[1:] for case in PLACES],
                         ids=[case[0] for case in PLACES])
def test_a_cache_uri_that_is_not_d3rs_fails_before_any_work_and_touches_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture, setup: Callable[[Path], Path], status: int,
        fragments: list[str]) -> None:
    uri = setup(tmp_path)
    before = files_under(tmp_path)
    assert run_refused_before_work([*TINY, "--cache.uri", str(uri)]) == status
    err = capsys.readouterr().err
    assert all(fragment in err for fragment in fragments), err
    assert files_under(tmp_path) == before  # nothing deleted, nothing written, no lock file


def test_an_unwritable_place_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with unwritable(tmp_path / "read-only"):
        before = files_under(tmp_path)
        uri = tmp_path / "read-only" / "out" / "cache.lance"
        assert run_refused_before_work([*TINY, "--cache.uri", str(uri)]) == 2
        assert files_under(tmp_path) == before
    err = capsys.readouterr().err
    assert "cache.uri" in err and "not writable" in err, err


def test_a_file_system_without_locks_fails_naming_cache_uri(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(fd: object, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    uri = tmp_path / "cache.lance"
    assert cache_job_main()([*TINY, "--cache.uri", str(uri)]) == 2
    err = capsys.readouterr().err
    assert "cache.uri" in err and "ENOLCK" in err, err
    assert open_dataset(str(uri)) is None and open_dataset(rejects_uri(str(uri))) is None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_ray_address_exits_2_without_taking_the_lock(tmp_path: Path) -> None:
    """In a process of its own: this one's Ray is already running, so the job would not connect."""
    uri = tmp_path / "cache.lance"
    address = f"127.0.0.1:{closed_port()}"
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "cache.py"), *TINY, "--cache.uri", str(uri), "--ray.address", address,
         "--ray.connect_timeout_s", "5"],
        capture_output=True, text=True, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "ray.address" in result.stderr and address in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # connected before locking: no lock, no table


# ---------------------------------------------------------------- 3: own tables only, orphans of a killed create


def test_a_resume_after_a_kill_in_the_creating_commit_leaves_no_orphan_and_the_users_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    user_results_folder(tmp_path)
    lance.write_dataset(pa.table({"id": [1, 2]}), data / "other.lance")
    (data / "results.csv").write_text("scene,score\n")
    users = files_under(data)
    config = load_config(None, [*TINY, "--cache.uri", str(data / "cache.lance")], environ={})
    assert run_cache_job(config).written == 4  # one chunk: the creating commit
    cache = data / "cache.lance"
    for folder in ("_versions", "_transactions"):  # as if killed before the manifest was written
        shutil.rmtree(cache / folder)
    killed_files = {p.name for p in (cache / "data").iterdir()}
    assert open_dataset(str(cache)) is None and killed_files

    summary = run_cache_job(config)
    assert (summary.written, summary.skipped_done) == (4, 0)
    assert_each_key_once(str(cache), 4)
    assert orphan_free(str(cache)) and not killed_files & {p.name for p in (cache / "data").iterdir()}
    assert {k: v for k, v in files_under(data).items() if k in users} == users


# ---------------------------------------------------------------- 4: one table, one teacher, one encoding


@pytest.fixture(scope="module")
def finished_table(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> tuple[str, tuple]:
    """A finished oracle table of 4 samples, and its state."""
    uri = str(tmp_path_factory.mktemp("bound") / "cache.lance")
    config = load_config(None, [*TINY, "--cache.uri", uri], environ={})
    assert run_cache_job(config).written == 4
    return uri, table_state(uri)


BOUND = [  # (another value of a setting the table is bound to, the field named)
    (["--teacher.noise", "0.01"], "teacher.noise"),
    (["--teacher.seed", "1"], "teacher.seed"),
    (["--cache.codec", "fp16"], "cache.codec"),
    (["--cache.global_target", "global_head"], "cache.global_target"),
    (["--cache.align_percentile", "50"], "cache.align_percentile"),
    (["--cache.image_format", "jpeg"], "cache.image_format"),
    (["--scenes.val_fraction", "0.5"], "scenes.val_fraction"),
    (["--scenes.long_side", "48"], "scenes.long_side"),
    (["--scenes.patch_size", "8"], "scenes.patch_size"),
]


@pytest.mark.parametrize(("overrides", "field"), BOUND, ids=[field for _, field in BOUND])
def test_a_rerun_with_another_bound_setting_exits_2_and_leaves_the_table(
        finished_table: tuple[str, tuple], capsys: pytest.CaptureFixture, overrides: list[str], field: str) -> None:
    uri, state = finished_table
    assert cache_job_main()([*TINY, "--cache.uri", uri, *overrides]) == 2
    err = capsys.readouterr().err
    assert field in err and "new cache.uri" in err, err
    assert table_state(uri) == state  # nothing doubled, the record untouched


def test_a_rerun_that_writes_nothing_keeps_the_recorded_config(finished_table: tuple[str, tuple]) -> None:
    uri, state = finished_table
    assert cache_job_main()([*TINY, "--cache.uri", uri, "--cache.batch_size", "1"]) == 0
    assert table_state(uri) == state
    assert yaml.safe_load(table_metadata(uri)[CONFIG_KEY])["cache"]["batch_size"] == 2


class NaNWhileMarkedTeacher:
    """A test teacher: a plane at depth 1, all NaN while the file ``marker`` exists."""

    name = "nan-while-marked"
    needs_ground_truth = False
    patch_size = 1
    fingerprint = {"name": "nan-while-marked", "version": 1}

    def __init__(self, marker: Path):
        self.marker = marker

    def predict(self, images: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        b, n, _, h, w = images.shape
        points = torch.ones(b, n, h, w, 3) * torch.tensor([0.0, 0.0, 1.0]) + torch.rand(b, n, h, w, 3) * 0.01
        if self.marker.exists():
            points[:] = float("nan")
        conf = torch.full((b, n, h, w), 3.0)
        return {"pts3d_global": points, "conf_global": conf, "pts3d_local": points.clone(), "conf_local": conf}


def test_a_successful_retry_leaves_no_key_in_both_tables(tmp_path: Path) -> None:
    marker = tmp_path / "fail"
    marker.touch()

    def factory(config: TeacherConfig) -> NaNWhileMarkedTeacher:
        return NaNWhileMarkedTeacher(marker)

    config = load_config(None, [*TINY, "--cache.uri", str(tmp_path / "cache.lance")], environ={})
    assert run_cache_job(config, teacher_factory=factory).rejected_total == 4
    marker.unlink()
    retry = config.model_copy(update={"cache": config.cache.model_copy(update={"retry_rejected": True})})
    assert run_cache_job(retry, teacher_factory=factory).written == 4
    cached = set(lance.dataset(config.cache.uri).to_table(columns=["key"])["key"].to_pylist())
    rejected = set(lance.dataset(rejects_uri(config.cache.uri)).to_table(columns=["key"])["key"].to_pylist())
    assert len(cached) == 4 and not cached & rejected
    # the rejects' history stays readable in their earlier versions
    assert lance.dataset(rejects_uri(config.cache.uri), version=1).count_rows() == 4


# ---------------------------------------------------------------- 7: interrupts end cleanly


def session_processes(sid: int) -> list[str]:
    """Live (non-zombie) processes of session ``sid``, as ``"pid name"``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            name, fields = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
                found.append(f"{entry.name} {name}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_job_stops_cleanly_and_a_rerun_completes(tmp_path: Path, stop: signal.Signals,
                                                                status: int) -> None:
    overrides = ["--scenes.views_per_scene", "16", "--scenes.max_samples_per_scene", "8",
                 "--cache.chunk_samples", "1", "--cache.batch_size", "1"]  # 16 samples, one version each
    config = load_config(None, [*TINY, "--cache.uri", str(tmp_path / "cache.lance"), *overrides], environ={})
    command = [sys.executable, str(REPO / "jobs" / "cache.py"), *TINY, "--cache.uri", config.cache.uri, *overrides,
               "--ray.num_cpus", "2"]
    job = subprocess.Popen(command, env={**os.environ, "RAY_ADDRESS": "local"}, cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while (dataset := open_dataset(config.cache.uri)) is None or dataset.count_rows() == 0:
            assert job.poll() is None, "the job ended before its first commit"
            assert time.monotonic() < deadline, "no commit within 240 s"
            time.sleep(0.1)
        assert any("raylet" in p for p in session_processes(job.pid)), "the job's local Ray is not running"
        job.send_signal(stop)
        _, err = job.communicate(timeout=120)
        deadline = time.monotonic() + 60
        while left := session_processes(job.pid):
            assert time.monotonic() < deadline, f"processes outlived the job: {left}"
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert job.returncode == status, err[-3000:]
    committed = lance.dataset(config.cache.uri).count_rows()
    assert 0 < committed < 16, "the signal did not land mid-run"
    assert f"interrupted by {stop.name}: {committed} samples are safe" in err and "resume" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    with CacheStore(config.cache.uri):  # the lock was released
        pass

    summary = run_cache_job(config)
    assert (summary.skipped_done, summary.written) == (committed, 16 - committed)
    assert_each_key_once(config.cache.uri, 16)
    assert orphan_free(config.cache.uri)

