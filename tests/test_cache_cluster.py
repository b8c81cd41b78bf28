"""The cache job as a cluster program: workers write fragments and the driver commits metadata only,
actors sized per node, GPUs asked of a cluster without any, and the whole job on a two-node Ray
cluster with a worker killed mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from fault_teachers import successes

from d3r.cache.pipeline import ChunkCommitter, actor_cpus, run_cache_job
from d3r.cache.stages import RESULT_SCHEMA
from d3r.cache.store import CacheStore, WrittenFragment
from d3r.config import D3RConfig, load_config
from d3r.entry import EXIT_CONFIG, exit_code_for
from d3r.errors import ConfigError

TESTS = Path(__file__).resolve().parent
TINY_SCENES = [
    "--scenes.source", "synthetic", "--scenes.num_scenes", "2", "--scenes.views_per_scene", "4",
    "--scenes.render_size", "[64,48]", "--scenes.long_side", "64", "--scenes.views_per_sample", "2",
    "--scenes.stride", "1", "--scenes.max_samples_per_scene", "2",
]


def make_config(tmp_path: Path, *overrides: str) -> D3RConfig:
    return load_config(None, [*TINY_SCENES, "--cache.uri", str(tmp_path / "cache.lance"), *overrides], environ={})


def orphan_free(uri: str) -> bool:
    dataset = lance.dataset(uri)
    referenced = {f.path for fragment in dataset.get_fragments() for f in fragment.data_files()}
    return referenced == {p.name for p in (Path(uri) / "data").iterdir()}


@pytest.mark.parametrize(("nodes", "actors", "cpus"), [
    ([16, 16, 16, 16], 2, 16.0),  # one actor per node; two nodes stay free for loading (the cluster total would say 31)
    ([16, 16, 16, 16], 4, 15.0),  # one per node, half a CPU left for loading
    ([16, 16, 16, 16], 8, 7.0),  # two per node
    ([16], 2, 7.0),  # one box, as before
    ([2], 1, 1.0),  # a laptop
    ([10, 10], 3, 5.0),  # 6 per actor would fit the total (20) but only one per node
    ([2, 2], 2, 1.0),  # the two-node test cluster
    ([1], 2, 0.25),  # less than a CPU each: they share
])
def test_cpu_actors_are_sized_to_fit_on_the_nodes(nodes: list[float], actors: int, cpus: float) -> None:
    assert actor_cpus(actors, 0.0, nodes) == cpus
    placed = sorted(nodes, reverse=True)
    for _ in range(actors):  # every actor fits on some node (first fit)
        node = next(i for i, free in enumerate(placed) if free >= cpus)
        placed[node] -= cpus


def test_gpu_actors_take_one_cpu() -> None:
    assert actor_cpus(4, 1.0, [16, 16]) == 1.0


@pytest.mark.usefixtures("ray_local")
def test_gpus_asked_of_a_cluster_without_any_exit_2_unless_cpu_is_allowed(tmp_path: Path) -> None:
    config = make_config(tmp_path, "--cache.num_gpus", "1")
    with pytest.raises(ConfigError, match="cache.num_gpus=1.0 but the Ray cluster has no GPU"):
        run_cache_job(config)
    assert exit_code_for("cache", lambda: run_cache_job(config)) == EXIT_CONFIG
    assert list(tmp_path.iterdir()) == []
    summary = run_cache_job(make_config(tmp_path, "--cache.num_gpus", "1", "--cache.allow_cpu_fallback", "true"))
    assert summary.written == 4


@pytest.mark.usefixtures("ray_local")
def test_the_driver_commits_fragment_metadata_and_receives_no_array(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    commits: list[list] = []
    results: list[pa.Schema] = []
    commit, add = CacheStore.commit, ChunkCommitter.add

    def spy_commit(store: CacheStore, fragments: list, schema: pa.Schema) -> tuple:
        commits.append(list(fragments))
        return commit(store, fragments, schema)

    def spy_add(committer: ChunkCommitter, batch: pa.Table) -> None:
        results.append(batch.schema)
        add(committer, batch)

    monkeypatch.setattr(CacheStore, "commit", spy_commit)
    monkeypatch.setattr(ChunkCommitter, "add", spy_add)
    config = make_config(tmp_path, "--cache.chunk_samples", "3")
    summary = run_cache_job(config)
    assert summary.written == 4 and [len(chunk) for chunk in commits] == [3, 1]
    assert all(type(fragment) is WrittenFragment for chunk in commits for fragment in chunk)
    assert results and all(schema.equals(RESULT_SCHEMA) for schema in results)
    assert not [f.name for f in RESULT_SCHEMA if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    stored = sum(summary.sup_bytes.values()) + sum(
        len(image) for row in lance.dataset(config.cache.uri).to_table(columns=["images"])["images"].to_pylist()
        for image in row)
    assert summary.driver_bytes < stored / 10, (summary.driver_bytes, stored)
    keys = lance.dataset(config.cache.uri).to_table(columns=["key"])["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 4
    assert len(lance.dataset(config.cache.uri).get_fragments()) == 4  # one fragment per sample


CLUSTER_JOB = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import ray
    from ray.cluster_utils import Cluster
    from fault_teachers import FaultyFactory
    from d3r.cache.pipeline import run_cache_job
    from d3r.cache.store import CacheStore, WrittenFragment
    from d3r.config import load_config

    committed_types = set()
    commit = CacheStore.commit
    def spy(store, fragments, schema):
        committed_types.update(type(f).__name__ for f in fragments)
        return commit(store, fragments, schema)
    CacheStore.commit = spy

    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 2, "include_dashboard": False}})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        config = load_config(None, {argv!r}, environ={{}})
        summary = run_cache_job(config, teacher_factory=FaultyFactory(Path({folder!r}), "kill_once", healthy=3))
        result = {{"samples": summary.samples, "written": summary.written, "driver_bytes": summary.driver_bytes,
                   "committed_types": sorted(committed_types), "nodes": len(ray.nodes())}}
        Path({out!r}).write_text(json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def test_the_job_on_a_two_node_cluster_survives_a_killed_worker_without_duplicates(tmp_path: Path) -> None:
    folder, out = tmp_path / "teacher", tmp_path / "result.json"
    argv = [*TINY_SCENES, "--scenes.views_per_scene", "16", "--scenes.max_samples_per_scene", "4",
            "--cache.uri", str(tmp_path / "cache.lance"), "--cache.num_actors", "2", "--cache.batch_size", "1",
            "--cache.chunk_samples", "2"]  # 8 samples, 2 actors, a version per 2 samples
    script = CLUSTER_JOB.format(tests=str(TESTS), argv=argv, folder=str(folder), out=str(out))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    job = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert job.returncode == 0, job.stderr[-4000:]
    result = json.loads(out.read_text())
    assert (folder / "killed").exists(), "no worker was killed"
    assert result["nodes"] == 2 and result["samples"] == result["written"] == 8
    assert result["committed_types"] == ["WrittenFragment"]
    assert len({node for _, node in successes(folder).values()}) == 2, "the actors did not run on both nodes"
    uri = str(tmp_path / "cache.lance")
    keys = lance.dataset(uri).to_table(columns=["key"])["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 8
    assert orphan_free(uri)  # the killed attempt's fragments, if any, were removed
