"""Sessions: the lazy plan, scripted vs live control, pause / resume / stop, prompt blending and
RoPE rebasing, against references written here."""

import threading
from dataclasses import replace

import pytest
import torch

from _micro import make_bundle
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.engine.engine import Engine
from vidcascade.models.rope import RopeTables, apply_rope, rotate_time_, time_rotation
from vidcascade.scheduling.plan import LazyPlan, build_plan

SAMPLING = SamplingConfig(shift=5.0, frames_per_block=2, steps=(1000.0, 750.0, 500.0))


def _bundle(**cache):
    return make_bundle(
        sampling=SAMPLING, cache=CacheConfig(**{"sink_frames": 2, "window_frames": 4, **cache})
    )


# -- lazy plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", range(1, 6))
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("freshness", ["joint", "per_tick"])
def test_lazy_plan_equals_build_plan(steps, attention, freshness):
    for lag in range(1, steps + 2):
        nb = 6
        ref = build_plan(nb, steps, lag, attention, freshness).ticks
        # Open-ended: its first ticks are build_plan's until block nb would start.
        lazy = LazyPlan(steps, lag, attention, freshness)
        for tau in range(nb * lag):
            assert next(lazy) == ref[tau]
        # Ended at nb blocks: exactly build_plan's ticks, then nothing.
        assert tuple(LazyPlan(steps, lag, attention, freshness, num_blocks=nb)) == ref
        # Ended while running (as stop(drain=True) does): the rest equals build_plan's.
        lazy = LazyPlan(steps, lag, attention, freshness)
        head = [next(lazy) for _ in range(lag * 2 + 1)]
        lazy.end(lazy.started_blocks())
        n = lazy.num_blocks
        assert tuple(head) + tuple(lazy) == build_plan(n, steps, lag, attention, freshness).ticks


def test_lazy_plan_end_rejects_started_blocks():
    lazy = LazyPlan(3, 1)
    for _ in range(5):
        next(lazy)
    assert lazy.started_blocks() == 5
    with pytest.raises(ValueError, match="cannot end at 3 blocks: 5 already started"):
        lazy.end(3)


# -- scripted and live control -----------------------------------------------------------------


def _latents(outs):
    return torch.cat([o.latents for o in outs], 2)


@pytest.mark.parametrize("mode", ["no-recache", "recache", "blend"])
@pytest.mark.parametrize("level", [0, 3])
def test_live_session_equals_scripted(mode, level):
    """Another thread changes the prompt while the session runs; the change is made to land at
    tick k (a hook holds the boundary until the control call was made): the tensors equal the
    scripted run's with the same change at the same tick."""
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=level, switch_mode=mode))
    at = 3 * eng.lag + 1  # not a block start under lag > 1
    scripted = eng.session("a red ball", seed=3, max_blocks=7, blend_blocks=2)
    scripted.set_prompt("a blue square", at_tick=at)
    ref = list(scripted)

    reached, sent = threading.Event(), threading.Event()

    def hook(session, tau):
        if tau == at:
            reached.set()
            assert sent.wait(10)

    def driver(session):
        assert reached.wait(10)
        session.set_prompt("a blue square")
        sent.set()

    live = eng.session("a red ball", seed=3, max_blocks=7, blend_blocks=2, on_boundary=hook)
    th = threading.Thread(target=driver, args=(live,))
    th.start()
    got = list(live)
    th.join()
    assert [o.block for o in got] == list(range(7))
    assert torch.equal(_latents(got), _latents(ref))
    assert [o.prompts for o in got] == [o.prompts for o in ref]
    assert [o.prompt_weights for o in got] == [o.prompt_weights for o in ref]


def test_stream_is_a_session_with_scheduled_switches():
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=2))
    video = eng.generate("a red ball", 6, seed=1, switches=[(2, "a blue square")])
    s = eng.session("a red ball", seed=1, max_blocks=6)
    s.set_prompt("a blue square", at_block=2)
    outs = list(s)
    assert torch.equal(video.latents, _latents(outs))
    # Block 1's ticks straddle the switch (tick 2 = block 2's start at lag 2).
    s_ = eng.schedule.num_steps
    assert outs[0].prompts == ("a red ball",) * s_
    assert outs[1].prompts == ("a red ball", "a red ball", "a blue square")
    assert outs[2].prompts == ("a blue square",) * s_ and outs[2].prompt == "a blue square"
    assert all(len(o.tick_seconds) == s_ for o in outs)


