"""Common interface for prompt encoders, plus a per-prompt LRU memo.

Every encoder returns per-token hidden states in the Wan convention:

    encode(prompts) -> [B, text_len, text_dim] float32
    row j of prompt b  = hidden state of token j      if j <  true_len[b]
                       = exactly 0.0                  if j >= true_len[b]

The DiT applies its own text MLP to these rows; zero rows stand for "no token", which is how Wan
trims the encoder output to the true length and then zero-pads it to `text_len`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Protocol, runtime_checkable

import torch

logger = logging.getLogger(__name__)


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns prompts into zero-padded per-token embeddings."""

    text_dim: int
    """Width of one token embedding (384 for MiniLM, 4096 for umT5-XXL)."""
    text_len: int
    """Rows per prompt; tokens past it are truncated, rows past the true length are zero."""

    @property
    def device(self) -> torch.device:
        """Device the returned tensors live on."""
        ...

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Return [len(prompts), text_len, text_dim] float32, padding rows exactly 0.0."""
        ...


def zero_rows_past_length(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Set rows at or past each sequence's true length to exactly 0.0.

    hidden: [B, L, D]; lengths: [B] integer true lengths (clamped to L by the caller's tokenizer).
    Uses masked_fill rather than a multiply so the zeros are exact even if a padding row held inf/NaN.
    """
    positions = torch.arange(hidden.shape[1], device=hidden.device)  # [L]
    pad = positions[None, :] >= lengths.to(hidden.device)[:, None]  # [B, L]
    return hidden.masked_fill(pad[:, :, None], 0.0)  # [B, L, D]


class MemoTextEncoder:
    """Wraps a TextEncoder with an LRU memo keyed by the prompt string.

    Prompts repeat a lot in interactive use (the same prompt every block, a fixed negative prompt),
    so each distinct prompt is encoded once; misses in one call are encoded together in one batch.
    Cached rows are stored on the encoder's device; `encode` always returns a fresh tensor.
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.encoder = encoder
        self.max_entries = max_entries
        self.text_dim = encoder.text_dim
        self.text_len = encoder.text_len
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def clear(self) -> None:
        self._memo.clear()

    def __len__(self) -> int:
        return len(self._memo)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Same contract as TextEncoder.encode: [B, text_len, text_dim] float32."""
        if not prompts:
            return self.encoder.encode([])
        missing = list(dict.fromkeys(p for p in prompts if p not in self._memo))
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            rows = self.encoder.encode(missing)  # [M, text_len, text_dim]
            fresh = {p: rows[i] for i, p in enumerate(missing)}
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        out = torch.stack([fresh[p] if p in fresh else self._memo[p] for p in prompts])  # [B, L, D]
        for p in prompts:
            if p in fresh:
                self._memo[p] = fresh[p]
            self._memo.move_to_end(p)
        while len(self._memo) > self.max_entries:
            evicted, _ = self._memo.popitem(last=False)
            logger.debug("text memo evicted %r", evicted[:40])
        return out
