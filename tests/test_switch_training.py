"""Training across prompt switches: which caption each block is conditioned on (against the
engine's plan), per-frame prompts in the DiT, and switch data that leaves share-0 data as it was."""

from __future__ import annotations

from itertools import product
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _micro import MICRO
from vidcascade.models.wan_dit import CausalWanDiT, init_weights
from vidcascade.models.wan_vae import WanVAE
from vidcascade.scheduling.plan import build_plan
from vidcascade.training.dit_train import Batcher
from vidcascade.training.latent_data import DataConfig, build_latent_data, switch_rows
from vidcascade.training.layouts import LayoutSampler, layout_mask
from vidcascade.training.switch_text import block_prompts, select_text, text_kwargs
from vidcascade.training.vae_train import EMBEDDED_VAE
from vidcascade.world import COLORS, MOTIONS, SHAPES, ObjectAttrs, sample_spec, sample_switch
from vidcascade.world.holdout import is_held_out

S = 4


def _made_under(num_blocks: int, lag: int, k: int) -> dict[tuple[int, int], bool]:
    """Reference: run the engine's plan tick by tick; the prompt turns to B at the tick where block
    k starts (Session: at_block k -> tick k * lag) and applies to every forward from then on.
    Returns (block, stage) -> whether that forward ran under B."""
    out = {}
    for tick in build_plan(num_blocks, S, lag).ticks:
        for entry in tick.entries:
            out[(entry.block, entry.stage)] = tick.index >= k * lag
    return out


def test_block_prompts_follow_the_engines_ticks() -> None:
    sampler = LayoutSampler(clip_blocks=16, max_blocks=7, context_probs=(0.2, 0.2, 0.2, 0.2, 0.2))
    rng = np.random.default_rng(0)
    mixed = 0
    for _ in range(400):
        layout, stages = sampler.sample_tick(rng, lambda nb: 1, lag_probs=(0.2,) * 5)
        assert layout.stages == stages
        if layout.clip_blocks[0] == 0 and len(layout.clip_blocks) > 1 and layout.clip_blocks[1] > 1:
            continue  # sink layouts sit after a gap of unseen frames: the plan has no such tick
        for k in range(1, 17):
            ref = _made_under(17, layout.lag, k)
            # A committed context block carries the K/V of its cache step (stage S).
            want = [ref[(b, S if s < 0 else s)] for b, s in zip(layout.clip_blocks, stages, strict=True)]
            got = block_prompts(layout, np.array([k, -1]), S)
            assert got[0].tolist() == want, (layout, k)
            assert not got[1].any()  # no switch: caption A throughout
            mixed += len(set(want)) == 2
    assert mixed > 200


def test_layouts_without_a_tick_are_teacher_forced() -> None:
    layout = SimpleNamespace(clip_blocks=(0, 3, 4, 5), stages=None, lag=None)
    got = block_prompts(layout, np.array([4, 1, 9, -1]), S)
    assert got.tolist() == [
        [False, False, True, True],
        [False, True, True, True],
        [False, False, False, False],
        [False, False, False, False],
    ]


