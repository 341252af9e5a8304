"""Boolean attention masks (True = may attend), built from frame/block counts only."""

from __future__ import annotations

import torch


def block_causal_mask(
    num_frames: int, frames_per_block: int, tokens_per_frame: int, device: torch.device | None = None
) -> torch.Tensor:
    """[N, N] mask of the block-causal model: a query sees every key up to the end of its own block.

    Attention is bidirectional inside a block and causal across blocks (reference §2.1).
    """
    block_of_frame = torch.arange(num_frames, device=device) // frames_per_block  # [F]
    block_of_token = block_of_frame.repeat_interleave(tokens_per_frame)  # [N]
    return block_of_token[None, :] <= block_of_token[:, None]  # [N, N]


def inflight_mask(
    num_inflight: int,
    tokens_per_block: int,
    committed_tokens: int,
    causal: bool,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Mask of a tick: queries are the in-flight blocks (oldest first); keys are the in-flight
    blocks followed by the committed K/V.

    Committed K/V is visible to all. In causal mode block i sees in-flight blocks j <= i; in
    bidirectional mode it sees all of them, and no mask is needed (None: SDPA's fast path).
    """
    if not causal or num_inflight == 1:
        return None
    blk = torch.arange(num_inflight, device=device).repeat_interleave(tokens_per_block)  # [Nq]
    inflight = blk[None, :] <= blk[:, None]  # [Nq, Nq]
    committed = torch.ones(blk.numel(), committed_tokens, dtype=torch.bool, device=device)
    return torch.cat([inflight, committed], dim=1)  # [Nq, Nq + Nc]


def key_bias_mask(mask: torch.Tensor, start: int, stop: int, bias: float, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask from a boolean one [Nq, Nk]: -inf where False, 0 elsewhere, and ``bias``
    added to key columns ``start:stop`` (SDPA adds a float mask to the attention logits)."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    out[:, start:stop] += bias
    return out  # [Nq, Nk]
