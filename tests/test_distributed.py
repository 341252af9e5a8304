"""Temporal parallelism on several processes (gloo on CPU) against one process.

In-process workers are spawned once per world size and run every scenario in a row (process start
dominates the cost); the CLI is checked end to end under torchrun, once clean and once with an
injected failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from _micro import make_bundle
from vidcascade.cli import main
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.distributed.checks import compare_fingerprints
from vidcascade.distributed.comm import Comm
from vidcascade.distributed.engine import DistEngine
from vidcascade.distributed.placement import (
    local_entries,
    local_index,
    max_local_blocks,
    max_local_bound,
    rank_of_block,
)
from vidcascade.engine.engine import Engine
from vidcascade.engine.executor import block_seed
from vidcascade.models.rope import RopeTables
from vidcascade.scheduling.plan import build_plan
from vidcascade.scheduling.timesteps import make_schedule

CACHE = CacheConfig(sink_frames=2, window_frames=4)  # 7 blocks x 2 frames: the window rolls
BLOCKS, SEED, PROMPT = 7, 5, "a cyan box"

# name -> (CascadeConfig kwargs, switches). Each runs on every world size.
SCENARIOS = {
    "joint_causal_P4": (dict(level=4, attention="causal"), ()),
    "joint_bidir_P4": (dict(level=4, attention="bidirectional"), ()),
    "joint_recache_P2": (dict(level=2, attention="causal", switch_mode="recache"), ((3, "a red ball"),)),
    "per_tick_causal_P4": (dict(level=4, attention="causal", freshness="per_tick"), ()),
    "per_tick_bidir_P3": (dict(level=3, attention="bidirectional", freshness="per_tick"), ()),
    # Block 0 commits at tick 4, right before the switch tick 5: the re-cache must see it.
    "per_tick_recache_P4": (
        dict(level=4, attention="causal", freshness="per_tick", switch_mode="recache"),
        ((5, "a red ball"),),
    ),
    # Classifier-free guidance doubles the batch inside the pool and the exchanges.
    "guided_joint_P4": (dict(level=4, attention="bidirectional"), ()),
    "guided_per_tick_recache_P4": (dict(level=4, freshness="per_tick", switch_mode="recache"), ((5, "red"),)),
    # The sink bias turns the masks into additive float masks, also where all keys are visible.
    "sink_bias_joint_bidir_P4": (dict(level=4, attention="bidirectional"), ((3, "a red ball"),)),
    "sink_bias_per_tick_causal_P3": (dict(level=3, attention="causal", freshness="per_tick"), ()),
    # A RoPE table of 13 frame positions: the 14-frame video rebases its positions once.
    "rebase_joint_P2": (dict(level=2, attention="bidirectional"), ((4, "a red ball"),)),
    "rebase_per_tick_P2": (dict(level=2, attention="causal", freshness="per_tick"), ()),
}


def _bundle_for(name: str):
    if name.startswith("guided"):
        return make_bundle(cache=CACHE, sampling=SamplingConfig(shift=5.0, frames_per_block=2, guidance=2.0))
    if name.startswith("sink_bias"):
        return make_bundle(cache=CacheConfig(sink_frames=2, window_frames=4, sink_bias=1.5))
    if name.startswith("rebase"):
        bundle = make_bundle(cache=CACHE)
        bundle.dit.rope = RopeTables(bundle.dit.cfg.head_dim, 13)
        return bundle
    return make_bundle(cache=CACHE)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- placement (pure) ------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("lag", [1, 2, 5])
def test_placement_partitions_every_tick_and_keeps_blocks_on_one_rank(world, lag):
    plan = build_plan(9, 4, lag)
    for tick in plan.ticks:
        shares = [local_entries(tick, r, world) for r in range(world)]
        assert sorted(e.block for s in shares for e in s) == sorted(tick.blocks)
        for r, share in enumerate(shares):
            assert all(rank_of_block(e.block, world) == r for e in share)
            assert [local_index(tick, e.block, world) for e in share] == list(range(len(share)))
    assert max_local_blocks(plan, world) == max_local_bound(plan.max_in_flight, world)
    assert [rank_of_block(b, 3) for b in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_fingerprint_mismatch_names_rank_and_field():
    a = {"seed": 0, "prompt": "p", "weights": {"w": (1.0, 0.5, 2.0)}}
    same = {"seed": 0, "prompt": "p", "weights": {"w": (1.0 + 1e-14, 0.5, 2.0)}}
    other = {"seed": 3, "prompt": "p", "weights": {"w": (1.5, 0.5, 2.0)}}
    assert compare_fingerprints([a, same]) == []
    (msg,) = compare_fingerprints([a, same, other])
    assert msg.startswith("rank 2 differs from rank 0 in") and "seed: 3 (rank 0: 0)" in msg
    assert "parameter w differs" in msg


# -- references in this process --------------------------------------------------------------------


def _single(bundle, cascade_kw, switches):
    return Engine(bundle, CascadeConfig(**cascade_kw)).generate(PROMPT, BLOCKS, seed=SEED, switches=switches)


class _StaleKV:
    """Keys of one block's own forward: its fresh K/V, the given stale blocks' and committed frames'."""

    def __init__(self, others):
        self.others, self.captured = others, []

    def update(self, layer, k, v):
        self.captured.append((k.clone(), v.clone()))
        ks = torch.cat([k] + [o[layer][0] for o in self.others], 2)
        vs = torch.cat([v] + [o[layer][1] for o in self.others], 2)
        return ks, vs, None


