"""A compiled tick traces without graph breaks and compiles once per tick shape.

Counted through torch._dynamo's counters. The fast tests use dynamo's "eager" backend, which
traces as inductor would without generating code (so the latents equal the eager run's exactly);
the inductor run is marked slow (about a minute of C++ compilation on one core)."""

import pytest
import torch

from _micro import make_bundle
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.engine.compile import compile_dit, eager, tick_shape_bound
from vidcascade.engine.engine import Engine

dynamo = pytest.importorskip("torch._dynamo")

SAMPLING = SamplingConfig(shift=5.0, frames_per_block=2, steps=(1000.0, 750.0, 500.0))
# Small window, sink bias on: within 6 blocks the bias starts (block 1 commits after the sink),
# the committed length grows, the window fills (block 2 commits) and the ticks reach steady state.
CACHE = CacheConfig(sink_frames=2, window_frames=4, sink_bias=1.5)
BLOCKS = 6


def _compiled_run(level: int, impl: str, backend: str):
    """(eager latents, compiled latents, graphs compiled, graph breaks, tick shapes, graphs
    compiled by a second run at steady state)."""
    from torch._dynamo.utils import counters

    bundle = make_bundle(sampling=SAMPLING, cache=CACHE)
    eng = Engine(bundle, CascadeConfig(level=level), decode="inline")
    eng.executor.use_attention(impl)
    ref = eng.generate("a red ball", BLOCKS, seed=2).latents
    dynamo.reset()
    counters.clear()
    try:
        compile_dit(bundle.dit, backend=backend, max_shapes=tick_shape_bound(SAMPLING, CACHE))
        got = eng.generate("a red ball", BLOCKS, seed=2).latents
        graphs = counters["stats"]["unique_graphs"]
        breaks = dict(counters["graph_break"])
        shapes = {(tr.n_inflight, tr.committed_tokens) for tr in eng.stats.ticks}
        counters.clear()
        again = eng.generate("a red ball", BLOCKS, seed=2).latents
        assert torch.equal(again, got)
        with eager(bundle.dit):  # the eager trunk is still there, and compiles nothing
            assert torch.equal(eng.generate("a red ball", BLOCKS, seed=2).latents, ref)
        regraphs = counters["stats"]["unique_graphs"]
    finally:
        dynamo.reset()
    return ref, got, graphs, breaks, shapes, regraphs


@pytest.mark.parametrize("level, impl", [(0, "split"), (3, "dense")])
def test_compiled_ticks_have_no_graph_break_and_one_graph_per_shape(level, impl):
    ref, got, graphs, breaks, shapes, regraphs = _compiled_run(level, impl, "eager")
    assert breaks == {}, f"graph breaks: {breaks}"
    # One graph per (in-flight blocks, committed length): the mask's type never changes on its
    # own (no recompile as the sink bias starts), and the count is within the bound compile_dit
    # raises dynamo's limit to.
    assert graphs == len(shapes) <= tick_shape_bound(SAMPLING, CACHE)
    assert regraphs == 0  # steady state: a second run compiles nothing
    assert torch.equal(got, ref)  # the eager backend runs the traced graph's ops as they are


@pytest.mark.slow
def test_inductor_latents_equal_eager_within_fp32_tolerance():
    ref, got, graphs, breaks, shapes, regraphs = _compiled_run(0, "split", "inductor")
    assert breaks == {} and graphs == len(shapes) and regraphs == 0
    # Generated kernels fuse and reorder fp32 arithmetic: rounding differences only.
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
