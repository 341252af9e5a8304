"""What the command line reports when a command does not finish, and with which exit status.

    0        done
    1        a failure while running (the output could not be written, a crash)
    2        the command line is unusable: a flag value, or a path or file it names (nothing is run)
    128 + N  stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), after writing what was made

Every case prints one line on stderr, ``vidcascade CMD: error: ...`` (or ``... stopped ...``); the
traceback is shown only with ``--debug`` or ``-v``.
"""

from __future__ import annotations

import signal


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
