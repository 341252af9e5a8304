"""`vidcascade inspect PATH`: what a model folder or DiT checkpoint holds, without loading the DiT.

Reports the format found, the geometry, the parameter count and stored dtypes, the K/V cache
memory at a resolution and window (per latent frame, committed sink + window, in-flight blocks at
every cascade level), and every problem found (missing parts, key and shape mismatches). Exit
status 0 when the target is usable, 1 otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import CacheConfig, ModelConfig, SamplingConfig
from .scheduling.plan import steady_in_flight
from .weights.bundle_folder import (
    BUILTIN_TEXT,
    BUNDLE_PRESETS,
    MANIFEST,
    Manifest,
    ManifestError,
    load_manifest,
    missing_files,
)
from .weights.loading import CheckpointError, check_tensors, describe_problems, infer_config, read_checkpoint

DEFAULTS = BUNDLE_PRESETS["self-forcing"]
WAN_SPATIAL_STRIDE = 8


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
        "committed_bytes": committed,
        "cross_attn_bytes": 2 * cfg.num_layers * cfg.text_len * cfg.dim * dtype.itemsize,
        "levels": levels,
    }


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


def _inspect_parts(rep: dict[str, Any], m: Manifest, cfg: ModelConfig | None) -> int:
    """VAE and text encoder of a bundle; returns the VAE's spatial stride."""
    problems = rep["problems"]
    stride = WAN_SPATIAL_STRIDE
    if m.vae is None:
        rep["vae"] = {"path": None, "note": "no VAE: frames are a latent preview (PreviewDecoder)"}
    elif m.vae.exists():
        from .weights.vae_keys import load_wan_vae

        try:
            vae = load_wan_vae(m.vae)
            stride = vae.spatial_stride
            c = vae.config
            strides = [vae.temporal_stride, stride, stride]
            rep["vae"] = {"path": str(m.vae), "z_dim": c.z_dim, "base_dim": c.base_dim, "stride": strides}
            if cfg is not None and c.z_dim != cfg.in_dim:
                problems.append(f"vae: {c.z_dim} latent channels but the DiT has in_dim {cfg.in_dim}")
        except (ValueError, OSError) as e:
            problems.append(f"vae: {e}")
    te = m.text_encoder
    rep["text_encoder"] = {"source": te}
    if te not in BUILTIN_TEXT and Path(te).exists():
        try:
            rep["text_encoder"]["text_dim"] = dim = _text_dim(te)
            if cfg is not None and dim != cfg.text_dim:
                problems.append(f"text_encoder: {dim}-d states but the DiT's text_dim is {cfg.text_dim}")
        except (ValueError, OSError, KeyError) as e:
            problems.append(f"text_encoder: {e}")
    return stride


def _inspect_dit(rep: dict[str, Any], path: Path, key: str | None, overrides: dict, m: Manifest | None):
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
    except (CheckpointError, FileNotFoundError) as e:
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


