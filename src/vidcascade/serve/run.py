"""``vidcascade serve``: load and warm the model once, then run uvicorn on one event loop."""

from __future__ import annotations

import logging
import os

from .protocol import ServeConfig

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_config(args) -> ServeConfig:
    return ServeConfig(
        max_session_s=args.max_session_s,
        max_session_blocks=args.max_session_blocks,
        max_prompt_chars=args.max_prompt_chars,
        prompt_rate=args.prompt_rate,
        send_queue_frames=args.send_queue,
        pace=not args.no_pace,
        token=args.token or os.environ.get("VIDCASCADE_TOKEN") or None,
    )


def build_state(bundle, args, fixed_engine=None):
    from ..feature_cache_flags import feature_cache_config
    from .state import ServerState

    # One process: the --cache* flags over the model's own feature cache, as generate does.
    cache = feature_cache_config(args, bundle.feature_cache) if fixed_engine is None else None
    return ServerState(
        bundle,
        serve_config(args),
        level=args.level,
        attention=args.attention,
        fixed_engine=fixed_engine,
        feature_cache=cache,
    )


def _check_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f'serve needs the serve extra: pip install "vidcascade[serve]" ({e})') from e


def run_serve(args, bundle) -> int:
    _check_extra()
    state = build_state(bundle, args)
    return _serve(args, state)


def run_serve_temporal(args) -> int:
    """Under torchrun: every rank loads the model and warms up; rank 0 serves, the others follow."""
    _check_extra()
    import torch

    from ..config import CascadeConfig
    from ..distributed.comm import init_comm, shutdown
    from ..distributed.engine import DistEngine
    from ..weights.registry import load_bundle
    from .dist import Driver, follow

    comm = init_comm(args.device)
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    bundle = load_bundle(args.model, device=comm.device, dtype=dtype)
    cascade = CascadeConfig(level=args.level, attention=args.attention, freshness=args.freshness)
    engine = DistEngine(bundle, cascade, comm)
    for _ in engine.session("a red circle moving right", max_blocks=2):  # warm-up, on every rank
        pass
    if not comm.is_root:
        follow(engine, comm)
        shutdown(comm)
        return 0
    state = build_state(bundle, args, fixed_engine=engine)
    state.ready = True
    driver = Driver(comm)
    state.launch = driver.submit
    driver.start()
    log.info(
        "temporal parallel on %d ranks: level P%d, %s attention, %s K/V",
        comm.world_size,
        engine.level,
        cascade.attention,
        cascade.freshness,
    )
    try:
        return _serve(args, state, warm=False)
    finally:
        if state.active is not None:
            state.active.cancel("shutdown")
        driver.shutdown()
        shutdown(comm)


def _serve(args, state, warm: bool = True) -> int:
    import uvicorn

    from .app import create_app

    bundle = state.bundle
    if args.host not in LOOPBACK:
        log.warning(
            "binding to %s: anyone who can reach this machine can drive the GPU%s",
            args.host,
            "" if state.cfg.token else " (no --token set)",
        )
    if warm:
        secs = state.warmup()
        log.info(
            "model %s warmed up in %.2f s (level P%d, %s)",
            bundle.name,
            secs,
            state.default_level,
            state.default_attention,
        )
    app = create_app(state)
    host = f"[{args.host}]" if ":" in args.host else args.host
    query = "?token=..." if state.cfg.token else ""
    log.info("ready: open http://%s:%d/%s", host, args.port, query)
    # ws_max_size is a hard cap (the connection is closed above it); messages between the protocol's
    # max_message_bytes and this get an error reply and the connection stays up.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        ws_max_size=1 << 20,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )
    return 0
