"""Fast3R, natively: the model, its presets, official-checkpoint loading, and the ``fast3r`` teacher.

The module tree and ``state_dict`` keys equal the official release (``jedyang97/Fast3R_ViT_Large_512``:
712 tensors, 647,551,368 parameters), so its ``model.safetensors`` loads strictly:

- ``encoder``: CroCo ViT (``patch_embed.proj``, ``enc_blocks.*`` with 2D RoPE, LayerNorm eps 1e-6, ``enc_norm``);
- ``decoder``: ``decoder_embed``, an image-index sin/cos row added once per view, ``dec_blocks.*`` (global
  attention over all views' tokens, no RoPE, LayerNorm eps 1e-5), ``dec_norm`` (eps 1e-6);
- ``downstream_head`` / ``downstream_head_local``: DPT heads on hooks ``[0, 12, 18, 24]``, where 0 is the
  encoder output before ``decoder_embed`` and the last hook is ``dec_norm``'s output.

Images are ``[B, N, 3, H, W]`` in [-1, 1] (H, W multiples of 16, any orientation). Global points are in
view 0's camera frame, local points in each view's own frame; confidence is ``1 + exp(x)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from d3r.checkpoints import CheckpointError, read_checkpoint, tensor_dict
from d3r.config import TeacherConfig
from d3r.errors import ConfigError
from d3r.nn import (
    Attention,
    Block,
    DPTPointmapHead,
    GlobalFusion,
    PatchEmbed,
    RoPE2D,
    draw_image_ids,
    patch_positions,
    run_in_view_chunks,
)
from d3r.teachers.base import OUTPUT_KEYS, DeviceKind, register_teacher, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Fast3RConfig:
    """Architecture of a Fast3R model (defaults: the official release)."""

    enc_dim: int = 1024
    enc_depth: int = 24
    enc_heads: int = 16
    enc_mlp_ratio: float = 4.0
    patch_size: int = 16
    rope_freq: float = 100.0
    dec_dim: int = 1024
    dec_depth: int = 24
    dec_heads: int = 16
    dec_mlp_ratio: float = 4.0
    dec_qkv_bias: bool = True
    hooks: tuple[int, ...] = (0, 12, 18, 24)
    layer_dims: tuple[int, ...] = (96, 192, 384, 768)
    feature_dim: int = 256
    last_dim: int = 128
    num_image_ids: int = 1000
    random_image_idx_embedding: bool = True
    attn_bias_for_inference_enabled: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.enc_dim % self.enc_heads or (self.enc_dim // self.enc_heads) % 4:
            problems.append(
                f"enc_dim={self.enc_dim} must split into enc_heads={self.enc_heads} heads of a size divisible by 4"
            )
        if self.dec_dim % self.dec_heads:
            problems.append(f"dec_dim={self.dec_dim} is not divisible by dec_heads={self.dec_heads}")
        if len(self.hooks) != 4 or not all(0 <= h <= self.dec_depth for h in self.hooks):
            problems.append(f"hooks={self.hooks} must be 4 layer indices in 0..dec_depth={self.dec_depth}")
        if len(self.layer_dims) != 4:
            problems.append(f"layer_dims={self.layer_dims} must have 4 entries")
        if problems:
            raise ValueError("invalid Fast3R config: " + "; ".join(problems))


def dpt_hooks(dec_depth: int) -> tuple[int, int, int, int]:
    """The DPT heads' hooks the official code derives from the decoder depth: ``[0, d*2//4, d*3//4, d]``."""
    return 0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth


PRESETS: dict[str, Fast3RConfig] = {
    "release": Fast3RConfig(),
    "tiny": Fast3RConfig(
        enc_dim=64, enc_depth=2, enc_heads=4, dec_dim=64, dec_depth=4, dec_heads=4,
        hooks=dpt_hooks(4), layer_dims=(16, 32, 48, 64), feature_dim=32, last_dim=16,
    ),
}


