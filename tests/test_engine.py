"""The executor and engine against plain reference loops written here."""

from dataclasses import replace

import pytest
import torch

from _micro import make_bundle
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.engine.engine import Engine
from vidcascade.engine.executor import block_seed
from vidcascade.models.rope import RopeTables
from vidcascade.scheduling.timesteps import make_schedule


class PlainKV:
    """Reference store: keys = cat(current, committed frames in order), no preallocation."""

    def __init__(self, committed, mask=None, capture=None):
        self.committed, self.mask, self.capture = committed, mask, capture

    def update(self, layer, k, v):
        if self.capture is not None:
            self.capture.append((k.clone(), v.clone()))
        ks = [k] + [kv[layer][0] for kv in self.committed]
        vs = [v] + [kv[layer][1] for kv in self.committed]
        return torch.cat(ks, 2), torch.cat(vs, 2), self.mask


def _noise(gen, bundle, batch=1):
    h, w = bundle.latent_hw
    return torch.randn(batch, bundle.dit.cfg.in_dim, bundle.sampling.frames_per_block, h, w, generator=gen)


@torch.no_grad()
def sequential_reference(bundle, prompt, num_blocks, seed):
    """The Self-Forcing loop (reference §2.3) with a full, never-evicted cache."""
    model, fpb = bundle.dit, bundle.sampling.frames_per_block
    sched = make_schedule(bundle.sampling)
    text_kv = model.text_kv(bundle.text_encoder.encode([prompt]))
    committed, out = [], []
    for b in range(num_blocks):
        gen = torch.Generator().manual_seed(block_seed(seed, b))
        x = _noise(gen, bundle)
        pos = torch.arange(b * fpb, (b + 1) * fpb)
        for k, t in enumerate(sched.timesteps):
            v = model(x, torch.full((1, fpb), t), text_kv=text_kv, frame_pos=pos, kv=PlainKV(committed))
            x0 = x - sched.sigmas[k] * v
            if k < sched.num_steps - 1:
                x = (1 - sched.sigmas[k + 1]) * x0 + sched.sigmas[k + 1] * _noise(gen, bundle)
        cap = []
        model(
            x0,
            torch.full((1, fpb), sched.cache_timestep),
            text_kv=text_kv,
            frame_pos=pos,
            kv=PlainKV(committed, capture=cap),
        )
        committed.append(cap)  # per layer (k, v) of this block's clean re-run
        out.append(x0)
    return torch.cat(out, 2)


def test_level0_equals_plain_sequential_loop_bit_exact(micro_bundle):
    eng = Engine(micro_bundle, CascadeConfig(level=0))
    got = eng.generate("a red ball", 5, seed=11).latents
    ref = sequential_reference(micro_bundle, "a red ball", 5, seed=11)
    assert torch.equal(got, ref)
    assert eng.stats.counters.forwards == 5 * 5 and eng.stats.counters.block_forwards == 25


class _ListKV:
    """Keys = cat(this tick's K, the visible committed frames' K); records every layer's K/V."""

    def __init__(self, frames, mask):
        self.frames, self.mask, self.captured = frames, mask, []

    def update(self, layer, k, v):
        self.captured += [k.clone(), v.clone()]
        ks = torch.cat([k] + [f[layer][0] for f in self.frames], 2)
        vs = torch.cat([v] + [f[layer][1] for f in self.frames], 2)
        return ks, vs, self.mask


