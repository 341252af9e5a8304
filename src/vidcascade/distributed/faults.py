"""Failure handling of a multi-rank job, and the test hook that injects one.

Test hook: with ``VIDCASCADE_FAIL_RANK=r`` and ``VIDCASCADE_FAIL_TICK=t`` in the environment, rank
r raises ``InjectedFailure`` when it starts tick t. Nothing else reads these variables; they exist
so that tests can check that one failing rank ends the whole job with a non-zero status and its
error text, in bounded time.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass

log = logging.getLogger(__name__)

FAIL_RANK_ENV = "VIDCASCADE_FAIL_RANK"
FAIL_TICK_ENV = "VIDCASCADE_FAIL_TICK"


class InjectedFailure(RuntimeError):
    """Raised by the test hook."""


@dataclass(frozen=True)
class FaultInjector:
    rank: int | None = None
    tick: int | None = None

    @classmethod
    def from_env(cls) -> FaultInjector:
        r, t = os.environ.get(FAIL_RANK_ENV), os.environ.get(FAIL_TICK_ENV)
        if r is None and t is None:
            return cls()
        try:
            return cls(int(r) if r is not None else 0, int(t) if t is not None else 0)
        except ValueError:
            raise ValueError(f"{FAIL_RANK_ENV}={r!r} / {FAIL_TICK_ENV}={t!r} must be integers") from None

    def check(self, rank: int, tick: int) -> None:
        if self.rank is not None and rank == self.rank and tick == self.tick:
            raise InjectedFailure(
                f"injected failure on rank {rank} at tick {tick} ({FAIL_RANK_ENV}/{FAIL_TICK_ENV})"
            )


def record_error_line(line: str, exc: BaseException | None = None, debug: bool = False) -> None:
    """Write this rank's error to torchrun's error file (TORCHELASTIC_ERROR_FILE), so that the
    closing summary of torchrun names it: the one line the rank printed, or with ``debug`` the
    traceback too. Without the variable (no torchrun) this does nothing."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    shown = line
    if debug and exc is not None:
        shown = "".join(traceback.format_exception(exc)) + line
    info = {"py_callstack": shown, "timestamp": str(int(time.time()))}
    data = {"message": {"message": line, "extraInfo": info}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError as e:  # the summary then lacks the message; the rank's stderr still has it
        log.debug("could not write torchrun's error file %s: %s", path, e)