def fast3r_config(preset: str = "release", **overrides: Any) -> Fast3RConfig:
    """The named preset with ``overrides`` (Fast3RConfig field names) applied; a new ``dec_depth`` without
    ``hooks`` gets the hooks the official code derives (``dpt_hooks``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Fast3R preset {preset!r}; known: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(Fast3RConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown Fast3R config field(s) {unknown}; known: {sorted(fields)}")
    if "dec_depth" in overrides and "hooks" not in overrides:
        overrides["hooks"] = dpt_hooks(overrides["dec_depth"])
    return dataclasses.replace(PRESETS[preset], **overrides)


def decoder_eval_attention_scale(head_dim: int) -> float:
    """Fast3R's inference scale when ``attn_bias_for_inference_enabled``: ``head_dim^-0.5 * sqrt(log 137 / log 20)``."""
    return head_dim**-0.5 * math.sqrt(math.log(137) / math.log(20))


class Fast3REncoder(nn.Module):
    """``images [V, 3, H, W] → tokens [V, P, enc_dim]`` (CroCo ViT with 2D RoPE)."""

    def __init__(self, config: Fast3RConfig) -> None:
        super().__init__()
        rope = RoPE2D(config.rope_freq)
        self.patch_embed = PatchEmbed(config.patch_size, config.enc_dim)
        self.enc_blocks = nn.ModuleList(
            Block(config.enc_dim, config.enc_heads, config.enc_mlp_ratio, norm_eps=1e-6, rope=rope)
            for _ in range(config.enc_depth)
        )
        self.enc_norm = nn.LayerNorm(config.enc_dim, eps=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patch = self.patch_embed.patch_size
        positions = patch_positions(images.shape[-2] // patch, images.shape[-1] // patch, images.device)
        x = self.patch_embed(images)
        for block in self.enc_blocks:
            x = block(x, positions)
        return self.enc_norm(x)


class Fast3RDecoder(GlobalFusion):
    """The fusion decoder (``d3r.nn.GlobalFusion`` in the official layout: ``decoder_embed``, ``dec_blocks.*``,
    ``dec_norm``): ``[B, N * P, enc_dim]`` encoder tokens + ``image_ids [B, N]`` → the hooked ``[B, N * P, C_k]``."""

    def __init__(self, config: Fast3RConfig) -> None:
        head_dim = config.dec_dim // config.dec_heads
        eval_scale = decoder_eval_attention_scale(head_dim) if config.attn_bias_for_inference_enabled else None
        super().__init__(
            config.enc_dim, config.dec_dim, config.dec_depth, config.dec_heads, config.hooks, config.num_image_ids,
            mlp_ratio=config.dec_mlp_ratio, qkv_bias=config.dec_qkv_bias, attn_eval_scale=eval_scale,
            blocks_name="dec_blocks", norm_name="dec_norm",
        )


def _head(config: Fast3RConfig) -> DPTPointmapHead:
    return DPTPointmapHead(
        dim_tokens=[config.enc_dim if h == 0 else config.dec_dim for h in config.hooks],
        hooks=list(config.hooks), layer_dims=list(config.layer_dims), feature_dim=config.feature_dim,
        last_dim=config.last_dim, num_channels=4, patch_size=config.patch_size,
    )


class Fast3R(nn.Module):
    """Multi-view pointmap model; see the module docstring. ``view_chunk`` bounds the views per encoder/head call."""

    def __init__(self, config: Fast3RConfig, view_chunk: int = 25) -> None:
        super().__init__()
        self.config = config
        self.view_chunk = view_chunk
        self.weights_sha256: str | None = None
        self.encoder = Fast3REncoder(config)
        self.decoder = Fast3RDecoder(config)
        self.downstream_head = _head(config)
        self.downstream_head_local = _head(config)

    def set_attention_dtype(self, dtype: torch.dtype | None) -> None:
        """Dtype of every attention core on CUDA (``None``: the input dtype, i.e. no down-cast)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.core_dtype = dtype

    def _check_inputs(self, images: torch.Tensor, image_ids: torch.Tensor | None) -> torch.Tensor:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, N, 3, H, W], got {tuple(images.shape)}")
        b, n, _, height, width = images.shape
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} (HxW) must be a multiple of the patch size {patch}")
        rows = self.config.num_image_ids
        if image_ids is None:
            if n > rows:
                raise ValueError(f"{n} views exceed the {rows} image-index rows")
            return torch.arange(n, device=images.device).expand(b, n)
        if image_ids.shape != (b, n) or image_ids.is_floating_point():
            raise ValueError(
                f"image_ids must be integer [B, N] = [{b}, {n}], got {image_ids.dtype} {tuple(image_ids.shape)}"
            )
        if image_ids.min() < 0 or image_ids.max() >= rows:
            raise ValueError(f"image_ids must lie in 0..{rows - 1}")
        return image_ids.to(images.device, torch.long)

    def forward(self, images: torch.Tensor, image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``images [B, N, 3, H, W]`` in [-1, 1]; ``image_ids [B, N]`` (None: 0..N-1) → ``pts3d_global``,
        ``pts3d_local`` ``[B, N, H, W, 3]`` and ``conf_global``, ``conf_local`` ``[B, N, H, W]`` (float32)."""
        ids = self._check_inputs(images, image_ids)
        b, n, _, height, width = images.shape
        views = images.reshape(b * n, 3, height, width)
        enc = torch.cat([self.encoder(chunk) for chunk in views.split(self.view_chunk)])
        patches = enc.shape[1]
        hooked = self.decoder(enc.reshape(b, n * patches, -1), ids)  # [B, N*P, C_k] each
        per_view = [h.reshape(b * n, patches, -1) for h in hooked]  # [B*N, P, C_k] each
        outputs = run_in_view_chunks(partial(self.heads, image_size=(height, width)), per_view, self.view_chunk)
        return {key: outputs[key].reshape(b, n, *outputs[key].shape[1:]) for key in OUTPUT_KEYS}

    def heads(self, tokens: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Both DPT heads on hooked tokens ``[V, P, C_k]`` → ``pts3d_*`` ``[V, H, W, 3]``, ``conf_*`` ``[V, H, W]``."""
        pts_global, conf_global = self.downstream_head(tokens, image_size)
        pts_local, conf_local = self.downstream_head_local(tokens, image_size)
        return {
            "pts3d_global": pts_global, "conf_global": conf_global, "pts3d_local": pts_local, "conf_local": conf_local
        }


def build_fast3r(preset: str = "release", view_chunk: int = 25, **overrides: Any) -> Fast3R:
    """A randomly initialised Fast3R of the named preset (``overrides``: Fast3RConfig fields)."""
    return Fast3R(fast3r_config(preset, **overrides), view_chunk=view_chunk)


RANDOM_WEIGHTS = Path("random")
"""``teacher.checkpoint: random``: the preset with seeded random weights, FOR TESTING ONLY."""


def random_weights_id(seed: int) -> str:
    """The ``weights_sha256`` of :func:`random_fast3r`'s weights: no hash, so their caches never pass for real ones."""
    return f"random-seed-{seed}"


def random_fast3r(preset: str, seed: int, view_chunk: int = 25) -> Fast3R:
    """FOR TESTING ONLY: the preset with random weights drawn from ``seed`` (same seed, same weights, in
    any process); ``weights_sha256`` is ``random-seed-<seed>``, so caches of it never pass for real ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_fast3r(preset, view_chunk=view_chunk)
    model.weights_sha256 = random_weights_id(seed)
    return model.eval()


def _preset_hint(state: Mapping[str, torch.Tensor], config: Fast3RConfig) -> str:
    """``; it looks like preset 'tiny' (teacher.preset: tiny)`` when another preset fits ``state``'s keys and shapes."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    for name, preset in PRESETS.items():
        if preset == config:
            continue
        with torch.device("meta"):
            expected = {key: tuple(value.shape) for key, value in Fast3R(preset).state_dict().items()}
        if expected == shapes:
            return f"; it looks like preset {name!r} (teacher.preset: {name})"
    return ""


# ---- config.json (the Hugging Face layout written by the official ``save_pretrained``) ----

_JSON_TO_FIELD = {
    ("encoder_args", "depth"): "enc_depth",
    ("encoder_args", "embed_dim"): "enc_dim",
    ("encoder_args", "num_heads"): "enc_heads",
    ("encoder_args", "mlp_ratio"): "enc_mlp_ratio",
    ("encoder_args", "patch_size"): "patch_size",
    ("decoder_args", "depth"): "dec_depth",
    ("decoder_args", "embed_dim"): "dec_dim",
    ("decoder_args", "num_heads"): "dec_heads",
    ("decoder_args", "mlp_ratio"): "dec_mlp_ratio",
    ("decoder_args", "qkv_bias"): "dec_qkv_bias",
    ("decoder_args", "random_image_idx_embedding"): "random_image_idx_embedding",
    ("decoder_args", "attn_bias_for_inference_enabled"): "attn_bias_for_inference_enabled",
    # d3r's own keys: the official code fixes these head sizes (_OFFICIAL_HEAD); save_fast3r writes them
    # only when a model differs, so its own small models load back without naming a preset
    ("head_args", "layer_dims"): "layer_dims",
    ("head_args", "feature_dim"): "feature_dim",
    ("head_args", "last_dim"): "last_dim",
}
_OFFICIAL_HEAD = {"layer_dims": (96, 192, 384, 768), "feature_dim": 256, "last_dim": 128}
_INF = float("inf")
# The only values this implementation computes; anything else is refused.
_JSON_REQUIRED = {
    ("encoder_args", "encoder_type"): "croco",
    ("encoder_args", "patch_embed_cls"): "PatchEmbedDust3R",
    ("decoder_args", "decoder_type"): "fast3r",
    ("head_args", "head_type"): "dpt",
    ("head_args", "output_mode"): "pts3d",
    ("head_args", "depth_mode"): ["exp", -_INF, _INF],
    ("head_args", "conf_mode"): ["exp", 1, _INF],
    ("head_args", "landscape_only"): False,
    ("head_args", "with_local_head"): True,
}
# Accepted with any value: they change how the official code runs, not what it computes at inference.
_JSON_NO_EFFECT = {
    ("encoder_args", "attn_implementation"): "attention kernel choice; SDPA computes the same function",
    ("decoder_args", "attn_implementation"): "attention kernel choice; SDPA computes the same function",
    ("encoder_args", "img_size"): "RoPE has no size table; any multiple of the patch size works",
    ("decoder_args", "drop"): "dropout is inactive at inference",
    ("decoder_args", "attn_drop"): "dropout is inactive at inference",
}
# Checked against the encoder's values.
_JSON_CONSISTENCY = (("decoder_args", "enc_embed_dim"), ("head_args", "patch_size"))
_SECTIONS = ("encoder_args", "decoder_args", "head_args")


_JSON_KINDS = {bool: "true or false", int: "an integer > 0", float: "a finite number > 0",
               tuple: "a list of 4 integers > 0"}


def _json_value(field: str, value: Any) -> Any:
    """``value`` as the kind of Fast3RConfig's ``field`` (see ``_JSON_KINDS``); None when it is not one."""
    kind = type(getattr(PRESETS["release"], field))

    def positive_int(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool) and item > 0

    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is int:
        return value if positive_int(value) else None
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if number and math.isfinite(value) and value > 0 else None
    if isinstance(value, list) and len(value) == 4 and all(positive_int(item) for item in value):
        return tuple(value)
    return None


def read_config_json(path: Path) -> Mapping[str, Any]:
    """A checkpoint's ``config.json`` as a mapping; CheckpointError naming the file when it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, not JSON
        raise CheckpointError(f"{path} cannot be read as JSON: {error}") from error
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def config_from_json(data: Mapping[str, Any], base: Fast3RConfig, source: str = CONFIG_FILE) -> Fast3RConfig:
    """Apply an official ``config.json`` onto ``base``: mapped values are applied, the others must be the
    values this implementation computes; an unknown, unsupported or mistyped one raises a CheckpointError
    naming it. The DPT hooks are derived from the decoder depth, as the official code does."""
    errors = [f"{key}: unknown section" for key in data if key not in _SECTIONS]
    updates: dict[str, Any] = {}
    for section in _SECTIONS:
        args = data.get(section) or {}
        if not isinstance(args, Mapping):
            errors.append(f"{section}: expected an object, got {type(args).__name__}")
            continue
        for key, value in args.items():
            where = (section, key)
            if where in _JSON_TO_FIELD:
                field = _JSON_TO_FIELD[where]
                updates[field] = _json_value(field, value)
                if updates[field] is None:
                    errors.append(f"{section}.{key}={value!r}: expected {_JSON_KINDS[type(getattr(base, field))]}")
            elif where == ("encoder_args", "pos_embed"):
                match = re.fullmatch(r"RoPE(\d+(?:\.\d+)?)", str(value))
                if match:
                    updates["rope_freq"] = float(match.group(1))
                else:
                    errors.append(f"{section}.{key}={value!r}: only 'RoPE<freq>' is supported")
            elif where in _JSON_REQUIRED:
                if value != _JSON_REQUIRED[where]:
                    errors.append(f"{section}.{key}={value!r}: only {_JSON_REQUIRED[where]!r} is supported")
            elif where not in _JSON_NO_EFFECT and where not in _JSON_CONSISTENCY:
                errors.append(f"{section}.{key}: unknown field")
    enc_dim = updates.get("enc_dim", base.enc_dim)
    patch = updates.get("patch_size", base.patch_size)
    for (section, key), expected, name in (
        (("decoder_args", "enc_embed_dim"), enc_dim, "encoder_args.embed_dim"),
        (("head_args", "patch_size"), patch, "encoder_args.patch_size"),
    ):
        args = data.get(section)
        value = args.get(key, expected) if isinstance(args, Mapping) else expected
        if value != expected:
            errors.append(f"{section}.{key}={value!r}: must equal {name}={expected!r}")
    if errors:
        raise CheckpointError(f"{source}: unsupported Fast3R config: " + "; ".join(errors))
    updates["hooks"] = dpt_hooks(updates.get("dec_depth", base.dec_depth))
    changed = {k: v for k, v in updates.items() if getattr(base, k) != v}
    if changed:
        logger.info("%s overrides the preset: %s", source, changed)
    try:
        return dataclasses.replace(base, **updates)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error


def config_to_json(config: Fast3RConfig) -> dict[str, Any]:
    """The official ``config.json`` content describing ``config`` (round-trips through ``config_from_json``;
    the head sizes are written only where they differ from the official ones).

    Raises:
        ValueError: when ``config.hooks`` are not the ones ``dpt_hooks`` derives (config.json cannot say so).
    """
    if config.hooks != dpt_hooks(config.dec_depth):
        raise ValueError(f"hooks {config.hooks} are not the official {dpt_hooks(config.dec_depth)} for "
                         f"dec_depth={config.dec_depth}: a config.json cannot describe them")
    data: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    for (section, key), field in _JSON_TO_FIELD.items():
        value = getattr(config, field)
        if _OFFICIAL_HEAD.get(field) != value:
            data[section][key] = list(value) if isinstance(value, tuple) else value
    for (section, key), value in _JSON_REQUIRED.items():
        data[section][key] = value
    data["encoder_args"].update(
        attn_implementation="flash_attention", img_size=512, pos_embed=f"RoPE{config.rope_freq:g}"
    )
    data["decoder_args"].update(
        attn_implementation="flash_attention", drop=0.0, attn_drop=0.0, enc_embed_dim=config.enc_dim
    )
    data["head_args"]["patch_size"] = config.patch_size
    return data


# ---- checkpoints ----


def save_fast3r(model: Fast3R, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (official Hugging Face layout) into ``directory``."""
    config = json.dumps(config_to_json(model.config), indent=2, sort_keys=True)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(config)
    return directory


def checkpoint_layout(path: Path, preset: str | None = None) -> tuple[Path, Fast3RConfig]:
    """The weights file of a checkpoint (``path`` itself, or a directory's ``model.safetensors``) and the
    architecture it holds: ``preset`` (default ``release``) with a directory's ``config.json`` applied. Reads
    no weights.

    Raises:
        CheckpointError: a directory without ``model.safetensors``, or a bad ``config.json``.
    """
    config = fast3r_config(preset or "release")
    if not path.is_dir():
        return path, config
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path} is a directory without {WEIGHTS_FILE}")
    config_path = path / CONFIG_FILE
    if config_path.is_file():
        config = config_from_json(read_config_json(config_path), config, source=str(config_path))
    return weights, config


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint's weights file (a directory's ``model.safetensors``), streamed: what a teacher's
    fingerprint names as ``weights_sha256``. A job computes it once and hands it to its workers.

    Raises:
        CheckpointError: naming the file when it cannot be read.
    """
    weights, _ = checkpoint_layout(Path(path))
    try:
        with weights.open("rb") as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()
    except OSError as error:
        raise CheckpointError(f"{weights} cannot be read: {error}") from error


TRUST_SETTING = "teacher.trust_checkpoint"


def read_state_dict(path: Path, trust: bool = False, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Network tensors from a ``.safetensors`` file, a Lightning checkpoint (``state_dict`` with ``net.``
    keys) or a DUSt3R-style ``.pth`` (``model``), without the ``scratch.layer_rn.*`` aliases; read by
    ``d3r.checkpoints.read_checkpoint`` (full unpickling only with ``trust``: ``teacher.trust_checkpoint``;
    ``shapes_only``: ``meta`` tensors, no data read)."""
    raw = read_checkpoint(path, opt_in=TRUST_SETTING, trust=trust, shapes_only=shapes_only)
    if "state_dict" in raw:
        lightning = tensor_dict(raw["state_dict"], path, "'state_dict'")
        state = {k[len("net."):]: v for k, v in lightning.items() if k.startswith("net.")}
        if not state:
            raise CheckpointError(f"{path}: 'state_dict' has no 'net.'-prefixed keys (not a Fast3R Lightning ckpt)")
    elif "model" in raw:
        state = tensor_dict(raw["model"], path, "'model'")
    elif all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = tensor_dict(raw, path, "the state dict")
    else:
        raise CheckpointError(f"{path}: expected a state dict, a Lightning 'state_dict' or a 'model' entry")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items() if ".scratch.layer_rn." not in k}


