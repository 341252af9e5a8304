"""A prepared speed check: a Wan-1.3B-geometry DiT and the Wan 2.1 VAE with random weights at
480x832 in bf16 (Self-Forcing's settings: 3 latent frames per block, 4 steps) on CUDA, benched at
P0 and P4, eager and compiled, with peak memory; ``--tiny`` runs the same code on the tiny
geometry (how it is tested on a CPU). Usage: ``scripts/gpu-check.sh [--tiny]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from ..config import CacheConfig, SamplingConfig, model_preset
from ..models.vae_stream import VAEFrameDecoder
from ..models.wan_dit import CausalWanDiT, init_weights
from ..models.wan_vae import WanVAE, WanVAEConfig
from ..text.hashing import HashTextEncoder
from ..weights.bundle import Bundle
from ..weights.loading import compile_dit
from .bench import format_bench, machine_info, run_bench

log = logging.getLogger(__name__)

SAMPLING = SamplingConfig(
    steps=(1000, 750, 500, 250), warp=True, shift=5.0, frames_per_block=3, sampler="euler"
)


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> Bundle:
    """Random weights: the Wan-1.3B DiT at 60x104 latents (480x832) and the Wan 2.1 VAE, or tiny."""
    cfg = model_preset("tiny" if tiny else "wan-1.3b")
    dit = init_weights(CausalWanDiT(cfg), 0).eval().to(device)
    if dtype != torch.float32:
        dit.to_inference_dtype(dtype)
    z = cfg.in_dim
    tiny_vae = WanVAEConfig(
        base_dim=8,
        z_dim=z,
        dim_mult=(1, 1, 1, 1),
        num_res_blocks=1,
        latents_mean=(0.0,) * z,
        latents_std=(1.0,) * z,
    )
    vae_cfg = tiny_vae if tiny else WanVAEConfig()
    vae = WanVAE(vae_cfg).eval().to(device=device, dtype=dtype)
    hw = (8, 8) if tiny else (60, 104)
    return Bundle(
        name="random-wan-1.3b" if not tiny else "random-tiny-vae",
        dit=dit,
        text_encoder=HashTextEncoder(cfg.text_dim, cfg.text_len, device),
        make_decoder=lambda: VAEFrameDecoder(vae, frames_per_pass=3),
        sampling=SAMPLING,
        cache=CacheConfig(sink_frames=3, window_frames=12 if tiny else 21),
        latent_hw=hw,
        fps=16.0,
        trained=False,
        description="random weights, speed check only",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="tiny geometry (CPU test)")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    bundle = build(args.tiny, device, dtype)
    info = machine_info(device)
    for compiled in (False,) if args.no_compile else (False, True):
        if compiled:
            compile_dit(bundle.dit)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        rows = run_bench(bundle, [0, 4], blocks=args.blocks, repeats=args.repeats, switch=False, profile=True)
        print(
            f"== {'compiled' if compiled else 'eager'} ({time.perf_counter() - t0:.0f} s incl. compilation)"
        )
        print(format_bench(rows, info, bundle.name))
        if cuda:
            print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
