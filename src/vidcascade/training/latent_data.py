"""The DiT's training set: world clips encoded once by the trained VAE, with caption embeddings.

Encoding once beats encoding on the fly (which costs about as much as a DiT step;
reference/embedded-model-notes.md). Each clip is rendered from a random scene; each gets several
paraphrased captions, encoded by the same MiniLM text encoder the engine uses.

Stored in one .pt file::

    latents   fp16 [N, z, T, h, w]   normalised VAE latents (the DiT's space)
    text      fp16 [N, P, L, 384]    per-token MiniLM states of P captions (zero rows past the length)
    captions  list[list[str]]        the P captions of each clip
    attrs     list[list[tuple]]      (colour, shape, motion) per object
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.wan_vae import WanVAE
from ..models.wan_vae_blocks import CausalState
from ..world import caption, render, sample_spec
from .common import to_video_tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    clips: int = 3000
    frames: int = 48
    """Latent frames per clip (16 blocks of 3)."""
    captions_per_clip: int = 4
    two_object_prob: float = 0.4
    seed: int = 1000
    """Training clips use seeds from here; evaluation uses its own, disjoint seeds."""
    batch: int = 32


@torch.no_grad()
def build_latent_data(vae: WanVAE, text_encoder, out: Path, cfg: DataConfig) -> Path:
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed)
    vae.eval()
    z, c, t = vae.config.z_dim, cfg.captions_per_clip, cfg.frames
    h = w = 64 // vae.spatial_stride
    latents = torch.empty(cfg.clips, z, t, h, w, dtype=torch.float16)
    text = torch.zeros(cfg.clips, c, text_encoder.text_len, text_encoder.text_dim, dtype=torch.float16)
    captions: list[list[str]] = []
    attrs: list[list[tuple[str, str, str]]] = []
    for start in tqdm(range(0, cfg.clips, cfg.batch), desc="encode clips", unit="batch", mininterval=5):
        n = min(cfg.batch, cfg.clips - start)
        frames = np.empty((n, t, 64, 64, 3), dtype=np.uint8)
        batch_caps = []
        for i in range(n):
            spec = sample_spec(rng, cfg.two_object_prob)
            frames[i] = render(spec, t)
            caps = [caption(spec, rng) for _ in range(c)]
            batch_caps.extend(caps)
            captions.append(caps)
            attrs.append([(a.color, a.shape, a.motion) for a in spec.attrs])
        moments, _ = vae.encode_step(to_video_tensor(frames), CausalState())
        latents[start : start + n] = vae.normalize(moments.chunk(2, dim=1)[0]).half()
        emb = text_encoder.encode(batch_caps).float().cpu()  # [n*c, L, D]
        text[start : start + n] = emb.view(n, c, *emb.shape[1:]).half()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"latents": latents, "text": text, "captions": captions, "attrs": attrs, "config": cfg.__dict__}, out
    )
    log.info("wrote %s: %d clips x %d frames", out, cfg.clips, t)
    return out
