"""LongLive LoRA files: read, validate against the DiT's shapes, and turn into weight deltas.

LongLive applies PEFT LoRA (rank 256, alpha 256) to every nn.Linear inside the attention blocks and
ships the adapter as ``lora.pt``: ``{"generator_lora": peft_state}`` or the raw PEFT state dict
(reference/block_causal_models.md §4.3, §6). PEFT names look like
``base_model.model.blocks.0.self_attn.q.lora_A.weight`` (optionally with an adapter name before
``.weight``). Merging gives W' = W + (alpha / r) * B @ A with A [r, in] and B [out, r].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_io import CheckpointError, preview, read_torch_file, strip_wrappers

LORA_TOP_KEY = "generator_lora"
_LORA_KEY = re.compile(r"^(?P<target>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_LEADING = frozenset({"base_model", "model"})


@dataclass(frozen=True)
class LoraPair:
    a: torch.Tensor
    """lora_A [r, in]."""
    b: torch.Tensor
    """lora_B [out, r]."""
    scale: float
    """alpha / r."""

    def merge(self, weight: torch.Tensor) -> torch.Tensor:
        """W + scale * B @ A in fp32 on weight's device (a GPU does the 30-layer product in ms)."""
        dev = weight.device
        return weight.float() + self.scale * (self.b.to(dev).float() @ self.a.to(dev).float())  # [out, in]


def _read(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: '{path}'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # truncated or corrupt header
            raise CheckpointError(f"cannot read LoRA file '{path}': {type(e).__name__}: {e}") from e
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get(LORA_TOP_KEY), Mapping):
        obj = obj[LORA_TOP_KEY]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"LoRA file '{path}' is neither {{'{LORA_TOP_KEY}': state}} nor a PEFT state dict"
        )
    return obj


def read_lora(
    path: str | Path, expected: Mapping[str, tuple[int, ...]], alpha: float | None = None
) -> dict[str, LoraPair]:
    """{Wan weight key: its LoRA pair}; every pair is checked against ``expected`` shapes.

    ``alpha`` None means alpha = r (scale 1, LongLive's rank 256 / alpha 256).
    """
    path = Path(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = []
    for key, value in _read(path).items():
        m = _LORA_KEY.match(strip_wrappers(key, _LEADING))
        if m is None:
            unsupported.append(key)
            continue
        pairs.setdefault(m["target"], {})[m["ab"]] = value
    if unsupported:
        raise CheckpointError(
            f"LoRA file '{path}': {len(unsupported)} keys are not lora_A/lora_B weights: "
            f"{preview(unsupported)}"
        )
    if not pairs:
        raise CheckpointError(f"LoRA file '{path}' holds no lora_A/lora_B pairs")
    problems = []
    deltas = {}
    for target, ab in sorted(pairs.items()):
        weight = f"{target}.weight"
        if set(ab) != {"A", "B"}:
            problems.append(f"{target}: lora_{'A' if 'A' not in ab else 'B'} missing")
        elif weight not in expected:
            problems.append(f"{target}: no such linear layer in the DiT")
        else:
            a, b = ab["A"], ab["B"]
            shape = expected[weight]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != shape:
                problems.append(
                    f"{target}: lora_A {list(a.shape)}, lora_B {list(b.shape)} vs weight {list(shape)}"
                )
                continue
            deltas[weight] = LoraPair(a, b, 1.0 if alpha is None else alpha / a.shape[0])
    if problems:
        raise CheckpointError(
            f"LoRA file '{path}' does not fit the DiT: {len(problems)} problems: {preview(problems)}"
        )
    return deltas
