"""Timestep and sampler math as pure functions (Self-Forcing's FlowMatchScheduler conventions).

Reference: reference/block_causal_models.md §3. The forward process is rectified flow,
x_t = (1 - sigma) x0 + sigma eps, and the model predicts the velocity v = eps - x0, so
x0 = x_t - sigma v.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SamplingConfig


def sigma_table(shift: float, num_train_timesteps: int = 1000) -> list[float]:
    """Shifted sigmas of the training table, from 1 down to 1/num_train_timesteps (no trailing 0).

    s_i = linspace(1, 0, n + 1)[:-1];  sigma_i = shift s_i / (1 + (shift - 1) s_i).
    """
    n = num_train_timesteps
    out = []
    for i in range(n):
        s = 1.0 - i / n
        out.append(shift * s / (1.0 + (shift - 1.0) * s))
    return out


def warp_timesteps(steps: tuple[float, ...], shift: float, num_train_timesteps: int = 1000) -> list[float]:
    """Self-Forcing's warp: each listed t becomes table[n - t] of the shifted table with 0 appended."""
    n = num_train_timesteps
    table = [n * s for s in sigma_table(shift, n)] + [0.0]
    out = []
    for t in steps:
        idx = n - int(round(t))
        if not 0 <= idx <= n:
            raise ValueError(f"cannot warp timestep {t}: expected 0 <= t <= {n}")
        out.append(table[idx])
    return out


def sigma_for_timestep(t: float, shift: float, num_train_timesteps: int = 1000) -> float:
    """Sigma by nearest-timestep lookup in the shifted table (as the reference scheduler does)."""
    n = num_train_timesteps
    if t <= 0:
        return 0.0
    table = sigma_table(shift, n)
    best = min(range(n), key=lambda i: abs(n * table[i] - t))
    return table[best]


@dataclass(frozen=True)
class Schedule:
    """The S denoising steps of one block, resolved to the values fed to the model.

    timesteps[k] is what stage k feeds the model; sigmas[k] its noise level; sigmas has one
    more entry, 0.0, so that sigmas[k + 1] is always the level stage k moves to.
    cache_timestep is the cache step's timestep (context_noise).
    """

    timesteps: tuple[float, ...]
    sigmas: tuple[float, ...]
    cache_timestep: float
    sampler: str

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def make_schedule(cfg: SamplingConfig) -> Schedule:
    n = cfg.num_train_timesteps
    ts = warp_timesteps(cfg.steps, cfg.shift, n) if cfg.warp else list(cfg.steps)
    sig = [sigma_for_timestep(t, cfg.shift, n) for t in ts]
    if cfg.warp:
        # Warped steps are exact table entries: their sigma is t / n without lookup error.
        sig = [t / n for t in ts]
    return Schedule(tuple(ts), tuple(sig) + (0.0,), float(cfg.context_noise), cfg.sampler)


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x0 = x_t - sigma v (sigma broadcast, e.g. per frame [1, 1, F, 1, 1])."""
    return x_t - sigma * v


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma_next: torch.Tensor | float) -> torch.Tensor:
    """Forward process to sigma_next with fresh noise: (1 - sigma) x0 + sigma eps."""
    return (1.0 - sigma_next) * x0 + sigma_next * noise


def euler_step(
    x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float
) -> torch.Tensor:
    """Deterministic flow-ODE step: x_{next} = x_t + (sigma_next - sigma) v."""
    return x_t + (sigma_next - sigma) * v