def check_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, source: str, shown: int = 5) -> None:
    """Raise one CheckpointError listing missing, unexpected, mis-shaped and mis-typed keys (first ``shown`` of each;
    mis-typed: an integer or boolean tensor where the model holds a floating one, or the reverse)."""
    reference = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = set(state) & set(expected)
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in common if tuple(state[k].shape) != expected[k]
    )
    mistyped = sorted(
        f"{k} {state[k].dtype}" for k in common if state[k].is_floating_point() != reference[k].is_floating_point()
    )
    parts = [f"{len(items)} {label}: {items[:shown]}" for label, items in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched), ("mis-typed", mistyped))
             if items]
    if parts:
        raise CheckpointError(f"{source} does not fit the Fast3R model: " + "; ".join(parts))


def _fitting_state(path: Path, preset: str | None, view_chunk: int, *, trust: bool,
                   shapes_only: bool) -> tuple[Path, Fast3R, dict[str, torch.Tensor]]:
    """The weights file, the model it is for (on the ``meta`` device: no memory, no weights) and its state dict,
    checked to fit that model (``shapes_only``: ``meta`` tensors, the file's data not read).

    Raises:
        CheckpointError: unreadable, refused without ``trust``, or not fitting (a preset that fits is named).
    """
    weights, config = checkpoint_layout(path, preset)
    state = read_state_dict(weights, trust=trust, shapes_only=shapes_only)
    with torch.device("meta"):
        model = Fast3R(config, view_chunk=view_chunk)
    try:
        check_state_dict(state, model, str(weights))
    except CheckpointError as error:
        raise CheckpointError(f"{error}{_preset_hint(state, config)}") from None
    return weights, model, state


