"""The cascade plan: which block runs which stage at every tick, as pure data.

A block passes through S + 1 stages: stages 0..S-1 are its denoising steps, stage S is the cache
step (a forward of the clean x0 at t = context_noise that writes the block's committed K/V).
With lag L, block b enters stage 0 at tick b * L, so at tick tau it is at stage tau - b * L.
L = S + 1 is the sequential block-causal pipeline; L = 1 keeps S + 1 blocks in flight.

``LazyPlan`` produces the same ticks one by one with no block count (an open-ended session).

Nothing here imports torch or a model: the executor consumes a Plan and decides nothing itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

AttentionMode = Literal["causal", "bidirectional"]
Freshness = Literal["joint", "per_tick"]


@dataclass(frozen=True)
class Entry:
    """One block's forward inside a tick."""

    block: int
    stage: int
    """0..S-1: denoising step; S: cache step."""
    reads: tuple[tuple[int, int], ...]
    """In-flight K/V this entry attends to, as (block, tick at which it was written).
    Committed K/V (blocks < Tick.committed) is visible to every entry and not listed."""
    writes: Literal["in-flight", "committed"]
    """The cache step writes committed K/V; every other stage only the in-flight slot."""


@dataclass(frozen=True)
class Tick:
    index: int
    entries: tuple[Entry, ...]
    """In-flight blocks, oldest first."""
    committed: int
    """Blocks 0..committed-1 have committed (clean) K/V before this tick starts."""
    ready: tuple[int, ...]
    """Blocks whose clean x0 is final after this tick (their last denoising step ran)."""
    commits: tuple[int, ...]
    """Blocks whose cache step ran this tick: done, K/V promoted to the committed tier."""

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(e.block for e in self.entries)


@dataclass(frozen=True)
class Plan:
    num_blocks: int
    num_steps: int
    lag: int
    attention: AttentionMode
    freshness: Freshness
    ticks: tuple[Tick, ...]

    @property
    def level(self) -> int:
        return self.num_steps + 1 - self.lag

    @property
    def max_in_flight(self) -> int:
        return max(len(t.entries) for t in self.ticks)

    @property
    def block_forwards(self) -> int:
        return sum(len(t.entries) for t in self.ticks)

    def to_json(self) -> dict:
        return {
            "num_blocks": self.num_blocks,
            "num_steps": self.num_steps,
            "lag": self.lag,
            "level": self.level,
            "attention": self.attention,
            "ticks": [[[e.block, e.stage] for e in t.entries] for t in self.ticks],
        }


def steady_in_flight(num_steps: int, lag: int) -> int:
    """Blocks in flight at steady state: ceil((S + 1) / L)."""
    return math.ceil((num_steps + 1) / lag)


def _check_args(num_steps: int, lag: int, attention: str, freshness: str) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    stages = num_steps + 1
    if not 1 <= lag <= stages:
        raise ValueError(f"lag must be in 1..{stages} for {num_steps} steps, got {lag}")
    if attention not in ("causal", "bidirectional"):
        raise ValueError(f"attention must be causal or bidirectional, got {attention!r}")
    if freshness not in ("joint", "per_tick"):
        raise ValueError(f"freshness must be joint or per_tick, got {freshness!r}")


