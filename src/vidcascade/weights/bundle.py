"""A runnable model: DiT + text encoder + decoder + the sampling/cache settings it was made for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..config import CacheConfig, FeatureCacheConfig, SamplingConfig
from ..models.wan_dit import CausalWanDiT


class TextEncoderLike(Protocol):
    text_dim: int
    text_len: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


class FrameDecoder(Protocol):
    """Streaming latent -> RGB decoder: blocks are fed in order; ``reset`` starts a new video."""

    def reset(self) -> None: ...

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """latents [B, C, F, h, w] -> uint8 frames [B, T, H, W, 3]."""
        ...


@dataclass
class Bundle:
    name: str
    dit: CausalWanDiT
    text_encoder: TextEncoderLike
    make_decoder: Callable[[], FrameDecoder]
    sampling: SamplingConfig
    cache: CacheConfig
    latent_hw: tuple[int, int]
    """Latent frame height and width the model generates."""
    fps: float
    """Playback rate of the decoded video."""
    trained: bool
    description: str
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    """The model's default feature cache (policy "none": off); the --cache flags override it."""

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embedding.weight.device