@pytest.mark.parametrize("drain", [True, False])
def test_stop_yields_exactly_the_blocks_in_flight(drain):
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=3))  # lag 1: 4 blocks in flight
    s = eng.session("a red ball", seed=0)
    outs, in_flight = [], None
    for out in s:
        outs.append(out)
        if out.block == 3:
            in_flight = s.in_flight
            s.stop(drain=drain)
            assert s.state == "stopping"
    assert s.state == "stopped"
    assert in_flight == [4, 5]  # tick 5 finished block 3; blocks 4 and 5 had started
    assert [o.block for o in outs] == [0, 1, 2, 3, *(in_flight if drain else [])]
    # The blocks equal those of a run of the blocks that started (same ticks until the stop).
    ref = eng.generate("a red ball", 6, seed=0)
    assert torch.equal(_latents(outs), ref.latents[:, :, : 2 * len(outs)])


def test_stopped_drain_equals_fixed_length_run():
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=3))
    s = eng.session("a red ball", seed=5)
    outs = []
    for out in s:
        outs.append(out)
        if out.block == 2:
            s.stop()
    n = len(outs)
    ref = eng.generate("a red ball", n, seed=5)
    assert torch.equal(_latents(outs), ref.latents)


def test_pause_blocks_between_ticks_and_resume_continues():
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=1))
    s = eng.session("a red ball", seed=2, max_blocks=5)
    outs, paused_seen = [], threading.Event()

    def consume():
        for out in s:
            outs.append(out)
            if out.block == 1:
                s.pause()

    th = threading.Thread(target=consume)
    th.start()
    for _ in range(1000):
        if s.state == "paused":
            paused_seen.set()
            break
        th.join(0.01)
    assert paused_seen.is_set()
    n = len(outs)
    th.join(0.2)
    assert len(outs) == n == 2 and s.state == "paused"  # held at the boundary
    s.resume()
    th.join(30)
    assert not th.is_alive() and s.state == "stopped"
    ref = eng.generate("a red ball", 5, seed=2)
    assert torch.equal(_latents(outs), ref.latents)


def test_stop_while_paused_and_control_from_another_thread():
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=3))
    s = eng.session("a red ball", seed=0)
    s.pause()
    stopper = threading.Timer(0.2, lambda: s.stop(drain=False))
    stopper.start()
    assert list(s) == []  # paused before the first tick, then stopped
    stopper.join()
    assert s.state == "stopped"
    with pytest.raises(ValueError, match="switch mode must be one of"):
        s.set_prompt("x", mode="fade")
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        eng.session(" ")


# -- blend ---------------------------------------------------------------------------------------


def test_blend_over_one_tick_equals_no_recache():
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=3))  # lag 1: blend_blocks=1 is one tick
    a = eng.session("a red ball", seed=4, max_blocks=6, switch_mode="blend", blend_blocks=1)
    a.set_prompt("a blue square", at_block=2)
    b = eng.session("a red ball", seed=4, max_blocks=6, switch_mode="no-recache")
    b.set_prompt("a blue square", at_block=2)
    assert torch.equal(_latents(list(a)), _latents(list(b)))


