"""The engine of one rank of a temporally parallel job.

``DistEngine`` is ``Engine`` with a ``DistExecutor``: the same sessions, plan, prompt switches,
re-cache and streaming. Every rank runs ``stream`` (or a ``session``) with the same arguments;
only rank 0 receives finished blocks, decodes them and yields them (the other ranks' streams yield
nothing and end when the plan ends). Each stream first checks that all ranks run the same job with
the same weights. Live control of a session must reach every rank's session at the same tick
boundary (the session's ``on_boundary`` hook is the place to broadcast it).

With a decode rank (``decode_sender`` on rank 0, ``decode_rank.py``) no rank of this engine
decodes: rank 0 sends each ready block's latents to the decode rank and yields its BlockOutput
without frames; the stream's end is sent when the stream ends (``finish_decode``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..config import CascadeConfig
from ..engine.engine import BlockOutput, Engine, PromptSwitch, Video
from ..engine.session import Session
from ..scheduling.plan import Plan, build_plan, steady_in_flight
from ..weights.bundle import Bundle
from .checks import check_ranks_agree, fingerprint, weights_checksum
from .comm import Comm
from .decode_rank import DecodeSender
from .executor import DistExecutor
from .placement import max_local_bound


class DistEngine(Engine):
    def __init__(
        self,
        bundle: Bundle,
        cascade: CascadeConfig | None,
        comm: Comm,
        *,
        batch: int = 1,
        sync_timing: bool = False,
        decode_sender: DecodeSender | None = None,
    ) -> None:
        self.comm = comm
        if decode_sender is not None and not comm.is_root:
            raise ValueError(f"only rank 0 sends blocks to the decode rank, not rank {comm.rank}")
        self.decode_sender = decode_sender
        super().__init__(bundle, cascade, batch=batch, sync_timing=sync_timing)
        if comm.device != bundle.device:
            raise ValueError(f"rank {comm.rank} runs on {comm.device} but the model is on {bundle.device}")
        self._weights: dict | None = None
        self._checked = False

    @property
    def max_local(self) -> int:
        return max_local_bound(steady_in_flight(self.schedule.num_steps, self.lag), self.comm.world_size)

    def _inflight_capacity(self) -> int:
        n = steady_in_flight(self.schedule.num_steps, self.lag)
        # per_tick holds the previous tick's in-flight blocks next to this rank's fresh ones.
        return n + self.max_local if self.cascade.freshness == "per_tick" else n

    def _make_executor(self, **kwargs) -> DistExecutor:
        return DistExecutor(
            **kwargs,
            comm=self.comm,
            freshness=self.cascade.freshness,
            max_local=self.max_local,
            decode_sender=self.decode_sender,
        )

    def plan(self, num_blocks: int) -> Plan:
        return build_plan(
            num_blocks, self.schedule.num_steps, self.lag, self.cascade.attention, self.cascade.freshness
        )

    def check_ranks(
        self, prompt: str, num_blocks: int, seed: int, switches: Sequence[PromptSwitch | tuple[int, str]]
    ) -> None:
        """Raise ``RankMismatchError`` on every rank unless all ranks run this very job."""
        if self._weights is None:
            self._weights = weights_checksum(self.bundle.dit)
        fp = fingerprint(self, prompt, num_blocks, seed, switches, weights=self._weights)
        check_ranks_agree(self.comm, fp)

    def session(self, prompt: str, *, seed: int = 0, max_blocks: int | None = None, **kwargs) -> Session:
        """A session on every rank (call it with the same arguments on every rank)."""
        if not self._checked:
            self.check_ranks(prompt, max_blocks or 0, seed, ())
        self._checked = False
        if self.decode_sender is not None and self.decode_sender.finished:
            raise RuntimeError("the decode rank takes one stream; this engine's stream has ended")
        if self.decode_sender is not None or not self.comm.is_root:
            kwargs["decode"] = False  # the decode rank decodes; ranks > 0 never receive a block
        return super().session(prompt, seed=seed, max_blocks=max_blocks, **kwargs)

    def _session_finished(self) -> None:
        self.executor.flush()
        self.finish_decode()

    def finish_decode(self) -> None:
        """Tell the decode rank that the stream ended (idempotent; also after a failure or a stop,
        so that it writes what it has)."""
        if self.decode_sender is not None:
            self.decode_sender.finish()

    def stream(
        self,
        prompt: str,
        num_blocks: int,
        *,
        seed: int = 0,
        switches: Sequence[PromptSwitch | tuple[int, str]] = (),
    ) -> Iterator[BlockOutput]:
        self.check_ranks(prompt, num_blocks, seed, switches)
        self._checked = True  # the session stream() opens needs no second check
        yield from super().stream(prompt, num_blocks, seed=seed, switches=switches)

    def generate(
        self,
        prompt: str,
        num_blocks: int,
        *,
        seed: int = 0,
        switches: Sequence[PromptSwitch | tuple[int, str]] = (),
    ) -> Video | None:
        """The whole video on rank 0; None on the other ranks (after running their share). With a
        decode rank, rank 0's video has the latents and no frames ([B, 0, 0, 0, 3])."""
        if self.comm.is_root and self.decode_sender is not None:
            outs = list(self.stream(prompt, num_blocks, seed=seed, switches=switches))
            latents = torch.cat([o.latents for o in outs], dim=2)
            frames = np.zeros((latents.shape[0], 0, 0, 0, 3), dtype=np.uint8)
            return Video(frames, latents, self.bundle.fps, self.stats)
        if self.comm.is_root:
            return super().generate(prompt, num_blocks, seed=seed, switches=switches)
        for _ in self.stream(prompt, num_blocks, seed=seed, switches=switches):
            pass
        return None
