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

With ``rollout_clips`` (rollouts.py), some ticks show the student its own drawing of the clean
blocks while the teacher sees the true ones; the student then learns to correct its errors
instead of copying them, which is what a long video needs. The drawings come from the student
the run starts from, so this is meant for a run that starts from a distilled student
(``init_from``); one that starts from the teacher's weights would draw with an undistilled
4-step sampler.
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
from .latent_data import block_overlaps, data_text_mode
from .switch_text import Text, text_kwargs, with_empty

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 600
    """The shipped student (phase 8) re-fitted the phase-6 student (``init_from``:
    runs/embedded/dit_distilled_ema.safetensors at git commit 448066d, itself 1,500 steps from
    the phase-5 teacher) to the phase-8 teacher in 600 steps."""
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
    """Layout mix (video starts, context depth, attention) and clip mix (two objects, overlaps,
    prompt switches: ``switch_share``); only these fields are used. Bidirectional share 0.75
    (phase 5: 0.6, the DiT's). A tick across a switch conditions each block as the engine does:
    every in-flight block on the new prompt from the tick at which the switch block starts."""
    init_from: str | None = None
    """Start the student from these weights (an earlier student's ``dit_distilled_ema.safetensors``
    or a ``distill_ckpt.pt``) instead of the teacher's, to re-fit a distilled student to a
    retrained teacher in fewer steps. Ignored when the run folder has a checkpoint to resume."""
    rollout_clips: int = 0
    """Clips whose blocks the student draws itself at the start of the run (rollouts.py; one step
    ahead of the true blocks, two-object clips at the layouts' share), kept in the run folder as
    rollouts.pt. 0: no rollouts (phases 5-6)."""
    rollout_share: float = 0.5
    """Share of ticks with clean blocks (context, cache step) in which the student sees its own
    drawn blocks there while the teacher sees the true ones: the student learns the move the
    teacher makes from the true video, i.e. to correct its own errors instead of copying them."""
    rollout_focus: str = "any"
    """Which clips the rollouts draw: "any" (at the layouts' two-object share) or "overlap": clips
    whose two objects overlap after the first block, and in each tick the clips whose overlap falls
    within the tick's blocks. Long two-object videos lose an object where the two overlap: the
    model draws them merged and then continues the merged blob."""

    def __post_init__(self) -> None:
        require_at_least_one(self, "steps", "substeps", "tokens_per_step", "checkpoint_every")
        if self.guidance < 1.0:
            raise ValueError(f"guidance must be >= 1, got {self.guidance}")
        require_context_noise(self.context_noise)
        if self.rollout_clips < 0:
            raise ValueError(f"rollout_clips must be >= 0, got {self.rollout_clips}")
        if not 0.0 <= self.rollout_share <= 1.0:
            raise ValueError(f"rollout_share must be in [0, 1], got {self.rollout_share}")
        if self.rollout_focus not in ("any", "overlap"):
            raise ValueError(f"rollout_focus must be 'any' or 'overlap', got {self.rollout_focus!r}")
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
    ctx: Text,
    pos: torch.Tensor,
    mask: torch.Tensor,
    substeps: int,
    guidance: float,
) -> torch.Tensor:
    """The velocity that moves x_t [B, C, F, h, w] from sigma to sigma_next ([B, F]) in one step, as
    the guided teacher does in ``substeps`` Euler steps. Frames with sigma == sigma_next (clean
    context, cache step) do not move."""
    b = x_t.shape[0]
    text = text_kwargs(with_empty(ctx) if guidance != 1.0 else ctx)
    x = x_t.clone()
    for j in range(substeps):
        s0 = sigma + (sigma_next - sigma) * (j / substeps)  # [B, F]
        s1 = sigma + (sigma_next - sigma) * ((j + 1) / substeps)
        xin, tin = (torch.cat([x, x]), torch.cat([s0, s0])) if guidance != 1.0 else (x, s0)
        v = teacher(xin, 1000.0 * tin, **text, frame_pos=pos, attn_mask=mask)
        if guidance != 1.0:
            v = v[b:] + guidance * (v[:b] - v[b:])
        x = x + (s1 - s0)[:, None, :, None, None] * v
    step = (sigma_next - sigma)[:, None, :, None, None]
    return torch.where(step != 0, (x - x_t) / step.where(step != 0, torch.ones_like(step)), 0.0)


def drawable_blocks(layout, stages: tuple[int, ...], steps: int) -> list[int]:
    """Sequence blocks of a tick that the student may see as its own drawing: the clean ones
    (committed context, stage -1; the cache step, stage ``steps``) except clip block 0, the sink,
    which rollouts keep true."""
    return [j for j, (b, st) in enumerate(zip(layout.clip_blocks, stages)) if st in (-1, steps) and b >= 1]


