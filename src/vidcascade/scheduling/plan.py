"""The cascade plan: which block runs which stage at every tick, as pure data.

A block passes through S + 1 stages: stages 0..S-1 are its denoising steps, stage S is the cache
step (a forward of the clean x0 at t = context_noise that writes the block's committed K/V).
With lag L, block b enters stage 0 at tick b * L, so at tick tau it is at stage tau - b * L.
L = S + 1 is the sequential block-causal pipeline; L = 1 keeps S + 1 blocks in flight.

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
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    stages = num_steps + 1
    if not 1 <= lag <= stages:
        raise ValueError(f"lag must be in 1..{stages} for {num_steps} steps, got {lag}")
    if attention not in ("causal", "bidirectional"):
        raise ValueError(f"attention must be causal or bidirectional, got {attention!r}")
    if freshness not in ("joint", "per_tick"):
        raise ValueError(f"freshness must be joint or per_tick, got {freshness!r}")

    num_ticks = (num_blocks - 1) * lag + stages
    ticks = []
    for tau in range(num_ticks):
        # Blocks with 0 <= tau - b*lag <= S, oldest first.
        first = max(0, -(-(tau - num_steps) // lag))
        last = min(num_blocks - 1, tau // lag)
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
        ticks.append(
            Tick(
                index=tau,
                entries=tuple(entries),
                committed=first,
                ready=tuple(e.block for e in entries if e.stage == num_steps - 1),
                commits=tuple(e.block for e in entries if e.stage == num_steps),
            )
        )
    return Plan(num_blocks, num_steps, lag, attention, freshness, tuple(ticks))


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
