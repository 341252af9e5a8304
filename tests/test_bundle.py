"""Model folders: a complete tiny bundle in the real formats generates through the CLI, `inspect`
reports it, and bad manifests and parts fail with errors that name the field."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _real_formats import TINY_WAN, random_state, tiny_umt5
from vidcascade.cli import main
from vidcascade.config import MODEL_PRESETS, CacheConfig, SamplingConfig
from vidcascade.inspect_cmd import inspect_path, kv_report
from vidcascade.models.preview_decoder import PreviewDecoder
from vidcascade.models.wan_vae import WAN_VAE_PRESETS, WanVAE
from vidcascade.scheduling.timesteps import make_schedule
from vidcascade.weights import dit_save
from vidcascade.weights.bundle_folder import BUNDLE_PRESETS, ManifestError, load_bundle_folder, parse_manifest
from vidcascade.weights.registry import load_bundle
from vidcascade.weights.vae_keys import save_wan_vae

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs vidcascade[wan]"
)

MANIFEST = {
    "preset": "self-forcing",
    "wan": "Wan2.1-T2V-1.3B",
    "dit": "checkpoints/self_forcing_dmd.pt",
    "height": 32,
    "width": 48,
    "cache": {"window_frames": 6},
    "model": {"text_len": 16},  # a .pt carries no config: text_len (512 by default) comes from here
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Wan2.1 original folder (base DiT, VAE .pth, umT5 .pth + tokenizer), a Self-Forcing .pt and
    a bundle folder whose manifest names them, all tiny and random."""
    from vidcascade.text.umt5 import WAN_T5_FILE, WAN_T5_TOKENIZER_SUBDIR, hf_to_wan_t5

    root = tmp_path_factory.mktemp("real")
    wan = root / "Wan2.1-T2V-1.3B"
    state = random_state(TINY_WAN, seed=11)
    dit_save.save_wan_folder(state, TINY_WAN, wan)  # the base model, Wan names, config.json
    torch.manual_seed(0)
    save_wan_vae(WanVAE(WAN_VAE_PRESETS["tiny"]).eval(), wan / "Wan2.1_VAE.pth")  # z_dim 4 = in_dim
    hf = root / "umt5-hf"
    tiny_umt5(hf, d_model=TINY_WAN.text_dim)
    from transformers import AutoTokenizer, UMT5EncoderModel

    torch.save(hf_to_wan_t5(UMT5EncoderModel.from_pretrained(str(hf)).state_dict()), wan / WAN_T5_FILE)
    AutoTokenizer.from_pretrained(str(hf)).save_pretrained(str(wan / WAN_T5_TOKENIZER_SUBDIR))
    (root / "checkpoints").mkdir()
    dit_save.save_training_pt(random_state(TINY_WAN, seed=12), root / "checkpoints" / "self_forcing_dmd.pt")
    (root / "vidcascade.json").write_text(json.dumps(MANIFEST))
    return root


def _bundle_dir(root: Path, name: str, manifest: dict) -> Path:
    folder = root / name
    folder.mkdir(exist_ok=True)
    (folder / "vidcascade.json").write_text(json.dumps(manifest))
    return folder


# ----------------------------------------------------------------------------- end to end


def test_generate_through_the_cli_at_levels_0_and_4(root: Path, capsys) -> None:
    frames = {}
    for level in (0, 4):
        out = root / f"P{level}.npz"
        argv = [
            "generate",
            "a red ball moves left",
            "--model",
            str(root),
            "--blocks",
            "3",
            "--level",
            str(level),
        ]
        rc = main([*argv, "--out", str(out)])
        printed = capsys.readouterr().out
        assert rc == 0, printed
        assert f"level P{level}" in printed and "model self-forcing" in printed
        frames[level] = np.load(out)["frames"]
    # 3 blocks of 3 latent frames: 1 + 4 * 8 pixel frames (the first latent frame gives 1), 32 x 48.
    assert frames[0].shape == frames[4].shape == (33, 32, 48, 3)
    assert frames[0].dtype == np.uint8 and frames[0].std() > 0


