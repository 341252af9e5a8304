"""``vidcascade eval``: quality of every cascade configuration on the world's prompts."""

from __future__ import annotations

import argparse
import json


def add_eval_parser(sub, add_model_args, levels_type) -> None:
    e = sub.add_parser("eval", help="quality per cascade level and attention mode")
    add_model_args(e)
    e.add_argument("--levels", type=levels_type, default=None, help="comma-separated levels (default: all)")
    e.add_argument("--attention", default="causal,bidirectional", help="comma-separated attention modes")
    e.add_argument(
        "--freshness",
        default="joint",
        help="comma-separated in-flight K/V freshness: joint and/or per_tick (stale by a tick)",
    )
    e.add_argument("--prompts", type=int, default=64, help="prompts x seeds per configuration")
    e.add_argument(
        "--prompt-set",
        choices=["eval", "validation"],
        default="eval",
        help="eval: the reported set; validation: a disjoint set for choosing settings",
    )
    e.add_argument("--blocks", type=int, default=8, help="blocks per video")
    e.add_argument(
        "--long-prompts",
        type=int,
        default=8,
        help="long videos per configuration (drift), on the first N prompts (at most --prompts)",
    )
    e.add_argument("--long-blocks", type=int, default=60, help="blocks per long video")
    e.add_argument("--no-switch-check", action="store_true", help="skip the prompt-switch check")
    e.add_argument("--json", dest="json_path", default=None, metavar="FILE")
    # Feature cache (vidcascade.caching): every video is also made cached and compared.
    e.add_argument(
        "--cache",
        choices=["none", "bwcache", "flowcache"],
        default="none",
        help="also run this feature cache",
    )
    e.add_argument("--cache-threshold", type=float, default=None, help="feature cache threshold")


def cmd_eval(args: argparse.Namespace, load_bundle) -> int:
    from tqdm import tqdm

    from .quality import format_by_objects, format_eval, run_eval
    from .switch_check import format_switch, run_switch_check

    modes = [m.strip() for m in args.attention.split(",") if m.strip()]
    for m in modes:
        if m not in ("causal", "bidirectional"):
            raise ValueError(f"--attention: unknown mode {m!r}; expected causal and/or bidirectional")
    if args.prompts < 1 or args.blocks < 2:
        raise ValueError(f"need --prompts >= 1 and --blocks >= 2, got {args.prompts}, {args.blocks}")
    if not 0 <= args.long_prompts <= args.prompts:
        # The long videos reuse the first prompts of the set; more would silently be fewer.
        raise ValueError(
            f"--long-prompts must be in 0..--prompts ({args.prompts}): the long videos use the first "
            f"prompts of the set; got {args.long_prompts}"
        )
    bundle = load_bundle(args)
    levels = args.levels if args.levels is not None else list(range(bundle.sampling.num_steps + 1))
    for lv in levels:
        if not 0 <= lv <= bundle.sampling.num_steps:
            raise ValueError(f"--levels: {lv} is out of range 0..{bundle.sampling.num_steps}")
    fresh = [f.strip() for f in args.freshness.split(",") if f.strip()]
    for f in fresh:
        if f not in ("joint", "per_tick"):
            raise ValueError(f"--freshness: unknown mode {f!r}; expected joint and/or per_tick")
    configs = [
        (lv, m, f)
        for f in fresh
        for lv in levels
        for m in (modes if lv > 0 else modes[:1])
        if not (lv == 0 and f == "per_tick")
    ]
    bar = tqdm(total=1, unit="video", leave=False, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        rows = run_eval(
            bundle,
            configs,
            args.prompts,
            args.blocks,
            args.long_prompts,
            args.long_blocks,
            progress,
            prompt_set=args.prompt_set,
            feature_cache=_feature_cache(args),
        )
    finally:
        bar.close()
    print(format_eval(rows, bundle.name))
    if args.cache != "none":
        print(_format_cache(rows, args.cache))
    print(format_by_objects(rows))
    switch_rows = []
    if not args.no_switch_check:
        switch_rows = run_switch_check(bundle, sorted({0, max(levels)}), modes[-1])
        print(format_switch(switch_rows))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"model": bundle.name, "configs": rows, "switch": switch_rows}, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0


def _feature_cache(args: argparse.Namespace):
    if args.cache == "none":
        return None
    from ..config import FeatureCacheConfig

    return FeatureCacheConfig(policy=args.cache, threshold=args.cache_threshold)


def _format_cache(rows: list[dict], policy: str) -> str:
    lines = [
        f"feature cache {policy} against the uncached videos of the same seeds:",
        "| level | attention | skipped | PSNR | SSIM | colour | shape | motion |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| P{r['level']} | {r['attention']} | {r['cache_skipped_share']:.1%} | "
            f"{r['cache_psnr_vs_uncached']:.2f} | {r['cache_ssim_vs_uncached']:.4f} | "
            f"{r['cache_color_acc']:.3f} | {r['cache_shape_acc']:.3f} | {r['cache_motion_acc']:.3f} |"
        )
    return "\n".join(lines)