def make_tick(
    tau: int,
    num_steps: int,
    lag: int,
    attention: AttentionMode = "causal",
    freshness: Freshness = "joint",
    num_blocks: int | None = None,
) -> Tick:
    """Tick ``tau`` of the plan: blocks b with 0 <= tau - b*lag <= S (and b < ``num_blocks``, when
    given), oldest first. Arguments are not validated here (``build_plan`` / ``LazyPlan`` do)."""
    first = max(0, -(-(tau - num_steps) // lag))
    last = tau // lag if num_blocks is None else min(num_blocks - 1, tau // lag)
    live = list(range(first, last + 1))
    entries = []
    for b in live:
        stage = tau - b * lag
        visible = [j for j in live if attention == "bidirectional" or j <= b]
        reads = []
        for j in visible:
            if freshness == "joint" or j == b:
                reads.append((j, tau))
            elif tau - 1 - j * lag >= 0:
                # per_tick: another block's K/V from the previous tick, if it existed then.
                reads.append((j, tau - 1))
        entries.append(Entry(b, stage, tuple(reads), "committed" if stage == num_steps else "in-flight"))
    return Tick(
        index=tau,
        entries=tuple(entries),
        committed=first,
        ready=tuple(e.block for e in entries if e.stage == num_steps - 1),
        commits=tuple(e.block for e in entries if e.stage == num_steps),
    )


def build_plan(
    num_blocks: int,
    num_steps: int,
    lag: int,
    attention: AttentionMode = "causal",
    freshness: Freshness = "joint",
) -> Plan:
    """All ticks for ``num_blocks`` blocks of ``num_steps`` denoising steps at lag ``lag``."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    _check_args(num_steps, lag, attention, freshness)
    num_ticks = (num_blocks - 1) * lag + num_steps + 1
    ticks = tuple(
        make_tick(tau, num_steps, lag, attention, freshness, num_blocks) for tau in range(num_ticks)
    )
    return Plan(num_blocks, num_steps, lag, attention, freshness, ticks)


class LazyPlan:
    """The open-ended plan of a session: the same ticks as ``build_plan``, one at a time, with no
    block count until ``end`` gives one.

    With ``end(n)`` the ticks from then on are exactly those of ``build_plan(n, ...)``: blocks >= n
    never start, and the plan ends after block n-1's cache step (tick (n-1)*L + S). ``end`` may
    only be given while no block >= n has started.
    """

    def __init__(
        self,
        num_steps: int,
        lag: int,
        attention: AttentionMode = "causal",
        freshness: Freshness = "joint",
        num_blocks: int | None = None,
    ) -> None:
        _check_args(num_steps, lag, attention, freshness)
        self.num_steps, self.lag, self.attention, self.freshness = num_steps, lag, attention, freshness
        self.next_index = 0
        """Index of the tick ``next()`` returns."""
        self.num_blocks: int | None = None
        if num_blocks is not None:
            self.end(num_blocks)

    def started_blocks(self) -> int:
        """Blocks that entered stage 0 in the ticks returned so far."""
        if self.next_index == 0:
            return 0
        last = (self.next_index - 1) // self.lag + 1
        return last if self.num_blocks is None else min(last, self.num_blocks)

    def end(self, num_blocks: int) -> None:
        """No block >= ``num_blocks`` starts; the plan ends when block num_blocks-1 is done."""
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an integer >= 0, got {num_blocks!r}")
        if num_blocks < self.started_blocks():
            raise ValueError(f"cannot end at {num_blocks} blocks: {self.started_blocks()} already started")
        self.num_blocks = num_blocks

    @property
    def num_ticks(self) -> int | None:
        """Ticks of the whole plan, or None while open-ended."""
        if self.num_blocks is None:
            return None
        return 0 if self.num_blocks == 0 else (self.num_blocks - 1) * self.lag + self.num_steps + 1

    def done(self) -> bool:
        n = self.num_ticks
        return n is not None and self.next_index >= n

    def peek(self) -> Tick | None:
        """The next tick without consuming it (None when the plan has ended)."""
        if self.done():
            return None
        return make_tick(
            self.next_index, self.num_steps, self.lag, self.attention, self.freshness, self.num_blocks
        )

    def __iter__(self) -> LazyPlan:
        return self

    def __next__(self) -> Tick:
        tick = self.peek()
        if tick is None:
            raise StopIteration
        self.next_index += 1
        return tick


def format_plan(plan: Plan) -> str:
    """The tick table: one row per tick, one column per block; 'c' marks the cache step."""
    nb = plan.num_blocks
    width = max(3, len(str(nb - 1)) + 1)
    head = "tick | " + " ".join(f"B{b}".rjust(width) for b in range(nb))
    lines = [
        f"plan: {nb} blocks, S={plan.num_steps} steps, lag L={plan.lag} (level P{plan.level}), "
        f"{plan.attention} attention; {len(plan.ticks)} ticks, {plan.block_forwards} block-forwards, "
        f"up to {plan.max_in_flight} blocks in flight",
        head,
        "-" * len(head),
    ]
    for t in plan.ticks:
        cells = {e.block: ("c" if e.stage == plan.num_steps else str(e.stage)) for e in t.entries}
        row = " ".join(cells.get(b, ".").rjust(width) for b in range(nb))
        lines.append(f"{t.index:4d} | {row}")
    return "\n".join(lines)
