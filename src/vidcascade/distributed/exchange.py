"""Cross-rank K/V of the in-flight blocks: what one rank's forward attends to.

Each rank runs the forward of its own in-flight blocks (queries) only. The model hands every
self-attention layer's new K/V to the ``kv`` object (``KVAccess.update``); the views here are such
objects, so the exchange happens inside the forward without the model knowing.

``joint`` (exact): every layer all-gathers the in-flight K/V of all ranks (padded to
``max_local`` blocks per rank so the shapes are static) and places them in tick order in the
pool's in-flight region, which is then laid out exactly as in the single-process batched forward::

    token:  0          M - n*T                                     M                 M + C
          [ unused   | block i0 | i0+1 | ... | newest (all ranks) | committed tier  ]
                       keys of this rank's queries = [M - n*T, M + valid committed)

A rank with no block in flight still takes part in every layer's gather (``idle``), so that every
rank ends the tick holding every in-flight block's K/V; the cache step is then promoted locally.

``per_tick`` (one tick stale): a rank attends to the fresh K/V of its own blocks, to the other
in-flight blocks' K/V of the previous tick (the plan's per_tick ``reads``: a block that entered
this tick is not visible yet) and to the committed tier. The tick's fresh local K/V goes to every
rank once, layer by layer in the background while the forward goes on, and is waited for only
when the next tick starts; it also carries a cache step's clean K/V to every rank, which commits
it then (never stale K/V)::

    token:  0        M - (m+l)*T          M - l*T              M                 M + C
          [ unused | m stale blocks      | l fresh local blocks | committed tier  ]
                     (previous tick, all ranks)  (this tick)
"""

from __future__ import annotations

import torch

from ..cache.layout import CacheIndexError
from ..cache.pool import KVPool
from ..scheduling.plan import Entry, Tick
from .comm import Comm, Pending
from .placement import local_index, rank_of_block


class _ViewBase:
    def __init__(self, pool: KVPool, comm: Comm, max_local: int) -> None:
        self.pool = pool
        self.comm = comm
        self.max_local = max_local
        self.tpb = pool.tokens_per_block
        self._masks: dict[tuple, torch.Tensor | None] = {}

    def _cached_mask(self, key: tuple, all_true: bool, build, shape: tuple[int, int]) -> torch.Tensor | None:
        """The mask of ``key`` [shape]; None when every key is visible (SDPA's fast path, same
        result) and no sink bias applies. ``key`` must hold the valid committed token count."""
        sink = self.pool.sink_bias_tokens()
        if all_true and not sink:
            return None
        key = (*key, sink)
        if key not in self._masks:
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[key] = self.pool.with_sink_bias(None if all_true else build(), *shape)
        return self._masks[key]