def test_frame_text_conditions_each_frame_on_its_prompt() -> None:
    torch.manual_seed(0)
    model = init_weights(CausalWanDiT(MICRO), 0).eval()
    x = torch.randn(2, MICRO.in_dim, 6, 4, 4)
    t = torch.full((2, 6), 500.0)
    a, b = torch.randn(2, 2, MICRO.text_len, MICRO.text_dim).unbind(1)
    tpb = 3 * model.tokens_per_frame(4, 4)
    lay = SimpleNamespace(clip_blocks=(0, 1), n_context=0, bidirectional=False)
    mask = torch.from_numpy(layout_mask(lay, tpb))
    with torch.no_grad():
        va = model(x, t, a, attn_mask=mask)
        vb = model(x, t, b, attn_mask=mask)
        both = torch.stack([a, b], dim=1)
        all_a = model(x, t, both, frame_text=torch.zeros(2, 6, dtype=torch.long), attn_mask=mask)
        split = model(x, t, both, frame_text=torch.tensor([[0] * 3 + [1] * 3] * 2), attn_mask=mask)
    assert torch.allclose(all_a, va, atol=1e-5)
    # Block-causal: block 0 (prompt A) sees only itself, so it is A's; block 1 differs from both.
    assert torch.allclose(split[:, :, :3], va[:, :, :3], atol=1e-5)
    assert (split[:, :, 3:] - va[:, :, 3:]).abs().max() > 1e-3
    assert (split[:, :, 3:] - vb[:, :, 3:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="frame_text"):
        model(x, t, a, frame_text=torch.zeros(2, 6, dtype=torch.long))


def _switch_data(n: int = 8, frames: int = 12) -> dict:
    g = torch.Generator().manual_seed(0)
    block = torch.tensor([-1, 2, -1, 1, 3, -1, 2, -1])[:n]
    m = int((block >= 0).sum())
    return {
        "latents": torch.randn(n, MICRO.in_dim, frames, 4, 4, generator=g).half(),
        "text": torch.randn(n, 2, MICRO.text_len, MICRO.text_dim, generator=g).half(),
        "switch_block": block,
        "text_after": torch.randn(m, 2, MICRO.text_len, MICRO.text_dim, generator=g).half(),
    }


def test_batcher_gives_each_block_its_caption() -> None:
    data = _switch_data()
    k, rows = switch_rows(data)
    assert k.tolist() == [-1, 2, -1, 1, 3, -1, 2, -1] and rows.tolist() == [-1, 0, -1, 1, 2, -1, 3, -1]
    sampler = LayoutSampler(clip_blocks=4, max_blocks=4)
    batcher = Batcher(data, 16, switch_share=1.0)
    rng = np.random.default_rng(1)
    seen_mixed = 0
    for _ in range(60):
        layout, _ = sampler.sample_tick(rng, lambda nb: 4, (0.2,) * 5)
        clips = batcher.sample_clips(rng, 4, layout.clip_blocks)
        idx, cap = torch.from_numpy(clips), torch.from_numpy(rng.integers(0, 2, size=4))
        text = batcher.batch_text(idx, cap, layout)
        which = block_prompts(layout, k[clips], S)
        a = data["text"][idx, cap].float()
        b = torch.stack(
            [
                data["text_after"][rows[c], p] if rows[c] >= 0 else data["text"][c, p]
                for c, p in zip(clips, cap)
            ]
        ).float()
        if isinstance(text, tuple):
            seen_mixed += 1
            ctx, frame_text = text
            assert torch.equal(ctx[:, 0], a) and torch.equal(ctx[:, 1], b)
            assert frame_text.tolist() == np.repeat(which, 3, axis=1).astype(int).tolist()
        else:
            want = torch.where(torch.from_numpy(which[:, 0])[:, None, None], b, a)
            assert torch.equal(text, want) and (which == which[:, :1]).all()
        # switch_share 1: where the data has one, the switch block is one of the sample's blocks
        hits = [c for c in clips if k[c] in layout.clip_blocks[1:]]
        assert len(hits) == 4 or not any(kk in layout.clip_blocks[1:] for kk in k)
    assert seen_mixed > 5


def test_share_zero_batches_are_unchanged() -> None:
    data = _switch_data()
    plain = {key: data[key] for key in ("latents", "text")}
    none = {**plain, "switch_block": torch.full((8,), -1), "text_after": data["text_after"][:0]}
    sampler = LayoutSampler(clip_blocks=4, max_blocks=4)
    for seed in range(20):
        layout = sampler.sample(np.random.default_rng(seed), lambda nb: 4)
        x = Batcher(plain, 16, text_dropout=0.3).make(np.random.default_rng(seed), layout, 4)
        y = Batcher(none, 16, text_dropout=0.3).make(np.random.default_rng(seed), layout, 4)
        for u, v in zip(x, y, strict=True):
            assert torch.equal(u, v)


def test_select_text_and_kwargs() -> None:
    a, b = torch.zeros(2, 3, 5), torch.ones(2, 3, 5)
    one = select_text(a, b, np.array([[True, True], [False, False]]), 3)
    assert torch.equal(one, torch.stack([b[0], a[1]]))
    assert set(text_kwargs(one)) == {"context"}
    ctx, idx = select_text(a, b, np.array([[False, True], [False, False]]), 3)
    assert ctx.shape == (2, 2, 3, 5) and idx.tolist() == [[0, 0, 0, 1, 1, 1], [0] * 6]


class _FakeText:
    text_len, text_dim = 8, 16

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.full((8, 16), float(len(s))) for s in texts])


def test_switch_data_keeps_the_plain_clips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = WanVAE(EMBEDDED_VAE)
    cfg = dict(clips=6, frames=12, captions_per_clip=2, batch=3)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()  # same file name: torch.save stores it
    plain = build_latent_data(vae, _FakeText(), tmp_path / "a" / "d.pt", DataConfig(**cfg))
    again = build_latent_data(vae, _FakeText(), tmp_path / "b" / "d.pt", DataConfig(**cfg, switch_share=0.0))
    assert plain.read_bytes() == again.read_bytes()
    a = torch.load(plain, weights_only=False)
    assert set(a) == {"latents", "text", "captions", "attrs", "overlap", "config"}
    assert "switch_share" not in a["config"]
    s = torch.load(
        build_latent_data(vae, _FakeText(), tmp_path / "s.pt", DataConfig(**cfg, switch_share=0.6))
    )
    k, rows = switch_rows(s)
    assert (k >= 0).sum() >= 2 and (k < 0).sum() >= 1 and len(s["text_after"]) == (k >= 0).sum()
    assert s["captions"] == a["captions"] and s["attrs"] == a["attrs"]
    for i in range(6):
        if k[i] < 0:
            assert torch.equal(s["latents"][i], a["latents"][i]) and s["captions_after"][i] == []
        else:  # the VAE is causal in time: the frames before the switch encode as before
            f = 3 * int(k[i])
            assert torch.allclose(s["latents"][i, :, :f].float(), a["latents"][i, :, :f].float(), atol=1e-3)
            assert len(s["captions_after"][i]) == 2 and s["attrs_after"][i] is not None


