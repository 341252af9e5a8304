"""Argument parsers of ``vidcascade serve`` and ``vidcascade loadtest`` (cli.py stays thin)."""

from __future__ import annotations

from collections.abc import Callable


def add_serve_parsers(sub, add_model_args: Callable, add_cascade_args: Callable, levels: Callable) -> None:
    s = sub.add_parser("serve", help="serve live sessions over a WebSocket, with a web page at /")
    add_model_args(s)
    add_cascade_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--token",
        default=None,
        help="require ?token=TOKEN in the WebSocket and recording URLs (default: $VIDCASCADE_TOKEN)",
    )
    s.add_argument("--max-session-s", type=float, default=600.0, help="stop a session after this long")
    s.add_argument("--max-session-blocks", type=int, default=None, help="stop a session after N blocks")
    s.add_argument("--max-prompt-chars", type=int, default=500)
    s.add_argument("--prompt-rate", type=float, default=4.0, help="prompt changes per second per client")
    s.add_argument("--send-queue", type=int, default=24, help="frames a slow client may have waiting")
    s.add_argument(
        "--no-pace",
        action="store_true",
        help="generate as fast as possible instead of at most 1 s ahead of a real-time viewer",
    )

    s.add_argument(
        "--parallel",
        choices=["none", "temporal"],
        default="none",
        help="temporal: under torchrun, rank 0 serves and every rank runs the session",
    )
    s.add_argument("--freshness", choices=["joint", "per_tick"], default="joint")
    from ..feature_cache_flags import add_feature_cache_args

    add_feature_cache_args(s)  # applied to every engine the server builds (one process only)

    t = sub.add_parser("loadtest", help="scripted clients against a running vidcascade serve (loopback)")
    t.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="the server's WebSocket URL")
    t.add_argument("--levels", type=levels, default=None, help="comma-separated levels (default: 0 and S)")
    t.add_argument("--blocks", type=int, default=40, help="blocks per measured session")
    t.add_argument(
        "--switch-every", type=int, default=10, help="change the prompt (back and forth) every N blocks"
    )
    t.add_argument("--buffer-s", type=float, default=0.5, help="start-up buffer of the simulated viewer")
    t.add_argument("--json", dest="json_path", default=None, metavar="FILE", help="write results as JSON")
    t.add_argument("--skip-robustness", action="store_true", help="only the per-level figures")
