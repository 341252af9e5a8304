"""Speed and quality of temporal parallelism, ``joint`` against ``per_tick`` K/V, in one run.

Per (level, K/V mode), measured on every rank and averaged over ranks: compute seconds per tick
(tick wall time minus the time inside collectives), communication seconds per tick (time inside
collectives, which includes waiting for slower ranks), bytes received per tick, and on rank 0 the
steady-state FPS (decode included) and time to first frame. Modes and levels run round-robin
``repeats`` times after a warm-up; medians are reported.

Quality: per_tick output against the joint output of the same ranks, level, prompt and seed
(joint equals the single-process run): PSNR and SSIM of the frames, relative L2 error of the
latents, and the block-boundary jump of both.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..config import CascadeConfig, ConfigError
from ..eval.metrics import boundary_jump, psnr, ssim
from ..weights.bundle import Bundle
from .comm import Comm
from .engine import DistEngine

MODES = ("joint", "per_tick")


@dataclass
class _Run:
    ranks: list[dict]
    """Per rank: ticks, tick_s, comm_s, bytes (sums over the run)."""
    fps: float = 0.0
    fps_overall: float = 0.0
    ttff_s: float = 0.0
    frames: np.ndarray | None = None
    """Rank 0: uint8 [T, H, W, 3]."""
    latents: torch.Tensor | None = None


def _run(engine: DistEngine, prompt: str, blocks: int, seed: int) -> _Run:
    comm = engine.comm
    comm.barrier()  # start together
    outs = list(engine.stream(prompt, blocks, seed=seed))
    ex, st = engine.executor, engine.stats
    mine = {
        "ticks": len(st.ticks),
        "tick_s": sum(t.seconds for t in st.ticks),
        "comm_s": sum(c.seconds for c in ex.tick_comm),
        "bytes": sum(c.bytes for c in ex.tick_comm),
    }
    run = _Run(comm.all_gather_object(mine))
    if outs:
        ready = [o.ready_s for o in outs]
        per_block = st.frames / len(outs)
        run.fps_overall = st.fps
        run.fps = per_block * (len(ready) - 1) / (ready[-1] - ready[0]) if len(ready) > 1 else st.fps
        run.ttff_s = st.ttff_s
        run.frames = np.concatenate([o.frames[0] for o in outs], axis=0)
        run.latents = torch.cat([o.latents for o in outs], dim=2)
    return run


def _speed_row(runs: list[_Run], ranks: int, level: int, lag: int, mode: str, attention: str) -> dict:
    def per_tick(key: str, reduce=statistics.mean) -> float:
        # Median over runs of the rank-reduced per-tick mean.
        return statistics.median(reduce(d[key] / d["ticks"] for d in r.ranks) for r in runs)

    def compute(r: _Run, reduce) -> float:
        return reduce((d["tick_s"] - d["comm_s"]) / d["ticks"] for d in r.ranks)

    row = {
        "ranks": ranks,
        "level": level,
        "lag": lag,
        "freshness": mode,
        "attention": attention,
        "ticks": runs[0].ranks[0]["ticks"],
        "fps": statistics.median(r.fps for r in runs),
        "fps_overall": statistics.median(r.fps_overall for r in runs),
        "ttff_s": statistics.median(r.ttff_s for r in runs),
        "tick_s": per_tick("tick_s"),
        "compute_s_per_tick": statistics.median(compute(r, statistics.mean) for r in runs),
        "compute_s_per_tick_max_rank": statistics.median(compute(r, max) for r in runs),
        "comm_s_per_tick": per_tick("comm_s"),
        "bytes_per_tick": per_tick("bytes"),
        "bytes_per_tick_max_rank": per_tick("bytes", max),
    }
    row["comm_pct"] = 100.0 * row["comm_s_per_tick"] / row["tick_s"] if row["tick_s"] > 0 else 0.0
    return row


def _quality_row(joint: _Run, per_tick: _Run, ranks: int, level: int, blocks: int) -> dict:
    fpb_out = joint.frames.shape[0] // blocks
    a, b = per_tick.latents, joint.latents
    return {
        "ranks": ranks,
        "level": level,
        "psnr_db": psnr(per_tick.frames, joint.frames),
        "ssim": ssim(per_tick.frames, joint.frames),
        "latent_rel_err": float((a - b).norm() / b.norm()),
        "boundary_jump_joint": boundary_jump(joint.frames, fpb_out),
        "boundary_jump_per_tick": boundary_jump(per_tick.frames, fpb_out),
    }


def run_temporal_bench(
    bundle: Bundle,
    comm: Comm,
    *,
    levels: list[int],
    attention: str = "causal",
    blocks: int = 12,
    repeats: int = 3,
    prompt: str = "a red circle moving right",
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Every rank calls this; rank 0's result holds the rows ({'speed': [...], 'quality': [...]})."""
    steps = bundle.sampling.num_steps
    for lv in levels:
        if not 0 <= lv <= steps:
            raise ConfigError(f"level {lv} is out of range 0..{steps} for a {steps}-step model")
    if blocks < 3:
        raise ConfigError(f"bench needs at least 3 blocks, got {blocks}")
    engines = {
        (lv, mode): DistEngine(
            bundle, CascadeConfig(level=lv, attention=attention, freshness=mode), comm, sync_timing=True
        )
        for lv in levels
        for mode in MODES
    }
    for eng in engines.values():  # warm-up: allocator, masks, text K/V
        _run(eng, prompt, min(blocks, 4), seed)
    runs: dict[tuple[int, str], list[_Run]] = defaultdict(list)
    for _ in range(repeats):
        for key, eng in engines.items():
            runs[key].append(_run(eng, prompt, blocks, seed))
    speed = [
        _speed_row(runs[(lv, mode)], comm.world_size, lv, engines[(lv, mode)].lag, mode, attention)
        for lv in levels
        for mode in MODES
    ]
    quality = []
    if comm.is_root:
        quality = [
            _quality_row(runs[(lv, "joint")][0], runs[(lv, "per_tick")][0], comm.world_size, lv, blocks)
            for lv in levels
        ]
    return {"speed": speed, "quality": quality}


