"""RoPE positions over an unbounded stream: exact rebase and RoPE refresh.

Frame f runs at RoPE position f - offset. A stream that goes on for hours would pass the model's
RoPE table (``ModelConfig.rope_max_frames``); before the tick at which the newest block would,
every stored key (committed sink + window and in-flight) is re-rotated D positions back and the
offset grows by D. RoPE is a rotation, so a key stored at position p and rotated by -D is the key
at p - D: every attention score q·k depends on the positions' difference only and is unchanged.
That is the **exact rebase**; it happens once per about (table - cache) frames, with D as large as
possible (the oldest in-flight block lands right after where sink + window would sit), so its
cost spread over the blocks is constant.

Under exact rebasing the sink keeps its true distance behind the window, which grows without
bound (beyond what the model was trained on). **RoPE refresh** (``positions="refresh"``) uses the
same mechanism to keep the sink at most ``refresh_gap`` frames behind the oldest window frame:
once the gap would grow past it, the sink's keys are rotated forward by the excess before each
tick (a few frames' keys: constant cost). Not exact: the sink then looks like frames closer to the
window than they were; but every distance the model sees stays within the trained ones.

Decisions are a function of the plan's ticks alone, so every rank of a distributed run takes them
at the same tick boundary.
"""

from __future__ import annotations

import logging
from typing import Literal

from ..scheduling.plan import Tick
from .executor import Executor

log = logging.getLogger(__name__)

PositionMode = Literal["exact", "refresh"]
POSITION_MODES = ("exact", "refresh")


class RopePositions:
    def __init__(
        self,
        executor: Executor,
        *,
        mode: PositionMode,
        max_len: int,
        refresh_gap: int,
        inflight_blocks: int,
    ) -> None:
        if mode not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {mode!r}")
        if not isinstance(refresh_gap, int) or refresh_gap < 0:
            raise ValueError(f"refresh_gap must be an integer >= 0 (frames), got {refresh_gap!r}")
        self.ex = executor
        self.mode = mode
        self.max_len = max_len
        self.refresh_gap = refresh_gap
        layout = executor.pool.layout
        self.sink, self.window = layout.sink_frames, layout.window_frames
        self.fpb = executor.frames_per_block
        # After a rebase the oldest in-flight block starts at position `base`: the committed
        # frames then sit where they would in a fresh video (sink at 0.., window right after;
        # under refresh the sink's gap between them, so that no position is below 0).
        self.base = self.sink + self.window + (refresh_gap if mode == "refresh" else 0)
        need = self.base + inflight_blocks * self.fpb
        if max_len < need + self.fpb:
            raise ValueError(
                f"a RoPE table of {max_len} frame positions is too small for a stream with sink "
                f"{self.sink} + window {self.window} frames and {inflight_blocks} blocks of {self.fpb} "
                f"frames in flight (needs more than {need + self.fpb})"
            )
        self.rebases = 0

    def before_tick(self, tick: Tick) -> None:
        """Re-rotate what ``tick`` needs re-rotated, before it runs."""
        if not tick.entries:
            return
        ex = self.ex
        if self.mode == "refresh":
            # Committed frames before this tick: the window's oldest frame is the first one kept.
            committed = tick.committed * self.fpb
            oldest = max(self.sink, committed - self.window)
            excess = oldest - self.sink - self.refresh_gap - ex.sink_shift
            if excess > 0 and self.sink:
                ex.shift_sink(excess)
        newest = (tick.entries[-1].block + 1) * self.fpb - 1 - ex.rope_offset
        if newest < self.max_len:
            return
        delta = tick.entries[0].block * self.fpb - ex.rope_offset - self.base
        if delta <= 0 or newest - delta >= self.max_len:  # guarded by __init__; kept as a check
            raise RuntimeError(f"cannot rebase at tick {tick.index}: delta {delta}, newest position {newest}")
        ex.rebase(delta)
        self.rebases += 1
        log.info(
            "RoPE rebase at tick %d: keys moved %d positions back (offset %d, %s)",
            tick.index,
            delta,
            ex.rope_offset,
            self.mode,
        )
