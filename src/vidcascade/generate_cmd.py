"""``vidcascade generate``: check the flags and the output path before any model work, write each
block to the file as it finishes, and say exactly what was written.

The result line (stdout), e.g.::

    wrote demo.mp4: 24 frames 256x256 (64x64 upscaled 4x) from 8 blocks, level P4 (lag 1, causal),
    61.5 FPS, time to first frame 0.100 s, 0.39 s total; model embedded

A run stopped by SIGINT, SIGTERM or SIGHUP writes the frames made so far and says
``from 3 of 8 blocks ...; stopped by SIGTERM`` (exit status 128 + signal); a run that fails after
some blocks writes them too and then reports the error (exit status 1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CliError, RunError, Stopped, one_line
from .io.output import check_output_path
from .io.record import Recording, record

log = logging.getLogger("vidcascade")

NOTHING_WRITTEN = "before the first block was made; nothing written"


def check_generate_args(args) -> Path:
    """Every check that needs no model, so that a bad value costs no loading; returns the output path."""
    from .config import CacheConfig, ConfigError, SamplingConfig

    out = check_output_path(args.out)
    if args.blocks < 1:
        raise CliError(f"--blocks must be >= 1, got {args.blocks}")
    if args.sink_bias is not None:
        try:
            CacheConfig(sink_bias=args.sink_bias)
        except ConfigError as e:
            raise CliError(f"--sink-bias: {e}") from None
    if args.guidance is not None:
        try:
            SamplingConfig(guidance=args.guidance)
        except ConfigError as e:
            raise CliError(f"--guidance: {e}") from None
    seen: set[int] = set()
    for block, prompt in args.switch:
        if block >= args.blocks:
            raise CliError(
                f"--switch {block}:{prompt}: switch at block {block} but the video has blocks "
                f"0..{args.blocks - 1} (--blocks {args.blocks})"
            )
        if block in seen:
            raise CliError(f"--switch: two prompt switches at block {block}")
        seen.add(block)
    return out


def run_generate(args, cascade, out: Path, load) -> int:
    """One process: load the model with ``load(args)``, stream the blocks into ``out``."""
    from .caching import apply_feature_cache
    from .engine.engine import Engine
    from .feature_cache_flags import feature_cache_config
    from .io.writers import open_writer

    with before_first_block():
        bundle = load(args)
        engine = Engine(bundle, cascade, decode=getattr(args, "decode", None))
        engine.plan(args.blocks)  # validates level/lag against the model's step count before any work
        fc = apply_feature_cache(engine, feature_cache_config(args, bundle.feature_cache))
    rec = record_stream(engine, args, open_writer(out, bundle.fps))
    if fc is not None:
        c = fc.counters
        log.info(
            "feature cache %s: %d of %d DiT-block rows skipped",
            fc.cfg.policy,
            c.skipped,
            c.skipped + c.computed,
        )
    return report(rec, engine, bundle, args.blocks)


def record_stream(engine, args, writer) -> Recording:
    """``engine.stream`` into ``writer`` with a progress bar (shown on a terminal only)."""
    from tqdm import tqdm

    bar = tqdm(total=args.blocks, unit="block", disable=None, leave=False)
    stream = engine.stream(args.prompt, args.blocks, seed=args.seed, switches=args.switch)
    try:  # a stop or a failure once the stream runs is in the Recording
        rec = record((o.frames[0] for o in stream), writer, on_block=lambda n: bar.update(1))
    finally:
        bar.close()
    if rec.written is None and rec.stopped is not None:
        rec.stopped.note = NOTHING_WRITTEN
        raise rec.stopped
    return rec


@contextmanager
def before_first_block() -> Iterator[None]:
    """A stop inside says that nothing was written (the checks, the imports, the model load)."""
    try:
        yield
    except Stopped as e:
        e.note = e.note or NOTHING_WRITTEN
        raise


def report(rec: Recording, engine, bundle, asked: int, *, mode: str = "", ranks: str = "") -> int:
    """Print the result line; return the exit status, or raise ``RunError`` when the run failed.

    ``mode`` follows the cascade description and ``ranks`` the timings (``--parallel temporal``).
    """
    w = rec.written
    st = engine.stats
    of = f"{rec.blocks} of {asked}" if rec.blocks != asked else f"{asked}"
    of += " block" if asked == 1 else " blocks"
    untrained = "" if bundle.trained else f" [model {bundle.name}: untrained stand-in]"
    end = f"; stopped by {rec.stopped.name}" if rec.stopped is not None else ""
    end += f"; ended by an error after block {rec.blocks - 1}" if rec.error is not None else ""
    print(
        f"wrote {w.path}: {w.describe()} from {of}, level P{engine.level} (lag {engine.lag}, "
        f"{engine.cascade.attention}){mode}, {st.fps:.1f} FPS, time to first frame {st.ttff_s:.3f} s, "
        f"{st.seconds:.2f} s total; {ranks}model {bundle.name}{untrained}{end}",
        flush=True,
    )
    if rec.error is not None:
        raise RunError(
            f"{one_line(rec.error)} (after {rec.blocks} of {asked} blocks: the {rec.frames} frames made "
            f"before it are in '{w.path}')"
        ) from rec.error
    if rec.stopped is not None:
        return 128 + rec.stopped.signum
    return 0
