"""The executor of one rank: its own in-flight blocks, the K/V exchange, replicated commits.

Per tick each rank
  1. runs one forward of its local entries (block b lives on rank b % R) with a K/V view that
     exchanges in-flight K/V (``exchange.py``); a rank with no local entry only takes part in the
     exchange;
  2. updates its blocks with the sampler; each block's generator lives on its rank with the
     single-process seed, so the noise is the same as in one process;
  3. broadcasts each block's clean x0 from its owner when it becomes ready: every rank keeps it
     (committed latents are replicated for re-cache) and rank 0 decodes it, or, with a decode
     rank, sends it there (``decode_rank.py``) as soon as the tick made it;
  4. commits the cache step's clean K/V on every rank, so the committed tier is replicated.

The order of collectives is a function of the plan alone, identical on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.executor import Executor
from ..models.rope import rotate_time_, time_rotation
from ..models.wan_dit import TextKV
from ..scheduling.plan import Tick
from .comm import Comm, CommStats
from .decode_rank import DecodeSender
from .exchange import make_exchange
from .faults import FaultInjector
from .placement import local_entries, rank_of_block


@dataclass
class DistExecutor(Executor):
    comm: Comm | None = None
    freshness: str = "joint"
    max_local: int = 1
    """Most in-flight blocks one rank holds in a tick (the padded exchange size)."""
    faults: FaultInjector = field(default_factory=FaultInjector.from_env)
    tick_comm: list[CommStats] = field(default_factory=list)
    """Communication of each tick run since the last reset (this rank)."""
    decode_sender: DecodeSender | None = None
    """With a decode rank, on rank 0: where ready blocks go (None: rank 0 decodes them)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.comm is None:
            raise ValueError("DistExecutor needs a Comm (use Comm(0, 1, device) for one process)")
        self.exchange = make_exchange(self.freshness, self.pool, self.comm, self.max_local, self.causal)
        self.clean: dict[int, torch.Tensor] = {}  # ready x0 of blocks awaiting their cache step

    @torch.no_grad()
    def run_tick(self, tick: Tick, text_kv: TextKV) -> dict[int, torch.Tensor]:
        """Run this rank's share of a tick. Returns {block: clean x0} of the blocks ready this tick
        on rank 0, {} elsewhere."""
        comm, fpb = self.comm, self.frames_per_block
        self.faults.check(comm.rank, tick.index)
        before = comm.stats.snapshot()
        local = local_entries(tick, comm.rank, comm.world_size)
        states = self.states(local)
        if local:
            v = self.forward(local, states, text_kv, self.exchange.view(tick, local))
        else:
            self.exchange.idle(tick)
        self.exchange.finish(tick)
        mine: dict[int, torch.Tensor] = {}
        for i, (e, st) in enumerate(zip(local, states)):
            if e.stage == self.schedule.num_steps:
                del self.blocks[e.block]
                continue
            x0 = self.advance(e, st, v[:, :, i * fpb : (i + 1) * fpb])
            if x0 is not None:
                mine[e.block] = x0
        for b in tick.ready:
            self.clean[b] = self._share(b, mine.get(b))
            if self.decode_sender is not None and comm.is_root:
                self.decode_sender.send(b, self.clean[b])
        for b in tick.commits:
            self.exchange.commit(tick, b)
            self.store_committed_x0(b, self.clean.pop(b))
        self.tick_comm.append(comm.stats.since(before))
        return {b: self.clean[b] for b in tick.ready} if comm.is_root else {}

    def _share(self, block: int, x0: torch.Tensor | None) -> torch.Tensor:
        """The clean x0 [B, C, fpb, h, w] of ``block``, from its owner to every rank."""
        owner = rank_of_block(block, self.comm.world_size)
        if x0 is None:
            if owner == self.comm.rank:
                raise RuntimeError(f"block {block} should be ready on rank {owner} but is not")
            c, h, w = self.latent_shape
            x0 = torch.empty(self.batch, c, self.frames_per_block, h, w, device=self.device)
        return self.comm.broadcast(x0.contiguous(), owner)

    @torch.no_grad()
    def recache(self, text_kv: TextKV) -> None:
        self.flush()  # the committed tier must hold every commit so far
        super().recache(text_kv)

    def rebase(self, delta: int) -> None:
        """Exact rebase on this rank: pending commits first (their K/V has the old positions),
        then the pool's keys and the previous tick's exchanged keys (per_tick reads them)."""
        self.flush()
        super().rebase(delta)
        gathered = getattr(self.exchange, "gathered", None)
        if gathered:
            head_dim = self.pool.k[0].shape[-1]
            cos, sin = time_rotation(head_dim, -delta, self.device)
            for g in gathered:  # [R, 2 (k, v), B, H, T, Dh]
                k = g[:, 0]
                rotate_time_(k, cos, sin)

    def flush(self) -> None:
        """Finish any exchange still in flight (per_tick) and apply the commits it carries."""
        self.exchange.flush()

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.exchange.reset()
        self.clean.clear()
        self.tick_comm = []
