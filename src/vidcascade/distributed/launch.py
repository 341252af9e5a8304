"""Entry points of ``--parallel temporal``: one call per rank, launched by torchrun.

    torchrun --standalone --nproc-per-node R -m vidcascade generate PROMPT --parallel temporal ...
    torchrun --nnodes N --nproc-per-node R --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m vidcascade generate PROMPT --parallel temporal ...
    torchrun --standalone --nproc-per-node R -m vidcascade bench --parallel temporal ...

Without torchrun (WORLD_SIZE unset) the job is a single rank and no process group is made. Every
rank loads the model and checks at start that all ranks run the same job with the same weights;
rank 0 decodes and writes the output, block by block; the other ranks write nothing.

``--decode-rank`` (generate): launched with R+1 processes, ranks 0..R-1 denoise and the last rank
decodes and writes (``decode_rank.py``); rank 0 sends it each finished block and prints the result
line, whose FPS and time to first frame run from the stream's start on rank 0 to the frames'
being ready on the decode rank (wall clock: exact on one machine, across machines as good as their
clock synchronisation).

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
import time

import torch

from ..config import CascadeConfig, ConfigError
from ..errors import RunError, is_usage_error, one_line
from .comm import Comm, init_comm, shutdown, split_decode_rank
from .decode_rank import DecodeSender, decode_blocks
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


def _load(args, comm: Comm, *, with_compile: bool = True):
    from ..weights.registry import load_bundle

    dtype = getattr(torch, args.dtype) if args.dtype else None
    bundle = load_bundle(args.model, device=comm.device, dtype=dtype)
    if not bundle.trained and comm.is_root:
        log.warning("model %s: %s", bundle.name, bundle.description)
    if args.compile and with_compile:
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

    def body(job: Comm) -> int:
        comm = split_decode_rank(job) if getattr(args, "decode_rank", False) else job
        if comm is None:
            return _decode_rank(args, cascade, job, out)
        with before_first_block():
            bundle = _load(args, comm)
            sender = DecodeSender(job) if comm is not job and comm.is_root else None
            engine = DistEngine(bundle, cascade, comm, decode_sender=sender)
            engine.plan(args.blocks)  # validates level/lag before any exchange
        if sender is not None:
            return _denoise_for_decode_rank(args, engine, bundle, job)
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


def _decode_rank(args, cascade: CascadeConfig, job: Comm, out) -> int:
    """The decode rank of ``generate --decode-rank``: decode and write what rank 0 sends, then send
    it a summary of what was written."""
    from ..generate_cmd import before_first_block
    from ..io.record import record
    from ..io.writers import open_writer
    from ..scheduling.timesteps import make_schedule

    with before_first_block():
        bundle = _load(args, job, with_compile=False)
        cascade.resolve_lag(make_schedule(bundle.sampling).num_steps)  # a bad level fails here too
    decoded: list = []
    summary: dict = {"written": None, "blocks": 0, "frames": 0, "error": None, "decode_s": [], "done": []}
    try:

        def frames():
            for d in decode_blocks(bundle.make_decoder(), job):
                decoded.append(d)
                yield d.frames[0]

        rec = record(frames(), open_writer(out, bundle.fps))
        summary.update(written=rec.written, blocks=rec.blocks, frames=rec.frames)
        if rec.error is not None:
            summary["error"] = f"decode rank: {rec.error}"
    except Exception as e:
        summary["error"] = f"decode rank: {e}"
        raise
    finally:
        summary["decode_s"] = [d.decode_s for d in decoded]
        summary["done"] = [d.done_wall for d in decoded]
        job.send_object(summary, 0)
    return 0


def _denoise_for_decode_rank(args, engine: DistEngine, bundle, job: Comm) -> int:
    """Rank 0 of ``generate --decode-rank``: run the stream, every finished block going to the
    decode rank, then print the result line with what the decode rank wrote."""
    from tqdm import tqdm

    from ..engine.engine import RunStats
    from ..errors import Stopped
    from ..generate_cmd import report
    from ..io.record import Recording

    comm = engine.comm
    bar = tqdm(total=args.blocks, unit="block", disable=None, leave=False)
    stopped: Stopped | None = None
    error: Exception | None = None
    start = time.time()
    try:
        for _ in engine.stream(args.prompt, args.blocks, seed=args.seed, switches=args.switch):
            bar.update(1)
    except Stopped as e:
        stopped = e
    except Exception as e:
        error = e
    finally:
        bar.close()
        engine.finish_decode()  # the decode rank writes what it has and answers
    summary = job.recv_object(job.world_size - 1)
    if summary["written"] is None:
        if stopped is not None or error is not None:
            raise stopped or error
        raise RunError(summary["error"] or "the decode rank wrote nothing")
    per_rank = ""
    if stopped is None and error is None:
        ranks = comm.all_gather_object(_rank_stats(engine))
        dec = summary["decode_s"]
        per_rank = ", ".join(
            f"r{r}: {d['block_forwards']} block-fwd, comm {d['comm_s']:.2f} s, {d['bytes'] / 2**20:.1f} MiB"
            for r, d in enumerate(ranks)
        )
        ms = 1e3 * sum(dec) / max(len(dec), 1)
        per_rank += f", decode rank: {len(dec)} blocks decoded, {ms:.1f} ms/block"
    # The result line's rates run from the stream's start here to the frames on the decode rank.
    done = summary["done"]
    st = RunStats(frames=summary["frames"], blocks=summary["blocks"])
    st.seconds = (done[-1] - start) if done else 0.0
    st.ttff_s = (done[0] - start) if done else 0.0
    engine.stats = st
    if summary["error"] is not None and error is None:
        error = RunError(summary["error"])
    rec = Recording(summary["written"], summary["blocks"], summary["frames"], stopped, error)
    mode = f", temporal parallel on {comm.world_size} rank(s) + a decode rank, {engine.cascade.freshness} K/V"
    return report(rec, engine, bundle, args.blocks, mode=mode, ranks=f"{per_rank}; " if per_rank else "")


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
