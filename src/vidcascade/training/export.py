"""Package a training run as the embedded model (vidcascade/assets/embedded)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch

from ..config import model_preset
from ..weights.embedded import ASSETS
from ..weights.registry import EMBEDDED_CACHE, TINY_SAMPLING
from .common import load_checkpoint, load_dit_weights
from .merge import interpolate_states

log = logging.getLogger(__name__)

EMBEDDED_GUIDANCE = 5.0
"""Classifier-free guidance of an undistilled DiT (trained with 10% empty captions). Chosen on 24
eval prompts at level 0, step 3,700: colour accuracy 0.18 at 1 (off), 0.38 at 3, 0.47 at 5, 0.41
at 8. It doubles the batch of every forward. A distilled DiT has its teacher's guidance built in
and is exported with guidance 1."""


def export_embedded(
    run_dir: Path,
    dest: Path = ASSETS,
    extra: dict | None = None,
    merge_with: Path | None = None,
    merge_share: float = 0.5,
) -> Path:
    """Write the run's DiT (the distilled one when the run has it) and VAE as the embedded model.

    With ``merge_with`` (weights of the same model, e.g. the student the run was distilled from),
    the DiT written is ``merge_share * run + (1 - merge_share) * merge_with`` (merge.py says why).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    distilled = run_dir / "dit_distilled_ema.safetensors"
    dit_src = distilled if distilled.exists() else run_dir / "dit_ema.safetensors"
    vae_src = run_dir / "vae.safetensors"
    for p in (dit_src, vae_src):
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: train the VAE and the DiT first (vidcascade train)")
    state = load_file(str(dit_src))
    if merge_with is not None:  # before anything is written: a bad file or share fails here
        state = interpolate_states(state, load_dit_weights(Path(merge_with)), merge_share)
    dest.mkdir(parents=True, exist_ok=True)
    with safe_open(str(dit_src), "pt") as f:
        meta_in = f.metadata() or {}
    step = meta_in.get("step", "?")
    guidance = EMBEDDED_GUIDANCE
    provenance: dict = {}
    if dit_src == distilled:
        # The teacher's guidance is baked into the student: the engine runs it unguided.
        guidance = 1.0
        ckpt = run_dir / "dit_ckpt.pt"
        teacher = load_checkpoint(ckpt) or {}
        teacher_step = str(teacher.get("step", "?"))
        # A teacher run started from earlier weights counts its steps from there.
        init = (teacher.get("config") or {}).get("init_from")
        provenance = {
            "distilled": {
                "steps": step,
                "teacher_step": teacher_step,
                "teacher_init": Path(init).name if init else None,
                "teacher_guidance": meta_in.get("guidance", "?"),
                "teacher_substeps": meta_in.get("substeps", "?"),
                **({"student_init": meta_in["student_init"]} if "student_init" in meta_in else {}),
            }
        }
        step = f"{teacher_step}+distill{step}"
    if merge_with is not None:
        provenance["merged"] = {"with": Path(merge_with).name, "run_share": merge_share}
        step = f"{step} merged {merge_share:g}"
    save_file(
        {k: v.to(torch.float32).contiguous() for k, v in state.items()},
        str(dest / "dit.safetensors"),
        metadata={"step": step},
    )
    shutil.copyfile(vae_src, dest / "vae.safetensors")
    meta = {
        "model": dataclasses.asdict(model_preset("tiny")),
        "sampling": dataclasses.asdict(dataclasses.replace(TINY_SAMPLING, guidance=guidance)),
        "cache": dataclasses.asdict(EMBEDDED_CACHE),
        # The text mode of the data the DiT last trained on (exports before text modes: sentence).
        "text": {"encoder": "minilm", "mode": meta_in.get("text_mode", "sentence")},
        "latent_hw": [8, 8],
        "fps": 8.0,
        "decode_frames_per_pass": 3,
        "description": "embedded model: causal Wan DiT (4.0M params) + Wan-architecture VAE trained on the "
        "procedural world by `vidcascade train`",
        "train_step": step,
        **provenance,
        **(extra or {}),
    }
    (dest / "model.json").write_text(json.dumps(meta, indent=2))
    log.info("exported step %s of %s to %s", step, run_dir, dest)
    return dest
