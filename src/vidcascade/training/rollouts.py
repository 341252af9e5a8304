"""The student's own rollouts of training clips: the context it really sees deep into a video.

At inference every committed block is the model's own output, with its small errors of colour,
shape and position, and the next block is drawn from that. Trained on the world's clean latents
only, the model learns to *copy* its context, so errors add up over a long video (60 blocks:
colours drift, an object lost on an overlap stays lost). As in Self-Forcing, the fix is to train
on the model's own outputs as context; here with a privileged target (distill.py): the student
sees its rollout, the teacher the world's true blocks, and the student learns the teacher's move,
which pulls it back to what the caption and the true video say.

A rollout keeps the clip's true first block (the sink) and draws blocks 1..blocks-1 as the
engine's level 0 does: 4 Euler steps on the schedule, attending to the sink and the last
``window`` blocks. By default each block is drawn from the true earlier blocks (one step ahead):
free-running rollouts of the shipped student wandered off the true clip (latent error 5% of the
clip's energy after one block, 56% after seven, mostly position), and a true block that is not
where the context says teaches jumps, not corrections.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..models.wan_dit import CausalWanDiT
from .latent_data import switch_rows
from .layouts import Layout, layout_mask
from .switch_text import block_prompts, select_text, text_kwargs

log = logging.getLogger(__name__)


@torch.no_grad()
def rollout_clips(
    model: CausalWanDiT,
    latents: torch.Tensor,
    text: torch.Tensor,
    schedule: tuple[float, ...],
    blocks: int,
    window: int = 4,
    frames_per_block: int = 3,
    seed: int = 0,
    one_step: bool = True,
    text_after: torch.Tensor | None = None,
    switch_block: np.ndarray | None = None,
) -> torch.Tensor:
    """latents [B, z, T, h, w] (the true clips; block 0 is kept), text [B, L, D] -> [B, z, blocks *
    frames_per_block, h, w]: block 0 true, blocks 1.. the model's own, drawn from the caption.
    ``one_step``: each block drawn from the *true* earlier blocks (its own error only, so the
    object stays where the true clip has it and the true next block is a fair target); else
    free-running from the sink (errors add up and positions wander off the true clip).
    ``text_after`` [B, L, D] and ``switch_block`` [B] (-1: none): clips with a prompt switch; a
    rollout is the sequential pipeline, so blocks >= k (context too) are made under the new text."""
    fpb = frames_per_block
    if blocks * fpb > latents.shape[2]:
        raise ValueError(
            f"a rollout of {blocks} blocks needs {blocks * fpb} frames, clips have {latents.shape[2]}"
        )
    b, z, _, h, w = latents.shape
    tpb = fpb * model.tokens_per_frame(h, w)
    gen = torch.Generator().manual_seed(seed)
    true = latents[:, :, : blocks * fpb].float()  # [B, z, F, h, w]
    out = true.clone()
    sigmas = (*schedule, 0.0)
    for blk in range(1, blocks):
        ctx_blocks = [0, *range(max(1, blk - window), blk)]
        seq = (*ctx_blocks, blk)
        layout = Layout(
            clip_blocks=seq,
            positions=tuple(i * fpb for i in seq),
            sigmas=((0.0,),) * len(seq),
            loss=(False,) * len(seq),
            n_context=len(ctx_blocks),
            bidirectional=False,
            style="rollout",
        )
        mask = torch.from_numpy(layout_mask(layout, tpb))
        cond = text
        if text_after is not None and switch_block is not None:
            which = block_prompts(layout, switch_block, len(schedule))  # [B, nb]
            if which.any():
                cond = select_text(text, text_after, which, fpb)
        pos = torch.cat([torch.arange(i * fpb, (i + 1) * fpb) for i in seq])
        src = true if one_step else out
        ctx = torch.cat([src[:, :, i * fpb : (i + 1) * fpb] for i in ctx_blocks], dim=2)  # [B, z, Fc, h, w]
        x = torch.randn((b, z, fpb, h, w), generator=gen)
        nc = ctx.shape[2]
        for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
            t = torch.cat([torch.zeros(nc), torch.full((fpb,), 1000.0 * s0)])[None].expand(b, -1)  # [B, F]
            v = model(torch.cat([ctx, x], dim=2), t, **text_kwargs(cond), frame_pos=pos, attn_mask=mask)
            x = x + (s1 - s0) * v[:, :, nc:]
        out[:, :, blk * fpb : (blk + 1) * fpb] = x
    return out


def build_rollout_bank(
    model: CausalWanDiT,
    data: dict,
    clips: np.ndarray,
    schedule: tuple[float, ...],
    blocks: int,
    batch: int = 32,
    seed: int = 0,
) -> dict:
    """Rollouts of data clips ``clips`` (one caption each, drawn with ``seed``): {"clips": [N],
    "captions": [N], "latents": fp16 [N, z, blocks * 3, h, w]}. Shows a progress bar."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    caps = rng.integers(0, data["text"].shape[1], size=len(clips))
    switch_block, after_row = switch_rows(data)
    parts = []
    model.eval()
    for i in tqdm(range(0, len(clips), batch), desc="rollouts", unit="batch", mininterval=5):
        idx = torch.from_numpy(clips[i : i + batch])
        cap = torch.from_numpy(caps[i : i + batch])
        text = data["text"][idx, cap].float()
        lat = data["latents"][idx].float()
        k = switch_block[clips[i : i + batch]]
        after = None
        if (k >= 0).any():
            rows = torch.from_numpy(np.maximum(after_row[clips[i : i + batch]], 0))
            after = torch.where(
                torch.from_numpy(k >= 0)[:, None, None], data["text_after"][rows, cap].float(), text
            )
        drawn = rollout_clips(
            model, lat, text, schedule, blocks, seed=seed + i, text_after=after, switch_block=k
        )
        parts.append(drawn.half())
    return {"clips": torch.from_numpy(clips), "captions": torch.from_numpy(caps), "latents": torch.cat(parts)}