def test_blend_text_kv_is_kv_of_interpolated_context():
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=0))
    seen = []
    real = eng.executor.run_tick

    def spy(tick, text_kv):
        seen.append([tuple(t.clone() for t in layer) for layer in text_kv])
        return real(tick, text_kv)

    eng.executor.run_tick = spy
    lag = eng.lag  # 4 at level 0 with 3 steps
    s = eng.session("a red ball", seed=0, max_blocks=4, switch_mode="blend", blend_blocks=2)
    s.set_prompt("a blue square", at_block=1)
    outs = list(s)
    old, new = eng.text_context("a red ball"), eng.text_context("a blue square")
    n = 2 * lag
    for j in range(1, n + 1):
        tau = lag + j - 1
        ref = bundle.dit.text_kv(old + (new - old) * (j / n)) if j < n else eng.text_kv("a blue square")
        for (k, v), (rk, rv) in zip(seen[tau], ref):
            torch.testing.assert_close(k, rk, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(v, rv, rtol=1e-5, atol=1e-6)
    for (k, _), (rk, _) in zip(seen[0], eng.text_kv("a red ball")):
        assert torch.equal(k, rk)
    # Block 1 starts at the switch: weights 1/n, 2/n, 3/n of the new prompt over its 3 steps.
    assert outs[1].prompt_weights == pytest.approx([1 / n, 2 / n, 3 / n])
    assert outs[3].prompt_weights == (1.0, 1.0, 1.0)


# -- RoPE rebase ---------------------------------------------------------------------------------


def _with_table(bundle, max_len, **cache):
    b = replace(bundle, cache=replace(bundle.cache, **cache)) if cache else bundle
    b.dit.rope = RopeTables(b.dit.cfg.head_dim, max_len)
    return b


@pytest.mark.parametrize(("level", "attention"), [(0, "causal"), (3, "causal"), (2, "bidirectional")])
def test_exact_rebase_equals_a_large_table(level, attention):
    """A tiny RoPE table, rebased several times, with sink and window eviction: the latents of a
    table that never needed a rebase (fp32 tolerance)."""
    nb = 24  # 48 frames: over twice the small table
    big = _with_table(_bundle(), 1024)
    ref = Engine(big, CascadeConfig(level=level, attention=attention)).generate("a red ball", nb, seed=7)
    small = _with_table(_bundle(), 20)
    eng = Engine(small, CascadeConfig(level=level, attention=attention))
    s = eng.session("a red ball", seed=7, max_blocks=nb)
    got = _latents(list(s))
    assert s.positions.rebases >= 2
    torch.testing.assert_close(got, ref.latents, rtol=1e-4, atol=1e-4)


def test_rebase_keeps_attention_scores_of_stored_keys():
    """Keys rotated by -D and queries at p - D: the scores of keys and queries at p (the rebase's
    premise), for the 3-D rotation whose height and width parts do not move."""
    torch.manual_seed(0)
    tables = RopeTables(16, 64)
    x = torch.randn(1, 5 * 4, 2, 16)  # [B, N, H, Dh]: 5 frames of 2x2 tokens
    pos = torch.tensor([30, 31, 32, 40, 50])

    def rotated(p):
        return apply_rope(x, *tables.cos_sin(p, 2, 2)).transpose(1, 2).contiguous()  # [B, H, N, Dh]

    q, k = rotated(pos), rotated(pos)
    k_moved = k.clone()
    rotate_time_(k_moved, *time_rotation(16, -25))
    torch.testing.assert_close(k_moved, rotated(pos - 25), rtol=1e-5, atol=1e-5)
    scores = q @ k.transpose(-1, -2)
    torch.testing.assert_close(rotated(pos - 25) @ k_moved.transpose(-1, -2), scores, rtol=1e-5, atol=1e-4)


def test_refresh_moves_only_the_sink_and_keeps_its_gap():
    """RoPE refresh (gap 4 frames): blocks that ran before the sink first had to move equal the
    exact run's bit for bit, later ones differ; the sink's stored keys are the exact run's rotated
    forward by the shift, its values untouched; the gap ends at 4 frames."""
    nb = 10
    exact = Engine(_bundle(), CascadeConfig(level=0))
    ref = _latents(list(exact.session("a red ball", seed=1, max_blocks=nb)))
    eng = Engine(_bundle(positions="refresh", refresh_gap=4), CascadeConfig(level=0))
    got = _latents(list(eng.session("a red ball", seed=1, max_blocks=nb)))
    # Sink 2 + window 4 frames, 2 frames per block: after 6 commits (12 frames) the window's
    # oldest frame is 8, 6 frames past the sink's end: block 6 is the first to see it moved.
    assert torch.equal(got[:, :, : 6 * 2], ref[:, :, : 6 * 2])
    assert not torch.allclose(got[:, :, 7 * 2 :], ref[:, :, 7 * 2 :])
    ex = eng.executor
    # The last tick started with 9 blocks committed: oldest window frame 14, sink gap 4.
    assert 14 - (2 + ex.sink_shift) == 4
    m, tpf = eng.pool.inflight_tokens, eng.pool.tokens_per_frame
    sink = slice(m, m + 2 * tpf)
    for layer in range(len(eng.pool.k)):
        k_ref = exact.pool.k[layer][:, :, sink].clone()
        rotate_time_(k_ref, *time_rotation(k_ref.shape[-1], ex.sink_shift))
        torch.testing.assert_close(eng.pool.k[layer][:, :, sink], k_ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(eng.pool.v[layer][:, :, sink], exact.pool.v[layer][:, :, sink])


@pytest.mark.parametrize("level", [0, 3])
def test_refresh_with_rebases_equals_refresh_on_a_large_table(level):
    nb = 20
    big = _with_table(_bundle(positions="refresh", refresh_gap=4), 1024)
    ref = _latents(list(Engine(big, CascadeConfig(level=level)).session("a red ball", seed=2, max_blocks=nb)))
    small = _with_table(_bundle(positions="refresh", refresh_gap=4), 24)
    s = Engine(small, CascadeConfig(level=level)).session("a red ball", seed=2, max_blocks=nb)
    got = _latents(list(s))
    assert s.positions.rebases >= 2
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_recache_after_rebases_keeps_running():
    """A re-cache after exact rebases moved the sink below position 0 re-encodes it in the table
    and stays close to the large table's run (not exact: the re-cache forward sees the sink
    nearer); the first blocks are unaffected."""
    nb = 20
    kw = dict(level=3, switch_mode="recache")
    big = _with_table(_bundle(), 1024)
    ref = Engine(big, CascadeConfig(**kw)).generate("a red ball", nb, seed=2, switches=[(15, "a blue box")])
    small = _with_table(_bundle(), 20)
    got = Engine(small, CascadeConfig(**kw)).generate("a red ball", nb, seed=2, switches=[(15, "a blue box")])
    torch.testing.assert_close(got.latents[:, :, :20], ref.latents[:, :, :20], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got.latents).all()


def test_control_from_another_thread_while_iterating():
    """A thread hammers the controls while the session runs: blocks still come in order, every
    block's prompts are prompts that were sent, and the session ends cleanly on stop."""
    bundle = _bundle()
    eng = Engine(bundle, CascadeConfig(level=3))
    s = eng.session("p0", seed=0)
    sent = {"p0"}
    done = threading.Event()

    def hammer():
        i = 0
        while not done.is_set() and i < 200:
            i += 1
            text = f"p{i % 5}"
            sent.add(text)
            s.set_prompt(text, mode=("no-recache", "recache", "blend")[i % 3])
            if i % 7 == 0:
                s.pause()
                s.resume()
            assert s.state in ("running", "paused", "stopping", "stopped")
            _ = s.in_flight
        s.stop(drain=True)

    th = threading.Thread(target=hammer)
    th.start()
    blocks = []
    for out in s:
        blocks.append(out.block)
        assert set(out.prompts) <= sent
        assert len(blocks) < 400
    done.set()
    th.join(30)
    assert blocks == list(range(len(blocks))) and s.state == "stopped"
    # A second session on the same engine is refused while one runs.
    a = eng.session("x", seed=0)
    it = iter(a)
    next(it)
    with pytest.raises(RuntimeError, match="already runs a session"):
        iter(eng.session("y"))
    a.stop(drain=False)
    list(it)
    assert a.state == "stopped"
    assert len(list(eng.session("y", max_blocks=2))) == 2


def test_session_runs_no_tick_ahead_of_its_consumer():
    """Nothing piles up: a tick runs only when the consumer asks for the next block, and an
    open-ended session keeps a bounded history."""
    eng = Engine(_bundle(), CascadeConfig(level=3))  # lag 1, 3 steps: block 0 ready after tick 2
    s = eng.session("a red ball")
    it = iter(s)
    assert next(it).block == 0
    threading.Event().wait(0.05)
    assert len(eng.stats.ticks) == 3 and s.next_tick == 3 and s.in_flight == [1, 2]
    assert next(it).block == 1 and len(eng.stats.ticks) == 4
    assert eng.stats.ticks.maxlen is not None
    s.stop(drain=False)
    assert list(it) == []


def test_sink_moved_every_block_gathers_no_rounding_in_bf16():
    """Refresh moves the sink every block: each placement rotates the captured keys once, so
    after 300 moves the bf16 sink equals the fp32 keys rotated once (to bf16 rounding)."""
    from vidcascade.cache.pool import KVPool

    pool = KVPool(
        num_layers=1, batch=1, num_heads=2, head_dim=16, tokens_per_frame=4, frames_per_block=2,
        max_inflight_blocks=1, sink_frames=2, window_frames=4, dtype=torch.bfloat16,
    )  # fmt: skip
    k = torch.randn(1, 2, 8, 16)
    pool.commit_block(0, lambda layer: (k.bfloat16(), k.bfloat16()))
    for shift in range(1, 301):
        pool.place_sink(shift)
    ref = k.bfloat16().float()
    rotate_time_(ref, *time_rotation(16, 300))
    m = pool.inflight_tokens
    torch.testing.assert_close(pool.k[0][:, :, m : m + 8].float(), ref, rtol=0, atol=2e-2)
