"""A decode rank of its own (``--parallel temporal --decode-rank``) against one process: gloo on CPU.

Three spawned processes run a job of 2 denoising ranks + 1 decode rank, then two of them a job of
1 + 1. The decoded frames must equal the single-process run's (mean absolute pixel difference
<= 1.0 of 255, the tolerance of the other multi-rank tests; the latents within 1e-4 relative),
the decode rank must decode exactly what rank 0 made, and no denoising rank may make a decoder
or decode a block.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from _micro import make_bundle
from vidcascade.config import CacheConfig, CascadeConfig
from vidcascade.distributed.comm import Comm
from vidcascade.distributed.engine import DistEngine
from vidcascade.engine.engine import Engine

CACHE = CacheConfig(sink_frames=2, window_frames=4)
BLOCKS, SEED, PROMPT = 6, 5, "a cyan box"
SCENARIOS = {
    "joint_causal_P4": (dict(level=4, attention="causal"), ()),
    "per_tick_recache_P3": (dict(level=3, freshness="per_tick", switch_mode="recache"), ((3, "a red ball"),)),
}


class _CountingDecoder:
    def __init__(self, inner, counts: dict) -> None:
        self.inner, self.counts = inner, counts

    def reset(self) -> None:
        self.inner.reset()

    def decode(self, x):
        self.counts["decoded_blocks"] += 1
        return self.inner.decode(x)


def _counted_bundle(counts: dict):
    bundle = make_bundle(cache=CACHE)
    make = bundle.make_decoder

    def counting():
        counts["decoders"] += 1
        return _CountingDecoder(make(), counts)

    bundle.make_decoder = counting
    return bundle


def _job(job, comm, out: Path) -> None:
    from vidcascade.distributed.decode_rank import DecodeSender, decode_blocks

    counts = {"decoders": 0, "decoded_blocks": 0}
    result: dict = {}
    for name, (kw, sw) in SCENARIOS.items():
        bundle = _counted_bundle(counts)
        if comm is None:  # the decode rank
            got = list(decode_blocks(bundle.make_decoder(), job))
            result[name] = (
                [d.block for d in got],
                torch.cat([d.latents for d in got], 2),
                np.concatenate([d.frames for d in got], 1),
            )
            continue
        sender = DecodeSender(job) if comm.is_root else None
        eng = DistEngine(bundle, CascadeConfig(**kw), comm, decode_sender=sender)
        video = eng.generate(PROMPT, BLOCKS, seed=SEED, switches=sw)
        if comm.is_root:
            assert video.frames.shape[1] == 0 and sender.sent == list(range(BLOCKS))
            result[name] = video.latents
    result["counts"] = counts
    torch.save(result, out / f"world{job.world_size}_rank{job.rank}.pt")


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    from vidcascade.distributed.comm import init_comm, shutdown, split_decode_rank

    out = Path(out_dir)
    for world in (3, 2):
        if rank >= world:
            return
        init = f"file://{out / f'init_{world}'}"
        job = init_comm("cpu", rank=rank, world_size=world, init_method=init, timeout_s=60)
        _job(job, split_decode_rank(job), out)
        shutdown(job)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decode_rank")
    mp.start_processes(_worker, args=(str(tmp),), nprocs=3, start_method="spawn")
    load = lambda w, r: torch.load(tmp / f"world{w}_rank{r}.pt", weights_only=False)  # noqa: E731
    return {w: [load(w, r) for r in range(w)] for w in (2, 3)}


@pytest.mark.parametrize("world", [2, 3])
def test_decode_rank_frames_equal_single_process(runs, world):
    ranks = runs[world]
    decoder, root = ranks[-1], ranks[0]
    for name, (kw, sw) in SCENARIOS.items():
        # per_tick reads one tick stale K/V: its single-process run is per_tick on one rank.
        if kw.get("freshness") == "per_tick":
            eng = DistEngine(make_bundle(cache=CACHE), CascadeConfig(**kw), Comm(0, 1, "cpu"))
        else:
            eng = Engine(make_bundle(cache=CACHE), CascadeConfig(**kw), decode="inline")
        ref = eng.generate(PROMPT, BLOCKS, seed=SEED, switches=sw)
        blocks, lat, frames = decoder[name]
        assert blocks == list(range(BLOCKS)), name
        assert torch.equal(lat, root[name]), name  # the decode rank decodes what rank 0 made
        torch.testing.assert_close(lat, ref.latents, rtol=1e-4, atol=1e-4)
        assert frames.shape == ref.frames.shape, name
        px = float(np.abs(frames.astype(np.int16) - ref.frames.astype(np.int16)).mean())
        assert px <= 1.0, (name, px)


@pytest.mark.parametrize("world", [2, 3])
def test_denoising_ranks_never_decode(runs, world):
    ranks = runs[world]
    for r, res in enumerate(ranks[:-1]):
        assert res["counts"] == {"decoders": 0, "decoded_blocks": 0}, r
    assert ranks[-1]["counts"] == {"decoders": len(SCENARIOS), "decoded_blocks": len(SCENARIOS) * BLOCKS}


def test_cli_decode_rank_writes_the_single_process_video(tmp_path, capsys):
    from vidcascade.cli import main

    argv = ["generate", "a red circle moving right", "--level", "4", "--model", "random-tiny"]
    argv += ["--blocks", "3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3"]
    cmd += ["-m", "vidcascade", *argv, "--parallel", "temporal", "--decode-rank", "--out", "d.npz"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIDCASCADE_DIST_TIMEOUT_S": "30"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "temporal parallel on 2 rank(s) + a decode rank, joint K/V" in r.stdout, r.stdout
    # 3 blocks x 5 stages: blocks 0 and 2 on rank 0, block 1 on rank 1; all 3 decoded on rank 2.
    for part in ("r0: 10 block-fwd", "r1: 5 block-fwd", "decode rank: 3 blocks decoded"):
        assert part in r.stdout, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]
    assert main([*argv, "--out", str(tmp_path / "s.npz")]) == 0
    capsys.readouterr()
    a = np.load(tmp_path / "d.npz")["frames"].astype(np.int16)
    b = np.load(tmp_path / "s.npz")["frames"].astype(np.int16)
    assert a.shape == b.shape and np.abs(a - b).mean() <= 1.0


def test_decode_rank_flag_needs_temporal_and_two_processes(tmp_path, monkeypatch, capsys):
    from vidcascade.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["generate", "a red circle", "--model", "random-tiny", "--blocks", "1"]
    argv += ["--out", str(tmp_path / "x.npz")]
    assert main([*argv, "--decode-rank"]) == 2
    assert "--decode-rank works with --parallel temporal" in capsys.readouterr().err
    assert main([*argv, "--decode-rank", "--parallel", "temporal"]) == 2
    assert "--decode-rank needs at least 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
