"""Configuration for every d3r job: pydantic models, loaded from YAML, overridden by env and CLI.

Precedence (highest first): command line ``--section.field value`` > environment
``D3R_SECTION__FIELD=value`` > the YAML file > the defaults below. Values given as text (env, CLI)
are parsed as YAML scalars/lists, so ``--cache.batch_size 4`` is an int and
``--scenes.render_size [320,240]`` a list. Every model forbids unknown keys, so a misspelt key
fails before any work starts, naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

ENV_PREFIX = "D3R_"


class ConfigError(ValueError):
    """A bad configuration: names the field(s), the value(s) and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SourceName = Literal[
    "synthetic", "folders", "video", "colmap",
    "co3d", "scannetpp", "arkitscenes", "megadepth", "blendedmvs", "habitat",
]


class ScenesConfig(Section):
    """Where scenes come from, how views are grouped into samples, and how images are preprocessed."""

    source: SourceName = "synthetic"
    root: Path | None = Field(None, description="dataset root (not used by `synthetic`)")
    # synthetic rooms
    num_scenes: int = Field(4, ge=1)
    views_per_scene: int = Field(12, ge=1)
    render_size: tuple[PositiveInt, PositiveInt] = Field((320, 240), description="synthetic render size (W, H)")
    camera_path: Literal["orbit", "walkthrough", "lookat", "mixed"] = "mixed"
    seed: int = 0
    # video
    video_stride: int | None = Field(None, ge=1, description="keep every k-th frame")
    video_fps: float | None = Field(None, gt=0, description="or: sample frames at this rate")
    # preprocessing: aspect-preserving resize of the long side, centre crop to patch multiples
    long_side: int = Field(224, ge=16)
    patch_size: int = Field(16, ge=1)
    # limits on input images, checked before any resampling (a refusal names the limit)
    max_upscale: float = Field(4.0, ge=1.0, description="largest factor an image may be enlarged by")
    max_aspect_ratio: float = Field(8.0, ge=1.0, description="most extreme long side / short side")
    max_pixels: int = Field(120_000_000, ge=1, description="most pixels in one input image (decompression bombs)")
    # view-set sampling
    views_per_sample: int = Field(4, ge=1)
    sampling: Literal["consecutive", "strided", "random", "covisible"] = "consecutive"
    stride: int = Field(1, ge=1)
    max_samples_per_scene: int = Field(4, ge=1)
    min_overlap: float = Field(0.3, ge=0.0, le=1.0)
    val_fraction: float = Field(0.25, ge=0.0, le=1.0)


class TeacherConfig(Section):
    """Which teacher makes the supervision."""

    name: Literal["oracle", "fast3r"] = "oracle"
    checkpoint: Path | None = None
    preset: str = "release"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    image_ids: Literal["sequential", "random"] = "sequential"
    image_ids_seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    view_chunk: int = Field(25, ge=1, description="views per encoder/head chunk (memory only)")
    trust_checkpoint: bool = Field(
        False, description="UNSAFE: allow full unpickling of `checkpoint`, which runs any code the file holds"
    )
    # oracle: ground truth shaped like a teacher, with meaningful confidence and corruptions
    noise: float = Field(0.002, ge=0.0, description="relative depth noise on clean surfaces")
    corrupt_blobs: int = Field(2, ge=0, description="displaced blobs per view")
    corrupt_edge_bleed: bool = True
    corrupt_scale_view_prob: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0


class CacheConfig(Section):
    """The cache job: where the Lance table lives and how supervision is encoded."""

    uri: str = "demo_out/cache.lance"
    codec: str = "d3r-v1"
    global_target: Literal["aligned_local", "global_head"] = "aligned_local"
    align_percentile: float = Field(85.0, ge=0.0, le=100.0)
    image_format: Literal["png", "jpeg"] = "png"
    batch_size: int = Field(2, ge=1)
    num_actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per teacher actor; 0 on CPU-only hosts")
    chunk_samples: int = Field(16, ge=1, description="samples committed per Lance version")
    retry_rejected: bool = Field(False, description="recompute samples already in the rejects table")


