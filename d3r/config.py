"""Configuration for every d3r job: pydantic models, loaded from YAML, overridden by env and CLI.

Precedence (highest first): command line ``--section.field value`` > environment
``D3R_SECTION__FIELD=value`` > the YAML file > the defaults below. Every value is typed by the field it
sets: a text field (``str``, a path, a choice) takes the text as written, so ``2024``, ``yes`` and
``off`` stay strings; any other field reads it as YAML, so ``--cache.batch_size 4`` is an int and
``--scenes.render_size [320,240]`` a list, and ``null`` is None. Every model forbids unknown keys, so a
misspelt key fails before any work starts; an error names the field, the value, where the value came
from (the command line, an environment variable, a config file) and what is allowed. A ``D3R_`` variable
without the double underscore sets nothing and is logged as a warning.

pydantic-settings was weighed and not used: it reads YAML 1.1 (``experiment: 2024`` an int), parses
``--train.cache_version 3`` as the text "3" and ``D3R_TRAIN__MAX_STEPS=null`` as an error, and its
errors cannot say which source a bad value came from.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from d3r.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_PREFIX = "D3R_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SourceName = Literal[
    "synthetic", "folders", "video", "colmap",
    "co3d", "scannetpp", "arkitscenes", "megadepth", "blendedmvs", "habitat",
]


class ScenesConfig(Section):
    """Where scenes come from, how views are grouped into samples, and how images are preprocessed."""

    source: SourceName = Field("synthetic", description="where scenes come from: synthetic rooms, image folders, "
                               "videos, COLMAP models, or a dataset's own layout")
    root: Path | None = Field(None, description="the folder of scenes, videos or a dataset (not synthetic)")
    dataset_name: str | None = Field(None, description="the name sample ids give the data under root (default: "
                                     "root's folder name): ids come from it, each scene's path under root and its "
                                     "views, never root's absolute path, so another working directory or mount "
                                     "reuses the cache")
    content_hash_ids: bool = Field(False, description="sample ids sign each view's file by a hash of its bytes "
                                   "(reads every file when planning) instead of its size and modification time "
                                   "(a copy that keeps mtimes, `cp -a`, `mv` or another mount, reuses the cache; "
                                   "`cp` without -p recomputes it)")
    # synthetic rooms
    num_scenes: int = Field(4, ge=1, description="synthetic: rooms to render")
    views_per_scene: int = Field(12, ge=1, description="synthetic: views rendered per room")
    render_size: tuple[PositiveInt, PositiveInt] = Field((320, 240), description="synthetic render size (W, H)")
    camera_path: Literal["orbit", "walkthrough", "lookat", "mixed"] = Field(
        "mixed", description="synthetic: how the camera moves through a room")
    seed: int = Field(0, description="seed of the synthetic rooms and of `random` sampling")
    # video
    video_stride: int | None = Field(None, ge=1, description="keep every k-th frame")
    video_fps: float | None = Field(None, gt=0, description="or: sample frames at this rate")
    # preprocessing: aspect-preserving resize of the long side, centre crop to patch multiples
    long_side: int = Field(224, ge=16, description="images are resized (aspect kept) so their long side is about this "
                           "many pixels, then centre-cropped to multiples of patch_size")
    patch_size: int = Field(16, ge=1, description="image sides are multiples of this; a multiple of the teacher's "
                            "patch (Fast3R 16). Students crop the teacher's pixels to their own patch (14) themselves")
    # limits on input images, checked before any resampling (a refusal names the limit)
    max_upscale: float = Field(4.0, ge=1.0, description="largest factor an image may be enlarged by")
    max_aspect_ratio: float = Field(8.0, ge=1.0, description="most extreme long side / short side")
    max_pixels: int = Field(120_000_000, ge=1, description="most pixels in one input image (decompression bombs)")
    max_crop_fraction: float = Field(0.15, ge=0.0, le=1.0, description="most share of a view's pixels cut away to "
                                     "fit its sample's aspect ratio; views of unlike shapes go to separate samples")
    # view-set sampling
    views_per_sample: int = Field(4, ge=1, description="views per sample: the teacher sees them together")
    min_views: int = Field(2, ge=1, description="a scene (or a group of like-shaped views) with fewer views than "
                           "views_per_sample but at least this many becomes one sample of all its views")
    sampling: Literal["consecutive", "strided", "random", "covisible"] = Field(
        "consecutive", description="how a scene's views are grouped into samples (covisible needs poses)")
    stride: int = Field(1, ge=1, description="step between the views of a sample (consecutive, strided)")
    max_samples_per_scene: int = Field(4, ge=1, description="at most this many samples from one scene")
    min_overlap: float = Field(0.3, ge=0.0, le=1.0, description="covisible: least share of the reference view's "
                               "points another view must see")
    val_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share of scenes in the val split (by scene id)")

    @model_validator(mode="after")
    def _one_frame_rule(self) -> ScenesConfig:
        if self.video_stride is not None and self.video_fps is not None:
            raise ValueError(f"scenes.video_stride={self.video_stride} and scenes.video_fps={self.video_fps:g} are "
                             "both set; set one (every k-th frame, or frames per second)")
        return self


class TeacherConfig(Section):
    """Which teacher makes the supervision."""

    name: Literal["oracle", "fast3r"] = Field(
        "oracle", description="oracle: ground truth shaped like a teacher's output (synthetic or GT-bearing scenes); "
        "fast3r: the Fast3R model")
    checkpoint: Path | None = Field(None, description="fast3r weights: a folder with config.json + model.safetensors, "
                                    "a .safetensors file or a Lightning .ckpt; `random`: random weights of `preset`, "
                                    "seeded by teacher.seed, FOR TESTING ONLY")
    preset: str = Field("release", description="fast3r architecture: release (the published 648M model) or tiny")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="fast3r precision on GPU "
                                                             "(on CPU it runs in float32)")
    image_ids: Literal["sequential", "random"] = Field(
        "sequential", description="fast3r view ids: 0..N-1, or drawn at random as in its training")
    image_ids_seed: int = Field(0, description="seed of `random` image ids")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the teacher runs (auto: CUDA if any)")
    view_chunk: int = Field(25, ge=1, description="views per encoder/head chunk (memory only)")
    trust_checkpoint: bool = Field(
        False, description="UNSAFE: allow full unpickling of `checkpoint`, which runs any code the file holds"
    )
    # oracle: ground truth shaped like a teacher, with meaningful confidence and corruptions
    noise: float = Field(0.002, ge=0.0, description="relative depth noise on clean surfaces")
    corrupt_blobs: int = Field(2, ge=0, description="displaced blobs per view")
    corrupt_edge_bleed: bool = Field(True, description="move pixels next to depth edges, as real models do")
    corrupt_scale_view_prob: float = Field(0.1, ge=0.0, le=1.0, description="chance that a view (not view 0) gets "
                                           "a wrong scale")
    seed: int = Field(0, description="seed of the oracle's corruptions and of fast3r `random` weights")


class CacheConfig(Section):
    """The cache job: where the Lance table lives and how supervision is encoded."""

    uri: str = Field("demo_out/cache.lance", description="the Lance table (a path or an object-store URI); its "
                     "rejects go beside it, x.lance -> x.rejects.lance")
    codec: str = Field("d3r-v1", description="how the teacher's outputs are compressed")
    global_target: Literal["aligned_local", "global_head"] = Field(
        "aligned_local", description="the global pointmap stored: the local maps aligned to the global head (the "
        "paper's target) or the raw global head")
    align_percentile: float = Field(85.0, ge=0.0, le=100.0, description="aligned_local: pixels at or above this "
                                    "global-confidence percentile fit the alignment")
    image_format: Literal["png", "jpeg"] = Field("png", description="how view images are stored in the table")
    batch_size: int = Field(2, ge=1, description="samples per teacher call")
    num_actors: int = Field(1, ge=1, description="teacher copies running at once (Ray actors)")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per teacher actor; 0 on CPU-only hosts")
    allow_cpu_fallback: bool = Field(False, description="run the teacher on CPU when num_gpus > 0 but the cluster "
                                     "has no GPU (else that is a config error)")
    chunk_samples: int = Field(16, ge=1, description="samples committed per Lance version")
    retry_rejected: bool = Field(False, description="recompute samples already in the rejects table")


class StudentConfig(Section):
    """The student model: its size and its encoder's starting weights."""

    preset: str = Field("tiny", description="student size: tiny (tests), distill3r-s (the paper's), d3r-s; its "
                        "patch (14) sets the crop of the teacher's pixels it is trained and scored on")
    encoder_weights: Path | None = Field(None, description="DUNE .pth or DINOv2 state dict for the encoder")
    trust_checkpoint: bool = Field(
        False, description="UNSAFE: allow full unpickling of `encoder_weights`, which runs any code the file holds"
    )
    activation_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    image_ids: Literal["sequential", "random"] = Field(
        "random", description="view ids in training (view 0 = 0); inference is always sequential"
    )


