"""WanVAE: equivalence with diffusers' AutoencoderKLWan, streaming vs full decode, checkpoint formats."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from vidcascade.models.vae_stream import StreamingDecoder, StreamingEncoder
from vidcascade.models.wan_vae import WAN21_LATENTS_MEAN, WAN_VAE_PRESETS, WanVAE, WanVAEConfig
from vidcascade.models.wan_vae_blocks import CausalState
from vidcascade.weights.vae_keys import (
    VAECheckpointError,
    config_to_diffusers,
    diffusers_to_original,
    infer_config,
    load_wan_vae,
    original_to_diffusers,
    original_to_diffusers_key,
    save_wan_vae,
    save_wan_vae_diffusers,
)

TINY = WAN_VAE_PRESETS["tiny"]  # temporal stride 4, spatial stride 8
PER_FRAME = dataclasses.replace(TINY, temporal_downsample=(False, False, False))  # stride 1
WIDE = WanVAEConfig(base_dim=4, z_dim=8, dim_mult=(1, 2, 4, 4), num_res_blocks=2)  # wan2.1 layout
# fp32 tolerances: streaming runs the same ops on other chunk shapes, so only rounding differs.
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial gammas and biases, so a swapped or ignored parameter shows up in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                p.mul_(1.0 + 0.1 * noise)


def _model(config: WanVAEConfig, seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    model = WanVAE(config).eval()
    _randomize(model, seed)
    return model


def _video(frames: int, size: int = 16, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, frames, size, size), generator=g) * 2 - 1


def _latents(config: WanVAEConfig, frames: int, batch: int = 1, seed: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, config.z_dim, frames, 2, 2), generator=g)


def _diffusers_twin(model: WanVAE):
    """diffusers' AutoencoderKLWan with the same config and weights (converted through vae_keys)."""
    diffusers = pytest.importorskip("diffusers")
    fields = {k: v for k, v in config_to_diffusers(model.config).items() if not k.startswith("_")}
    ref = diffusers.AutoencoderKLWan(**fields).eval()
    ref.load_state_dict(original_to_diffusers(model.state_dict(), model.config.num_res_blocks), strict=True)
    return ref


# ----- config and names -------------------------------------------------------------------------------


def test_config_validation_names_bad_values() -> None:
    assert WAN_VAE_PRESETS["wan2.1"].latents_mean == WAN21_LATENTS_MEAN
    assert TINY.latents_mean == (0.0,) * 4 and TINY.latents_std == (1.0,) * 4
    assert (TINY.temporal_stride, TINY.spatial_stride, PER_FRAME.temporal_stride) == (4, 8, 1)
    with pytest.raises(ValueError, match="base_dim must be a positive int, got 0"):
        WanVAEConfig(base_dim=0)
    with pytest.raises(ValueError, match=r"temporal_downsample needs len\(dim_mult\) - 1 = 3 entries"):
        WanVAEConfig(temporal_downsample=(True,))
    with pytest.raises(ValueError, match="latents_mean has 16 values but z_dim is 4"):
        dataclasses.replace(WAN_VAE_PRESETS["wan2.1"], z_dim=4)
    with pytest.raises(ValueError, match="latents_std must be positive"):
        WanVAEConfig(z_dim=2, latents_std=(1.0, 0.0))