@torch.no_grad()
def cascade_reference(bundle, prompt, num_blocks, seed, lag, attention, switch=None):
    """Tick by tick with explicit token masks and lists; sink + window kept by frame lists.
    ``switch`` = (block, prompt): no-recache prompt switch, after which the sink is not raised."""
    model, fpb = bundle.dit, bundle.sampling.frames_per_block
    sched = make_schedule(bundle.sampling)
    S = sched.num_steps
    h, w = bundle.latent_hw
    tpf = model.tokens_per_frame(h, w)
    sink, window = bundle.cache.sink_frames, bundle.cache.window_frames
    text_kv = model.text_kv(bundle.text_encoder.encode([prompt]))
    frames_kv = {}  # committed frame -> per layer (k, v)
    gens, xs, result = {}, {}, {}
    sink_bias = bundle.cache.sink_bias
    for tau in range((num_blocks - 1) * lag + S + 1):
        live = [b for b in range(num_blocks) if 0 <= tau - b * lag <= S]
        if switch is not None and switch[0] in live and tau - switch[0] * lag == 0:
            text_kv, sink_bias = model.text_kv(bundle.text_encoder.encode([switch[1]])), 0.0
        for b in live:
            if b not in gens:
                gens[b] = torch.Generator().manual_seed(block_seed(seed, b))
                xs[b] = _noise(gens[b], bundle)
        stages = [tau - b * lag for b in live]
        done = sorted(frames_kv)
        visible = [f for f in done if f < sink] + [f for f in done if f >= sink][-window:]
        n = len(live)
        qb = torch.arange(n).repeat_interleave(fpb * tpf)
        m_in = (
            (qb[None, :] <= qb[:, None])
            if attention == "causal"
            else torch.ones(len(qb), len(qb), dtype=bool)
        )
        mask = torch.cat([m_in, torch.ones(len(qb), len(visible) * tpf, dtype=bool)], 1)
        n_sink = sum(f < sink for f in visible)
        if sink_bias and len(visible) > n_sink:  # the sink's logits raised once the window holds frames
            bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
            bias[:, len(qb) : len(qb) + n_sink * tpf] += sink_bias
            mask = bias

        kv = _ListKV([frames_kv[f] for f in visible], mask)
        x = torch.cat([xs[b] for b in live], 2)
        t = torch.tensor(
            [[sched.timesteps[s] if s < S else sched.cache_timestep for s in stages for _ in range(fpb)]]
        )
        pos = torch.arange(live[0] * fpb, (live[-1] + 1) * fpb)
        v = model(x, t, text_kv=text_kv, frame_pos=pos, kv=kv)
        for i, (b, s) in enumerate(zip(live, stages)):
            vi = v[:, :, i * fpb : (i + 1) * fpb]
            if s == S:
                for j in range(fpb):
                    tok = slice((i * fpb + j) * tpf, (i * fpb + j + 1) * tpf)
                    frames_kv[b * fpb + j] = [
                        (kv.captured[2 * l][:, :, tok], kv.captured[2 * l + 1][:, :, tok])
                        for l in range(model.cfg.num_layers)
                    ]
                continue
            x0 = xs[b] - sched.sigmas[s] * vi
            if s == S - 1:
                xs[b] = result[b] = x0
            elif sched.sampler == "renoise":
                xs[b] = (1 - sched.sigmas[s + 1]) * x0 + sched.sigmas[s + 1] * _noise(gens[b], bundle)
            else:
                xs[b] = xs[b] + (sched.sigmas[s + 1] - sched.sigmas[s]) * vi
    return torch.cat([result[b] for b in range(num_blocks)], 2)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("lag", [1, 2, 3])
@pytest.mark.parametrize("sampler", ["renoise", "euler"])
def test_cascade_equals_reference_loop_with_rolling_window(attention, lag, sampler):
    bundle = make_bundle(
        sampling=SamplingConfig(shift=3.0, frames_per_block=2, sampler=sampler),
        cache=CacheConfig(sink_frames=2, window_frames=4),
    )
    eng = Engine(bundle, CascadeConfig(lag=lag, attention=attention))
    got = eng.generate("a cyan box", 7, seed=5).latents
    ref = cascade_reference(bundle, "a cyan box", 7, 5, lag, attention)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention,lag", [("causal", 1), ("bidirectional", 1), ("causal", 3)])
