"""Entry points of ``--parallel temporal``: one call per rank, launched by torchrun.

    torchrun --standalone --nproc-per-node R -m vidcascade generate PROMPT --parallel temporal ...
    torchrun --nnodes N --nproc-per-node R --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m vidcascade generate PROMPT --parallel temporal ...
    torchrun --standalone --nproc-per-node R -m vidcascade bench --parallel temporal ...

Without torchrun (WORLD_SIZE unset) the job is a single rank and no process group is made. Every
rank loads the model and checks at start that all ranks run the same job with the same weights;
rank 0 decodes and writes the output; the other ranks write nothing. A rank that raises logs its
error with its rank and exits non-zero; torchrun then stops the others, and collectives time out
(VIDCASCADE_DIST_TIMEOUT_S) rather than wait forever.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from ..config import CascadeConfig, ConfigError
from .comm import Comm, init_comm, shutdown
from .engine import DistEngine
from .faults import report_failure

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
    """Join the job, run ``body(comm)`` and leave; on an error log it with the rank and re-raise."""
    comm = init_comm(args.device, timed=timed)
    _rank_logging(comm, args.verbose)
    try:
        rc = body(comm)
    except BaseException as e:
        if isinstance(e, ConfigError):  # the CLI prints it; every rank raises the same
            log.error("rank %d/%d: %s", comm.rank, comm.world_size, e)
        else:
            report_failure(comm.rank, comm.world_size, e)
        raise
    shutdown(comm)
    return rc


def generate_temporal(args, cascade: CascadeConfig, out) -> int:
    """``vidcascade generate ... --parallel temporal`` on this rank."""

    def body(comm: Comm) -> int:
        from ..io.video import write_video

        bundle = _load(args, comm)
        engine = DistEngine(bundle, cascade, comm)
        engine.plan(args.blocks)  # validates level/lag before any exchange
        frames = [
            o.frames[0] for o in engine.stream(args.prompt, args.blocks, seed=args.seed, switches=args.switch)
        ]
        ex = engine.executor
        mine = {
            "tick_s": sum(t.seconds for t in engine.stats.ticks),
            "comm_s": sum(c.seconds for c in ex.tick_comm),
            "bytes": sum(c.bytes for c in ex.tick_comm),
            "block_forwards": ex.counters.block_forwards,
        }
        ranks = comm.all_gather_object(mine)
        if not comm.is_root:
            return 0
        video = np.concatenate(frames, axis=0)
        write_video(out, video, bundle.fps)
        st = engine.stats
        per_rank = ", ".join(
            f"r{r}: {d['block_forwards']} block-fwd, comm {d['comm_s']:.2f} s, {d['bytes'] / 2**20:.1f} MiB"
            for r, d in enumerate(ranks)
        )
        note = "" if bundle.trained else f" [model {bundle.name}: untrained stand-in]"
        print(
            f"wrote {out}: {video.shape[0]} frames {video.shape[2]}x{video.shape[1]} from {len(frames)} "
            f"blocks, level P{engine.level} (lag {engine.lag}, {cascade.attention}), temporal parallel on "
            f"{comm.world_size} rank(s), {cascade.freshness} K/V, {st.fps:.1f} FPS, time to first frame "
            f"{st.ttff_s:.3f} s, {st.seconds:.2f} s total; {per_rank}; model {bundle.name}{note}"
        )
        return 0

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
