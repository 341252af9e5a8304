"""Which caption each block of a training sample is conditioned on, across a prompt switch.

A clip with a switch at block k was made under caption A for blocks < k and B from block k on.
The engine (DESIGN.md, *Prompt switch*) runs block b at stage s at tick b*L + s (lag L) and moves
every forward to the new prompt from the tick at which block k starts, k*L; committed K/V is not
recomputed, so a committed block keeps the prompt of its cache step (stage S). A training sample
shows the model one tick, so each sequence block gets the prompt of that tick's schedule:

- a block in flight at stage s (a tick layout: lag known): B iff b*L + s >= k*L;
- a committed context block (stage -1): its cache step, s = S: B iff b*L + S >= k*L;
- layouts without a tick (first / single / forcing: free noise levels, clean context) follow the
  sequential pipeline, L = S + 1 (teacher forcing): B iff b >= k.

The text reaches the model as one prompt per sample where every block of the sample has the same
one, else as both prompts and a per-frame index (``CausalWanDiT.forward``'s ``frame_text``).
"""

from __future__ import annotations

import numpy as np
import torch

Text = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""Batch text: context [B, L, D], or (context [B, 2, L, D], frame_text [B, F]) across a switch."""


def block_prompts(layout, switch_block: np.ndarray, steps: int) -> np.ndarray:
    """bool [B, nb]: whether sequence block j of sample i is conditioned on the new caption B;
    ``switch_block`` [B] holds each sample's k (-1: no switch); ``steps`` = S."""
    k = np.asarray(switch_block, dtype=np.int64)[:, None]  # [B, 1]
    blocks = np.asarray(layout.clip_blocks, dtype=np.int64)[None, :]  # [1, nb]
    lag = getattr(layout, "lag", None)
    stages = getattr(layout, "stages", None)
    if lag is None or stages is None:
        after = blocks >= k
    else:
        s = np.asarray([steps if st < 0 else st for st in stages], dtype=np.int64)[None, :]
        after = blocks * lag + s >= k * lag
    return after & (k >= 0)


def select_text(text_a: torch.Tensor, text_b: torch.Tensor, which: np.ndarray, frames_per_block: int) -> Text:
    """Batch text from each sample's two prompts [B, L, D] and ``block_prompts`` [B, nb]: a plain
    context where each sample keeps one prompt throughout, else both and the per-frame index."""
    which_t = torch.from_numpy(np.asarray(which, dtype=bool))
    uniform = (which_t == which_t[:, :1]).all(dim=1)  # [B]
    if bool(uniform.all()):
        return torch.where(which_t[:, 0, None, None], text_b, text_a)
    both = torch.stack([text_a, text_b], dim=1)  # [B, 2, L, D]
    return both, which_t.long().repeat_interleave(frames_per_block, dim=1)  # [B, F]


def text_kwargs(text: Text) -> dict:
    """Keyword arguments of ``CausalWanDiT.forward`` for a batch text."""
    if isinstance(text, tuple):
        return {"context": text[0], "frame_text": text[1]}
    return {"context": text}


def drop_text(text: Text, drop: torch.Tensor) -> Text:
    """The text with samples ``drop`` [B] bool zeroed (classifier-free guidance's empty prompt)."""
    if isinstance(text, tuple):
        ctx = text[0].clone()
        ctx[drop] = 0.0
        return ctx, text[1]
    out = text.clone()
    out[drop] = 0.0
    return out


def with_empty(text: Text) -> Text:
    """The batch twice: as given, then with the empty prompt (guided sampling's second half)."""
    if isinstance(text, tuple):
        ctx, idx = text
        return torch.cat([ctx, torch.zeros_like(ctx)]), torch.cat([idx, idx])
    return torch.cat([text, torch.zeros_like(text)])
