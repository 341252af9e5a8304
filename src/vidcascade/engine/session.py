"""A session: one open-ended stream that is steered while it runs (the one code path).

``Engine.session(prompt)`` returns a ``Session``. Iterating it runs the plan's ticks lazily (the
same ticks as ``build_plan``: block b at stage s at tick b*L + s, with no block count) and yields
each block's ``BlockOutput`` as soon as its last denoising step ran, in block order, for as long as
the session runs. Nothing is buffered: a tick runs only when the consumer asks for the next block,
and at most one block becomes ready per tick.

Control (``set_prompt``, ``pause``, ``resume``, ``stop``) may come from any thread. It is queued
under a lock and applied by the iterating thread at the next **tick boundary** (before the next
tick runs), or at a given tick for scripted runs (``at_tick`` / ``at_block``). A scripted run and a
live run whose prompt changes land on the same ticks therefore give identical tensors.
``Engine.stream`` / ``generate`` are sessions that end after N blocks with scheduled prompt changes.

Prompt change modes (``mode=``, default: the engine's ``CascadeConfig.switch_mode``):

- ``no-recache``: from the boundary on, every in-flight block's ticks run under the new prompt;
  committed K/V is kept. After a change at a tick > 0 the sink bias turns off (the sink shows the
  old prompt).
- ``recache``: as no-recache, and first one forward re-encodes every committed frame under the new
  prompt (LongLive's re-cache; the stall it costs is recorded in ``RunStats.recache_s``).
- ``blend``: the encoded prompt (the text encoder's output, the context the DiT's cross-attention
  projects to K/V) moves linearly from the context the last tick ran under to the new prompt's
  over N = ``blend_blocks`` * L ticks (L the lag; blend_blocks blocks' worth of ticks): tick j =
  1..N after the boundary runs under ``lerp(old, new, j / N)`` (its own text K/V), and from tick N
  on under the new prompt itself. With N = 1 that is no-recache. A change during a blend starts
  from the blended context of the last tick. The sink bias turns off as in no-recache.

Stopping: ``stop(drain=True)`` lets the blocks in flight when it is applied (``in_flight``: started,
not yet yielded) finish and be yielded; no new block starts. ``stop(drain=False)`` ends the session
at the next tick boundary and drops the blocks in flight. ``pause()`` holds the iterating thread
at the next tick boundary until ``resume()`` or ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ..scheduling.plan import LazyPlan, Tick, steady_in_flight
from .decode_worker import Decoded, DecodeWorker, check_decode_mode
from .positions import RopePositions

if TYPE_CHECKING:
    from .engine import BlockOutput, Engine

log = logging.getLogger(__name__)

SwitchMode = Literal["no-recache", "recache", "blend"]
SWITCH_MODES = ("no-recache", "recache", "blend")
SessionState = Literal["running", "paused", "stopping", "stopped"]
DECODE_DEPTH = 2
"""Most finished blocks the decode worker may be behind the ticks before the tick loop waits."""
HISTORY = 4096
"""Most per-tick / per-block records an open-ended session keeps in its RunStats (constant memory)."""


@dataclass(frozen=True)
class _Control:
    kind: Literal["prompt", "pause", "resume", "stop"]
    tick: int | None
    """Apply at the boundary before this tick; None: the next boundary."""
    seq: int
    prompt: str = ""
    mode: str = "no-recache"
    drain: bool = True


@dataclass
class _Blend:
    old: torch.Tensor  # [1, L, D] encoded context the last tick ran under
    new: torch.Tensor
    prompt: str
    ticks: int
    done: int = 0


class Session:
    """An open-ended stream of one engine; see the module docstring for the semantics.

    Iterate it from one thread (blocking); call the control methods from any thread.
    """

    def __init__(
        self,
        engine: Engine,
        prompt: str,
        *,
        seed: int = 0,
        switch_mode: str | None = None,
        blend_blocks: int = 4,
        max_blocks: int | None = None,
        decode: bool = True,
        decode_mode: str | None = None,
        on_boundary: Callable[[Session, int], None] | None = None,
    ) -> None:
        _check_prompt(prompt)
        mode = engine.cascade.switch_mode if switch_mode is None else switch_mode
        _check_mode(mode)
        if not isinstance(blend_blocks, int) or isinstance(blend_blocks, bool) or blend_blocks < 1:
            raise ValueError(f"blend_blocks must be an integer >= 1, got {blend_blocks!r}")
        if max_blocks is not None and (not isinstance(max_blocks, int) or max_blocks < 1):
            raise ValueError(f"max_blocks must be a positive integer or None, got {max_blocks!r}")
        self.engine = engine
        self.prompt = prompt
        """The prompt the session runs under now (the target of a blend in progress)."""
        self.seed = seed
        self.switch_mode = mode
        self.blend_blocks = blend_blocks
        self.max_blocks = max_blocks
        self.decode = decode
        self.decode_mode = None if decode_mode is None else check_decode_mode(decode_mode)
        """inline (the default, None): decode in the tick loop, so that a tick runs only when the
        consumer asks for the next block (a live session's contract). thread:
        decode on a worker (engine/decode_worker.py) while the next ticks run, the tick loop then
        running up to DECODE_DEPTH blocks ahead of the consumer (``in_flight`` lists those too;
        stop keeps its meaning: drain yields them, no drain drops them). The latents are the
        same in both modes."""
        self.on_boundary = on_boundary
        """Called by the iterating thread at every tick boundary, with the index of the tick about
        to run, before control queued for that boundary is applied (a hook for tests and for
        broadcasting control to other ranks). Control calls made inside the hook apply at this
        very boundary; a multi-rank run routes every control through it (rank 0 broadcasts what
        arrived, then every rank calls the same methods in its hook), so that all ranks apply it
        at the same boundary."""
        sched = engine.schedule
        self.plan = LazyPlan(sched.num_steps, engine.lag, engine.cascade.attention, engine.cascade.freshness)
        if max_blocks is not None:
            self.plan.end(max_blocks)
        self._cond = threading.Condition()
        self._queue: list[_Control] = []
        self._seq = 0
        self._state: SessionState = "running"
        self._paused = False
        self._in_flight: list[int] = []
        self._decoding: list[int] = []
        """Blocks whose ticks are done, handed to the decode worker and not yet yielded."""
        self._dropped = False
        self._drain_end: int | None = None
        self._started = False
        self.positions: RopePositions | None = None
        """RoPE position bookkeeping (rebases, offset), from the start of the iteration."""

    # -- control (any thread) --------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """running | paused | stopping (a stop is queued or draining) | stopped."""
        with self._cond:
            return self._state

    @property
    def in_flight(self) -> list[int]:
        """Blocks started and not yet yielded (what ``stop(drain=True)`` applied now would still
        yield), oldest first."""
        with self._cond:
            return list(self._decoding) + list(self._in_flight)

    @property
    def next_tick(self) -> int:
        """Index of the tick that runs next (control queued now applies before it)."""
        return self.plan.next_index

    def set_prompt(
        self, text: str, mode: str | None = None, *, at_tick: int | None = None, at_block: int | None = None
    ) -> None:
        """Switch to ``text`` at the next tick boundary (or before tick ``at_tick``, or at the
        tick at which block ``at_block`` enters stage 0). ``mode``: no-recache | recache | blend
        (default: the session's ``switch_mode``)."""
        _check_prompt(text)
        mode = self.switch_mode if mode is None else mode
        _check_mode(mode)
        self._put("prompt", self._tick_of(at_tick, at_block), prompt=text, mode=mode)

    def pause(self) -> None:
        """Hold the iterating thread at the next tick boundary (until resume or stop)."""
        self._put("pause", None)

    def resume(self) -> None:
        self._put("resume", None)

    def stop(self, drain: bool = True, *, at_tick: int | None = None, at_block: int | None = None) -> None:
        """End the session: ``drain=True`` yields the blocks in flight when the stop is applied
        (``in_flight``) and starts no new one; ``drain=False`` ends at the boundary and drops them."""
        self._put("stop", self._tick_of(at_tick, at_block), drain=bool(drain))

    def _tick_of(self, at_tick: int | None, at_block: int | None) -> int | None:
        if at_tick is not None and at_block is not None:
            raise ValueError("give at_tick or at_block, not both")
        if at_block is not None:
            if not isinstance(at_block, int) or at_block < 0:
                raise ValueError(f"at_block must be an integer >= 0, got {at_block!r}")
            return at_block * self.engine.lag
        if at_tick is not None and (not isinstance(at_tick, int) or at_tick < 0):
            raise ValueError(f"at_tick must be an integer >= 0, got {at_tick!r}")
        return at_tick

    def _put(self, kind: str, tick: int | None, **kw) -> None:
        with self._cond:
            if self._state == "stopped":
                return
            if tick is not None and tick < self.plan.next_index:
                raise ValueError(f"tick {tick} has passed: the next tick boundary is {self.plan.next_index}")
            self._seq += 1
            self._queue.append(_Control(kind, tick, self._seq, **kw))
            if kind == "stop":
                self._state = "stopping"
            self._cond.notify_all()

    # -- the stream (one thread) -----------------------------------------------------------------

    def __iter__(self) -> Iterator[BlockOutput]:
        if self._started:
            raise RuntimeError("a session can be iterated once")
        other = self.engine._active_session
        if other is not None and other is not self and other.state != "stopped":
            raise RuntimeError("this engine already runs a session (they share its K/V pool); stop it first")
        self._started = True
        self.engine._active_session = self
        return self._run()

    def _boundary(self, tau: int) -> list[_Control]:
        """Controls due before tick ``tau``, in order; waits while paused. Sets the stop state."""
        if self.on_boundary is not None:
            self.on_boundary(self, tau)
        with self._cond:
            while True:
                due = sorted((c for c in self._queue if c.tick is None or c.tick <= tau), key=lambda c: c.seq)
                self._queue = [c for c in self._queue if not (c.tick is None or c.tick <= tau)]
                for c in due:
                    if c.kind == "pause":
                        self._paused = True
                    elif c.kind == "resume":
                        self._paused = False
                    elif c.kind == "stop":
                        self._apply_stop(c)
                if self._state == "stopped" or self._drain_end is not None or not self._paused:
                    break
                self._state = "paused"
                self._cond.wait()
            if self._state == "paused":
                self._state = "running"
            if self._state != "stopped":
                # The blocks the next tick starts are in flight from this boundary on, so that a
                # stop(drain=True) made while that tick runs yields them, as in_flight says.
                nxt = self.plan.peek()
                if nxt is not None:
                    self._in_flight.extend(e.block for e in nxt.entries if e.stage == 0)
            return [c for c in due if c.kind == "prompt"]

    def _apply_stop(self, c: _Control) -> None:
        if not c.drain:
            self._state = "stopped"
            self._dropped = True
            return
        self._state = "stopping"
        end = self.plan.started_blocks()
        self._drain_end = end
        if not self._in_flight:
            self._state = "stopped"
        else:
            self.plan.end(end)

    def _dropping(self) -> bool:
        """A stop(drain=False) is applied or due at the next boundary: yield nothing more."""
        with self._cond:
            return self._dropped or any(
                c.kind == "stop" and not c.drain and (c.tick is None or c.tick <= self.plan.next_index)
                for c in self._queue
            )

    def _pause_due(self) -> bool:
        with self._cond:
            return self._paused or any(
                c.kind == "pause" and (c.tick is None or c.tick <= self.plan.next_index) for c in self._queue
            )

    def _output(self, d: Decoded, t0: float, stats) -> BlockOutput:
        """The BlockOutput of a decoded block, counted in ``stats``; it leaves the in-flight list."""
        from .engine import BlockOutput

        started, label, prompts, weights, secs = d.meta
        with self._cond:
            if d.block in self._decoding:
                self._decoding.remove(d.block)
        out = BlockOutput(
            d.block,
            d.latents,
            d.frames,
            d.done_s - t0,
            d.done_s - started,
            label,
            prompts=prompts,
            prompt_weights=weights,
            tick_seconds=secs,
        )
        if d.block == 0:
            stats.ttff_s = out.ready_s
        stats.blocks += 1
        stats.frames += d.frames.shape[1] if d.frames.ndim == 5 else d.latents.shape[2]
        stats.block_latency_s.append(out.latency_s)
        stats.decode_s.append(d.decode_s)
        stats.seconds = time.perf_counter() - t0
        return out

    def _run(self) -> Iterator[BlockOutput]:
        from .engine import RunStats, TickRecord, _sync

        eng, ex = self.engine, self.engine.executor
        ex.reset(self.seed)
        positions = RopePositions(
            ex,
            mode=eng.bundle.cache.positions,
            max_len=eng.bundle.dit.rope.max_len,
            refresh_gap=eng.bundle.cache.refresh_gap,
            inflight_blocks=steady_in_flight(eng.schedule.num_steps, eng.lag),
        )
        self.positions = positions
        decoder = eng.bundle.make_decoder() if self.decode else None
        if decoder is not None:
            decoder.reset()
        mode = self.decode_mode or "inline"
        worker = DecodeWorker(decoder, eng.bundle.device) if mode == "thread" else None
        stats = eng.stats = RunStats()
        if self.max_blocks is None:  # open-ended: bounded history
            stats.ticks, stats.block_latency_s, stats.recache_s, stats.decode_s = (
                deque(maxlen=HISTORY) for _ in range(4)
            )
        device = eng.bundle.device
        num_steps = eng.schedule.num_steps
        label, weight = self.prompt, 1.0
        text_kv = eng.text_kv(label)
        context = eng.text_context(label)
        blend: _Blend | None = None
        per_block: dict[int, tuple[float, list[str], list[float], list[float]]] = {}
        t0 = time.perf_counter()
        completed = False
        try:
            while True:
                tau = self.plan.next_index
                while worker is not None and worker.pending and self._pause_due() and not self._dropping():
                    yield self._output(worker.get(), t0, stats)  # a paused session shows what it made
                changes = self._boundary(tau)
                if self._state == "stopped" or self.plan.done():
                    break
                for c in changes:
                    if c.mode == "blend":
                        new = eng.text_context(c.prompt)
                        n = self.blend_blocks * eng.lag
                        blend = _Blend(context, new, c.prompt, n)
                    else:
                        blend = None
                        text_kv = eng.text_kv(c.prompt)
                        context = eng.text_context(c.prompt)
                        weight = 1.0
                    label = c.prompt
                    with self._cond:
                        self.prompt = c.prompt
                    if tau > 0:  # the sink shows the old prompt: stop raising it
                        eng.pool.sink_on_prompt = False
                    if c.mode == "recache":
                        r0 = time.perf_counter()
                        ex.recache(text_kv)
                        _sync(device)
                        stats.recache_s.append(time.perf_counter() - r0)
                    log.info("prompt change before tick %d (%s): %r", tau, c.mode, c.prompt)
                if blend is not None:
                    blend.done += 1
                    weight = blend.done / blend.ticks
                    if blend.done >= blend.ticks:
                        text_kv, context, weight, blend = eng.text_kv(blend.prompt), blend.new, 1.0, None
                    else:
                        context = torch.lerp(blend.old, blend.new, weight)
                        text_kv = eng.kv_of_context(context)
                tick: Tick = next(self.plan)
                positions.before_tick(tick)
                ts = time.perf_counter()
                for e in tick.entries:
                    if e.stage < num_steps:
                        rec = per_block.setdefault(e.block, (ts, [], [], []))
                        rec[1].append(label)
                        rec[2].append(weight)
                committed = eng.pool.valid_committed_tokens()
                ready = ex.run_tick(tick, text_kv)
                if eng.sync_timing:
                    _sync(device)
                dt = time.perf_counter() - ts
                stats.ticks.append(TickRecord(len(tick.entries), committed, dt))
                for e in tick.entries:
                    if e.stage < num_steps:
                        per_block[e.block][3].append(dt)
                for block in tick.ready:
                    started, prompts, weights, secs = per_block.pop(block)
                    with self._cond:
                        self._in_flight.remove(block)
                    if block not in ready:  # another rank's output
                        continue
                    meta = (started, label, tuple(prompts), tuple(weights), tuple(secs))
                    if worker is not None:
                        with self._cond:
                            self._decoding.append(block)
                        worker.submit(block, ready[block], meta)
                        continue
                    x0 = ready[block]
                    d0 = time.perf_counter()
                    frames = decoder.decode(x0) if decoder is not None else np.zeros((0,), np.uint8)
                    now = time.perf_counter()
                    yield self._output(Decoded(block, x0.cpu(), frames, now, now - d0, meta), t0, stats)
                # Hand back what the worker finished; wait only when it is DECODE_DEPTH behind.
                while worker is not None and (worker.poll() or worker.pending > DECODE_DEPTH):
                    if self._dropping():
                        break
                    yield self._output(worker.get(), t0, stats)
                with self._cond:
                    if self._drain_end is not None and not self._in_flight:
                        self._state = "stopped"  # drained: the cache steps left would be wasted
                        break
            while worker is not None and worker.pending and not self._dropped:
                yield self._output(worker.get(), t0, stats)
            completed = True
        finally:
            if worker is not None:
                worker.close()
            with self._cond:
                self._state = "stopped"
                self._in_flight.clear()
                self._decoding.clear()
                self._cond.notify_all()
            stats.seconds = time.perf_counter() - t0
            stats.counters = ex.counters
        if completed:
            eng._session_finished()


def _check_prompt(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt must be a non-empty string, got {text!r}")


def _check_mode(mode: str) -> None:
    if mode not in SWITCH_MODES:
        raise ValueError(f"switch mode must be one of {SWITCH_MODES}, got {mode!r}")
