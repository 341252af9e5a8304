"""`vidcascade inspect [MODEL]`: what a model holds, without loading a large DiT.

MODEL is anything ``--model`` accepts (weights/registry.py ``resolve_model``: the built-ins
``embedded`` and ``random-tiny``, an embedded-format folder such as ``train export --dest`` writes,
a model folder with a vidcascade.json manifest) or a bare DiT checkpoint file/folder. Reports the
geometry, parameter count and stored dtypes, the sampling (steps, shift, guidance) and cache
(sink, window, sink bias) settings, the text encoder and decoder, the K/V cache memory at a
resolution and window for every cascade level, and every problem found. Exit status 0 when the
model is usable, 1 when it is found but not usable; a name that is neither a built-in nor a path
raises ValueError (the CLI's exit status 2).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .config import CacheConfig, ConfigError, ModelConfig, SamplingConfig
from .inspect_format import format_report
from .scheduling.plan import steady_in_flight
from .weights.bundle_folder import (
    BUNDLE_PRESETS,
    MANIFEST,
    Manifest,
    ManifestError,
    load_manifest,
    missing_files,
)
from .weights.loading import CheckpointError, check_tensors, describe_problems, infer_config, read_checkpoint

__all__ = ["format_report", "inspect_path", "kv_report", "run_inspect"]

DEFAULTS = BUNDLE_PRESETS["self-forcing"]
WAN_SPATIAL_STRIDE = 8
EMBEDDED_DIT = "dit.safetensors"


@dataclasses.dataclass
class _Settings:
    """What the report's K/V and size sections need, whichever kind of model gave them."""

    cfg: ModelConfig | None
    sampling: SamplingConfig
    cache: CacheConfig
    size: tuple[int, int]
    stride: int
    kv_dtype: torch.dtype
    """The dtype the model's K/V has when run as the CLI runs it by default."""


def kv_bytes_per_frame(cfg: ModelConfig, tokens_per_frame: int, dtype: torch.dtype) -> int:
    """Self-attention K and V of one latent frame over all layers."""
    return 2 * cfg.num_layers * tokens_per_frame * cfg.dim * dtype.itemsize


