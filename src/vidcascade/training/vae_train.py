"""Train the embedded model's video VAE on the procedural world.

The VAE is the Wan2.1 architecture (models/wan_vae.py) at a tiny configuration with no temporal
compression: 64x64x3 frames -> 8x8x8 latents, so that the DiT sees 16 tokens per frame with 2x2
patches (reference/embedded-model-notes.md: this latent recipe learnt motion where 64-token pixel
patches did not). Deterministic autoencoder: the posterior mean is used, with a small L2 penalty
and Gaussian noise on the latent before decoding, so the decoder tolerates imperfect latents from
the diffusion model. Object pixels are weighted up: they are a small part of each frame.

The noise is relative: per latent channel, a fixed fraction of that channel's spread over the
batch. With absolute noise (0.1, up to the step-14,000 model) the encoder could outgrow the
noise by scaling, and it learnt a one-dimensional colour code: inside objects every colour's
latent pointed the same way (cosine 0.98-1.00 between colours), colours differing only in
length (green 1.6, cyan 2.4, blue 4.6, magenta 5.2 ... white 19.7 from the background, in
the DiT's normalised units). The DiT then had to hit exact lengths: blue came out cyan, green
faded into the background. Relative noise alone did not change that (measured: cosine still
1.00). What does is a *colour probe*: a linear map, trained with the VAE and then dropped, that
must read each latent cell's mean RGB from the noisy latent. Colour then has to be a linear,
noise-robust function of the latent, so colours that differ in RGB differ in direction.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.wan_vae import WanVAE, WanVAEConfig
from ..models.wan_vae_blocks import CausalState
from .common import (
    EMA,
    Progress,
    cosine_lr,
    load_checkpoint,
    render_batch,
    require_at_least_one,
    restore_training_state,
    save_checkpoint,
    to_video_tensor,
    training_state,
)

log = logging.getLogger(__name__)

EMBEDDED_VAE = WanVAEConfig(
    base_dim=8, z_dim=8, dim_mult=(1, 2, 4, 4), num_res_blocks=1, temporal_downsample=(False, False, False)
)


@dataclass(frozen=True)
class VAETrainConfig:
    steps: int = 1000
    batch: int = 12
    """Clips per step."""
    frames: int = 4
    """Frames per clip (the causal convolutions see their past inside a clip)."""
    lr: float = 2e-3
    warmup: int = 50
    latent_l2: float = 1e-3
    latent_noise: float = 0.3
    """Noise on the latent before decoding, as a fraction of each channel's std over the batch
    (``relative_noise``), else in raw latent units."""
    relative_noise: bool = True
    colour_probe: float = 1.0
    """Weight of the colour-probe loss (0: no probe, as up to the step-14,000 model)."""
    object_weight: float = 10.0
    ema: float = 0.995
    burn_in_max: int = 12
    """Up to this many frames run without gradients first, so the causal convolutions are trained
    from the warm state they have deep into a stream, not only from a fresh start."""
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        require_at_least_one(self, "steps", "batch", "frames", "checkpoint_every")


def _recon_loss(y: torch.Tensor, x: torch.Tensor, object_weight: float) -> torch.Tensor:
    # Background channels are <= 40/255: anything clearly brighter belongs to an object.
    obj = (x.amax(dim=1, keepdim=True) > -0.55).float()  # [B, 1, T, H, W]
    # A 2-pixel ring around each object is weighted as the object: otherwise a halo costs only
    # background weight, and the decoder learnt to blur edges (squares and triangles came out round).
    obj = torch.nn.functional.max_pool3d(obj, (1, 5, 5), stride=1, padding=(0, 2, 2))
    w = 1.0 + (object_weight - 1.0) * obj
    d = y - x
    return (w * (d.square() + 0.5 * d.abs())).mean()


def latent_noise_scale(mu: torch.Tensor, cfg: VAETrainConfig) -> torch.Tensor | float:
    """Std of the noise added to mu [B, z, T, h, w] before decoding: [1, z, 1, 1, 1] relative to each
    channel's spread over the batch (no gradient through it), or the raw ``latent_noise``."""
    if not cfg.relative_noise:
        return cfg.latent_noise
    spread = mu.detach().transpose(0, 1).reshape(mu.shape[1], -1).std(dim=1)  # [z]
    return cfg.latent_noise * spread.view(1, -1, 1, 1, 1)