def test_parameter_names_follow_the_original_checkpoint() -> None:
    with torch.device("meta"):
        model = WanVAE(WAN_VAE_PRESETS["wan2.1"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 194
    assert sum(v.numel() for v in model.parameters()) == 126_892_531
    expected = {
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "decoder.middle.1.norm.gamma": (384, 1, 1),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert "decoder.upsamples.11.time_conv.weight" not in shapes  # the last upsampler is spatial only
    assert infer_config(model.state_dict()) == WAN_VAE_PRESETS["wan2.1"]


def test_key_conversion_matches_diffusers_module_names() -> None:
    diffusers = pytest.importorskip("diffusers")
    for config in (WIDE, TINY, PER_FRAME):
        with torch.device("meta"):
            ours = WanVAE(config).state_dict()
        fields = {k: v for k, v in config_to_diffusers(config).items() if not k.startswith("_")}
        theirs = diffusers.AutoencoderKLWan(**fields).state_dict()
        converted = original_to_diffusers(ours, config.num_res_blocks)
        assert set(converted) == set(theirs), config
        assert all(converted[k].shape == theirs[k].shape for k in converted)
        assert set(diffusers_to_original(theirs, config.num_res_blocks)) == set(ours)
    # Rows of the reference table (wan2.1 layout, 2 residual blocks).
    rows = {
        "decoder.upsamples.3.resample.1.weight": "decoder.up_blocks.0.upsamplers.0.resample.1.weight",
        "decoder.upsamples.4.shortcut.bias": "decoder.up_blocks.1.resnets.0.conv_shortcut.bias",
        "decoder.upsamples.14.residual.3.gamma": "decoder.up_blocks.3.resnets.2.norm2.gamma",
        "encoder.middle.2.residual.6.weight": "encoder.mid_block.resnets.1.conv2.weight",
        "decoder.middle.1.proj.bias": "decoder.mid_block.attentions.0.proj.bias",
        "encoder.head.0.gamma": "encoder.norm_out.gamma",
        "conv2.weight": "post_quant_conv.weight",
    }
    assert {k: original_to_diffusers_key(k, 2) for k in rows} == rows


# ----- numerics against diffusers ----------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, PER_FRAME, WIDE], ids=["stride4", "stride1", "wan21-layout"])
def test_encode_and_decode_match_diffusers(config: WanVAEConfig) -> None:
    ours = _model(config)
    ref = _diffusers_twin(ours)
    video = _video(9)
    z = _latents(config, 3)
    with torch.no_grad():
        mu, logvar = ours.encode_moments(video)
        posterior = ref.encode(video).latent_dist
        torch.testing.assert_close(mu, posterior.mean, **TOL)
        torch.testing.assert_close(logvar, posterior.logvar, **TOL)
        out = ours.decode(z)
        torch.testing.assert_close(out, ref.decode(z).sample, **TOL)
    assert mu.shape[2] == ours.num_latent_frames(9)
    assert out.shape == (1, 3, ours.num_frames(3), 16, 16)
    assert (out.abs() < 1).float().mean() > 0.5  # mostly unclamped, so the comparison means something


# ----- streaming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, PER_FRAME], ids=["stride4", "stride1"])
@pytest.mark.parametrize("sizes", [(3, 3, 1), (2, 1, 3, 1), (1, 5, 1)])
def test_streaming_decode_equals_full_decode(config: WanVAEConfig, sizes: tuple[int, ...]) -> None:
    vae = _model(config)
    z = _latents(config, sum(sizes), batch=2)
    stream = StreamingDecoder(vae, frames_per_pass=2)
    with torch.no_grad():
        full = vae.decode(z)
        parts, start = [], 0
        for n in sizes:
            parts.append(stream.decode(z[:, :, start : start + n]))
            start += n
    torch.testing.assert_close(torch.cat(parts, dim=2), full, **TOL)
    assert stream.frames == full.shape[2] and stream.latent_frames == z.shape[2]


@pytest.mark.parametrize("config", [TINY, PER_FRAME], ids=["stride4", "stride1"])
def test_first_latent_frame_decodes_to_one_frame(config: WanVAEConfig) -> None:
    stream = StreamingDecoder(_model(config))
    z = _latents(config, 3)
    with torch.no_grad():
        counts = [stream.decode(z[:, :, i : i + 1]).shape[2] for i in range(3)]
        stream.reset()
        assert stream.decode(z[:, :, :1]).shape[2] == 1  # a new stream starts with one frame again
    s = config.temporal_stride
    assert counts == [1, s, s]


def test_streams_are_independent_and_normalized_input_is_denormalized() -> None:
    config = dataclasses.replace(TINY, latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(1.5, 0.5, 2.0, 1.0))
    vae = _model(config)
    a, b = _latents(config, 4, seed=3), _latents(config, 4, seed=4)
    sa, sb = StreamingDecoder(vae, normalized=True), StreamingDecoder(vae, normalized=True)
    with torch.no_grad():
        out_a, out_b = [], []
        for i in range(0, 4, 2):  # interleave the two streams
            out_a.append(sa.decode(a[:, :, i : i + 2]))
            out_b.append(sb.decode(b[:, :, i : i + 2]))
        torch.testing.assert_close(torch.cat(out_a, 2), vae.decode(vae.denormalize(a)), **TOL)
        torch.testing.assert_close(torch.cat(out_b, 2), vae.decode(vae.denormalize(b)), **TOL)
        torch.testing.assert_close(vae.denormalize(vae.normalize(a)), a, **TOL)
        with pytest.raises(ValueError, match=r"\(batch, h, w\) = \(2, 2, 2\) differs"):
            sa.decode(torch.cat([a, a])[:, :, :1])


@pytest.mark.parametrize("config", [TINY, PER_FRAME], ids=["stride4", "stride1"])
def test_streaming_encode_equals_full_encode(config: WanVAEConfig) -> None:
    vae = _model(config)
    video = _video(13)
    stream = StreamingEncoder(vae)
    with torch.no_grad():
        parts = [stream.encode(video[:, :, a:b]) for a, b in ((0, 3), (3, 4), (4, 11), (11, 13))]
        torch.testing.assert_close(torch.cat(parts, dim=2), vae.encode(video), **TOL)
    assert stream.pending_frames == 0


def test_chunk_and_shape_errors() -> None:
    vae = _model(TINY)
    with pytest.raises(ValueError, match="encode chunk 0 needs exactly 1 frame, got 4"):
        vae.encode_step(_video(4), CausalState())
    _, state = vae.encode_step(_video(1), CausalState())
    with pytest.raises(ValueError, match="encode chunk 1 needs a multiple of 4 frames, got 3"):
        vae.encode_step(_video(3), state)
    with pytest.raises(ValueError, match="a video needs 1 \\+ k \\* 4 frames, got 8"):
        vae.encode(_video(8))
    with pytest.raises(ValueError, match=r"H and W multiples of 8, got \(1, 3, 1, 12, 12\)"):
        vae.encode(_video(1, size=12))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, F, h, w\]"):
        vae.decode(torch.zeros(1, 5, 1, 2, 2))
    with pytest.raises(ValueError, match="a state written by the encoder cannot drive the decoder"):
        vae.decode_step(_latents(TINY, 1), state)  # an encoder state given to the decoder


# ----- checkpoints -------------------------------------------------------------------------------------


def test_formats_load_identical_tensors_and_outputs(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, latents_mean=(0.5, 0.0, 0.0, -0.5), latents_std=(2.0, 1.0, 1.0, 1.0))
    vae = _model(config)
    save_wan_vae(vae, tmp_path / "vae.pth")
    save_wan_vae(vae, tmp_path / "vae.safetensors")
    save_wan_vae_diffusers(vae, tmp_path / "diffusers")
    loaded = {name: load_wan_vae(tmp_path / name) for name in ("vae.pth", "vae.safetensors", "diffusers")}
    # .pth carries no latent statistics: geometry is inferred from shapes, mean/std are the defaults.
    assert loaded["vae.pth"].config == TINY
    assert loaded["vae.safetensors"].config == config and loaded["diffusers"].config == config
    expected = vae.state_dict()
    z = _latents(config, 2)
    with torch.no_grad():
        want = vae.decode(z)
        for model in loaded.values():
            got = model.state_dict()
            assert got.keys() == expected.keys()
            assert all(torch.equal(got[k], expected[k]) for k in expected)
            assert torch.equal(model.decode(z), want)
        torch.testing.assert_close(loaded["diffusers"].normalize(z), vae.normalize(z), rtol=0, atol=0)
    half = load_wan_vae(tmp_path / "vae.pth", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_diffusers_reads_our_folder_and_we_read_a_diffusers_state_dict(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    vae = _model(WIDE)
    save_wan_vae_diffusers(vae, tmp_path / "ours")
    ref = diffusers.AutoencoderKLWan.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(_video(5)), ref.encode(_video(5)).latent_dist.mean, **TOL)
    # A flat safetensors file in diffusers names is detected and converted.
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "d.safetensors"))
    again = load_wan_vae(tmp_path / "d.safetensors")
    assert again.config == WIDE
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in again.state_dict().items())


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    vae = _model(TINY)
    save_wan_vae(vae, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(VAECheckpointError, match=r"cannot read VAE checkpoint '.*truncated.pth'"):
        load_wan_vae(tmp_path / "truncated.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(VAECheckpointError, match="cannot read VAE checkpoint"):
        load_wan_vae(tmp_path / "junk.safetensors")
    (tmp_path / "vae.txt").write_text("hello")
    with pytest.raises(VAECheckpointError, match="unknown VAE checkpoint format: '.*vae.txt'"):
        load_wan_vae(tmp_path / "vae.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(VAECheckpointError, match="unknown VAE checkpoint format: folder"):
        load_wan_vae(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="VAE checkpoint not found"):
        load_wan_vae(tmp_path / "absent.pth")

    state = vae.state_dict()
    broken = {k: v for k, v in state.items() if k != "decoder.conv1.bias"}
    broken["decoder.extra.weight"] = torch.zeros(1)
    broken["decoder.head.2.weight"] = torch.zeros(3, 16, 3, 3, 3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(VAECheckpointError) as err:
        load_wan_vae(tmp_path / "broken.pth")
    message = str(err.value)
    assert "1 missing keys (decoder.conv1.bias)" in message
    assert "1 unexpected keys (decoder.extra.weight)" in message
    assert "decoder.head.2.weight: checkpoint (3, 16, 3, 3, 3) vs model (3, 8, 3, 3, 3)" in message


def test_package_does_not_import_diffusers() -> None:
    code = (
        "import sys, vidcascade.models.wan_vae, vidcascade.weights.vae_keys, vidcascade.models.vae_stream;"
        "bad = [m for m in ('diffusers', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
