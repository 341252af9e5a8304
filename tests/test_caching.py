"""Feature cache (vidcascade.caching): exactness, forced schedules against an explicit reference
loop, row isolation (video blocks, prompt switches), the cache step, and the policies' rules."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from _micro import MICRO, make_bundle
from vidcascade.caching import (
    BWCacheCode,
    BWCachePaper,
    FeatureCache,
    FlowCachePolicy,
    ForcedSchedule,
    apply_feature_cache,
)
from vidcascade.caching.policies import UnitState
from vidcascade.config import CascadeConfig, ConfigError, FeatureCacheConfig, SamplingConfig
from vidcascade.engine.engine import Engine

S = 5
BLOCKS = 4
CFG3 = dataclasses.replace(MICRO, num_layers=3)


def _bundle(guidance: float = 1.0):
    steps = tuple(1000.0 * (1 - k / S) for k in range(S))
    sampling = SamplingConfig(steps=steps, shift=3.0, frames_per_block=2, sampler="euler", guidance=guidance)
    return make_bundle(cfg=CFG3, sampling=sampling)


def _latents(bundle, level, attention="causal", cache=None, policy=None, switches=()):
    eng = Engine(bundle, CascadeConfig(level=level, attention=attention))
    fc = apply_feature_cache(eng, cache, policy) if cache is not None else None
    lat = eng.generate("a red circle", BLOCKS, seed=3, switches=switches).latents
    return lat, fc


ZERO = [
    FeatureCacheConfig(policy="bwcache", threshold=0.0),
    FeatureCacheConfig(policy="bwcache", threshold=0.0, granularity="dit_block", variant="paper"),
    FeatureCacheConfig(policy="bwcache", threshold=0.0, kv="stale"),
    FeatureCacheConfig(policy="flowcache", threshold=0.0, warmup=0),
]


@pytest.mark.parametrize("cfg", ZERO, ids=["code", "paper-dit-block", "stale", "flowcache"])
def test_threshold_zero_is_bit_identical_at_every_level(cfg):
    bundle = _bundle(guidance=2.0)
    for level in range(S + 1):
        for attention in ("causal", "bidirectional") if level else ("causal",):
            ref, _ = _latents(bundle, level, attention)
            got, fc = _latents(bundle, level, attention, cfg)
            assert torch.equal(ref, got), (level, attention)
            assert fc.counters.skipped == 0 and fc.counters.computed > 0


class ReferenceLoop:
    """The same schedule applied explicitly: every DiT block runs on all rows (the uncached
    path), then each scheduled (block, stage, layer) row is overwritten with input + its own
    residual from its last computed step."""

    def __init__(self, reuse: set, num_steps: int) -> None:
        self.reuse, self.num_steps = reuse, num_steps
        self.residual: dict[tuple[int, int], torch.Tensor] = {}
        self.skipped = self.computed = 0

    def begin_tick(self, entries, text_kv):
        self.entries = [(e.block, e.stage) for e in entries]
        return self

    def end_tick(self):
        pass

    def reset(self):
        pass

    def embedded(self, h):
        pass

    def layer(self, index, block, h, e0, cos, sin, text, kv, mask):
        out = block(h, e0, cos, sin, text, index, kv, mask)
        tpb = h.shape[1] // len(self.entries)
        for j, (b, s) in enumerate(self.entries):
            sl = slice(j * tpb, (j + 1) * tpb)
            if (b, s, index) in self.reuse and s < self.num_steps and (b, index) in self.residual:
                out[:, sl] = h[:, sl] + self.residual[(b, index)]
                self.skipped += 1
            else:
                self.residual[(b, index)] = out[:, sl] - h[:, sl]
                self.computed += 1
        return out


def _forced(seed: int) -> set:
    rng = random.Random(seed)
    triples = [(b, s, i) for b in range(BLOCKS) for s in range(S + 1) for i in range(CFG3.num_layers)]
    return set(rng.sample(triples, len(triples) // 2))


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("level", [0, 2, S])
def test_forced_schedule_matches_reference_loop_and_counts(level, attention):
    if level == 0 and attention == "bidirectional":
        pytest.skip("level 0 has one block in flight")
    bundle = _bundle()
    reuse = _forced(level)
    # Stage 0 has no residual of its own yet and stage S is the cache step: both always compute.
    expected_skips = sum(1 for b, s, i in reuse if 1 <= s < S)
    total = BLOCKS * (S + 1) * CFG3.num_layers
    ref_loop = ReferenceLoop(reuse, S)
    eng = Engine(bundle, CascadeConfig(level=level, attention=attention))
    eng.executor.feature_cache = ref_loop
    ref = eng.generate("a red circle", BLOCKS, seed=3).latents
    assert ref_loop.skipped == expected_skips
    got, fc = _latents(bundle, level, attention, FeatureCacheConfig(), ForcedSchedule(reuse))
    assert fc.counters.skipped == expected_skips
    assert fc.counters.computed == total - expected_skips
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    plain, _ = _latents(bundle, level, attention)
    assert (got - plain).abs().max() > 1e-4  # the schedule did change the result


def test_stale_kv_differs_from_fresh_only_under_the_cascade():
    bundle = _bundle()
    reuse = _forced(7)
    fresh, _ = _latents(bundle, S, "causal", FeatureCacheConfig(kv="fresh"), ForcedSchedule(reuse))
    stale, _ = _latents(bundle, S, "causal", FeatureCacheConfig(kv="stale"), ForcedSchedule(reuse))
    assert (fresh - stale).abs().max() > 1e-5
    # At level 0 no other in-flight block reads a skipping row's K/V: the two agree.
    f0, _ = _latents(bundle, 0, "causal", FeatureCacheConfig(kv="fresh"), ForcedSchedule(reuse))
    s0, _ = _latents(bundle, 0, "causal", FeatureCacheConfig(kv="stale"), ForcedSchedule(reuse))
    torch.testing.assert_close(f0, s0, atol=1e-6, rtol=1e-6)


def test_no_reuse_across_a_prompt_switch_and_cache_step_computed(monkeypatch):
    bundle = _bundle()
    reuse = {(b, s, i) for b in range(BLOCKS) for s in range(S + 1) for i in range(CFG3.num_layers)}
    log = []
    orig = FeatureCache.layer

    def spy(self, index, *a, **k):
        out = orig(self, index, *a, **k)
        log.append([(row.block, stage, skip) for (row, stage), skip in zip(self._tick, self._skip)])
        return out

    monkeypatch.setattr(FeatureCache, "layer", spy)
    switches = [(2, "a blue square")]
    _latents(bundle, S, "causal", FeatureCacheConfig(), ForcedSchedule(reuse), switches=switches)
    ticks = Engine(bundle, CascadeConfig(level=S)).plan(BLOCKS).ticks
    switch_tick = next(k for k, t in enumerate(ticks) if (2, 0) in [(e.block, e.stage) for e in t.entries])
    layers = CFG3.num_layers
    for k, rows in enumerate(log):
        tick = k // layers
        for block, stage, skip in rows:
            if stage == S or stage == 0:
                assert not skip, (tick, block, stage)
            if tick == switch_tick:
                assert not skip, ("reused across the prompt switch", block, stage)
    assert any(skip for rows in log for _, _, skip in rows)


def test_bwcache_code_schedule_is_written_once():
    cfg = FeatureCacheConfig(policy="bwcache", threshold=0.1, interval=2, last_steps=0.5)
    pol = BWCacheCode(cfg, 12)
    st = UnitState(0, None)
    pol.computed(st, 0, None)
    pol.computed(st, 1, 0.5)
    assert not st.planned
    pol.computed(st, 4, 0.05)  # trigger at k = 4: tail int(4 * 0.5) = 2 -> steps 10, 11 computed
    assert st.reuse == {5, 6, 8, 9}
    pol.computed(st, 7, 0.01)  # never revised
    assert st.reuse == {5, 6, 8, 9}
    assert [pol.decide(st, s, None) for s in range(12)] == [s in {5, 6, 8, 9} for s in range(12)]


def test_bwcache_paper_checks_each_computed_step():
    cfg = FeatureCacheConfig(policy="bwcache", threshold=0.1, interval=2, variant="paper")
    pol = BWCachePaper(cfg, 12)
    st = UnitState(0, None)
    pol.computed(st, 2, 0.05)  # tail floor(2 / 2) = 1: step 11 computed
    assert st.reuse == {3, 4}
    pol.computed(st, 5, 0.5)
    assert st.reuse == {3, 4}
    pol.computed(st, 6, 0.01)
    assert st.reuse == {3, 4, 7, 8}
    pol.computed(st, 9, 0.01)
    assert st.reuse == {3, 4, 7, 8, 10}


def test_flowcache_warmup_accumulator_and_last_step():
    pol = FlowCachePolicy(FeatureCacheConfig(policy="flowcache", threshold=0.1, warmup=2), 8)
    st = UnitState(0, None)
    got = [pol.decide(st, s, 0.04) for s in range(8)]
    # 0, 1 warm-up; then 0.04, 0.08 accumulate, 0.12 >= 0.1 computes and resets; 7 is the last.
    assert got == [False, False, True, True, False, True, True, False]


def test_feature_cache_config_validation():
    with pytest.raises(ConfigError, match="cache policy"):
        FeatureCacheConfig(policy="teacache")
    with pytest.raises(ConfigError, match="threshold"):
        FeatureCacheConfig(policy="bwcache", threshold=-1.0)
    with pytest.raises(ConfigError, match="interval"):
        FeatureCacheConfig(policy="bwcache", interval=0)
    assert FeatureCacheConfig(policy="bwcache").resolved_threshold == 0.15
    assert FeatureCacheConfig(policy="bwcache").resolved_interval(50) == 5


def test_embedded_teacher_is_a_many_step_guided_builtin():
    from vidcascade.weights.registry import load_bundle, uniform_steps, with_steps

    b = load_bundle("embedded-teacher")
    assert b.name == "embedded-teacher" and b.trained
    assert b.sampling.guidance == 3.0 and b.sampling.sampler == "euler" and b.sampling.num_steps == 16
    assert b.dit.patch_embedding.weight.dtype == torch.float32  # fp16 on disk, fp32 in memory
    assert uniform_steps(4) == (1000.0, 750.0, 500.0, 250.0)
    assert with_steps(b.sampling, 50).num_steps == 50
    with pytest.raises(ValueError, match="steps must be an integer in 1..1000"):
        uniform_steps(0)


def test_generate_with_cache_flags(tmp_path, capsys):
    from vidcascade.cli import main

    out = tmp_path / "v.npz"
    argv = ["generate", "a red circle", "--model", "random-tiny", "--steps", "6", "--blocks", "2"]
    assert main([*argv, "--cache", "bwcache", "--cache-interval", "2", "--out", str(out)]) == 0
    assert out.exists()
    assert main([*argv, "--cache", "bwcache", "--cache-threshold", "-1", "--out", str(out)]) == 2
    assert "cache threshold must be a finite number >= 0" in capsys.readouterr().err


def test_eval_cache_columns_never_reusing_match_uncached():
    from vidcascade.eval.quality import run_eval

    cfg = FeatureCacheConfig(policy="bwcache", threshold=0.0)
    rows = run_eval(_bundle(), [(0, "causal")], prompts=1, blocks=2, long_prompts=0, feature_cache=cfg)
    assert rows[0]["cache_skipped_share"] == 0.0
    assert rows[0]["cache_psnr_vs_uncached"] == 100.0 and rows[0]["cache_ssim_vs_uncached"] == 1.0


def test_many_steps_fully_parallel_with_more_blocks_than_stages():
    """S = 20 at P20 keeps S + 1 blocks in flight once 22 blocks run; the cache that never reuses
    still matches, and a reusing one stays finite."""
    steps = tuple(1000.0 * (1 - k / 20) for k in range(20))
    sampling = SamplingConfig(steps=steps, shift=3.0, frames_per_block=1, sampler="euler")
    bundle = make_bundle(sampling=sampling, latent_hw=(2, 2))
    eng = Engine(bundle, CascadeConfig(level=20))
    assert max(len(t.entries) for t in eng.plan(22).ticks) == 21
    ref = eng.generate("p", 22, seed=1).latents
    apply_feature_cache(eng, FeatureCacheConfig(policy="bwcache", threshold=0.0))
    assert torch.equal(eng.generate("p", 22, seed=1).latents, ref)
    fc = apply_feature_cache(eng, FeatureCacheConfig(policy="bwcache", threshold=10.0))
    out = eng.generate("p", 22, seed=1).latents
    assert torch.isfinite(out).all() and fc.counters.skipped > 0


def test_manifest_feature_cache_field_and_cli_override(tmp_path):
    import argparse

    from vidcascade.feature_cache_flags import feature_cache_config
    from vidcascade.weights.bundle_folder import ManifestError, parse_manifest

    base = {"dit": "x.pt", "text_encoder": "hash", "height": 32, "width": 32, "fps": 8}
    m = parse_manifest({**base, "feature_cache": {"policy": "bwcache", "threshold": 0.03}}, tmp_path)
    assert m.feature_cache == FeatureCacheConfig(policy="bwcache", threshold=0.03)
    assert parse_manifest(base, tmp_path).feature_cache.policy == "none"
    with pytest.raises(ManifestError, match="feature_cache: unknown fields"):
        parse_manifest({**base, "feature_cache": {"thresh": 0.1}}, tmp_path)
    with pytest.raises(ManifestError, match="cache threshold"):
        parse_manifest({**base, "feature_cache": {"policy": "bwcache", "threshold": -1}}, tmp_path)
    flags = dict(cache=None, cache_threshold=None, cache_interval=2, cache_variant=None)
    flags.update(cache_granularity=None, cache_kv=None)
    got = feature_cache_config(argparse.Namespace(**flags), m.feature_cache)
    assert got == FeatureCacheConfig(policy="bwcache", threshold=0.03, interval=2)
    flags["cache"] = "flowcache"  # another policy does not inherit the model's threshold
    got = feature_cache_config(argparse.Namespace(**flags), m.feature_cache)
    assert got == FeatureCacheConfig(policy="flowcache", interval=2)