class JointExchange(_ViewBase):
    """Per-layer all-gather of in-flight K/V (``joint`` freshness)."""

    def __init__(self, pool: KVPool, comm: Comm, max_local: int, causal: bool) -> None:
        super().__init__(pool, comm, max_local)
        self.causal = causal
        k0 = pool.k[0]
        b, h, _, dh = k0.shape
        self.send = torch.zeros(2, b, h, max_local * self.tpb, dh, dtype=k0.dtype, device=k0.device)
        self.recv = torch.empty(comm.world_size, *self.send.shape, dtype=k0.dtype, device=k0.device)

    def view(self, tick: Tick, local: tuple[Entry, ...]) -> JointKV:
        n = len(tick.entries)
        if not 1 <= n <= self.pool.max_inflight_blocks:
            raise CacheIndexError(f"{n} blocks in flight, the pool holds 1..{self.pool.max_inflight_blocks}")
        index = {e.block: i for i, e in enumerate(tick.entries)}
        rows = tuple(index[e.block] for e in local)
        ct = self.pool.valid_committed_tokens()
        # Causal: the row of tick position i sees positions <= i, so only the newest sees them all.
        all_true = not self.causal or all(i == n - 1 for i in rows)
        shape = (len(rows) * self.tpb, n * self.tpb + ct)
        mask = self._cached_mask((rows, n, ct), all_true, lambda: self._build_mask(rows, n, ct), shape)
        return JointKV(self, tick, len(local), mask)

    def _build_mask(self, rows: tuple[int, ...], n: int, committed_tokens: int) -> torch.Tensor:
        dev = self.pool.device
        q_blk = torch.tensor(rows, device=dev).repeat_interleave(self.tpb)  # [Nq]
        k_blk = torch.arange(n, device=dev).repeat_interleave(self.tpb)  # [n*T]
        inflight = k_blk[None, :] <= q_blk[:, None]  # [Nq, n*T], causal across in-flight blocks
        committed = torch.ones(q_blk.numel(), committed_tokens, dtype=torch.bool, device=dev)
        return torch.cat([inflight, committed], dim=1)  # [Nq, n*T + C]

    def idle(self, tick: Tick) -> None:
        """Take part in every layer's gather without a forward (this rank has no block in flight)."""
        view = self.view(tick, ())
        b, h, _, dh = self.send.shape[1:]
        empty = self.send.new_empty(b, h, 0, dh)
        for layer in range(len(self.pool.k)):
            view.update(layer, empty, empty)

    def finish(self, tick: Tick) -> None:
        """Nothing left to exchange: every layer was gathered during the forward."""

    def flush(self) -> None:
        """Nothing in flight between ticks."""

    def commit(self, tick: Tick, block: int) -> None:
        """Cache step of ``block``: every rank holds its clean K/V in the in-flight region."""
        i = next(i for i, e in enumerate(tick.entries) if e.block == block)
        self.pool.promote(i, len(tick.entries), block * self.pool.frames_per_block)

    def reset(self) -> None:
        pass


class JointKV:
    """KVAccess of one rank's forward in ``joint`` mode."""

    def __init__(self, ex: JointExchange, tick: Tick, n_local: int, mask: torch.Tensor | None) -> None:
        self.ex = ex
        self.n_local = n_local
        self.mask = mask
        pool, r = ex.pool, ex.comm.world_size
        n, tpb = len(tick.entries), ex.tpb
        m = pool.inflight_tokens
        self.inflight = slice(m - n * tpb, m)
        self.read = slice(m - n * tpb, m + pool.valid_committed_tokens())
        # Rank q's blocks sit at tick positions first[q], first[q] + R, ... (blocks are consecutive).
        first_block = tick.entries[0].block
        if tick.blocks != tuple(range(first_block, first_block + n)):
            raise CacheIndexError(f"tick {tick.index}: in-flight blocks {tick.blocks} are not consecutive")
        self.places = []
        for q in range(r):
            pos0 = (q - first_block) % r
            count = len(range(pos0, n, r))
            if count:
                self.places.append((q, pos0, count))

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        ex, tpb = self.ex, self.ex.tpb
        nq = self.n_local * tpb
        if k.shape[2] != nq:
            raise CacheIndexError(f"layer {layer}: got {k.shape[2]} new tokens, this rank expects {nq}")
        ex.send[0, :, :, :nq] = k
        ex.send[1, :, :, :nq] = v
        g = ex.comm.all_gather(ex.send, ex.recv)  # [R, 2, B, H, max_local*T, Dh]
        kt, vt = ex.pool.k[layer], ex.pool.v[layer]
        b, h, _, dh = kt.shape
        n = (self.inflight.stop - self.inflight.start) // tpb
        kin = kt[:, :, self.inflight].view(b, h, n, tpb, dh)  # [B, H, n, T, Dh]
        vin = vt[:, :, self.inflight].view(b, h, n, tpb, dh)
        for q, pos0, count in self.places:
            gq = g[q].view(2, b, h, ex.max_local, tpb, dh)[:, :, :, :count]  # [2, B, H, count, T, Dh]
            kin[:, :, pos0 :: ex.comm.world_size] = gq[0]
            vin[:, :, pos0 :: ex.comm.world_size] = gq[1]
        return kt[:, :, self.read], vt[:, :, self.read], self.mask


