"""Speed benchmark: every cascade level measured side by side in one run.

For each level: steady-state FPS (frames after the first block over the time they took), overall
FPS, time to first frame, per-block latency p50/p95, ticks, forwards, block-forwards, speedup over
level 0, the engine's overhead (tick wall time against a bare forward of the same batch timed
alone) and the extra latency at a prompt switch without and with re-cache.

Levels are run round-robin ``repeats`` times after a warm-up, and the median of each number is
reported, because this kind of machine is noisy.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..config import CascadeConfig
from ..engine.engine import Engine, RunStats
from ..weights.bundle import Bundle

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

    def __init__(self, k: list[torch.Tensor], mask: torch.Tensor | None) -> None:
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
    mask = None
    if engine.cascade.attention == "causal" and n_inflight > 1:
        from ..models.masks import inflight_mask

        mask = inflight_mask(n_inflight, engine.pool.tokens_per_block, committed_tokens, True, dev)
    # With a sink bias the engine attends through an additive mask once the window holds frames;
    # the pool is reset first, since a run with a prompt switch leaves the bias off (the next
    # stream resets it anyway).
    engine.pool.reset()
    mask = engine.pool.with_sink_bias(mask, nk - committed_tokens, nk, committed_tokens)
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


def _run(engine: Engine, prompt: str, blocks: int, seed: int, switches=()) -> _Run:
    ready = [o.ready_s for o in engine.stream(prompt, blocks, seed=seed, switches=switches)]
    return _Run(engine.stats, ready)


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
) -> list[dict]:
    steps = bundle.sampling.num_steps
    for lv in levels:
        if not 0 <= lv <= steps:
            raise ValueError(f"level {lv} is out of range 0..{steps} for a {steps}-step model")
    if blocks < 3:
        raise ValueError(f"bench needs at least 3 blocks, got {blocks}")
    switch_block = blocks // 2
    engines = {
        (lv, mode): Engine(
            bundle, CascadeConfig(level=lv, attention=attention, switch_mode=mode), sync_timing=True
        )
        for lv in levels
        for mode in ("no-recache", "recache")
    }
    plain: dict[int, list[_Run]] = defaultdict(list)
    switched: dict[tuple[int, str], list[_Run]] = defaultdict(list)
    sw = [(switch_block, switch_prompt)]
    total = len(levels) * (1 + repeats * 3)
    done = 0
    for lv in levels:  # warm-up: allocator, caches, text K/V
        _run(engines[(lv, "no-recache")], prompt, min(blocks, 4), seed)
        done += 1
        if progress:
            progress(done, total)
    for _ in range(repeats):
        for lv in levels:
            plain[lv].append(_run(engines[(lv, "no-recache")], prompt, blocks, seed))
            for mode in ("no-recache", "recache"):
                switched[(lv, mode)].append(_run(engines[(lv, mode)], prompt, blocks, seed, sw))
            done += 3
            if progress:
                progress(done, total)

    rows = []
    for lv in levels:
        eng = engines[(lv, "no-recache")]
        runs = plain[lv]
        fpb_frames = runs[0].stats.frames / runs[0].stats.blocks
        text_kv = eng.text_kv(prompt)
        # Engine overhead: per tick shape, the median tick time against the bare forward.
        by_shape: dict[tuple[int, int], list[float]] = defaultdict(list)
        for r in runs:
            for tr in r.stats.ticks:
                by_shape[(tr.n_inflight, tr.committed_tokens)].append(tr.seconds)
        tick_total = bare_total = 0.0
        for (n, ct), secs in by_shape.items():
            bare = bare_forward_seconds(eng, n, ct, text_kv, reps=max(3, len(secs)))
            tick_total += statistics.median(secs) * len(secs)
            bare_total += bare * len(secs)
        st = runs[0].stats
        rows.append(
            {
                "level": lv,
                "lag": eng.lag,
                "attention": attention,
                "blocks": blocks,
                "frames": st.frames,
                "fps": statistics.median(_steady_fps(r, fpb_frames) for r in runs),
                "fps_overall": statistics.median(r.stats.fps for r in runs),
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
                "tick_s_total": tick_total / len(runs),
                "bare_forward_s_total": bare_total / len(runs),
                "engine_overhead_pct": 100.0 * (tick_total - bare_total) / bare_total,
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
    base = next((r for r in rows if r["level"] == 0), None)
    for r in rows:
        r["speedup"] = r["fps"] / base["fps"] if base else None
        r["speedup_overall"] = r["fps_overall"] / base["fps_overall"] if base else None
    return rows


def format_bench(rows: list[dict], info: dict, model: str) -> str:
    head = (
        f"bench: model {model}; {rows[0]['blocks']} blocks; {rows[0]['attention']} attention; "
        f"{info['processor']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads), "
        f"device {info['device']}, torch {info['torch']}"
    )
    cols = [
        "level",
        "lag",
        "FPS",
        "speedup",
        "FPS all",
        "TTFF s",
        "lat p50",
        "lat p95",
        "ticks",
        "fwd",
        "blk-fwd",
        "overhead",
        "switch +s",
        "recache +s",
    ]
    lines = [head, " | ".join(cols)]
    lines.append("-" * len(lines[-1]))
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
        lines.append(
            " | ".join(
                [
                    f"P{r['level']}",
                    str(r["lag"]),
                    f"{r['fps']:.1f}",
                    sp,
                    f"{r['fps_overall']:.1f}",
                    f"{r['ttff_s']:.3f}",
                    f"{r['latency_p50_s']:.3f}",
                    f"{r['latency_p95_s']:.3f}",
                    str(r["ticks"]),
                    str(r["forwards"]),
                    str(r["block_forwards"]),
                    f"{r['engine_overhead_pct']:+.1f}%",
                    f"{r['switch_extra_s_no_recache']:+.3f}",
                    f"{r['switch_extra_s_recache']:+.3f}",
                ]
            )
        )
    lines.append(
        "FPS: steady-state output frames/s (decode included); overhead: tick wall time vs a bare forward "
        "of the same batch; switch/recache +s: extra latency at a prompt switch without/with re-cache"
    )
    return "\n".join(lines)
