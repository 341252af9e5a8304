"""A tick's attention prepared outside the forward: which keys each query sees and the sink bias,
as one ``TickAttention`` per (in-flight count, committed length, sink bias) (models/attention.py).

Two implementations of the sink bias, equal up to rounding:

- ``dense``: one additive float mask [Nq, Nk] with -inf on hidden keys and the bias on the sink's
  columns: the reference (what the K/V pool builds), and what a causal cascade needs anyway;
- ``split``: no mask where every key is visible (P0, the bidirectional cascade); the bias is
  applied through log-sum-exp (an attention over all keys and one over the sink's few keys),
  which on CUDA lets SDPA use the flash kernel with the sink bias on.

Either way a tick with a mask gets a float mask, never a bool one, so that a compiled forward
sees one mask type as the bias starts. The default per device is what measured faster
(docs/benchmarks.md, "Attention with the sink bias").
"""

from __future__ import annotations

from typing import Literal

import torch

from ..cache.pool import KVPool
from ..models.attention import TickAttention, additive_mask
from ..models.masks import inflight_mask, key_bias_mask
from ..models.wan_dit import AttnMask

AttentionImpl = Literal["dense", "split"]
ATTENTION_IMPLS = ("dense", "split")


def check_attention_impl(impl: str) -> AttentionImpl:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLS}, got {impl!r}")
    return impl  # type: ignore[return-value]


def default_attention_impl(device: torch.device) -> AttentionImpl:
    """``split`` on CUDA (mask-free SDPA can take the flash kernel); on the CPU what measured faster."""
    return "split" if device.type == "cuda" else "dense"


def tick_attention(
    pool: KVPool, n_inflight: int, committed_tokens: int, causal: bool, impl: AttentionImpl
) -> TickAttention:
    """The attention of a tick of ``n_inflight`` blocks over them and ``committed_tokens`` committed
    keys (keys: in-flight blocks, then the committed tier, which starts with the sink)."""
    check_attention_impl(impl)
    nq = n_inflight * pool.tokens_per_block
    nk = nq + committed_tokens
    dtype, dev = pool.k[0].dtype, pool.device
    visible = inflight_mask(n_inflight, pool.tokens_per_block, committed_tokens, causal, device=dev)
    sink = pool.sink_bias_tokens(committed_tokens)
    start = nk - committed_tokens  # the first sink key
    # Split where it spares a mask (on CUDA: only there; with a mask, efficient attention's
    # log-sum-exp would be the only gain) and where the bias is positive (see models/attention.py).
    split = impl == "split" and sink and pool.sink_bias > 0 and (visible is None or dev.type == "cpu")
    if split:
        mask = additive_mask(visible, dtype) if visible is not None else None
        return TickAttention(mask, start, start + sink, pool.sink_bias)
    if sink:
        if visible is None:
            visible = torch.ones(nq, nk, dtype=torch.bool, device=dev)
        return TickAttention(key_bias_mask(visible, start, start + sink, pool.sink_bias, dtype))
    return TickAttention(additive_mask(visible, dtype) if visible is not None else None)


class TickView:
    """KVAccess of a tick: the pool's store for the K/V, this tick's ``TickAttention`` for the rest."""

    def __init__(self, store, attention: TickAttention) -> None:
        self.store = store
        self.attention = attention

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, AttnMask]:
        keys, values, _ = self.store.update(layer, k, v)  # [B, H, Nk, Dh] each
        return keys, values, self.attention
