"""Key names of the Wan DiT: original Wan (ours) <-> diffusers' WanTransformer3DModel.

Table: reference/block_causal_models.md §5.1. Conversion is by exact token rules on dotted names,
so that an unknown key is reported instead of silently renamed.
"""

from __future__ import annotations

import re

_TOP_TO_DIFFUSERS = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "patch_embedding": "patch_embedding",
}
_BLOCK_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",  # the affine cross-attention LayerNorm; diffusers names norms by call order
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_TOP_RE = re.compile(r"^(.+)\.(weight|bias)$")


def wan_to_diffusers_key(key: str) -> str:
    if key == "head.modulation":
        return "scale_shift_table"
    m = re.match(r"^blocks\.(\d+)\.modulation$", key)
    if m:
        return f"blocks.{m.group(1)}.scale_shift_table"
    m = _BLOCK_RE.match(key)
    if m and m.group(2) in _BLOCK_TO_DIFFUSERS:
        return f"blocks.{m.group(1)}.{_BLOCK_TO_DIFFUSERS[m.group(2)]}.{m.group(3)}"
    m = _TOP_RE.match(key)
    if m and m.group(1) in _TOP_TO_DIFFUSERS:
        return f"{_TOP_TO_DIFFUSERS[m.group(1)]}.{m.group(2)}"
    raise KeyError(f"no diffusers name for Wan key {key!r}")


_TOP_FROM = {v: k for k, v in _TOP_TO_DIFFUSERS.items()}
_BLOCK_FROM = {v: k for k, v in _BLOCK_TO_DIFFUSERS.items()}


def diffusers_to_wan_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    m = re.match(r"^blocks\.(\d+)\.scale_shift_table$", key)
    if m:
        return f"blocks.{m.group(1)}.modulation"
    m = _BLOCK_RE.match(key)
    if m and m.group(2) in _BLOCK_FROM:
        return f"blocks.{m.group(1)}.{_BLOCK_FROM[m.group(2)]}.{m.group(3)}"
    m = _TOP_RE.match(key)
    if m and m.group(1) in _TOP_FROM:
        return f"{_TOP_FROM[m.group(1)]}.{m.group(2)}"
    raise KeyError(f"no Wan name for diffusers key {key!r}")


def is_diffusers_dit_state(keys: list[str] | set[str]) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys)
