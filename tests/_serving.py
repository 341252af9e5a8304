"""A real uvicorn server on a free loopback port, in a thread of the test process, for the serve tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_BUNDLE = None


def embedded_bundle():
    """The embedded model, loaded once per test process (the serve tests only read it)."""
    global _BUNDLE
    if _BUNDLE is None:
        from vidcascade.weights.registry import load_bundle

        _BUNDLE = load_bundle(None, device=torch.device("cpu"))
    return _BUNDLE


@contextmanager
def running_server(cfg=None, *, level: int | None = None, feature_cache=None):
    """Yields (state, base_url) with the server up and warmed; shuts it down after."""
    import uvicorn

    from vidcascade.serve.app import create_app
    from vidcascade.serve.protocol import ServeConfig
    from vidcascade.serve.state import ServerState

    state = ServerState(embedded_bundle(), cfg or ServeConfig(), level=level, feature_cache=feature_cache)
    state.warmup()
    port = free_port()
    config = uvicorn.Config(
        create_app(state), host="127.0.0.1", port=port, log_level="warning", ws_max_size=1 << 20
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield state, f"127.0.0.1:{port}"
    finally:
        if state.active is not None:
            state.active.cancel("test-teardown")
        server.should_exit = True
        thread.join(timeout=10)


class Client:
    """A minimal synchronous protocol client (what docs/serving.md shows)."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, open_timeout=10, close_timeout=2)
        self.frames: list[tuple[int, int, bytes]] = []

    def send(self, msg) -> None:
        self.ws.send(msg if isinstance(msg, str | bytes) else json.dumps(msg))

    def next_event(self, kind: str | None = None, timeout: float = 30.0) -> dict:
        """The next JSON event (of type ``kind`` if given), collecting frames on the way."""
        from vidcascade.serve.protocol import parse_frame

        deadline = time.monotonic() + timeout
        while True:
            m = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(m, bytes):
                self.frames.append(parse_frame(m))
                continue
            ev = json.loads(m)
            if kind is None or ev["type"] == kind:
                return ev

    def close(self) -> None:
        self.ws.close()
