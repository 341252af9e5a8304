"""Causal Wan DiT checkpoints: format detection, key normalisation, geometry, strict validated load.

Formats (reference/block_causal_models.md §1.1, §5.1, §6)::

    diffusers-folder   config.json (WanTransformer3DModel) + diffusion_pytorch_model.safetensors, or
                       shards + *.safetensors.index.json; diffusers key names. A pipeline root with a
                       transformer/ sub-folder is accepted too.
    wan-folder         config.json (WanModel: dim, num_heads, ...) + safetensors in original Wan names,
                       possibly sharded (Wan2.1-T2V-14B).
    training-pt        .pt/.pth/.ckpt/.bin of Self-Forcing, CausVid, LongLive: the state dict under
                       generator_ema (preferred), generator, model or state_dict, keys "model." + Wan
                       names, possibly with _fsdp_wrapped_module./_orig_mod./module. fragments; or a
                       flat state dict.
    safetensors-file   one flat .safetensors (Krea realtime: "model." + Wan names; Wan or diffusers
                       names also accepted).

Every tensor is first described by a :class:`TensorRef` (shape and dtype, read lazily: safetensors
headers, mmapped torch files), so the geometry is inferred and every key and shape is checked before
a single weight is copied: a checkpoint that does not fit raises :class:`CheckpointError` and nothing
half-loaded is ever returned.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, ModelConfig
from ..models.rope import RopeTables
from ..models.wan_dit import CausalWanDiT
from .checkpoint_io import (
    CheckpointError,
    TensorRef,
    preview,
    read_safetensors,
    read_torch_file,
    refs_from_tensors,
    select_state_dict,
    shard_files,
    strip_wrappers,
)
from .dit_keys import diffusers_to_wan_key, is_diffusers_dit_state
from .lora import read_lora

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "DiTCheckpoint",
    "TensorRef",
    "build_model",
    "check_tensors",
    "checkpoint_from_state_dict",
    "compile_dit",
    "expected_shapes",
    "infer_config",
    "load_model",
    "read_checkpoint",
    "validate",
]

FORMATS = ("diffusers-folder", "wan-folder", "training-pt", "safetensors-file")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class DiTCheckpoint:
    """A DiT checkpoint as found on disk, with keys renamed to original Wan names."""

    path: Path
    format: str
    """One of FORMATS."""
    tensors: dict[str, TensorRef]
    config: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields read from config.json (none for single files)."""
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the reader did: the top-level key used, the prefixes stripped, the naming converted."""

    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def dtypes(self) -> dict[str, int]:
        """Parameter count per stored dtype, e.g. {'bfloat16': 1418996800}."""
        out: dict[str, int] = {}
        for t in self.tensors.values():
            name = str(t.dtype).removeprefix("torch.")
            out[name] = out.get(name, 0) + t.numel
        return out

    def main_dtype(self) -> torch.dtype:
        ref = self.tensors.get("blocks.0.self_attn.q.weight")
        return ref.dtype if ref is not None else torch.float32


# ----- config.json ------------------------------------------------------------------------------------


def config_from_json(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """ModelConfig fields from a Wan (WanModel) or diffusers (WanTransformer3DModel) config.json."""
    cls = raw.get("_class_name")
    unsupported = []
    if cls == "WanTransformer3DModel" or "num_attention_heads" in raw:
        heads = raw.get("num_attention_heads")
        head_dim = raw.get("attention_head_dim", 128)
        out = {
            "num_heads": heads,
            "dim": heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else None,
            "ffn_dim": raw.get("ffn_dim"),
            "num_layers": raw.get("num_layers"),
            "in_dim": raw.get("in_channels"),
            "out_dim": raw.get("out_channels"),
            "text_dim": raw.get("text_dim"),
            "freq_dim": raw.get("freq_dim"),
            "patch_size": tuple(raw["patch_size"]) if "patch_size" in raw else None,
            "eps": raw.get("eps"),
            "cross_attn_norm": raw.get("cross_attn_norm"),
            "rope_max_frames": raw.get("rope_max_seq_len"),
        }
        if raw.get("image_dim") is not None or raw.get("added_kv_proj_dim") is not None:
            unsupported.append("image conditioning (image_dim / added_kv_proj_dim: an I2V model)")
        if raw.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
            unsupported.append(f"qk_norm={raw.get('qk_norm')!r}")
    elif cls in (None, "WanModel") and "dim" in raw:
        out = {k: raw.get(k) for k in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim")}
        out |= {k: raw.get(k) for k in ("text_dim", "text_len", "freq_dim", "eps", "cross_attn_norm")}
        out["patch_size"] = tuple(raw["patch_size"]) if "patch_size" in raw else None
        if raw.get("model_type", "t2v") != "t2v":
            unsupported.append(f"model_type={raw.get('model_type')!r} (only t2v is supported)")
        if not raw.get("qk_norm", True):
            unsupported.append("qk_norm=False")
        if tuple(raw.get("window_size", (-1, -1))) != (-1, -1):
            unsupported.append(f"window_size={raw.get('window_size')!r}")
    else:
        raise CheckpointError(
            f"{where}: not a Wan DiT config (_class_name={cls!r}, no 'dim' or 'num_attention_heads')"
        )
    if unsupported:
        raise CheckpointError(f"{where}: unsupported Wan variant: {'; '.join(unsupported)}")
    return {k: v for k, v in out.items() if v is not None}


# ----- key names --------------------------------------------------------------------------------------


def normalize_keys(refs: Mapping[str, TensorRef], notes: list[str]) -> dict[str, TensorRef]:
    """Checkpoint names -> original Wan names; unknown names are kept so that they get reported."""
    out: dict[str, TensorRef] = {}
    origin: dict[str, str] = {}
    stripped = {k: strip_wrappers(k) for k in refs}
    changed = sorted({k.removesuffix(v) for k, v in stripped.items() if k != v and k.endswith(v)})
    if any(k != v for k, v in stripped.items()):
        notes.append(f"stripped key prefixes/fragments ({preview(changed, 3) or 'inner fragments'})")
    diffusers = is_diffusers_dit_state(list(stripped.values()))
    if diffusers:
        notes.append("converted diffusers key names to Wan names")
    for old, key in stripped.items():
        if diffusers:
            try:
                key = diffusers_to_wan_key(key)
            except KeyError:
                pass  # reported as unexpected by the key check
        if key in out:
            raise CheckpointError(f"checkpoint keys {origin[key]!r} and {old!r} both map to {key!r}")
        out[key], origin[key] = refs[old], old
    return out


# ----- reading a checkpoint ---------------------------------------------------------------------------


def read_checkpoint(path: str | Path, key: str | None = None) -> DiTCheckpoint:
    """Detect the format of ``path`` and describe its tensors under Wan names (no values read).

    ``key`` picks the top-level key of a training .pt (default: the first of WEIGHTS_KEYS present).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DiT checkpoint not found: '{path}'")
    notes: list[str] = []
    config: dict[str, Any] = {}
    if path.is_dir():
        folder = path
        if not (folder / "config.json").is_file() and (folder / "transformer").is_dir():
            folder = folder / "transformer"  # diffusers pipeline root
            notes.append("used the transformer/ sub-folder")
        files = shard_files(folder)
        refs: dict[str, TensorRef] = {}
        for f in files:
            shard, _ = read_safetensors(f)
            dup = sorted(set(shard) & set(refs))
            if dup:
                raise CheckpointError(f"keys stored in more than one shard ({f.name}): {preview(dup)}")
            refs |= shard
        if (folder / "config.json").is_file():
            try:
                raw = json.loads((folder / "config.json").read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"bad config.json in '{folder}': {e}") from e
            config = config_from_json(raw, f"{folder / 'config.json'}")
        else:
            notes.append("no config.json: geometry inferred from shapes")
        fmt = "diffusers-folder" if is_diffusers_dit_state(list(refs)) else "wan-folder"
        if len(files) > 1:
            notes.append(f"{len(files)} shards")
    elif path.suffix == ".safetensors":
        refs, _ = read_safetensors(path)
        files, fmt = [path], "safetensors-file"
    elif path.suffix in TORCH_SUFFIXES:
        state, note = select_state_dict(read_torch_file(path), path, key)
        refs, files, fmt = refs_from_tensors(state), [path], "training-pt"
        notes.append(note)
    else:
        raise CheckpointError(
            f"unknown checkpoint format: '{path}' (expected a folder with config.json and safetensors, "
            f"a {'/'.join(TORCH_SUFFIXES)} file or a .safetensors file)"
        )
    if key is not None and fmt != "training-pt":
        raise CheckpointError(f"a top-level key ({key!r}) only applies to .pt files, not to {fmt} '{path}'")
    if not refs:
        raise CheckpointError(f"'{path}' holds no tensors")
    tensors = normalize_keys(refs, notes)
    if any(k.startswith("img_emb.") or ".k_img." in k for k in tensors):
        raise CheckpointError(
            f"'{path}' is an image-to-video Wan model (img_emb / k_img keys): not supported"
        )
    return DiTCheckpoint(path, fmt, tensors, config, files, notes)


