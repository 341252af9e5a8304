"""Command line: parse, build config, call one function. Results go to stdout, diagnostics to the log.

Errors are one line on stderr with the exit statuses of ``errors.py``; ``--debug`` (or ``-v``) adds
the traceback. A value that starts with '-' is attached to its flag before parsing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from .errors import CliError, quiet_rank, report_error

log = logging.getLogger("vidcascade")

__all__ = ["CliError", "build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one ``--help`` away)."""

    def error(self, message: str):
        line = f"{self.prog}: error: {message} (see {self.prog} --help)"
        self.exit(2, None if quiet_rank(line, None, False) else line + "\n")


def _switch(text: str) -> tuple[int, str]:
    block, sep, prompt = text.partition(":")
    if not sep or not prompt.strip():
        raise argparse.ArgumentTypeError(f"expected BLOCK:PROMPT (e.g. 4:a blue square), got {text!r}")
    try:
        b = int(block)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected BLOCK:PROMPT with an integer BLOCK (e.g. 4:a blue square), got {text!r}"
        ) from None
    if b < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the block must be an integer >= 0, got {b}")
    return b, prompt.strip()


def _compile_modes(text: str) -> tuple[bool, ...]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in ("off", "on") for m in modes) or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"--compile-modes expects off, on or off,on, got {text!r}")
    return tuple(m == "on" for m in modes)


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
        "--positions",
        choices=["exact", "refresh"],
        default=None,
        help="RoPE positions past the model's table: exact rebase or refresh (sink kept near the "
        "window) (default: the model's own setting)",
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
    ap = Parser(prog="vidcascade", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate a video")
    g.add_argument("prompt")
    g.add_argument("--blocks", type=int, default=8, help="blocks to generate")
    _add_cascade_args(g)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="vidcascade.mp4", help="output file: .mp4, .gif or .npz")
    g.add_argument(
        "--decode",
        choices=["inline", "thread"],
        default=None,
        help="decode blocks in the tick loop or on a worker thread (default: thread on CUDA, inline on CPU)",
    )
    _add_model_args(g)
    g.add_argument(
        "--switch",
        type=_switch,
        action="append",
        default=[],
        metavar="BLOCK:PROMPT",
        help="switch to PROMPT when BLOCK starts (repeatable)",
    )
    g.add_argument("--switch-mode", choices=["no-recache", "recache", "blend"], default="no-recache")
    from .feature_cache_flags import add_feature_cache_args

    add_feature_cache_args(g)
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
    g.add_argument(
        "--decode-rank",
        action="store_true",
        help="with --parallel temporal: the last of R+1 ranks only decodes and writes (no denoising "
        "rank decodes)",
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
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    b.add_argument(
        "--decode",
        type=lambda v: tuple(v.split(",")),
        default=None,
        help="decode modes to compare, comma-separated: inline,thread (default: the engine's)",
    )
    b.add_argument(
        "--write", choices=["mp4", "gif", "npz", "none"], default="mp4", help="writer of the e2e runs"
    )
    b.add_argument("--no-switch", action="store_true", help="skip the prompt-switch runs")
    b.add_argument("--profile", action="store_true", help="print a time breakdown of each level's last run")
    b.add_argument(
        "--compile-modes",
        type=_compile_modes,
        default=None,
        help="compare the DiT eager and compiled, comma-separated: off,on (interleaved in one run; "
        "'on' compiles it; default: as --compile says)",
    )
    add_feature_cache_args(b)  # each level also runs cached, interleaved with its uncached runs
    i = sub.add_parser(
        "inspect",
        help="report what a model holds (geometry, settings, K/V memory) and whether it is usable",
        description="Report a model without running it: geometry, parameters, sampling, cache, K/V "
        "memory per cascade level, text encoder, VAE, and every problem found. Exit status 0 when "
        "usable, 1 when found but not usable, 2 when MODEL is neither a built-in nor a path.",
    )
    i.add_argument(
        "path",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="anything --model takes (embedded, random-tiny, a model folder, a `train export` folder) "
        "or a DiT checkpoint file/folder (default: the default model)",
    )
    i.add_argument("--model", default=None, help="the same as MODEL, as generate, bench and eval take it")
    i.add_argument("--height", type=int, default=None, help="pixels (default: the model's, else 480)")
    i.add_argument("--width", type=int, default=None, help="pixels (default: the model's, else 832)")
    i.add_argument("--sink-frames", type=int, default=None, help="K/V sink frames (default: the model's)")
    i.add_argument("--window-frames", type=int, default=None, help="K/V window frames (default: the model's)")
    i.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="K/V dtype (default: float32 for built-in and embedded-format models, else bfloat16)",
    )
    i.add_argument("--json", action="store_true", help="print the report as JSON")

    from .eval.cli_eval import add_eval_parser
    from .serve.cli_serve import add_serve_parsers
    from .training.cli_train import add_train_parser

    add_eval_parser(sub, _add_model_args, _levels)
    add_train_parser(sub)
    add_serve_parsers(sub, _add_model_args, _add_cascade_args, _levels)
    _debug_everywhere(ap)
    return ap


