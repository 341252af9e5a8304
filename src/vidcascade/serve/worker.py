"""The engine worker: one thread that runs one session and hands each block to the connection.

The event loop never waits on the engine: control messages go straight to the Session's thread-safe
methods (applied at the next tick boundary) and the worker hands events and JPEG frames over through
a thread-safe sink. ``cancel`` (a disconnect) stops the session without draining, so the device is
free after the tick in progress. Paced sessions run at most ``lead_s`` ahead of a viewer playing at
the model's frame rate: generating further ahead would only fill queues with frames made under a
prompt the user has already changed.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .protocol import Start, frame_message
from .state import ServerState

log = logging.getLogger(__name__)


@dataclass
class Sink:
    """Where the worker's output goes; each callable must be safe to call from the worker thread."""

    event: Callable[[dict], None]
    frame: Callable[[bytes], None]


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Worker(threading.Thread):
    def __init__(self, state: ServerState, sid: str, start: Start, sink: Sink) -> None:
        super().__init__(name=f"vidcascade-session-{sid}", daemon=True)
        self.state = state
        self.sid = sid
        self.start_msg = start
        self.sink = sink
        self.pace = state.cfg.pace if start.pace is None else start.pace
        self._lock = threading.Lock()
        self._session = None
        self._pending: list[tuple] = []  # controls that arrived before the session existed
        self._halt = threading.Event()
        self.paused = False
        self.finished = False
        self.relay = None  # a dist.ControlRelay under torchrun: control goes through tick boundaries
        self.stop_reason = "end"
        self.blocks = 0
        self.blocks_after_cancel = 0
        self.recording = None  # made when the session starts (a refused start keeps none)
        self._cache = None  # the engine's feature cache, if any (set when the session starts)

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def wait_halt(self, seconds: float) -> None:
        self._halt.wait(seconds)

    # -- control, from the event loop thread ---------------------------------------------------
    def _apply(self, op: str, *args) -> None:
        if self.relay is not None:
            self.relay.put(op, args)
            return
        with self._lock:
            if self._session is None:
                self._pending.append((op, args))
                return
            session = self._session
        getattr(session, op)(*args)

    def set_prompt(self, text: str, mode: str | None) -> None:
        self._apply("set_prompt", text, mode)

    def pause(self) -> None:
        self.paused = True
        self._apply("pause")

    def resume(self) -> None:
        self.paused = False
        self._apply("resume")

    def cancel(self, reason: str, drain: bool = False) -> None:
        """Stop the session: ``drain=False`` drops in-flight blocks (a disconnect frees the device
        after the tick in progress)."""
        if self._halt.is_set():
            return
        self.stop_reason = reason
        self._halt.set()
        self._apply("stop", drain)

    # -- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        st = self.state
        try:
            self._run()
        except Exception as e:  # the server stays up; the client is told
            log.exception("session %s failed", self.sid)
            self.stop_reason = "error"
            st.counters["session_errors"] += 1
            self.sink.event({"type": "error", "code": "engine", "message": f"{type(e).__name__}: {e}"})
        finally:
            self.finished = True
            st.release(self)
            self.sink.event(
                {
                    "type": "stopped",
                    "session": self.sid,
                    "reason": self.stop_reason,
                    "blocks": self.blocks,
                    "recording": f"/recording/{self.sid}.mp4",
                }
            )
            log.info("session %s stopped (%s) after %d blocks", self.sid, self.stop_reason, self.blocks)

    def _run(self) -> None:
        st, msg, cfg = self.state, self.start_msg, self.state.cfg
        engine = st.engine(msg.level, msg.attention)
        self.recording = st.recording(self.sid)
        args = {"seed": msg.seed, "switch_mode": msg.switch_mode, "blend_blocks": msg.blend_blocks}
        if self.relay is not None:
            self.relay.start({"prompt": msg.prompt, **args})
        session = engine.session(msg.prompt, **args, on_boundary=self.relay and self.relay.hook)
        with self._lock:
            self._session = session
            pending, self._pending = self._pending, []
        for op, args in pending:
            getattr(session, op)(*args)
        fps = st.bundle.fps
        self.sink.event(
            {
                "type": "started",
                "session": self.sid,
                "level": engine.level,
                "lag": engine.lag,
                "attention": engine.cascade.attention,
                "switch_mode": msg.switch_mode,
                "seed": msg.seed,
                "fps": fps,
                "pace": self.pace,
                "lead_s": cfg.lead_s,
            }
        )
        st.block_latency_s.clear()
        st.inter_arrival_s.clear()
        # The engine's feature cache, if the server applied one (its counters restart per session).
        self._cache = getattr(getattr(engine, "executor", None), "feature_cache", None)
        st.last_cache_skipped_share = 0.0 if self._cache is not None else None
        t0 = time.perf_counter()
        anchor, shown = t0, 0  # pacing clock: frames handed over since ``anchor``
        last = None
        it = iter(session)
        while True:
            if self.pace:
                anchor, shown = self._wait_for_viewer(anchor, shown, fps, cfg.lead_s)
            try:
                # After a cancel this ends the session at the next tick boundary (stop was queued);
                # it is not left unfinished, so that under torchrun every rank ends at that boundary.
                out = next(it)
            except StopIteration:
                break
            now = time.perf_counter()
            if self._halt.is_set():
                self.blocks_after_cancel += 1
                if self.stop_reason != "client":
                    continue  # nobody to send it to
            frames = out.frames[0]  # [T, H, W, 3]
            self._emit(out, frames, now - t0, None if last is None else now - last, session)
            last = now
            shown += frames.shape[0]
            self.blocks += 1
            if self.blocks == 1:
                st.last_ttff_s = now - t0
            if now - t0 > cfg.max_session_s or (
                cfg.max_session_blocks is not None and self.blocks >= cfg.max_session_blocks
            ):
                self.cancel("limit", drain=False)  # the session ends at the next boundary
        st.counters["blocks_after_cancel"] += self.blocks_after_cancel

    def _wait_for_viewer(self, anchor: float, shown: int, fps: float, lead_s: float) -> tuple[float, int]:
        """Block while paused, or while the viewer still has more than ``lead_s`` of frames."""
        if self.paused and self.relay is None:  # under torchrun the relay holds at the boundary
            while self.paused and not self._halt.is_set():
                self._halt.wait(0.05)
            return time.perf_counter(), 0  # after a pause the viewer's clock starts again
        ahead = shown / fps - (time.perf_counter() - anchor)
        if ahead > lead_s:
            self._halt.wait(ahead - lead_s)
        return anchor, shown

    def _cache_figures(self) -> dict:
        """The running share of DiT-block computations the feature cache skipped this session."""
        if self._cache is None:
            return {}
        share = self._cache.counters.skipped_share
        self.state.last_cache_skipped_share = share
        return {"cache_skipped_share": share}

    def _emit(self, out, frames: np.ndarray, at_s: float, gap_s: float | None, session) -> None:
        st, q = self.state, self.state.cfg.jpeg_quality
        st.block_latency_s.append(out.latency_s)
        if gap_s is not None:
            st.inter_arrival_s.append(gap_s)
        st.counters["blocks"] += 1
        st.counters["frames"] += frames.shape[0]
        self.sink.event(
            {
                "type": "block",
                "block": out.block,
                "prompt": out.prompt,
                "prompts": list(out.prompts),
                "prompt_weights": [round(w, 4) for w in out.prompt_weights],
                "latency_s": out.latency_s,
                "ready_s": out.ready_s,
                "tick_s": list(out.tick_seconds),
                "in_flight": len(session.in_flight),
                "frames": int(frames.shape[0]),
                "t_s": at_s,
                **self._cache_figures(),
            }
        )
        for i, f in enumerate(frames):
            jpeg = encode_jpeg(f, q)
            self.recording.add(jpeg)
            self.sink.frame(frame_message(out.block, i, jpeg))
