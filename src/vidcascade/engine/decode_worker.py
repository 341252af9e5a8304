"""Decoding finished blocks off the tick loop: a worker thread that runs the VAE while the DiT runs
the next ticks.

The session hands each finished block's clean latents to ``DecodeWorker.submit`` and takes the
decoded results back with ``get`` / ``poll``, in submission (= block) order. Decoding never feeds
back into the DiT, so the latents of a run are the same whether its blocks are decoded here or
inline. On CUDA the worker decodes on a stream of its own, after an event recorded on the tick's
stream (the tick loop never waits for the host copy); on CPU it shares torch's intra-op thread
count with the tick loop (``torch.set_num_threads`` is process-wide) and runs on a core the DiT
leaves idle. An exception in the decoder is re-raised by the ``get`` that would have returned that
block.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

DecodeMode = Literal["inline", "thread"]
DECODE_MODES = ("inline", "thread")


def check_decode_mode(mode: str) -> str:
    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    return mode


@dataclass
class Decoded:
    """One block as the worker returns it."""

    block: int
    latents: torch.Tensor
    """Clean latents [B, C, fpb, h, w] on the CPU."""
    frames: np.ndarray
    """uint8 [B, T, H, W, 3] (empty when the session does not decode)."""
    done_s: float
    """``time.perf_counter()`` when the frames were ready."""
    decode_s: float
    """Seconds the decode (and the host copy) took on the worker."""
    meta: Any


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_STOP = object()


class DecodeWorker:
    """Decodes submitted blocks in order on one thread; ``close`` ends it (always call it)."""

    def __init__(self, decoder, device: torch.device) -> None:
        self.decoder = decoder
        self.device = device
        self._jobs: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self.pending = 0
        """Blocks submitted and not yet taken back (the session bounds it)."""
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._loop, name="vidcascade-decode", daemon=True)
        self._thread.start()

    def submit(self, block: int, x0: torch.Tensor, meta: Any = None) -> None:
        """Queue ``x0`` [B, C, fpb, h, w] (not written again by the caller) for decoding."""
        event = None
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record()  # on the tick's stream: the worker's stream waits for it, the host does not
            x0.record_stream(self._stream)
        self.pending += 1
        self._jobs.put((block, x0, event, meta))

    def poll(self) -> bool:
        """Whether ``get`` would return without waiting."""
        return not self._done.empty()

    def get(self) -> Decoded:
        """The next block in submission order (waits for it); re-raises the decoder's error."""
        if self.pending == 0:
            raise RuntimeError("no block was submitted that has not been taken back")
        item = self._done.get()
        self.pending -= 1
        if isinstance(item, _Failed):
            raise item.error
        return item

    def close(self) -> None:
        """End the thread after the jobs queued before (their results are dropped if not taken)."""
        self._jobs.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        failed = False
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            if failed:  # after a failure the decoder's causal state is broken: refuse the rest
                continue
            block, x0, event, meta = job
            try:
                self._done.put(self._decode(block, x0, event, meta))
            except BaseException as e:  # handed to the session's thread, which raises it
                log.debug("decode of block %d failed: %s", block, e)
                failed = True
                self._done.put(_Failed(e))

    @torch.no_grad()
    def _decode(self, block: int, x0: torch.Tensor, event, meta) -> Decoded:
        t0 = time.perf_counter()
        if self._stream is None:
            frames = self.decoder.decode(x0) if self.decoder is not None else np.zeros((0,), np.uint8)
            latents = x0.cpu()
        else:
            with torch.cuda.stream(self._stream):
                self._stream.wait_event(event)
                frames = self.decoder.decode(x0) if self.decoder is not None else np.zeros((0,), np.uint8)
                latents = x0.cpu()  # syncs this stream only
        now = time.perf_counter()
        return Decoded(block, latents, frames, now, now - t0, meta)
