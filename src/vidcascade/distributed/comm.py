"""The process group and the few collectives the engine needs, timed and counted.

This is the only file of vidcascade that creates process groups or runs collectives (``faults.py``
only writes torchrun's error file). ``Comm`` of world size 1 creates no process group and every
collective is the identity: the single-process no-op path.

Under torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) ``init_comm``
joins the job: gloo for CPU ranks, NCCL for CUDA ranks (device cuda:LOCAL_RANK). Every collective
inherits the group's timeout (VIDCASCADE_DIST_TIMEOUT_S, default 300 s), so a rank that waits for a
peer which died raises instead of hanging; torchrun's agent also stops the other workers as soon as
one exits non-zero.

With ``--decode-rank`` the job has one process more than denoising ranks: ``split_decode_rank``
gives the denoising ranks a ``Comm`` over their own group (their collectives never involve the
decode rank) and keeps the whole job's ``Comm`` for the point-to-point sends of finished latents
(``send`` / ``recv``) to the last rank.

Accounting: ``CommStats.seconds`` is wall time inside collectives (on CUDA with ``timed=True``
the device is synchronised around each call, otherwise the time is only the launch; for
background collectives only the launch and the wait are counted, i.e. the exposed part);
``CommStats.bytes`` counts the bytes this rank *receives* from other ranks.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0


@dataclass
class CommStats:
    seconds: float = 0.0
    """Wall time inside collectives (includes waiting for slower ranks)."""
    bytes: int = 0
    """Bytes received from other ranks."""
    calls: int = 0

    def snapshot(self) -> CommStats:
        return CommStats(self.seconds, self.bytes, self.calls)

    def since(self, before: CommStats) -> CommStats:
        return CommStats(self.seconds - before.seconds, self.bytes - before.bytes, self.calls - before.calls)


class Pending:
    """A collective in flight (see ``Comm.all_gather_start``)."""

    def __init__(self, comm: Comm, out: torch.Tensor, work, inp: torch.Tensor) -> None:
        self.comm, self.out, self.work = comm, out, work
        self._inp = inp  # keep the send buffer alive until the collective is done

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            t0 = time.perf_counter()
            self.work.wait()
            self.comm._sync()  # timed CUDA: until the transfer is done, not just enqueued
            self.comm.stats.seconds += time.perf_counter() - t0
            self.work = None
            self._inp = None
        return self.out


class Comm:
    """Collectives of one job (or the identity when ``world_size == 1``)."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: torch.device,
        *,
        local_rank: int = 0,
        timed: bool = False,
        group=None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = torch.device(device)
        self.timed = timed
        self.group = group
        """The process group of the collectives (None: the whole job). Ranks are the job's: a
        subgroup is always ranks 0..world_size-1 of the job (``split_decode_rank``)."""
        self.stats = CommStats()
        # torch >= 2.13 renamed all_gather_into_tensor; keep working on older releases.
        self._gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def _sync(self) -> None:
        if self.timed and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _account(self, t0: float, received: int) -> None:
        self._sync()
        self.stats.seconds += time.perf_counter() - t0
        self.stats.bytes += received
        self.stats.calls += 1

    def _gather_args(self, inp: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        inp = inp.contiguous()
        if out is None:
            out = torch.empty((self.world_size, *inp.shape), dtype=inp.dtype, device=inp.device)
        if out.shape != (self.world_size, *inp.shape) or not out.is_contiguous():
            raise ValueError(f"all_gather output must be contiguous {[self.world_size, *inp.shape]}")
        return inp, out

    def _launch(self, out: torch.Tensor, inp: torch.Tensor, async_op: bool):
        # Passed as the concatenation along dim 0, the layout every backend accepts.
        flat = out.view(self.world_size * inp.shape[0], *inp.shape[1:])
        return self._gather_single(flat, inp, group=self.group, async_op=async_op)

    def all_gather(self, inp: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Every rank's ``inp`` [N, ...] (same shape everywhere) stacked: [R, N, ...].

        ``out`` is an optional preallocated result; with one rank ``inp`` itself is returned as a
        view, so callers must not write into the result.
        """
        if self.world_size == 1:
            return inp.unsqueeze(0)
        inp, out = self._gather_args(inp, out)
        self._sync()
        t0 = time.perf_counter()
        self._launch(out, inp, async_op=False)
        self._account(t0, (self.world_size - 1) * inp.numel() * inp.element_size())
        return out

    def all_gather_start(self, inp: torch.Tensor, out: torch.Tensor | None = None) -> Pending:
        """``all_gather`` that runs in the background; ``Pending.wait()`` gives its result.

        ``inp`` must not be written until then. Only the time spent launching and waiting (the
        exposed part) is counted as communication time.
        """
        if self.world_size == 1:
            return Pending(self, inp.unsqueeze(0), None, inp)
        inp, out = self._gather_args(inp, out)
        t0 = time.perf_counter()
        work = self._launch(out, inp, async_op=True)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.bytes += (self.world_size - 1) * inp.numel() * inp.element_size()
        self.stats.calls += 1
        return Pending(self, out, work, inp)

    def broadcast(self, t: torch.Tensor, src: int) -> torch.Tensor:
        """``t`` of rank ``src`` on every rank (in place)."""
        if self.world_size == 1:
            return t
        self._sync()
        t0 = time.perf_counter()
        dist.broadcast(t, src, group=self.group)
        self._account(t0, 0 if self.rank == src else t.numel() * t.element_size())
        return t

    def all_gather_object(self, obj: object) -> list:
        """Small picklable objects of every rank (start-up checks, statistics); not counted."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def send(self, t: torch.Tensor, dst: int) -> Pending:
        """Send ``t`` to rank ``dst`` of the job in the background (``Pending.wait()`` when it has
        left; ``t`` must not be written until then). Sends to one rank arrive in order."""
        t0 = time.perf_counter()
        work = dist.isend(t, dst)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.calls += 1
        return Pending(self, t, work, t)

    def recv(self, t: torch.Tensor, src: int) -> torch.Tensor:
        """Receive into ``t`` what rank ``src`` of the job sent (waits for it)."""
        t0 = time.perf_counter()
        dist.recv(t, src)
        self._account(t0, t.numel() * t.element_size())
        return t

    def send_object(self, obj: object, dst: int) -> None:
        """A small picklable object to rank ``dst`` (summaries at the end of a job); not counted."""
        dist.send_object_list([obj], dst, device=self.device if self.device.type == "cuda" else None)

    def recv_object(self, src: int) -> object:
        out: list = [None]
        dist.recv_object_list(out, src, device=self.device if self.device.type == "cuda" else None)
        return out[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            if self.device.type == "cuda":
                dist.barrier(group=self.group, device_ids=[self.device.index])
            else:
                dist.barrier(group=self.group)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def timeout_seconds() -> float:
    v = os.environ.get("VIDCASCADE_DIST_TIMEOUT_S")
    try:
        t = float(v) if v else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"VIDCASCADE_DIST_TIMEOUT_S={v!r} is not a number of seconds") from None
    if t <= 0:
        raise ValueError(f"VIDCASCADE_DIST_TIMEOUT_S must be > 0, got {v!r}")
    return t


def init_comm(
    device: str | torch.device = "cpu",
    *,
    rank: int | None = None,
    world_size: int | None = None,
    init_method: str | None = None,
    timeout_s: float | None = None,
    timed: bool = False,
) -> Comm:
    """Join the job described by the arguments or, where they are None, by torchrun's environment.

    Without WORLD_SIZE (a plain ``python -m vidcascade``) this is a single rank and no process group
    is made. ``device`` picks the backend: cpu -> gloo; cuda -> NCCL on cuda:LOCAL_RANK.
    """
    world_size = world_size if world_size is not None else (_env_int("WORLD_SIZE") or 1)
    rank = rank if rank is not None else (_env_int("RANK") or 0)
    local_rank = _env_int("LOCAL_RANK")
    local_rank = local_rank if local_rank is not None else rank
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"temporal parallelism runs on cpu or cuda devices, got {str(dev)!r}")
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r}: CUDA is not available on this machine")
        if world_size > 1:
            if dev.index is not None and dev.index != local_rank:
                log.warning("device %s ignored: rank %d uses cuda:%d (its LOCAL_RANK)", dev, rank, local_rank)
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size == 1:
        if _env_int("WORLD_SIZE") is None:
            log.info("WORLD_SIZE is not set: one rank (launch with torchrun --nproc-per-node R for R ranks)")
        return Comm(0, 1, dev, timed=timed)
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group already exists in this process")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl":
        # An NCCL error or timeout aborts the communicator and the process instead of hanging.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else timeout_seconds())
    kwargs: dict = {}
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(
        backend,
        init_method=init_method or "env://",
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        **kwargs,
    )
    log.debug("rank %d/%d joined (%s on %s, timeout %s)", rank, world_size, backend, dev, timeout)
    return Comm(rank, world_size, dev, local_rank=local_rank, timed=timed)


def split_decode_rank(job: Comm) -> Comm | None:
    """The last rank of ``job`` decodes; the others denoise. Every rank of the job calls this (it
    makes a process group). Returns the denoising ranks' ``Comm`` over their own group (job ranks
    0..R-1 of R+1), or None on the decode rank."""
    if job.world_size < 2:
        raise ValueError(
            f"a decode rank needs at least 2 processes (R denoising ranks + 1), got {job.world_size}: "
            "launch with torchrun --nproc-per-node R+1"
        )
    denoisers = list(range(job.world_size - 1))
    group = dist.new_group(denoisers)
    if job.rank == job.world_size - 1:
        return None
    if len(denoisers) == 1:
        return Comm(0, 1, job.device, local_rank=job.local_rank, timed=job.timed)
    return Comm(job.rank, len(denoisers), job.device, local_rank=job.local_rank, timed=job.timed, group=group)


def shutdown(comm: Comm) -> None:
    """Leave the job cleanly (after a successful run; a failing rank just exits)."""
    if comm.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