def with_drawn_blocks(
    x_t: torch.Tensor, drawn: torch.Tensor, layout, blocks: list[int], fpb: int
) -> torch.Tensor:
    """x_t [B, z, F, h, w] with its sequence blocks ``blocks`` taken from the drawn clips [B, z, T,
    h, w] (at their clip block's frames); the other blocks untouched."""
    out = x_t.clone()
    for j in blocks:
        f, cf = j * fpb, layout.clip_blocks[j] * fpb
        out[:, :, f : f + fpb] = drawn[:, :, cf : cf + fpb].float()
    return out


def _bank_rows(rng: np.random.Generator, bank: dict, layout, own: list[int], batch: int) -> np.ndarray:
    """Bank rows for a tick: any, or (overlap focus) those whose objects overlap between the first
    block the student sees as its own and the tick's last block, where there are such rows."""
    pool = np.arange(len(bank["clips"]))
    if "overlap" in bank:
        lo, hi = min(layout.clip_blocks[j] for j in own), max(layout.clip_blocks)
        hit = np.flatnonzero(bank["overlap"][:, lo : hi + 1].numpy().any(1))
        pool = hit if len(hit) else pool
    return pool[rng.integers(len(pool), size=batch)]


def _rollout_bank(run_dir: Path, cfg: DistillConfig, student, data: dict, batcher: Batcher, sched) -> dict:
    """The student's own drawings of ``cfg.rollout_clips`` clips, made once by the student as the
    run starts (a resumed run loads them: they belong to the run, not to the current weights)."""
    from .rollouts import build_rollout_bank

    path = run_dir / "rollouts.pt"
    if path.exists():
        bank = torch.load(path, map_location="cpu", weights_only=False)
        if len(bank["clips"]) == cfg.rollout_clips and bank.get("focus", "any") == cfg.rollout_focus:
            return bank
        log.info(
            "%s holds %d clips (%s), the run asks for %d (%s): drawing them again",
            path,
            len(bank["clips"]),
            bank.get("focus", "any"),
            cfg.rollout_clips,
            cfg.rollout_focus,
        )
    rng = np.random.default_rng(cfg.seed + 1)
    fpb = batcher.fpb
    blocks = data["latents"].shape[2] // fpb
    overlap = None
    if cfg.rollout_focus == "overlap":
        overlap = block_overlaps(data, fpb)  # [N, blocks]
        pool = np.flatnonzero(overlap[:, 1:].any(1))
        if not len(pool):
            raise ValueError("rollout_focus 'overlap': no clip in the data has overlapping objects")
        clips = rng.choice(pool, size=cfg.rollout_clips, replace=cfg.rollout_clips > len(pool))
    else:
        clips = batcher.sample_clips(rng, cfg.rollout_clips)
    bank = build_rollout_bank(student, data, clips, sched, blocks, seed=cfg.seed)
    bank["focus"] = cfg.rollout_focus
    if overlap is not None:
        bank["overlap"] = torch.from_numpy(overlap[clips])
    student.train()
    torch.save(bank, path)
    return bank


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
        overlap_share=lay.overlap_share,
        switch_share=lay.switch_share,
    )
    sampler = lay.layout_sampler(clip_blocks=data["latents"].shape[2] // 3)
    sched = sampler.schedule_sigmas
    per_block = 3 * batcher.tpf
    bank = _rollout_bank(run_dir, cfg, student, data, batcher, sched) if cfg.rollout_clips else None
    fpb = batcher.fpb

    def step_loss():
        layout, stages = sampler.sample_tick(
            rng, lambda nb: np.clip(cfg.tokens_per_step // (nb * per_block), 4, 48), cfg.lag_probs
        )
        batch = len(layout.sigmas[0])
        own = drawable_blocks(layout, stages, len(sched))
        rows = None
        if bank is not None and own and rng.random() < cfg.rollout_share:
            rows = _bank_rows(rng, bank, layout, own, batch)
        clips = None if rows is None else bank["clips"][rows].numpy()
        x_t, t, ctx, _, loss_frames, pos, mask = batcher.make(rng, layout, batch, clips)
        sigma = t / 1000.0  # [B, F]
        nxt = _next_sigma(stages, sched, x_t.shape[0], fpb)
        target = teacher_velocity(teacher, x_t, sigma, nxt, ctx, pos, mask, cfg.substeps, cfg.guidance)
        x_in = (
            x_t
            if rows is None
            else with_drawn_blocks(x_t, bank["latents"][torch.from_numpy(rows)], layout, own, fpb)
        )
        v = student(x_in, t, **text_kwargs(ctx), frame_pos=pos, attn_mask=mask)
        loss = (v - target).square().mean(dim=(1, 3, 4))[:, loss_frames].mean()
        return loss, {"blocks": len(layout.clip_blocks), "own": float(rows is not None)}

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
            **(
                {"rollouts": f"{cfg.rollout_clips} {cfg.rollout_focus} @{cfg.rollout_share}"}
                if cfg.rollout_clips
                else {}
            ),
        },
    )
    return run_dir / "dit_distilled_ema.safetensors"
