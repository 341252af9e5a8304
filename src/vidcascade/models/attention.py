"""Self-attention of a tick in a form that keeps SDPA on its fast path and stays one type.

A tick's attention has at most two parts: which keys a query may see (the causal cascade hides
younger in-flight blocks; otherwise every key is visible) and the sink bias (the logits of the
sink's keys raised by ``bias``). ``TickAttention`` carries both:

- ``mask``: an additive float mask [Nq, Nk] (0 = visible, -inf = hidden) or None when every key is
  visible, so that a mask, when there is one, is always the same dtype (a compiled forward does
  not recompile when the bias starts);
- the sink bias, either folded into ``mask`` (the dense reference) or kept apart as a key range and
  a value (``split``), applied exactly through log-sum-exp:

      out = (o_all + a * o_sink) / (1 + a),   a = (e^bias - 1) * exp(lse_sink - lse_all)

  where o_all, lse_all are the attention over every key without the bias and o_sink, lse_sink the
  attention over the sink keys alone. Why: with w_j = exp(logit_j) and Z_P = sum over P of w_j, the
  biased softmax weighs the sink keys e^bias * w_j, so its output is
  (Z_all o_all + (e^bias - 1) Z_sink o_sink) / (Z_all + (e^bias - 1) Z_sink); divide by Z_all.
  No dense mask is built, so P0 and the bidirectional cascade run mask-free with the sink bias
  on (on CUDA: the flash kernel in fp16/bf16).

Only ``bias > 0`` is split (then a > 0 and nothing cancels); a negative bias stays in the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, eq=False)
class TickAttention:
    """Attention structure of one tick (see the module docstring); shapes are fixed per tick shape."""

    mask: torch.Tensor | None
    """Additive float mask [Nq, Nk] (0 / -inf, plus the bias when not split), or None."""
    sink_start: int = 0
    sink_stop: int = 0
    """Key columns whose logits ``bias`` raises through log-sum-exp (empty: no split bias)."""
    bias: float = 0.0

    def __post_init__(self) -> None:
        if self.mask is not None and self.mask.dtype == torch.bool:
            raise ValueError("TickAttention.mask must be an additive float mask, got a bool mask")
        if self.sink_stop > self.sink_start and not self.bias > 0:
            raise ValueError(f"a split sink bias must be > 0, got {self.bias}")

    @property
    def split(self) -> bool:
        return self.sink_stop > self.sink_start

    def rows(self, rows: torch.Tensor) -> TickAttention:
        """The same attention for the query rows ``rows`` [n] only."""
        mask = self.mask[rows] if self.mask is not None else None
        return TickAttention(mask, self.sink_start, self.sink_stop, self.bias)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (True = attend) -> additive float mask: 0 where True, -inf where False."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def sdpa_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA output [B, H, Nq, Dh] and the log-sum-exp of its scaled logits [B, H, Nq] (fp32).

    CPU: the fused kernel returns both. CUDA: flash (fp16/bf16, no mask) or memory-efficient
    attention with its log-sum-exp (padded along the queries on some versions: sliced)."""
    nq = q.shape[-2]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)
        return out, lse.float()
    if q.device.type == "cuda":
        if mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)
            return res[0], res[1][..., :nq].float()
        if mask is not None:
            mask = mask.to(q.dtype).expand(q.shape[0], q.shape[1], nq, k.shape[-2])
        res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, mask, True)
        return res[0], res[1][..., :nq].float()
    # Elsewhere: the plain formula (a reference, not a fast path).
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, Nq, Nk]
    if mask is not None:
        logits = logits + mask.float()
    lse = torch.logsumexp(logits, dim=-1)
    return (torch.softmax(logits, dim=-1) @ v.float()).to(q.dtype), lse


def _split_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: TickAttention) -> torch.Tensor:
    out, lse = sdpa_lse(q, k, v, attn.mask)  # [B, H, Nq, Dh], [B, H, Nq]: unbiased, every key
    # The sink part is small (sink frames x tokens per frame keys): computed directly, in fp32.
    ks = k[:, :, attn.sink_start : attn.sink_stop].float()  # [B, H, Ns, Dh]
    vs = v[:, :, attn.sink_start : attn.sink_stop].float()
    logits = (q.float() @ ks.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, Nq, Ns]
    lse_s = torch.logsumexp(logits, dim=-1)  # [B, H, Nq]
    out_s = torch.softmax(logits, dim=-1) @ vs  # [B, H, Nq, Dh]
    # lse_s <= lse (the sink is a subset of every key), so a <= e^bias - 1: no overflow.
    a = (math.exp(attn.bias) - 1.0) * torch.exp(lse_s - lse)[..., None]  # [B, H, Nq, 1]
    return ((out.float() + a * out_s) / (1.0 + a)).to(q.dtype)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | TickAttention | None
) -> torch.Tensor:
    """Scaled dot-product attention of q [B, H, Nq, Dh] over k, v [B, H, Nk, Dh] -> [B, H, Nq, Dh].

    ``mask``: None (every key visible), a tensor (bool or additive, as SDPA takes it; the reference
    path) or a ``TickAttention``."""
    if not isinstance(mask, TickAttention):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mask.split:
        return _split_bias(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.mask)
