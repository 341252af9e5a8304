"""The causal Wan2.1 DiT as a pure nn.Module.

Follows reference/block_causal_models.md §1.3 (Wan's forward) and §2 (the causal inference path of
Self-Forcing / CausVid / LongLive): per-frame timesteps with 6-way modulation, q/k RMSNorm across
heads, 3-D RoPE at absolute frame positions, cross-attention to text whose K/V can be computed once
per prompt, FFN, head and unpatchify. Parameter names are those of the original Wan checkpoints, so
real weights load without renaming.

The module allocates no cache and knows no schedule: self-attention hands each layer's new K/V to
an optional ``kv`` object (see ``KVAccess``) that stores them and returns what to attend to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import TickAttention, attend
from .rope import RopeTables, apply_rope

TextKV = list[tuple[torch.Tensor, ...]]
AttnMask = torch.Tensor | TickAttention | None
"""What self-attention takes: None (every key visible), a bool or additive mask [Nq, Nk] as SDPA
takes it (the reference path), or a ``TickAttention`` (models/attention.py)."""


class KVAccess(Protocol):
    """What self-attention asks of a K/V store during one forward."""

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, AttnMask]:
        """Store this forward's k, v [B, H, N, Dh]; return (keys, values, mask: see ``AttnMask``)."""
        ...


class LayerHook(Protocol):
    """What a feature cache (vidcascade.caching) sees of one forward: the patch-embedded tokens,
    then each DiT block, which it runs itself (all rows, some rows, or none)."""

    def embedded(self, h: torch.Tensor) -> None:
        """The patch-embedded tokens h [B, N, D] before the first DiT block."""
        ...

    def layer(
        self,
        index: int,
        block: WanBlock,
        h: torch.Tensor,
        e0: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: tuple[torch.Tensor, ...],
        kv: KVAccess | None,
        attn_mask: AttnMask,
    ) -> torch.Tensor:
        """DiT block ``index`` on h [B, N, D]: returns its output [B, N, D]."""
        ...


