"""Speed benchmark: every cascade level measured side by side in one run.

For each level: steady-state FPS (frames after the first block over the time they took), overall
FPS, time to first frame, per-block latency p50/p95, ticks, forwards, block-forwards, speedup over
level 0, the engine's overhead (tick wall time against a bare forward of the same batch timed
alone) and the extra latency at a prompt switch without and with re-cache. With a feature cache,
each level also runs cached, right after its uncached run of the same round: the share of DiT-block
computations skipped and the wall speedup over that uncached run (end to end and ticks only).

Levels are run round-robin ``repeats`` times after a warm-up, and the median of each number is
reported, because this kind of machine is noisy.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import CascadeConfig, FeatureCacheConfig
from ..engine.attention_plan import tick_attention
from ..engine.compile import eager, is_compiled
from ..engine.decode_worker import check_decode_mode
from ..engine.engine import Engine, RunStats
from ..models.attention import TickAttention
from ..weights.bundle import Bundle
from .profile import Profile

log = logging.getLogger(__name__)


def machine_info(device: torch.device) -> dict:
    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        info["processor"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return info


class _BareKV:
    """Keys/values of the right length, no writes: the attention cost without the engine's K/V work."""

    def __init__(self, k: list[torch.Tensor], mask: TickAttention) -> None:
        self.k, self.mask = k, mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return self.k[layer], self.k[layer], self.mask


