"""Distillation: the teacher's target is its own guided Euler integration; ticks match inference."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from _micro import MICRO, tiny_latent_data
from vidcascade.models.wan_dit import CausalWanDiT, init_weights
from vidcascade.training.distill import DistillConfig, _next_sigma, teacher_velocity
from vidcascade.training.dit_train import Batcher
from vidcascade.training.layouts import LayoutSampler


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    data = {
        "latents": torch.randn(n, MICRO.in_dim, 15, 4, 4, generator=g).half(),
        "text": torch.randn(n, 2, MICRO.text_len, MICRO.text_dim, generator=g).half(),
    }
    sampler = LayoutSampler(clip_blocks=5, max_blocks=5)
    rng = np.random.default_rng(seed)
    for _ in range(1000):  # a tick with context, a cache-step block and noisy blocks
        layout, stages = sampler.sample_tick(rng, lambda nb: 2, lag_probs=(0, 1.0, 0, 0, 0))
        if layout.n_context and stages[-1] < 3 and 4 in stages:
            break
    else:
        raise AssertionError("no such tick drawn")
    return Batcher(data, 4).make(rng, layout, 2), layout, stages, sampler


def test_sample_tick_is_an_inference_tick():
    s = LayoutSampler()
    rng = np.random.default_rng(0)
    sched = (*s.schedule_sigmas, 0.0)
    starts = 0
    for _ in range(300):
        lay, stages = s.sample_tick(rng, lambda nb: 2)
        noisy = [st for st in stages if st >= 0]
        assert stages[: lay.n_context] == (-1,) * lay.n_context and len(noisy) == len(stages) - lay.n_context
        assert noisy == sorted(noisy, reverse=True) and len(set(np.diff(noisy))) <= 1  # one lag
        for st, sg, trained in zip(stages, lay.sigmas, lay.loss):
            assert sg == ((sched[st],) * 2 if st >= 0 else (0.0, 0.0))
            assert trained == (0 <= st < len(s.schedule_sigmas))
        assert any(lay.loss)
        starts += lay.n_context == 0 and lay.clip_blocks[0] == 0
    assert starts > 50


def test_teacher_velocity_is_its_guided_euler_integration():
    torch.manual_seed(0)
    teacher = init_weights(CausalWanDiT(MICRO), 3).eval()
    (x_t, t, ctx, _, loss_frames, pos, mask), layout, stages, sampler = _batch()
    sigma = t / 1000
    nxt = _next_sigma(stages, sampler.schedule_sigmas, x_t.shape[0], 3)
    assert (nxt[:, ~loss_frames] == sigma[:, ~loss_frames]).all() and (
        nxt[:, loss_frames] < sigma[:, loss_frames]
    ).all()
    # One substep without guidance: the teacher's own velocity on the moving frames, 0 elsewhere.
    v1 = teacher_velocity(teacher, x_t, sigma, nxt, ctx, pos, mask, substeps=1, guidance=1.0)
    with torch.no_grad():
        v = teacher(x_t, t, ctx, frame_pos=pos, attn_mask=mask)
    assert torch.allclose(v1[:, :, loss_frames], v[:, :, loss_frames], atol=1e-5)
    assert (v1[:, :, ~loss_frames] == 0).all()
    # Three guided substeps, written out by hand.
    g, x = 2.5, x_t.clone()
    with torch.no_grad():
        for j in range(3):
            s0, s1 = sigma + (nxt - sigma) * j / 3, sigma + (nxt - sigma) * (j + 1) / 3
            vc = teacher(x, 1000 * s0, ctx, frame_pos=pos, attn_mask=mask)
            vu = teacher(x, 1000 * s0, torch.zeros_like(ctx), frame_pos=pos, attn_mask=mask)
            x = x + (s1 - s0)[:, None, :, None, None] * (vu + g * (vc - vu))
    v3 = teacher_velocity(teacher, x_t, sigma, nxt, ctx, pos, mask, substeps=3, guidance=g)
    moved = x_t + (nxt - sigma)[:, None, :, None, None] * v3
    assert torch.allclose(moved, x, atol=1e-5)


def _tiny_run(run, n):
    """A run folder with n random latent clips (one- and two-object alternating) and a random
    teacher (dit_ema.safetensors); returns the model config."""
    from safetensors.torch import save_file

    from vidcascade.config import model_preset

    cfg = model_preset("tiny")
    torch.save(tiny_latent_data(cfg, n), run / "latents.pt")
    save_file(init_weights(CausalWanDiT(cfg), 1).state_dict(), str(run / "dit_ema.safetensors"))
    return cfg


def test_distill_steps_learn_and_resume(tmp_path):
    from safetensors.torch import load_file

    from vidcascade.training.distill import distill
    from vidcascade.training.dit_train import DiTTrainConfig

    _tiny_run(tmp_path, 4)
    dcfg = DistillConfig(
        steps=2, substeps=2, tokens_per_step=200, checkpoint_every=1, layouts=DiTTrainConfig()
    )
    out = distill(tmp_path / "latents.pt", tmp_path, dcfg)
    first = load_file(str(out))
    assert torch.load(tmp_path / "distill_ckpt.pt", weights_only=False)["step"] == 2
    distill(tmp_path / "latents.pt", tmp_path, DistillConfig(**{**dcfg.__dict__, "steps": 3}))
    assert torch.load(tmp_path / "distill_ckpt.pt", weights_only=False)["step"] == 3
    assert any(not torch.equal(first[k], v) for k, v in load_file(str(out)).items())
    with pytest.raises(ValueError, match="guidance"):
        DistillConfig(guidance=0.5)
    with pytest.raises(ValueError, match="lag_probs needs 5 entries"):
        DistillConfig(lag_probs=(0.5, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        DistillConfig(lag_probs=(0.5, 0.5, 0.5, 0.0, 0.0))


def test_distill_student_can_start_from_other_weights(tmp_path):
    """--distill-init: the student starts from the given weights, not the teacher's (lr 0 keeps
    them, so the exported EMA equals them), and the run records where it started."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from vidcascade.training.distill import distill
    from vidcascade.training.dit_train import DiTTrainConfig

    cfg = _tiny_run(tmp_path, 2)
    other = init_weights(CausalWanDiT(cfg), 2).state_dict()
    save_file(other, str(tmp_path / "old_student.safetensors"))
    dcfg = DistillConfig(
        steps=1,
        substeps=1,
        tokens_per_step=200,
        lr=0.0,
        layouts=DiTTrainConfig(),
        init_from=str(tmp_path / "old_student.safetensors"),
    )
    out = distill(tmp_path / "latents.pt", tmp_path, dcfg)
    got = load_file(str(out))
    assert all(torch.allclose(got[k], v) for k, v in other.items())
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["student_init"] == "old_student.safetensors"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "dit_ema.safetensors").write_bytes((tmp_path / "dit_ema.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        distill(
            tmp_path / "latents.pt", fresh, replace(dcfg, init_from=str(tmp_path / "missing.safetensors"))
        )


def test_distill_with_rollouts_draws_its_bank_once(tmp_path):
    """rollout_clips: the student draws that many clips as the run starts (block 0 true), saved in
    the run folder; a resumed run trains on the same bank instead of drawing a new one."""
    from vidcascade.training.distill import distill
    from vidcascade.training.dit_train import DiTTrainConfig

    _tiny_run(tmp_path, 4)
    dcfg = DistillConfig(
        steps=2,
        substeps=1,
        tokens_per_step=200,
        checkpoint_every=1,
        layouts=DiTTrainConfig(first_prob=0.01),
        rollout_clips=3,
        rollout_share=1.0,
    )
    distill(tmp_path / "latents.pt", tmp_path, dcfg)
    bank = torch.load(tmp_path / "rollouts.pt", weights_only=False)
    data = torch.load(tmp_path / "latents.pt", weights_only=False)
    assert bank["latents"].shape == (3, *data["latents"].shape[1:])
    true = data["latents"][bank["clips"]]
    assert torch.equal(bank["latents"][:, :, :3], true[:, :, :3])
    assert not torch.allclose(bank["latents"][:, :, 3:].float(), true[:, :, 3:].float(), atol=0.1)
    distill(tmp_path / "latents.pt", tmp_path, replace(dcfg, steps=3))
    assert torch.load(tmp_path / "distill_ckpt.pt", weights_only=False)["step"] == 3
    assert torch.equal(torch.load(tmp_path / "rollouts.pt", weights_only=False)["latents"], bank["latents"])
    # Overlap focus: the bank holds only clips whose objects overlap after the first block.
    data["overlap"] = torch.zeros(4, 12, dtype=torch.bool)
    data["overlap"][2, 7] = True
    torch.save(data, tmp_path / "latents.pt")
    distill(tmp_path / "latents.pt", tmp_path, replace(dcfg, steps=4, rollout_focus="overlap"))
    focused = torch.load(tmp_path / "rollouts.pt", weights_only=False)
    assert focused["focus"] == "overlap" and focused["clips"].tolist() == [2, 2, 2]
    assert focused["overlap"][:, 2].all() and not focused["overlap"][:, [0, 1, 3]].any()
    with pytest.raises(ValueError, match="rollout_focus"):
        DistillConfig(rollout_focus="sometimes")
    with pytest.raises(ValueError, match="rollout_clips"):
        DistillConfig(rollout_clips=-1)
    with pytest.raises(ValueError, match="rollout_share"):
        DistillConfig(rollout_share=1.5)
