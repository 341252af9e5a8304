import math

import pytest

from vidcascade.scheduling.plan import build_plan, format_plan, steady_in_flight


@pytest.mark.parametrize("steps", range(1, 7))
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("freshness", ["joint", "per_tick"])
def test_plan_invariants(steps, attention, freshness):
    nb = 7
    for lag in range(1, steps + 2):
        plan = build_plan(nb, steps, lag, attention, freshness)
        seen = {}
        written = set()  # (block, tick) whose in-flight K/V exists
        commit_tick = {}
        for tick in plan.ticks:
            for e in tick.entries:
                written.add((e.block, tick.index))
        for tick in plan.ticks:
            blocks = [e.block for e in tick.entries]
            assert blocks == sorted(blocks) and blocks == list(range(blocks[0], blocks[0] + len(blocks)))
            assert len(blocks) <= math.ceil((steps + 1) / lag)
            for e in tick.entries:
                assert (e.block, e.stage) not in seen
                seen[(e.block, e.stage)] = tick.index
                assert tick.index == e.block * lag + e.stage
                for blk, t in e.reads:
                    assert (blk, t) in written and t <= tick.index, (tick, e)
                    if attention == "causal":
                        assert blk <= e.block
                assert (e.block, tick.index) in e.reads  # a block always sees its own fresh K/V
                if e.stage == steps:
                    commit_tick[e.block] = tick.index
            # Committed K/V read by this tick was written by an earlier cache step.
            for b in range(tick.committed):
                assert commit_tick[b] < tick.index
            assert tick.commits == tuple(e.block for e in tick.entries if e.stage == steps)
        assert len(seen) == nb * (steps + 1)
        assert len(plan.ticks) == (nb - 1) * lag + steps + 1
        assert plan.block_forwards == nb * (steps + 1)


@pytest.mark.parametrize("steps", range(1, 7))
def test_lag_s_plus_1_is_sequential(steps):
    plan = build_plan(5, steps, steps + 1)
    order = [(e.block, e.stage) for t in plan.ticks for e in t.entries]
    assert all(len(t.entries) == 1 for t in plan.ticks)
    assert order == [(b, s) for b in range(5) for s in range(steps + 1)]
    assert plan.level == 0


def test_bidirectional_reads_all_in_flight():
    plan = build_plan(6, 4, 1, "bidirectional")
    t = plan.ticks[5]
    assert t.blocks == (1, 2, 3, 4, 5)
    assert all({b for b, _ in e.reads} == set(t.blocks) for e in t.entries)
    causal = build_plan(6, 4, 1, "causal").ticks[5]
    assert [sorted(b for b, _ in e.reads) for e in causal.entries] == [
        [1],
        [1, 2],
        [1, 2, 3],
        [1, 2, 3, 4],
        [1, 2, 3, 4, 5],
    ]


def test_acceptance_tick_counts_and_table():
    assert len(build_plan(6, 4, 1).ticks) == 10
    assert len(build_plan(6, 4, 5).ticks) == 30
    assert steady_in_flight(4, 1) == 5 and steady_in_flight(4, 2) == 3 and steady_in_flight(4, 5) == 1
    text = format_plan(build_plan(3, 2, 1))
    assert "tick |" in text and " c" in text


def test_bad_plan_arguments():
    with pytest.raises(ValueError, match="lag must be in 1..5 for 4 steps, got 6"):
        build_plan(3, 4, 6)
    with pytest.raises(ValueError, match="num_blocks"):
        build_plan(0, 4, 1)
