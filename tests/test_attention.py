"""TickAttention: the sink bias split through log-sum-exp equals the dense additive mask; the dense
form is bit for bit what the K/V pool's masks give; split and dense runs agree to fp32 rounding."""

import math

import pytest
import torch

from _micro import make_bundle
from vidcascade.config import CacheConfig, CascadeConfig, SamplingConfig
from vidcascade.engine.engine import Engine
from vidcascade.models.attention import TickAttention, additive_mask, attend, sdpa_lse
from vidcascade.models.masks import inflight_mask, key_bias_mask

SAMPLING = SamplingConfig(shift=5.0, frames_per_block=2, steps=(1000.0, 750.0, 500.0))
# The window fills after 3 blocks; the sink bias starts with block 1's commit.
CACHE = CacheConfig(sink_frames=2, window_frames=4, sink_bias=1.5)


def _reference(q, k, v, bool_mask, start, stop, bias):
    """softmax(q k^T / sqrt(d) + bias on keys start:stop, -inf where hidden) v, in float64."""
    logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    logits[..., start:stop] += bias
    if bool_mask is not None:
        logits = logits.masked_fill(~bool_mask, float("-inf"))
    return (torch.softmax(logits, -1) @ v.double()).float()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [0.7, 4.0])
def test_split_sink_bias_equals_the_dense_mask(causal, bias):
    g = torch.Generator().manual_seed(0)
    n_inflight, tpb, committed = 3, 8, 24  # keys: 24 in flight, then the committed 24, sink first
    nq, nk = n_inflight * tpb, n_inflight * tpb + committed
    q, k, v = (torch.randn(2, 2, n, 16, generator=g) for n in (nq, nk, nk))
    start, stop = nq, nq + 6
    visible = inflight_mask(n_inflight, tpb, committed, causal)  # None when bidirectional
    ones = torch.ones(nq, nk, dtype=torch.bool)
    dense = TickAttention(key_bias_mask(visible if causal else ones, start, stop, bias, torch.float32))
    split = TickAttention(additive_mask(visible, torch.float32) if causal else None, start, stop, bias)
    ref = _reference(q, k, v, visible, start, stop, bias)
    # fp32 kernels against a float64 reference: rounding only.
    torch.testing.assert_close(attend(q, k, v, dense), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attend(q, k, v, split), ref, rtol=1e-5, atol=1e-5)
    rows = torch.tensor([0, 5, 17])
    torch.testing.assert_close(
        attend(q[:, :, rows], k, v, split.rows(rows)), ref[:, :, rows], rtol=1e-5, atol=1e-5
    )


def test_sdpa_lse_is_the_log_sum_exp_of_the_logits():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for n in (5, 9, 9))
    mask = additive_mask(torch.rand(5, 9, generator=g) > 0.3, torch.float32)
    mask[:, 0] = 0.0  # every query sees a key
    out, lse = sdpa_lse(q, k, v, mask)
    logits = q @ k.transpose(-1, -2) / math.sqrt(8) + mask
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, torch.softmax(logits, -1) @ v, rtol=1e-5, atol=1e-5)


def test_tick_attention_checks_its_form():
    with pytest.raises(ValueError, match="additive float mask"):
        TickAttention(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be > 0"):
        TickAttention(None, 0, 4, -1.0)


def _latents(level: int, attention: str, impl: str | None, legacy: bool = False) -> torch.Tensor:
    bundle = make_bundle(sampling=SAMPLING, cache=CACHE)
    eng = Engine(bundle, CascadeConfig(level=level, attention=attention), decode="inline")
    if impl is not None:
        eng.executor.use_attention(impl)
    if legacy:  # the pool's own masks (bool, or float with the bias): the reference path
        ex = eng.executor
        ex.tick_view = lambda n: ex.pool.tick_view(n, ex.causal)
    return eng.generate("a red ball", 6, seed=4).latents


@pytest.mark.parametrize("level, attention", [(0, "causal"), (3, "causal"), (3, "bidirectional")])
def test_engine_dense_is_the_pool_masks_bit_for_bit_and_split_is_close(level, attention):
    legacy = _latents(level, attention, None, legacy=True)
    assert torch.equal(_latents(level, attention, "dense"), legacy)
    # 6 blocks x 4 stages of an fp32 model: differences of rounding, amplified a little per step.
    torch.testing.assert_close(_latents(level, attention, "split"), legacy, rtol=1e-4, atol=1e-4)


def test_use_attention_checks_the_name():
    eng = Engine(make_bundle(sampling=SAMPLING, cache=CACHE), CascadeConfig(level=0), decode="inline")
    with pytest.raises(ValueError, match="dense.*split.*got 'flash'"):
        eng.executor.use_attention("flash")