def test_sink_bias_cascade_equals_reference_loop(attention, lag):
    cache = CacheConfig(sink_frames=2, window_frames=4, sink_bias=1.5)
    bundle = make_bundle(sampling=SamplingConfig(shift=3.0, frames_per_block=2, sampler="euler"), cache=cache)
    eng = Engine(bundle, CascadeConfig(lag=lag, attention=attention))
    got = eng.generate("a cyan box", 7, seed=5).latents
    ref = cascade_reference(bundle, "a cyan box", 7, 5, lag, attention)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # The bias is real: blocks 0-1 (sink only) are unchanged, later ones are not.
    plain = Engine(
        replace(bundle, cache=replace(cache, sink_bias=0.0)), CascadeConfig(lag=lag, attention=attention)
    )
    base = plain.generate("a cyan box", 7, seed=5).latents
    fpb = bundle.sampling.frames_per_block
    torch.testing.assert_close(got[:, :, : 2 * fpb], base[:, :, : 2 * fpb], rtol=1e-5, atol=1e-5)
    assert (got[:, :, 2 * fpb :] - base[:, :, 2 * fpb :]).abs().max() > 1e-3
    # After a prompt switch the sink shows the old prompt and is not raised any more.
    got = eng.generate("a cyan box", 7, seed=5, switches=[(4, "a red ball")]).latents
    ref = cascade_reference(bundle, "a cyan box", 7, 5, lag, attention, switch=(4, "a red ball"))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_causal_cascade_leaves_block0_as_sequential_bidirectional_does_not(micro_bundle):
    seq = Engine(micro_bundle, CascadeConfig(level=0)).generate("p", 4, seed=2).latents
    cau = Engine(micro_bundle, CascadeConfig(level=4, attention="causal")).generate("p", 4, seed=2).latents
    bid = (
        Engine(micro_bundle, CascadeConfig(level=4, attention="bidirectional"))
        .generate("p", 4, seed=2)
        .latents
    )
    fpb = micro_bundle.sampling.frames_per_block
    # Causal: block 0 never sees in-flight blocks > 0, so its trajectory is the sequential one.
    torch.testing.assert_close(cau[:, :, :fpb], seq[:, :, :fpb], rtol=1e-5, atol=1e-5)
    assert (bid[:, :, :fpb] - seq[:, :, :fpb]).abs().max() > 1e-3
    assert (cau[:, :, fpb:] - seq[:, :, fpb:]).abs().max() > 1e-3  # later blocks see noisy context


def test_same_seed_same_video_and_level_independent_noise(micro_bundle):
    e = Engine(micro_bundle, CascadeConfig(level=2))
    a = e.generate("q", 3, seed=9)
    b = e.generate("q", 3, seed=9)
    assert torch.equal(a.latents, b.latents) and (a.frames == b.frames).all()
    c = e.generate("q", 3, seed=10)
    assert not torch.equal(a.latents, c.latents)


def test_prompt_switch_forward_counts_and_effect(micro_bundle):
    blocks, k = 8, 5  # at level 4 block 0 is committed by tick 5, so a re-cache has work
    counts = {}
    for mode in ("no-recache", "recache"):
        for level in (0, 4):
            eng = Engine(micro_bundle, CascadeConfig(level=level, switch_mode=mode))
            base = eng.generate("red", blocks, seed=1)
            n0 = eng.stats.counters.forwards
            sw = eng.generate("red", blocks, seed=1, switches=[(k, "blue")])
            counts[(mode, level)] = eng.stats.counters.forwards - n0
            plan = eng.plan(blocks)
            switch_tick = k * eng.lag
            # Blocks whose clean x0 was final before the switch tick are untouched...
            fpb = micro_bundle.sampling.frames_per_block
            for b in range(blocks):
                ready_tick = b * eng.lag + plan.num_steps - 1
                same = torch.equal(
                    base.latents[:, :, b * fpb : (b + 1) * fpb], sw.latents[:, :, b * fpb : (b + 1) * fpb]
                )
                assert same == (ready_tick < switch_tick), (mode, level, b)
    assert counts[("no-recache", 0)] == 0 and counts[("no-recache", 4)] == 0
    assert counts[("recache", 0)] == 1 and counts[("recache", 4)] == 1