class PerTickExchange(_ViewBase):
    """In-flight K/V exchanged once per tick, in the background (``per_tick`` freshness).

    Each layer's fresh local K/V starts its all-gather as soon as the layer has computed it, so
    the exchange overlaps the rest of the forward; it is waited for only when the next tick needs
    it. A cache step's commit waits for the same exchange and is applied then (before any forward
    or re-cache reads the committed tier).
    """

    def __init__(self, pool: KVPool, comm: Comm, max_local: int) -> None:
        super().__init__(pool, comm, max_local)
        k0 = pool.k[0]
        b, h, _, dh = k0.shape
        nl = len(pool.k)
        self.send = torch.zeros(nl, 2, b, h, max_local * self.tpb, dh, dtype=k0.dtype, device=k0.device)
        # Per layer a contiguous [R, 2, B, H, max_local*T, Dh] receive buffer.
        self.recv = torch.empty(nl, comm.world_size, *self.send.shape[1:], dtype=k0.dtype, device=k0.device)
        self.pending: list[Pending] = []
        self.gathered: list[torch.Tensor] = []  # per layer, the exchange of prev_tick
        self.prev_tick: Tick | None = None
        self.commits: list[int] = []  # cache steps of prev_tick waiting for its exchange

    def reset(self) -> None:
        self.flush()
        self.gathered, self.prev_tick = [], None

    def start(self, layer: int) -> None:
        """Send this rank's fresh K/V of ``layer`` (written to ``send[layer]``) to every rank."""
        self.pending.append(self.comm.all_gather_start(self.send[layer], self.recv[layer]))

    def flush(self) -> None:
        """Wait for the exchange in flight and apply the commits that waited for it."""
        if self.pending:
            self.gathered = [p.wait() for p in self.pending]
            self.pending = []
        # Every layer's gathered K/V in one tensor [L, R, 2, B, H, max_local*T, Dh] (one rank: the
        # send buffer itself), so that a commit is one copy for all layers.
        stacked = self.recv if self.comm.world_size > 1 else self.send.unsqueeze(1)
        for block in self.commits:
            q, src = self._prev_block(block)
            self.pool.commit_stacked(block * self.pool.frames_per_block, stacked[:, q, :, :, :, src])
        self.commits = []

    def _prev_block(self, block: int) -> tuple[int, slice]:
        """(rank, token slice) of ``block``'s K/V in the gathered buffers of ``prev_tick``."""
        if self.prev_tick is None or not self.gathered:
            raise CacheIndexError(f"block {block}: no K/V was exchanged before")
        r = self.comm.world_size
        j = local_index(self.prev_tick, block, r)
        return rank_of_block(block, r), slice(j * self.tpb, (j + 1) * self.tpb)

    def view(self, tick: Tick, local: tuple[Entry, ...]) -> PerTickKV:
        self.flush()
        tau = tick.index
        stale = sorted({j for e in local for j, t in e.reads if t == tau - 1})
        if stale and (self.prev_tick is None or self.prev_tick.index != tau - 1):
            raise CacheIndexError(f"tick {tau} reads K/V of tick {tau - 1}, which was not exchanged")
        m, l_, tpb = len(stale), len(local), self.tpb
        top = self.pool.inflight_tokens
        if (m + l_) * tpb > top:
            raise CacheIndexError(f"tick {tau}: {m} stale + {l_} fresh blocks exceed the in-flight tier")
        base = top - (m + l_) * tpb
        for i, blk in enumerate(stale):  # stage the previous tick's K/V of the blocks we read
            q, src = self._prev_block(blk)
            dst = slice(base + i * tpb, base + (i + 1) * tpb)
            for kt, vt, g in zip(self.pool.k, self.pool.v, self.gathered):
                kt[:, :, dst] = g[q, 0, :, :, src]
                vt[:, :, dst] = g[q, 1, :, :, src]
        # Which columns (stale blocks of tick tau-1, then fresh local blocks) each local row reads.
        cols = [(j, tau - 1) for j in stale] + [(e.block, tau) for e in local]
        pattern = tuple(tuple(c in e.reads for c in cols) for e in local)
        for e in local:
            missing = set(e.reads) - set(cols)
            if missing:
                raise CacheIndexError(
                    f"tick {tau}: block {e.block} reads {sorted(missing)}, which the per_tick exchange "
                    "does not hold (is the plan built with freshness='per_tick'?)"
                )
        ct = self.pool.valid_committed_tokens()
        all_true = all(all(row) for row in pattern)
        shape = (len(pattern) * self.tpb, len(cols) * self.tpb + ct)
        mask = self._cached_mask((pattern, ct), all_true, lambda: self._build_mask(pattern, ct), shape)
        return PerTickKV(self, base, l_, mask)

    def _build_mask(self, pattern: tuple[tuple[bool, ...], ...], committed_tokens: int) -> torch.Tensor:
        blk = torch.tensor(pattern, dtype=torch.bool, device=self.pool.device)  # [l, m + l]
        inflight = blk.repeat_interleave(self.tpb, 0).repeat_interleave(self.tpb, 1)  # [l*T, (m+l)*T]
        committed = torch.ones(inflight.shape[0], committed_tokens, dtype=torch.bool, device=blk.device)
        return torch.cat([inflight, committed], dim=1)  # [l*T, (m+l)*T + C]

    def idle(self, tick: Tick) -> None:
        """No forward on this rank: its (empty) share of every layer still goes out."""
        self.flush()
        for layer in range(len(self.pool.k)):
            self.start(layer)

    def finish(self, tick: Tick) -> None:
        """Every layer's exchange of ``tick`` is under way; the next tick (or ``flush``) waits for it."""
        if len(self.pending) != len(self.pool.k):
            raise RuntimeError(f"tick {tick.index}: {len(self.pending)} layer exchanges started")
        self.prev_tick = tick

    def commit(self, tick: Tick, block: int) -> None:
        """Cache step of ``block``: its clean K/V comes with this tick's exchange; committed then."""
        if tick is not self.prev_tick:
            raise RuntimeError(f"commit of block {block} at tick {tick.index} before its exchange")
        self.commits.append(block)


