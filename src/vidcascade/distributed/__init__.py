"""Temporal parallelism: the in-flight blocks of the cascade placed on several ranks.

The only package of vidcascade that touches torch.distributed (``comm.py``); a single process is
the no-op path (``Comm`` of world size 1, no process group).

    placement.py  block b -> rank b % R (pure functions of the plan)
    comm.py       process group (gloo on CPU, NCCL on CUDA), timed and counted collectives, p2p sends
    exchange.py   K/V views that exchange in-flight K/V inside the forward: joint | per_tick
    executor.py   DistExecutor: a rank's share of each tick, ready latents, replicated commits
    engine.py     DistEngine: Engine with a DistExecutor (rank 0 decodes and yields)
    decode_rank.py  --decode-rank: finished latents from rank 0 to a last rank that only decodes
    checks.py     start-up check that every rank runs the same job and weights
    faults.py     failure reporting and the VIDCASCADE_FAIL_RANK / VIDCASCADE_FAIL_TICK test hook
    launch.py     generate_temporal / bench_temporal: the CLI's ``--parallel temporal``
    bench.py      per-tick compute / communication / bytes and per_tick-vs-joint quality
"""
