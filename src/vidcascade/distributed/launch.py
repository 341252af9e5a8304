"""Entry points of ``--parallel temporal``: one call per rank, launched by torchrun.

    torchrun --standalone --nproc-per-node R -m vidcascade generate PROMPT --parallel temporal ...
    torchrun --nnodes N --nproc-per-node R --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m vidcascade generate PROMPT --parallel temporal ...
    torchrun --standalone --nproc-per-node R -m vidcascade bench --parallel temporal ...

Without torchrun (WORLD_SIZE unset) the job is a single rank and no process group is made. Every
rank loads the model and checks at start that all ranks run the same job with the same weights;
rank 0 decodes and writes the output, block by block; the other ranks write nothing.

Errors: the flags and the output path are checked before the job starts, on every rank alike. An
error that every rank sees alike (a bad value) is printed by rank 0 alone, as the one line the
single process prints; a failure of one rank is printed by that rank as ``rank r/R failed: ...``.
Each failing rank also writes its line to torchrun's error file, so that torchrun's closing summary
names it. The rank exits non-zero; torchrun then stops the others, and collectives time out
(VIDCASCADE_DIST_TIMEOUT_S) rather than wait forever.
"""

from __future__ import annotations

import json
import logging

import torch

from ..config import CascadeConfig, ConfigError
from ..errors import RunError, is_usage_error, one_line
from .comm import Comm, init_comm, shutdown
from .engine import DistEngine

log = logging.getLogger(__name__)


def _rank_logging(comm: Comm, verbose: bool) -> None:
    """Prefix log lines with the rank; ranks other than 0 only report warnings and errors."""
    if comm.world_size == 1:
        return
    fmt = logging.Formatter(f"%(levelname)s [rank {comm.rank}] %(name)s: %(message)s")
    for h in logging.getLogger().handlers:
        h.setFormatter(fmt)
    if not comm.is_root and not verbose:
        logging.getLogger("vidcascade").setLevel(logging.WARNING)


def _load(args, comm: Comm):
    from ..weights.registry import load_bundle

    dtype = getattr(torch, args.dtype) if args.dtype else None
    bundle = load_bundle(args.model, device=comm.device, dtype=dtype)
    if not bundle.trained and comm.is_root:
        log.warning("model %s: %s", bundle.name, bundle.description)
    if args.compile:
        from ..weights.loading import compile_dit

        compile_dit(bundle.dit)  # the K/V exchange inside the forward runs eager (graph breaks)
    return bundle


def _run_as_rank(args, body, *, timed: bool = False) -> int:
    """Join the job, run ``body(comm)`` and leave. A failure of this rank alone is re-raised as
    ``rank r/R failed: ...``; errors every rank sees alike (bad values, a stop) go up unchanged."""
    comm = init_comm(args.device, timed=timed)
    _rank_logging(comm, args.verbose)
    try:
        rc = body(comm)
    except Exception as e:
        if comm.world_size > 1 and not (is_usage_error(e) or isinstance(e, RunError)):
            raise RunError(f"rank {comm.rank}/{comm.world_size} failed: {one_line(e)}") from e
        raise
    shutdown(comm)
    return rc


def _rank_stats(engine: DistEngine) -> dict:
    ex = engine.executor
    return {
        "tick_s": sum(t.seconds for t in engine.stats.ticks),
        "comm_s": sum(c.seconds for c in ex.tick_comm),
        "bytes": sum(c.bytes for c in ex.tick_comm),
        "block_forwards": ex.counters.block_forwards,
    }


def generate_temporal(args, cascade: CascadeConfig, out) -> int:
    """``vidcascade generate ... --parallel temporal`` on this rank (flags already checked)."""
    from ..generate_cmd import before_first_block, record_stream, report
    from ..io.writers import open_writer

    def body(comm: Comm) -> int:
        with before_first_block():
            bundle = _load(args, comm)
            engine = DistEngine(bundle, cascade, comm)
            engine.plan(args.blocks)  # validates level/lag before any exchange
        if not comm.is_root:
            for _ in engine.stream(args.prompt, args.blocks, seed=args.seed, switches=args.switch):
                pass
            comm.all_gather_object(_rank_stats(engine))
            return 0
        rec = record_stream(engine, args, open_writer(out, bundle.fps))
        per_rank = ""
        if rec.stopped is None and rec.error is None:  # else the other ranks did not finish
            ranks = comm.all_gather_object(_rank_stats(engine))
            per_rank = ", ".join(
                f"r{r}: {d['block_forwards']} block-fwd, comm {d['comm_s']:.2f} s, "
                f"{d['bytes'] / 2**20:.1f} MiB"
                for r, d in enumerate(ranks)
            )
        mode = f", temporal parallel on {comm.world_size} rank(s), {cascade.freshness} K/V"
        return report(rec, engine, bundle, args.blocks, mode=mode, ranks=f"{per_rank}; " if per_rank else "")

    return _run_as_rank(args, body)


def bench_temporal(args) -> int:
    """``vidcascade bench --parallel temporal``: joint and per_tick on all ranks, then on rank 0 alone."""
    from ..eval.bench import machine_info
    from .bench import format_temporal_bench, run_temporal_bench

    def body(comm: Comm) -> int:
        bundle = _load(args, comm)
        steps = bundle.sampling.num_steps
        levels = args.levels if args.levels is not None else [steps]
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
        probe = DistEngine(bundle, CascadeConfig(level=levels[0], attention=args.attention), comm)
        probe.check_ranks("bench", args.blocks, 0, [(args.repeats, ",".join(map(str, levels)))])
        del probe
        kw = dict(levels=levels, attention=args.attention, blocks=args.blocks, repeats=args.repeats)
        result = run_temporal_bench(bundle, comm, **kw)
        if comm.world_size > 1:
            if not comm.is_root:
                return 0
            # The same runs with rank 0 alone: one device against R devices.
            alone = Comm(0, 1, comm.device, timed=True)
            single = run_temporal_bench(bundle, alone, **kw)
            result["speed"] = single["speed"] + result["speed"]
            result["quality"] = single["quality"] + result["quality"]
        info = machine_info(bundle.device)
        print(format_temporal_bench(result, info, bundle.name))
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump({"machine": info, "model": bundle.name, **result}, f, indent=2)
            print(f"wrote {args.json_path}")
        return 0

    return _run_as_rank(args, body, timed=True)
