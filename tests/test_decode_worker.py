"""The decode worker: the same frames and latents as inline decoding, errors surface in the
consumer, and a session's stop / pause keep their meaning with decoding off the tick loop."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from _micro import make_bundle
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.engine.engine import Engine
from vidcascade.models.preview_decoder import PreviewDecoder

SAMPLING = SamplingConfig(shift=5.0, frames_per_block=2, steps=(1000.0, 750.0, 500.0))


def _bundle(**kw):
    return make_bundle(sampling=SAMPLING, cache=CacheConfig(sink_frames=2, window_frames=4), **kw)


def _latents(outs):
    return torch.cat([o.latents for o in outs], dim=2)


@pytest.mark.parametrize("level", [0, 3])
def test_worker_equals_inline(level):
    bundle = _bundle()
    runs = {}
    for mode in ("inline", "thread"):
        eng = Engine(bundle, CascadeConfig(level=level), decode=mode)
        runs[mode] = eng.generate("a red ball", 7, seed=3, switches=[(3, "a blue square")])
        assert len(eng.stats.decode_s) == 7
    a, b = runs["inline"], runs["thread"]
    assert a.frames.shape[1] > 0
    assert np.array_equal(a.frames, b.frames)  # bit-identical: decode does not feed the DiT
    assert torch.equal(a.latents, b.latents)


def test_worker_yields_in_block_order_with_stats():
    eng = Engine(_bundle(), CascadeConfig(level=2), decode="thread")
    outs = list(eng.stream("a red ball", 9, seed=0))
    assert [o.block for o in outs] == list(range(9))
    assert all(o.frames.shape[0] == 1 and o.frames.dtype == np.uint8 for o in outs)
    assert eng.stats.blocks == 9 and eng.stats.ttff_s == outs[0].ready_s
    assert all(b.ready_s >= a.ready_s for a, b in zip(outs, outs[1:]))


class _FailsAt:
    def __init__(self, cfg, block):
        self.inner = PreviewDecoder(cfg.in_dim, upscale=2)
        self.block, self.n = block, 0

    def reset(self):
        self.inner.reset()

    def decode(self, x):
        if self.n == self.block:
            raise RuntimeError(f"decoder broke at block {self.n}")
        self.n += 1
        return self.inner.decode(x)


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_decoder_error_surfaces_in_the_consumer(mode):
    bundle = _bundle()
    bundle = replace(bundle, make_decoder=lambda: _FailsAt(bundle.dit.cfg, 2))
    eng = Engine(bundle, CascadeConfig(level=3), decode=mode)
    got = []
    with pytest.raises(RuntimeError, match="decoder broke at block 2"):
        for o in eng.stream("a red ball", 8, seed=0):
            got.append(o.block)
    assert got == [0, 1]
    # The engine is usable afterwards (the worker thread ended with the stream).
    eng.bundle = _bundle()
    assert len(list(eng.stream("a red ball", 3, seed=0))) == 3


@pytest.mark.parametrize("drain", [True, False])
def test_stop_in_thread_mode_yields_exactly_in_flight(drain):
    eng = Engine(_bundle(), CascadeConfig(level=3))
    s = eng.session("a red ball", seed=0, decode_mode="thread")
    outs, in_flight = [], None
    for out in s:
        outs.append(out)
        if out.block == 3:
            in_flight = s.in_flight
            s.stop(drain=drain)
    assert s.state == "stopped"
    assert in_flight and in_flight == sorted(in_flight) and in_flight[0] == 4
    assert [o.block for o in outs] == [0, 1, 2, 3, *(in_flight if drain else [])]
    # The blocks equal those of a run of the blocks that started (same ticks until the stop).
    ref = eng.generate("a red ball", 4 + len(in_flight), seed=0)
    assert torch.equal(_latents(outs), ref.latents[:, :, : 2 * len(outs)])


def test_pause_in_thread_mode_hands_over_finished_blocks():
    eng = Engine(_bundle(), CascadeConfig(level=3))
    s = eng.session("a red ball", seed=0, decode_mode="thread", max_blocks=8)
    it = iter(s)
    first = next(it)
    s.pause()
    # Every block whose ticks ran before the pause comes out while paused (no tick runs).
    ticks = s.next_tick
    seen = [first.block]
    while s.in_flight and s.in_flight[0] in s._decoding:
        seen.append(next(it).block)
    assert s.next_tick == ticks
    s.resume()
    seen += [o.block for o in it]
    assert seen == list(range(8))


def test_bad_decode_mode():
    with pytest.raises(ValueError, match="decode mode must be one of"):
        Engine(_bundle(), decode="gpu")


def test_generate_decode_flag_writes_the_same_video(tmp_path, capsys):
    from vidcascade.cli import main

    paths = {}
    for mode in ("inline", "thread"):
        paths[mode] = tmp_path / f"{mode}.npz"
        argv = ["generate", "a red ball", "--model", "random-tiny", "--blocks", "4", "--level", "4"]
        assert main([*argv, "--decode", mode, "--out", str(paths[mode])]) == 0
    a, b = (np.load(paths[m]) for m in ("inline", "thread"))
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    with pytest.raises(SystemExit):
        main(["generate", "x", "--decode", "gpu"])


def test_cpu_default_uses_the_worker_only_with_a_free_core(monkeypatch):
    from vidcascade.engine import engine as engine_mod

    monkeypatch.setattr(engine_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(engine_mod.torch, "get_num_threads", lambda: 1)
    assert engine_mod.default_decode_mode(torch.device("cpu")) == "thread"
    monkeypatch.setattr(engine_mod.torch, "get_num_threads", lambda: 2)
    assert engine_mod.default_decode_mode(torch.device("cpu")) == "inline"
    assert engine_mod.default_decode_mode(torch.device("cuda")) == "thread"


def test_gpu_check_runs_on_the_tiny_geometry(capsys):
    from vidcascade.eval.gpu_check import main

    assert main(["--tiny", "--no-compile", "--blocks", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "== eager" in out and "model random-tiny-vae" in out
    assert "profile P4 decode" in out and out.count("\nP0 |") == 1 and out.count("\nP4 |") == 1
