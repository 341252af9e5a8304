"""Command line: parse, build config, call one function. Results go to stdout, diagnostics to the log."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("vidcascade")


class CliError(Exception):
    """A bad flag value: reported as one line, exit status 2."""


def _switch(text: str) -> tuple[int, str]:
    block, sep, prompt = text.partition(":")
    if not sep or not block.strip().isdigit() or not prompt.strip():
        raise argparse.ArgumentTypeError(
            f"--switch expects BLOCK:PROMPT (e.g. 4:a blue square), got {text!r}"
        )
    return int(block), prompt.strip()


def _levels(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels expects comma-separated integers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("--levels is empty")
    return out


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="built-in model name or model folder (default: the embedded model)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale, 1 = off (default: the model's own setting)",
    )
    p.add_argument(
        "--sink-bias",
        type=float,
        default=None,
        help="added to the attention logits of the K/V sink once the window holds frames, 0 = off "
        "(default: the model's own setting)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype (default: as stored; bf16 keeps Wan's fp32 islands)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the DiT (first ticks of each shape compile)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps S, evenly spaced (default: the model's own; embedded-teacher: 16-50)",
    )


def _add_feature_cache_args(p: argparse.ArgumentParser) -> None:
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


def _add_cascade_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--level", type=int, default=None, help="cascade level P (0 = sequential, S = fully parallel)"
    )
    g.add_argument("--lag", type=int, default=None, help="lag L in ticks between consecutive blocks")
    p.add_argument(
        "--attention",
        choices=["causal", "bidirectional"],
        default="causal",
        help="cross-block attention among in-flight blocks",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vidcascade", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate a video")
    g.add_argument("prompt")
    g.add_argument("--blocks", type=int, default=8, help="blocks to generate")
    _add_cascade_args(g)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="vidcascade.mp4", help="output file: .mp4, .gif or .npz")
    _add_model_args(g)
    g.add_argument(
        "--switch",
        type=_switch,
        action="append",
        default=[],
        metavar="BLOCK:PROMPT",
        help="switch to PROMPT when BLOCK starts (repeatable)",
    )
    g.add_argument("--switch-mode", choices=["no-recache", "recache"], default="no-recache")
    _add_feature_cache_args(g)
    g.add_argument(
        "--parallel",
        choices=["none", "temporal"],
        default="none",
        help="temporal: one in-flight block per rank under torchrun",
    )
    g.add_argument(
        "--freshness",
        choices=["joint", "per_tick"],
        default="joint",
        help="with --parallel temporal: how in-flight K/V is exchanged",
    )

    p = sub.add_parser("plan", help="print the tick table of a cascade plan")
    p.add_argument("--steps", type=int, required=True, help="denoising steps S")
    _add_cascade_args(p)
    p.add_argument("--blocks", type=int, required=True)
    p.add_argument("--json", action="store_true", help='print {"ticks": [[[block, stage], ...], ...]}')

    b = sub.add_parser("bench", help="measure every cascade level side by side")
    _add_model_args(b)
    b.add_argument("--blocks", type=int, default=12)
    b.add_argument("--levels", type=_levels, default=None, help="comma-separated levels (default: all)")
    b.add_argument("--attention", choices=["causal", "bidirectional"], default="causal")
    b.add_argument("--repeats", type=int, default=3, help="measured runs per level (median reported)")
    b.add_argument("--json", dest="json_path", default=None, metavar="FILE", help="write results as JSON")
    b.add_argument("--parallel", choices=["none", "temporal"], default="none")
    i = sub.add_parser("inspect", help="report what a model folder or DiT checkpoint holds, and any problem")
    i.add_argument("path", help="model folder (vidcascade.json) or DiT checkpoint file/folder")
    i.add_argument("--height", type=int, default=None, help="pixels (default: the bundle's, else 480)")
    i.add_argument("--width", type=int, default=None, help="pixels (default: the bundle's, else 832)")
    i.add_argument("--sink-frames", type=int, default=None, help="K/V sink frames (default: the bundle's)")
    i.add_argument(
        "--window-frames", type=int, default=None, help="K/V window frames (default: the bundle's)"
    )
    i.add_argument(
        "--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="K/V dtype"
    )
    i.add_argument("--json", action="store_true", help="print the report as JSON")

    from .eval.cli_eval import add_eval_parser
    from .training.cli_train import add_train_parser

    add_eval_parser(sub, _add_model_args, _levels)
    add_train_parser(sub)
    return ap


def _device(name: str):
    import torch

    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise CliError(f"--device must be cpu or cuda[:N], got {name!r}")
    return dev


def _dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def _load(args):
    from .weights.registry import load_bundle

    bundle = load_bundle(args.model, device=_device(args.device), dtype=_dtype(args.dtype))
    if not bundle.trained:
        log.warning("model %s: %s", bundle.name, bundle.description)
    if args.guidance is not None:
        import dataclasses

        bundle.sampling = dataclasses.replace(bundle.sampling, guidance=args.guidance)
    if args.sink_bias is not None:
        import dataclasses

        from .config import ConfigError

        try:
            bundle.cache = dataclasses.replace(bundle.cache, sink_bias=args.sink_bias)
        except ConfigError as e:
            raise CliError(f"--sink-bias: {e}") from None
    if args.steps is not None:
        from .weights.registry import with_steps

        try:
            bundle.sampling = with_steps(bundle.sampling, args.steps)
        except ValueError as e:
            raise CliError(f"--steps: {e}") from None
    if args.compile:
        from .weights.loading import compile_dit

        compile_dit(bundle.dit)
    return bundle


def cmd_plan(args) -> int:
    from .config import CascadeConfig
    from .scheduling.plan import build_plan, format_plan

    if args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    if args.blocks < 1:
        raise CliError(f"--blocks must be >= 1, got {args.blocks}")
    lag = CascadeConfig(level=args.level, lag=args.lag, attention=args.attention).resolve_lag(args.steps)
    plan = build_plan(args.blocks, args.steps, lag, args.attention)
    print(json.dumps(plan.to_json()) if args.json else format_plan(plan))
    return 0


def cmd_generate(args) -> int:
    from .config import CascadeConfig
    from .io.video import check_output_path

    out = check_output_path(args.out)
    if args.blocks < 1:
        raise CliError(f"--blocks must be >= 1, got {args.blocks}")
    cascade = CascadeConfig(
        level=args.level,
        lag=args.lag,
        attention=args.attention,
        switch_mode=args.switch_mode,
        freshness=args.freshness,
    )
    if args.parallel == "temporal" and args.cache not in (None, "none"):
        raise CliError("--cache works in one process only; drop --parallel temporal or --cache")
    if args.parallel == "temporal":
        from .distributed.launch import generate_temporal

        return generate_temporal(args, cascade, out)
    bundle = _load(args)
    from .engine.engine import Engine

    engine = Engine(bundle, cascade)
    from .caching import apply_feature_cache

    fc = apply_feature_cache(engine, feature_cache_config(args, bundle.feature_cache))
    engine.plan(args.blocks)  # validates level/lag against the model's step count before any work
    rc = _stream_to_file(engine, bundle, args, out)
    if fc is not None:
        c = fc.counters
        total = c.skipped + c.computed
        log.info("feature cache %s: %d of %d DiT-block rows skipped", fc.cfg.policy, c.skipped, total)
    return rc


def _stream_to_file(engine, bundle, args, out) -> int:
    import numpy as np
    from tqdm import tqdm

    from .io.video import write_video

    frames = []
    interrupted = False
    bar = tqdm(total=args.blocks, unit="block", disable=None, leave=False)
    try:
        for o in engine.stream(args.prompt, args.blocks, seed=args.seed, switches=args.switch):
            frames.append(o.frames[0])
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing the %d blocks made so far", len(frames))
    finally:
        bar.close()
    if not frames:
        print("no frames were made; nothing written", file=sys.stderr)
        return 130 if interrupted else 1
    video = np.concatenate(frames, axis=0)
    write_video(out, video, bundle.fps)
    st = engine.stats
    note = "" if bundle.trained else f" [model {bundle.name}: untrained stand-in]"
    print(
        f"wrote {out}: {video.shape[0]} frames {video.shape[2]}x{video.shape[1]} from {len(frames)} blocks, "
        f"level P{engine.level} (lag {engine.lag}, {engine.cascade.attention}), {st.fps:.1f} FPS, "
        f"time to first frame {st.ttff_s:.3f} s, {st.seconds:.2f} s total; model {bundle.name}{note}"
        + (" (interrupted)" if interrupted else "")
    )
    return 130 if interrupted else 0


def cmd_bench(args) -> int:
    from tqdm import tqdm

    from .eval.bench import format_bench, machine_info, run_bench

    if args.parallel == "temporal":
        from .distributed.launch import bench_temporal

        return bench_temporal(args)
    bundle = _load(args)
    levels = args.levels if args.levels is not None else list(range(bundle.sampling.num_steps + 1))
    if args.repeats < 1:
        raise CliError(f"--repeats must be >= 1, got {args.repeats}")
    bar = tqdm(total=1, unit="run", disable=None, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        rows = run_bench(bundle, levels, args.attention, args.blocks, repeats=args.repeats, progress=progress)
    finally:
        bar.close()
    info = machine_info(bundle.device)
    print(format_bench(rows, info, bundle.name))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"machine": info, "model": bundle.name, "levels": rows}, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0


def cmd_inspect(args) -> int:
    from .inspect_cmd import run_inspect

    return run_inspect(args)


def cmd_eval(args) -> int:
    from .eval.cli_eval import cmd_eval as run

    return run(args, _load)


def cmd_train(args) -> int:
    from .training.cli_train import cmd_train as run

    return run(args)


COMMANDS = {
    "generate": cmd_generate,
    "plan": cmd_plan,
    "bench": cmd_bench,
    "inspect": cmd_inspect,
    "eval": cmd_eval,
    "train": cmd_train,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from .config import ConfigError

    try:
        return COMMANDS[args.cmd](args)
    except (CliError, ConfigError, ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"vidcascade {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