class StudentConfig(Section):
    preset: str = "tiny"
    encoder_weights: Path | None = Field(None, description="DUNE .pth or DINOv2 state dict for the encoder")
    trust_checkpoint: bool = Field(
        False, description="UNSAFE: allow full unpickling of `encoder_weights`, which runs any code the file holds"
    )
    activation_checkpointing: bool = False
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
    shuffle: bool = True
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per Ray Train worker (spawned)")
    # loss
    loss: Literal["paper", "robust"] = "robust"
    loss_conf_weighting: Literal["teacher", "student", "none"] = "teacher"
    loss_conf_supervision: bool = True
    loss_alpha_global: float = Field(2.0, ge=0)
    loss_alpha_local: float = Field(1.0, ge=0)
    loss_gamma_conf: float | None = Field(None, ge=0, description="None: the variant's default (paper 0.001)")
    loss_alpha_logc: float = Field(0.2, ge=0, description="α of the −α·log C term (robust only)")
    # optimisation
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (None: epochs)")
    batch_size: int = Field(2, ge=1, description="samples (scenes) per forward, per worker")
    grad_accum: int = Field(1, ge=1, description="forwards per optimiser step")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, le=1, description="share of the optimiser steps spent warming up")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm (None: no clipping)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 + scaler on older GPUs, fp32 on CPU"
    )
    seed: int = 0
    # validation, logging, checkpoints
    val_every: int = Field(50, ge=1, description="optimiser steps between validations (and at the end)")
    val_max_samples: int | None = Field(None, ge=1, description="validate on at most this many val samples")
    log_every: int = Field(10, ge=1, description="optimiser steps between logged training metrics")
    checkpoint_every: int = Field(50, ge=1, description="optimiser steps between checkpoints (and at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    champion_metric: str = Field(
        "val/gt/abs_rel", description="validation metric that decides the registry's champion (lower is better)"
    )
    # where and how it runs
    run_name: str = Field("d3r-student", min_length=1, description="same name reruns resume from its checkpoint")
    storage_path: Path = Field(Path("demo_out/train"), description="Ray Train run storage (checkpoints)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="used only with use_gpu")
    max_failures: int = Field(1, ge=0, description="restarts after a worker dies")


class EvalConfig(Section):
    """The eval job: which models, on which samples, aligned and scored how (see ``d3r.eval``)."""

    models: list[str] = Field(
        default_factory=lambda: ["teacher"],
        description="'teacher', a student checkpoint path, or a registered model 'models:/NAME@ALIAS'",
    )
    split: Literal["train", "val", "all"] = "val"
    max_samples: int | None = Field(None, ge=1, description="evaluate at most this many samples")
    alignment: Literal["umeyama", "median"] = Field(
        "umeyama", description="umeyama: Sim(3) on pixel correspondences (Fast3R/π³); median: Spann3R/CUT3R"
    )
    align_conf_percentile: float = Field(85.0, ge=0.0, le=100.0, description="umeyama weights: conf ≥ percentile")
    icp: bool = False
    icp_threshold: float = Field(0.1, gt=0, description="ICP max correspondence distance (scene units)")
    max_points: int | None = Field(
        100_000, ge=1, description="KD-tree metrics: random query points per direction (trees keep all; None: all)"
    )
    depth_scaling: Literal["sequence", "view", "none"] = "sequence"
    pose_thresholds: list[int] = Field(default_factory=lambda: [5, 15, 30])
    consistency_stride: int = Field(4, ge=1, description="pixel stride of the cross-view correspondences")
    figures: bool = True
    figure_samples: int = Field(2, ge=0, description="samples per model drawn as view grids and point clouds")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where students run")
    seed: int = 0
    out_dir: Path = Path("demo_out/eval")


class MlflowConfig(Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "d3r"
    registered_model: str = "d3r-student"
    timeout_s: float = Field(10.0, gt=0, description="give up on an unreachable tracking server after this long")


class RayConfig(Section):
    address: str | None = Field(None, description="None: connect to a running cluster or start a local one")
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


def _parse_text_value(text: str) -> Any:
    """Parse an env/CLI value as a YAML scalar or list, so '4' is 4 and '[1,2]' a list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    parts = [p for p in dotted.split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"{origin}: {dotted!r} is not of the form section.field")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(parts[:-1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``D3R_SECTION__FIELD=value`` → ``{"section": {"field": value}}``."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    for key, text in environ.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            dotted = key[len(ENV_PREFIX):].lower().replace("__", ".")
            _set_dotted(tree, dotted, _parse_text_value(text), f"environment variable {key}")
    return tree


def cli_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--section.field", "value", "--a.b=c"]`` → nested dict. Anything else is an error."""
    tree: dict[str, Any] = {}
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
        _set_dotted(tree, key, _parse_text_value(text), "command line")
    return tree


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown key (value {item['input']!r}); check the spelling")
        elif "input" in item and not isinstance(item["input"], dict):
            lines.append(f"  {field}: got {item['input']!r}; {item['msg']}")
        else:
            lines.append(f"  {field}: {item['msg']}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> D3RConfig:
    """Resolve a config: defaults < YAML at ``path`` < env ``D3R_*`` < CLI ``overrides``.

    Raises:
        ConfigError: naming every bad field with its value and what is allowed.
    """
    tree = read_yaml(Path(path)) if path is not None else {}
    tree = _deep_merge(tree, env_overrides(environ))
    tree = _deep_merge(tree, cli_overrides(overrides))
    try:
        return D3RConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(path or "defaults"))) from None


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