def check_fast3r_checkpoint(path: str | Path, preset: str | None = None, *, trust: bool = False) -> None:
    """Check, without loading weights, that a checkpoint :func:`load_fast3r` takes fits the model: keys, shapes
    and dtypes from a safetensors header or a torch pickle read onto the ``meta`` device (no storage read).

    Raises:
        CheckpointError: as :func:`load_fast3r` (except for damage inside the tensors' data, which only a load
            reads).
    """
    _fitting_state(Path(path), preset, 25, trust=trust, shapes_only=True)


def load_fast3r(path: str | Path, preset: str | None = None, view_chunk: int = 25, *, trust: bool = False,
                weights_sha256: str | None = None) -> Fast3R:
    """Load a Fast3R from ``model.safetensors``, a directory with ``config.json`` + ``model.safetensors``,
    or a Lightning / DUSt3R-style torch checkpoint; strict: any problem raises one CheckpointError.

    The architecture is ``preset`` (default ``release``) with ``config.json``'s values applied, so a directory
    written by ``save_fast3r`` loads back without a preset. Torch files load as tensors only; ``trust``
    (``teacher.trust_checkpoint``) allows fully unpickling one, which runs any code it holds.
    ``model.weights_sha256`` is set to ``weights_sha256`` when the caller has it (:func:`checkpoint_sha256`,
    computed once per job), else to the weights file's sha256 computed here.
    """
    weights, model, state = _fitting_state(Path(path), preset, view_chunk, trust=trust, shapes_only=False)
    model.load_state_dict(state, strict=True, assign=True)
    model.weights_sha256 = weights_sha256 or checkpoint_sha256(weights)
    return model.eval()