@torch.no_grad()
def per_tick_reference(bundle, lag, attention, num_blocks, seed, prompt):
    """One forward per block and tick: a block sees itself fresh, the other in-flight blocks it may
    see as they were one tick earlier (if they existed), and the committed sink + window."""
    model, fpb = bundle.dit, bundle.sampling.frames_per_block
    sched = make_schedule(bundle.sampling)
    S = sched.num_steps
    h, w = bundle.latent_hw
    tpf = model.tokens_per_frame(h, w)
    sink, window = bundle.cache.sink_frames, bundle.cache.window_frames
    text_kv = model.text_kv(bundle.text_encoder.encode([prompt]))
    shape = (1, model.cfg.in_dim, fpb, h, w)
    frames_kv, prev, gens, xs, out = {}, {}, {}, {}, {}
    for tau in range((num_blocks - 1) * lag + S + 1):
        live = [b for b in range(num_blocks) if 0 <= tau - b * lag <= S]
        done = sorted(frames_kv)
        visible = [f for f in done if f < sink] + [f for f in done if f >= sink][-window:]
        cur = {}
        for b in live:
            if b not in gens:
                gens[b] = torch.Generator().manual_seed(block_seed(seed, b))
                xs[b] = torch.randn(*shape, generator=gens[b])
            s = tau - b * lag
            seen = [j for j in live if j != b and j in prev and (attention == "bidirectional" or j < b)]
            kv = _StaleKV([prev[j] for j in seen] + [frames_kv[f] for f in visible])
            t = torch.full((1, fpb), sched.timesteps[s] if s < S else sched.cache_timestep)
            v = model(xs[b], t, text_kv=text_kv, frame_pos=torch.arange(b * fpb, (b + 1) * fpb), kv=kv)
            cur[b] = kv.captured
            if s == S:
                for j in range(fpb):
                    tok = slice(j * tpf, (j + 1) * tpf)
                    frames_kv[b * fpb + j] = [(k[:, :, tok], vv[:, :, tok]) for k, vv in kv.captured]
                continue
            x0 = xs[b] - sched.sigmas[s] * v
            if s == S - 1:
                xs[b] = out[b] = x0
            else:
                noise = torch.randn(*shape, generator=gens[b])
                xs[b] = (1 - sched.sigmas[s + 1]) * x0 + sched.sigmas[s + 1] * noise
        prev = cur
    return torch.cat([out[b] for b in range(num_blocks)], 2)


def test_per_tick_single_rank_equals_reference_loop():
    bundle = make_bundle(cache=CACHE)
    assert bundle.sampling.sampler == "renoise"
    for level, attention in ((4, "causal"), (3, "bidirectional"), (0, "causal")):
        eng = DistEngine(
            bundle, CascadeConfig(level=level, attention=attention, freshness="per_tick"), Comm(0, 1, "cpu")
        )
        got = eng.generate(PROMPT, BLOCKS, seed=SEED).latents
        ref = per_tick_reference(bundle, eng.lag, attention, BLOCKS, SEED, PROMPT)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # At level 0 nothing is in flight beside a block: per_tick is the sequential pipeline exactly.
    seq = Engine(bundle, CascadeConfig(level=0)).generate(PROMPT, BLOCKS, seed=SEED).latents
    torch.testing.assert_close(got, seq, rtol=1e-5, atol=1e-5)


def test_per_tick_recache_sees_the_commit_of_the_tick_before():
    bundle = make_bundle(cache=CACHE)
    kw, sw = SCENARIOS["per_tick_recache_P4"]
    eng = DistEngine(bundle, CascadeConfig(**kw), Comm(0, 1, "cpu"))
    seen = []
    orig = eng.executor.recache

    def spy(text_kv):
        orig(text_kv)
        seen.append(eng.pool.layout.visible_frames())

    eng.executor.recache = spy
    eng.generate(PROMPT, BLOCKS, seed=SEED, switches=sw)
    fpb = bundle.sampling.frames_per_block
    assert seen == [list(range(fpb))] and eng.stats.counters.recache_forwards == 1


