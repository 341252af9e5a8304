"""What the command line reports when a command does not finish, and with which exit status.

    0        done
    1        a failure while running (the output could not be written, a crash)
    2        the command line is unusable: a flag value, or a path or file it names (nothing is run)
    128 + N  stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), after writing what was made

Every case prints one line on stderr, ``vidcascade CMD: error: ...`` (or ``vidcascade CMD: stopped
by SIGTERM ...``); the traceback is shown only with ``--debug`` or ``-v``. Under torchrun an error
that every rank sees alike is printed by rank 0 alone, and each failing rank writes its line to
torchrun's error file so that torchrun's closing summary quotes it.
"""

from __future__ import annotations

import os
import signal
import sys
import time


class CliError(Exception):
    """A bad flag value: reported as one line, exit status 2."""


class RunError(Exception):
    """A failure while running whose message is already the one line to show: exit status 1."""


class Stopped(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived (raised by ``io.signals.StopSignals``).

    A KeyboardInterrupt, so that code which already stops cleanly on Ctrl-C stops on all three.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.note = ""
        """What it means for the command, e.g. that nothing was written (set by the command)."""
        super().__init__(self.name)

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


def is_usage_error(exc: BaseException) -> bool:
    """A flag, a named path or a named file is unusable (ConfigError, ManifestError and
    CheckpointError are ValueErrors)."""
    return isinstance(exc, (CliError, ValueError, FileNotFoundError))


def exit_status(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 128 + getattr(exc, "signum", int(signal.SIGINT))
    return 2 if is_usage_error(exc) else 1


def one_line(exc: BaseException) -> str:
    """The exception as one line: its message where that is ours, prefixed with its type otherwise."""
    text = " ".join(str(exc).split())  # library messages may span lines
    if isinstance(exc, (CliError, RunError, ValueError, FileNotFoundError)) and text:
        return text
    if isinstance(exc, OSError) and exc.strerror:
        where = f" '{exc.filename}'" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


QUIET_RANK_GRACE_S = 1.0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def quiet_rank(line: str, e: BaseException | None, debug: bool) -> bool:
    """Under torchrun: write ``line`` to the rank's error file, so that torchrun's summary names it;
    True on ranks other than 0 for errors every rank sees alike (rank 0 prints the line once)."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from .distributed.faults import record_error_line

        record_error_line(line, e, debug)
    rank = _env_int("RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else 0
    alike = e is None or is_usage_error(e) or isinstance(e, KeyboardInterrupt)
    if rank == 0 or not alike or debug:
        return False
    # Leaving at once could make torchrun stop rank 0 (SIGTERM) before it printed the line; the
    # SIGTERM torchrun sends this rank once rank 0 has left must not print anything either.
    from .io.signals import current

    with current().hold(discard=True):
        time.sleep(QUIET_RANK_GRACE_S)
    return True


def report_error(cmd: str, e: BaseException, debug: bool) -> int:
    """One line on stderr (the traceback first with --debug); see ``quiet_rank`` for torchrun."""
    status = exit_status(e)
    prog = f"vidcascade {cmd}" if cmd else "vidcascade"
    if isinstance(e, KeyboardInterrupt):
        name = e.name if isinstance(e, Stopped) else "SIGINT"
        note = getattr(e, "note", "")
        line = f"{prog}: stopped by {name}" + (f" {note}" if note else "")
    else:
        line = f"{prog}: error: {one_line(e)}"
    if quiet_rank(line, e, debug):
        return status
    if debug:
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    print(line, file=sys.stderr, flush=True)
    return status
