"""DiT checkpoints: our DiT vs diffusers' WanTransformer3DModel on the same weights, every supported
format loading to identical tensors, LoRA merging, bf16 islands, and the errors of bad checkpoints."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest
import torch

import vidcascade
from _real_formats import TINY_WAN, random_state
from vidcascade.config import MODEL_PRESETS
from vidcascade.weights import dit_save
from vidcascade.weights.dit_keys import wan_to_diffusers_key
from vidcascade.weights.loading import (
    CheckpointError,
    build_model,
    checkpoint_from_state_dict,
    load_model,
    read_checkpoint,
)

needs_diffusers = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None, reason="needs vidcascade[wan]"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TEXT_LEN = {"text_len": TINY_WAN.text_len}  # not stored in the weights; Wan folders carry it in config.json


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state(TINY_WAN, seed=0)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


# ----------------------------------------------------------------------------- against diffusers


def _diffusers_forward(model, x, t_frames, ctx) -> torch.Tensor:
    """diffusers reads a 2-D timestep per token: expand each frame's t over its tokens."""
    _, ph, pw = model.config.patch_size
    tokens = (x.shape[3] // ph) * (x.shape[4] // pw)
    t_tokens = t_frames.repeat_interleave(tokens, dim=1)  # [B, F*tokens]
    with torch.no_grad():
        return model(x, t_tokens, ctx, return_dict=False)[0]


@needs_diffusers
def test_matches_diffusers_tiny_through_a_diffusers_folder(tmp_path: Path, state) -> None:
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    # The folder we write holds exactly diffusers' keys (strict load into the class built from our
    # config.json; from_pretrained itself needs accelerate for Wan's fp32 modules) and our loader reads it.
    dit_save.save_diffusers_folder(state, TINY_WAN, tmp_path / "dit")
    theirs = WanTransformer3DModel.from_config(
        WanTransformer3DModel.load_config(str(tmp_path / "dit"))
    ).eval()
    theirs.load_state_dict(
        load_file(str(tmp_path / "dit" / "diffusion_pytorch_model.safetensors")), strict=True
    )
    ours = load_model(tmp_path / "dit", overrides=TEXT_LEN)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 4, 8, generator=g)  # [B, C, F, H, W]
    ctx = torch.randn(2, TINY_WAN.text_len, TINY_WAN.text_dim, generator=g)
    worst = 0.0
    for t in (torch.tensor([[900.0, 500.0, 120.0], [0.0, 250.0, 999.0]]), torch.full((2, 3), 625.0)):
        with torch.no_grad():
            out = ours(x, t, ctx)
        err = _rel_err(out, _diffusers_forward(theirs, x, t, ctx))
        worst = max(worst, err)
    print(f"tiny: max relative error vs diffusers {worst:.2e}")
    assert worst <= 1e-4


@needs_diffusers
def test_matches_diffusers_at_wan_1_3b_width() -> None:
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    cfg = dataclasses.replace(MODEL_PRESETS["wan-1.3b"], num_layers=2)  # dim 1536, 12 heads, ffn 8960
    state = random_state(cfg, seed=3)
    # Through our loader's geometry inference and validation, in Self-Forcing's key names.
    ours = build_model(checkpoint_from_state_dict({f"model.{k}": v for k, v in state.items()}))
    assert ours.cfg == cfg  # 12 heads inferred from dim / 128
    kwargs = {k: v for k, v in dit_save.diffusers_config(cfg).items() if k[0] != "_"}
    with torch.device("meta"):  # skip diffusers' random init: every weight is assigned below
        theirs = WanTransformer3DModel(**kwargs)
    theirs.load_state_dict({wan_to_diffusers_key(k): v for k, v in state.items()}, strict=True, assign=True)
    theirs.rope = WanRotaryPosEmbed(
        cfg.head_dim, cfg.patch_size, cfg.rope_max_frames
    )  # its buffers were meta
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 2, 4, 8, generator=g)
    ctx = torch.randn(1, 512, 4096, generator=g)
    t = torch.tensor([[937.5, 625.0]])
    with torch.no_grad():
        out = ours(x, t, ctx)
    err = _rel_err(out, _diffusers_forward(theirs.eval(), x, t, ctx))
    print(f"wan-1.3b width, 2 layers: max relative error vs diffusers {err:.2e}")
    assert err <= 1e-4


