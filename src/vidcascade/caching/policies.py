"""Reuse policies: when a (video block, unit) pair may reuse its cached residual.

A unit is the whole DiT stack (one decision per video block) or one DiT block. The policies are
plain Python on floats; the hook (hook.py) measures the indicators and applies the decisions.
Sources: reference/caching.md §1 (BWCache, paper and released code) and §3 (FlowCache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..config import FeatureCacheConfig


@dataclass
class UnitState:
    """Decision state of one (video block, unit)."""

    block: int
    layer: int | None
    """The DiT block of a per-DiT-block unit; None for the whole stack."""
    planned: bool = False
    reuse: set[int] = field(default_factory=set)
    """Denoising stages planned to reuse."""
    tail_start: int | None = None
    acc: float = 0.0


class Policy(Protocol):
    per_layer: bool
    """One unit per DiT block (else one for the whole stack)."""
    uses_embedded: bool
    """The decision needs the indicator on the patch-embedded latent (FlowCache)."""
    uses_attn_input: bool
    """Computed steps measure the indicator on each DiT block's modulated attention input."""

    def decide(self, st: UnitState, stage: int, indicator: float | None) -> bool:
        """Reuse at ``stage``? (indicator: the embedded-latent change, for FlowCache)."""
        ...

    def computed(self, st: UnitState, stage: int, indicator: float | None) -> None:
        """After a computed step: indicator = relative L1 of the attention input(s) against the
        last computed step (None on the first)."""
        ...


def _tail(stage: int, last_steps: float) -> int:
    """Steps at the end that are always computed once caching first triggers at ``stage``."""
    n = int(stage * last_steps) if last_steps < 1 else int(last_steps)
    return max(1, n)  # the last denoising step is always computed (docs/caching.md)


class BWCacheCode:
    """hsc113/BWCache as released: all steps computed until the indicator first falls below the
    threshold at step k > 0; then one static schedule [reuse]*R + [compute], repeated, with the
    last int(k * last_steps) steps computed. Never revised."""

    uses_embedded = False
    uses_attn_input = True

    def __init__(self, cfg: FeatureCacheConfig, num_steps: int) -> None:
        self.threshold = cfg.resolved_threshold
        self.interval = cfg.resolved_interval(num_steps)
        self.last_steps = cfg.last_steps
        self.num_steps = num_steps
        self.per_layer = cfg.granularity == "dit_block"

    def decide(self, st: UnitState, stage: int, indicator: float | None) -> bool:
        return stage in st.reuse

    def computed(self, st: UnitState, stage: int, indicator: float | None) -> None:
        if st.planned or stage == 0 or indicator is None or not indicator < self.threshold:
            return
        r, end = self.interval, self.num_steps - _tail(stage, self.last_steps)
        st.reuse = {j for j in range(stage + 1, end) if (j - stage - 1) % (r + 1) < r}
        st.planned = True


class BWCachePaper(BWCacheCode):
    """The paper's reading: at every computed step with S(t) < threshold, reuse the next R steps;
    the tail (last floor(k/2) steps for the first trigger k) is always computed."""

    def computed(self, st: UnitState, stage: int, indicator: float | None) -> None:
        if stage == 0 or indicator is None or not indicator < self.threshold:
            return
        if st.tail_start is None:
            st.tail_start = self.num_steps - _tail(stage, self.last_steps)
        st.reuse |= set(range(stage + 1, min(stage + self.interval + 1, st.tail_start)))


class FlowCachePolicy:
    """FlowCache's per-chunk rule: the first ``warmup`` steps and the last step are computed; else
    reuse while the accumulated relative L1 of the patch-embedded latent stays below the threshold."""

    per_layer = False
    uses_embedded = True
    uses_attn_input = False

    def __init__(self, cfg: FeatureCacheConfig, num_steps: int) -> None:
        self.threshold = cfg.resolved_threshold
        self.warmup = cfg.warmup
        self.num_steps = num_steps

    def decide(self, st: UnitState, stage: int, indicator: float | None) -> bool:
        if stage < max(1, self.warmup) or stage == self.num_steps - 1 or indicator is None:
            st.acc = 0.0
            return False
        if st.acc + indicator < self.threshold:
            st.acc += indicator
            return True
        st.acc = 0.0
        return False

    def computed(self, st: UnitState, stage: int, indicator: float | None) -> None:
        return None


class ForcedSchedule:
    """A fixed schedule of (video block, stage, DiT block) triples to reuse (tests, ablations)."""

    per_layer = True
    uses_embedded = False
    uses_attn_input = False

    def __init__(self, reuse: set[tuple[int, int, int]]) -> None:
        self.reuse = set(reuse)

    def decide(self, st: UnitState, stage: int, indicator: float | None) -> bool:
        return (st.block, stage, st.layer) in self.reuse

    def computed(self, st: UnitState, stage: int, indicator: float | None) -> None:
        return None


def make_policy(cfg: FeatureCacheConfig, num_steps: int) -> Policy:
    if cfg.policy == "bwcache":
        return (BWCachePaper if cfg.variant == "paper" else BWCacheCode)(cfg, num_steps)
    if cfg.policy == "flowcache":
        return FlowCachePolicy(cfg, num_steps)
    raise ValueError(f"cache policy {cfg.policy!r} has no reuse rule; expected bwcache or flowcache")
