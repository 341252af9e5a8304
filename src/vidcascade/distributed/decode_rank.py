"""A rank of its own for decoding (``--parallel temporal --decode-rank``): the paper's 5th device.

The job has R + 1 processes: ranks 0..R-1 denoise (``comm.split_decode_rank`` gives them a group of
their own) and the last rank only decodes and writes. The denoising root hands each finished
block's clean latents, on its device, to ``DecodeSender.send`` as soon as its tick made them; the
send runs in the background (at most ``depth`` blocks in transit before the root waits, so a slow
decoder holds the denoisers back instead of piling up memory). The decode rank takes them in block
order from ``receive_blocks`` and runs the streaming VAE decode (and the writer) on them; no
denoising rank makes a decoder.

Messages, root -> decode rank, in order: per block a header then its latents; one end header.

    header  int64 [8]: (kind, block, B, C, F, h, w, 0); kind 1 = latents follow, 0 = end
    latents float32 [B, C, F, h, w]
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .comm import Comm, Pending

log = logging.getLogger(__name__)

_HEADER = 8
_BLOCK, _END = 1, 0


class DecodeSender:
    """On the denoising root: finished latents to the decode rank (the last rank of ``job``)."""

    def __init__(self, job: Comm, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.job = job
        self.dst = job.world_size - 1
        self.depth = depth
        self._pending: deque[list[Pending]] = deque()
        self.sent: list[int] = []
        """Blocks sent, in order."""
        self.finished = False

    def _header(self, kind: int, block: int, shape: tuple[int, ...]) -> torch.Tensor:
        h = torch.zeros(_HEADER, dtype=torch.int64)
        h[0], h[1] = kind, block
        h[2 : 2 + len(shape)] = torch.tensor(shape)
        return h.to(self.job.device)

    def send(self, block: int, x0: torch.Tensor) -> None:
        """Send ``block``'s clean latents [B, C, F, h, w] (not written again by the caller)."""
        if self.finished:
            raise RuntimeError(f"block {block} sent after the end of the stream")
        if x0.dim() != 5:
            raise ValueError(f"latents must be [B, C, F, h, w], got shape {tuple(x0.shape)}")
        while len(self._pending) >= self.depth:  # the decode rank is `depth` blocks behind
            for p in self._pending.popleft():
                p.wait()
        lat = x0.detach().to(torch.float32).contiguous()
        head = self._header(_BLOCK, block, tuple(lat.shape))
        self._pending.append([self.job.send(head, self.dst), self.job.send(lat, self.dst)])
        self.sent.append(block)

    def finish(self) -> None:
        """Send the end of the stream and wait until everything has left (idempotent)."""
        if self.finished:
            return
        self.finished = True
        self._pending.append([self.job.send(self._header(_END, -1, ()), self.dst)])
        while self._pending:
            for p in self._pending.popleft():
                p.wait()


def receive_blocks(job: Comm, src: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """On the decode rank: (block, latents [B, C, F, h, w] float32 on this rank's device) in the
    order sent, until the end header."""
    head = torch.empty(_HEADER, dtype=torch.int64, device=job.device)
    while True:
        job.recv(head, src)
        kind, block, *shape = (int(v) for v in head.tolist())
        if kind == _END:
            return
        if kind != _BLOCK:
            raise RuntimeError(f"decode rank: unknown message kind {kind} from rank {src}")
        shape = tuple(shape[:5])
        lat = torch.empty(shape, dtype=torch.float32, device=job.device)
        yield block, job.recv(lat, src)


@dataclass
class DecodedBlock:
    block: int
    latents: torch.Tensor
    """[B, C, F, h, w] on the CPU."""
    frames: np.ndarray
    """uint8 [B, T, H, W, 3]."""
    decode_s: float
    done_wall: float
    """``time.time()`` when the frames were ready (comparable with the root's on one machine)."""


def decode_blocks(decoder, job: Comm, src: int = 0) -> Iterator[DecodedBlock]:
    """Decode the blocks that arrive, one after the other, with the streaming ``decoder``."""
    decoder.reset()
    expected = 0
    with torch.no_grad():
        for block, lat in receive_blocks(job, src):
            if block != expected:
                raise RuntimeError(f"decode rank: got block {block}, expected block {expected}")
            expected += 1
            t0 = time.perf_counter()
            frames = decoder.decode(lat)
            dt = time.perf_counter() - t0
            yield DecodedBlock(block, lat.cpu(), frames, dt, time.time())