# ---- the teacher ----


def check_image_ids(config: TeacherConfig, model: Fast3RConfig) -> None:
    """Raises a ConfigError naming ``teacher.image_ids`` when random ids meet a model trained with sequential ones."""
    if config.image_ids == "random" and not model.random_image_idx_embedding:
        raise ConfigError("teacher.image_ids='random' but this checkpoint was trained with sequential view ids")


def model_fingerprint(config: TeacherConfig, model: Fast3RConfig, weights_sha256: str,
                      device_kind: DeviceKind) -> dict[str, Any]:
    """What defines a ``fast3r`` teacher's outputs: preset, resolved architecture, weights sha256, the dtype it
    computes in on ``device_kind``, the device kind and the view-id mode (and seed)."""
    fingerprint = {
        "name": Fast3RTeacher.name,
        "preset": config.preset,
        "model": asdict(model),
        "weights_sha256": weights_sha256,
        "dtype": resolve_dtype(config.dtype, device_kind),
        "device": device_kind,
        "image_ids": config.image_ids,
    }
    if config.image_ids == "random":
        fingerprint["image_ids_seed"] = config.image_ids_seed
    return fingerprint


def check_teacher_config(config: TeacherConfig) -> None:
    """Raises a ConfigError naming ``teacher.checkpoint`` (missing) or ``teacher.preset`` (unknown)."""
    if config.checkpoint is None:
        raise ConfigError("teacher.checkpoint is required for teacher.name='fast3r' "
                          "(model.safetensors, a config.json + model.safetensors directory, or a Lightning .ckpt)")
    if config.preset not in PRESETS:
        raise ConfigError(f"teacher.preset={config.preset!r} is not a Fast3R preset; known: {sorted(PRESETS)}")


