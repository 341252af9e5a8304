"""Recording a stream of blocks to a file as they finish, so that no way of ending loses work.

``record`` appends each block's frames to the writer as the stream yields them and closes the
file at the end. If a signal stops the run (``errors.Stopped``), or the stream raises after some
blocks were made, the file is closed with the frames made so far and the ``Recording`` says why
the run ended; the caller reports it. A stream that fails before its first block leaves no file
and its exception propagates unchanged (a bad value is reported as such). A writer that fails
raises ``WriteError`` and leaves no file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import Stopped
from .signals import StopSignals, current
from .writers import FrameWriter, WriteError, Written

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recording:
    written: Written | None
    """The file (None when the run stopped before its first block)."""
    blocks: int
    frames: int
    stopped: Stopped | None = None
    """The signal that ended the run early."""
    error: Exception | None = None
    """The failure that ended the run early, after ``blocks`` blocks."""


def record(
    blocks: Iterable[np.ndarray],
    writer: FrameWriter,
    *,
    signals: StopSignals | None = None,
    on_block: Callable[[int], None] | None = None,
) -> Recording:
    """Append every item of ``blocks`` (uint8 [T, H, W, 3]) to ``writer``, then close it."""
    signals = signals or current()
    stopped: Stopped | None = None
    error: Exception | None = None
    try:
        for frames in blocks:
            with signals.hold():  # a block is in the file whole or not at all
                _append(writer, frames)
            if on_block is not None:
                on_block(writer.blocks)
    except Stopped as e:
        stopped = e
        log.warning(
            "stopped by %s: closing %s with the %d frames of %d blocks made so far",
            e.name,
            writer.path,
            writer.frames,
            writer.blocks,
        )
    except WriteError:
        raise
    except Exception as e:
        if writer.blocks == 0:
            writer.abort()
            raise
        error = e
        log.error("%s: closing %s with the %d blocks made before it", e, writer.path, writer.blocks)
    with signals.hold(discard=True):  # a second Ctrl-C must not cut the closing file in half
        if writer.blocks == 0:
            writer.abort()
            written = None
        else:
            written = writer.close()
    return Recording(written, writer.blocks, writer.frames, stopped, error)


def _append(writer: FrameWriter, frames: np.ndarray) -> None:
    """Append, or remove what the writer started and raise ``WriteError``."""
    try:
        writer.append(frames)
    except Exception as e:
        writer.abort()
        if isinstance(e, WriteError):
            raise
        raise WriteError(f"could not write {str(writer.path)!r}: {e}") from e
