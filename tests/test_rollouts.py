"""Rollouts: the student's own drawing of training clips, as the engine's level 0 draws them."""

import torch

from _micro import MICRO
from vidcascade.models.wan_dit import CausalWanDiT, init_weights
from vidcascade.training.distill import drawable_blocks, with_drawn_blocks
from vidcascade.training.layouts import Layout, layout_mask
from vidcascade.training.rollouts import rollout_clips

SCHED = (1.0, 0.9, 0.75, 0.5)


def _clips(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, MICRO.in_dim, 18, 4, 4, generator=g), torch.randn(
        2, MICRO.text_len, MICRO.text_dim, generator=g
    )


def _by_hand(model, ctx_src, text, blk, window, noise):
    """Block blk drawn in 4 Euler steps from the sink and the last ``window`` blocks of ctx_src."""
    ctx_blocks = [0, *range(max(1, blk - window), blk)]
    seq = (*ctx_blocks, blk)
    lay = Layout(
        seq, tuple(3 * i for i in seq), ((0.0,),) * len(seq), (False,) * len(seq), len(ctx_blocks), False, "t"
    )
    mask = torch.from_numpy(layout_mask(lay, 3 * 4))
    pos = torch.cat([torch.arange(3 * i, 3 * i + 3) for i in seq])
    ctx = torch.cat([ctx_src[:, :, 3 * i : 3 * i + 3] for i in ctx_blocks], dim=2)
    x, sig = noise, (*SCHED, 0.0)
    with torch.no_grad():
        for s0, s1 in zip(sig[:-1], sig[1:]):
            t = torch.tensor([0.0] * ctx.shape[2] + [1000 * s0] * 3)[None].expand(2, -1)
            x = (
                x
                + (s1 - s0) * model(torch.cat([ctx, x], 2), t, text, frame_pos=pos, attn_mask=mask)[:, :, -3:]
            )
    return x


def test_one_step_rollout_draws_each_block_from_the_true_ones():
    model = init_weights(CausalWanDiT(MICRO), 0).eval()
    lat, text = _clips()
    out = rollout_clips(model, lat, text, SCHED, blocks=6, window=2, seed=3)
    assert out.shape == lat.shape and torch.equal(out[:, :, :3], lat[:, :, :3])  # the sink stays true
    gen = torch.Generator().manual_seed(3)
    for blk in range(1, 6):  # noise is drawn block after block from the seed
        want = _by_hand(model, lat, text, blk, 2, torch.randn((2, MICRO.in_dim, 3, 4, 4), generator=gen))
        assert torch.allclose(out[:, :, 3 * blk : 3 * blk + 3], want, atol=1e-5), blk
    # A true block reaches only the blocks that see it (window 2): 4 and 5 see block 3, 1 and 2 do not.
    lat2 = lat.clone()
    lat2[:, :, 9:12] += 1.0
    out2 = rollout_clips(model, lat2, text, SCHED, blocks=6, window=2, seed=3)
    assert torch.equal(out2[:, :, :9], out[:, :, :9])
    assert not torch.allclose(out2[:, :, 12:], out[:, :, 12:])


def test_free_rollout_draws_from_its_own_blocks():
    model = init_weights(CausalWanDiT(MICRO), 0).eval()
    lat, text = _clips(1)
    one = rollout_clips(model, lat, text, SCHED, blocks=3, seed=5)
    free = rollout_clips(model, lat, text, SCHED, blocks=3, seed=5, one_step=False)
    assert torch.equal(free[:, :, :6], one[:, :, :6])  # block 1 sees only the true sink either way
    gen = torch.Generator().manual_seed(5)
    torch.randn((2, MICRO.in_dim, 3, 4, 4), generator=gen)
    want = _by_hand(model, free, text, 2, 4, torch.randn((2, MICRO.in_dim, 3, 4, 4), generator=gen))
    assert torch.allclose(free[:, :, 6:9], want, atol=1e-5)
    assert not torch.allclose(free[:, :, 6:9], one[:, :, 6:9])


def test_student_sees_its_own_blocks_only_where_the_tick_is_clean():
    # Sink, one committed block, the cache step (stage 4), one in-flight block (stage 1).
    lay = Layout(
        (0, 3, 4, 5),
        (0, 60, 63, 66),
        ((0.0,),) * 3 + ((0.9,),),
        (False, False, False, True),
        2,
        False,
        "tick",
    )
    stages = (-1, -1, 4, 1)
    own = drawable_blocks(lay, stages, steps=4)
    assert own == [1, 2]  # not the sink (clip block 0), not the noisy block
    x_t = torch.randn(2, 4, 12, 4, 4)
    drawn = torch.randn(2, 4, 18, 4, 4).half()
    x_in = with_drawn_blocks(x_t, drawn, lay, own, 3)
    assert torch.equal(x_in[:, :, :3], x_t[:, :, :3]) and torch.equal(x_in[:, :, 9:], x_t[:, :, 9:])
    assert torch.equal(x_in[:, :, 3:6], drawn[:, :, 9:12].float())  # clip block 3's frames
    assert torch.equal(x_in[:, :, 6:9], drawn[:, :, 12:15].float())


def test_overlap_focus_picks_clips_that_overlap_within_the_tick():
    import numpy as np

    from vidcascade.training.distill import _bank_rows

    overlap = torch.zeros(4, 6, dtype=torch.bool)
    overlap[1, 2] = True  # overlaps before the tick's own blocks
    overlap[2, 4] = True  # within
    overlap[3, 5] = True  # within (the in-flight block)
    bank = {"clips": torch.arange(4), "overlap": overlap}
    lay = Layout(
        (0, 3, 4, 5), (0, 9, 12, 15), ((0.0,),) * 3 + ((0.9,),), (False,) * 3 + (True,), 2, False, "tick"
    )
    rows = _bank_rows(np.random.default_rng(0), bank, lay, [1, 2], 200)
    assert set(rows.tolist()) == {2, 3}
    none = {"clips": torch.arange(4), "overlap": torch.zeros(4, 6, dtype=torch.bool)}
    assert set(_bank_rows(np.random.default_rng(0), none, lay, [1, 2], 200).tolist()) == {0, 1, 2, 3}
