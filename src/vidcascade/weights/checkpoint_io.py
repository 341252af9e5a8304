"""Reading checkpoint files without reading their values: safetensors headers, memory-mapped torch
files, sharded folders. Shared by the DiT loader (loading.py) and the LoRA reader (lora.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

WEIGHTS_KEYS = ("generator_ema", "generator", "model", "state_dict")
"""Top-level keys of training checkpoints that hold the DiT, in order of preference (EMA first:
Self-Forcing's inference and demo load generator_ema)."""
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_LIST_LIMIT = 10
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """A DiT checkpoint that cannot be read, is of an unknown format, or does not fit the model.

    ``missing``, ``unexpected`` and ``mismatched`` hold the full lists when keys or shapes are wrong.
    """

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


def preview(items: list[str], limit: int = _LIST_LIMIT) -> str:
    """The first ``limit`` items, comma-separated, with '...' when more exist."""
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


@dataclass(frozen=True)
class TensorRef:
    """Shape and dtype of one stored tensor; ``read()`` fetches its values."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_safetensors(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Header-only read: shapes and dtypes now, values on ``read()`` (the file stays memory-mapped)."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        metadata = handle.metadata() or {}
        refs = {}
        for key in handle.keys():
            sl = handle.get_slice(key)
            dtype = _ST_DTYPES.get(sl.get_dtype())
            if dtype is None:
                raise CheckpointError(f"tensor {key!r} has unsupported dtype {sl.get_dtype()}")
            refs[key] = TensorRef(tuple(sl.get_shape()), dtype, partial(handle.get_tensor, key))
    except CheckpointError as e:
        raise CheckpointError(f"cannot read safetensors file '{path}': {e}") from e
    except Exception as e:  # safetensors raises its own types for truncated or corrupt headers
        raise CheckpointError(
            f"cannot read safetensors file '{path}' (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    return refs, metadata


def read_torch_file(path: Path) -> Any:
    """torch.load with weights_only (never arbitrary pickles), memory-mapped when the file allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) files cannot be mmapped: try once more without
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, EOF and unpickling errors all mean "not a readable checkpoint"
        raise CheckpointError(
            f"cannot read '{path}' as a torch checkpoint (truncated, corrupt, or holding objects other "
            f"than tensors and dicts): {type(e).__name__}: {e}"
        ) from e


def refs_from_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, TensorRef]:
    return {k: TensorRef(tuple(v.shape), v.dtype, partial(lambda t: t, v)) for k, v in state.items()}


def select_state_dict(obj: Any, path: Path, key: str | None = None) -> tuple[Mapping[str, Any], str]:
    """The state dict inside a loaded training checkpoint, and a note saying where it was found."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a dict of tensors")
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"'{path}' has no top-level key {key!r}; it has {preview(sorted(obj))}")
        inner, note = obj[key], f"state dict under top-level key {key!r}"
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner, note = obj, "flat state dict"
    else:
        found = next((k for k in WEIGHTS_KEYS if isinstance(obj.get(k), Mapping)), None)
        if found is None:
            hint = (
                " (a LoRA file: pass it as lora=, or 'lora' in the manifest)"
                if "generator_lora" in obj
                else ""
            )
            raise CheckpointError(
                f"unknown checkpoint format: '{path}' has top-level keys [{preview(sorted(map(str, obj)))}] "
                f"and none of {', '.join(WEIGHTS_KEYS)} holds a state dict{hint}"
            )
        inner, note = obj[found], f"state dict under top-level key {found!r}"
        others = [k for k in WEIGHTS_KEYS if k != found and isinstance(obj.get(k), Mapping)]
        if others:
            note += f" (also present: {', '.join(others)})"
    if not isinstance(inner, Mapping):
        raise CheckpointError(f"'{path}': {note} is a {type(inner).__name__}, not a dict of tensors")
    bad = [str(k) for k, v in inner.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"'{path}': {note} holds {len(bad)} non-tensor entries ({preview(bad)})")
    return inner, note


def shard_files(folder: Path) -> list[Path]:
    """Weight files of a folder: the shards named by an index json, or the single weights file."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"bad shard index '{indexes[0]}': {type(e).__name__}: {e}") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"shard index '{indexes[0].name}' names missing files: {preview(absent)}")
        return files
    if (folder / DIFFUSERS_WEIGHTS).is_file():
        return [folder / DIFFUSERS_WEIGHTS]
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates
    listing = preview(sorted(p.name for p in folder.iterdir()))
    raise CheckpointError(
        f"unknown checkpoint format: folder '{folder}' has no {DIFFUSERS_WEIGHTS}, "
        f"no *.safetensors.index.json and {'several' if candidates else 'no'} *.safetensors files "
        f"(contents: {listing})"
    )


# Fragments that FSDP, torch.compile and DDP insert into parameter names.
WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_orig_mod", "module", "_checkpoint_wrapped_module"})


def strip_wrappers(key: str, leading: frozenset[str] = frozenset({"model"})) -> str:
    """Drop FSDP/compile/DDP fragments anywhere and wrapper names (``model.``) at the front."""
    parts = [p for p in key.split(".") if p not in WRAPPER_PARTS]
    while len(parts) > 1 and parts[0] in leading:
        parts = parts[1:]
    return ".".join(parts)