# ----------------------------------------------------------------------------- formats


def _training(obj_key: str, prefix: str, extra: dict | None = None):
    def write(state, path: Path) -> Path:
        target = path / "ckpt.pt"
        inner = {}
        for k, v in state.items():
            key = prefix + k
            if "fsdp" in prefix:  # FSDP puts its fragment inside the block names too
                key = key.replace("blocks.", "blocks._fsdp_wrapped_module.", 1)
            inner[key] = v
        torch.save({**(extra or {}), obj_key: inner} if obj_key else inner, target)
        return target

    return write


def _decoy(state):  # a different generator next to the EMA: the EMA must win
    return {"generator": {f"model.{k}": v + 1 for k, v in state.items()}, "critic": {"x": torch.zeros(1)}}


WRITERS = {
    "diffusers-folder": lambda s, p: (dit_save.save_diffusers_folder(s, TINY_WAN, p / "d"), p / "d")[1],
    "diffusers-sharded": lambda s, p: (
        dit_save.save_diffusers_folder(s, TINY_WAN, p / "d", shards=3),
        p / "d",
    )[1],
    "diffusers-pipeline-root": lambda s, p: (
        dit_save.save_diffusers_folder(s, TINY_WAN, p / "transformer"),
        p,
    )[1],
    "wan-folder": lambda s, p: (dit_save.save_wan_folder(s, TINY_WAN, p / "w"), p / "w")[1],
    "wan-sharded": lambda s, p: (dit_save.save_wan_folder(s, TINY_WAN, p / "w", shards=2), p / "w")[1],
    "self-forcing-ema": lambda s, p: _training("generator_ema", "model.", _decoy(s))(s, p),
    "causvid-generator-fsdp": _training("generator", "model._orig_mod."),
    "longlive-fsdp-ema": _training("generator_ema", "_fsdp_wrapped_module.model."),
    "model-key-ddp": _training("model", "module.model."),
    "flat-pt": _training("", ""),
    "krea-safetensors": lambda s, p: (
        dit_save.save_flat_safetensors(s, p / "k.safetensors"),
        p / "k.safetensors",
    )[1],
    "diffusers-names-safetensors": lambda s, p: (
        dit_save.save_flat_safetensors(
            {wan_to_diffusers_key(k): v for k, v in s.items()}, p / "x.safetensors", ""
        ),
        p / "x.safetensors",
    )[1],
}
FORMAT_OF = {
    "diffusers-folder": "diffusers-folder",
    "diffusers-sharded": "diffusers-folder",
    "diffusers-pipeline-root": "diffusers-folder",
    "wan-folder": "wan-folder",
    "wan-sharded": "wan-folder",
    "krea-safetensors": "safetensors-file",
    "diffusers-names-safetensors": "safetensors-file",
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_loads_identical_tensors(tmp_path: Path, state, name: str) -> None:
    path = WRITERS[name](state, tmp_path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == FORMAT_OF.get(name, "training-pt"), ckpt.notes
    model = load_model(path, overrides=TEXT_LEN)
    assert model.cfg == TINY_WAN
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    assert vidcascade.load_model is load_model  # the lazy package-level export


def test_explicit_top_level_key(tmp_path: Path, state) -> None:
    path = WRITERS["self-forcing-ema"](state, tmp_path)
    gen = load_model(path, key="generator", overrides=TEXT_LEN)
    torch.testing.assert_close(gen.head.head.weight, state["head.head.weight"] + 1, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"no top-level key 'generator_lora'.*critic, generator"):
        load_model(path, key="generator_lora")


def test_bf16_keeps_wan_fp32_islands(tmp_path: Path, state) -> None:
    path = WRITERS["self-forcing-ema"](state, tmp_path)
    ref = load_model(path, overrides=TEXT_LEN)
    bf = load_model(path, dtype=torch.bfloat16, overrides=TEXT_LEN)
    fp32 = {n for n, p in bf.named_parameters() if p.dtype == torch.float32}
    assert fp32 == {
        n for n in state if n.startswith(("time_embedding", "time_projection")) or "modulation" in n
    }
    assert all(p.dtype == torch.bfloat16 for n, p in bf.named_parameters() if n not in fp32)
    torch.testing.assert_close(bf.blocks[0].modulation, state["blocks.0.modulation"], rtol=0, atol=0)
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(1, 4, 3, 4, 4, generator=g), torch.randn(1, 7, TINY_WAN.text_dim, generator=g)
    with torch.no_grad():
        err = _rel_err(bf(x, torch.tensor([500.0]), ctx).float(), ref(x, torch.tensor([500.0]), ctx))
    assert err < 3e-2


# ----------------------------------------------------------------------------- LoRA


def _peft(state, rank: int, wrap: bool, seed: int = 7) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    peft, ab = {}, {}
    for target in ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.1.ffn.2"):
        out_f, in_f = state[f"{target}.weight"].shape
        a, b = torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g)
        peft[f"base_model.model.{target}.lora_A.weight"] = a
        peft[f"base_model.model.{target}.lora_B.weight"] = b
        ab[target] = (a, b)
    return ({"generator_lora": peft} if wrap else peft), ab


@pytest.mark.parametrize("wrap, alpha", [(True, None), (False, 8.0)])
def test_lora_merge(tmp_path: Path, state, wrap: bool, alpha: float | None) -> None:
    path = WRITERS["longlive-fsdp-ema"](state, tmp_path)
    lora, ab = _peft(state, rank=4, wrap=wrap)
    torch.save(lora, tmp_path / "lora.pt")
    merged = load_model(path, lora=tmp_path / "lora.pt", lora_alpha=alpha, overrides=TEXT_LEN).state_dict()
    scale = 1.0 if alpha is None else alpha / 4
    for target, (a, b) in ab.items():
        torch.testing.assert_close(merged[f"{target}.weight"], state[f"{target}.weight"] + scale * b @ a)
    untouched = [k for k in state if not any(k.startswith(t) for t in ab)]
    assert all(torch.equal(merged[k], state[k]) for k in untouched)


def test_lora_that_does_not_fit(tmp_path: Path, state) -> None:
    path = WRITERS["flat-pt"](state, tmp_path)
    lora, _ = _peft(state, rank=2, wrap=True)
    lora["generator_lora"]["base_model.model.blocks.5.self_attn.q.lora_A.weight"] = torch.zeros(2, 256)
    lora["generator_lora"]["base_model.model.blocks.5.self_attn.q.lora_B.weight"] = torch.zeros(256, 2)
    lora["generator_lora"]["base_model.model.blocks.0.ffn.0.lora_B.weight"] = torch.zeros(7, 2)
    torch.save(lora, tmp_path / "lora.pt")
    with pytest.raises(
        CheckpointError, match=r"2 problems: blocks.0.ffn.0: lora_A missing, blocks.5.self_attn.q: no"
    ):
        load_model(path, lora=tmp_path / "lora.pt")
    with pytest.raises(CheckpointError, match="a LoRA file"):
        load_model(tmp_path / "lora.pt")


# ----------------------------------------------------------------------------- bad checkpoints


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def _junk(path: Path, suffix: str) -> Path:
    out = path / f"junk{suffix}"
    out.write_bytes(os.urandom(4096))
    return out


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda s, p: _cut(WRITERS["self-forcing-ema"](s, p)), "cannot read .* torch checkpoint .*truncated"),
        (
            lambda s, p: _cut(WRITERS["krea-safetensors"](s, p)),
            "cannot read safetensors .*truncated or corrupt",
        ),
        (lambda s, p: _junk(p, ".pt"), "cannot read .* torch checkpoint"),
        (lambda s, p: _junk(p, ".safetensors"), "cannot read safetensors"),
        (lambda s, p: _junk(p, ".npz"), r"unknown checkpoint format: .*junk\.npz"),
        (lambda s, p: p, r"unknown checkpoint format: folder .* \(contents: .*\)"),
    ],
    ids=[
        "truncated-pt",
        "truncated-safetensors",
        "corrupt-pt",
        "corrupt-safetensors",
        "unknown-suffix",
        "empty-dir",
    ],
)
def test_unreadable_or_unknown(tmp_path: Path, state, make, match: str) -> None:
    path = make(state, tmp_path)
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_unknown_training_layout_names_its_keys(tmp_path: Path, state) -> None:
    torch.save({"optimizer": {"lr": torch.zeros(1)}, "step": torch.tensor(3)}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format: .* keys \[optimizer, step\]"):
        load_model(tmp_path / "opt.pt")
    dit_save.save_flat_safetensors(
        {"encoder.conv1.weight": torch.zeros(2, 3)}, tmp_path / "vae.safetensors", ""
    )
    with pytest.raises(CheckpointError, match=r"holds no Wan DiT weights.*encoder\.conv1\.weight"):
        load_model(tmp_path / "vae.safetensors")


def test_missing_unexpected_and_mismatched_keys(tmp_path: Path, state) -> None:
    bad = dict(state)
    del bad["blocks.1.ffn.2.bias"]
    bad["blocks.0.extra.weight"] = torch.zeros(3)
    bad["head.head.bias"] = torch.zeros(5)
    dit_save.save_training_pt(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "bad.pt")
    msg = str(info.value)
    assert "1 missing keys: blocks.1.ffn.2.bias" in msg
    assert "1 unexpected keys: blocks.0.extra.weight" in msg
    assert "1 shape mismatches: head.head.bias: checkpoint [5] vs model [16]" in msg
    assert info.value.missing == ["blocks.1.ffn.2.bias"]


def test_config_disagreeing_with_weights(tmp_path: Path, state) -> None:
    # config.json says 3 layers and ffn 512; the weights have 2 layers of ffn 384.
    dit_save.save_wan_folder(state, dataclasses.replace(TINY_WAN, num_layers=3, ffn_dim=512), tmp_path / "w")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "w")
    msg = str(info.value)
    assert "blocks.0.ffn.0.weight: checkpoint [384, 256] vs model [512, 256]" in msg
    assert f"{len(info.value.missing)} missing keys: blocks.2." in msg and msg.count("...") >= 1
    assert len(info.value.mismatched) == 2 * 3  # ffn.0 weight/bias and ffn.2 weight, per stored block


