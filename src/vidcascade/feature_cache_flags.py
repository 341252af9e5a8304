"""The --cache* flags of `vidcascade generate`, `bench` and `serve`, and the FeatureCacheConfig they make."""

from __future__ import annotations

import argparse

from .errors import CliError


def add_feature_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        choices=["none", "bwcache", "flowcache"],
        default=None,
        help="feature cache: reuse DiT-block residuals between denoising steps (docs/caching.md); "
        "default: the model's own (manifest feature_cache), else none",
    )
    p.add_argument(
        "--cache-threshold", type=float, default=None, help="reuse below this indicator (default: policy's)"
    )
    p.add_argument(
        "--cache-interval", type=int, default=None, help="BWCache R: steps reused (default: 10%% of S)"
    )
    p.add_argument(
        "--cache-variant", choices=["code", "paper"], default=None, help="BWCache: released code or paper"
    )
    p.add_argument(
        "--cache-granularity",
        choices=["stack", "dit_block"],
        default=None,
        help="BWCache: one decision per video block, or per (video block, DiT block)",
    )
    p.add_argument(
        "--cache-kv",
        choices=["fresh", "stale"],
        default=None,
        help="K/V a skipping block offers the other in-flight blocks",
    )


def feature_cache_config(args, default=None):
    """The FeatureCacheConfig of the --cache* flags over the model's own ``default``."""
    import dataclasses

    from .config import ConfigError, FeatureCacheConfig

    base = default or FeatureCacheConfig()
    if args.cache is not None and args.cache != base.policy:
        base = FeatureCacheConfig()  # another policy: the model's threshold etc. were for its own
    given = {
        "policy": args.cache,
        "threshold": args.cache_threshold,
        "interval": args.cache_interval,
        "variant": args.cache_variant,
        "granularity": args.cache_granularity,
        "kv": args.cache_kv,
    }
    try:
        return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    except ConfigError as e:
        raise CliError(f"--cache: {e}") from None
