"""The embedded default model: a small causal Wan DiT trained by this project on the procedural
world (training/), shipped inside the package with its Wan-architecture VAE.

Files (``vidcascade/assets/embedded``): ``model.json`` (geometry, sampling, cache, provenance),
``dit.safetensors`` (original Wan key names), ``vae.safetensors`` (original Wan VAE names, config in
the metadata). Text goes through MiniLM (``vidcascade[text]``), over the whole prompt or clause by
clause (``model.json`` ``text.mode``; models/text_clauses.py says why).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import CacheConfig, FeatureCacheConfig, ModelConfig, SamplingConfig
from ..text.modes import check_text_mode
from .bundle import Bundle
from .checkpoint_io import CheckpointError, read_safetensors

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "embedded"
TEACHER_ASSETS = ASSETS.parent / "embedded-teacher"
"""The undistilled teacher of the embedded model (fp16 on disk), for many-step sampling."""


def embedded_text_encoder(mode: str, text_len: int = 32, device: torch.device | str = "cpu"):
    """The MiniLM prompt encoder of the embedded model in the given text mode."""
    from ..text.clauses import ClauseTextEncoder
    from ..text.minilm import MiniLMTextEncoder

    check_text_mode(mode)
    encoder = MiniLMTextEncoder.from_package(text_len=text_len, device=device)
    if mode == "sentence":
        return encoder
    return ClauseTextEncoder(encoder, counted=mode == "counted-clauses")


def embedded_available(folder: Path = ASSETS) -> bool:
    return all((folder / f).exists() for f in ("model.json", "dit.safetensors", "vae.safetensors"))


def _tuplify(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _read_meta(folder: Path) -> tuple[dict, ModelConfig]:
    path = folder / "model.json"
    try:
        meta = json.loads(path.read_text())
        return meta, ModelConfig(**_tuplify(meta["model"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"bad model description '{path}': {type(e).__name__}: {e}") from None


def _load_dit(path: Path, cfg: ModelConfig) -> torch.nn.Module:
    """The DiT of ``path``; a truncated, corrupt or mismatched file is a one-line CheckpointError."""
    from ..models.wan_dit import CausalWanDiT

    refs, _ = read_safetensors(path)
    dit = CausalWanDiT(cfg)
    want = {k: tuple(v.shape) for k, v in dit.state_dict().items()}
    problems = [
        f"{len(m)} {what} ({', '.join(m[:3])}{', ...' if len(m) > 3 else ''})"
        for what, m in (
            ("missing", sorted(want.keys() - refs.keys())),
            ("unexpected", sorted(refs.keys() - want.keys())),
            ("mis-shaped", sorted(k for k in want.keys() & refs.keys() if refs[k].shape != want[k])),
        )
        if m
    ]
    if problems:
        raise CheckpointError(f"DiT weights '{path}' do not fit model.json: tensors {'; '.join(problems)}")
    try:
        dit.load_state_dict({k: ref.read().float() for k, ref in refs.items()}, strict=True)
    except Exception as e:  # unreadable tensor data
        raise CheckpointError(f"cannot read DiT weights '{path}': {type(e).__name__}: {e}") from None
    return dit


def load_embedded(
    device: torch.device | str = "cpu", folder: Path = ASSETS, name: str | None = None
) -> Bundle:
    from ..models.vae_stream import VAEFrameDecoder
    from .vae_keys import load_wan_vae

    if not embedded_available(folder):
        raise FileNotFoundError(f"the embedded model's files are missing from {folder}")
    meta, cfg = _read_meta(folder)
    dit = _load_dit(folder / "dit.safetensors", cfg)
    dit.eval().to(device)
    vae = load_wan_vae(folder / "vae.safetensors", dtype=torch.float32, device=device)
    # Models exported before clause-wise text have no "text" entry: they were trained on whole prompts.
    text_mode = meta.get("text", {}).get("mode", "sentence")
    text = embedded_text_encoder(text_mode, text_len=cfg.text_len, device=device)
    return Bundle(
        # A folder other than the package's (e.g. `train export --dest`) is named by its path, so
        # that bench and eval tables say which weights they measured.
        name=name or ("embedded" if Path(folder).resolve() == ASSETS.resolve() else str(folder)),
        dit=dit,
        text_encoder=text,
        make_decoder=lambda: VAEFrameDecoder(vae, frames_per_pass=meta.get("decode_frames_per_pass", 3)),
        sampling=SamplingConfig(**_tuplify(meta["sampling"])),
        cache=CacheConfig(**meta["cache"]),
        latent_hw=tuple(meta["latent_hw"]),
        fps=float(meta["fps"]),
        trained=True,
        description=meta.get("description", "embedded model"),
        feature_cache=FeatureCacheConfig(**meta.get("feature_cache", {})),
    )