# ----- geometry ---------------------------------------------------------------------------------------


def infer_config(ckpt: DiTCheckpoint, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """Geometry: ``overrides`` > config.json > tensor shapes > ModelConfig defaults.

    Shapes give dim (blocks.0.self_attn.q.weight), num_layers (max block index + 1), ffn_dim, in_dim
    and patch size (patch_embedding), out_dim (head.head), text_dim, freq_dim and cross_attn_norm;
    num_heads, not visible in any shape, comes from config or overrides, else dim / 128 (Wan's head_dim).
    """
    t = ckpt.tensors
    if "blocks.0.self_attn.q.weight" not in t:
        raise CheckpointError(
            f"'{ckpt.path}' ({ckpt.format}) holds no Wan DiT weights: 'blocks.0.self_attn.q.weight' is "
            f"missing; its first keys are {preview(sorted(t))}"
        )
    shapes = {k: v.shape for k, v in t.items()}
    dim = shapes["blocks.0.self_attn.q.weight"][0]
    inferred: dict[str, Any] = {"dim": dim}
    inferred["num_layers"] = 1 + max(int(m[1]) for k in t if (m := _BLOCK_INDEX.match(k)))
    if len(s := shapes.get("blocks.0.ffn.0.weight", ())) == 2:
        inferred["ffn_dim"] = s[0]
    if len(s := shapes.get("patch_embedding.weight", ())) == 5:
        inferred["in_dim"], inferred["patch_size"] = s[1], tuple(s[2:])
    if len(s := shapes.get("head.head.weight", ())) == 2:
        inferred["out_dim"] = max(1, s[0] // math.prod(inferred.get("patch_size", (1, 2, 2))))
    if len(s := shapes.get("text_embedding.0.weight", ())) == 2:
        inferred["text_dim"] = s[1]
    if len(s := shapes.get("time_embedding.0.weight", ())) == 2:
        inferred["freq_dim"] = s[1]
    inferred["cross_attn_norm"] = "blocks.0.norm3.weight" in t
    fields = inferred | ckpt.config | dict(overrides or {})
    unknown = sorted(set(fields) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise CheckpointError(
            f"unknown model fields {unknown}; known: {', '.join(ModelConfig.__dataclass_fields__)}"
        )
    if "num_heads" not in fields:
        if fields["dim"] % 128:
            raise CheckpointError(
                f"cannot infer num_heads of '{ckpt.path}': dim {fields['dim']} is not a multiple of Wan's "
                'head_dim 128; give num_heads in config.json or the manifest\'s "model" section'
            )
        fields["num_heads"] = fields["dim"] // 128
    if "patch_size" in fields:
        fields["patch_size"] = tuple(fields["patch_size"])
    try:
        return ModelConfig(**fields)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"invalid geometry for '{ckpt.path}': {e}") from e


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of CausalWanDiT(cfg), from a model on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = CausalWanDiT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_tensors(
    cfg: ModelConfig, tensors: Mapping[str, TensorRef]
) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, shape mismatches 'key: checkpoint [..] vs model [..]')."""
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(tensors[k].shape)} vs model {list(shape)}"
        for k, shape in expected.items()
        if k in tensors and tensors[k].shape != shape
    ]
    not_float = [k for k in expected if k in tensors and not tensors[k].dtype.is_floating_point]
    mismatched += [f"{k}: dtype {tensors[k].dtype} is not floating point" for k in not_float]
    return missing, unexpected, mismatched


def describe_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    out = []
    if missing:
        out.append(f"{len(missing)} missing keys: {preview(missing)}")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected keys: {preview(unexpected)}")
    if mismatched:
        out.append(f"{len(mismatched)} shape mismatches: {preview(mismatched)}")
    return out


def geometry_summary(cfg: ModelConfig) -> str:
    return (
        f"dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, ffn {cfg.ffn_dim}, "
        f"in/out {cfg.in_dim}/{cfg.out_dim}, text_dim {cfg.text_dim}"
    )


def validate(ckpt: DiTCheckpoint, cfg: ModelConfig) -> None:
    """Raise CheckpointError listing every missing/unexpected key and shape mismatch."""
    missing, unexpected, mismatched = check_tensors(cfg, ckpt.tensors)
    problems = describe_problems(missing, unexpected, mismatched)
    if problems:
        raise CheckpointError(
            f"DiT checkpoint '{ckpt.path}' ({ckpt.format}) does not fit the model ({geometry_summary(cfg)}): "
            + "; ".join(problems),
            missing,
            unexpected,
            mismatched,
        )


# ----- loading ----------------------------------------------------------------------------------------


def _keeps_fp32(key: str) -> bool:
    """Wan's fp32 islands (time MLPs and modulations), as CausalWanDiT.to_inference_dtype keeps them."""
    return key.split(".")[0] in CausalWanDiT.fp32_modules or key.endswith(CausalWanDiT.fp32_param_suffixes)


def load_model(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    key: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
) -> CausalWanDiT:
    """Load a causal Wan DiT from any supported checkpoint (see the module docstring), in eval mode.

    ``dtype`` None keeps the checkpoint's (that of blocks.0.self_attn.q.weight); with a reduced dtype
    Wan's fp32 islands stay fp32. ``key`` picks a training checkpoint's top-level key; ``overrides``
    sets ModelConfig fields; ``lora`` merges a LongLive/PEFT LoRA as W + (alpha/r) B A (alpha
    defaults to r, LongLive's setting). Raises CheckpointError (a ValueError) before anything is loaded
    when the file is unreadable, of an unknown format, or does not fit.
    """
    ckpt = read_checkpoint(path, key)
    return build_model(ckpt, dtype, device, overrides=overrides, lora=lora, lora_alpha=lora_alpha)


def checkpoint_from_state_dict(
    state: Mapping[str, torch.Tensor], name: str = "<state dict>"
) -> DiTCheckpoint:
    """An in-memory state dict (any naming load_model accepts) as a checkpoint for build_model."""
    notes: list[str] = []
    return DiTCheckpoint(
        Path(name), "state-dict", normalize_keys(refs_from_tensors(state), notes), notes=notes
    )


def build_model(
    ckpt: DiTCheckpoint,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
) -> CausalWanDiT:
    """Infer the geometry, validate every key and shape (and the LoRA), then materialise the DiT."""
    cfg = infer_config(ckpt, overrides)
    validate(ckpt, cfg)
    deltas = read_lora(lora, expected_shapes(cfg), lora_alpha) if lora is not None else {}
    if dtype is None:
        dtype = ckpt.main_dtype()
        if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            dtype = torch.bfloat16  # e.g. fp8 storage: compute needs a real float type
            log.warning("%s stores %s weights: loading as bfloat16", ckpt.path, ckpt.main_dtype())
    device = torch.device(device or "cpu")
    reduced = dtype.itemsize < 4  # bf16/fp16: keep Wan's fp32 islands
    with torch.device("meta"):
        model = CausalWanDiT(cfg)
    state = {}
    for name, ref in ckpt.tensors.items():
        target = torch.float32 if reduced and _keeps_fp32(name) else dtype
        value = ref.read()
        if name in deltas:
            value = deltas[name].merge(value.to(device))
        state[name] = value.to(device=device, dtype=target)
    model.load_state_dict(state, strict=True, assign=True)
    model.rope = RopeTables(cfg.head_dim, cfg.rope_max_frames)  # built on meta above: rebuild for real
    notes = "; ".join(ckpt.notes) or "-"
    extra = f" + LoRA {lora}" if lora else ""
    billions = ckpt.num_params() / 1e9
    log.info(
        "loaded DiT %s (%s; %s) %s, %.3fB parameters as %s%s",
        ckpt.path,
        ckpt.format,
        notes,
        geometry_summary(cfg),
        billions,
        dtype,
        extra,
    )
    return model.eval()


def compile_dit(
    model: CausalWanDiT, *, mode: str | None = "auto", backend: str = "inductor", max_shapes: int = 64
) -> CausalWanDiT:
    """torch.compile the DiT's trunk in place (engine/compile.py): the module keeps its type,
    attributes and methods; the first calls of each new tick shape (in-flight count, committed
    length) are slow while they compile. mode "auto": CUDA graphs on CUDA."""
    from ..engine.compile import compile_dit as compile_trunk

    return compile_trunk(model, mode=mode, backend=backend, max_shapes=max_shapes)