def colour_probe_loss(probe: torch.nn.Module, z: torch.Tensor, x: torch.Tensor, cell: int) -> torch.Tensor:
    """How well a 1x1 linear probe reads each latent cell's mean RGB from z [B, z, T, h, w]; x is
    [B, 3, T, H, W] in [-1, 1]. Cells that hold object pixels weigh 10x (most cells are plain
    background, which is easy to read)."""
    target = torch.nn.functional.avg_pool3d(x, (1, cell, cell))  # [B, 3, T, h, w]
    has_object = torch.nn.functional.max_pool3d(
        (x.amax(dim=1, keepdim=True) > -0.55).float(), (1, cell, cell)
    )
    w = 1.0 + 9.0 * has_object  # [B, 1, T, h, w]
    pred = probe(z.transpose(1, -1)).transpose(1, -1)  # [B, 3, T, h, w]
    return (w * (pred - target).square()).mean()


def vae_step(vae: WanVAE, x: torch.Tensor, cfg: VAETrainConfig, burn_in: int = 0, probe=None):
    """x [B, 3, burn_in + frames, H, W]; the first ``burn_in`` frames only warm the causal state.
    ``probe``: the colour probe (nn.Linear(z_dim, 3)) when cfg.colour_probe > 0."""
    enc, dec = CausalState(), CausalState()
    if burn_in:
        with torch.no_grad():
            moments, enc = vae.encode_step(x[:, :, :burn_in], enc)
            _, dec = vae.decode_step(moments.chunk(2, dim=1)[0], dec, frames_per_pass=burn_in)
        x = x[:, :, burn_in:]
    moments, _ = vae.encode_step(x, enc)  # [B, 2z, T, h, w]; stride 1: any T in one pass
    mu = moments.chunk(2, dim=1)[0]  # [B, z, T, h, w]
    z = mu + latent_noise_scale(mu, cfg) * torch.randn_like(mu)
    y, _ = vae.decode_step(z, dec, frames_per_pass=x.shape[2])
    rec = _recon_loss(y, x, cfg.object_weight)
    l2 = mu.square().mean()
    loss, parts = rec + cfg.latent_l2 * l2, {"rec": rec.item(), "mu2": l2.item()}
    if probe is not None and cfg.colour_probe > 0:
        col = colour_probe_loss(probe, z, x, x.shape[-1] // z.shape[-1])
        loss, parts["col"] = loss + cfg.colour_probe * col, col.item()
    return loss, parts


@torch.no_grad()
def latent_stats(vae: WanVAE, rng: np.random.Generator, clips: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mean over random clips (for normalize())."""
    mus = []
    for _ in range(clips // 32):
        x = to_video_tensor(render_batch(rng, 32, 4, max_offset=40))
        mus.append(vae.encode_step(x, CausalState())[0].chunk(2, dim=1)[0])
    mu = torch.cat(mus).transpose(0, 1).reshape(vae.config.z_dim, -1)
    return mu.mean(1).tolist(), mu.std(1).tolist()


def _run_phase(
    vae: torch.nn.Module,
    params: list[torch.nn.Parameter],
    cfg: VAETrainConfig | DecoderTuneConfig,
    ckpt_path: Path,
    minutes: float | None,
    label: str,
    step_fn,
) -> tuple[int, EMA]:
    """The resumable loop both VAE phases share: random burn-in, rendered clips, AdamW on ``params``
    with a cosine schedule, EMA of the whole model, checkpoints. ``step_fn(x, burn, rng)`` returns
    (loss, extra numbers for the progress bar). Returns the step reached and the EMA."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema = EMA(vae, cfg.ema)
    rng = np.random.default_rng(cfg.seed)
    start = 0
    if (ck := load_checkpoint(ckpt_path)) is not None:
        start = restore_training_state(ck, vae, opt, ema, rng)
        log.info("resuming %s at step %d", label, start)
    vae.train()
    prog = Progress(start, cfg.steps, minutes, label)
    for step in prog:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        burn = int(rng.integers(0, cfg.burn_in_max + 1)) if rng.random() < 0.75 else 0
        x = to_video_tensor(render_batch(rng, cfg.batch, burn + cfg.frames, max_offset=60))
        loss, parts = step_fn(x, burn, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(vae, step)
        prog.post(loss=loss.item(), **parts)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(
                ckpt_path, **training_state(vae, opt, ema, rng, step + 1, dataclasses.asdict(cfg))
            )
    if prog.step < cfg.steps:
        log.info("%s stopped at step %d of %d; run again to resume", label, prog.step, cfg.steps)
    return prog.step, ema


def train_vae(out_dir: Path, cfg: VAETrainConfig, minutes: float | None = None) -> Path:
    """Train (or resume) into out_dir/vae_ckpt.pt; returns the path of the finished VAE safetensors."""
    from ..weights.vae_keys import save_wan_vae

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vae = WanVAE(EMBEDDED_VAE)
    # The probe trains with the VAE (so it is checkpointed and averaged with it) and is then dropped.
    held = torch.nn.ModuleDict({"vae": vae, "probe": torch.nn.Linear(EMBEDDED_VAE.z_dim, 3)})
    reached, ema = _run_phase(
        held,
        list(held.parameters()),
        cfg,
        out_dir / "vae_ckpt.pt",
        minutes,
        "vae",
        lambda x, burn, rng: vae_step(vae, x, cfg, burn, probe=held["probe"]),
    )
    final = WanVAE(EMBEDDED_VAE)
    final.load_state_dict(
        {k.removeprefix("vae."): v for k, v in ema.state_dict().items() if k.startswith("vae.")}
    )
    final.eval()
    mean, std = latent_stats(final, np.random.default_rng(cfg.seed + 1))
    cfg_norm = dataclasses.replace(EMBEDDED_VAE, latents_mean=tuple(mean), latents_std=tuple(std))
    vae_out = WanVAE(cfg_norm)
    vae_out.load_state_dict(final.state_dict())
    path = out_dir / "vae.safetensors"
    save_wan_vae(vae_out.eval(), path)
    log.info("wrote %s (step %d); latent std %s", path, reached, [round(s, 3) for s in std])
    return path


@dataclass(frozen=True)
class DecoderTuneConfig:
    """Second VAE phase: the decoder alone, with the encoder (and so the DiT's latents) frozen.

    Because the latents do not change, this phase can run after the ``data`` stage and even beside
    the DiT's training. Noise is added in the DiT's normalised latent space, at a random level per
    clip, so that the decoder learns to draw clean shapes from the imperfect latents a few-step
    sampler produces.
    """

    steps: int = 1500
    batch: int = 12
    frames: int = 4
    lr: float = 1e-3
    warmup: int = 20
    max_latent_noise: float = 0.3
    object_weight: float = 10.0
    ema: float = 0.99
    burn_in_max: int = 12
    seed: int = 1
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        require_at_least_one(self, "steps", "batch", "frames", "checkpoint_every")


def freeze_encoder(vae: WanVAE) -> list[torch.nn.Parameter]:
    """Stop gradients into the encoder (and its moments conv); returns the parameters left to train."""
    for p in [*vae.encoder.parameters(), *vae.conv1.parameters()]:
        p.requires_grad_(False)
    return [*vae.conv2.parameters(), *vae.decoder.parameters()]


def decoder_step(vae: WanVAE, x: torch.Tensor, cfg: DecoderTuneConfig, burn_in: int, noise: torch.Tensor):
    """x [B, 3, burn_in + frames, H, W]; noise [B] latent noise level per clip (normalised space)."""
    with torch.no_grad():
        mu = vae.encode_step(x, CausalState())[0].chunk(2, dim=1)[0]  # [B, z, T, h, w]
        z = vae.normalize(mu)
        z = vae.denormalize(z + noise.view(-1, 1, 1, 1, 1) * torch.randn_like(z))
        dec = CausalState()
        if burn_in:
            _, dec = vae.decode_step(z[:, :, :burn_in], dec, frames_per_pass=burn_in)
    y, _ = vae.decode_step(z[:, :, burn_in:], dec, frames_per_pass=x.shape[2] - burn_in)
    return _recon_loss(y, x[:, :, burn_in:], cfg.object_weight)


def finetune_decoder(out_dir: Path, cfg: DecoderTuneConfig, minutes: float | None = None) -> Path:
    """Fine-tune the decoder of out_dir/vae.safetensors (resumable: out_dir/vae_dec_ckpt.pt); rewrites
    vae.safetensors with the same encoder and latent statistics."""
    from ..weights.vae_keys import load_wan_vae, save_wan_vae

    path = out_dir / "vae.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `vidcascade train vae` first")
    torch.manual_seed(cfg.seed)
    vae = load_wan_vae(path, dtype=torch.float32)

    def step_fn(x: torch.Tensor, burn: int, rng: np.random.Generator):
        noise = torch.from_numpy(rng.uniform(0.0, cfg.max_latent_noise, cfg.batch)).float()
        return decoder_step(vae, x, cfg, burn, noise), {}

    reached, ema = _run_phase(
        vae, freeze_encoder(vae), cfg, out_dir / "vae_dec_ckpt.pt", minutes, "vae decoder", step_fn
    )
    out = WanVAE(vae.config)
    out.load_state_dict(ema.state_dict())
    save_wan_vae(out.eval(), path)
    log.info("wrote %s (decoder step %d)", path, reached)
    return path
