"""Per-connection bounded send queue: a slow client loses its oldest frames, never lags behind.

Policy: JSON events are small and each one matters (block timings, errors), so they are kept, up to
``max_events``; binary frames are kept up to ``max_frames`` and, past that, the *oldest waiting* frame
is dropped and counted. A client that stops reading therefore holds at most a fixed amount of memory
on the server, and when it reads again it sees the newest frames, not a backlog of stale ones.
Every method runs on the event loop thread (the engine worker hands items over with
``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
from collections import deque


class Outbox:
    def __init__(self, max_frames: int, max_events: int = 256) -> None:
        self.max_frames = max_frames
        self.max_events = max_events
        self._items: deque[tuple[str, object]] = deque()
        self._frames = 0
        self._events = 0
        self._ready = asyncio.Event()
        self.dropped_frames = 0
        self.dropped_events = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_event(self, event: dict) -> None:
        if self.closed:
            return
        if self._events >= self.max_events:
            self._drop_oldest("event")
            self.dropped_events += 1
        self._items.append(("event", event))
        self._events += 1
        self._ready.set()

    def put_frame(self, data: bytes) -> None:
        if self.closed:
            return
        if self._frames >= self.max_frames:
            self._drop_oldest("frame")
            self.dropped_frames += 1
        self._items.append(("frame", data))
        self._frames += 1
        self._ready.set()

    def _drop_oldest(self, kind: str) -> None:
        for i, (k, _) in enumerate(self._items):
            if k == kind:
                del self._items[i]
                if kind == "frame":
                    self._frames -= 1
                else:
                    self._events -= 1
                return

    async def get(self) -> tuple[str, object] | None:
        """The next item in order, or None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        kind, item = self._items.popleft()
        if kind == "frame":
            self._frames -= 1
        else:
            self._events -= 1
        return kind, item

    def close(self) -> None:
        self.closed = True
        self._ready.set()
