"""Feature caching (BWCache, FlowCache-style), applied to an engine from outside the model.

``apply_feature_cache(engine, FeatureCacheConfig(policy="bwcache"))`` installs the hook on the
engine's executor; docs/caching.md describes the policies and the choices made.
"""

from __future__ import annotations

from ..config import FeatureCacheConfig
from .hook import CacheCounters, FeatureCache
from .policies import BWCacheCode, BWCachePaper, FlowCachePolicy, ForcedSchedule, make_policy

__all__ = [
    "BWCacheCode",
    "BWCachePaper",
    "CacheCounters",
    "FeatureCache",
    "FeatureCacheConfig",
    "FlowCachePolicy",
    "ForcedSchedule",
    "apply_feature_cache",
    "make_policy",
]


def apply_feature_cache(engine, cfg: FeatureCacheConfig, policy=None) -> FeatureCache | None:
    """Install (or with policy "none" and no explicit policy, remove) the feature cache of an
    Engine; returns the hook, whose ``counters`` say how many DiT-block rows were skipped."""
    ex = engine.executor
    if cfg.policy == "none" and policy is None:
        ex.feature_cache = None
        return None
    fc = FeatureCache(cfg, engine.schedule.num_steps, engine.bundle.dit.cfg.num_layers, policy)
    ex.feature_cache = fc
    return fc
