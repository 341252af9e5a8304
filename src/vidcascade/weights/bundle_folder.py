"""A model folder for real checkpoints: a ``vidcascade.json`` manifest naming DiT, VAE and text
encoder, plus the sampling and cache settings the model was made for. Documented in
docs/real-models.md. Example (paths relative to the manifest's folder, or absolute)::

    {
      "preset": "self-forcing",
      "wan": "../Wan2.1-T2V-1.3B",
      "dit": "../checkpoints/self_forcing_dmd.pt"
    }

Fields (all optional but ``dit`` and ``text_encoder``, which ``wan`` can supply):

    name, description     shown by the CLI
    preset                self-forcing | causvid | longlive: defaults for the fields below
    wan                   a Wan2.1-T2V folder: default dit (the base model), vae (Wan2.1_VAE.pth)
                          and text_encoder (models_t5_umt5-xxl-enc-bf16.pth + google/umt5-xxl/)
    dit                   any format of models/loading.py; dit_key picks a .pt's top-level key
    lora, lora_alpha      a LongLive LoRA merged into the DiT (alpha defaults to the rank)
    vae                   Wan VAE .pth / .safetensors / diffusers folder; without it the frames
                          are a latent preview (PreviewDecoder)
    text_encoder          a umT5 folder (UMT5TextEncoder.from_folder), "minilm" or "hash"
    text_encoder_device   e.g. "cpu" to keep umT5-XXL (11 GB in bf16) off the GPU
    sampling              SamplingConfig fields: steps, warp, shift, frames_per_block, context_noise, sampler
    cache                 CacheConfig fields: sink_frames, window_frames, sink_bias
    feature_cache         FeatureCacheConfig fields (policy, threshold, ...): the model's default
                          feature cache (docs/caching.md); --cache flags override it
    height, width, fps    output pixels (latent = pixels / the VAE's spatial stride) and playback rate
    model                 ModelConfig overrides (e.g. num_heads when neither config nor dim/128 gives it)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import CacheConfig, ConfigError, FeatureCacheConfig, ModelConfig, SamplingConfig
from .bundle import Bundle

log = logging.getLogger(__name__)

MANIFEST = "vidcascade.json"
WAN_VAE_FILE = "Wan2.1_VAE.pth"
BUILTIN_TEXT = ("minilm", "hash")
_SELF_FORCING_SAMPLING = {
    "steps": [1000, 750, 500, 250],
    "warp": True,
    "shift": 5.0,
    "frames_per_block": 3,
    "context_noise": 0.0,
    "sampler": "renoise",
}
BUNDLE_PRESETS: dict[str, dict[str, Any]] = {
    # reference §2.3/§2.4: 4 warped steps at shift 5. Self-Forcing attends globally over 21 latent
    # frames (81-frame videos); sink 3 + window 15 equals that exactly for the first 7 blocks (block
    # 6 sees frames 0-17 + itself) and never attends to more than 21 frames after.
    "self-forcing": {
        "sampling": _SELF_FORCING_SAMPLING,
        "cache": {"sink_frames": 3, "window_frames": 15},
        "height": 480,
        "width": 832,
        "fps": 16,
    },
    # reference §4.1: [1000, 757, 522] unwarped at shift 8, a fixed 21-frame cache (same choice as above).
    "causvid": {
        "sampling": _SELF_FORCING_SAMPLING | {"steps": [1000, 757, 522], "warp": False, "shift": 8.0},
        "cache": {"sink_frames": 3, "window_frames": 15},
        "height": 480,
        "width": 832,
        "fps": 16,
    },
    # reference §4.3: local_attn_size 12 with a 3-frame sink = sink 3 + 6 committed + the 3-frame block.
    "longlive": {
        "sampling": _SELF_FORCING_SAMPLING,
        "cache": {"sink_frames": 3, "window_frames": 6},
        "height": 480,
        "width": 832,
        "fps": 16,
    },
}
_FIELDS = (
    "name", "description", "preset", "wan", "dit", "dit_key", "lora", "lora_alpha", "vae", "text_encoder",
    "text_encoder_device", "sampling", "cache", "height", "width", "fps", "model", "feature_cache",
)  # fmt: skip


class ManifestError(ValueError):
    """A vidcascade.json that is missing, unreadable or has a bad field (the message names it)."""


@dataclass(frozen=True)
class Manifest:
    folder: Path
    name: str
    description: str
    preset: str | None
    dit: Path
    dit_key: str | None
    lora: Path | None
    lora_alpha: float | None
    vae: Path | None
    text_encoder: str
    """A umT5 folder (absolute path) or one of BUILTIN_TEXT."""
    text_encoder_device: str | None
    sampling: SamplingConfig
    cache: CacheConfig
    height: int
    width: int
    fps: float
    model: dict[str, Any] = field(default_factory=dict)
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)


def _bad(name: str, msg: str) -> ManifestError:
    return ManifestError(f"{MANIFEST}: {name}: {msg}")


def _typed(data: Mapping[str, Any], name: str, types: type | tuple[type, ...], what: str) -> Any:
    value = data.get(name)
    types = types if isinstance(types, tuple) else (types,)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
        raise _bad(name, f"expected {what}, got {value!r}")
    return value


def _path(base: Path, data: Mapping[str, Any], name: str) -> Path | None:
    value = _typed(data, name, str, "a path string")
    if value is None:
        return None
    p = Path(value).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _section(data: Mapping[str, Any], name: str, cls: type) -> Any:
    value = _typed(data, name, dict, "an object")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value or {}) - fields)
    if unknown:
        raise _bad(name, f"unknown fields {unknown}; known: {', '.join(sorted(fields))}")
    kwargs = dict(value or {})
    if isinstance(kwargs.get("steps"), list):
        kwargs["steps"] = tuple(kwargs["steps"])
    try:
        return cls(**kwargs)
    except (ConfigError, TypeError, ValueError) as e:
        raise _bad(name, str(e)) from e


def _merge(preset: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(preset) | dict(data)
    for name in ("sampling", "cache"):
        if isinstance(data.get(name), dict) and name in preset:
            out[name] = dict(preset[name]) | data[name]
    return out


def parse_manifest(data: Any, folder: Path) -> Manifest:
    """Validate a manifest dict; relative paths are resolved against ``folder``. Files are not opened."""
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST} must hold a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ManifestError(f"{MANIFEST}: unknown fields {unknown}; known: {', '.join(_FIELDS)}")
    preset = _typed(data, "preset", str, "a preset name")
    if preset is not None and preset not in BUNDLE_PRESETS:
        raise _bad("preset", f"unknown preset {preset!r}; known: {', '.join(BUNDLE_PRESETS)}")
    data = _merge(BUNDLE_PRESETS.get(preset or "", {}), data)
    wan = _path(folder, data, "wan")
    dit = _path(folder, data, "dit") or wan
    if dit is None:
        raise _bad("dit", "required (a DiT checkpoint, or 'wan' for the base Wan2.1 model)")
    vae = _path(folder, data, "vae") or (
        wan / WAN_VAE_FILE if wan and (wan / WAN_VAE_FILE).is_file() else None
    )
    text = _typed(data, "text_encoder", str, f"a umT5 folder or one of {BUILTIN_TEXT}")
    if text is None and wan is None:
        raise _bad("text_encoder", f"required (a umT5 folder, {' or '.join(map(repr, BUILTIN_TEXT))})")
    text = text if text in BUILTIN_TEXT else str(_path(folder, {"text_encoder": text}, "text_encoder") or wan)
    size = {}
    for name in ("height", "width"):
        value = _typed(data, name, int, "a positive integer (pixels)")
        if value is None or value < 1:
            raise _bad(name, f"required positive integer (pixels), got {value!r}")
        size[name] = value
    fps = _typed(data, "fps", (int, float), "a positive number")
    if fps is None or fps <= 0:
        raise _bad("fps", f"required positive number, got {fps!r}")
    model = _typed(data, "model", dict, "an object of ModelConfig fields") or {}
    bad_model = sorted(set(model) - {f.name for f in dataclasses.fields(ModelConfig)})
    if bad_model:
        raise _bad("model", f"unknown fields {bad_model}")
    alpha = _typed(data, "lora_alpha", (int, float), "a positive number")
    if alpha is not None and alpha <= 0:
        raise _bad("lora_alpha", f"must be > 0, got {alpha}")
    name = _typed(data, "name", str, "a string") or preset or folder.name
    return Manifest(
        folder=folder,
        name=name,
        description=_typed(data, "description", str, "a string") or "",
        preset=preset,
        dit=dit,
        dit_key=_typed(data, "dit_key", str, "a top-level key name"),
        lora=_path(folder, data, "lora"),
        lora_alpha=None if alpha is None else float(alpha),
        vae=vae,
        text_encoder=text,
        text_encoder_device=_typed(data, "text_encoder_device", str, "a device name"),
        sampling=_section(data, "sampling", SamplingConfig),
        cache=_section(data, "cache", CacheConfig),
        height=size["height"],
        width=size["width"],
        fps=float(fps),
        model=dict(model),
        feature_cache=_section(data, "feature_cache", FeatureCacheConfig),
    )


def manifest_path(path: str | Path) -> Path:
    """The manifest of a bundle given as its folder or as the json file itself."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / MANIFEST).is_file():
        return path / MANIFEST
    what = "a file" if path.is_file() else "a folder without " + MANIFEST
    raise ManifestError(
        f"'{path}' is {what}: a model folder needs a {MANIFEST} naming dit, vae and text_encoder "
        "(see docs/real-models.md); `vidcascade inspect PATH` reports what a checkpoint holds"
    )


