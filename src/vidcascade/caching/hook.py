"""The feature cache as a layer hook of the DiT (models/wan_dit.py ``LayerHook``).

The executor hands it each tick's entries; the model hands it each DiT block to run. Per in-flight
video block (a *row*: its frames in the tick's concatenated sequence) it keeps the residual of
every DiT block from the row's last computed step, and decides per (row, unit) whether to compute
or to add that residual. A row's state is its own: it starts empty when the video block enters,
is dropped at its cache step (which always computes), and everything is dropped on a prompt switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..config import FeatureCacheConfig
from ..models.wan_dit import KVAccess, WanBlock
from ..scheduling.plan import Entry
from .policies import Policy, UnitState, make_policy


@dataclass
class CacheCounters:
    computed: int = 0
    """(row, DiT block) pairs computed, summed over forwards."""
    skipped: int = 0
    """(row, DiT block) pairs that added their cached residual instead."""

    @property
    def skipped_share(self) -> float:
        total = self.computed + self.skipped
        return self.skipped / total if total else 0.0


@dataclass
class _Row:
    block: int
    units: list[UnitState]
    residual: list[torch.Tensor | None]
    """Per DiT block: output - input of the last computed step, [B, tokens_per_block, D]."""
    prev_xm: list[torch.Tensor | None]
    kv: list[tuple[torch.Tensor, torch.Tensor] | None]
    """Per DiT block: K/V [B, H, tokens_per_block, Dh] of the last computed step (stale mode)."""
    prev_f: torch.Tensor | None = None
    indicators: list[float] = field(default_factory=list)


def rel_l1(x: torch.Tensor, prev: torch.Tensor) -> float:
    """mean |x - prev| / mean |prev| (BWCache's and FlowCache's indicator)."""
    den = prev.float().abs().mean()
    return float((x.float() - prev.float()).abs().mean() / den.clamp_min(1e-12))


class FeatureCache:
    """LayerHook of one engine: ``begin_tick`` before each tick's forward, ``end_tick`` after."""

    def __init__(
        self, cfg: FeatureCacheConfig, num_steps: int, num_layers: int, policy: Policy | None = None
    ) -> None:
        self.cfg = cfg
        self.num_steps = num_steps
        self.num_layers = num_layers
        self.policy = policy or make_policy(cfg, num_steps)
        self.stale_kv = cfg.kv == "stale"
        self.counters = CacheCounters()
        self.rows: dict[int, _Row] = {}
        self._text_kv: object | None = None
        self._tick: list[tuple[_Row, int]] = []
        self._skip: list[bool] = []
        self._stack_skip: list[bool] = []

    def reset(self) -> None:
        self.rows.clear()
        self._text_kv = None
        self.counters = CacheCounters()

    # -- tick bracket (called by the executor) --------------------------------------------------

    def begin_tick(self, entries: Sequence[Entry], text_kv: object) -> FeatureCache:
        if self._text_kv is not None and text_kv is not self._text_kv:
            self.rows.clear()  # prompt switch: no residual of the old prompt is reused
        self._text_kv = text_kv
        nl = self.num_layers
        units = nl if self.policy.per_layer else 1
        tick = []
        for e in entries:
            row = self.rows.get(e.block)
            if row is None:
                st = [UnitState(e.block, i if self.policy.per_layer else None) for i in range(units)]
                row = self.rows[e.block] = _Row(e.block, st, [None] * nl, [None] * nl, [None] * nl)
            tick.append((row, e.stage))
        self._tick = tick
        return self

    def end_tick(self) -> None:
        for row, stage in self._tick:
            if stage == self.num_steps:  # cache step done: the block leaves; its state goes
                self.rows.pop(row.block, None)
            elif not self.policy.per_layer and row.indicators:  # a computed step of the stack
                self.policy.computed(row.units[0], stage, sum(row.indicators) / self.num_layers)
            row.indicators = []
        self._tick = []

    # -- LayerHook ------------------------------------------------------------------------------

    def _may_reuse(self, row: _Row, stage: int, layers: range) -> bool:
        return stage < self.num_steps and all(row.residual[i] is not None for i in layers)

    def embedded(self, h: torch.Tensor) -> None:
        n = len(self._tick)
        tpb = h.shape[1] // n
        self._tpb = tpb
        self._stack_skip = [False] * n
        if self.policy.per_layer:
            return
        for j, (row, stage) in enumerate(self._tick):
            d = None
            if self.policy.uses_embedded:
                f = h[:, j * tpb : (j + 1) * tpb]
                d = rel_l1(f, row.prev_f) if row.prev_f is not None else None
                row.prev_f = f.clone()
            ok = self._may_reuse(row, stage, range(self.num_layers))
            # The policy is asked even when reuse is impossible, so its state (FlowCache's
            # accumulator) sees every step; a forced compute then overrides it.
            self._stack_skip[j] = self.policy.decide(row.units[0], stage, d) and ok

    def layer(
        self,
        index: int,
        block: WanBlock,
        h: torch.Tensor,
        e0: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor],
        kv: KVAccess | None,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        tpb, n = self._tpb, len(self._tick)
        fpb = e0.shape[1] // n
        if self.policy.per_layer:
            skip = [
                self.policy.decide(row.units[index], stage, None)
                and self._may_reuse(row, stage, range(index, index + 1))
                for row, stage in self._tick
            ]
        else:
            skip = list(self._stack_skip)
        self._skip = skip
        computed = [j for j in range(n) if not skip[j]]
        self.counters.computed += len(computed)
        self.counters.skipped += n - len(computed)
        if self.policy.uses_attn_input:
            for j in computed:
                row, stage = self._tick[j]
                if stage == self.num_steps:
                    continue
                xm = block.attn_input(h[:, j * tpb : (j + 1) * tpb], e0[:, j * fpb : (j + 1) * fpb])
                prev = row.prev_xm[index]
                row.prev_xm[index] = xm
                if prev is not None:
                    d = rel_l1(xm, prev)
                    if self.policy.per_layer:
                        self.policy.computed(row.units[index], stage, d)
                    else:
                        row.indicators.append(d)
                elif self.policy.per_layer:
                    self.policy.computed(row.units[index], stage, None)
        store = _KVProxy(self, kv, index, tpb) if (self.stale_kv and kv is not None) else kv
        if not computed:  # nothing to compute: no K/V is written, no query reads this layer
            return h + torch.cat([self._tick[j][0].residual[index] for j in range(n)], dim=1)
        if len(computed) == n:
            out = block(h, e0, cos, sin, text, index, store, attn_mask)  # the uncached path, exactly
        else:
            residual = torch.cat(
                [
                    torch.zeros_like(h[:, :tpb]) if not skip[j] else self._tick[j][0].residual[index]
                    for j in range(n)
                ],
                dim=1,
            )  # [B, N, D]
            frames = torch.tensor(
                [j * fpb + f for j in computed for f in range(fpb)], dtype=torch.long, device=h.device
            )
            out = block.forward_rows(h, e0, cos, sin, text, index, store, attn_mask, frames, residual)
        for j in computed:
            row, stage = self._tick[j]
            if stage < self.num_steps:
                sl = slice(j * tpb, (j + 1) * tpb)
                row.residual[index] = out[:, sl] - h[:, sl]
        return out


class _KVProxy:
    """Stale K/V mode: a skipping row offers the K/V stored at its last computed step."""

    def __init__(self, cache: FeatureCache, kv: KVAccess, layer: int, tpb: int) -> None:
        self.cache, self.kv, self.layer, self.tpb = cache, kv, layer, tpb

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        tpb = self.tpb
        k, v = k.clone(), v.clone()
        for j, (row, stage) in enumerate(self.cache._tick):
            sl = slice(j * tpb, (j + 1) * tpb)
            if self.cache._skip[j]:
                k[:, :, sl], v[:, :, sl] = row.kv[layer]
            elif stage < self.cache.num_steps:
                row.kv[layer] = (k[:, :, sl].clone(), v[:, :, sl].clone())
        return self.kv.update(layer, k, v)