def test_folder_problems(tmp_path: Path, state) -> None:
    folder = WRITERS["wan-sharded"](state, tmp_path)
    next(folder.glob("*-00002-of-00002.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"names missing files: diffusion_pytorch_model-00002-of-00002"):
        load_model(folder)
    i2v = dict(state) | {"img_emb.proj.0.weight": torch.zeros(4)}
    dit_save.save_flat_safetensors(i2v, tmp_path / "i2v.safetensors")
    with pytest.raises(CheckpointError, match="image-to-video"):
        load_model(tmp_path / "i2v.safetensors")
    dit_save.save_training_pt(
        random_state(dataclasses.replace(TINY_WAN, dim=96, num_heads=2)), tmp_path / "d96.pt"
    )
    with pytest.raises(CheckpointError, match="cannot infer num_heads .* dim 96"):
        load_model(tmp_path / "d96.pt")
    assert load_model(tmp_path / "d96.pt", overrides={"num_heads": 2}).cfg.head_dim == 48


# ----------------------------------------------------------------------------- GPU path


@needs_cuda
def test_cuda_bf16_flash_attention_and_compile(tmp_path: Path, state) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    path = WRITERS["self-forcing-ema"](state, tmp_path)
    ref = load_model(path, overrides=TEXT_LEN)
    model = load_model(path, dtype=torch.bfloat16, device="cuda", overrides=TEXT_LEN)
    g = torch.Generator().manual_seed(6)
    x, ctx = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 9, TINY_WAN.text_dim, generator=g)
    t = torch.tensor([[900.0, 500.0, 100.0]])
    with torch.no_grad():
        expected = ref(x, t, ctx)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot run this call
            out = model(x.cuda(), t.cuda(), ctx.cuda())
        assert _rel_err(out.float().cpu(), expected) < 3e-2
        from vidcascade.weights.loading import compile_dit

        compiled = compile_dit(model)(x.cuda(), t.cuda(), ctx.cuda())
    assert _rel_err(compiled.float().cpu(), expected) < 3e-2


@pytest.mark.slow
def test_compiled_dit_gives_the_same_video() -> None:
    # The --compile path on CPU (eager backend: no C++ toolchain needed); ~20 s of tracing.
    from _micro import make_bundle
    from vidcascade.config import CascadeConfig
    from vidcascade.engine.engine import Engine
    from vidcascade.weights.loading import compile_dit

    bundle = make_bundle()
    ref = Engine(bundle, CascadeConfig(level=4)).generate("a red ball", 3).latents
    compile_dit(bundle.dit, backend="eager")
    out = Engine(bundle, CascadeConfig(level=4)).generate("a red ball", 3).latents
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
