"""Train the embedded DiT on the encoded world: flow matching with per-block noise levels.

Every step draws one ``Layout`` (training/layouts.py) for the whole batch, so that the sequence
length, mask and positions are shared, and fills it with random clips, captions and noise. The
loss is the velocity MSE on the noisy blocks. This is how the model learns to tolerate noisy and
partially denoised context, which Block Cascading relies on: the models in the paper got that
tolerance from distillation of bidirectional teachers; ours gets it from diffusion forcing with
cascade ticks in the training mix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import model_preset
from ..models.wan_dit import CausalWanDiT, init_weights
from .common import fit, require_at_least_one, require_context_noise, start_run
from .latent_data import block_overlaps, data_text_mode, held_out_clips, switch_rows
from .layouts import LayoutSampler, layout_mask
from .switch_text import block_prompts, drop_text, select_text, text_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiTTrainConfig:
    steps: int = 1200
    """The shipped teacher took six phases (README, *The embedded model*), the first three on the
    earlier VAE: steps 0-3,700 of a 4,000-step schedule at first_prob 0.3, lr 1e-3; resumed to
    10,000 at 0.6; resumed to 14,000 with phase-3 layouts. The fourth moved it onto the current
    VAE's latents: 2,800 steps at lr 5e-4, two_object_share 0.6, context_probs (0.25, 0.15 x 5),
    no context noise, from the step-14,000 weights (``init_from``: runs/embedded/dit_ckpt.pt at git
    commit f671fdc). The fifth: 4,500 steps at lr 3e-4 from the phase-4 weights
    (runs/embedded/dit_ckpt.pt at git commit e572c0c). The last (phase 8), these defaults: 1,200
    steps at lr 2e-4 with overlap_share 0.35 from the phase-5 weights (runs/embedded/dit_ckpt.pt
    at git commit 448066d). From a random init these steps are far too few: run the earlier
    phases first."""
    tokens_per_step: int = 5000
    """Batch size is chosen per layout so that each step has about this many tokens."""
    lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.01
    ema: float = 0.999
    seed: int = 0
    checkpoint_every: int = 100
    text_dropout: float = 0.1
    """Share of samples trained without text (zero context), for classifier-free guidance."""
    first_prob: float = 0.45
    """Share of steps with the *first* layout (a video's first blocks from the caption alone); the
    other styles share the rest in LayoutSampler's proportions. Measured at step 3,700 (trained at
    0.3): with the true first block given as context the continuation scored colour 0.85 / motion
    0.77, from text alone 0.38 / 0.35, so the first block is where extra steps pay."""
    two_object_share: float | None = 0.75
    """Share of samples drawn from two-object clips (None: as they come in the data, 40%, as up to
    step 10,000). Two objects are where the step-10,000 model failed: at level 0 one-object
    prompts scored colour / shape / motion 0.86 / 0.88 / 0.79, two-object prompts 0.55 / 0.45 /
    0.34 (64 eval prompts). 0.6 in phases 3-4."""
    overlap_share: float = 0.35
    """Share of samples drawn from two-object clips whose objects overlap in one of the layout's
    blocks (where the data has such clips for that layout). Only 3% of the training blocks hold an
    overlap, while a 60-block two-object video has many, and that is where long videos lose an
    object (drawn merged, then the blob continued): the phase-5 teacher and phase-6 student did.
    0 up to phase 7."""
    context_noise: tuple[float, float] = (0.0, 0.0)
    """(share, max sigma): share of samples whose clean blocks (committed context, cache step) get
    noise up to max sigma while still labelled t = 0. At inference those blocks are the model's
    own outputs, not the world's clean latents. Phase 5 was run with (0.5, 0.1) but, through a
    bug fixed since, the trainer never handed it to its batches: the shipped teacher saw clean
    context only, so the default is what it ran with. The distillation (DistillConfig) does use it."""
    switch_share: float = 0.0
    """Share of samples drawn from clips with a prompt switch inside the sample's blocks (where
    the data has such clips: ``train data --switch-share``); each block is conditioned on the
    caption the engine's schedule makes it under (switch_text.py). 0 up to phase 8."""
    bidirectional_prob: float = 0.6
    """Share of multi-block tick layouts with bidirectional in-flight attention (0.45 to step
    10,000)."""
    context_probs: tuple[float, ...] = (0.2, 0.1, 0.1, 0.15, 0.2, 0.25)
    """Probabilities of 0, 1, 2, ... clean context blocks. The engine's rolling cache holds sink +
    window = 5 blocks deep into a long video, where two-object videos lost an object; the first
    10,000 steps saw at most 4 (0.3, 0.2, 0.2, 0.15, 0.15), phases 3-4 (0.25, 0.15 x 5)."""
    init_from: str | None = None
    """Start a new run from these DiT weights instead of a random init: a trainer checkpoint
    (``dit_ckpt.pt``, its EMA weights are taken) or a safetensors file. Ignored when the run folder
    already has a checkpoint to resume. Used to move the trained DiT onto a new VAE's latents."""
    bf16: bool | None = None
    """bf16 autocast; None = only where the CPU computes bf16 natively (AVX512-BF16 / AMX). Without
    it bf16 is emulated: measured 3x slower than fp32 on an AVX512 Xeon without AVX512-BF16."""

    def __post_init__(self) -> None:
        require_at_least_one(self, "steps", "tokens_per_step", "checkpoint_every")
        if not 0.0 < self.first_prob < 1.0:
            raise ValueError(f"first_prob must be in (0, 1), got {self.first_prob}")
        if self.two_object_share is not None and not 0.0 <= self.two_object_share <= 1.0:
            raise ValueError(f"two_object_share must be in [0, 1] or None, got {self.two_object_share}")
        if not 0.0 <= self.overlap_share <= 1.0:
            raise ValueError(f"overlap_share must be in [0, 1], got {self.overlap_share}")
        if not 0.0 <= self.switch_share <= 1.0:
            raise ValueError(f"switch_share must be in [0, 1], got {self.switch_share}")
        require_context_noise(self.context_noise)
        self.layout_sampler(16)  # validates the layout fields

    def layout_sampler(self, clip_blocks: int) -> LayoutSampler:
        return LayoutSampler(
            clip_blocks=clip_blocks,
            max_blocks=max(7, len(self.context_probs) + 2),
            context_probs=tuple(self.context_probs),
            bidirectional_prob=self.bidirectional_prob,
        ).with_first_prob(self.first_prob)


