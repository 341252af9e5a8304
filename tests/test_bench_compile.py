"""bench --compile-modes off,on: eager and compiled runs of every level interleaved in one run."""

import argparse

import pytest

from _micro import make_bundle
from vidcascade.cli import _compile_modes
from vidcascade.config import CacheConfig, SamplingConfig
from vidcascade.engine.compile import compile_dit, is_compiled
from vidcascade.eval.bench import format_bench, machine_info, run_bench

dynamo = pytest.importorskip("torch._dynamo")


def test_compile_modes_flag():
    assert _compile_modes("off,on") == (False, True) and _compile_modes("on") == (True,)
    for bad in ("", "maybe", "on,on"):
        with pytest.raises(argparse.ArgumentTypeError, match="off, on or off,on"):
            _compile_modes(bad)


def test_bench_rows_per_compile_mode():
    sampling = SamplingConfig(shift=5.0, frames_per_block=2, steps=(1000.0, 500.0))
    bundle = make_bundle(sampling=sampling, cache=CacheConfig(sink_frames=2, window_frames=2, sink_bias=1.0))
    with pytest.raises(ValueError, match="not compiled"):
        run_bench(bundle, [0], blocks=3, repeats=1, compiles=(True,), switch=False, write="none")
    dynamo.reset()
    try:
        compile_dit(bundle.dit, backend="eager")  # traces as inductor would, generates no code
        rows = run_bench(
            bundle,
            [0, 2],
            blocks=3,
            repeats=1,
            compiles=(False, True),
            switch=False,
            write="none",
            profile=True,
        )
    finally:
        dynamo.reset()
    assert is_compiled(bundle.dit)  # the eager runs leave the compiled trunk in place
    assert [(r["level"], r["compiled"]) for r in rows] == [(0, False), (0, True), (2, False), (2, True)]
    for r in rows:
        assert r["fps_ticks"] > 0 and r["speedup_ticks"] > 0
        assert (r["fps_bare"] is None) == r["compiled"]  # no bare bound for compiled runs
    assert rows[0]["speedup_ticks"] == rows[1]["speedup_ticks"] == 1.0  # each over its own P0
    # P0: 3 committed lengths (0, 1, 2 blocks); P2 (lag 1): 1..3 in flight ramping up, then down.
    assert rows[1]["compiled_graphs"] > 0 and rows[3]["compiled_graphs"] > 0
    assert rows[1]["graph_breaks"] == 0 and rows[1]["graphs_after_warmup"] == 0
    text = format_bench(rows, machine_info(bundle.device), "micro")
    assert "profile P2 decode thread compiled" in text and "(compiled: not timed)" in text
    assert "profile P2 decode thread eager" in text
    assert "graph breaks 0; graphs compiled in the measured runs 0" in text
