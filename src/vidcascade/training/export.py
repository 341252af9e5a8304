"""Package a training run as the embedded model (vidcascade/assets/embedded)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch

from ..config import model_preset
from ..models.embedded import ASSETS
from ..models.registry import TINY_CACHE, TINY_SAMPLING

log = logging.getLogger(__name__)

EMBEDDED_GUIDANCE = 5.0
"""Classifier-free guidance of the shipped model (trained with 10% empty captions). Chosen on 24
eval prompts at level 0, step 3,700: colour accuracy 0.18 at 1 (off), 0.38 at 3, 0.47 at 5, 0.41
at 8. It doubles the batch of every forward; ``--guidance 1`` turns it off."""


def export_embedded(run_dir: Path, dest: Path = ASSETS, extra: dict | None = None) -> Path:
    from safetensors.torch import load_file, save_file

    dit_src, vae_src = run_dir / "dit_ema.safetensors", run_dir / "vae.safetensors"
    for p in (dit_src, vae_src):
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: train the VAE and the DiT first (vidcascade train)")
    dest.mkdir(parents=True, exist_ok=True)
    state = load_file(str(dit_src))
    from safetensors import safe_open

    with safe_open(str(dit_src), "pt") as f:
        step = (f.metadata() or {}).get("step", "?")
    save_file(
        {k: v.to(torch.float32).contiguous() for k, v in state.items()},
        str(dest / "dit.safetensors"),
        metadata={"step": step},
    )
    shutil.copyfile(vae_src, dest / "vae.safetensors")
    meta = {
        "model": dataclasses.asdict(model_preset("tiny")),
        "sampling": dataclasses.asdict(dataclasses.replace(TINY_SAMPLING, guidance=EMBEDDED_GUIDANCE)),
        "cache": dataclasses.asdict(TINY_CACHE),
        "latent_hw": [8, 8],
        "fps": 8.0,
        "decode_frames_per_pass": 3,
        "description": "embedded model: causal Wan DiT (4.0M params) + Wan-architecture VAE trained on the "
        "procedural world by `vidcascade train`",
        "train_step": step,
        **(extra or {}),
    }
    (dest / "model.json").write_text(json.dumps(meta, indent=2))
    log.info("exported step %s of %s to %s", step, run_dir, dest)
    return dest
