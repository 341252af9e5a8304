"""A micro DiT and bundle that run in milliseconds (shared by the tests)."""

from __future__ import annotations

import torch

from vidcascade.config import CacheConfig, ModelConfig, SamplingConfig
from vidcascade.models.preview_decoder import PreviewDecoder
from vidcascade.models.wan_dit import CausalWanDiT, init_weights
from vidcascade.text.hashing import HashTextEncoder
from vidcascade.weights.bundle import Bundle

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


def tiny_latent_data(cfg: ModelConfig, n: int, frames: int = 12) -> dict:
    """Random latent data in the layout `train data` writes: n clips of ``frames`` 8x8 latent
    frames, one- and two-object clips alternating; the two-object ones overlap in block 2."""
    g = torch.Generator().manual_seed(0)
    overlap = torch.zeros(n, frames, dtype=torch.bool)
    overlap[1::2, 6:9] = True
    return {
        "latents": torch.randn(n, cfg.in_dim, frames, 8, 8, generator=g).half(),
        "text": torch.randn(n, 2, cfg.text_len, cfg.text_dim, generator=g).half(),
        "attrs": [[("red", "circle", "left")] * (1 + i % 2) for i in range(n)],
        "overlap": overlap,
    }
