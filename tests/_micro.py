"""A micro DiT and bundle that run in milliseconds (shared by the tests)."""

from __future__ import annotations

import torch

from vidcascade.config import CacheConfig, ModelConfig, SamplingConfig
from vidcascade.models.bundle import Bundle
from vidcascade.models.hash_text import HashTextEncoder
from vidcascade.models.preview_decoder import PreviewDecoder
from vidcascade.models.wan_dit import CausalWanDiT, init_weights

MICRO = ModelConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, text_len=8
)


def make_bundle(
    *,
    cfg: ModelConfig = MICRO,
    sampling: SamplingConfig | None = None,
    cache: CacheConfig | None = None,
    latent_hw: tuple[int, int] = (4, 4),
    seed: int = 0,
) -> Bundle:
    torch.manual_seed(seed)
    dit = init_weights(CausalWanDiT(cfg), seed).eval()
    return Bundle(
        name="micro",
        dit=dit,
        text_encoder=HashTextEncoder(cfg.text_dim, cfg.text_len),
        make_decoder=lambda: PreviewDecoder(cfg.in_dim, upscale=2),
        sampling=sampling or SamplingConfig(shift=5.0, frames_per_block=2),
        cache=cache or CacheConfig(sink_frames=2, window_frames=64),
        latent_hw=latent_hw,
        fps=8.0,
        trained=False,
        description="micro test model",
    )