def _subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def _debug_everywhere(p: argparse.ArgumentParser) -> None:
    """``--debug`` also after the command (``vidcascade generate ... --debug``); SUPPRESS keeps a
    command's parser from overwriting the top-level value with its default."""
    sub = _subparsers(p)
    for child in sub.choices.values() if sub else ():
        if "--debug" not in child._option_string_actions:
            hidden = dict(default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            child.add_argument("--debug", action="store_true", **hidden)
        _debug_everywhere(child)


def attach_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--flag -value`` -> ``--flag=-value`` for flags that take one value.

    argparse reads a value that starts with '-' and is not a plain negative number (``-1:foo``,
    ``-1e9``) as an unknown option and says "expected one argument"; attached, the value reaches
    the flag's own check and its message. A next token that is an option of the command is left
    alone (``--out --blocks 3`` still says that --out lacks its value).
    """
    out: list[str] = []
    p, argv, i = parser, list(argv), 0
    known = set(p._option_string_actions)  # options of the command and of the levels above it
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out += argv[i:]
            break
        action = p._option_string_actions.get(tok)
        if action is not None and action.nargs is None and i + 1 < len(argv):
            nxt = argv[i + 1]
            if nxt.startswith("-") and not nxt.startswith("--") and len(nxt) > 1:
                if nxt not in known:
                    out.append(f"{tok}={nxt}")
                    i += 2
                    continue
        sub = _subparsers(p)
        if sub is not None and tok in sub.choices:
            p = sub.choices[tok]
            known |= set(p._option_string_actions)
        out.append(tok)
        i += 1
    return out


DEVICES = "cpu, cuda or cuda:N"


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {name!r}: expected {DEVICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise CliError(f"--device {name!r}: expected {DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name!r}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CliError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
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
    if getattr(args, "positions", None) is not None:
        import dataclasses

        bundle.cache = dataclasses.replace(bundle.cache, positions=args.positions)
    if args.steps is not None:
        from .weights.registry import with_steps

        try:
            bundle.sampling = with_steps(bundle.sampling, args.steps)
        except ValueError as e:
            raise CliError(f"--steps: {e}") from None
    if args.compile:
        from .engine.compile import compile_dit, tick_shape_bound

        compile_dit(bundle.dit, max_shapes=tick_shape_bound(bundle.sampling, bundle.cache))
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
    from .generate_cmd import before_first_block, check_generate_args, run_generate

    with before_first_block():
        from .config import CascadeConfig

        out = check_generate_args(args)  # before any model work (and, under torchrun, on every rank)
        _device(args.device)
        cascade = CascadeConfig(
            level=args.level,
            lag=args.lag,
            attention=args.attention,
            switch_mode=args.switch_mode,
            freshness=args.freshness,
        )
        if args.parallel == "temporal" and args.cache not in (None, "none"):
            raise CliError("--cache works in one process only; drop --parallel temporal or --cache")
        if args.decode_rank:
            _check_decode_rank(args)
    if args.parallel == "temporal":
        from .distributed.launch import generate_temporal

        return generate_temporal(args, cascade, out)
    return run_generate(args, cascade, out, _load)


def _check_decode_rank(args) -> None:
    import os

    if args.parallel != "temporal":
        raise CliError("--decode-rank works with --parallel temporal only")
    ranks = os.environ.get("WORLD_SIZE") or "1"
    if not ranks.isdigit() or int(ranks) < 2:
        raise CliError(
            f"--decode-rank needs at least 2 processes (R denoising ranks + 1 decode rank), got "
            f"WORLD_SIZE={ranks}: launch with torchrun --nproc-per-node R+1"
        )


def cmd_bench(args) -> int:
    import torch
    from tqdm import tqdm

    from .engine.engine import default_decode_mode
    from .eval.bench import format_bench, machine_info, run_bench
    from .feature_cache_flags import feature_cache_config

    if args.json_path:  # before the benchmark, not after it
        from .io.output import check_file_target

        check_file_target(args.json_path, "a file name", what="--json")
    if args.compile_modes is not None and any(args.compile_modes):
        args.compile = True  # compiled once; eager runs bypass the compiled trunk
    if args.parallel == "temporal":
        if args.cache not in (None, "none"):
            raise CliError("--cache works in one process only; drop --parallel temporal or --cache")
        if args.compile_modes is not None and len(args.compile_modes) > 1:
            raise CliError("--compile-modes off,on works in one process only; drop --parallel temporal")
        from .distributed.launch import bench_temporal

        return bench_temporal(args)
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise CliError(f"--repeats must be >= 1, got {args.repeats}")
    from .engine.decode_worker import DECODE_MODES

    for d in args.decode or ():
        if d not in DECODE_MODES:
            raise CliError(f"--decode: {d!r} is not one of {', '.join(DECODE_MODES)}")
    bundle = _load(args)
    levels = args.levels if args.levels is not None else list(range(bundle.sampling.num_steps + 1))
    decodes = args.decode or (default_decode_mode(bundle.device),)
    bar = tqdm(total=1, unit="run", disable=None, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        rows = run_bench(
            bundle,
            levels,
            args.attention,
            args.blocks,
            repeats=args.repeats,
            progress=progress,
            decodes=decodes,
            write=args.write,
            switch=not args.no_switch,
            profile=args.profile,
            cache=feature_cache_config(args, bundle.feature_cache) if args.cache else None,
            compiles=args.compile_modes,
        )
    finally:
        bar.close()
    info = machine_info(bundle.device)
    info["load"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
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


def cmd_serve(args) -> int:
    if args.cmd == "loadtest":
        from .serve.loadtest import run_loadtest

        return run_loadtest(args)
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be in 1..65535, got {args.port}")
    if args.lag is not None:
        raise CliError("serve takes --level, not --lag")
    if args.parallel == "temporal" and args.cache not in (None, "none"):
        raise CliError("--cache works in one process only; drop --parallel temporal or --cache")
    from .serve import run

    return run.run_serve_temporal(args) if args.parallel == "temporal" else run.run_serve(args, _load(args))


COMMANDS = {
    "generate": cmd_generate,
    "plan": cmd_plan,
    "bench": cmd_bench,
    "inspect": cmd_inspect,
    "eval": cmd_eval,
    "train": cmd_train,
    "serve": cmd_serve,
    "loadtest": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    from .io.signals import StopSignals

    with StopSignals() as signals:  # from the start: Ctrl-C while imports run is one line too
        cmd, debug = "", False
        try:
            parser = build_parser()
            args = parser.parse_args(attach_dash_values(parser, sys.argv[1:] if argv is None else argv))
            cmd, debug = args.cmd, args.verbose or args.debug
            logging.basicConfig(
                level=logging.DEBUG if args.verbose else logging.INFO,
                format="%(levelname)s %(name)s: %(message)s",
            )
            return COMMANDS[args.cmd](args)
        except (Exception, KeyboardInterrupt) as e:
            with signals.hold(discard=True):  # a second signal must not turn the line into a traceback
                return report_error(cmd, e, debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
