"""Distil the DiT's many-step, guided sampler into the engine's 4 steps (trajectory distillation).

The teacher (a frozen copy of the trained DiT) integrates the flow ODE from each schedule level to
the next in ``substeps`` Euler steps with classifier-free guidance; the student starts as the same
weights and learns to make that move in one step, unguided. Measured on the step-10,000 model
(level 0, 32 eval prompts): 4 steps at guidance 5 scored colour / shape / motion 0.70 / 0.66 /
0.56, 16 steps at guidance 3 scored 0.81 / 0.67 / 0.72; the 4-step sampler loses what the
model knows. With the guidance baked in, the student runs each forward once instead of twice.

Every training sample is one tick of the engine exactly as inference runs it
(``LayoutSampler.sample_tick``): committed clean context, then in-flight blocks at staggered
schedule stages (lags 1..S+1), causal or bidirectional. The teacher moves all in-flight blocks of
the tick together, each from its own level to its next one, so the student learns the cascade's
joint update, not only the sequential one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import model_preset
from ..models.wan_dit import CausalWanDiT
from .common import fit, require_at_least_one, require_context_noise, start_run
from .dit_train import Batcher, DiTTrainConfig
from .latent_data import data_text_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 1500
    substeps: int = 4
    """Teacher Euler steps per schedule step (4 x 4 = a 16-step teacher)."""
    guidance: float = 3.0
    """The teacher's classifier-free guidance, baked into the student."""
    tokens_per_step: int = 2000
    lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.0
    ema: float = 0.995
    seed: int = 0
    checkpoint_every: int = 50
    lag_probs: tuple[float, ...] = (0.45, 0.1, 0.1, 0.1, 0.25)
    """Probabilities of the cascade lags 1..S+1 in the distillation ticks (lag S+1 = the
    sequential pipeline, level 0; lag 1 = the fully parallel level). The phase-5 student was
    distilled at (0.3, 0.15, 0.15, 0.15, 0.25) and lost 0.069 of shape at P4 bidirectional."""
    context_noise: tuple[float, float] = (0.5, 0.1)
    """(share, max sigma) of clean blocks (committed context, cache step) noised while labelled
    t = 0, as in DiT training (DiTTrainConfig.context_noise): teacher and student both see the
    imperfect context that the student's own earlier blocks are at inference. (0, 0) in phase 5."""
    layouts: DiTTrainConfig = dataclasses.field(
        default_factory=lambda: DiTTrainConfig(first_prob=0.4, bidirectional_prob=0.75)
    )
    """Layout mix (video starts, context depth, attention) and clip mix; only its layout fields are
    used. Bidirectional share 0.75 (phase 5: 0.6, the DiT's)."""
    init_from: str | None = None
    """Start the student from these weights (an earlier student's ``dit_distilled_ema.safetensors``
    or a ``distill_ckpt.pt``) instead of the teacher's, to re-fit a distilled student to a
    retrained teacher in fewer steps. Ignored when the run folder has a checkpoint to resume."""

    def __post_init__(self) -> None:
        require_at_least_one(self, "steps", "substeps", "tokens_per_step", "checkpoint_every")
        if self.guidance < 1.0:
            raise ValueError(f"guidance must be >= 1, got {self.guidance}")
        require_context_noise(self.context_noise)
        self.layouts.layout_sampler(16).check_lag_probs(self.lag_probs)


def _next_sigma(stages: tuple[int, ...], sched: tuple[float, ...], batch: int, fpb: int) -> torch.Tensor:
    """Per frame, the level each block moves to this tick: [B, F]. Committed context (stage -1) and
    the cache step (stage S) stay clean."""
    after = (*sched[1:], 0.0)
    levels = [after[st] if 0 <= st < len(sched) else 0.0 for st in stages]
    return torch.tensor(levels, dtype=torch.float32).repeat_interleave(fpb)[None].expand(batch, -1)