def kv_report(
    cfg: ModelConfig,
    height: int,
    width: int,
    stride: int,
    sampling: SamplingConfig,
    cache: CacheConfig,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Bytes of the engine's K/V pool (cache/pool.py) for every cascade level, batch 1."""
    _, ph, pw = cfg.patch_size
    lh, lw = height // stride, width // stride
    tpf = (lh // ph) * (lw // pw)
    per_frame = kv_bytes_per_frame(cfg, tpf, dtype)
    committed = cache.committed_frames * per_frame
    steps, fpb = sampling.num_steps, sampling.frames_per_block
    levels = []
    for level in range(steps + 1):
        blocks = steady_in_flight(steps, steps + 1 - level)
        inflight = blocks * fpb * per_frame
        pool = inflight + committed
        levels.append(
            {"level": level, "in_flight_blocks": blocks, "inflight_bytes": inflight, "pool_bytes": pool}
        )
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "height": height,
        "width": width,
        "latent": [lh, lw],
        "tokens_per_frame": tpf,
        "bytes_per_frame": per_frame,
        "sink_frames": cache.sink_frames,
        "window_frames": cache.window_frames,
        "sink_bias": cache.sink_bias,
        "committed_bytes": committed,
        "cross_attn_bytes": 2 * cfg.num_layers * cfg.text_len * cfg.dim * dtype.itemsize,
        "levels": levels,
    }


# ----------------------------------------------------------------------------- parts


def _text_dim(te: str) -> int:
    """d_model of a umT5 folder, read from config.json or the Wan .pth shapes (no weights loaded)."""
    from .text.umt5 import (
        MODEL_WEIGHT_FILES,
        WAN_T5_FILE,
        WAN_T5_TOKENIZER_SUBDIR,
        resolve_umt5_folders,
    )
    from .weights.checkpoint_io import read_torch_file

    root = Path(te)
    hf_model = (root / "config.json").is_file() and any((root / n).is_file() for n in MODEL_WEIGHT_FILES)
    if (root / WAN_T5_FILE).is_file() and not hf_model:  # the order UMT5TextEncoder.from_folder uses
        tok = root / WAN_T5_TOKENIZER_SUBDIR
        if not any((tok / n).is_file() for n in ("tokenizer.json", "spiece.model")):
            raise FileNotFoundError(f"Wan T5 tokenizer folder '{tok}' has no tokenizer.json or spiece.model")
        return int(read_torch_file(root / WAN_T5_FILE)["token_embedding.weight"].shape[1])
    model_dir, _ = resolve_umt5_folders(root)
    return int(json.loads((model_dir / "config.json").read_text())["d_model"])


def _minilm_dim() -> int:
    """Hidden size of the packaged MiniLM (the `vidcascade[text]` extra); raises when missing."""
    from .text.minilm import find_minilm_folder

    return int(json.loads((find_minilm_folder() / "config.json").read_text())["hidden_size"])


def _inspect_text(rep: dict[str, Any], source: str, cfg: ModelConfig | None, mode: str | None = None) -> None:
    """The text encoder: found, and its width matching the DiT's text_dim."""
    rep["text_encoder"] = {"source": source} | ({"mode": mode} if mode else {})
    try:
        if source == "hash":
            dim = cfg.text_dim if cfg is not None else None  # hashed words: any width
        elif source == "minilm":
            dim = _minilm_dim()
        elif Path(source).exists():
            dim = _text_dim(source)
        else:
            return  # a missing folder is already a problem (missing_files)
    except (ValueError, OSError, KeyError, ModuleNotFoundError) as e:
        rep["problems"].append(f"text_encoder: {e}")
        return
    if dim is not None:
        rep["text_encoder"]["text_dim"] = dim
        if cfg is not None and dim != cfg.text_dim:
            rep["problems"].append(f"text_encoder: {dim}-d states but the DiT's text_dim is {cfg.text_dim}")


def _inspect_vae(rep: dict[str, Any], path: Path | None, cfg: ModelConfig | None) -> int:
    """The VAE (loaded: Wan's is small), or the latent preview; returns the spatial stride."""
    if path is None:
        rep["vae"] = {"path": None, "note": "no VAE: frames are a latent preview (PreviewDecoder)"}
        return WAN_SPATIAL_STRIDE
    rep["vae"] = {"path": str(path)}
    if not path.exists():
        return WAN_SPATIAL_STRIDE  # a missing file is already a problem (missing_files)
    from .weights.vae_keys import load_wan_vae

    # The loader logs the whole VAE config at INFO; the report shows what matters (-v keeps it).
    loader_log = logging.getLogger(load_wan_vae.__module__)
    old_level = loader_log.level
    if loader_log.getEffectiveLevel() >= logging.INFO:
        loader_log.setLevel(logging.WARNING)
    try:
        vae = load_wan_vae(path)
    except (ValueError, OSError) as e:
        rep["problems"].append(f"vae: {e}")
        return WAN_SPATIAL_STRIDE
    finally:
        loader_log.setLevel(old_level)
    c, stride = vae.config, vae.spatial_stride
    rep["vae"] |= {"z_dim": c.z_dim, "base_dim": c.base_dim, "stride": [vae.temporal_stride, stride, stride]}
    if cfg is not None and c.z_dim != cfg.in_dim:
        rep["problems"].append(f"vae: {c.z_dim} latent channels but the DiT has in_dim {cfg.in_dim}")
    return stride


def _inspect_dit(
    rep: dict[str, Any], path: Path, key: str | None, overrides: dict, m: Manifest | None
) -> ModelConfig | None:
    problems = rep["problems"]
    try:
        ckpt = read_checkpoint(path, key)
        rep["dit"] = {
            "path": str(path),
            "format": ckpt.format,
            "files": [str(f) for f in ckpt.files],
            "notes": ckpt.notes,
            "num_params": ckpt.num_params(),
            "dtypes": ckpt.dtypes(),
        }
        cfg = infer_config(ckpt, overrides)
    except (CheckpointError, OSError) as e:
        problems.append(f"dit: {e}")
        return None
    geometry = {f: getattr(cfg, f) for f in ModelConfig.__dataclass_fields__}
    rep["dit"] |= {"geometry": geometry | {"head_dim": cfg.head_dim}, "model_params": cfg.num_params()}
    problems += [f"dit: {p}" for p in describe_problems(*check_tensors(cfg, ckpt.tensors))]
    if m is not None and m.lora is not None and m.lora.exists():
        from .weights.loading import expected_shapes
        from .weights.lora import read_lora

        try:
            rep["dit"]["lora"] = {
                "path": str(m.lora),
                "merged_layers": len(read_lora(m.lora, expected_shapes(cfg))),
            }
        except (CheckpointError, OSError) as e:
            problems.append(f"lora: {e}")
    return cfg


# ----------------------------------------------------------------------------- kinds of model


def _builtin(rep: dict[str, Any], name: str) -> _Settings:
    """A model made in memory (random-tiny): built as `--model` builds it, then described."""
    from .weights.registry import BUILTIN

    bundle = BUILTIN[name]("cpu")
    cfg = bundle.dit.cfg
    dtypes: dict[str, int] = {}
    for p in bundle.dit.parameters():
        dt = str(p.dtype).removeprefix("torch.")
        dtypes[dt] = dtypes.get(dt, 0) + p.numel()
    geometry = {f: getattr(cfg, f) for f in ModelConfig.__dataclass_fields__}
    rep |= {"kind": "builtin", "name": name, "description": bundle.description, "trained": bundle.trained}
    rep["dit"] = {
        "path": None,
        "format": "built in memory",
        "files": [],
        "notes": [] if bundle.trained else ["random weights (untrained)"],
        "num_params": sum(dtypes.values()),
        "dtypes": dtypes,
        "geometry": geometry | {"head_dim": cfg.head_dim},
        "model_params": cfg.num_params(),
    }
    te = bundle.text_encoder
    rep["text_encoder"] = {"source": type(te).__name__, "text_dim": te.text_dim}
    decoder = bundle.make_decoder()
    stride = getattr(decoder, "upscale", WAN_SPATIAL_STRIDE)
    rep["vae"] = {"path": None, "note": f"no VAE: frames are a latent preview ({type(decoder).__name__})"}
    size = (bundle.latent_hw[0] * stride, bundle.latent_hw[1] * stride)
    rep["fps"] = bundle.fps
    kv_dtype = bundle.dit.patch_embedding.weight.dtype
    return _Settings(cfg, bundle.sampling, bundle.cache, size, stride, kv_dtype)


def _read_model_json(rep: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """model.json of an embedded-format folder, or None with the problem recorded."""
    try:
        meta = json.loads((folder / "model.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
        for section in ("model", "sampling", "cache", "latent_hw", "fps"):
            if section not in meta:
                raise ValueError(f"no {section!r} entry")
        return meta
    except (OSError, ValueError) as e:
        rep["problems"].append(f"model.json: {e}")
        return None


def _embedded_settings(rep: dict[str, Any], meta: dict[str, Any], stride: int) -> _Settings | None:
    from .weights.embedded import _tuplify

    try:
        sampling = SamplingConfig(**_tuplify(meta["sampling"]))
        cache = CacheConfig(**meta["cache"])
        lh, lw = (int(v) for v in meta["latent_hw"])
    except (ConfigError, TypeError, ValueError) as e:
        rep["problems"].append(f"model.json: {e}")
        return None
    rep["fps"] = float(meta["fps"])
    # load_embedded runs the DiT in float32 whatever the file stores.
    return _Settings(None, sampling, cache, (lh * stride, lw * stride), stride, torch.float32)


def _embedded_folder(rep: dict[str, Any], folder: Path, name: str) -> _Settings | None:
    """model.json + dit.safetensors + vae.safetensors (weights/embedded.py): the built-in
    ``embedded`` model and the folders `vidcascade train export --dest` writes."""
    rep |= {"kind": "embedded-folder", "name": name, "folder": str(folder)}
    meta = _read_model_json(rep, folder)
    if meta is None:
        return None
    rep |= {"description": meta.get("description", ""), "trained": True}
    if "train_step" in meta:
        rep["train_step"] = meta["train_step"]
    cfg = _inspect_dit(rep, folder / EMBEDDED_DIT, None, dict(meta["model"]), None)
    stride = _inspect_vae(rep, folder / "vae.safetensors", cfg)
    text = meta.get("text", {})
    _inspect_text(rep, text.get("encoder", "minilm"), cfg, text.get("mode", "sentence"))
    settings = _embedded_settings(rep, meta, stride)
    if settings is not None:
        settings.cfg = cfg
    return settings


def _manifest_folder(rep: dict[str, Any], path: Path) -> _Settings | None:
    try:
        m = load_manifest(path)
    except ManifestError as e:
        rep |= {"kind": "bundle"}
        rep["problems"].append(str(e))
        return None
    rep |= {"kind": "bundle", "name": m.name, "preset": m.preset, "description": m.description}
    rep["problems"] += missing_files(m)
    cfg = _inspect_dit(rep, m.dit, m.dit_key, m.model, m) if m.dit.exists() else None
    stride = _inspect_vae(rep, m.vae, cfg)
    _inspect_text(rep, m.text_encoder, cfg)
    rep["fps"] = m.fps
    return _Settings(cfg, m.sampling, m.cache, (m.height, m.width), stride, torch.bfloat16)


def _checkpoint(rep: dict[str, Any], path: Path) -> _Settings | None:
    """A bare DiT checkpoint. The dit.safetensors of an embedded-format folder takes its geometry,
    sampling and cache from the model.json beside it; any other gets the self-forcing defaults."""
    from .weights.embedded import embedded_available

    rep["kind"] = "dit"
    if path.name == EMBEDDED_DIT and embedded_available(path.parent):
        meta = _read_model_json(rep, path.parent)
        if meta is None:
            return None
        rep["settings_from"] = str(path.parent / "model.json")
        cfg = _inspect_dit(rep, path, None, dict(meta["model"]), None)
        settings = _embedded_settings(rep, meta, WAN_SPATIAL_STRIDE)
        if settings is not None:
            settings.cfg = cfg
        return settings
    rep["settings_from"] = "the self-forcing preset (a model folder's manifest sets them)"
    sampling = SamplingConfig(**{**DEFAULTS["sampling"], "steps": tuple(DEFAULTS["sampling"]["steps"])})
    cache = CacheConfig(**DEFAULTS["cache"])
    cfg = _inspect_dit(rep, path, None, {}, None)
    size = (DEFAULTS["height"], DEFAULTS["width"])
    return _Settings(cfg, sampling, cache, size, WAN_SPATIAL_STRIDE, torch.bfloat16)


def inspect_path(
    path: str | Path | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    sink_frames: int | None = None,
    window_frames: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The report as a JSON-serialisable dict; ``usable`` is False when ``problems`` is not empty.

    ``path`` is what ``--model`` takes (None: the default model) or a DiT checkpoint; ValueError
    when it is neither a built-in name nor an existing path. ``dtype`` is the K/V dtype (default:
    float32 for the built-in and embedded-format models, which run as stored, else bfloat16).
    """
    from .weights.registry import resolve_model

    src = resolve_model(None if path is None else str(path))
    rep: dict[str, Any] = {"path": src.name, "problems": []}
    if src.kind == "builtin":
        settings = _builtin(rep, src.name)
    elif src.kind == "embedded-folder":
        settings = _embedded_folder(rep, src.path, src.name)
    elif (src.path / MANIFEST).is_file() or (src.path.is_file() and src.path.suffix == ".json"):
        settings = _manifest_folder(rep, src.path)
    else:
        settings = _checkpoint(rep, src.path)
    if settings is not None:
        _report_settings(rep, settings, height, width, sink_frames, window_frames, dtype)
    rep["usable"] = not rep["problems"]
    return rep


def _report_settings(
    rep: dict[str, Any],
    s: _Settings,
    height: int | None,
    width: int | None,
    sink_frames: int | None,
    window_frames: int | None,
    dtype: torch.dtype | None,
) -> None:
    rep["sampling"] = dataclasses.asdict(s.sampling) | {"steps": list(s.sampling.steps)}
    rep["cache"] = dataclasses.asdict(s.cache)
    rep["size"] = list(s.size)
    cache = dataclasses.replace(
        s.cache,
        sink_frames=s.cache.sink_frames if sink_frames is None else sink_frames,
        window_frames=s.cache.window_frames if window_frames is None else window_frames,
    )
    h, w = height or s.size[0], width or s.size[1]
    if s.cfg is None:
        return
    unit = s.stride * max(s.cfg.patch_size[1:])
    if h % unit or w % unit:
        rep["problems"].append(f"size: {h}x{w} pixels is not a multiple of {unit} (VAE stride x patch)")
    rep["kv_cache"] = kv_report(s.cfg, h, w, s.stride, s.sampling, cache, dtype or s.kv_dtype)


def run_inspect(args: Any) -> int:
    """The CLI entry: args.path (or args.model), height, width, sink_frames, window_frames, dtype, json."""
    if args.path is not None and args.model is not None and args.path != args.model:
        raise ValueError(f"give the model once: MODEL {args.path!r} and --model {args.model!r} differ")
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive number of pixels, got {value}")
    rep = inspect_path(
        args.path if args.path is not None else args.model,
        height=args.height,
        width=args.width,
        sink_frames=args.sink_frames,
        window_frames=args.window_frames,
        dtype=dtype,
    )
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0 if rep["usable"] else 1
