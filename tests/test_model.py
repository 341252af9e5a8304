"""The DiT: KV-cached block-by-block inference equals one full forward with the block-causal mask."""

import pytest
import torch

from _micro import MICRO
from vidcascade.cache.pool import KVPool
from vidcascade.models.masks import block_causal_mask
from vidcascade.models.wan_dit import CausalWanDiT, init_weights


def _model():
    return init_weights(CausalWanDiT(MICRO), 3).eval()


def _pool(model, fpb, sink, window, tpf):
    c = model.cfg
    return KVPool(
        num_layers=c.num_layers,
        batch=2,
        num_heads=c.num_heads,
        head_dim=c.head_dim,
        tokens_per_frame=tpf,
        frames_per_block=fpb,
        max_inflight_blocks=1,
        sink_frames=sink,
        window_frames=window,
    )


@torch.no_grad()
def test_cached_blocks_equal_full_block_causal_forward():
    model = _model()
    fpb, nb, h, w = 2, 4, 4, 6
    tpf = model.tokens_per_frame(h, w)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, fpb * nb, h, w, generator=g)
    t = torch.rand(2, fpb * nb, generator=g) * 1000  # per-frame timesteps
    ctx = torch.randn(2, 5, MICRO.text_dim, generator=g)
    full = model(x, t, ctx, attn_mask=block_causal_mask(fpb * nb, fpb, tpf))

    pool = _pool(model, fpb, sink=0, window=fpb * nb, tpf=tpf)
    text_kv = model.text_kv(ctx)
    for b in range(nb):
        sl = slice(b * fpb, (b + 1) * fpb)
        out = model(
            x[:, :, sl],
            t[:, sl],
            text_kv=text_kv,
            frame_pos=torch.arange(sl.start, sl.stop),
            kv=pool.tick_view(1, causal=True),
        )
        torch.testing.assert_close(out, full[:, :, sl], rtol=1e-5, atol=1e-5)
        pool.promote(0, 1, b * fpb)


@torch.no_grad()
def test_cached_with_sink_and_window_equals_windowed_mask():
    # With a sink of 2 frames and a window of 4, block b sees frames 0-1, the 4 newest committed
    # frames and itself: the same as a full forward with that mask.
    model = _model()
    fpb, nb, h, w, sink, window = 2, 6, 2, 4, 2, 4
    tpf = model.tokens_per_frame(h, w)
    nf = fpb * nb
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, nf, h, w, generator=g)
    t = torch.full((2, nf), 300.0)
    ctx = torch.randn(2, 3, MICRO.text_dim, generator=g)
    pool = _pool(model, fpb, sink, window, tpf)
    text_kv = model.text_kv(ctx)
    # Reference mask per frame: key frame kf visible to query frame qf if in qf's block, in the sink,
    # or among the `window` newest frames committed before qf's block.
    allowed = torch.zeros(nf, nf, dtype=torch.bool)
    for qf in range(nf):
        b0 = (qf // fpb) * fpb
        for kf in range(nf):
            allowed[qf, kf] = (
                (b0 <= kf < b0 + fpb) or (kf < min(sink, b0)) or (max(sink, b0 - window) <= kf < b0)
            )
    mask = allowed.repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)
    # Every frame's hidden states depend only on what its own mask row allows, so the K/V a block
    # leaves in the cache equal those of the full forward, before and after eviction.
    full = model(x, t, text_kv=text_kv, attn_mask=mask)
    for b in range(nb):
        sl = slice(b * fpb, (b + 1) * fpb)
        out = model(
            x[:, :, sl],
            t[:, sl],
            text_kv=text_kv,
            frame_pos=torch.arange(sl.start, sl.stop),
            kv=pool.tick_view(1, causal=True),
        )
        torch.testing.assert_close(out, full[:, :, sl], rtol=1e-5, atol=1e-5)
        pool.promote(0, 1, b * fpb)
    assert pool.layout.visible_frames() == [0, 1, 10, 11, 8, 9]


@torch.no_grad()
def test_frame_positions_matter_and_text_kv_matches_context():
    model = _model()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 4, MICRO.text_dim, generator=g)
    a = model(x, t, ctx)
    b = model(x, t, text_kv=model.text_kv(ctx))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Shifting all frames together leaves self-attention (relative RoPE) unchanged...
    c = model(x, t, ctx, frame_pos=torch.tensor([7, 8]))
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    # ...but a different spacing changes it.
    d = model(x, t, ctx, frame_pos=torch.tensor([0, 5]))
    assert (a - d).abs().max() > 1e-3


def test_bad_inputs_raise_clear_errors():
    model = _model()
    x = torch.randn(1, 4, 2, 4, 4)
    with pytest.raises(ValueError, match="expects in_dim=4"):
        model(torch.randn(1, 3, 2, 4, 4), torch.tensor([1.0]), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="not divisible by the patch"):
        model(torch.randn(1, 4, 2, 5, 4), torch.tensor([1.0]), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="text_dim=16"):
        model(x, torch.tensor([1.0]), torch.randn(1, 2, 15))
    with pytest.raises(ValueError, match="more than text_len=8"):
        model(x, torch.tensor([1.0]), torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match=r"t must have shape"):
        model(x, torch.ones(1, 3), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="beyond the RoPE table"):
        model(x, torch.tensor([1.0]), torch.randn(1, 2, 16), frame_pos=torch.tensor([0, 5000]))