def test_single_rank_joint_is_bit_exact():
    for name, (kw, sw) in SCENARIOS.items():
        # The rebased runs against a table that never needed a rebase.
        bundle = make_bundle(cache=CACHE) if name.startswith("rebase") else _bundle_for(name)
        if kw.get("freshness", "joint") == "joint":
            ref = _single(bundle, kw, sw)
            got = DistEngine(bundle, CascadeConfig(**kw), Comm(0, 1, "cpu")).generate(
                PROMPT, BLOCKS, seed=SEED, switches=sw
            )
            assert torch.equal(got.latents, ref.latents) and np.array_equal(got.frames, ref.frames), name


# -- spawned ranks ---------------------------------------------------------------------------------


def _scenarios(comm, out: Path) -> None:
    bundle = make_bundle(cache=CACHE)
    result: dict = {}
    for name, (kw, sw) in SCENARIOS.items():
        eng = DistEngine(_bundle_for(name), CascadeConfig(**kw), comm)
        video = eng.generate(PROMPT, BLOCKS, seed=SEED, switches=sw)
        if comm.rank == 0:
            result[name] = (video.latents, video.frames)
        else:
            assert video is None
        result[name + ":block_forwards"] = eng.stats.counters.block_forwards
    # Mismatched settings and weights: every rank must raise the same clear error, in step.
    eng = DistEngine(bundle, CascadeConfig(level=4), comm)
    try:
        eng.generate(PROMPT, 2, seed=SEED + comm.rank)
    except ValueError as e:
        result["mismatch_seed"] = str(e)
    eng = DistEngine(make_bundle(cache=CACHE, seed=comm.rank), CascadeConfig(level=4), comm)
    try:
        eng.generate(PROMPT, 2, seed=SEED)
    except ValueError as e:
        result["mismatch_weights"] = str(e)
    torch.save(result, out / f"world{comm.world_size}_rank{comm.rank}.pt")


def _worker(rank: int, out_dir: str) -> None:
    """Three ranks run every scenario; then ranks 0 and 1 form a new job of two and run them again
    (one set of processes for both world sizes: process start dominates the test's time)."""
    torch.set_num_threads(1)
    from vidcascade.distributed.comm import init_comm, shutdown

    out = Path(out_dir)
    for world in (3, 2):
        if rank >= world:
            return
        init = f"file://{out / f'init_{world}'}"
        comm = init_comm("cpu", rank=rank, world_size=world, init_method=init, timeout_s=60)
        _scenarios(comm, out)
        shutdown(comm)


@pytest.fixture(scope="module")
def ranks_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(str(tmp),), nprocs=3, start_method="spawn")
    return {
        w: [torch.load(tmp / f"world{w}_rank{r}.pt", weights_only=False) for r in range(w)] for w in (2, 3)
    }


@pytest.fixture(scope="module")
def references():
    ref = {}
    for name, (kw, sw) in SCENARIOS.items():
        # The rebased runs against a table that never needed a rebase.
        bundle = make_bundle(cache=CACHE) if name.startswith("rebase") else _bundle_for(name)
        if kw.get("freshness", "joint") == "joint":
            v = _single(bundle, kw, sw)
        else:
            v = DistEngine(bundle, CascadeConfig(**kw), Comm(0, 1, "cpu")).generate(
                PROMPT, BLOCKS, seed=SEED, switches=sw
            )
        ref[name] = (v.latents, v.frames)
    return ref


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_equal_single_process(ranks_runs, references, world):
    """joint: equal to the single-process batched run; per_tick: equal to per_tick on one rank
    (its reads do not depend on the placement)."""
    root = ranks_runs[world][0]
    report = []
    for name in SCENARIOS:
        lat, frames = root[name]
        ref_lat, ref_frames = references[name]
        rel = _rel(lat, ref_lat)
        px = float(np.abs(frames.astype(np.int16) - ref_frames.astype(np.int16)).mean())
        report.append(f"{name}: rel {rel:.1e}, max abs {float((lat - ref_lat).abs().max()):.1e}, px {px:.3f}")
        assert rel < 1e-4, name
        torch.testing.assert_close(lat, ref_lat, rtol=1e-4, atol=1e-4)
        assert px <= 1.0, name
        # Every (block, stage) ran exactly once, on its own rank.
        total = sum(r[name + ":block_forwards"] for r in ranks_runs[world])
        assert total == BLOCKS * (make_bundle().sampling.num_steps + 1), name
    print(f"\n{world} ranks vs one process:\n  " + "\n  ".join(report))