def test_bundle_parts_and_sampling(root: Path) -> None:
    bundle = load_bundle(str(root))
    assert bundle.latent_hw == (4, 6) and bundle.fps == 16.0 and bundle.trained
    assert bundle.cache == CacheConfig(sink_frames=3, window_frames=6)
    assert make_schedule(bundle.sampling).timesteps == pytest.approx((1000.0, 937.5, 833.333333, 625.0))
    assert bundle.text_encoder.text_len == 16 and bundle.text_encoder.text_dim == TINY_WAN.text_dim
    assert type(bundle.make_decoder()).__name__ == "VAEFrameDecoder"
    expected = random_state(TINY_WAN, seed=12)  # the .pt wins over the Wan folder's base model
    assert all(torch.equal(bundle.dit.state_dict()[k], v) for k, v in expected.items())


def test_presets() -> None:
    def schedule(name: str) -> tuple[float, ...]:
        s = dict(BUNDLE_PRESETS[name]["sampling"])
        return make_schedule(SamplingConfig(**{**s, "steps": tuple(s["steps"])})).timesteps

    assert schedule("causvid") == (1000.0, 757.0, 522.0)
    assert schedule("longlive") == schedule("self-forcing")
    assert BUNDLE_PRESETS["longlive"]["cache"] == {"sink_frames": 3, "window_frames": 6}  # 3 + 6 + block = 12


def test_bundle_without_vae_previews_latents(root: Path, caplog) -> None:
    folder = _bundle_dir(root, "novae", {
        "dit": "../Wan2.1-T2V-1.3B", "text_encoder": "hash", "height": 32, "width": 32, "fps": 8,
        "sampling": {"steps": [1000, 500], "frames_per_block": 2},
    })  # fmt: skip
    bundle = load_bundle_folder(folder)
    assert isinstance(bundle.make_decoder(), PreviewDecoder) and "latent preview" in bundle.description
    assert "PreviewDecoder" in caplog.text
    assert bundle.dit.cfg.text_len == TINY_WAN.text_len  # from the Wan folder's config.json


# ----------------------------------------------------------------------------- inspect