class TrainConfig(Section):
    """The training job: data from the cache table, optimisation, validation, checkpoints, workers."""

    # data
    cache_version: int | str = Field("latest", description="cache table version number or tag to train on")
    views_per_sample: int | None = Field(
        None, ge=2, description="views drawn per sample at train time (None: all the row's views)"
    )
    shuffle: bool = Field(True, description="shuffle the training samples every epoch")
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per Ray Train worker (spawned)")
    # loss
    loss: Literal["paper", "robust"] = Field("robust", description="paper: the Distill3R loss; robust: d3r's variant")
    loss_conf_weighting: Literal["teacher", "student", "none"] = Field(
        "teacher", description="whose confidence weights the pointmap terms")
    loss_conf_supervision: bool = Field(True, description="also train the student's confidence")
    loss_alpha_global: float = Field(2.0, ge=0, description="weight of the global pointmap term")
    loss_alpha_local: float = Field(1.0, ge=0, description="weight of the local pointmap term")
    loss_gamma_conf: float | None = Field(None, ge=0, description="None: the variant's default (paper 0.001)")
    loss_alpha_logc: float = Field(0.2, ge=0, description="α of the −α·log C term (robust only)")
    # optimisation
    epochs: int = Field(2, ge=1, description="passes over the training samples")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (None: epochs)")
    batch_size: int = Field(2, ge=1, description="samples (scenes) per forward, per worker")
    grad_accum: int = Field(1, ge=1, description="forwards per optimiser step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_fraction: float = Field(0.05, ge=0, le=1, description="share of the optimiser steps spent warming up")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm (None: no clipping)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 + scaler on older GPUs, fp32 on CPU"
    )
    seed: int = Field(0, description="seed of the initialisation and the shuffling")
    # validation, logging, checkpoints
    val_every: int = Field(50, ge=1, description="optimiser steps between validations (and at the end)")
    val_max_samples: int | None = Field(None, ge=1, description="validate on at most this many val samples")
    log_every: int = Field(10, ge=1, description="optimiser steps between logged training metrics")
    checkpoint_every: int = Field(50, ge=1, description="optimiser steps between checkpoints (and at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per run")
    champion_metric: str = Field(
        "val/gt/abs_rel", description="validation metric that decides the registry's champion (lower is better)"
    )
    # where and how it runs
    run_name: str = Field("d3r-student", min_length=1, description="same name reruns resume from its checkpoint")
    storage_path: Path = Field(Path("demo_out/train"), description="Ray Train run storage (checkpoints)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="train on GPUs")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    gpus_per_worker: float = Field(1.0, ge=0, description="used only with use_gpu")
    max_failures: int = Field(1, ge=0, description="restarts after a worker dies")


class EvalConfig(Section):
    """The eval job: which models, on which samples, aligned and scored how (see ``d3r.eval``)."""

    models: list[str] = Field(
        default_factory=lambda: ["teacher"],
        description="'teacher', a student checkpoint path, or a registered model 'models:/NAME@ALIAS'",
    )
    split: Literal["train", "val", "all"] = Field("val", description="which samples are scored")
    max_samples: int | None = Field(None, ge=1, description="evaluate at most this many samples")
    alignment: Literal["umeyama", "median"] = Field(
        "umeyama", description="umeyama: Sim(3) on pixel correspondences (Fast3R/π³); median: Spann3R/CUT3R"
    )
    align_conf_percentile: float = Field(85.0, ge=0.0, le=100.0, description="umeyama weights: conf ≥ percentile")
    icp: bool = Field(False, description="refine the alignment with ICP")
    icp_threshold: float = Field(0.1, gt=0, description="ICP max correspondence distance (scene units)")
    max_points: int | None = Field(
        100_000, ge=1, description="KD-tree metrics: random query points per direction (trees keep all; None: all)"
    )
    depth_scaling: Literal["sequence", "view", "none"] = Field(
        "sequence", description="depth metrics: one median scale per sample, one per view, or none")
    pose_thresholds: list[int] = Field(default_factory=lambda: [5, 15, 30], description="RRA/RTA thresholds (degrees)")
    consistency_stride: int = Field(4, ge=1, description="pixel stride of the cross-view correspondences")
    figures: bool = Field(True, description="draw figures (PNG)")
    figure_samples: int = Field(2, ge=0, description="samples per model drawn as view grids and point clouds")
    teacher_outputs: Literal["cache", "run"] = Field(
        "cache", description="cache: the teacher's outputs the cache job stored in cache.uri (the teacher is not "
        "run); run: run the configured teacher on every sample")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where students run")
    seed: int = Field(0, description="seed of the sampled metric points")
    out_dir: Path = Field(Path("demo_out/eval"), description="where tables and figures are written")


class MlflowConfig(Section):
    """Tracking and registry: where runs and models are recorded."""

    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow store: sqlite:///FILE.db or http(s)://SERVER")
    experiment: str = Field("d3r", description="MLflow experiment of the runs")
    registered_model: str = Field("d3r-student", description="the student's name in the model registry")
    timeout_s: float = Field(10.0, gt=0, description="give up on an unreachable tracking server after this long")


class RayConfig(Section):
    """Where the jobs run: a Ray cluster, or a local Ray."""

    address: str | None = Field(None, description="a cluster's address; null: join a running one or start a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started by d3r (not with address)")
    connect_timeout_s: float = Field(30.0, gt=0, description="give up on an unreachable ray.address after this long")


class D3RConfig(Section):
    """The whole resolved configuration of a d3r job."""

    scenes: ScenesConfig = Field(default_factory=ScenesConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> D3RConfig:
        if self.scenes.source != "synthetic" and self.scenes.root is None:
            raise ValueError(f"scenes.root is required for scenes.source={self.scenes.source!r}")
        if self.teacher.name == "fast3r" and self.teacher.checkpoint is None:
            raise ValueError("teacher.checkpoint is required for teacher.name='fast3r'")
        if self.scenes.long_side < self.scenes.patch_size:
            raise ValueError(
                f"scenes.long_side={self.scenes.long_side} is smaller than scenes.patch_size={self.scenes.patch_size}"
            )
        if self.ray.address is not None and self.ray.num_cpus is not None:
            raise ValueError(
                "ray.num_cpus applies only to a local Ray that d3r starts; it cannot be set with ray.address "
                f"({self.ray.address!r})"
            )
        return self


# ---- loading: YAML < env < command line, every value typed by its field and traced to its origin ----

KeyPath = tuple[str, ...]
"""A value's place in the config tree, e.g. ``("cache", "batch_size")``."""

_NULL_TEXT = frozenset({"", "~", "null", "Null", "NULL"})
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Plain(str):
    """An unquoted YAML scalar, kept as text until the field it sets says its type (see :func:`_typed`)."""


class _TextLoader(yaml.SafeLoader):
    """Safe YAML that resolves no unquoted scalar by itself (YAML 1.1 would make ``2024`` an int and ``yes``
    or ``off`` booleans): each stays :class:`_Plain` text, typed by its field."""


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag == _MERGE_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_text(loader: _TextLoader, node: yaml.ScalarNode) -> str:
    text = loader.construct_scalar(node)
    return _Plain(text) if node.style is None else text


_TextLoader.add_constructor("tag:yaml.org,2002:str", _construct_text)


def _members(annotation: Any) -> list[Any]:
    """The types a field accepts: union members (``None`` left out), ``Annotated`` constraints dropped."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) if arg is not type(None) for m in _members(arg)]
    return [annotation]


def _admits_none(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated:
        return _admits_none(get_args(annotation)[0])
    return get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)


def _is_text(annotation: Any) -> bool:
    """Whether a field takes text as it is: ``str``, ``Path``, or a ``Literal`` of strings."""
    def text(member: Any) -> bool:
        if get_origin(member) is Literal:
            return all(isinstance(arg, str) for arg in get_args(member))
        return member in (str, Path)

    return all(text(member) for member in _members(annotation))


def _model(annotation: Any) -> type[BaseModel] | None:
    members = _members(annotation) if annotation is not None else []
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return None


def _field_annotation(path: KeyPath) -> Any:
    """The annotation of the config field at ``path``; None where no field is (an unknown key)."""
    annotation: Any = D3RConfig
    for part in path:
        model = _model(annotation)
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
    return annotation


def _item_annotation(annotation: Any, index: int) -> Any:
    """The annotation of item ``index`` of a list or tuple field (None when unknown)."""
    for member in _members(annotation) if annotation is not None else []:
        args = get_args(member)
        if get_origin(member) is list and args:
            return args[0]
        if get_origin(member) is tuple and args:
            return args[0] if len(args) == 2 and args[1] is Ellipsis else args[min(index, len(args) - 1)]
    return None


def _yaml_scalar(text: str) -> Any:
    """Unquoted text as YAML types it (int, float, bool, null or text), for fields that are not text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return str(text)
    return value if not isinstance(value, dict | list) else str(text)


def _typed(value: Any, annotation: Any) -> Any:
    """``value`` (as :class:`_TextLoader` reads it) with every unquoted scalar typed by the field it sets:
    text for text fields (``2024``, ``yes`` and ``off`` stay strings; ``null`` is None where allowed),
    YAML's types elsewhere. Keys of unknown fields keep YAML's types, so their errors show the value."""
    if isinstance(value, dict):
        model = _model(annotation)
        fields = model.model_fields if model is not None else {}
        return {str(key): _typed(item, fields[key].annotation if key in fields else None)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item, _item_annotation(annotation, i)) for i, item in enumerate(value)]
    if isinstance(value, _Plain):
        if annotation is not None and _is_text(annotation):
            return None if value in _NULL_TEXT and _admits_none(annotation) else str(value)
        return _yaml_scalar(value)
    return value


def _text_value(text: str, path: KeyPath) -> Any:
    """An env or command-line value for the field at ``path``: a text field takes the text as it is,
    any other field the text read as YAML (``4`` → 4, ``[320,240]`` → a list)."""
    annotation = _field_annotation(path)
    if annotation is not None and _is_text(annotation):
        return None if text in _NULL_TEXT and _admits_none(annotation) else text
    try:
        return _typed(yaml.load(text, _TextLoader), annotation)
    except yaml.YAMLError:
        return text


@dataclass
class _Tree:
    """The merged raw config and, for each value set, where it came from (``origins``)."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)

    def set(self, path: KeyPath, value: Any, origin: str) -> None:
        node = self.values
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{origin}: {'.'.join(path[:depth + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
        self.origins = {p: o for p, o in self.origins.items() if p[:len(path)] != path}
        self.origins[path] = origin

    def origin(self, loc: Sequence[Any]) -> str | None:
        """Where the value at pydantic's error location ``loc`` came from (None: a default)."""
        parts = tuple(str(part) for part in loc)
        for size in range(len(parts), 0, -1):
            if parts[:size] in self.origins:
                return self.origins[parts[:size]]
        below = sorted({origin for path, origin in self.origins.items() if path[:len(parts)] == parts})
        return " and ".join(below) or None


def _leaves(tree: Mapping[str, Any], prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _key_path(dotted: str, origin: str) -> KeyPath:
    path = tuple(part for part in dotted.split(".") if part)
    if len(path) < 2:
        raise ConfigError(f"{origin}: {dotted!r} is not of the form section.field")
    return path


def _env_key_hint(key: str) -> str:
    """For ``D3R_CACHE_URI``: ``; did you mean D3R_CACHE__URI?`` when that names a field."""
    name = key[len(ENV_PREFIX):].lower()
    for section, info in D3RConfig.model_fields.items():
        model = _model(info.annotation)
        if model is not None and name.startswith(section + "_") and name[len(section) + 1:] in model.model_fields:
            return f"; did you mean {ENV_PREFIX}{section.upper()}__{name[len(section) + 1:].upper()}?"
    return f"; config fields are set as {ENV_PREFIX}SECTION__FIELD (two underscores)"


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``D3R_SECTION__FIELD=value`` → ``{"section": {"field": value}}`` (values typed by the field)."""
    tree = _Tree()
    _add_env(tree, os.environ if environ is None else environ)
    return tree.values


def _add_env(tree: _Tree, environ: Mapping[str, str]) -> None:
    """Add the ``D3R_SECTION__FIELD`` variables; a ``D3R_`` variable of another form names no field and is
    logged as a warning (one that names an unknown field fails validation, naming it)."""
    for key, text in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        if "__" not in key:
            logger.warning("environment variable %s sets no config field%s", key, _env_key_hint(key))
            continue
        origin = f"environment variable {key}"
        path = _key_path(key[len(ENV_PREFIX):].lower().replace("__", "."), origin)
        tree.set(path, _text_value(text, path), origin)


def cli_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--section.field", "value", "--a.b=c"]`` → nested dict (values typed by the field). Anything else
    is an error."""
    tree = _Tree()
    _add_cli(tree, args)
    return tree.values


def _add_cli(tree: _Tree, args: Sequence[str]) -> None:
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"command line: expected --section.field VALUE, got {arg!r}")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: {arg} needs a value")
            key, text = arg[2:], args[i + 1]
            i += 2
        origin = f"command line --{key}"
        path = _key_path(key, origin)
        tree.set(path, _text_value(text, path), origin)


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML config file at ``path`` as a tree, every value typed by its field (see :func:`_typed`)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(), _TextLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(data).__name__}")
    return _typed(data, D3RConfig)