@torch.no_grad()
def teacher_velocity(
    teacher: CausalWanDiT,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    ctx: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor,
    substeps: int,
    guidance: float,
) -> torch.Tensor:
    """The velocity that moves x_t [B, C, F, h, w] from sigma to sigma_next ([B, F]) in one step, as
    the guided teacher does in ``substeps`` Euler steps. Frames with sigma == sigma_next (clean
    context, cache step) do not move."""
    b = x_t.shape[0]
    ctx2 = torch.cat([ctx, torch.zeros_like(ctx)]) if guidance != 1.0 else ctx
    x = x_t.clone()
    for j in range(substeps):
        s0 = sigma + (sigma_next - sigma) * (j / substeps)  # [B, F]
        s1 = sigma + (sigma_next - sigma) * ((j + 1) / substeps)
        xin, tin = (torch.cat([x, x]), torch.cat([s0, s0])) if guidance != 1.0 else (x, s0)
        v = teacher(xin, 1000.0 * tin, ctx2, frame_pos=pos, attn_mask=mask)
        if guidance != 1.0:
            v = v[b:] + guidance * (v[:b] - v[b:])
        x = x + (s1 - s0)[:, None, :, None, None] * v
    step = (sigma_next - sigma)[:, None, :, None, None]
    return torch.where(step != 0, (x - x_t) / step.where(step != 0, torch.ones_like(step)), 0.0)


def distill(data_path: Path, run_dir: Path, cfg: DistillConfig, minutes: float | None = None) -> Path:
    """Distil run_dir/dit_ema.safetensors into run_dir/dit_distilled_ema.safetensors (resumable
    through run_dir/distill_ckpt.pt)."""
    from safetensors.torch import load_file

    src = run_dir / "dit_ema.safetensors"
    if not src.exists():
        raise FileNotFoundError(f"{src} is missing: train the DiT first (vidcascade train dit)")
    ckpt_path = run_dir / "distill_ckpt.pt"
    data = torch.load(data_path, map_location="cpu", weights_only=False)
    teacher = CausalWanDiT(model_preset("tiny"))
    teacher.load_state_dict(load_file(str(src)))
    teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    torch.manual_seed(cfg.seed)
    opt, ema, rng, start = start_run(student, cfg, ckpt_path, "distillation")
    h = data["latents"].shape[-1]
    lay = cfg.layouts
    batcher = Batcher(
        data,
        student.tokens_per_frame(h, h),
        two_object_share=lay.two_object_share,
        context_noise=cfg.context_noise,
    )
    sampler = lay.layout_sampler(clip_blocks=data["latents"].shape[2] // 3)
    sched = sampler.schedule_sigmas
    per_block = 3 * batcher.tpf

    def step_loss():
        layout, stages = sampler.sample_tick(
            rng, lambda nb: np.clip(cfg.tokens_per_step // (nb * per_block), 4, 48), cfg.lag_probs
        )
        x_t, t, ctx, _, loss_frames, pos, mask = batcher.make(rng, layout, len(layout.sigmas[0]))
        sigma = t / 1000.0  # [B, F]
        nxt = _next_sigma(stages, sched, x_t.shape[0], batcher.fpb)
        target = teacher_velocity(teacher, x_t, sigma, nxt, ctx, pos, mask, cfg.substeps, cfg.guidance)
        v = student(x_t, t, ctx, frame_pos=pos, attn_mask=mask)
        loss = (v - target).square().mean(dim=(1, 3, 4))[:, loss_frames].mean()
        return loss, {"blocks": len(layout.clip_blocks)}

    fit(
        student,
        opt,
        ema,
        rng,
        start,
        cfg,
        step_loss,
        desc="distill",
        ckpt_path=ckpt_path,
        ema_path=run_dir / "dit_distilled_ema.safetensors",
        minutes=minutes,
        metadata={
            "guidance": str(cfg.guidance),
            "substeps": str(cfg.substeps),
            "text_mode": data_text_mode(data),
            **({"student_init": Path(cfg.init_from).name} if cfg.init_from else {}),
        },
    )
    return run_dir / "dit_distilled_ema.safetensors"