def _warn_random_weights(config: TeacherConfig) -> None:
    logger.warning("teacher.checkpoint=random: Fast3R preset %r with random weights (seed %d), FOR TESTING ONLY: "
                   "its outputs are no reconstruction", config.preset, config.seed)


def fast3r_fingerprint(config: TeacherConfig, known_sha256: str | None,
                       device_kind: DeviceKind) -> dict[str, Any]:
    """The fingerprint of the teacher ``build_fast3r_teacher(config)`` would build on ``device_kind``, without
    loading weights: the architecture from the preset and ``config.json``, the weights' hash given as
    ``known_sha256`` or streamed from the file here. The checkpoint is checked to fit the model first
    (:func:`check_fast3r_checkpoint`: names and shapes only), so a job's driver finds a wrong one before any
    work; ``random`` weights log their FOR TESTING ONLY warning here as well as where they are built.

    Raises:
        ConfigError: as :func:`build_fast3r_teacher`, for a missing or unreadable checkpoint, a bad
            ``config.json``, an unknown preset, or random view ids on a model trained without them.
    """
    check_teacher_config(config)
    if config.checkpoint == RANDOM_WEIGHTS:
        _warn_random_weights(config)
        model, weights_sha256 = fast3r_config(config.preset), random_weights_id(config.seed)
    else:
        try:
            check_fast3r_checkpoint(config.checkpoint, config.preset, trust=config.trust_checkpoint)
            weights, model = checkpoint_layout(config.checkpoint, config.preset)
            weights_sha256 = known_sha256 or checkpoint_sha256(weights)
        except CheckpointError as error:
            raise CheckpointError(f"teacher.checkpoint={str(config.checkpoint)!r}: {error}") from error
    check_image_ids(config, model)
    return model_fingerprint(config, model, weights_sha256, device_kind)


