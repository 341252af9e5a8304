"""Failure handling of a multi-rank job, and the test hook that injects one.

Test hook: with ``VIDCASCADE_FAIL_RANK=r`` and ``VIDCASCADE_FAIL_TICK=t`` in the environment, rank
r raises ``InjectedFailure`` when it starts tick t. Nothing else reads these variables; they exist
so that tests can check that one failing rank ends the whole job with a non-zero status and its
error text, in bounded time.
"""

from __future__ import annotations

import logging
import os
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


def report_failure(rank: int, world_size: int, exc: BaseException) -> None:
    """Log a rank's error with its rank; the exception then ends the process (traceback, non-zero).

    Under torchrun the error also goes to the agent's error file, so that its closing summary
    names the root cause with this message. Call from inside the ``except`` block.
    """
    log.error("rank %d/%d failed: %s: %s", rank, world_size, type(exc).__name__, exc)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)
