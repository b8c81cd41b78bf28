"""Transient faults in the teacher stage are retried, never recorded as bad input: a CUDA out-of-memory
once is retried with half the view chunk and written; one that persists fails the job with a non-zero
exit and a message naming the sample, after committing what was done, with no reject row for it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lance
import pytest
import torch
from fault_teachers import FaultyFactory, successes

from d3r.cache.pipeline import run_cache_job
from d3r.cache.stages import transient_fault
from d3r.cache.store import open_dataset, rejects_uri
from d3r.config import D3RConfig, load_config
from d3r.scenes.sampling import sample_scene
from d3r.scenes.sources import list_scenes

TESTS = Path(__file__).resolve().parent
TINY_SCENES = [
    "--scenes.source", "synthetic", "--scenes.num_scenes", "2", "--scenes.views_per_scene", "4",
    "--scenes.render_size", "[64,48]", "--scenes.long_side", "64", "--scenes.views_per_sample", "2",
    "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2", "--cache.batch_size", "1",
]


def make_config(tmp_path: Path, *overrides: str) -> D3RConfig:
    return load_config(None, [*TINY_SCENES, "--cache.uri", str(tmp_path / "cache.lance"), *overrides], environ={})


def test_transient_faults_are_told_from_input_errors() -> None:
    assert transient_fault(torch.cuda.OutOfMemoryError("CUDA out of memory")) == "out of memory"
    assert transient_fault(RuntimeError("CUDA error: an illegal memory access was encountered")) == "CUDA error"
    assert transient_fault(OSError(5, "Input/output error")) == "storage error"
    assert transient_fault(ValueError("expected uint8 images")) is None
    assert transient_fault(RuntimeError("shape mismatch")) is None


@pytest.mark.usefixtures("ray_local")
def test_an_out_of_memory_once_is_retried_with_half_the_view_chunk_and_written(tmp_path: Path) -> None:
    folder = tmp_path / "teacher"
    config = make_config(tmp_path, "--teacher.view_chunk", "4")
    summary = run_cache_job(config, teacher_factory=FaultyFactory(folder, "oom_once"))
    assert (summary.written, summary.rejected_total) == (4, 0)
    chunks = sorted(chunk for chunk, _ in successes(folder).values())
    assert len(chunks) == 4 and len(list(folder.glob("oom-*"))) == 4  # each sample failed once, then succeeded
    assert chunks[-1] == 2 and chunks[0] == 1  # 4 -> 2 after the first OOM, then down to 1 and no lower
    assert open_dataset(rejects_uri(str(tmp_path / "cache.lance"))) is None


FAILING_JOB = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from fault_teachers import FaultyFactory
    from d3r.cache.pipeline import run_cache_job
    from d3r.entry import run_job
    factory = FaultyFactory(Path({folder!r}), "oom_after", healthy=2)
    sys.exit(run_job("cache", sys.argv[1:], lambda config: run_cache_job(config, teacher_factory=factory)))
""")


@pytest.mark.usefixtures("ray_local")
def test_an_out_of_memory_that_persists_fails_the_job_loudly_and_keeps_what_was_committed(tmp_path: Path) -> None:
    overrides = ["--cache.chunk_samples", "1", "--ray.num_cpus", "2"]
    config = make_config(tmp_path, *overrides)
    folder, uri = tmp_path / "teacher", config.cache.uri
    script = FAILING_JOB.format(tests=str(TESTS), folder=str(folder))
    job = subprocess.run([sys.executable, "-c", script, *TINY_SCENES, "--cache.uri", uri, *overrides],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": "local"},
                         timeout=300)
    assert job.returncode != 0
    message = job.stderr.strip().splitlines()[-1]
    assert "TeacherFaultError" in message and "out of memory persisted through 4 attempts" in message, message
    sample_ids = {s.id for scene in list_scenes(config.scenes) for s in sample_scene(scene, config.scenes)}
    assert any(f"sample {sample_id}" in message for sample_id in sample_ids), message
    committed = open_dataset(uri).count_rows()
    assert committed >= 2  # the samples done before the fault stay committed
    assert f"{committed} samples are safe in {uri}" in message
    assert open_dataset(rejects_uri(uri)) is None  # no reject row for a fault

    summary = run_cache_job(config, teacher_factory=FaultyFactory(tmp_path / "healthy", "none"))
    assert (summary.skipped_done, summary.written) == (committed, 4 - committed)
    keys = lance.dataset(uri).to_table(columns=["key"])["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 4