class Fast3RTeacher:
    """The ``fast3r`` teacher: uint8 images in, the four float32 CPU maps out (see ``d3r.teachers.base``)."""

    name = "fast3r"
    needs_ground_truth = False

    def __init__(self, model: Fast3R, config: TeacherConfig) -> None:
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("teacher.device='cuda' but CUDA is not available")
        check_image_ids(config, model.config)
        kind = resolve_device(config.device, torch.cuda.is_available())
        self.device = torch.device(kind)
        self.dtype = getattr(torch, resolve_dtype(config.dtype, kind))
        self.config = config
        self.model = model.to(self.device).eval()
        self.model.view_chunk = config.view_chunk
        self.model.set_attention_dtype(None if self.dtype == torch.float32 else self.dtype)

    @property
    def patch_size(self) -> int:
        return self.model.config.patch_size

    @property
    def fingerprint(self) -> dict[str, Any]:
        return model_fingerprint(self.config, self.model.config, self.model.weights_sha256, self.device.type)

    def _image_ids(self, images: torch.Tensor) -> torch.Tensor | None:
        """Sequential: None. Random: official-style ids seeded by (seed, sample content), so a sample gets
        the same ids whatever batch it is in."""
        if self.config.image_ids == "sequential":
            return None
        rows = []
        for sample in images:
            digest = hashlib.sha256(f"{self.config.image_ids_seed}:".encode() + sample.cpu().numpy().tobytes())
            generator = torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little"))
            ids = draw_image_ids(1, images.shape[1], self.model.config.num_image_ids, random=True, generator=generator)
            rows.append(ids)
        return torch.cat(rows)

    def predict(
        self,
        images: torch.Tensor,
        *,
        depth: torch.Tensor | None = None,
        K: torch.Tensor | None = None,
        poses: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``images`` uint8 ``[B, N, 3, H, W]`` → the four maps (float32, CPU); ground truth is not used."""
        if images.dtype != torch.uint8:
            raise ValueError(f"fast3r teacher expects uint8 images [B, N, 3, H, W], got {images.dtype}")
        ids = self._image_ids(images)
        use_autocast = self.device.type == "cuda" and self.dtype != torch.float32
        autocast = torch.autocast("cuda", dtype=self.dtype) if use_autocast else nullcontext()
        with torch.inference_mode(), autocast:
            x = images.to(self.device).float() / 127.5 - 1.0
            out = self.model(x, ids)
        return {key: out[key].float().cpu() for key in OUTPUT_KEYS}


@register_teacher("fast3r", fingerprint=fast3r_fingerprint)
def build_fast3r_teacher(config: TeacherConfig, *, checkpoint_sha256: str | None = None) -> Fast3RTeacher:
    """Load the checkpoint named by ``teacher.checkpoint`` (checked before any work) and wrap it;
    ``random`` (:data:`RANDOM_WEIGHTS`) builds ``teacher.preset`` with weights seeded by ``teacher.seed``
    instead, for testing only. ``checkpoint_sha256``: the weights' hash when the job already has it (else
    hashed here).

    Raises:
        ConfigError: naming ``teacher.checkpoint`` (a CheckpointError: unreadable, refused by ``weights_only``
            without ``teacher.trust_checkpoint``, or not fitting the model) or ``teacher.preset``.
    """
    check_teacher_config(config)
    if config.checkpoint == RANDOM_WEIGHTS:
        _warn_random_weights(config)
        return Fast3RTeacher(random_fast3r(config.preset, config.seed, config.view_chunk), config)
    try:
        model = load_fast3r(config.checkpoint, preset=config.preset, view_chunk=config.view_chunk,
                            trust=config.trust_checkpoint, weights_sha256=checkpoint_sha256)
    except CheckpointError as error:
        raise CheckpointError(f"teacher.checkpoint={str(config.checkpoint)!r}: {error}") from error
    return Fast3RTeacher(model, config)
