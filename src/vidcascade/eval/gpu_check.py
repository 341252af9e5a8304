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
from ..engine.compile import compile_dit, tick_shape_bound
from ..models.attention import TickAttention, attend
from ..models.masks import key_bias_mask
from ..models.vae_stream import VAEFrameDecoder
from ..models.wan_dit import CausalWanDiT, init_weights
from ..models.wan_vae import WanVAE, WanVAEConfig
from ..text.hashing import HashTextEncoder
from ..weights.bundle import Bundle
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


def attention_check(bundle: Bundle, n_inflight: int = 1, bias: float = 2.0, reps: int = 10) -> str:
    """The sink bias split through log-sum-exp against the dense additive mask, on one layer's
    attention of a tick with a full window: the largest difference and the time of each."""
    cfg, dev = bundle.dit.cfg, bundle.device
    dtype = bundle.dit.patch_embedding.weight.dtype
    tpf = bundle.dit.tokens_per_frame(*bundle.latent_hw)
    nq = n_inflight * bundle.sampling.frames_per_block * tpf
    sink = bundle.cache.sink_frames * tpf
    nk = nq + (bundle.cache.sink_frames + bundle.cache.window_frames) * tpf
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (
        torch.randn(1, cfg.num_heads, n, cfg.head_dim, generator=g, device=dev, dtype=dtype)
        for n in (nq, nk, nk)
    )
    ones = torch.ones(nq, nk, dtype=torch.bool, device=dev)
    forms = {
        "dense": TickAttention(key_bias_mask(ones, nq, nq + sink, bias, dtype)),
        "split": TickAttention(None, nq, nq + sink, bias),
    }
    out, ms = {}, {}
    for name, attn in forms.items():
        out[name] = attend(q, k, v, attn)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            attend(q, k, v, attn)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ms[name] = 1000 * (time.perf_counter() - t0) / reps
    diff = (out["split"].float() - out["dense"].float()).abs().max().item()
    return (
        f"attention with sink bias {bias}, {nq} queries x {nk} keys, {dtype}: max |split - dense| "
        f"{diff:.2e}; dense {ms['dense']:.2f} ms, split {ms['split']:.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="tiny geometry (CPU test)")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--compile-dynamic",
        action="store_true",
        help="dynamo's automatic dynamic shapes instead of a graph per tick shape (fewer compilations)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    bundle = build(args.tiny, device, dtype)
    info = machine_info(device)
    print(attention_check(bundle))
    compiles = (False,) if args.no_compile else (False, True)
    if not args.no_compile:
        bound = tick_shape_bound(bundle.sampling, bundle.cache)
        compile_dit(bundle.dit, max_shapes=bound, dynamic=None if args.compile_dynamic else False)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    # Eager and compiled runs interleaved in one bench (each level's compiled warm-up compiles
    # every tick shape before the measured runs).
    rows = run_bench(
        bundle,
        [0, 4],
        blocks=args.blocks,
        repeats=args.repeats,
        switch=False,
        profile=True,
        compiles=compiles,
    )
    modes = "eager and compiled" if len(compiles) > 1 else "eager"
    print(f"== {modes} ({time.perf_counter() - t0:.0f} s incl. compilation)")
    print(format_bench(rows, info, bundle.name))
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
