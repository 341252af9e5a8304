"""``python -m vidcascade.caching.bench``: feature caches against the uncached run, side by side.

Per step count S and level (0 and the fully parallel S), every configuration generates the same
prompts x seeds; the configurations run interleaved (a rotating order per prompt) so that load on
a shared machine hits them alike. Per configuration: the share of (video block, DiT block)
computations skipped, wall speedup against uncached (whole stream, and DiT ticks only), PSNR /
SSIM of the frames against the uncached frames of the same seed, and colour / shape / motion
accuracy against the prompt (eval's detectors). Then a step-reduced baseline: the uncached engine
with S' steps, S' + 1 = the DiT-block computations per video block that the first cache
configuration used, scored against the full run (BWCache's sanity check).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time

import numpy as np
import torch

from ..config import CascadeConfig, FeatureCacheConfig
from ..engine.engine import Engine
from ..eval.bench import machine_info
from ..eval.detectors import aggregate_matches
from ..eval.metrics import psnr, ssim
from ..eval.quality import _scores, eval_items
from ..weights.registry import load_bundle, with_steps
from . import apply_feature_cache

log = logging.getLogger(__name__)


def _engine(bundle, steps: int, level: int, cache: FeatureCacheConfig | None):
    b = copy.copy(bundle)
    b.sampling = with_steps(bundle.sampling, steps)
    eng = Engine(b, CascadeConfig(level=level))
    fc = apply_feature_cache(eng, cache) if cache is not None else None
    return eng, fc


def _one(eng: Engine, fc, item, blocks: int) -> dict:
    t0 = time.perf_counter()
    video = eng.generate(item.prompt, blocks, seed=item.seed)
    wall = time.perf_counter() - t0
    return {
        "frames": video.frames[0],
        "wall_s": wall,
        "dit_s": sum(t.seconds for t in video.stats.ticks),
        "skipped_share": fc.counters.skipped_share if fc is not None else 0.0,
    }


def _row(label, steps, level, runs, ref_runs, items, fpb, ref_label="uncached") -> dict:
    scores = [_scores(r["frames"], it.attrs, fpb) for r, it in zip(runs, items)]
    acc = aggregate_matches(scores)
    ps = [psnr(r["frames"], q["frames"]) for r, q in zip(runs, ref_runs)]
    ss = [ssim(r["frames"], q["frames"]) for r, q in zip(runs, ref_runs)]
    return {
        "config": label,
        "steps": steps,
        "level": level,
        "prompts": len(runs),
        "skipped_share": statistics.fmean(r["skipped_share"] for r in runs),
        "wall_s": statistics.fmean(r["wall_s"] for r in runs),
        "dit_s": statistics.fmean(r["dit_s"] for r in runs),
        "speedup_wall": sum(q["wall_s"] for q in ref_runs) / sum(r["wall_s"] for r in runs),
        "speedup_dit": sum(q["dit_s"] for q in ref_runs) / sum(r["dit_s"] for r in runs),
        "psnr_vs_full": float(np.mean([min(p, 100.0) for p in ps])),
        "ssim_vs_full": float(np.mean(ss)),
        "color_acc": acc["color"],
        "shape_acc": acc["shape"],
        "motion_acc": acc["motion"],
        "reference": ref_label,
    }


def run_cache_bench(
    bundle, steps: int, level: int, configs: list[tuple[str, FeatureCacheConfig | None]], items, blocks: int
) -> list[dict]:
    """One (S, level): ``configs`` (the first must be the uncached one, None) interleaved."""
    fpb = bundle.sampling.frames_per_block
    engines = {label: _engine(bundle, steps, level, cfg) for label, cfg in configs}
    for eng, _ in engines.values():  # warm-up: first-call allocations are not timed
        eng.generate("a red circle", 2, seed=0)
    runs: dict[str, list[dict]] = {label: [] for label, _ in configs}
    labels = [label for label, _ in configs]
    for k, it in enumerate(items):
        for label in labels[k % len(labels) :] + labels[: k % len(labels)]:
            eng, fc = engines[label]
            runs[label].append(_one(eng, fc, it, blocks))
        log.info("S=%d P%d: prompt %d/%d", steps, level, k + 1, len(items))
    ref = runs[labels[0]]
    rows = [_row(label, steps, level, runs[label], ref, items, fpb) for label in labels]
    # Step-reduced baselines: the uncached engine with as many DiT-block computations per video
    # block as each cache configuration used (one run per distinct step count).
    reduced_runs: dict[int, list[dict]] = {}
    for r in rows[1:]:
        reduced = max(1, round((1.0 - r["skipped_share"]) * (steps + 1)) - 1)
        r["equal_compute_steps"] = reduced
        if reduced not in reduced_runs and reduced < steps:
            eng, _ = _engine(bundle, reduced, 0 if level == 0 else reduced, None)
            reduced_runs[reduced] = [_one(eng, None, it, blocks) for it in items]
    for reduced in sorted(reduced_runs, reverse=True):
        users = ", ".join(r["config"] for r in rows[1:] if r.get("equal_compute_steps") == reduced)
        row = _row(
            f"{reduced} steps (= compute of {users})", steps, level, reduced_runs[reduced], ref, items, fpb
        )
        row["reduced_steps"] = reduced
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (
        "| S | level | config | skipped | wall speedup | DiT speedup | PSNR vs full | SSIM vs full "
        "| colour | shape | motion |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    base: dict[tuple[int, int], dict] = {}
    for r in rows:
        key = (r["steps"], r["level"])
        base.setdefault(key, r)
        b = base[key]
        d = {k: r[f"{k}_acc"] - b[f"{k}_acc"] for k in ("color", "shape", "motion")}
        acc = " | ".join(f"{r[f'{k}_acc']:.3f} ({d[k]:+.3f})" for k in ("color", "shape", "motion"))
        red = "reduced_steps" in r
        wall = "-" if red else f"{r['speedup_wall']:.2f}x"
        dit = "-" if red else f"{r['speedup_dit']:.2f}x"
        lines.append(
            f"| {r['steps']} | P{r['level']} | {r['config']} | {r['skipped_share']:.1%} | {wall} | {dit} | "
            f"{r['psnr_vs_full']:.2f} | {r['ssim_vs_full']:.4f} | {acc} |"
        )
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vidcascade.caching.bench", description=__doc__)
    ap.add_argument("--model", default="embedded-teacher")
    ap.add_argument("--steps", type=_ints, default=[16, 32, 50], help="comma-separated step counts")
    ap.add_argument("--levels", default="0,S", help="comma-separated levels; S = fully parallel")
    ap.add_argument("--bwcache", type=_floats, default=[0.15, 0.08, 0.3], help="BWCache thresholds")
    ap.add_argument("--bwcache-paper", type=_floats, default=[], help="BWCache thresholds, paper variant")
    ap.add_argument("--flowcache", type=_floats, default=[0.015], help="FlowCache thresholds")
    ap.add_argument("--stale-kv", action="store_true", help="also BWCache (first threshold), stale K/V")
    ap.add_argument("--dit-block", action="store_true", help="also BWCache per (video block, DiT block)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-set", choices=["eval", "validation"], default="eval")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model, device=args.device)
    items = eval_items(args.prompts, prompt_set=args.prompt_set)
    configs: list[tuple[str, FeatureCacheConfig | None]] = [("uncached", None)]
    for t in args.bwcache:
        configs.append((f"bwcache {t:g}", FeatureCacheConfig(policy="bwcache", threshold=t)))
    for t in args.bwcache_paper:
        cfg = FeatureCacheConfig(policy="bwcache", threshold=t, variant="paper")
        configs.append((f"bwcache-paper {t:g}", cfg))
    for t in args.flowcache:
        configs.append((f"flowcache {t:g}", FeatureCacheConfig(policy="flowcache", threshold=t)))
    if args.dit_block:
        t = args.bwcache[0]
        cfg = FeatureCacheConfig(policy="bwcache", threshold=t, granularity="dit_block")
        configs.append((f"bwcache {t:g} per DiT block", cfg))
    rows: list[dict] = []
    for steps in args.steps:
        for lv in [lv.strip() for lv in args.levels.split(",") if lv.strip()]:
            level = steps if lv == "S" else int(lv)
            cfgs = list(configs)
            if args.stale_kv and level > 0:
                t = args.bwcache[0]
                cfgs.append(
                    (
                        f"bwcache {t:g} stale K/V",
                        FeatureCacheConfig(policy="bwcache", threshold=t, kv="stale"),
                    )
                )
            rows += run_cache_bench(bundle, steps, level, cfgs, items, args.blocks)
            print(format_rows([r for r in rows if r["steps"] == steps and r["level"] == level]), flush=True)
            if args.json_path:
                out = {
                    "machine": machine_info(bundle.device),
                    "model": bundle.name,
                    "args": vars(args),
                    "rows": rows,
                }
                with open(args.json_path, "w") as f:
                    json.dump(out, f, indent=2)
    print(
        f"\nmodel {bundle.name}, {args.prompts} {args.prompt_set} prompts x {args.blocks} blocks, "
        f"{args.threads} thread(s)"
    )
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