class RMSNorm(nn.Module):
    """RMSNorm over the full width (across heads), normalising in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activation dtype (Wan does this)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos, sin] embedding of raw timesteps t [...] (0..1000) -> [..., dim], computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[..., None] * freqs  # [..., half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).float()


@dataclass(frozen=True, eq=False)
class TickTables:
    """Per-tick inputs of the forward that depend only on the tick's shape (``prepare``)."""

    freq: torch.Tensor
    """Sinusoidal timestep embedding [B, F, freq_dim], fp32."""
    cos: torch.Tensor
    """RoPE cos [N, Dh/2], fp32 (tokens in (frame, row, column) order)."""
    sin: torch.Tensor


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, N, D] with per-frame shift/scale [B, F, D] broadcast over each frame's tokens (fp32)."""
    b, n, d = x.shape
    nf = shift.shape[1]
    xf = x.float().view(b, nf, n // nf, d)  # [B, F, T, D]
    out = xf * (1.0 + scale[:, :, None]) + shift[:, :, None]
    return out.view(b, n, d).type_as(x)


def gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate with a per-frame gate [B, F, D]."""
    b, n, d = y.shape
    nf = gate.shape[1]
    yg = (y.float().view(b, nf, n // nf, d) * gate[:, :, None]).view(b, n, d)
    return x + yg.type_as(x)


class _Projections(nn.Module):
    """q, k, v, o projections with q/k RMSNorm across heads: the parameters both attentions share."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)


class SelfAttention(_Projections):
    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        kv: KVAccess | None,
        attn_mask: AttnMask,
    ) -> torch.Tensor:
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, n, h, hd)  # [B, N, H, Dh]
        k = self.norm_k(self.k(x)).view(b, n, h, hd)  # [B, N, H, Dh]
        v = self.v(x).view(b, n, h, hd)  # [B, N, H, Dh]
        q = apply_rope(q, cos, sin).transpose(1, 2)  # [B, H, N, Dh]
        k = apply_rope(k, cos, sin).transpose(1, 2)  # [B, H, N, Dh]
        v = v.transpose(1, 2)  # [B, H, N, Dh]
        if kv is not None:
            k, v, attn_mask = kv.update(layer, k, v)  # [B, H, Nk, Dh]
        out = attend(q, k, v, attn_mask)  # [B, H, N, Dh]
        return self.o(out.transpose(1, 2).reshape(b, n, d))

    def forward_rows(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        kv: KVAccess | None,
        attn_mask: AttnMask,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Attention output of the query tokens ``rows`` [n] only, while every token of x [B, N, D]
        still offers its K/V (a skipping block's K/V is fresh from its current input)."""
        b, _, d = x.shape
        h, hd = self.num_heads, self.head_dim
        xs = x[:, rows]  # [B, n, D]
        q = self.norm_q(self.q(xs)).view(b, -1, h, hd)  # [B, n, H, Dh]
        k = self.norm_k(self.k(x)).view(b, -1, h, hd)  # [B, N, H, Dh]
        v = self.v(x).view(b, -1, h, hd)
        q = apply_rope(q, cos[rows], sin[rows]).transpose(1, 2)  # [B, H, n, Dh]
        k = apply_rope(k, cos, sin).transpose(1, 2)  # [B, H, N, Dh]
        v = v.transpose(1, 2)
        if kv is not None:
            k, v, attn_mask = kv.update(layer, k, v)  # [B, H, Nk, Dh]
        if isinstance(attn_mask, TickAttention):
            attn_mask = attn_mask.rows(rows)
        elif attn_mask is not None:
            attn_mask = attn_mask[rows]  # [n, Nk]
        out = attend(q, k, v, attn_mask)  # [B, H, n, Dh]
        return self.o(out.transpose(1, 2).reshape(b, -1, d))


class CrossAttention(_Projections):
    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the embedded text [B, L, D] -> two [B, H, L, Dh]; computed once per prompt."""
        b, n, _ = context.shape
        k = self.norm_k(self.k(context)).view(b, n, self.num_heads, self.head_dim)
        v = self.v(context).view(b, n, self.num_heads, self.head_dim)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """mask [B, 1, N, Lk] bool (True = attend): which text keys each token sees (per-frame
        prompts, ``CausalWanDiT.forward``'s ``frame_text``); None: all of them."""
        b, n, d = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if k.shape[0] != b:  # one prompt shared by a batch
            k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, N, Dh]
        return self.o(out.transpose(1, 2).reshape(b, n, d))


class WanBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        self.norm1 = FP32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps)
        # Named norm3 in Wan although it runs second: checkpoint names are kept as they are.
        self.norm3 = (
            FP32LayerNorm(d, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps)
        self.norm2 = FP32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d)
        )

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: tuple[torch.Tensor, ...],
        layer: int,
        kv: KVAccess | None,
        attn_mask: AttnMask,
    ) -> torch.Tensor:
        # x [B, N, D]; e0 [B, F, 6, D] fp32
        mod = self.modulation.float().unsqueeze(0) + e0  # [B, F, 6, D]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(2)  # [B, F, D] each
        y = self.self_attn(modulate(self.norm1(x), shift_sa, scale_sa), cos, sin, layer, kv, attn_mask)
        x = gated(x, y, gate_sa)  # [B, N, D]
        x = x + self.cross_attn(self.norm3(x), *text)  # [B, N, D]
        y = self.ffn(modulate(self.norm2(x), shift_ff, scale_ff))
        return gated(x, y, gate_ff)  # [B, N, D]

    def attn_input(self, x: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
        """The AdaLN-modulated input of self-attention [B, N, D] (BWCache's indicator tensor)."""
        mod = self.modulation.float().unsqueeze(0) + e0  # [B, F, 6, D]
        return modulate(self.norm1(x), mod[:, :, 0], mod[:, :, 1])

    def forward_rows(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: tuple[torch.Tensor, ...],
        layer: int,
        kv: KVAccess | None,
        attn_mask: AttnMask,
        frames: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """The block computed for the tokens of ``frames`` [f] (frame indices, ascending) only;
        every other token gets x + residual [B, N, D] (its cached residual). All tokens offer
        their K/V to the computed ones, projected from their current input."""
        b, n, d = x.shape
        nf = e0.shape[1]
        tpf = n // nf
        rows = (frames[:, None] * tpf + torch.arange(tpf, device=x.device)).flatten()  # [f*tpf]
        mod = self.modulation.float().unsqueeze(0) + e0  # [B, F, 6, D]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod[:, frames].unbind(2)  # [B, f, D]
        xm = modulate(self.norm1(x), mod[:, :, 0], mod[:, :, 1])  # [B, N, D] all tokens: K/V for all
        y = self.self_attn.forward_rows(xm, cos, sin, layer, kv, attn_mask, rows)  # [B, f*tpf, D]
        xs = gated(x[:, rows], y, gate_sa)  # [B, f*tpf, D]
        if len(text) == 3:  # per-frame prompts: the computed tokens' rows of the text mask
            text = (text[0], text[1], text[2][:, :, rows])
        xs = xs + self.cross_attn(self.norm3(xs), *text)
        y = self.ffn(modulate(self.norm2(xs), shift_ff, scale_ff))
        out = x + residual  # [B, N, D]
        out[:, rows] = gated(xs, y, gate_ff)
        return out


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm = FP32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(d, cfg.patch_dim_out)
        self.modulation = nn.Parameter(torch.randn(1, 2, d) / d**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # x [B, N, D]; e [B, F, D] fp32 (time_embedding output, not e0)
        mod = self.modulation.float().unsqueeze(0) + e.unsqueeze(2)  # [B, F, 2, D]
        shift, scale = mod.unbind(2)
        return self.head(modulate(self.norm(x), shift, scale))  # [B, N, p*C]


class CausalWanDiT(nn.Module):
    """Wan2.1 text-to-video DiT with the causal inference path.

    ``forward(x, t, context)`` without ``kv`` is the plain full-attention model (optionally with a
    boolean ``attn_mask``, e.g. the block-causal mask). With ``kv`` each layer's K/V go through the
    store, which is how the engine attends to committed and in-flight blocks.
    """

    # Parameters Wan keeps in fp32 when the rest runs in bf16 (reference §1.3, §5.1).
    fp32_modules = ("time_embedding", "time_projection")
    fp32_param_suffixes = ("modulation",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.patch_size[0] != 1:
            raise ValueError(f"only temporal patch size 1 is supported, got patch_size={cfg.patch_size}")
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.rope = RopeTables(cfg.head_dim, cfg.rope_max_frames)
        self.compiled_trunk: Callable[..., torch.Tensor] | None = None
        """``torch.compile`` of ``_trunk`` (weights.loading.compile_dit); None = eager."""

    # -- helpers -------------------------------------------------------------------------------

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.cfg.patch_size
        return (height // ph) * (width // pw)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] -> [B, text_len, D]; zero rows are padded *before* the MLP, as in Wan."""
        b, n, c = context.shape
        if c != self.cfg.text_dim:
            raise ValueError(f"context has width {c}, the model expects text_dim={self.cfg.text_dim}")
        if n > self.cfg.text_len:
            raise ValueError(f"context has {n} tokens, more than text_len={self.cfg.text_len}")
        if n < self.cfg.text_len:
            context = F.pad(context, (0, 0, 0, self.cfg.text_len - n))
        dtype = self.text_embedding[0].weight.dtype
        return self.text_embedding(context.to(dtype))  # [B, text_len, D]

    def text_kv(self, context: torch.Tensor) -> TextKV:
        """Per-layer cross-attention K/V of a prompt: compute once, reuse for every tick."""
        emb = self.embed_text(context)
        return [blk.cross_attn.text_kv(emb) for blk in self.blocks]

    def frame_text_kv(
        self, context: torch.Tensor | None, frame_text: torch.Tensor, tokens_per_frame: int
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer (k, v, mask) of P prompts per sample, context [B, P, L, text_dim], and
        frame_text [B, F]: k, v [B, H, P*L, Dh], mask [B, 1, N, P*L] (token -> its frame's prompt)."""
        if context is None or context.dim() != 4:
            shape = None if context is None else list(context.shape)
            raise ValueError(f"frame_text needs context [B, P, L, text_dim], got {shape}")
        b, p = context.shape[:2]
        if frame_text.shape[0] != b or int(frame_text.max()) >= p or int(frame_text.min()) < 0:
            raise ValueError(
                f"frame_text [B={b}, F] must index the {p} prompts, got {list(frame_text.shape)}"
            )
        n_text = self.cfg.text_len
        tok = frame_text.repeat_interleave(tokens_per_frame, dim=1)  # [B, N]
        key = torch.arange(p, device=tok.device).repeat_interleave(n_text)  # [P*L]
        mask = (tok[:, :, None] == key[None, None, :])[:, None]  # [B, 1, N, P*L]
        out = []
        for k, v in self.text_kv(context.flatten(0, 1)):  # [B*P, H, L, Dh] each
            k = k.unflatten(0, (b, p)).transpose(1, 2).flatten(2, 3)  # [B, H, P*L, Dh]
            v = v.unflatten(0, (b, p)).transpose(1, 2).flatten(2, 3)
            out.append((k, v, mask))
        return out

    def time_embed(self, freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinusoidal timestep embedding freq [B, F, freq_dim] (fp32, ``prepare``) -> e [B, F, D]
        and e0 [B, F, 6, D], both fp32."""
        w = self.time_embedding[0].weight
        e = self.time_embedding(freq.to(w.dtype)).float()  # [B, F, D]
        e0 = self.time_projection(e.to(w.dtype)).float().unflatten(-1, (6, self.cfg.dim))  # [B, F, 6, D]
        return e, e0

    def prepare(self, t: torch.Tensor, frame_pos: torch.Tensor, grid: tuple[int, int]) -> TickTables:
        """What a forward needs that depends only on its timesteps t [B, F] and frame positions
        frame_pos [F] on a token grid (gh, gw): the engine computes it once per tick shape, outside
        the compiled part of the forward."""
        freq = sinusoidal_embedding(t, self.cfg.freq_dim)  # [B, F, freq_dim] fp32 (float64 inside)
        cos, sin = self.rope.cos_sin(frame_pos, *grid)  # [N, Dh/2] each
        return TickTables(freq, cos, sin)

    def to_inference_dtype(self, dtype: torch.dtype) -> CausalWanDiT:
        """Cast to ``dtype`` (e.g. bf16) but keep Wan's fp32 islands: time MLPs and modulations."""
        self.to(dtype)
        for name in self.fp32_modules:
            getattr(self, name).float()
        for name, p in self.named_parameters():
            if name.endswith(self.fp32_param_suffixes):
                p.data = p.data.float()
        return self

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        text_kv: TextKV | None = None,
        frame_pos: torch.Tensor | Sequence[int] | None = None,
        kv: KVAccess | None = None,
        attn_mask: AttnMask = None,
        layer_hook: LayerHook | None = None,
        frame_text: torch.Tensor | None = None,
        tables: TickTables | None = None,
    ) -> torch.Tensor:
        """Flow velocity for latents x [B, C, F, H, W] at timesteps t [B] or [B, F] (0..1000).

        context [B, L, text_dim] (or its precomputed ``text_kv``); with ``frame_text`` [B, F]
        (long), context is [B, P, L, text_dim]: P prompts per sample, and the tokens of frame f
        attend to prompt frame_text[:, f] only (training across a prompt switch); frame_pos [F] absolute frame
        indices for RoPE (default 0..F-1); kv: the K/V store of the engine; attn_mask [N, Nk] bool
        (True = attend) when no store is given; layer_hook: a feature cache that runs the DiT
        blocks itself (vidcascade.caching); tables: ``prepare(t, frame_pos, grid)`` when the caller
        keeps them per tick shape (computed here otherwise). Returns [B, out_dim, F, H, W].
        """
        b, c, nf, hh, ww = x.shape
        if c != self.cfg.in_dim:
            raise ValueError(f"latents have {c} channels, the model expects in_dim={self.cfg.in_dim}")
        _, ph, pw = self.cfg.patch_size
        if hh % ph or ww % pw:
            raise ValueError(f"latent size {hh}x{ww} is not divisible by the patch {ph}x{pw}")
        gh, gw = hh // ph, ww // pw
        if t.dim() == 1:
            t = t[:, None].expand(b, nf)
        if t.shape != (b, nf):
            raise ValueError(f"t must have shape [B] or [B, F] = [{b}, {nf}], got {list(t.shape)}")
        if frame_pos is None:
            frame_pos = torch.arange(nf, device=x.device)
        elif not isinstance(frame_pos, torch.Tensor):
            frame_pos = torch.as_tensor(list(frame_pos), dtype=torch.long, device=x.device)
        if frame_text is not None:
            text_kv = self.frame_text_kv(context, frame_text, gh * gw)
        if text_kv is None:
            if context is None:
                raise ValueError("give either context or text_kv")
            text_kv = self.text_kv(context)

        if tables is None:
            tables = self.prepare(t, frame_pos.to(x.device), (gh, gw))
        elif tables.freq.shape[:2] != (b, nf) or tables.cos.shape[0] != nf * gh * gw:
            raise ValueError(
                f"tables were prepared for {list(tables.freq.shape[:2])} timesteps and "
                f"{tables.cos.shape[0]} tokens, the latents need [{b}, {nf}] and {nf * gh * gw}"
            )
        trunk = self._trunk if layer_hook is not None or self.compiled_trunk is None else self.compiled_trunk
        return trunk(x, tables, text_kv, kv, attn_mask, layer_hook)

    def _trunk(
        self,
        x: torch.Tensor,
        tables: TickTables,
        text_kv: TextKV,
        kv: KVAccess | None,
        attn_mask: AttnMask,
        layer_hook: LayerHook | None,
    ) -> torch.Tensor:
        """Everything of the forward whose shapes are fixed per tick shape (what --compile compiles)."""
        nf = x.shape[2]
        _, ph, pw = self.cfg.patch_size
        gh, gw = x.shape[3] // ph, x.shape[4] // pw
        h = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # [B, D, F, gh, gw]
        h = h.flatten(2).transpose(1, 2)  # [B, N, D], N = F*gh*gw in (f, h, w) order
        e, e0 = self.time_embed(tables.freq)  # [B, F, D], [B, F, 6, D]
        cos, sin = tables.cos, tables.sin  # [N, Dh/2]
        if layer_hook is not None:
            layer_hook.embedded(h)
        for i, blk in enumerate(self.blocks):
            if layer_hook is None:
                h = blk(h, e0, cos, sin, text_kv[i], i, kv, attn_mask)  # [B, N, D]
            else:
                h = layer_hook.layer(i, blk, h, e0, cos, sin, text_kv[i], kv, attn_mask)
        out = self.head(h, e)  # [B, N, ph*pw*C]
        return self.unpatchify(out, nf, gh, gw)

    def unpatchify(self, out: torch.Tensor, nf: int, gh: int, gw: int) -> torch.Tensor:
        b = out.shape[0]
        _, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        out = out.view(b, nf, gh, gw, 1, ph, pw, c)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F, 1, gh, ph, gw, pw]
        return out.reshape(b, c, nf, gh * ph, gw * pw)


def init_weights(model: CausalWanDiT, seed: int = 0) -> CausalWanDiT:
    """Deterministic random init (Xavier linears, small modulations) for tests and untrained models."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if p.dim() >= 2 and "modulation" not in name:
                fan_in, fan_out = p.shape[1] * math.prod(p.shape[2:]), p.shape[0]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
            elif "modulation" in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            elif name.endswith("bias"):
                p.zero_()
            else:  # norm weights
                p.fill_(1.0)
    return model