def format_temporal_bench(result: dict[str, list[dict]], info: dict, model: str) -> str:
    speed, quality = result["speed"], result["quality"]
    head = (
        f"temporal bench: model {model}; {speed[0]['attention']} attention; {info['processor']} "
        f"({info['cpu_count']} cores, {info['torch_threads']} torch threads per rank), device "
        f"{info['device']}, torch {info['torch']}"
    )
    cols = ["ranks", "level", "K/V", "FPS", "FPS all", "TTFF s", "ticks", "tick ms", "compute ms",
            "max-rank ms", "comm ms", "comm %", "KiB/tick"]  # fmt: skip
    lines = [head, " | ".join(cols), "-" * len(" | ".join(cols))]
    for r in speed:
        lines.append(
            " | ".join(
                [
                    str(r["ranks"]),
                    f"P{r['level']}",
                    r["freshness"],
                    f"{r['fps']:.1f}",
                    f"{r['fps_overall']:.1f}",
                    f"{r['ttff_s']:.3f}",
                    str(r["ticks"]),
                    f"{1e3 * r['tick_s']:.1f}",
                    f"{1e3 * r['compute_s_per_tick']:.1f}",
                    f"{1e3 * r['compute_s_per_tick_max_rank']:.1f}",
                    f"{1e3 * r['comm_s_per_tick']:.1f}",
                    f"{r['comm_pct']:.0f}%",
                    f"{r['bytes_per_tick'] / 1024:.0f}",
                ]
            )
        )
    lines.append(
        "per tick, mean over ranks: compute = tick wall time minus time in collectives (max-rank: the "
        "slowest rank); comm = time in collectives incl. waiting for peers; KiB received per rank"
    )
    if quality:
        qcols = ["ranks", "level", "PSNR dB", "SSIM", "latent rel err", "jump joint", "jump per_tick"]
        lines += ["", "per_tick against joint (same ranks, level, prompt, seed)", " | ".join(qcols)]
        lines.append("-" * len(lines[-1]))
        for q in quality:
            lines.append(
                " | ".join(
                    [
                        str(q["ranks"]),
                        f"P{q['level']}",
                        f"{q['psnr_db']:.2f}",
                        f"{q['ssim']:.4f}",
                        f"{q['latent_rel_err']:.4f}",
                        f"{q['boundary_jump_joint']:.3f}",
                        f"{q['boundary_jump_per_tick']:.3f}",
                    ]
                )
            )
    return "\n".join(lines)
