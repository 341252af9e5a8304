"""Preallocated K/V tensors of every layer: the in-flight tier and the committed tier.

All layers' keys and values are one tensor ``kv`` [layers, 2 (k, v), B, H, M + C, Dh]; ``k[layer]``
and ``v[layer]`` are its contiguous per-layer views [B, H, M + C, Dh]. Along the tokens::

    token:  0                M - n_if            M                               M + C
          [ unused          | in-flight blocks  | committed: sink | window ring  ]
                              oldest .. newest    (CommittedLayout slots x tokens_per_frame)

M holds the most blocks that can be in flight; the in-flight blocks are written right-aligned
against the committed tier, so the keys of a tick, in-flight + valid committed, are one
contiguous slice and no concatenation happens per layer. In-flight K/V is rewritten by every tick;
the cache step promotes a block's clean K/V into its committed slots: with every layer in one
tensor that is one copy per run of consecutive slots (one, or two where the ring wraps or the sink
ends), not 2 x layers x frames small ones.

With ``sink_bias`` > 0 the masks become additive float masks that raise the sink keys' logits by
that much once the window holds frames (``CacheConfig.sink_bias``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models.masks import inflight_mask, key_bias_mask
from ..models.rope import rotate_time_, time_rotation
from .layout import CacheIndexError, CommittedLayout


class KVPool:
    def __init__(
        self,
        *,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        tokens_per_frame: int,
        frames_per_block: int,
        max_inflight_blocks: int,
        sink_frames: int,
        window_frames: int,
        sink_bias: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.tokens_per_frame = tokens_per_frame
        self.frames_per_block = frames_per_block
        self.tokens_per_block = tokens_per_frame * frames_per_block
        self.max_inflight_blocks = max_inflight_blocks
        self.layout = CommittedLayout(sink_frames, window_frames)
        self.sink_bias = float(sink_bias)
        self.sink_on_prompt = True
        """False after a prompt switch: the sink shows the old prompt, so it is not raised any more."""
        self.inflight_tokens = max_inflight_blocks * self.tokens_per_block  # M
        self.committed_tokens = self.layout.capacity * tokens_per_frame  # C
        tokens = self.inflight_tokens + self.committed_tokens
        self.kv = torch.zeros(num_layers, 2, batch, num_heads, tokens, head_dim, dtype=dtype, device=device)
        self.k = [self.kv[layer, 0] for layer in range(num_layers)]  # each [B, H, M + C, Dh], contiguous
        self.v = [self.kv[layer, 1] for layer in range(num_layers)]
        self._masks: dict[tuple[int, int, bool, int], torch.Tensor | None] = {}
        self._sink_keys: list[torch.Tensor] | None = None  # see capture_sink
        self._sink_keys_shift = 0

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def valid_committed_tokens(self) -> int:
        return self.layout.valid_slots * self.tokens_per_frame

    def reset(self) -> None:
        """Start a new video: forget committed frames (tensors are overwritten, not zeroed)."""
        self.layout.reset()
        self.sink_on_prompt = True
        self._sink_keys = None

    def sink_bias_tokens(self, committed_tokens: int | None = None) -> int:
        """Committed tokens whose logits ``sink_bias`` raises with ``committed_tokens`` valid (default:
        now): the sink's, once frames follow it in the window (while the sink is all there is,
        raising it changes nothing that matters) and until a prompt switch."""
        ct = self.valid_committed_tokens() if committed_tokens is None else committed_tokens
        sink = self.layout.sink_frames * self.tokens_per_frame
        return sink if self.sink_bias != 0.0 and self.sink_on_prompt and ct > sink else 0

    def with_sink_bias(
        self, mask: torch.Tensor | None, n_query: int, n_keys: int, committed_tokens: int | None = None
    ) -> torch.Tensor | None:
        """``mask`` [n_query, n_keys] (None = all visible; the keys end with ``committed_tokens``
        valid committed ones, default: now) with the sink bias applied, or unchanged when none
        applies."""
        ct = self.valid_committed_tokens() if committed_tokens is None else committed_tokens
        sink = self.sink_bias_tokens(ct)
        if not sink:
            return mask
        if mask is None:
            mask = torch.ones(n_query, n_keys, dtype=torch.bool, device=self.device)
        start = n_keys - ct  # the committed tier starts with the sink
        return key_bias_mask(mask, start, start + sink, self.sink_bias, self.k[0].dtype)

    def _mask(self, n_inflight: int, causal: bool) -> torch.Tensor | None:
        key = (n_inflight, self.valid_committed_tokens(), causal, self.sink_bias_tokens())
        if key not in self._masks:
            n = n_inflight * self.tokens_per_block
            mask = inflight_mask(n_inflight, self.tokens_per_block, key[1], causal, device=self.device)
            self._masks[key] = self.with_sink_bias(mask, n, n + key[1])
        return self._masks[key]

    def tick_view(self, n_inflight: int, causal: bool) -> TickKV:
        """The store for one joint forward of ``n_inflight`` blocks (oldest first)."""
        if not 1 <= n_inflight <= self.max_inflight_blocks:
            raise CacheIndexError(
                f"{n_inflight} blocks in flight, but the pool holds 1..{self.max_inflight_blocks}"
            )
        return TickKV(self, n_inflight, self._mask(n_inflight, causal))

    def inflight_slice(self, index: int, n_inflight: int) -> slice:
        """Token range of the index-th in-flight block (0 = oldest) when n_inflight are in flight."""
        start = self.inflight_tokens - (n_inflight - index) * self.tokens_per_block
        return slice(start, start + self.tokens_per_block)

    def promote(self, index: int, n_inflight: int, first_frame: int) -> None:
        """Cache step: copy in-flight block ``index``'s K/V into the committed slots of its frames
        (every layer at once; see ``commit_stacked``)."""
        src = self.inflight_slice(index, n_inflight)
        self.commit_stacked(first_frame, self.kv[:, :, :, :, src])  # [L, 2, B, H, fpb*tpf, Dh]

    def _commit_runs(self, first_frame: int) -> list[tuple[int, int, int]]:
        """Commit the block's frames in the layout; (first frame j in the block, first slot, count)
        of each run of consecutive slots they go to."""
        pairs = self.layout.commit(range(first_frame, first_frame + self.frames_per_block))
        runs: list[tuple[int, int, int]] = []
        for j, (slot, _) in enumerate(pairs):
            if runs and runs[-1][1] + runs[-1][2] == slot:
                j0, s0, count = runs[-1]
                runs[-1] = (j0, s0, count + 1)
            else:
                runs.append((j, slot, 1))
        return runs

    def commit_stacked(self, first_frame: int, kv: torch.Tensor) -> None:
        """Cache step from a block's clean K/V of every layer in one tensor ``kv``
        [L, 2, B, H, frames_per_block * tokens_per_frame, Dh] (not overlapping its destination):
        one copy per run of consecutive committed slots."""
        tpf, m = self.tokens_per_frame, self.inflight_tokens
        for j, slot, count in self._commit_runs(first_frame):
            dst = slice(m + slot * tpf, m + (slot + count) * tpf)
            self.kv[:, :, :, :, dst] = kv[:, :, :, :, j * tpf : (j + count) * tpf]
        self._after_commit(first_frame)

    def commit_block(
        self, first_frame: int, kv_of_layer: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Cache step from any source: ``kv_of_layer(layer)`` gives the block's clean k, v
        [B, H, frames_per_block * tokens_per_frame, Dh]; they go to the committed slots of its frames."""
        tpf, m = self.tokens_per_frame, self.inflight_tokens
        runs = self._commit_runs(first_frame)
        for layer, (kt, vt) in enumerate(zip(self.k, self.v)):
            k, v = kv_of_layer(layer)
            for j, slot, count in runs:
                d = slice(m + slot * tpf, m + (slot + count) * tpf)
                kt[:, :, d] = k[:, :, j * tpf : (j + count) * tpf]
                vt[:, :, d] = v[:, :, j * tpf : (j + count) * tpf]
        self._after_commit(first_frame)

    def _after_commit(self, first_frame: int) -> None:
        sink = self.layout.sink_frames
        if sink and first_frame < sink <= first_frame + self.frames_per_block:
            self.capture_sink(0)  # the sink is complete, committed at its frames' own positions

    def rotate_keys(self, delta: int) -> None:
        """Move every stored key except the sink's by ``delta`` frame positions (re-rotate the RoPE
        time channels of the in-flight region and the window ring). Values carry no position."""
        if delta == 0:
            return
        cos, sin = time_rotation(self.k[0].shape[-1], delta, self.device)
        m = self.inflight_tokens
        sink_end = m + self.layout.sink_frames * self.tokens_per_frame
        for kt in self.k:
            rotate_time_(kt[:, :, :m], cos, sin)
            rotate_time_(kt[:, :, sink_end:], cos, sin)

    def _sink_range(self) -> slice:
        m = self.inflight_tokens
        return slice(m, m + self.layout.sink_frames * self.tokens_per_frame)

    def capture_sink(self, shift: int = 0) -> None:
        """Keep the sink's keys as stored now, when frame f's sink keys sit at position f + shift,
        so that ``place_sink`` always rotates these once (a sink moved every block would otherwise
        gather a rounding error per move, in bf16 soon visible)."""
        r = self._sink_range()
        self._sink_keys = [kt[:, :, r].clone() for kt in self.k]
        self._sink_keys_shift = shift

    def place_sink(self, shift: int) -> None:
        """Store the sink's keys at positions f + ``shift`` (from the captured copy)."""
        if self.layout.sink_frames == 0 or self._sink_keys is None:
            return
        cos, sin = time_rotation(self.k[0].shape[-1], shift - self._sink_keys_shift, self.device)
        r = self._sink_range()
        for kt, k0 in zip(self.k, self._sink_keys):
            kt[:, :, r] = k0
            rotate_time_(kt[:, :, r], cos, sin)

    def recache_view(self) -> RecacheKV:
        """The store for re-running every committed frame (slot order) under a new prompt."""
        return RecacheKV(self)