class PerTickKV:
    """KVAccess of one rank's forward in ``per_tick`` mode."""

    def __init__(self, ex: PerTickExchange, base: int, n_local: int, mask: torch.Tensor | None) -> None:
        self.ex = ex
        self.mask = mask
        pool = ex.pool
        top = pool.inflight_tokens
        self.nq = n_local * ex.tpb
        self.fresh = slice(top - self.nq, top)
        self.read = slice(base, top + pool.valid_committed_tokens())

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if k.shape[2] != self.nq:
            raise CacheIndexError(f"layer {layer}: got {k.shape[2]} new tokens, this rank expects {self.nq}")
        ex = self.ex
        kt, vt = ex.pool.k[layer], ex.pool.v[layer]
        kt[:, :, self.fresh] = k
        vt[:, :, self.fresh] = v
        ex.send[layer, 0, :, :, : self.nq] = k
        ex.send[layer, 1, :, :, : self.nq] = v
        ex.start(layer)  # overlaps the rest of this forward
        return kt[:, :, self.read], vt[:, :, self.read], self.mask


def make_exchange(
    freshness: str, pool: KVPool, comm: Comm, max_local: int, causal: bool
) -> JointExchange | PerTickExchange:
    if freshness == "joint":
        return JointExchange(pool, comm, max_local, causal)
    if freshness == "per_tick":
        return PerTickExchange(pool, comm, max_local)
    raise ValueError(f"freshness must be joint or per_tick, got {freshness!r}")
