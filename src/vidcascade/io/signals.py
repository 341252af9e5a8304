"""SIGINT, SIGTERM and SIGHUP end a command the way Ctrl-C does, so no signal loses work.

``timeout``, ``docker stop`` and systemd send SIGTERM; closing a terminal sends SIGHUP. Inside
``StopSignals`` each of the three raises ``errors.Stopped`` (a KeyboardInterrupt) in the main thread,
so that ``generate`` closes its output file with the frames made so far. Code that must not be cut
in half (appending a block to the file, closing the file) runs inside ``hold()``: a signal that
arrives there is raised when the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import Stopped

_ACTIVE: list[StopSignals] = []  # the installed handlers, innermost last (they are process-wide)

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class StopSignals:
    """Context manager: install the handlers on entry (main thread only), restore them on exit."""

    def __init__(self) -> None:
        self._saved: dict[int, object] = {}
        self._held = 0
        self._discard = False
        self.pending: int | None = None
        """A signal that arrived inside ``hold()`` and is still to be raised."""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                # An ignored signal stays ignored: `nohup` ignores SIGHUP, and shells start
                # background jobs with SIGINT ignored.
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._saved[s] = signal.signal(s, self._handle)
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._saved.items():
            signal.signal(s, old)
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._saved.clear()

    def _handle(self, signum: int, frame) -> None:
        if self._held:
            if not self._discard and self.pending is None:
                self.pending = signum
            return
        raise Stopped(signum)

    @contextmanager
    def hold(self, *, discard: bool = False) -> Iterator[None]:
        """Defer the signals until the block ends; ``discard=True`` drops them instead (used while
        the output of an already stopped or failed run is being closed, and forgets one already
        pending)."""
        self._held += 1
        outer_discard, self._discard = self._discard, self._discard or discard
        try:
            yield
        finally:
            self._held -= 1
            self._discard = outer_discard
            if discard:
                self.pending = None
        if not self._held and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Stopped(signum)


class NoSignals(StopSignals):
    """``hold()`` without handlers: for callers that are not the command's main loop."""

    def __enter__(self) -> NoSignals:
        return self


def current() -> StopSignals:
    """The installed ``StopSignals`` (the command's), or a ``NoSignals`` when there is none."""
    return _ACTIVE[-1] if _ACTIVE else NoSignals()
