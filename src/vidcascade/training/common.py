"""Pieces shared by the trainers: seeded rendering of world clips, checkpoints, a progress bar, EMA."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..world import render, sample_spec

log = logging.getLogger(__name__)


def render_batch(
    rng: np.random.Generator,
    batch: int,
    frames: int,
    size: int = 64,
    max_offset: int = 0,
    two_object_prob: float = 0.5,
) -> np.ndarray:
    """uint8 [B, T, H, W, 3] of random scenes, each starting at a random frame in [0, max_offset]."""
    out = np.empty((batch, frames, size, size, 3), dtype=np.uint8)
    for i in range(batch):
        spec = sample_spec(rng, two_object_prob)
        off = int(rng.integers(0, max_offset + 1)) if max_offset else 0
        out[i] = render(spec, off + frames, size)[off:]
    return out


def to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1]."""
    x = torch.from_numpy(frames).float().div_(127.5).sub_(1.0)
    return x.permute(0, 4, 1, 2, 3).contiguous()


class EMA:
    """Exponential moving average of a model's parameters (kept in fp32)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm-up: early averages would otherwise be dominated by the random init.
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow


def require_at_least_one(cfg: object, *fields: str) -> None:
    """Config validation shared by the trainers: each named count must be >= 1."""
    for f in fields:
        if getattr(cfg, f) < 1:
            raise ValueError(f"{f} must be >= 1, got {getattr(cfg, f)}")


def require_context_noise(noise: tuple[float, float]) -> None:
    """Config validation shared by the DiT trainer and the distiller: (share, max sigma)."""
    share, top = noise
    if not (0.0 <= share <= 1.0 and 0.0 <= top < 1.0):
        raise ValueError(f"context_noise must be (share in [0, 1], max sigma in [0, 1)), got {noise}")


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def save_checkpoint(path: Path, **state) -> None:
    """Atomic save: a run cut off mid-write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def training_state(model: nn.Module, opt, ema: EMA, rng: np.random.Generator, step: int, config) -> dict:
    """Everything a resumed run needs, including the torch RNG (noise draws continue identically)."""
    return {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "ema": ema.state_dict(),
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "step": step,
        "config": config,
    }


def restore_training_state(ck: dict, model: nn.Module, opt, ema: EMA, rng: np.random.Generator) -> int:
    """Load what :func:`training_state` saved; returns the step to resume at."""
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    ema.shadow = ck["ema"]
    rng.bit_generator.state = ck["rng"]
    if "torch_rng" in ck:
        torch.set_rng_state(ck["torch_rng"])
    return int(ck["step"])


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class Progress:
    """tqdm bar with a wall-clock budget: ``for step in Progress(...)`` stops at steps or minutes."""

    def __init__(self, start: int, total: int, minutes: float | None, desc: str) -> None:
        from tqdm import tqdm

        self.step, self.total = start, total
        self.deadline = time.time() + 60 * minutes if minutes else None
        self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True, mininterval=5)

    def __iter__(self) -> Iterator[int]:
        while self.step < self.total:
            if self.deadline and time.time() > self.deadline:
                log.info("time budget reached at step %d", self.step)
                break
            yield self.step
            self.step += 1
            self.bar.update(1)
        self.bar.close()

    def post(self, **kw: float) -> None:
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in kw.items()}, refresh=False)


def load_dit_weights(path: Path) -> dict[str, torch.Tensor]:
    """fp32 DiT weights from a trainer checkpoint (its EMA) or a safetensors file."""
    if not path.exists():
        raise FileNotFoundError(f"DiT weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        ck = load_checkpoint(path)
        if not isinstance(ck, dict) or "ema" not in ck:
            raise ValueError(f"{path} is not a DiT trainer checkpoint (no 'ema' entry)")
        state = ck["ema"]
    return {k: v.float() for k, v in state.items()}


def start_run(model: nn.Module, cfg, ckpt_path: Path, label: str):
    """AdamW (cfg.lr, cfg.weight_decay), EMA (cfg.ema) and the seeded generator of a DiT trainer,
    restored from ckpt_path when a previous run left one; a new run with ``cfg.init_from`` set
    first loads those weights into model. Returns (opt, ema, rng, start step)."""
    if cfg.init_from and not ckpt_path.exists():
        model.load_state_dict(load_dit_weights(Path(cfg.init_from)), strict=True)
        log.info("%s starts from the weights of %s", label, cfg.init_from)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    ema = EMA(model, cfg.ema)
    rng = np.random.default_rng(cfg.seed)
    start = 0
    if (ck := load_checkpoint(ckpt_path)) is not None:
        start = restore_training_state(ck, model, opt, ema, rng)
        log.info("resuming %s at step %d", label, start)
    return opt, ema, rng, start


def fit(
    model: nn.Module,
    opt,
    ema: EMA,
    rng: np.random.Generator,
    start: int,
    cfg,
    step_loss,
    *,
    desc: str,
    ckpt_path: Path,
    ema_path: Path,
    minutes: float | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """The resumable loop of the DiT trainers: cosine learning rate, gradient clipping at 1, EMA,
    checkpoint (everything a resume needs) and EMA safetensors every ``cfg.checkpoint_every`` steps.
    ``step_loss()`` returns (loss, extra numbers for the progress bar). Returns the step reached."""
    from safetensors.torch import save_file

    prog = Progress(start, cfg.steps, minutes, desc)
    avg = None
    for step in prog:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        loss, extra = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        prog.post(loss=avg, **extra)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            config = dataclasses.asdict(cfg)
            save_checkpoint(ckpt_path, **training_state(model, opt, ema, rng, step + 1, config))
            save_file(
                {k: v.contiguous() for k, v in ema.state_dict().items()},
                str(ema_path),
                metadata={"step": str(step + 1), **(metadata or {})},
            )
    return prog.step