class TickKV:
    """KVAccess of one tick: writes the in-flight K/V, attends to in-flight + committed."""

    def __init__(self, pool: KVPool, n_inflight: int, mask: torch.Tensor | None) -> None:
        self.pool = pool
        self.n = n_inflight * pool.tokens_per_block
        self.mask = mask
        m = pool.inflight_tokens
        self.write = slice(m - self.n, m)
        self.read = slice(m - self.n, m + pool.valid_committed_tokens())

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if k.shape[2] != self.n:
            raise CacheIndexError(
                f"layer {layer}: got {k.shape[2]} new tokens, the tick expects {self.n} "
                f"(write slice {self.write}, read slice {self.read})"
            )
        kt, vt = self.pool.k[layer], self.pool.v[layer]
        kt[:, :, self.write] = k
        vt[:, :, self.write] = v
        return kt[:, :, self.read], vt[:, :, self.read], self.mask


class RecacheKV:
    """KVAccess of a re-cache forward: the committed frames attend to each other (bidirectionally)
    and overwrite their own committed slots."""

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        m = pool.inflight_tokens
        self.slots = slice(m, m + pool.valid_committed_tokens())

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        kt, vt = self.pool.k[layer], self.pool.v[layer]
        if k.shape[2] != self.slots.stop - self.slots.start:
            raise CacheIndexError(
                f"layer {layer}: re-cache got {k.shape[2]} tokens for committed slots {self.slots}"
            )
        kt[:, :, self.slots] = k
        vt[:, :, self.slots] = v
        return k, v, None
