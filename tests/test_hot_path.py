"""The tick's hot path without per-tick allocations gives the latents of the allocating code, bit for
bit; the cache step's promote (a few large copies) equals a per-layer, per-frame copy loop."""

from __future__ import annotations

import pytest
import torch

from _micro import make_bundle
from vidcascade.cache.pool import KVPool
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.engine.engine import Engine
from vidcascade.engine.executor import Executor, _Block
from vidcascade.scheduling.timesteps import euler_step, renoise, x0_from_velocity

# -- promote ---------------------------------------------------------------------------------------


def _pool(sink: int, window: int) -> KVPool:
    return KVPool(
        num_layers=3,
        batch=2,
        num_heads=2,
        head_dim=4,
        tokens_per_frame=5,
        frames_per_block=3,
        max_inflight_blocks=3,
        sink_frames=sink,
        window_frames=window,
    )


def _reference_promote(k, v, pool: KVPool, index: int, n_inflight: int, first_frame: int, slots) -> None:
    """Per layer, per frame: the block's frame j goes to its committed slot (the layout's)."""
    tpf, tpb, m = pool.tokens_per_frame, pool.tokens_per_block, pool.inflight_tokens
    src0 = m - (n_inflight - index) * tpb
    for layer in range(len(k)):
        for j, slot in enumerate(slots):
            s = slice(src0 + j * tpf, src0 + (j + 1) * tpf)
            d = slice(m + slot * tpf, m + (slot + 1) * tpf)
            k[layer][:, :, d] = k[layer][:, :, s]
            v[layer][:, :, d] = v[layer][:, :, s]


@pytest.mark.parametrize("sink,window", [(3, 12), (2, 4), (0, 5), (1, 7)])
def test_promote_equals_per_frame_copy_loop(sink, window):
    """Blocks of 3 frames through a sink and a window that wraps mid-block (window 4, 5, 7)."""
    pool = _pool(sink, window)
    gen = torch.Generator().manual_seed(0)
    k_ref = [t.clone() for t in pool.k]
    v_ref = [t.clone() for t in pool.v]
    for block in range(9):
        n = 1 + block % 3
        fresh = torch.randn(pool.kv.shape, generator=gen)
        pool.kv.copy_(fresh)  # new in-flight K/V (and clutter elsewhere) every tick
        for layer in range(3):
            k_ref[layer].copy_(fresh[layer, 0])
            v_ref[layer].copy_(fresh[layer, 1])
        # The reference's slots come from a layout of its own.
        slots = [pool.layout.slot_for(f) for f in range(3 * block, 3 * block + 3)]
        index = block % n
        pool.promote(index, n, 3 * block)
        _reference_promote(k_ref, v_ref, pool, index, n, 3 * block, slots)
        for layer in range(3):
            assert torch.equal(pool.k[layer], k_ref[layer]), (block, layer)
            assert torch.equal(pool.v[layer], v_ref[layer]), (block, layer)
    assert pool.layout.next_frame == 27


def test_per_layer_views_share_the_pool_and_commit_block_agrees():
    pool, other = _pool(2, 4), _pool(2, 4)
    assert all(t.is_contiguous() and t.data_ptr() != 0 for t in pool.k + pool.v)
    pool.k[1][0, 0, 0, 0] = 7.0
    assert pool.kv[1, 0, 0, 0, 0, 0] == 7.0  # a view, not a copy
    gen = torch.Generator().manual_seed(1)
    for block in range(5):
        fresh = torch.randn(pool.kv.shape, generator=gen)
        pool.kv.copy_(fresh)
        other.kv.copy_(fresh)
        src = pool.inflight_slice(0, 1)
        pool.promote(0, 1, 3 * block)
        other.commit_block(3 * block, lambda i, f=fresh, s=src: (f[i, 0][:, :, s], f[i, 1][:, :, s]))
        assert torch.equal(pool.kv, other.kv), block


# -- latents against the allocating code -----------------------------------------------------------