def test_teacher_velocity_with_two_prompts_is_guided_on_both() -> None:
    from vidcascade.training.distill import teacher_velocity

    torch.manual_seed(0)
    teacher = init_weights(CausalWanDiT(MICRO), 3).eval()
    x = torch.randn(2, MICRO.in_dim, 6, 4, 4)
    sigma, nxt = torch.full((2, 6), 0.75), torch.full((2, 6), 0.5)
    both = torch.randn(2, 2, MICRO.text_len, MICRO.text_dim)
    idx = torch.tensor([[0] * 3 + [1] * 3, [1] * 6])
    pos = torch.arange(6)
    got = teacher_velocity(teacher, x, sigma, nxt, (both, idx), pos, None, substeps=1, guidance=2.0)
    with torch.no_grad():
        vc = teacher(x, 1000 * sigma, both, frame_text=idx, frame_pos=pos)
        vu = teacher(x, 1000 * sigma, torch.zeros_like(both), frame_text=idx, frame_pos=pos)
    assert torch.allclose(got, vu + 2.0 * (vc - vu), atol=1e-5)


def test_trainers_run_on_switch_data(tmp_path: Path) -> None:
    """A few DiT and distillation steps (rollouts included) on data whose clips switch prompts."""
    from safetensors.torch import save_file

    from vidcascade.config import model_preset
    from vidcascade.training.distill import DistillConfig, distill
    from vidcascade.training.dit_train import DiTTrainConfig, train_dit

    cfg = model_preset("tiny")
    g = torch.Generator().manual_seed(0)
    block = torch.tensor([-1, 2, 1, 3])
    data = {
        "latents": torch.randn(4, cfg.in_dim, 12, 8, 8, generator=g).half(),
        "text": torch.randn(4, 2, cfg.text_len, cfg.text_dim, generator=g).half(),
        "attrs": [[("red", "circle", "left")] * (1 + i % 2) for i in range(4)],
        "overlap": torch.zeros(4, 12, dtype=torch.bool),
        "switch_block": block,
        "text_after": torch.randn(3, 2, cfg.text_len, cfg.text_dim, generator=g).half(),
    }
    torch.save(data, tmp_path / "latents.pt")
    tcfg = DiTTrainConfig(steps=2, tokens_per_step=300, checkpoint_every=1, switch_share=1.0)
    train_dit(tmp_path / "latents.pt", tmp_path, tcfg)
    assert (tmp_path / "dit_ema.safetensors").exists()
    save_file(init_weights(CausalWanDiT(cfg), 1).state_dict(), str(tmp_path / "dit_ema.safetensors"))
    dcfg = DistillConfig(
        steps=2,
        substeps=1,
        tokens_per_step=200,
        checkpoint_every=1,
        layouts=DiTTrainConfig(first_prob=0.01, switch_share=1.0),
        rollout_clips=3,
        rollout_share=1.0,
    )
    distill(tmp_path / "latents.pt", tmp_path, dcfg)
    assert torch.load(tmp_path / "distill_ckpt.pt", weights_only=False)["step"] == 2


def test_held_out_switches_are_never_sampled_or_drawn() -> None:
    # The world's sampler never returns a held-out pair (about 1 in 8 of all pairs).
    rng = np.random.default_rng(0)
    drawn = 0
    for _ in range(300):
        spec = sample_spec(rng, 0.5)
        got = sample_switch(spec, rng)
        if got is not None:
            drawn += 1
            assert not is_held_out(spec.attrs, got[1].after)
    assert drawn > 200
    # Data built before that (clips 1 and 4 carry a held-out switch): the batcher never draws them.
    data = _switch_data()
    objs = list(product(COLORS, SHAPES, MOTIONS))
    plain = [objs[0]]
    held, free = next(
        ([a], [b])
        for a, b in product(objs, objs)
        if a != b and is_held_out([ObjectAttrs(*a)], [ObjectAttrs(*b)])
    )
    after_ok = next([b] for b in objs[1:] if not is_held_out([ObjectAttrs(*plain[0])], [ObjectAttrs(*b)]))
    data["attrs"] = [plain, held, plain, plain, held, plain, plain, plain]
    data["attrs_after"] = [None, free, None, after_ok, free, None, after_ok, None]
    batcher = Batcher(data, 16, switch_share=1.0)
    sampler = LayoutSampler(clip_blocks=4, max_blocks=4)
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(200):
        layout, _ = sampler.sample_tick(rng, lambda nb: 4, (0.2,) * 5)
        seen |= set(batcher.sample_clips(rng, 4, layout.clip_blocks).tolist())
    assert seen == {0, 2, 3, 5, 6, 7}
