"""The one checkpoint reader of d3r: tensors only, unless the user opted in to full unpickling.

A ``.safetensors`` file is read with safetensors; any other file with ``torch.load(weights_only=True)``,
which builds tensors, containers and scalars and refuses every other object (``argparse.Namespace`` is
allowed as well: DUNE and DUSt3R ``.pth`` files hold their training arguments in one). A file that
``weights_only`` refuses is fully unpickled only when the caller passes ``trust=True``, i.e. when the user
set the opt-in the caller names (e.g. ``teacher.trust_checkpoint``): unpickling runs any code the file holds.

``shapes_only=True`` reads a file's names, shapes and dtypes without its data (tensors on the ``meta``
device): a ``.safetensors`` file's header, a torch file's pickle with ``map_location="meta"`` (its storages
are not read). A job's driver checks that a checkpoint fits its model this way before any work.

Every failure, whatever the file (missing, a folder, empty, truncated, random bytes, a pickle payload,
the wrong types inside), is a :class:`CheckpointError` naming the file; it is a
:class:`~d3r.errors.ConfigError`, so a job exits with status 2 before any work.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from d3r.errors import ConfigError

logger = logging.getLogger(__name__)

SAFE_GLOBALS = (argparse.Namespace,)
"""Objects besides tensors that ``weights_only`` may build: they hold data and run no code."""


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
"""The safetensors header's dtype codes d3r reads, as torch dtypes."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not fit its model: names the file and what is wrong."""


def _refused(path: Path, opt_in: str, error: pickle.UnpicklingError) -> CheckpointError:
    # the object or opcode torch names in its long message, e.g. "GLOBAL posix.system"
    found = re.search(r"GLOBAL [\w.]+|Unsupported operand \S+", str(error))
    reason = found.group(0) if found else "it holds more than tensors"
    return CheckpointError(
        f"{path}: torch.load(weights_only=True) refuses it ({reason}). Set {opt_in}: true only if you trust "
        "this file: unpickling runs any code it holds"
    )


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return CheckpointError(f"{path} cannot be read as a checkpoint: {type(error).__name__}: {first_line}")


def _safetensors_header(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors as ``meta`` tensors of their shapes and dtypes (reads the header only)."""
    tensors = {}
    with safe_open(str(path), framework="pt") as file:
        names = file.keys()  # a safe_open is no mapping: it cannot be iterated
        for key in names:
            entry = file.get_slice(key)
            code = entry.get_dtype()
            if code not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {key!r} has dtype {code}; "
                                      f"d3r reads {sorted(SAFETENSORS_DTYPES)}")
            tensors[key] = torch.empty(entry.get_shape(), dtype=SAFETENSORS_DTYPES[code], device="meta")
    return tensors


def read_checkpoint(path: str | Path, *, opt_in: str, trust: bool = False,
                    shapes_only: bool = False) -> Mapping[str, Any]:
    """The top-level mapping of a checkpoint file, read as described in the module docstring.

    Args:
        path: a ``.safetensors`` file or a ``torch.save`` file.
        opt_in: the setting that allows full unpickling, named in the error (``teacher.trust_checkpoint``).
        trust: that setting's value: fully unpickle a file that ``weights_only`` refuses (logged).
        shapes_only: tensors on the ``meta`` device (names, shapes, dtypes), their data not read.

    Raises:
        CheckpointError: naming ``path`` (and ``opt_in`` when ``weights_only`` refused the file).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    location = "meta" if shapes_only else "cpu"
    try:
        if path.suffix == ".safetensors":
            data = _safetensors_header(path) if shapes_only else load_file(str(path))
        else:
            with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                data = torch.load(path, map_location=location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            raise _refused(path, opt_in, error) from error
        logger.warning("%s: %s is set, so this file is fully unpickled (it may run code)", path, opt_in)
        try:
            data = torch.load(path, map_location=location, weights_only=False)
        except Exception as full_error:  # whatever a full unpickle raises, the file is not a checkpoint
            raise _unreadable(path, full_error) from full_error
    except CheckpointError:
        raise
    except Exception as error:  # safetensors and torch raise many unrelated types for a broken file
        raise _unreadable(path, error) from error
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def tensor_dict(value: object, path: str | Path, where: str) -> dict[str, torch.Tensor]:
    """``value`` as a ``{str: Tensor}`` dict; otherwise a CheckpointError naming ``path`` and ``where`` in it."""
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{path}: {where} must be a mapping of tensors, got {type(value).__name__}")
    wrong = [f"{key!r}: {type(item).__name__}" for key, item in value.items()
             if not isinstance(key, str) or not isinstance(item, torch.Tensor)]
    if wrong:
        raise CheckpointError(f"{path}: {where} must map names to tensors; {len(wrong)} do not: {wrong[:5]}")
    return dict(value)