def inspect_path(
    path: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    sink_frames: int | None = None,
    window_frames: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, Any]:
    """The report as a JSON-serialisable dict; ``usable`` is False when ``problems`` is not empty."""
    path = Path(path)
    rep: dict[str, Any] = {"path": str(path), "problems": []}
    is_bundle = (path.is_dir() and (path / MANIFEST).is_file()) or (path.is_file() and path.suffix == ".json")
    m = None
    if is_bundle:
        try:
            m = load_manifest(path)
        except ManifestError as e:
            rep |= {"kind": "bundle", "problems": [str(e)], "usable": False}
            return rep
        rep |= {"kind": "bundle", "name": m.name, "preset": m.preset}
        rep["problems"] += missing_files(m)
        sampling, cache, size = m.sampling, m.cache, (m.height, m.width)
        cfg = _inspect_dit(rep, m.dit, m.dit_key, m.model, m) if m.dit.exists() else None
        stride = _inspect_parts(rep, m, cfg)
    else:
        rep["kind"] = "dit"
        sampling = SamplingConfig(**{**DEFAULTS["sampling"], "steps": tuple(DEFAULTS["sampling"]["steps"])})
        cache, size = CacheConfig(**DEFAULTS["cache"]), (DEFAULTS["height"], DEFAULTS["width"])
        cfg, stride = _inspect_dit(rep, path, None, {}, None), WAN_SPATIAL_STRIDE
    cache = CacheConfig(
        sink_frames=cache.sink_frames if sink_frames is None else sink_frames,
        window_frames=cache.window_frames if window_frames is None else window_frames,
    )
    h, w = height or size[0], width or size[1]
    if cfg is not None:
        unit = stride * max(cfg.patch_size[1:])
        if h % unit or w % unit:
            rep["problems"].append(f"size: {h}x{w} pixels is not a multiple of {unit} (VAE stride x patch)")
        rep["kv_cache"] = kv_report(cfg, h, w, stride, sampling, cache, dtype)
    rep["usable"] = not rep["problems"]
    return rep


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_report(rep: dict[str, Any]) -> str:
    name = f" {rep['name']!r}" if rep.get("name") else ""
    preset = f" (preset {rep['preset']})" if rep.get("preset") else ""
    lines = [f"{rep['path']}: {rep.get('kind', '?')}{name}{preset}"]
    if dit := rep.get("dit"):
        lines.append(
            f"  DiT         {dit['format']}: {dit['path']}"
            + (f" ({'; '.join(dit['notes'])})" if dit["notes"] else "")
        )
        if g := dit.get("geometry"):
            heads = f"{g['num_heads']} heads of {g['head_dim']}"
            lines.append(
                f"  geometry    dim {g['dim']}, {g['num_layers']} layers, {heads}, ffn {g['ffn_dim']}, "
                f"in/out {g['in_dim']}/{g['out_dim']}, text {g['text_len']}x{g['text_dim']}, "
                f"patch {'x'.join(map(str, g['patch_size']))}"
            )
            dtypes = ", ".join(f"{k} {v:,}" for k, v in dit["dtypes"].items())
            counts = f"{dit['num_params']:,} stored, {dit['model_params']:,} in the model"
            lines.append(f"  parameters  {counts}; {dtypes}")
        if lora := dit.get("lora"):
            lines.append(f"  LoRA        {lora['path']}: {lora['merged_layers']} linear layers")
    if vae := rep.get("vae"):
        detail = (
            f": z_dim {vae['z_dim']}, stride {'x'.join(map(str, vae['stride']))}" if "z_dim" in vae else ""
        )
        lines.append(f"  VAE         {vae.get('note') or vae['path']}{detail}")
    if te := rep.get("text_encoder"):
        lines.append(f"  text        {te['source']}" + (f": {te['text_dim']}-d" if "text_dim" in te else ""))
    if kv := rep.get("kv_cache"):
        latent = f"latent {kv['latent'][0]}x{kv['latent'][1]}, {kv['tokens_per_frame']} tokens/frame"
        lines.append(f"  K/V cache   {kv['dtype']} at {kv['height']}x{kv['width']} ({latent}), batch 1")
        lines.append(f"    per latent frame        {_size(kv['bytes_per_frame'])}")
        window = f"{kv['sink_frames']} sink + {kv['window_frames']} window"
        lines.append(f"    committed {window}  {_size(kv['committed_bytes'])}")
        lines.append(f"    cross-attention text    {_size(kv['cross_attn_bytes'])}")
        for lv in kv["levels"]:
            inflight = f"{lv['in_flight_blocks']} in flight {_size(lv['inflight_bytes'])}"
            lines.append(f"    level P{lv['level']}: {inflight}, pool {_size(lv['pool_bytes'])}")
    lines.append("  problems    " + ("none" if not rep["problems"] else ""))
    lines += [f"    - {p}" for p in rep["problems"]]
    lines.append("  usable" if rep["usable"] else "  NOT usable")
    return "\n".join(lines)


def run_inspect(args: Any) -> int:
    """The CLI entry: args.path, height, width, sink_frames, window_frames, dtype, json."""
    dtype = getattr(torch, args.dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"--dtype must be a floating dtype, got {args.dtype!r}")
    rep = inspect_path(
        args.path,
        height=args.height,
        width=args.width,
        sink_frames=args.sink_frames,
        window_frames=args.window_frames,
        dtype=dtype,
    )
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0 if rep["usable"] else 1
