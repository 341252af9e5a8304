"""Latent preview decoder: a fixed linear map of latent channels to RGB, upsampled by nearest.

Used where no VAE is available (the untrained stand-in model, or a checkpoint without a VAE): it
shows structure and motion of the latents, not the model's real pixels.
"""

from __future__ import annotations

import numpy as np
import torch


class PreviewDecoder:
    def __init__(self, latent_channels: int, upscale: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(3, latent_channels, generator=g) / latent_channels**0.5
        self.upscale = upscale
        self.frames_per_latent = 1

    def reset(self) -> None:
        """Stateless; present so that it can stand in for a streaming decoder."""

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """latents [B, C, F, h, w] -> uint8 frames [B, F, h*up, w*up, 3]."""
        z = latents.detach().float().cpu()
        rgb = torch.einsum("oc,bcfhw->bfhwo", self.proj, z)  # [B, F, h, w, 3]
        rgb = rgb.repeat_interleave(self.upscale, dim=2).repeat_interleave(self.upscale, dim=3)
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
