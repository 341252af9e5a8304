"""A dependency-free stand-in text encoder for untrained models and tests.

Each lower-cased word maps to a fixed pseudo-random vector seeded by a stable hash of the word, so a
prompt always encodes to the same [text_len, text_dim] states. It carries no meaning; it exists so
that a randomly initialised DiT can be driven end to end without any text model.
"""

from __future__ import annotations

import hashlib
import re

import torch


class HashTextEncoder:
    def __init__(self, text_dim: int, text_len: int, device: torch.device | str = "cpu") -> None:
        self.text_dim = text_dim
        self.text_len = text_len
        self.device = torch.device(device)

    def _word(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little") % (2**63)
        return torch.randn(self.text_dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for i, p in enumerate(prompts):
            words = re.findall(r"[a-z0-9]+", p.lower())[: self.text_len]
            for j, w in enumerate(words):
                out[i, j] = self._word(w)
        return out.to(self.device)
