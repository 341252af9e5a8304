"""Which rank runs which block: pure functions of the plan, no torch.

A block stays on one rank through all its stages: block b runs on rank b % R. The in-flight blocks
of a tick are always consecutive block indices, so with n in flight each rank holds at most
ceil(n / R) of them; with fewer ranks than in-flight blocks a rank batches its blocks into one
forward.
"""

from __future__ import annotations

import math

from ..scheduling.plan import Entry, Plan, Tick


def rank_of_block(block: int, world_size: int) -> int:
    """The rank that owns ``block`` for its whole life."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if block < 0:
        raise ValueError(f"block must be >= 0, got {block}")
    return block % world_size


def local_entries(tick: Tick, rank: int, world_size: int) -> tuple[Entry, ...]:
    """The entries of ``tick`` that ``rank`` runs, oldest first."""
    return tuple(e for e in tick.entries if rank_of_block(e.block, world_size) == rank)


def local_index(tick: Tick, block: int, world_size: int) -> int:
    """Position of ``block`` among its owner's entries of ``tick`` (its row in that rank's batch)."""
    r = rank_of_block(block, world_size)
    for j, e in enumerate(local_entries(tick, r, world_size)):
        if e.block == block:
            return j
    raise KeyError(f"block {block} is not in flight at tick {tick.index}")


def max_local_blocks(plan: Plan, world_size: int) -> int:
    """The most entries any rank runs in one tick: the padded per-rank size of every exchange."""
    return max(len(local_entries(t, r, world_size)) for t in plan.ticks for r in range(world_size))


def max_local_bound(max_in_flight: int, world_size: int) -> int:
    """ceil(max_in_flight / R): a bound of ``max_local_blocks`` that needs no plan."""
    return math.ceil(max_in_flight / world_size)