def load_manifest(path: str | Path) -> Manifest:
    mp = manifest_path(path)
    try:
        data = json.loads(mp.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read {mp}: {e}") from e
    return parse_manifest(data, mp.parent)


def missing_files(m: Manifest) -> list[str]:
    """Problems with the manifest's paths (nothing is opened)."""
    parts = (("dit", m.dit), ("vae", m.vae), ("lora", m.lora))
    out = [f"{name}: no such file or folder '{p}'" for name, p in parts if p is not None and not p.exists()]
    if m.text_encoder not in BUILTIN_TEXT and not Path(m.text_encoder).exists():
        out.append(f"text_encoder: no such folder '{m.text_encoder}'")
    return out


def latent_size(m: Manifest, spatial_stride: int, cfg: ModelConfig) -> tuple[int, int]:
    unit = spatial_stride * max(cfg.patch_size[1], cfg.patch_size[2])
    if m.height % unit or m.width % unit:
        raise ManifestError(
            f"{MANIFEST}: height x width {m.height}x{m.width} must be multiples of {unit} "
            f"(VAE stride {spatial_stride} x patch {cfg.patch_size[1]}x{cfg.patch_size[2]})"
        )
    return m.height // spatial_stride, m.width // spatial_stride


def _text_encoder(m: Manifest, cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None) -> Any:
    te_device = torch.device(m.text_encoder_device) if m.text_encoder_device else device
    if m.text_encoder == "hash":
        from ..text.hashing import HashTextEncoder

        enc = HashTextEncoder(cfg.text_dim, cfg.text_len, te_device)
    elif m.text_encoder == "minilm":
        from ..text.minilm import MiniLMTextEncoder

        enc = MiniLMTextEncoder.from_package(text_len=cfg.text_len, device=te_device)
    else:
        from ..text.umt5 import UMT5TextEncoder

        reduced = dtype if dtype in (torch.bfloat16, torch.float16) and te_device.type == "cuda" else None
        enc = UMT5TextEncoder.from_folder(
            m.text_encoder, text_len=cfg.text_len, dtype=reduced, device=te_device
        )
    if enc.text_dim != cfg.text_dim:
        raise ManifestError(
            f"{MANIFEST}: text_encoder gives {enc.text_dim}-d states but the DiT's text_dim is {cfg.text_dim}"
        )
    return enc


def load_bundle_folder(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Bundle:
    """Load every part a manifest names; raises ManifestError / CheckpointError / VAECheckpointError
    (all ValueErrors) or FileNotFoundError naming the bad part."""
    from ..models.preview_decoder import PreviewDecoder
    from ..models.vae_stream import VAEFrameDecoder
    from .loading import load_model
    from .vae_keys import load_wan_vae

    m = load_manifest(path)
    if problems := missing_files(m):
        raise FileNotFoundError(f"{m.folder / MANIFEST}: " + "; ".join(problems))
    device = torch.device(device)
    dit = load_model(
        m.dit, dtype, device, key=m.dit_key, overrides=m.model, lora=m.lora, lora_alpha=m.lora_alpha
    )
    cfg = dit.cfg
    if m.vae is not None:
        vae = load_wan_vae(m.vae, dtype=torch.float32, device=device)
        if vae.config.z_dim != cfg.in_dim or vae.config.z_dim != cfg.out_dim:
            raise ManifestError(
                f"{MANIFEST}: the VAE has {vae.config.z_dim} latent channels, "
                f"the DiT in/out {cfg.in_dim}/{cfg.out_dim}"
            )
        stride, decoder, vae_note = (
            vae.spatial_stride,
            (lambda: VAEFrameDecoder(vae)),
            f"Wan VAE {m.vae.name}",
        )
    else:
        stride, vae_note = 8, "no VAE: frames are a latent preview"
        log.warning("%s: no vae in %s; decoding with the latent PreviewDecoder", m.name, MANIFEST)
        decoder = lambda: PreviewDecoder(cfg.in_dim, upscale=stride)  # noqa: E731
    latent_hw = latent_size(m, stride, cfg)
    text = _text_encoder(m, cfg, device, dtype)
    params = sum(p.numel() for p in dit.parameters())
    text_note = m.text_encoder if m.text_encoder in BUILTIN_TEXT else "umT5"
    description = m.description or (
        f"{m.name}: DiT {m.dit.name} ({params / 1e9:.2f}B params, {cfg.num_layers} layers, dim {cfg.dim})"
        f"{' + LoRA' if m.lora else ''}, {vae_note}, text {text_note}"
    )
    log.info("bundle %s", description)
    return Bundle(
        name=m.name,
        dit=dit,
        text_encoder=text,
        make_decoder=decoder,
        sampling=m.sampling,
        cache=m.cache,
        feature_cache=m.feature_cache,
        latent_hw=latent_hw,
        fps=m.fps,
        trained=True,
        description=description,
    )