def test_sink_and_window_hold_right_frames_at_right_slots():
    bundle = make_bundle(cache=CacheConfig(sink_frames=2, window_frames=6))
    eng = Engine(bundle, CascadeConfig(level=4))
    model = bundle.dit
    tpf = model.tokens_per_frame(*bundle.latent_hw)
    fpb = bundle.sampling.frames_per_block
    written = {}  # frame -> layer-0 K written by its block's cache step
    orig = eng.pool.tick_view

    def spy(n, causal):
        view = orig(n, causal)
        up = view.update

        def update(layer, k, v):
            if layer == 0:
                view.k0 = k.clone()
            return up(layer, k, v)

        view.update = update
        spy.last = view
        return view

    eng.pool.tick_view = spy
    eng.executor.reset(0)
    text_kv = eng.text_kv("p")
    for tick in eng.plan(20).ticks:
        eng.executor.run_tick(tick, text_kv)
        for i, e in enumerate(tick.entries):
            if e.stage == eng.schedule.num_steps:
                for j in range(fpb):
                    tok = slice((i * fpb + j) * tpf, (i * fpb + j + 1) * tpf)
                    written[e.block * fpb + j] = spy.last.k0[:, :, tok]
    lay = eng.pool.layout
    nf = 20 * fpb
    assert lay.visible_frames()[:2] == [0, 1]
    assert sorted(lay.visible_frames()[2:]) == list(range(nf - 6, nf))
    m = eng.pool.inflight_tokens
    for slot, f in enumerate(lay.visible_frames()):
        stored = eng.pool.k[0][:, :, m + slot * tpf : m + (slot + 1) * tpf]
        assert torch.equal(stored, written[f]), f


def test_engine_rejects_bad_arguments(micro_bundle):
    eng = Engine(micro_bundle, CascadeConfig(level=1))
    with pytest.raises(ValueError, match="switch at block 9 but the video has blocks 0..3"):
        eng.generate("p", 4, switches=[(9, "x")])
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        eng.generate("  ", 4)
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        eng.generate("p", 0)
    # Past the RoPE table a stream rebases its positions (test_session.py); a table that cannot
    # hold the cache and the blocks in flight is refused.
    micro_bundle.dit.rope = RopeTables(micro_bundle.dit.cfg.head_dim, 64)
    with pytest.raises(ValueError, match="RoPE table of 64 frame positions is too small"):
        eng.generate("p", 4)


@torch.no_grad()
def test_guidance_equals_two_separate_branches():
    """CFG: the doubled batch with one pool equals two separately cached branches combined."""
    g = 2.5
    bundle = make_bundle(sampling=SamplingConfig(shift=3.0, frames_per_block=2, sampler="euler", guidance=g))
    model, fpb = bundle.dit, 2
    got = Engine(bundle, CascadeConfig(level=0)).generate("a red ball", 3, seed=4).latents
    sched = make_schedule(bundle.sampling)
    ctx = bundle.text_encoder.encode(["a red ball"])
    branches = {"text": model.text_kv(ctx), "empty": model.text_kv(torch.zeros_like(ctx))}
    committed = {k: [] for k in branches}
    out = []
    for b in range(3):
        gen = torch.Generator().manual_seed(block_seed(4, b))
        x = _noise(gen, bundle)
        pos = torch.arange(b * fpb, (b + 1) * fpb)
        for k, t in enumerate(sched.timesteps):
            tt = torch.full((1, fpb), t)
            v = {
                n: model(x, tt, text_kv=kv, frame_pos=pos, kv=PlainKV(committed[n]))
                for n, kv in branches.items()
            }
            v = v["empty"] + g * (v["text"] - v["empty"])
            x = x + (sched.sigmas[k + 1] - sched.sigmas[k]) * v
        for n, kv in branches.items():
            cap = []
            model(x, torch.zeros(1, fpb), text_kv=kv, frame_pos=pos, kv=PlainKV(committed[n], capture=cap))
            committed[n].append(cap)
        out.append(x)
    torch.testing.assert_close(got, torch.cat(out, 2), rtol=1e-5, atol=1e-5)
    unguided = make_bundle(sampling=SamplingConfig(shift=3.0, frames_per_block=2, sampler="euler"))
    assert (
        Engine(unguided, CascadeConfig(level=0)).generate("a red ball", 3, seed=4).latents - got
    ).abs().max() > 1e-3
