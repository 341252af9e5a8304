"""Write DiT weights in the formats :mod:`vidcascade.weights.loading` reads.

Used to convert between formats and, in the tests, to write the same random weights in every
format. Input is a state dict in original Wan names (``CausalWanDiT.state_dict()``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import ModelConfig
from .checkpoint_io import DIFFUSERS_WEIGHTS
from .dit_keys import wan_to_diffusers_key


def _plain(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def diffusers_config(cfg: ModelConfig) -> dict:
    """config.json of diffusers' WanTransformer3DModel for this geometry."""
    return {
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": "0.33.0",
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim,
        "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": cfg.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": cfg.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": cfg.rope_max_frames,
    }


def wan_config(cfg: ModelConfig) -> dict:
    """config.json of an original Wan folder (the fields the HF Wan2.1 repos carry, plus text_dim)."""
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "model_type": "t2v",
        "dim": cfg.dim,
        "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim,
        "in_dim": cfg.in_dim,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "out_dim": cfg.out_dim,
        "text_dim": cfg.text_dim,
        "text_len": cfg.text_len,
        "eps": cfg.eps,
        "patch_size": list(cfg.patch_size),
    }


def _save_shards(state: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    from safetensors.torch import save_file

    if shards <= 1:
        save_file(state, str(folder / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
        return
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{DIFFUSERS_WEIGHTS}.index.json").write_text(json.dumps(index, indent=2))


def save_diffusers_folder(
    state: Mapping[str, torch.Tensor], cfg: ModelConfig, folder: str | Path, shards: int = 1
) -> None:
    """config.json + diffusion_pytorch_model(-0000i-of-0000n).safetensors in diffusers names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(diffusers_config(cfg), indent=2))
    _save_shards({wan_to_diffusers_key(k): v for k, v in _plain(state).items()}, folder, shards)


def save_wan_folder(
    state: Mapping[str, torch.Tensor], cfg: ModelConfig, folder: str | Path, shards: int = 1
) -> None:
    """config.json + safetensors in original Wan names (like Wan2.1-T2V-1.3B / -14B)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(wan_config(cfg), indent=2))
    _save_shards(_plain(state), folder, shards)


def save_training_pt(
    state: Mapping[str, torch.Tensor], path: str | Path, key: str = "generator_ema", prefix: str = "model."
) -> None:
    """A Self-Forcing / CausVid / LongLive style checkpoint: {key: {prefix + Wan name: tensor}}."""
    torch.save({key: {prefix + k: v for k, v in _plain(state).items()}}, Path(path))


def save_flat_safetensors(
    state: Mapping[str, torch.Tensor], path: str | Path, prefix: str = "model."
) -> None:
    """One flat safetensors file with ``prefix`` + Wan names (the Krea realtime layout)."""
    from safetensors.torch import save_file

    save_file({prefix + k: v for k, v in _plain(state).items()}, str(path), metadata={"format": "pt"})
