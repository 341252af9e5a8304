"""The FastAPI app: the page at ``/``, ``/ws`` (one session per connection), ``/health``, ``/metrics``
and ``/recording/{session}.mp4``.

A connection has two tasks: the receive loop (parses, validates and applies control messages at once)
and the sender (drains the connection's bounded Outbox). The engine runs in a Worker thread, so
neither task ever waits on a tick, a decode or a JPEG encode.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .outbox import Outbox
from .protocol import SWITCH_MODES, Control, Prompt, ProtocolError, RateLimiter, Start, parse_message
from .state import ServerState
from .worker import Sink, Worker

log = logging.getLogger(__name__)


def static_dir() -> Path:
    return Path(str(resources.files("vidcascade.serve") / "static"))


def _token_ok(state: ServerState, given: str | None) -> bool:
    want = state.cfg.token
    return want is None or (given is not None and hmac.compare_digest(given.encode(), want.encode()))


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="vidcascade", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.vc = state
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/health")
    def health() -> JSONResponse:
        h = state.health()
        return JSONResponse(h, status_code=200 if state.ready else 503)

    @app.get("/metrics")
    def metrics() -> JSONResponse:
        return JSONResponse(state.metrics())

    @app.get("/recording/{sid}.mp4")
    def recording(sid: str, request: Request) -> Response:
        # A plain def endpoint: FastAPI runs it in its thread pool, off the event loop.
        if not _token_ok(state, request.query_params.get("token")):
            raise HTTPException(status_code=403, detail="missing or wrong token")
        rec = state.recordings.get(sid)
        if rec is None:
            raise HTTPException(status_code=404, detail=f"no recording for session {sid!r}")
        frames = rec.snapshot()
        if not frames:
            raise HTTPException(status_code=404, detail=f"session {sid!r} has no frames yet")
        return Response(
            _mp4(frames, rec.fps),
            media_type="video/mp4",
            headers={"Content-Disposition": f'attachment; filename="vidcascade-{sid}.mp4"'},
        )

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await Connection(state, websocket).serve()

    return app


def _mp4(jpegs: list[bytes], fps: float) -> bytes:
    import numpy as np
    from PIL import Image

    from ..io.video import write_video

    video = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "session.mp4"
        write_video(path, video, fps)
        return path.read_bytes()


def _handover(loop: asyncio.AbstractEventLoop, put):
    """A callable for the worker thread that runs ``put(item)`` on the event loop."""

    def call(item) -> None:
        try:
            loop.call_soon_threadsafe(put, item)
        except RuntimeError:  # the loop has closed (server shutting down): nobody to send to
            pass

    return call


class Connection:
    """One WebSocket client: validates its messages, owns at most one Worker at a time."""

    def __init__(self, state: ServerState, websocket: WebSocket) -> None:
        self.state = state
        self.ws = websocket
        self.worker: Worker | None = None
        self.outbox: Outbox | None = None
        self.limiter = RateLimiter(state.cfg.prompt_rate, time.monotonic)

    async def serve(self) -> None:
        st = self.state
        if not _token_ok(st, self.ws.query_params.get("token")):
            await self.ws.accept()
            await self.ws.send_json(ProtocolError("unauthorized", "missing or wrong token").event())
            await self.ws.close(code=1008)
            st.counters["unauthorized"] += 1
            return
        await self.ws.accept()
        loop = asyncio.get_running_loop()
        self.outbox = Outbox(st.cfg.send_queue_frames)
        st.connections += 1
        sender = asyncio.create_task(self._send_loop())
        self.outbox.put_event(self._hello())
        box = self.outbox
        self.sink = Sink(event=_handover(loop, box.put_event), frame=_handover(loop, box.put_frame))
        try:
            await self._receive_loop()
        finally:
            if self.worker is not None:
                self.worker.cancel("disconnect", drain=False)
            st.connections -= 1
            st.counters["frames_dropped"] += self.outbox.dropped_frames
            self.outbox.close()
            sender.cancel()

    def _hello(self) -> dict:
        st, b = self.state, self.state.bundle
        levels, attentions = list(range(st.num_steps + 1)), ["causal", "bidirectional"]
        if st.fixed_engine is not None:  # under torchrun: the one engine's level and attention
            levels, attentions = [st.fixed_engine.level], [st.fixed_engine.cascade.attention]
        return {
            "type": "hello",
            "model": b.name,
            "fps": b.fps,
            "frames_per_block": b.sampling.frames_per_block,
            "levels": levels,
            "default_level": st.default_level,
            "attentions": attentions,
            "default_attention": st.default_attention,
            "switch_modes": list(SWITCH_MODES),
            "busy": st.active is not None,
            "limits": {
                "max_message_bytes": st.cfg.max_message_bytes,
                "max_prompt_chars": st.cfg.max_prompt_chars,
                "prompt_rate": st.cfg.prompt_rate,
                "max_session_s": st.cfg.max_session_s,
                "send_queue_frames": st.cfg.send_queue_frames,
            },
        }

    async def _receive_loop(self) -> None:
        while True:
            try:
                m = await self.ws.receive()
            except WebSocketDisconnect:
                return
            if m["type"] == "websocket.disconnect":
                return
            try:
                self._handle(
                    parse_message(
                        m.get("text") if m.get("text") is not None else m.get("bytes"),
                        self.state.cfg,
                        self.state.num_steps,
                    )
                )
            except ProtocolError as e:
                self.state.counters[f"error_{e.code}"] += 1
                self.outbox.put_event(e.event())

    def _handle(self, msg) -> None:
        w = self.worker
        live = w is not None and not w.finished and not w.stopping
        if isinstance(msg, Start):
            if live:
                raise ProtocolError("already_started", "this connection runs a session; stop it first")
            worker = Worker(self.state, uuid.uuid4().hex[:12], msg, self.sink)
            if not self.state.try_acquire(worker):
                self.outbox.put_event(
                    {
                        "type": "busy",
                        "message": "the engine is serving another session (one per device); this start is "
                        "refused, not queued: send start again later",
                        "active_sessions": 1,
                    }
                )
                return
            self.worker = worker
            self.state.launch(worker)
            return
        if not live:
            what = type(msg).__name__.lower()
            raise ProtocolError("not_started", f"no session is running; send start first ({what} ignored)")
        if isinstance(msg, Prompt):
            if not self.limiter.allow():
                rate = self.state.cfg.prompt_rate
                raise ProtocolError("rate_limited", f"more than {rate:g} prompt changes per second; ignored")
            w.set_prompt(msg.prompt, msg.mode)
            self.outbox.put_event({"type": "prompt_ack", "prompt": msg.prompt, "mode": msg.mode})
        elif isinstance(msg, Control):
            if msg.type == "pause":
                w.pause()
            elif msg.type == "resume":
                w.resume()
            else:
                w.cancel("client", drain=True)
            self.outbox.put_event({"type": f"{msg.type}d" if msg.type != "stop" else "stopping"})

    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if item is None:
                    return
                kind, data = item
                if kind == "frame":
                    await self.ws.send_bytes(data)
                else:
                    if data.get("type") == "block":
                        data["dropped_frames"] = self.outbox.dropped_frames
                    await self.ws.send_json(data)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