def test_per_tick_differs_from_joint_and_reports_eval(references):
    from vidcascade.eval.metrics import psnr

    joint_lat, joint_frames = references["joint_causal_P4"]
    pt_lat, pt_frames = references["per_tick_causal_P4"]
    rel, db = _rel(pt_lat, joint_lat), psnr(pt_frames, joint_frames)
    print(f"\nper_tick vs joint (micro model, P4 causal): latent rel err {rel:.3f}, PSNR {db:.1f} dB")
    assert 1e-4 < rel < 1.0 and np.isfinite(db)


@pytest.mark.parametrize("world", [2, 3])
def test_mismatched_ranks_fail_on_every_rank_with_a_clear_error(ranks_runs, world):
    for r, res in enumerate(ranks_runs[world]):
        msg = res.get("mismatch_seed")
        assert msg and "rank 1 differs from rank 0 in" in msg and "seed: 6 (rank 0: 5)" in msg, (r, msg)
        msg = res.get("mismatch_weights")
        assert msg and "rank 1 differs from rank 0" in msg and "weights: parameter" in msg, (r, msg)


# -- the CLI under torchrun ------------------------------------------------------------------------


def _torchrun(tmp_path: Path, *argv: str, env: dict | None = None, timeout: float = 120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "vidcascade", *argv]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "VIDCASCADE_DIST_TIMEOUT_S": "30", **(env or {})}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - t0


GEN = ["generate", "a red circle moving right", "--level", "4", "--model", "random-tiny", "--blocks", "3"]


def test_cli_torchrun_two_ranks_matches_single_process(tmp_path, capsys):
    r, _ = _torchrun(tmp_path, *GEN, "--parallel", "temporal", "--out", "d.npz")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "temporal parallel on 2 rank(s), joint K/V" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # rank 1 wrote nothing
    assert main([*GEN, "--out", str(tmp_path / "s.npz")]) == 0
    capsys.readouterr()
    a = np.load(tmp_path / "d.npz")["frames"].astype(np.int16)
    b = np.load(tmp_path / "s.npz")["frames"].astype(np.int16)
    assert a.shape == b.shape and np.abs(a - b).mean() <= 1.0


def test_cli_failing_rank_ends_the_job_with_its_error(tmp_path):
    env = {"VIDCASCADE_FAIL_RANK": "1", "VIDCASCADE_FAIL_TICK": "3"}
    r, seconds = _torchrun(tmp_path, *GEN, "--parallel", "temporal", "--out", "d.npz", env=env, timeout=90)
    text = r.stdout + r.stderr
    assert r.returncode != 0
    assert "injected failure on rank 1 at tick 3" in text
    assert "rank 1/2 failed" in text
    assert seconds < 60
    assert not (tmp_path / "d.npz").exists()


def test_cli_torchrun_bad_value_is_one_line_once(tmp_path):
    """A value every rank rejects alike (found after loading, or by argparse) is printed once, by
    rank 0, as the single process prints it; torchrun's own summary names the same line instead of
    the ranks' tracebacks."""
    cases = [
        (["--level", "9"], "vidcascade generate: error: level must be in 0..4 for 4 steps, got 9"),
        (
            ["--switch", "-1:foo"],
            "vidcascade generate: error: argument --switch: '-1:foo': the block must be",
        ),
    ]
    for flags, line in cases:
        r, _ = _torchrun(tmp_path, *GEN, *flags, "--parallel", "temporal", "--out", "d.npz", timeout=90)
        text = r.stdout + r.stderr
        assert r.returncode != 0
        printed = [ln for ln in text.splitlines() if ln.startswith("vidcascade generate:")]
        assert len(printed) == 1 and printed[0].startswith(line), text[-3000:]
        assert f"traceback : {printed[0]}" in text  # torchrun's summary quotes the rank's line
        assert "vidcascade/distributed" not in text and "vidcascade/engine" not in text  # no rank traceback
        assert not (tmp_path / "d.npz").exists()


def test_bench_temporal_single_rank_reports_both_modes(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    path = tmp_path / "b.json"
    argv = ["bench", "--parallel", "temporal", "--model", "random-tiny", "--blocks", "3", "--levels", "4"]
    assert main([*argv, "--repeats", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "comm ms" in out and "per_tick against joint" in out
    import json

    data = json.loads(path.read_text())
    assert [(r["ranks"], r["freshness"]) for r in data["speed"]] == [(1, "joint"), (1, "per_tick")]
    for r in data["speed"]:
        assert r["compute_s_per_tick"] > 0 and r["bytes_per_tick"] == 0 and r["fps"] > 0
    (q,) = data["quality"]
    assert np.isfinite(q["psnr_db"]) and q["latent_rel_err"] > 0