def test_inspect_bundle_and_checkpoint(root: Path, capsys) -> None:
    assert main(["inspect", str(root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "bundle" and rep["usable"] and rep["problems"] == []
    dit = rep["dit"]
    assert dit["format"] == "training-pt" and "generator_ema" in dit["notes"][0]
    assert dit["num_params"] == dit["model_params"] == TINY_WAN.num_params()
    assert dit["geometry"]["dim"] == 256 and dit["geometry"]["num_heads"] == 2
    kv = rep["kv_cache"]
    assert (
        kv["tokens_per_frame"] == 2 * 3 and kv["bytes_per_frame"] == 2 * 2 * 6 * 256 * 2
    )  # K+V, layers, bf16
    assert kv["committed_bytes"] == 9 * kv["bytes_per_frame"]
    assert [lv["in_flight_blocks"] for lv in kv["levels"]] == [1, 2, 2, 3, 5]
    assert rep["vae"]["z_dim"] == 4 and rep["text_encoder"]["text_dim"] == TINY_WAN.text_dim

    rc = main(
        ["inspect", str(root / "Wan2.1-T2V-1.3B"), "--window-frames", "30", "--height", "64", "--width", "64"]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "wan-folder" in text and "committed 3 sink + 30 window" in text and "usable" in text


def test_inspect_reports_problems(root: Path, capsys) -> None:
    bad = random_state(TINY_WAN, seed=1)
    del bad["blocks.1.self_attn.o.bias"]
    dit_save.save_training_pt(bad, root / "checkpoints" / "broken.pt")
    manifest = {**MANIFEST, "wan": "../Wan2.1-T2V-1.3B", "dit": "../checkpoints/broken.pt"}
    folder = _bundle_dir(root, "broken", manifest | {"vae": "../missing_vae.pth"})
    assert main(["inspect", str(folder)]) == 1
    text = capsys.readouterr().out
    assert (
        "1 missing keys: blocks.1.self_attn.o.bias" in text
        and "vae: no such file" in text
        and "NOT usable" in text
    )
    with pytest.raises(ValueError, match="no such path"):  # the CLI's exit status 2
        inspect_path(root / "checkpoints" / "nothing.pt")


def test_kv_report_matches_the_reference_table() -> None:
    # reference §2.2: 1.3B in bf16 at 480x832 -> 287.5 MB per latent frame, 6.04 GB for 21 frames.
    cache = CacheConfig(sink_frames=3, window_frames=18)
    rep = kv_report(MODEL_PRESETS["wan-1.3b"], 480, 832, 8, SamplingConfig(), cache, torch.bfloat16)
    assert rep["tokens_per_frame"] == 1560 and rep["bytes_per_frame"] == 287_539_200
    assert rep["committed_bytes"] == 21 * 287_539_200 and round(rep["cross_attn_bytes"] / 1e6) == 94
    assert rep["levels"][4]["pool_bytes"] == (21 + 5 * 3) * 287_539_200


# ----------------------------------------------------------------------------- bad manifests


BASE = {"dit": "x.pt", "text_encoder": "hash", "height": 32, "width": 32, "fps": 8}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"vea": "x"}, r"unknown fields \['vea'\]"),
        ({"dit": 3}, "dit: expected a path string"),
        ({"dit": None}, "dit: required"),
        ({"text_encoder": None}, "text_encoder: required"),
        ({"preset": "sora"}, "preset: unknown preset 'sora'"),
        ({"sampling": {"stepz": [1]}}, r"sampling: unknown fields \['stepz'\]"),
        ({"sampling": {"shift": -1}}, "sampling: shift must be > 0"),
        ({"cache": {"window_frames": 0}}, "cache: window_frames must be a positive integer"),
        ({"cache": {"sink_bias": -1}}, "cache: sink_bias must be a finite number >= 0, got -1"),
        ({"height": "480"}, "height: expected a positive integer"),
        ({"fps": None}, "fps: required"),
        ({"model": {"dimm": 3}}, r"model: unknown fields \['dimm'\]"),
        ({"lora_alpha": 0}, "lora_alpha: must be > 0"),
    ],
)
def test_manifest_errors_name_the_field(tmp_path: Path, change: dict, match: str) -> None:
    data = {k: v for k, v in (BASE | change).items() if v is not None}
    with pytest.raises(ManifestError, match=match):
        parse_manifest(data, tmp_path)


def test_bad_bundles_fail_clearly(root: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ManifestError, match="needs a vidcascade.json"):
        load_bundle_folder(tmp_path)
    with pytest.raises(ManifestError, match="is a file"):
        load_bundle_folder(root / "checkpoints" / "self_forcing_dmd.pt")
    moved = {**MANIFEST, "wan": "../Wan2.1-T2V-1.3B", "dit": "../checkpoints/self_forcing_dmd.pt"}
    odd = _bundle_dir(root, "odd", moved | {"height": 40})
    with pytest.raises(ManifestError, match="must be multiples of 16"):
        load_bundle_folder(odd)
    wide = dataclasses.replace(TINY_WAN, text_dim=48)
    dit_save.save_training_pt(random_state(wide), root / "checkpoints" / "wide.pt")
    mismatch = _bundle_dir(root, "mismatch", moved | {"dit": "../checkpoints/wide.pt"})
    with pytest.raises(ManifestError, match="gives 32-d states but the DiT's text_dim is 48"):
        load_bundle_folder(mismatch)
    rc = main(["generate", "x", "--model", str(odd), "--out", str(tmp_path / "o.npz")])
    assert rc == 2 and "height x width 40x48" in capsys.readouterr().err