class Batcher:
    """Turns layouts into tensors from the encoded clips."""

    def __init__(
        self,
        data: dict,
        tokens_per_frame: int,
        frames_per_block: int = 3,
        text_dropout: float = 0.0,
        two_object_share: float | None = None,
        context_noise: tuple[float, float] = (0.0, 0.0),
        overlap_share: float = 0.0,
        switch_share: float = 0.0,
        steps: int = 4,
    ) -> None:
        self.latents = data["latents"]  # fp16 [N, z, T, h, w]
        self.text = data["text"]  # fp16 [N, P, L, D]
        self.switch_block, self.after_row = switch_rows(data)  # int [N] each, -1: no switch
        self.text_after = data.get("text_after")  # fp16 [M, P, L, D] of the switched clips
        self.switch_share = switch_share
        self.steps = steps
        # Clips whose switch is one the eval holds out (world/holdout.py; data built before the
        # sampler rejected them) are never drawn, as plain clips or as switches.
        held = held_out_clips(data)
        self.allowed = np.flatnonzero(~held) if held.any() else None
        if held.any():
            log.info("%d clips carry a held-out switch: never sampled", int(held.sum()))
        if switch_share > 0 and not (self.switch_block >= 0).any():
            log.warning("switch_share %s: no clip in the data has a prompt switch", switch_share)
        self.tpf = tokens_per_frame
        self.fpb = frames_per_block
        self.text_dropout = text_dropout
        self.two_object_share = two_object_share
        self.context_noise = context_noise
        if two_object_share is not None:
            if "attrs" not in data:
                raise ValueError("two_object_share needs the data's per-clip 'attrs' (rebuild: train data)")
            count = np.array([len(a) for a in data["attrs"]])
            self.one, self.two = np.flatnonzero(count == 1), np.flatnonzero(count == 2)
            if not len(self.one) or not len(self.two):
                raise ValueError("two_object_share needs both one- and two-object clips in the data")
        self.overlap_share = overlap_share
        if overlap_share > 0:
            self.overlap_blocks = block_overlaps(data, frames_per_block)  # [N, blocks]
            if not self.overlap_blocks.any():
                log.warning("overlap_share %s: no clip in the data has overlapping objects", overlap_share)

    def sample_clips(
        self, rng: np.random.Generator, batch: int, blocks: Sequence[int] | None = None
    ) -> np.ndarray:
        """Clip indices [batch]: uniform, or two-object clips at ``two_object_share``; with
        ``overlap_share`` and the layout's clip ``blocks`` given, that share comes from the clips
        whose objects overlap in one of those blocks (where there are such clips)."""
        if self.two_object_share is None:
            out = rng.integers(0, self.text.shape[0], size=batch)
        else:
            pick_two = rng.random(batch) < self.two_object_share
            from_two = self.two[rng.integers(len(self.two), size=batch)]
            from_one = self.one[rng.integers(len(self.one), size=batch)]
            out = np.where(pick_two, from_two, from_one)
        if self.overlap_share > 0 and blocks is not None:
            pool = np.flatnonzero(self.overlap_blocks[:, list(blocks)].any(1))
            if len(pool):
                hit = rng.random(batch) < self.overlap_share
                out = np.where(hit, pool[rng.integers(len(pool), size=batch)], out)
        if self.switch_share > 0 and blocks is not None:
            # Clips whose switch block is one of the sample's blocks, after its first.
            k = self.switch_block
            pool = np.flatnonzero(np.isin(k, list(blocks)) & (k > blocks[0]))
            if self.allowed is not None:
                pool = np.intersect1d(pool, self.allowed)
            if len(pool):
                hit = rng.random(batch) < self.switch_share
                out = np.where(hit, pool[rng.integers(len(pool), size=batch)], out)
        if self.allowed is not None:
            bad = ~np.isin(out, self.allowed)
            if bad.any():
                out[bad] = self.allowed[rng.integers(len(self.allowed), size=int(bad.sum()))]
        return out

    def batch_text(self, idx: torch.Tensor, cap: torch.Tensor, layout) -> torch.Tensor | tuple:
        """Text of clips ``idx`` [B] (caption indices ``cap`` [B]): each block the caption its
        tick's schedule makes it under (switch_text.py); plain clips keep caption A."""
        ctx = self.text[idx, cap].float()  # [B, L, D]
        k = self.switch_block[idx.numpy()]
        which = block_prompts(layout, k, self.steps)  # [B, nb]
        if not which.any():
            return ctx
        rows = torch.from_numpy(np.maximum(self.after_row[idx.numpy()], 0))
        after = torch.where(torch.from_numpy(k >= 0)[:, None, None], self.text_after[rows, cap].float(), ctx)
        return select_text(ctx, after, which, self.fpb)

    def make(self, rng: np.random.Generator, layout, batch: int, clips: np.ndarray | None = None):
        """Tensors of one layout: random clips (or the given clip indices [batch])."""
        p = self.text.shape[1]
        idx = torch.from_numpy(self.sample_clips(rng, batch, layout.clip_blocks) if clips is None else clips)
        cap = torch.from_numpy(rng.integers(0, p, size=batch))
        fpb = self.fpb
        frames = torch.cat([torch.arange(b * fpb, (b + 1) * fpb) for b in layout.clip_blocks])
        x0 = self.latents[idx][:, :, frames].float()  # [B, z, F, h, w]
        ctx = self.batch_text(idx, cap, layout)  # [B, L, D], or both prompts across a switch
        if self.text_dropout:
            ctx = drop_text(ctx, torch.from_numpy(rng.random(batch) < self.text_dropout))
        sig = torch.tensor(layout.sigmas, dtype=torch.float32).T.repeat_interleave(fpb, dim=1)  # [B, F]
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        eps = torch.randn(x0.shape, generator=gen)
        s = sig[:, None, :, None, None]
        share, top = self.context_noise
        if share > 0:
            # Imperfect clean blocks: a small noise level, but the model is still told t = 0.
            hit = torch.from_numpy(rng.random(batch) < share)[:, None]
            level = torch.from_numpy(rng.uniform(0.0, top, size=(batch, 1))).float()
            s = torch.where((sig == 0) & hit, level, sig)[:, None, :, None, None]
        x_t = (1 - s) * x0 + s * eps
        target = eps - x0
        loss_frames = torch.tensor(layout.loss).repeat_interleave(fpb)  # [F]
        pos = torch.cat([torch.arange(p0, p0 + fpb) for p0 in layout.positions])
        mask = torch.from_numpy(layout_mask(layout, fpb * self.tpf))
        return x_t, 1000.0 * sig, ctx, target, loss_frames, pos, mask


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def dit_loss(model, x_t, t, ctx, target, loss_frames, pos, mask, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        v = model(x_t, t, **text_kwargs(ctx), frame_pos=pos, attn_mask=mask)
    err = (v.float() - target).square().mean(dim=(1, 3, 4))  # [B, F]
    return err[:, loss_frames].mean()


def train_dit(data_path: Path, out_dir: Path, cfg: DiTTrainConfig, minutes: float | None = None) -> Path:
    """Train (or resume) into out_dir/dit_ckpt.pt; writes out_dir/dit_ema.safetensors at each checkpoint."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "dit_ckpt.pt"
    data = torch.load(data_path, map_location="cpu", weights_only=False)
    mcfg = model_preset("tiny")
    torch.manual_seed(cfg.seed)
    model = init_weights(CausalWanDiT(mcfg), cfg.seed)
    opt, ema, rng, start = start_run(model, cfg, ckpt_path, "DiT training")
    h = data["latents"].shape[-1]
    batcher = Batcher(
        data,
        model.tokens_per_frame(h, h),
        text_dropout=cfg.text_dropout,
        two_object_share=cfg.two_object_share,
        context_noise=cfg.context_noise,
        overlap_share=cfg.overlap_share,
        switch_share=cfg.switch_share,
    )
    sampler = cfg.layout_sampler(clip_blocks=data["latents"].shape[2] // 3)
    bf16 = cpu_has_native_bf16() if cfg.bf16 is None else cfg.bf16
    log.info("DiT training in %s", "bf16 autocast" if bf16 else "fp32")
    model.train()

    def step_loss():
        layout = sampler.sample(rng, lambda nb: np.clip(cfg.tokens_per_step // (nb * 3 * batcher.tpf), 8, 64))
        loss = dit_loss(model, *batcher.make(rng, layout, len(layout.sigmas[0])), bf16)
        return loss, {"blocks": len(layout.clip_blocks)}

    fit(
        model,
        opt,
        ema,
        rng,
        start,
        cfg,
        step_loss,
        desc="dit",
        ckpt_path=ckpt_path,
        ema_path=out_dir / "dit_ema.safetensors",
        minutes=minutes,
        metadata={"text_mode": data_text_mode(data)},
    )
    return out_dir / "dit_ema.safetensors"