def bare_forward_seconds(engine: Engine, n_inflight: int, committed_tokens: int, text_kv, reps: int) -> float:
    """Median time of one model forward of ``n_inflight`` blocks over the same number of keys."""
    b = engine.bundle
    cfg = b.dit.cfg
    h, w = b.latent_hw
    fpb = b.sampling.frames_per_block
    dev, dtype = b.device, b.dit.patch_embedding.weight.dtype
    nf = n_inflight * fpb
    # The batch the engine's forwards run: doubled under classifier-free guidance, as text_kv is.
    batch = text_kv[0][0].shape[0]
    x = torch.randn(batch, cfg.in_dim, nf, h, w, device=dev)
    t = torch.full((batch, nf), 500.0, device=dev)
    pos = torch.arange(nf, device=dev)
    nk = n_inflight * engine.pool.tokens_per_block + committed_tokens
    keys = [
        torch.randn(batch, cfg.num_heads, nk, cfg.head_dim, device=dev, dtype=dtype)
        for _ in range(cfg.num_layers)
    ]
    # The attention the engine's ticks use (masks, sink bias) for this shape; the pool is reset
    # first, since a run with a prompt switch leaves the bias off (the next stream resets it anyway).
    engine.pool.reset()
    causal = engine.cascade.attention == "causal"
    mask = tick_attention(engine.pool, n_inflight, committed_tokens, causal, engine.executor.attention_impl)
    kv = _BareKV(keys, mask)
    times = []
    with torch.no_grad():
        for _ in range(reps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            b.dit(x, t, text_kv=text_kv, frame_pos=pos, kv=kv)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


@dataclass
class _Run:
    stats: RunStats
    ready: list[float]
    wall_s: float = 0.0
    """Seconds from the start of the stream until the last block was written."""
    write_s: list[float] = field(default_factory=list)
    """Per block, seconds its frames took to append to the writer."""


class _NullWriter:
    def append(self, frames: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


def _open_writer(write: str, folder: str, fps: float):
    if write == "none":
        return _NullWriter()
    from ..io.writers import open_writer

    return open_writer(Path(folder) / f"bench.{write}", fps)


def _run(engine: Engine, prompt: str, blocks: int, seed: int, switches=(), writer=None) -> _Run:
    """One stream, end to end: every block's frames are appended to ``writer`` as they come."""
    ready, write_s = [], []
    t0 = time.perf_counter()
    for o in engine.stream(prompt, blocks, seed=seed, switches=switches):
        ready.append(o.ready_s)
        if writer is not None:
            w0 = time.perf_counter()
            writer.append(o.frames[0])
            write_s.append(time.perf_counter() - w0)
    wall = time.perf_counter() - t0
    if writer is not None:
        writer.close()
    return _Run(engine.stats, ready, wall, write_s)


def _steady_fps(run: _Run, frames_per_block: float) -> float:
    # Frames of blocks 1..N-1 over the time between the first and the last block's frames:
    # the rate once the pipeline is filled (the fill shows up in TTFF instead).
    if len(run.ready) < 2:
        return run.stats.fps
    return frames_per_block * (len(run.ready) - 1) / (run.ready[-1] - run.ready[0])


def _switch_extra(run: _Run, block: int) -> float:
    gaps = np.diff([0.0, *run.ready])
    base = float(np.median(np.delete(gaps[1:], block - 1))) if len(gaps) > 2 else 0.0
    return float(gaps[block] - base)


def _hidden(run: _Run, tick_s: float) -> float:
    """Share (0..1) of the run's decode + write time that overlapped the ticks: the part of
    ticks + decode + write that the wall time does not show (0: one after the other)."""
    side = sum(run.stats.decode_s) + sum(run.write_s)
    return min(1.0, max(0.0, (tick_s + side - run.wall_s) / max(1e-9, side)))


def _compile_counts() -> tuple[int, int]:
    """Graphs dynamo has compiled and graph breaks it has met in this process, so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _pct(values, q: float) -> float:
    return float(np.percentile(list(values), q))


def _bare_seconds(engine: Engine, run: _Run, text_kv, memo: dict) -> float:
    """The bare-forward bound of ``run``: per tick, one bare forward of the same shape, timed now
    (between the runs, so that it sees the same machine load); shapes are timed once per call."""
    total = 0.0
    for tr in run.stats.ticks:
        key = (tr.n_inflight, tr.committed_tokens)
        if key not in memo:
            memo[key] = bare_forward_seconds(engine, *key, text_kv, reps=1)
        total += memo[key]
    return total


def run_bench(
    bundle: Bundle,
    levels: list[int],
    attention: str = "causal",
    blocks: int = 12,
    prompt: str = "a red circle moving right",
    switch_prompt: str = "a blue square moving up",
    seed: int = 0,
    repeats: int = 3,
    progress=None,
    decodes: tuple[str, ...] = ("thread",),
    write: str = "mp4",
    switch: bool = True,
    profile: bool = False,
    cache: FeatureCacheConfig | None = None,
    compiles: tuple[bool, ...] | None = None,
) -> list[dict]:
    """One row per (level, decode mode, compiled or not). Runs are interleaved round-robin over
    levels, decode modes and compile modes; after each eager end-to-end run its bare-forward bound
    is timed, so both see the same load.
    ``write``: mp4 | gif | npz | none (the writer the end-to-end runs append to, in a temporary
    folder). ``switch``: also measure the prompt-switch latency (two more runs per round).
    ``cache``: also run each (level, decode mode) with this feature cache, one more run per round
    (policy "none" or None: no cached runs). ``compiles``: run each level eager (False) and/or
    through the model's compiled trunk (True; compile it first: engine/compile.py); None: as the
    model is. Compiled runs warm up over every block, so that each tick shape is compiled before
    the measured runs, and have no bare-forward bound (it would compile shapes of its own)."""
    steps = bundle.sampling.num_steps
    for lv in levels:
        if not 0 <= lv <= steps:
            raise ValueError(f"level {lv} is out of range 0..{steps} for a {steps}-step model")
    if blocks < 3:
        raise ValueError(f"bench needs at least 3 blocks, got {blocks}")
    for d in decodes:
        check_decode_mode(d)
    if compiles is None:
        compiles = (is_compiled(bundle.dit),)
    if any(compiles) and not is_compiled(bundle.dit):
        raise ValueError(
            "compiled runs asked for, but the model is not compiled (engine.compile.compile_dit)"
        )
    switch_block = blocks // 2
    keys = [(lv, d, c) for lv in levels for d in decodes for c in compiles]

    def mode_of(c: bool):
        return nullcontext() if c else eager(bundle.dit)

    def engine(lv: int, d: str, c: bool = False, mode: str = "no-recache") -> Engine:
        cascade = CascadeConfig(level=lv, attention=attention, switch_mode=mode)
        return Engine(bundle, cascade, sync_timing=True, decode=d)

    engines = {k: engine(*k) for k in keys}
    cached_engines, caches = {}, {}
    if cache is not None and cache.policy != "none":
        from ..caching import apply_feature_cache

        for k in keys:
            cached_engines[k] = engine(*k)
            caches[k] = apply_feature_cache(cached_engines[k], cache)
    cached: dict[tuple[int, str, bool], list[_Run]] = defaultdict(list)
    skipped: dict[tuple[int, str, bool], list[float]] = defaultdict(list)
    sw_engines = {
        (lv, mode): engine(lv, decodes[0], mode=mode) for lv in levels for mode in ("no-recache", "recache")
    }
    plain: dict[tuple[int, str, bool], list[_Run]] = defaultdict(list)
    bare: dict[tuple[int, str, bool], list[float]] = defaultdict(list)
    profiles: dict[tuple[int, str, bool], Profile] = {}
    switched: dict[tuple[int, str], list[_Run]] = defaultdict(list)
    warm_graphs: dict[tuple[int, str, bool], int] = {}
    start = _compile_counts()
    sw = [(switch_block, switch_prompt)]
    total = len(keys) * (1 + repeats) * (2 if cached_engines else 1)
    total += len(levels) * repeats * 2 if switch else 0
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    with tempfile.TemporaryDirectory() as folder:
        for k in keys:  # warm-up: allocator, caches, text K/V, the writer's first start, compilation
            before = _compile_counts()
            for eng in (engines[k], cached_engines.get(k)):
                if eng is not None:
                    with mode_of(k[2]):
                        n = blocks if k[2] else min(blocks, 4)
                        _run(eng, prompt, n, seed, writer=_open_writer(write, folder, bundle.fps))
                    tick()
            warm_graphs[k] = _compile_counts()[0] - before[0]
        measured = _compile_counts()
        for rep in range(repeats):
            for k in keys:
                eng = engines[k]
                prof = Profile(bundle) if profile and rep == repeats - 1 else nullcontext()
                with mode_of(k[2]), prof:
                    run = _run(eng, prompt, blocks, seed, writer=_open_writer(write, folder, bundle.fps))
                if profile and rep == repeats - 1:
                    profiles[k] = prof
                plain[k].append(run)
                if not k[2]:
                    with mode_of(False):
                        bare[k].append(_bare_seconds(eng, run, eng.text_kv(prompt), {}))
                tick()
                if k in cached_engines:  # right after the uncached run, so both see the same load
                    w = _open_writer(write, folder, bundle.fps)
                    with mode_of(k[2]):
                        cached[k].append(_run(cached_engines[k], prompt, blocks, seed, writer=w))
                    skipped[k].append(caches[k].counters.skipped_share)  # counters reset per stream
                    tick()
            if switch:
                for lv in levels:
                    for mode in ("no-recache", "recache"):
                        with mode_of(compiles[0]):
                            run = _run(sw_engines[(lv, mode)], prompt, blocks, seed, sw)
                        switched[(lv, mode)].append(run)
                        tick()

    end = _compile_counts()
    compile_info = {
        "graph_breaks": end[1] - start[1],
        "graphs_after_warmup": end[0] - measured[0],
    }
    rows = []
    for k in keys:
        lv, d, c = k
        eng = engines[k]
        runs = plain[k]
        st = runs[0].stats
        fpb_frames = st.frames / st.blocks
        tick_s = [sum(tr.seconds for tr in r.stats.ticks) for r in runs]
        decode_s = [statistics.median(r.stats.decode_s) for r in runs]
        write_s = [statistics.median(r.write_s) if r.write_s else 0.0 for r in runs]
        # Share of decode + write time hidden behind the ticks: 0 when they ran one after the other.
        hidden = [_hidden(r, ts) for r, ts in zip(runs, tick_s)]
        row = {
            "level": lv,
            "lag": eng.lag,
            "decode": d,
            "compiled": c,
            "compiled_graphs": warm_graphs[k] if c else None,
            **(compile_info if c else {}),
            "write": write,
            "attention": attention,
            "blocks": blocks,
            "frames": st.frames,
            "fps": statistics.median(_steady_fps(r, fpb_frames) for r in runs),
            "fps_overall": statistics.median(r.stats.fps for r in runs),
            "fps_e2e": statistics.median(st.frames / r.wall_s for r in runs),
            "fps_ticks": statistics.median(st.frames / t for t in tick_s),
            "fps_bare": statistics.median(st.frames / b for b in bare[k]) if bare[k] else None,
            "decode_ms_per_block": 1000 * statistics.median(decode_s),
            "write_ms_per_block": 1000 * statistics.median(write_s),
            "overlap_pct": 100 * statistics.median(hidden),
            "ttff_s": statistics.median(r.stats.ttff_s for r in runs),
            "latency_p50_s": statistics.median(
                float(np.percentile(r.stats.block_latency_s, 50)) for r in runs
            ),
            "latency_p95_s": statistics.median(
                float(np.percentile(r.stats.block_latency_s, 95)) for r in runs
            ),
            "ticks": len(st.ticks),
            "forwards": st.counters.forwards,
            "block_forwards": st.counters.block_forwards,
            "tick_s_total": statistics.median(tick_s),
            "bare_forward_s_total": statistics.median(bare[k]) if bare[k] else None,
            "engine_overhead_pct": statistics.median(100.0 * (t - b) / b for t, b in zip(tick_s, bare[k]))
            if bare[k]
            else None,
        }
        if switch and d == decodes[0] and c == compiles[0]:
            row.update(
                {
                    "switch_block": switch_block,
                    "switch_extra_s_no_recache": statistics.median(
                        _switch_extra(r, switch_block) for r in switched[(lv, "no-recache")]
                    ),
                    "switch_extra_s_recache": statistics.median(
                        _switch_extra(r, switch_block) for r in switched[(lv, "recache")]
                    ),
                    "recache_forward_s": statistics.median(
                        r.stats.recache_s[0] for r in switched[(lv, "recache")] if r.stats.recache_s
                    ),
                    "switch_forwards_no_recache": switched[(lv, "no-recache")][0].stats.counters.forwards
                    - st.counters.forwards,
                    "switch_forwards_recache": switched[(lv, "recache")][0].stats.counters.forwards
                    - st.counters.forwards,
                }
            )
        if k in cached:
            c_ticks = [sum(tr.seconds for tr in r.stats.ticks) for r in cached[k]]
            row.update(
                {
                    "cache_policy": cache.policy,
                    "cache_threshold": caches[k].cfg.resolved_threshold,
                    "cache_skipped_share": statistics.median(skipped[k]),
                    "cache_fps_e2e": statistics.median(st.frames / r.wall_s for r in cached[k]),
                    "cache_fps_ticks": statistics.median(st.frames / t for t in c_ticks),
                    # Per round: the cached run over the uncached run just before it.
                    "cache_speedup_e2e": statistics.median(
                        u.wall_s / c.wall_s for u, c in zip(runs, cached[k])
                    ),
                    "cache_speedup_ticks": statistics.median(u / c for u, c in zip(tick_s, c_ticks)),
                }
            )
        if k in profiles:
            last = runs[-1]
            row["profile"] = profiles[k].table(
                last.wall_s, sum(last.stats.decode_s), sum(last.write_s), overlapped=d == "thread"
            )
        rows.append(row)
    for r in rows:
        base = next(
            (
                b
                for b in rows
                if b["level"] == 0 and b["decode"] == r["decode"] and b["compiled"] == r["compiled"]
            ),
            None,
        )
        r["speedup"] = r["fps"] / base["fps"] if base else None
        r["speedup_overall"] = r["fps_overall"] / base["fps_overall"] if base else None
        r["speedup_e2e"] = r["fps_e2e"] / base["fps_e2e"] if base else None
        r["speedup_ticks"] = r["fps_ticks"] / base["fps_ticks"] if base else None
    return rows


def format_bench(rows: list[dict], info: dict, model: str) -> str:
    r0 = rows[0]
    head = (
        f"bench: model {model}; {r0['blocks']} blocks; {r0['attention']} attention; write {r0['write']}; "
        f"{info['processor']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads), "
        f"device {info['device']}, torch {info['torch']}"
    )
    if "load" in info:
        head += f"; load average {info['load']}"
    cols = [
        "level",
        "lag",
        "decode",
        "compile",
        "FPS e2e",
        "x e2e",
        "FPS ticks",
        "x ticks",
        "e2e/ticks x",
        "FPS bare",
        "dec ms/blk",
        "write ms/blk",
        "hidden",
        "TTFF s",
        "lat p50",
        "lat p95",
        "fwd",
        "blk-fwd",
        "overhead",
        "switch +s",
        "recache +s",
    ]
    with_cache = any("cache_skipped_share" in r for r in rows)
    if with_cache:
        cols += ["cache skip", "cache x e2e", "cache x ticks"]
    lines = [head, " | ".join(cols)]
    lines.append("-" * len(lines[-1]))

    def x(v) -> str:
        return f"{v:.2f}x" if v is not None else "-"

    for r in rows:
        ratio = r["speedup_e2e"] / r["speedup_ticks"] if r["speedup_e2e"] and r["speedup_ticks"] else None
        extra = []
        if with_cache:
            extra = (
                [f"{r['cache_skipped_share']:.1%}", x(r["cache_speedup_e2e"]), x(r["cache_speedup_ticks"])]
                if "cache_skipped_share" in r
                else ["-", "-", "-"]
            )
        lines.append(
            " | ".join(
                [
                    f"P{r['level']}",
                    str(r["lag"]),
                    r["decode"],
                    "on" if r["compiled"] else "off",
                    f"{r['fps_e2e']:.1f}",
                    x(r["speedup_e2e"]),
                    f"{r['fps_ticks']:.1f}",
                    x(r["speedup_ticks"]),
                    f"{100 * ratio:.0f}%" if ratio is not None else "-",
                    f"{r['fps_bare']:.1f}" if r["fps_bare"] is not None else "-",
                    f"{r['decode_ms_per_block']:.1f}",
                    f"{r['write_ms_per_block']:.1f}",
                    f"{r['overlap_pct']:.0f}%",
                    f"{r['ttff_s']:.3f}",
                    f"{r['latency_p50_s']:.3f}",
                    f"{r['latency_p95_s']:.3f}",
                    str(r["forwards"]),
                    str(r["block_forwards"]),
                    f"{r['engine_overhead_pct']:+.1f}%" if r["engine_overhead_pct"] is not None else "-",
                    f"{r['switch_extra_s_no_recache']:+.3f}" if "switch_extra_s_no_recache" in r else "-",
                    f"{r['switch_extra_s_recache']:+.3f}" if "switch_extra_s_recache" in r else "-",
                    *extra,
                ]
            )
        )
    lines.append(
        "FPS e2e: frames / wall time until the last block was written; FPS ticks: frames / the ticks' "
        "time; x: over P0 with the same decode and compile mode; e2e/ticks x: (x e2e) / (x ticks); "
        "FPS bare: frames / bare forwards of the same shapes, timed between the runs (eager runs "
        "only); dec, write: median per block; "
        "hidden: share of decode + write time overlapped with the ticks; overhead: ticks vs bare "
        "forwards; switch/recache +s: extra latency at a prompt switch without/with re-cache"
    )
    if with_cache:
        r = next(r for r in rows if "cache_skipped_share" in r)
        lines.append(
            f"cache {r['cache_policy']} (threshold {r['cache_threshold']}): skip: share of DiT-block "
            "computations skipped; x e2e, x ticks: cached run over the uncached run of the same level, "
            "decode mode and round (median over rounds)"
        )
    compiled = [r for r in rows if r["compiled"]]
    if compiled:
        per_level = ", ".join(f"P{r['level']} {r['compiled_graphs']}" for r in compiled)
        lines.append(
            f"compiled: graphs compiled in each level's warm-up: {per_level}; graph breaks "
            f"{compiled[0]['graph_breaks']}; graphs compiled in the measured runs "
            f"{compiled[0]['graphs_after_warmup']}"
        )
    for r in rows:
        if "profile" in r:
            c = "compiled" if r["compiled"] else "eager"
            lines += ["", f"profile P{r['level']} decode {r['decode']} {c} (last run):", r["profile"]]
    return "\n".join(lines)
