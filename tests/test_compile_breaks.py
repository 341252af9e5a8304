"""A compiled tick traces without graph breaks (counted through torch._dynamo's counters; the
"eager" backend traces as inductor would, without generating code, so the test stays fast)."""

import pytest
import torch

from _micro import make_bundle
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.engine.engine import Engine
from vidcascade.weights.loading import compile_dit

dynamo = pytest.importorskip("torch._dynamo")

SAMPLING = SamplingConfig(shift=5.0, frames_per_block=2, steps=(1000.0, 750.0, 500.0))


@pytest.mark.parametrize("level", [0, 3])
def test_compiled_ticks_have_no_graph_break(level):
    from torch._dynamo.utils import counters

    bundle = make_bundle(sampling=SAMPLING, cache=CacheConfig(sink_frames=2, window_frames=64))
    ref = Engine(bundle, CascadeConfig(level=level), decode="inline").generate("a red ball", 4, seed=2)
    dynamo.reset()
    counters.clear()
    try:
        compile_dit(bundle.dit, backend="eager")
        got = Engine(bundle, CascadeConfig(level=level), decode="inline").generate("a red ball", 4, seed=2)
        breaks = dict(counters["graph_break"])
        assert breaks == {}, f"graph breaks: {breaks}"
        assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    finally:
        dynamo.reset()
    torch.testing.assert_close(got.latents, ref.latents, rtol=1e-5, atol=1e-5)