class AllocatingExecutor(Executor):
    """The executor as it was before the hot path was made allocation-free: a fresh tensor for every
    concatenation, noise draw and sampler update, and promote as a per-layer, per-frame loop."""

    def _draw(self, gen: torch.Generator) -> torch.Tensor:
        return self._noise(gen)

    def _input(self, states: list[_Block]) -> torch.Tensor:
        x = torch.cat([st.x for st in states], dim=2) if len(states) > 1 else states[0].x
        return torch.cat([x, x]) if self.guided else x

    def advance(self, e, st, v):
        sched = self.schedule
        sig, sig_next = sched.sigmas[e.stage], sched.sigmas[e.stage + 1]
        if e.stage == sched.num_steps - 1:
            st.x = x0_from_velocity(st.x, v, sig)
            return st.x
        if sched.sampler == "renoise":
            st.x = renoise(x0_from_velocity(st.x, v, sig), self._noise(st.gen), sig_next)
        else:
            st.x = euler_step(st.x, v, sig, sig_next)
        return None

    def run_tick(self, tick, text_kv):
        pool = self.pool

        def promote(index, n_inflight, first_frame):
            slots = [pool.layout.slot_for(f) for f in range(first_frame, first_frame + pool.frames_per_block)]
            pool.layout.commit(range(first_frame, first_frame + pool.frames_per_block))
            _reference_promote(pool.k, pool.v, pool, index, n_inflight, first_frame, slots)
            pool._after_commit(first_frame)

        pool.promote = promote
        try:
            return super().run_tick(tick, text_kv)
        finally:
            del pool.promote


class AllocatingEngine(Engine):
    def _make_executor(self, **kwargs) -> Executor:
        return AllocatingExecutor(**kwargs)


@pytest.fixture(scope="module")
def embedded():
    from vidcascade.weights.registry import load_bundle

    return load_bundle("embedded")


@pytest.mark.parametrize("level", [0, 2, 4])
def test_embedded_latents_bit_identical_to_allocating_code(embedded, level):
    """The shipped model (euler sampler, sink bias, a prompt switch) at levels 0, 2 and 4."""
    for attention in ("causal", "bidirectional"):
        cascade = CascadeConfig(level=level, attention=attention)
        kw = dict(seed=3, switches=[(3, "a blue box")])
        got = Engine(embedded, cascade, decode="inline").generate("a red ball bouncing", 6, **kw)
        ref = AllocatingEngine(embedded, cascade, decode="inline").generate("a red ball bouncing", 6, **kw)
        assert torch.equal(got.latents, ref.latents), (level, attention)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_renoise_and_guidance_bit_identical_to_allocating_code(guidance):
    """Re-noise draws from the block's generator into the scratch buffer, the guided input buffer,
    and a window that rolls (sink 2 + window 4 frames, 7 blocks of 2)."""
    bundle = make_bundle(
        sampling=SamplingConfig(shift=3.0, frames_per_block=2, sampler="renoise", guidance=guidance),
        cache=CacheConfig(sink_frames=2, window_frames=4, sink_bias=1.5),
    )
    for level in (0, 2, 4):
        cascade = CascadeConfig(level=level, switch_mode="recache")
        kw = dict(seed=5, switches=[(3, "a red ball")])
        got = Engine(bundle, cascade, decode="inline").generate("a cyan box", 7, **kw).latents
        ref = AllocatingEngine(bundle, cascade, decode="inline").generate("a cyan box", 7, **kw).latents
        assert torch.equal(got, ref), level


def test_tick_reuses_its_buffers(micro_bundle):
    """A block's latents stay in one tensor over its stages; a tick's input is the buffer of its
    in-flight count."""
    eng = Engine(micro_bundle, CascadeConfig(level=4), decode="inline")
    ex = eng.executor
    text_kv = eng.text_kv("a red ball")
    ex.reset(0)
    plan = eng.plan(4)
    ptrs: dict[int, set[int]] = {}
    inputs: dict[int, set[int]] = {}
    for tick in plan.ticks:
        ex.run_tick(tick, text_kv)
        for b, st in ex.blocks.items():
            if ex.schedule.num_steps - 1 > tick.index - b * eng.lag >= 0:  # before its clean x0
                ptrs.setdefault(b, set()).add(st.x.data_ptr())
        for n, buf in ex._inputs.items():
            inputs.setdefault(n, set()).add(buf.data_ptr())
    assert ptrs and all(len(p) == 1 for p in ptrs.values())
    assert inputs and all(len(p) == 1 for p in inputs.values())
