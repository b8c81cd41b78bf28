"""The cache job: run the teacher once over every sample and write compressed supervision to Lance.

``run_cache_job(config)``:

1. checks what can be checked before any work: the codec name; that ``cache.uri`` is free or a d3r
   table in a writable place (:func:`~d3r.cache.store.check_location`); that an existing table was
   written with this run's settings (:data:`BOUND_FIELDS`); with ``cache.num_gpus`` > 0, that the
   Ray cluster has GPUs (else exit 2 naming the field, unless ``cache.allow_cpu_fallback``); the
   teacher's fingerprint (:func:`plan_teacher`: from the config and the checkpoint's hash, computed
   once, never loading the weights here; it makes the keys and each actor checks its own against it),
   and that the table's rows come from the same teacher and codec version: a table holds one
   teacher, one encoding;
2. plans: scenes → samples → keys, skipping keys already in the table (and, unless
   ``cache.retry_rejected``, keys already in the rejects table); a source that yields no sample at all
   is a :class:`~d3r.config.ConfigError` saying why; when there is work, connects to Ray
   (before taking the lock: an unreachable ``ray.address`` fails within ``ray.connect_timeout_s``);
   then opens the :class:`~d3r.cache.store.CacheStore` (the lock; orphan files of a killed run removed);
3. runs Ray Data over the pending samples: :func:`~d3r.cache.stages.load_stage` as CPU tasks, then
   :class:`~d3r.cache.stages.TeacherStage` in an actor pool (``cache.num_actors`` actors,
   ``cache.batch_size`` samples per call, ``cache.num_gpus`` per actor, CPUs per actor sized to fit
   the nodes: :func:`actor_cpus`), which writes each good sample as a Lance fragment and returns
   metadata only; when an actor dies, the samples without a result run again (:data:`ACTOR_RESTARTS`);
4. the driver (:class:`ChunkCommitter`) collects that metadata and commits every
   ``cache.chunk_samples`` written samples as one Lance version (keys already in the table left out),
   plus their rejects; it never receives an image or a supervision array. A killed job loses at most
   the uncommitted chunks (their fragments are orphans that the next run removes), and a rerun
   computes only what is missing. A transient fault that persisted in a worker
   (:class:`~d3r.cache.stages.TeacherFaultError`) fails the job after committing what arrived;
5. finally removes orphan fragments (under the lock), drops from the rejects what is now cached,
   records the config and d3r version in the table's metadata (when this run wrote rows), tags the
   version (``cache-v<version>`` and ``latest``) and returns a :class:`CacheSummary`.

Interrupted (:class:`~d3r.errors.JobInterrupted`, SIGTERM/SIGINT under :mod:`d3r.entry`): the lock is
released, a Ray started here is shut down, committed chunks stay, and the re-raised interruption says
how many samples are safe.

Ray: ``ray.address`` when set, else ``ray.init()`` (which honours ``RAY_ADDRESS``, joins a cluster
running on this machine, or starts a local one). A Ray already initialised by the caller is used
as is and left running.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import yaml

import d3r
from d3r.cache.codec import get_codec
from d3r.cache.rows import cache_key, cache_schema
from d3r.cache.stages import BAD_TEACHER, FAULT, OK, TeacherFaultError, TeacherStage, load_stage, pack_sample
from d3r.cache.store import (
    CONFIG_KEY,
    VERSION_KEY,
    CacheStore,
    WrittenFragment,
    check_location,
    open_dataset,
    rejects_uri,
    table_metadata,
)
from d3r.config import D3RConfig, TeacherConfig, config_to_yaml
from d3r.errors import ConfigError, JobInterrupted
from d3r.raysession import ray_session
from d3r.scenes.sampling import FitReport, SamplingTally, sample_scene
from d3r.scenes.sources import list_scenes
from d3r.teachers.base import Teacher, build_teacher, fingerprint_id, resolve_device, teacher_fingerprint

logger = logging.getLogger(__name__)

TeacherFactory = Callable[[TeacherConfig], Teacher]
# Settings a table is bound to: rows written under other values would mix in one table (the teacher is
# bound by its fingerprint, see check_table_teacher).
BOUND_FIELDS = ("cache.codec", "cache.global_target", "cache.align_percentile", "cache.image_format",
                "scenes.val_fraction", "scenes.long_side", "scenes.patch_size")
PROGRESS_EVERY_S = 10.0
# Half a CPU per load task: loading is light next to the teacher, and resources that differ from the
# actors' keep Ray Data from fusing the load into the teacher actors (which would serialise the two).
LOAD_TASK_CPUS = 0.5
ADJUSTED_SHOWN = 10  # scenes whose fitted views the summary names
ACTOR_RESTARTS = 2  # reruns of the samples a dead teacher actor lost


@dataclass
class CacheSummary:
    """What a cache job did. ``format()`` gives the printed summary."""

    uri: str
    samples: int = 0
    written: int = 0
    skipped_done: int = 0
    skipped_rejected: int = 0
    rejected: Counter = field(default_factory=Counter)
    views_written: int = 0
    sup_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    version: int | None = None
    tag: str | None = None
    adjusted: list[str] = field(default_factory=list)
    driver_bytes: int = 0  # the workers' results the driver received (metadata only)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def bytes_per_view(self) -> float:
        """Encoded supervision (all ``sup_*`` columns) per written view, in bytes."""
        return sum(self.sup_bytes.values()) / self.views_written if self.views_written else 0.0

    @property
    def samples_per_s(self) -> float:
        """Samples processed (written or rejected) per second of the job."""
        processed = self.written + sum(count for (stage, _), count in self.rejected.items() if stage != "list")
        return processed / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [
            f"cache {self.uri}: version {self.version} (tag {self.tag})",
            f"  samples planned   {self.samples}",
            f"  written           {self.written} ({self.views_written} views)",
            f"  skipped           {self.skipped_done} already cached, {self.skipped_rejected} rejected before",
            f"  rejected          {self.rejected_total} (details in {rejects_uri(self.uri)})",
        ]
        lines += [f"    {stage}: {kind}  {count}" for (stage, kind), count in sorted(self.rejected.items())]
        lines.append(f"  supervision       {self.bytes_per_view / 1e3:.1f} kB per view")
        if self.views_written:
            lines += [f"    {name:<22}{size / self.views_written / 1e3:6.1f} kB/view"
                      for name, size in sorted(self.sup_bytes.items())]
        lines.append(f"  rate              {self.samples_per_s:.2f} samples/s over {self.seconds:.1f} s")
        if self.adjusted:
            lines.append(f"  views fitted      in {len(self.adjusted)} scenes (turned to the sample's orientation, "
                         "cropped to its aspect, enlarged)")
            lines += [f"    {line}" for line in self.adjusted[:ADJUSTED_SHOWN]]
            if len(self.adjusted) > ADJUSTED_SHOWN:
                lines.append(f"    ... and {len(self.adjusted) - ADJUSTED_SHOWN} more (d3r scenes list)")
        return "\n".join(lines)


@dataclass
class Plan:
    """The pending work: Ray items ``{"key", "payload"}`` plus what was skipped or rejected while listing."""

    items: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0
    skipped_done: int = 0
    skipped_rejected: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)
    adjusted: list[str] = field(default_factory=list)


def check_table_settings(config: D3RConfig) -> None:
    """An existing table must have been written with this run's :data:`BOUND_FIELDS`.

    Raises:
        ConfigError: naming the field that differs.
    """
    if open_dataset(config.cache.uri) is None:
        return
    recorded_yaml = table_metadata(config.cache.uri).get(CONFIG_KEY)
    if recorded_yaml is None:
        return
    recorded = yaml.safe_load(recorded_yaml) or {}
    ours = config.model_dump(mode="json")
    for dotted in BOUND_FIELDS:
        section, name = dotted.split(".")
        theirs = recorded.get(section, {})
        if name in theirs and theirs[name] != ours[section][name]:
            raise ConfigError(
                f"{dotted}: the table {config.cache.uri} was written with {theirs[name]!r}, this run asks for "
                f"{ours[section][name]!r}; use a new cache.uri for other settings"
            )


def _teacher_field(config: D3RConfig, entry: str) -> str:
    """The setting behind a teacher fingerprint entry: ``teacher.<entry>`` for a config field, else (the
    model and its weights) ``teacher.checkpoint`` when the teacher has one."""
    if entry in TeacherConfig.model_fields:
        return f"teacher.{entry}"
    return "teacher.checkpoint" if config.teacher.checkpoint is not None else f"teacher ({entry})"


def check_table_teacher(config: D3RConfig, fingerprint: dict[str, Any]) -> None:
    """Every row of an existing table must come from this run's teacher (``fingerprint``) and codec version.

    Raises:
        ConfigError: naming the teacher field (or ``cache.codec``) that differs.
    """
    dataset = open_dataset(config.cache.uri)
    if dataset is None:
        return
    codec = get_codec(config.cache.codec)
    found = dataset.to_table(columns=["teacher_fingerprint", "codec", "codec_version"]).group_by(
        ["teacher_fingerprint", "codec", "codec_version"]).aggregate([])
    for row in found.to_pylist():
        if (row["codec"], row["codec_version"]) != (codec.name, codec.version):
            raise ConfigError(
                f"cache.codec: the table {config.cache.uri} holds {row['codec']} version {row['codec_version']} "
                f"rows, this run writes {codec.name} version {codec.version}; use a new cache.uri"
            )
    ours = json.loads(json.dumps(fingerprint, default=str))  # as the rows store it
    theirs_ids = set(found["teacher_fingerprint"].to_pylist()) - {fingerprint_id(fingerprint)}
    if not theirs_ids:
        return
    theirs_id = sorted(theirs_ids)[0]
    sample = dataset.to_table(columns=["teacher_fingerprint_json"], filter=pc.field("teacher_fingerprint") == theirs_id,
                              limit=1)
    theirs = json.loads(sample["teacher_fingerprint_json"][0].as_py())
    entries = sorted(key for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key))
    fields = sorted({_teacher_field(config, entry) for entry in entries}) or ["teacher"]
    changes = "; ".join(f"{entry}: {theirs.get(entry)!r} there, {ours.get(entry)!r} here" for entry in entries)
    raise ConfigError(
        f"{', '.join(fields)}: the table {config.cache.uri} was written by another teacher ({changes}); a table "
        "holds one teacher's rows: use a new cache.uri for this teacher"
    )


@dataclass(frozen=True)
class PlannedTeacher:
    """What the driver knows of the teacher without building it: the fingerprint every actor's teacher must
    have, its patch size, and the factory the actors build it with (the checkpoint hash, computed once
    here, bound into it)."""

    fingerprint: dict[str, Any]
    patch_size: int
    factory: TeacherFactory


def plan_teacher(config: D3RConfig, factory: TeacherFactory, num_gpus: float) -> PlannedTeacher:
    """The teacher the actors will build, on a GPU when ``num_gpus`` > 0.

    With the registry's :func:`~d3r.teachers.base.build_teacher`, nothing is loaded here:
    :func:`~d3r.teachers.base.teacher_fingerprint` reads the config (and a checkpoint's ``config.json``)
    and hashes the checkpoint once; the actors get that hash. A caller's own ``factory`` (test teachers)
    is built here once for its fingerprint and patch size.

    Raises:
        ConfigError: naming ``teacher.checkpoint``/``teacher.preset``, or ``teacher.device`` when it asks
            for CUDA but the actors get no GPU.
    """
    if factory is not build_teacher:
        teacher = factory(config.teacher)
        return PlannedTeacher(dict(teacher.fingerprint), teacher.patch_size, factory)
    device = resolve_device(config.teacher.device, cuda_available=num_gpus > 0)
    if device == "cuda" and num_gpus <= 0:
        raise ConfigError("teacher.device='cuda' but cache.num_gpus is 0 (or the cluster has no GPU): the teacher "
                          "actors get no GPU; set cache.num_gpus, or teacher.device auto or cpu")
    fingerprint = teacher_fingerprint(config.teacher, device_kind=device)
    # A fingerprint that names a model names its patch (fast3r's resolved architecture); others take any size.
    patch_size = int(fingerprint.get("model", {}).get("patch_size", 1))
    return PlannedTeacher(fingerprint, patch_size,
                          partial(build_teacher, checkpoint_sha256=fingerprint.get("weights_sha256")))


def check_patch_size(config: D3RConfig, teacher: PlannedTeacher) -> None:
    """Preprocessed images (multiples of ``scenes.patch_size``) must suit the teacher's patch.

    Raises:
        ConfigError: before any work, naming ``scenes.patch_size`` and the teacher's patch.
    """
    if config.scenes.patch_size % teacher.patch_size:
        raise ConfigError(
            f"scenes.patch_size={config.scenes.patch_size} is not a multiple of the {config.teacher.name} teacher's "
            f"patch size {teacher.patch_size}: images would not fit it"
        )


def plan_samples(config: D3RConfig, fingerprint: str, done: set[str], rejected: set[str]) -> Plan:
    """List scenes and samples; keep those whose key is neither done nor (unless retrying) rejected.

    Raises:
        ConfigError: when the source yields no sample, saying why (:meth:`SamplingTally.check`).
    """
    codec = get_codec(config.cache.codec)
    plan = Plan()
    seen: set[str] = set()
    tally = SamplingTally()
    for scene in list_scenes(config.scenes):
        samples = sample_scene(scene, config.scenes)
        tally.add(scene, samples)
        if fitted := FitReport.of(samples).describe():
            plan.adjusted.append(f"{scene.id}: {fitted}")
        for sample in samples:
            key = cache_key(sample.id, fingerprint, codec.name, codec.version)
            if key in seen:
                continue
            seen.add(key)
            plan.samples += 1
            if key in done:
                plan.skipped_done += 1
            elif key in rejected and not config.cache.retry_rejected:
                plan.skipped_rejected += 1
            else:
                plan.items.append({"key": key, "payload": pack_sample(scene, sample)})
        for item, reason in scene.rejects:
            plan.rejects.append({"key": f"{scene.id}|{item}|list", "sample_id": None, "scene_id": scene.id,
                                 "item": item, "stage": "list", "reason": reason})
    tally.check(config.scenes)
    return plan


def teacher_gpus(requested: float, allow_cpu_fallback: bool) -> float:
    """GPUs per teacher actor: ``requested`` when the Ray cluster has GPUs.

    Raises:
        ConfigError: naming ``cache.num_gpus`` when it asks for GPUs the cluster lacks, unless
            ``allow_cpu_fallback`` (then 0, with a warning).
    """
    if requested <= 0 or ray.cluster_resources().get("GPU", 0) > 0:
        return max(requested, 0.0)
    if not allow_cpu_fallback:
        raise ConfigError(
            f"cache.num_gpus={requested} but the Ray cluster has no GPU; set cache.num_gpus 0 to run the teacher on "
            "CPU, or cache.allow_cpu_fallback true to let it fall back to CPU"
        )
    logger.warning("cache.num_gpus=%s but the Ray cluster has no GPU: the teacher runs on CPU "
                   "(cache.allow_cpu_fallback)", requested)
    return 0.0


def node_cpus() -> list[float]:
    """The CPUs of each live node of the Ray cluster."""
    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]


def actor_cpus(num_actors: int, num_gpus: float, nodes: list[float]) -> float:
    """CPUs per teacher actor on a cluster whose nodes have ``nodes`` CPUs, so that all ``num_actors`` fit
    on the nodes (an actor runs on one node) and at least one load task still can.

    GPU actors take 1 CPU. CPU actors take the most whole CPUs that still fit, because Ray sets an actor's
    ``OMP_NUM_THREADS`` (so torch's thread count) from its CPUs: one CPU would mean one thread. When not
    even one CPU each fits, they share what there is.
    """
    total = sum(nodes)
    share = (total - LOAD_TASK_CPUS) / num_actors
    if num_gpus > 0 or share < 1:
        return min(1.0, share)
    for cpus in range(int(max(nodes)), 0, -1):
        if sum(int(node // cpus) for node in nodes) >= num_actors and total - cpus * num_actors >= LOAD_TASK_CPUS:
            return float(cpus)
    return min(1.0, share)


def _reject_record(row: dict[str, Any]) -> dict[str, Any]:
    return {"key": row["key"], "sample_id": row["sample_id"], "scene_id": row["scene_id"],
            "item": ",".join(row["view_names"] or []), "stage": row["stage"], "reason": row["reason"]}


class ChunkCommitter:
    """The driver's side of the job: collects the teacher actors' :data:`~d3r.cache.stages.RESULT_SCHEMA`
    rows (fragment metadata and small facts, never images or supervision) and commits every
    ``chunk_samples`` written samples as one version, plus the rejects met so far (also when they alone
    reach ``chunk_samples``); ``metadata`` goes into the table schema with the version that creates it.
    ``summary.driver_bytes`` counts the bytes of the results received."""

    def __init__(self, store: CacheStore, summary: CacheSummary, chunk_samples: int, pending: int,
                 metadata: dict[str, str], started: float):
        self.store, self.summary, self.metadata = store, summary, metadata
        self.chunk_samples, self.pending = chunk_samples, pending
        self.good: list[tuple[WrittenFragment, dict[str, Any]]] = []
        self.rejects: list[dict[str, Any]] = []
        self.started = started  # the job's start: the log's rate is the summary's
        self.rejected = 0
        self.received: set[str] = set()  # keys with a result (written, rejected or faulted)
        self.last_log = 0.0
        self.logged_done = 0

    def add(self, results: pa.Table) -> None:
        """Take one batch of results (:data:`~d3r.cache.stages.RESULT_SCHEMA`).

        Raises:
            TeacherFaultError: when a sample met a transient fault that persisted, after committing every
                written sample received (naming the sample, the fault and what is safe).
            ConfigError: when an actor could not build the teacher (e.g. a checkpoint that does not load).
        """
        self.summary.driver_bytes += results.nbytes
        faults = []
        for row in results.to_pylist():
            self.received.add(row["key"])
            if row["status"] == BAD_TEACHER:
                self.commit()
                raise ConfigError(f"{row['reason']} (found by a teacher actor; {_safe_samples(self.store.uri)})")
            if row["status"] == FAULT:
                faults.append(row["reason"])
            elif row["status"] == OK:
                fragment = WrittenFragment((row["key"],), row["fragment"])
                self.good.append((fragment, {"N": row["N"], "sup_bytes": json.loads(row["sup_bytes"])}))
            else:
                self.summary.rejected[(row["stage"], row["kind"])] += 1
                self.rejected += 1
                self.rejects.append(_reject_record(row))
                logger.info("rejected sample %s (%s): %s", row["sample_id"], row["stage"], row["reason"])
        while len(self.good) >= self.chunk_samples:
            self.commit()
        if len(self.rejects) >= self.chunk_samples:
            self.commit()
        if faults:
            self.commit()  # what arrived is safe (fewer than a chunk are left); then fail loudly
            raise TeacherFaultError(f"{faults[0]} ({len(faults)} such samples in the batch); "
                                    f"{_safe_samples(self.store.uri)}")

    def commit(self) -> None:
        """Commit up to ``chunk_samples`` written samples as one version, and every reject collected."""
        chunk, self.good = self.good[: self.chunk_samples], self.good[self.chunk_samples:]
        if chunk:
            facts = dict(zip((fragment for fragment, _ in chunk), (fact for _, fact in chunk), strict=True))
            schema = cache_schema(list(chunk[0][1]["sup_bytes"])).with_metadata(self.metadata)
            committed, version = self.store.commit([fragment for fragment, _ in chunk], schema)
            for fragment in committed:
                fact = facts[fragment]
                self.summary.written += 1
                self.summary.views_written += fact["N"]
                for name, size in fact["sup_bytes"].items():
                    self.summary.sup_bytes[name] = self.summary.sup_bytes.get(name, 0) + size
            if version is not None:
                self.summary.version = version
        self.store.append_rejects(self.rejects)
        self.rejects = []
        self._log_progress()

    def _log_progress(self) -> None:
        now = time.monotonic()
        done = self.summary.written + self.rejected
        finished = done >= self.pending
        if done == self.logged_done or (now - self.last_log < PROGRESS_EVERY_S and not finished):
            return
        self.last_log, self.logged_done = now, done
        rate = done / max(now - self.started, 1e-9)
        logger.info("cache: %d/%d samples done (%d rejected), %.2f samples/s, version %s",
                    done, self.pending, self.rejected, rate, self.summary.version)


def run_pending(config: D3RConfig, items: list[dict[str, Any]], committer: ChunkCommitter, fingerprint: str,
                factory: TeacherFactory, num_gpus: float) -> None:
    """Ray Data over ``items``: load (CPU tasks) → teacher, codec and fragment writes (actor pool) → the
    driver's chunked commits.

    A teacher actor that dies (a lost node, a killed process) ends that Ray Data run; the driver commits
    what arrived and runs the samples it has no result for again, at most :data:`ACTOR_RESTARTS` times
    (so a sample that kills its actor every time fails the job instead of restarting it forever). The lost
    attempt's fragments are never committed (orphans, removed at the end).

    Raises:
        TeacherFaultError: see :meth:`ChunkCommitter.add`.
        ray.exceptions.RayActorError: when actors still die after :data:`ACTOR_RESTARTS` reruns.
    """
    pending = items
    for rerun in range(ACTOR_RESTARTS + 1):
        try:
            _run_dataset(config, pending, committer, fingerprint, factory, num_gpus)
            return
        except ray.exceptions.RayActorError as exc:
            committer.commit()  # what arrived is safe
            pending = [item for item in pending if item["key"] not in committer.received]
            if rerun == ACTOR_RESTARTS or not pending:
                raise
            logger.warning("a teacher actor died (%s); running the %d samples without a result again (rerun %d of "
                           "%d)", type(exc).__name__, len(pending), rerun + 1, ACTOR_RESTARTS)


def _run_dataset(config: D3RConfig, items: list[dict[str, Any]], committer: ChunkCommitter, fingerprint: str,
                 factory: TeacherFactory, num_gpus: float) -> None:
    cache = config.cache
    dataset = ray.data.from_items(items)
    dataset = dataset.map_batches(
        load_stage, batch_format="pyarrow", batch_size=1, num_cpus=LOAD_TASK_CPUS,
        fn_kwargs={"scenes": config.scenes, "image_format": cache.image_format},
    )
    dataset = dataset.map_batches(
        TeacherStage, batch_format="pyarrow", batch_size=cache.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cache.num_actors),
        num_cpus=actor_cpus(cache.num_actors, num_gpus, node_cpus()), num_gpus=num_gpus,
        # Not restarted by Ray (run_pending reruns what a dead actor lost): restartable actors make Ray core
        # log an ERROR at every actor start in Ray 2.60 ("constructor arguments in the object store and
        # max_restarts > 0", ray issue 53727), since Ray Data passes its actors their arguments as refs.
        max_restarts=0,
        fn_constructor_kwargs={"teacher": config.teacher, "cache": cache, "expected_fingerprint": fingerprint,
                               "factory": factory},
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        committer.add(batch)
    committer.commit()  # the last, partial chunk


def run_cache_job(config: D3RConfig, *, teacher_factory: TeacherFactory = build_teacher) -> CacheSummary:
    """Run the cache job described by ``config`` (see the module docstring) and summarise it.

    ``teacher_factory`` builds the teacher from ``config.teacher`` (default: the registry, whose teachers
    are never built on the driver: see :func:`plan_teacher`); it runs in each actor, so it must be
    picklable.

    Raises:
        ConfigError: before any work, for a bad codec, cache.uri, source, bound setting, teacher/checkpoint
            or an unreachable ray.address.
        CacheLockedError: when another job is writing the same table.
        JobInterrupted: re-raised with how many samples are safe in the table.
    """
    started = time.monotonic()
    try:
        get_codec(config.cache.codec)
    except ValueError as exc:
        raise ConfigError(f"cache.codec: {exc}") from None
    check_location(config.cache.uri)
    check_table_settings(config)
    try:
        return _run(config, teacher_factory, started)
    except JobInterrupted as exc:
        raise JobInterrupted(exc.signum, _safe_samples(config.cache.uri)) from None


def _safe_samples(uri: str) -> str:
    dataset = open_dataset(uri)
    rows = 0 if dataset is None else dataset.count_rows()
    return f"{rows} samples are safe in {uri}; run the same command again to resume"


def _run(config: D3RConfig, teacher_factory: TeacherFactory, started: float) -> CacheSummary:
    list_scenes(config.scenes)  # checks scenes.source / scenes.root now
    summary = CacheSummary(uri=config.cache.uri)
    metadata = {CONFIG_KEY: config_to_yaml(config), VERSION_KEY: d3r.__version__}
    store = CacheStore(config.cache.uri)
    with ExitStack() as ray_scope:
        num_gpus = config.cache.num_gpus
        if num_gpus > 0:  # whether the actors get a GPU (it is in the fingerprint) is the cluster's to say
            ray_scope.enter_context(ray_session(config.ray))
            num_gpus = teacher_gpus(num_gpus, config.cache.allow_cpu_fallback)
        teacher = plan_teacher(config, teacher_factory, num_gpus)
        check_patch_size(config, teacher)
        check_table_teacher(config, teacher.fingerprint)
        fingerprint = fingerprint_id(teacher.fingerprint)
        # Planned before the lock (reads only), so that Ray is reached without holding it; appends drop
        # keys that another job committed meanwhile.
        plan = plan_samples(config, fingerprint, store.done_keys(), store.rejected_keys())
        summary.samples, summary.skipped_done, summary.skipped_rejected, summary.adjusted = (
            plan.samples, plan.skipped_done, plan.skipped_rejected, plan.adjusted)
        logger.info("cache %s: %d samples, %d to compute, %d already cached, %d rejected before",
                    config.cache.uri, plan.samples, len(plan.items), plan.skipped_done, plan.skipped_rejected)
        if plan.items:
            ray_scope.enter_context(ray_session(config.ray))
        with store:
            new_list_rejects = store.append_rejects(plan.rejects)
            if new_list_rejects:
                summary.rejected[("list", "unusable scene")] += new_list_rejects
            if plan.items:
                store.prepare_fragments()
                committer = ChunkCommitter(store, summary, config.cache.chunk_samples, len(plan.items), metadata,
                                           started)
                run_pending(config, plan.items, committer, fingerprint, teacher.factory, num_gpus)
            finished = store.finish(metadata)
    summary.version, summary.tag = finished.version, finished.tag
    summary.seconds = time.monotonic() - started
    return summary
