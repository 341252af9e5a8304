"""Named models and model folders -> Bundle."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..config import CacheConfig, SamplingConfig, model_preset
from ..models.preview_decoder import PreviewDecoder
from ..models.wan_dit import CausalWanDiT, init_weights
from ..text.hashing import HashTextEncoder
from .bundle import Bundle

log = logging.getLogger(__name__)

# The sampling the embedded model family uses: 4 deterministic Euler steps at shift 3 plus the
# cache step (reference/embedded-model-notes.md: 4 Euler steps at shift 3 matched 16 steps).
TINY_SAMPLING = SamplingConfig(
    steps=(1000, 750, 500, 250), warp=True, shift=3.0, frames_per_block=3, sampler="euler"
)
TINY_CACHE = CacheConfig(sink_frames=3, window_frames=12)
# The trained embedded model raises the sink's attention logits by 2 once the window holds frames:
# on the 17 two-object validation videos of 60 blocks the objects counted right in the last quarter
# went from 0.588 to 0.882, the same as in the first quarter (README, "Long videos").
EMBEDDED_CACHE = CacheConfig(sink_frames=3, window_frames=12, sink_bias=2.0, positions="refresh")


def random_tiny(device: torch.device | str = "cpu", seed: int = 0) -> Bundle:
    """The untrained stand-in: the tiny geometry with random weights, hashed words as text."""
    cfg = model_preset("tiny")
    dit = init_weights(CausalWanDiT(cfg), seed).eval().to(device)
    return Bundle(
        name="random-tiny",
        dit=dit,
        text_encoder=HashTextEncoder(cfg.text_dim, cfg.text_len, device),
        make_decoder=lambda: PreviewDecoder(cfg.in_dim, upscale=8),
        sampling=TINY_SAMPLING,
        cache=TINY_CACHE,
        latent_hw=(8, 8),
        fps=8.0,
        trained=False,
        description="randomly initialised tiny model (untrained: noise-like output, latent preview decoder)",
    )


def _embedded(device: torch.device | str = "cpu") -> Bundle:
    from .embedded import load_embedded

    return load_embedded(device)


def _embedded_teacher(device: torch.device | str = "cpu") -> Bundle:
    from .embedded import TEACHER_ASSETS, load_embedded

    return load_embedded(device, folder=TEACHER_ASSETS, name="embedded-teacher")


BUILTIN = {"embedded": _embedded, "embedded-teacher": _embedded_teacher, "random-tiny": random_tiny}


def uniform_steps(n: int, num_train_timesteps: int = 1000) -> tuple[float, ...]:
    """n timesteps evenly spaced from the top, 1000, 1000 (1 - 1/n), ... (warped by the model's
    shift as its sampling says): the many-step Euler sampler of the embedded teacher."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= num_train_timesteps:
        raise ValueError(f"steps must be an integer in 1..{num_train_timesteps}, got {n!r}")
    return tuple(float(round(num_train_timesteps * (1 - k / n))) for k in range(n))


def with_steps(sampling: SamplingConfig, n: int) -> SamplingConfig:
    """The bundle's sampling with n evenly spaced denoising steps instead of its own."""
    import dataclasses

    return dataclasses.replace(sampling, steps=uniform_steps(n, sampling.num_train_timesteps))


def default_model_name() -> str:
    """The embedded model when its files are installed, else the untrained stand-in."""
    from .embedded import embedded_available

    if embedded_available():
        return "embedded"
    log.warning("the embedded model's files are not installed; using the untrained random-tiny model")
    return "random-tiny"


@dataclass(frozen=True)
class ModelSource:
    """Where a ``--model`` value points, before anything is read (``inspect`` reports the same)."""

    kind: Literal["builtin", "embedded-folder", "path"]
    """builtin: made in memory (random-tiny); embedded-folder: model.json + dit/vae safetensors
    (the package's assets, or `train export --dest`); path: anything else that exists (a model
    folder with a manifest, or a file that is not one)."""
    name: str
    path: Path | None


def resolve_model(name_or_path: str | None = None) -> ModelSource:
    """The kind of model a name or path is; ValueError when it is neither a built-in nor a path."""
    from .embedded import ASSETS, TEACHER_ASSETS, embedded_available

    name = name_or_path or default_model_name()
    shipped = {"embedded": ASSETS, "embedded-teacher": TEACHER_ASSETS}  # built-ins that are folders
    if name in shipped:
        return ModelSource("embedded-folder", name, shipped[name])
    if name in BUILTIN:
        return ModelSource("builtin", name, None)
    path = Path(name)
    if not path.exists():
        raise ValueError(f"unknown model {name!r}: not a built-in ({', '.join(BUILTIN)}) and no such path")
    if path.is_dir() and embedded_available(path):
        return ModelSource("embedded-folder", name, path)
    return ModelSource("path", name, path)


def load_bundle(
    name_or_path: str | None = None, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Bundle:
    """A built-in model by name, or a model folder (see docs in README)."""
    src = resolve_model(name_or_path)
    if src.kind == "builtin":
        bundle = BUILTIN[src.name](device)
    elif src.kind == "embedded-folder":
        from .embedded import load_embedded

        # The package's assets, or an embedded-format folder written by `train export --dest`.
        bundle = load_embedded(device, folder=src.path, name=src.name if src.name in BUILTIN else None)
    else:
        from .bundle_folder import load_bundle_folder

        bundle = load_bundle_folder(src.path, device=device, dtype=dtype)
    if dtype is not None and bundle.dit.patch_embedding.weight.dtype != dtype:
        bundle.dit.to_inference_dtype(dtype)
    return bundle