def _unknown_key_hint(loc: Sequence[Any]) -> str:
    parent = _model(_field_annotation(tuple(str(p) for p in loc[:-1])))
    names = list(parent.model_fields) if parent is not None else []
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    prefix = ".".join(str(p) for p in loc[:-1])
    return f"did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else "check the spelling"


def _format_validation_error(error: ValidationError, tree: _Tree) -> str:
    lines = ["invalid configuration:"]
    for item in error.errors():
        loc = item["loc"]
        field_name = ".".join(str(p) for p in loc)
        origin = tree.origin(loc) or "default"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {field_name}: unknown key (value {item['input']!r}, from {origin}); "
                         f"{_unknown_key_hint(loc)}")
        elif loc and "input" in item and not isinstance(item["input"], dict):
            lines.append(f"  {field_name}: got {item['input']!r} from {origin}; {item['msg']}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            named = [f"{'.'.join(p)} from {o}" for p, o in tree.origins.items() if ".".join(p) in message]
            lines.append(f"  {field_name + ': ' if field_name else ''}{message}"
                         + (f" ({'; '.join(named)})" if named else ""))
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> D3RConfig:
    """Resolve a config: defaults < YAML at ``path`` < env ``D3R_*`` < CLI ``overrides``.

    Raises:
        ConfigError: naming every bad field with its value, where the value came from (the command line,
            an environment variable or the config file) and what is allowed.
    """
    tree = _Tree()
    if path is not None:
        for leaf, value in _leaves(read_yaml(Path(path))):
            tree.set(leaf, value, f"config file {path}")
    _add_env(tree, os.environ if environ is None else environ)
    _add_cli(tree, overrides)
    try:
        return D3RConfig.model_validate(tree.values)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, tree)) from None


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` out of argv; the rest are overrides."""
    rest: list[str] = []
    path: str | None = None
    i = 0
    while i < len(argv):
        if argv[i] == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("command line: --config needs a path")
            path = argv[i + 1]
            i += 2
        elif argv[i].startswith("--config="):
            path = argv[i].split("=", 1)[1]
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    return path, rest


def config_to_yaml(config: D3RConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ---- --help: the options a command reads ----


JOB_SECTIONS: dict[str, tuple[str, ...]] = {
    "cache": ("scenes", "teacher", "cache", "ray"),
    "train": ("train", "student", "cache", "mlflow", "ray"),
    "eval": ("eval", "scenes", "teacher", "student", "cache", "mlflow", "ray"),
}
"""The config sections each job reads, in the order its ``--help`` lists them."""


def _type_name(annotation: Any) -> str:
    """How a field's value is written on the command line: ``INT``, ``{a,b}``, ``[INT,INT]``, ``PATH``…"""
    names = []
    for member in _members(annotation):
        origin, args = get_origin(member), get_args(member)
        if origin is Literal:
            names.append("{" + ",".join(str(arg) for arg in args) + "}")
        elif origin in (list, tuple):
            items = [_type_name(arg) for arg in args if arg is not Ellipsis]
            names.append("[" + ",".join(items if origin is tuple and Ellipsis not in args else [*items, "..."]) + "]")
        else:
            names.append({bool: "BOOL", int: "INT", float: "NUMBER", str: "TEXT", Path: "PATH"}.get(member, "VALUE"))
    return "|".join(names)


def _yaml_text(value: Any) -> str:
    """``value`` as it would be written in YAML or on the command line (``null``, ``[320, 240]``, ``true``)."""
    value = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()


def _bounds(info: Any) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}
    return ", ".join(f"{symbols[name]} {getattr(rule, name)}" for rule in info.metadata
                     for name in symbols if getattr(rule, name, None) is not None)


def options_help(sections: Sequence[str]) -> str:
    """The fields of the config ``sections`` for ``--help``: ``--section.field TYPE``, default, bounds and
    description, under each section's own description.

    Raises:
        KeyError: for a name that is not a config section.
    """
    lines = [
        "configuration (precedence: command line > environment > YAML file > defaults):",
        "  --section.field VALUE         one field; lists as [a,b]; null for none",
        "  D3R_SECTION__FIELD=VALUE      the same from the environment (two underscores)",
        "  `d3r config show` prints every resolved value",
    ]
    for section in sections:
        model = _model(D3RConfig.model_fields[section].annotation)
        summary = (model.__doc__ or "").strip().partition("\n")[0]
        lines += ["", f"{section}: {summary}"]
        for name, info in model.model_fields.items():
            default = _yaml_text(info.get_default(call_default_factory=True))
            facts = ", ".join(part for part in (f"default {default}", _bounds(info)) if part)
            lines.append(f"  --{section}.{name} {_type_name(info.annotation)}  ({facts})")
            if info.description:
                lines += textwrap.wrap(info.description, width=100, initial_indent="      ",
                                       subsequent_indent="      ")
    return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser, sections: Sequence[str]) -> argparse.ArgumentParser:
    """Give ``parser`` the ``--config PATH`` option and a ``--help`` that lists the fields of ``sections``
    (:func:`options_help`); ``--section.field VALUE`` overrides stay for ``parse_known_args`` to return.
    Call it after adding the parser's own arguments (its usage line is made from them)."""
    parser.add_argument("--config", metavar="PATH", help="YAML config file (e.g. conf/demo.yaml); default: built-in")
    parser.usage = parser.format_usage().removeprefix("usage: ").strip() + " [--section.field VALUE ...]"
    parser.epilog = options_help(sections)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
