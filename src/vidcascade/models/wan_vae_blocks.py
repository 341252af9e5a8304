"""Building blocks of the Wan2.1 video VAE, with explicit causal state.

Module and parameter names follow the original ``Wan-Video/Wan2.1:wan/modules/vae.py`` exactly
(``residual.{0,2,3,6}``, ``shortcut``, ``resample.1``, ``time_conv``, ``gamma``, ``to_qkv``, ``proj``),
so original checkpoints load with ``load_state_dict(strict=True)`` and no renaming.

Causality in time: every temporal convolution sees only the current and earlier frames. Video is processed
in chunks, and the frames a layer needs from earlier chunks travel in a :class:`CausalState` that is passed
in and returned. The modules hold no per-stream state, so one module can serve many streams at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The largest temporal kernel is 3 with causal padding 2, so a layer needs at most 2 frames of its past.
CACHE_T = 2

ResampleMode = Literal["upsample2d", "upsample3d", "downsample2d", "downsample3d"]


@dataclass(frozen=True)
class CausalState:
    """Temporal context of one stream through an encoder or a decoder, one slot per temporal layer.

    ::

        slots[i] is None            layer i has not seen a chunk yet (start of the stream)
        slots[i]: [B, C, t, H, W]   the last t <= 2 input frames of layer i (t may be 0)

    Slots are ordered by execution. ``chunks`` counts the passes already run; a fresh state has no slots
    and ``chunks == 0``. ``kind`` names the network that wrote it ("encoder" or "decoder"; "" when
    fresh). States are immutable: a pass reads one state and returns a new one, so a state can be kept
    to re-run a chunk or to fork a stream.
    """

    slots: tuple[Tensor | None, ...] = ()
    chunks: int = 0
    kind: str = ""

    @property
    def is_fresh(self) -> bool:
        return self.chunks == 0


class StateCursor:
    """Walks a :class:`CausalState` during one pass: each temporal layer reads its slot, then writes it."""

    def __init__(self, state: CausalState, kind: str) -> None:
        if state.kind not in ("", kind):
            raise ValueError(f"a state written by the {state.kind} cannot drive the {kind}")
        self._kind = kind
        self._prev = state.slots
        self._next: list[Tensor | None] = []
        self._chunks = state.chunks
        self._pending = False

    def read(self) -> Tensor | None:
        if self._pending:
            raise RuntimeError("StateCursor.read() called twice without write()")
        self._pending = True
        i = len(self._next)
        return self._prev[i] if i < len(self._prev) else None

    def write(self, context: Tensor | None) -> None:
        if not self._pending:
            raise RuntimeError("StateCursor.write() called without read()")
        self._pending = False
        self._next.append(context)

    def finish(self) -> CausalState:
        if self._pending or (self._prev and len(self._prev) != len(self._next)):
            raise RuntimeError(
                f"state has {len(self._prev)} slots but the pass used {len(self._next)}: "
                "was it made by another model?"
            )
        return CausalState(tuple(self._next), self._chunks + 1, self._kind)


def _tail(prev: Tensor | None, x: Tensor, keep: int) -> Tensor:
    """The last ``keep`` frames of cat(prev, x) along time, as a new tensor (a view would pin ``x``)."""
    if prev is None or x.shape[2] >= keep:
        return x[:, :, -keep:].clone()
    return torch.cat([prev[:, :, x.shape[2] - keep :], x], dim=2)


class CausalConv3d(nn.Conv3d):
    """Conv3d whose temporal padding is all on the past side, optionally filled with real past frames."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_pad = 2 * pt
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: [B, C, T, H, W]; context: [B, C, t, H, W], the t <= time_pad frames just before x."""
        front = self.time_pad
        if context is not None and front > 0 and context.shape[2] > 0:
            x = torch.cat([context, x], dim=2)  # [B, C, t + T, H, W]
            front -= context.shape[2]
        x = F.pad(x, (*self.space_pad, front, 0))
        if self.stride[0] != 1 or self.kernel_size[0] == 1 or x.device.type != "cpu":
            return super().forward(x)
        return self._taps_as_channels(x)

    def _taps_as_channels(self, x: Tensor) -> Tensor:
        """The same convolution as one conv2d over all frames, with the time taps stacked as channels.

        PyTorch's CPU conv3d falls back to a slow reference kernel for these small layers; conv2d takes
        the oneDNN path and is several times faster. Same sums, different order: equal up to rounding.
        """
        b, c, tp, h, w = x.shape  # tp = T + kt - 1 (already padded)
        kt = self.kernel_size[0]
        t = tp - kt + 1
        taps = torch.cat([x[:, :, i : i + t] for i in range(kt)], dim=1)  # [B, kt*C, T, H, W]
        taps = taps.transpose(1, 2).reshape(b * t, kt * c, h, w)  # [B*T, kt*C, H, W]
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, kt * c, *self.kernel_size[1:])
        y = F.conv2d(taps, weight, self.bias, stride=self.stride[1:])  # [B*T, Cout, H', W']
        return y.view(b, t, *y.shape[1:]).transpose(1, 2)  # [B, Cout, T, H', W']


def cached_conv(conv: CausalConv3d, x: Tensor, cursor: StateCursor) -> Tensor:
    """Apply ``conv`` to a chunk, with the past frames from the cursor, and record this chunk's tail."""
    prev = cursor.read()
    cursor.write(_tail(prev, x, CACHE_T))
    return conv(x, prev)


class RMSNorm(nn.Module):
    """Normalises over channels (dim 1) to unit RMS, then scales by ``gamma``; no bias (as in Wan)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        # images: input [N, C, H, W], else video [B, C, T, H, W]; gamma's shape is the checkpoint's.
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        # Half-precision sums of squares over hundreds of channels lose too much; normalise in fp32.
        xf = x.float()
        # x / max(||x||, 1e-12) over channels, as F.normalize, without its slow strided norm kernel.
        inv = torch.rsqrt(xf.square().sum(dim=1, keepdim=True).clamp_min(1e-24))
        return (xf * inv).to(x.dtype) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """norm, SiLU, causal 3x3x3 conv, norm, SiLU, dropout, causal 3x3x3 conv; plus a 1x1x1 shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Index layout residual.{0,2,3,6} is the checkpoint's; SiLU and Dropout hold no parameters.
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut: nn.Module = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cursor: StateCursor) -> Tensor:
        r = self.residual
        h = self.shortcut(x)  # [B, C_out, T, H, W]
        x = cached_conv(r[2], r[1](r[0](x)), cursor)  # [B, C_out, T, H, W]
        x = cached_conv(r[6], r[5](r[4](r[3](x))), cursor)  # [B, C_out, T, H, W]
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (no mixing across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        identity = x
        x = x.transpose(1, 2).reshape(b * t, c, h, w)  # [BT, C, H, W]
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, 1, 3 * c, h * w)  # [BT, 1, 3C, HW]
        q, k, v = qkv.transpose(2, 3).contiguous().chunk(3, dim=-1)  # each [BT, 1, HW, C]
        x = F.scaled_dot_product_attention(q, k, v)  # [BT, 1, HW, C]
        x = x.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)  # [BT, C, H, W]
        x = self.proj(x).reshape(b, t, c, h, w).transpose(1, 2)  # [B, C, T, H, W]
        return x + identity


class _Upsample2x(nn.Module):
    """Nearest 2x spatial upsampling in fp32 (Wan's fix: nearest lacks bf16 kernels on some devices)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    """2x spatial up/downsampling, optionally with 2x temporal up/downsampling by a causal ``time_conv``.

    Upsampling also halves the channels (Wan's layout): ``upsample*`` maps C -> C // 2.
    """

    def __init__(self, dim: int, mode: ResampleMode) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # Pad right and bottom only so a stride-2 3x3 conv maps H -> H / 2 exactly.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            # Produces two frames per input frame as two channel halves.
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cursor: StateCursor) -> Tensor:
        b, c, t, h, w = x.shape
        if self.mode == "upsample3d":
            x = self._time_up(x, cursor)  # [B, C, 2T, H, W], or [B, C, T, H, W] on the first chunk
        t = x.shape[2]
        x = x.transpose(1, 2).reshape(b * t, c, h, w)  # [BT, C, H, W]
        x = self.resample(x)  # [BT, C', 2H, 2W] up or [BT, C, H/2, W/2] down
        x = x.reshape(b, t, *x.shape[1:]).transpose(1, 2)  # [B, C', T, H', W']
        if self.mode == "downsample3d":
            x = self._time_down(x, cursor)
        return x

    def _time_up(self, x: Tensor, cursor: StateCursor) -> Tensor:
        prev = cursor.read()
        if prev is None:
            # First chunk of a stream (Wan's "Rep" marker): no temporal upsampling, so latent frame 0
            # decodes to one frame. The next chunk then sees zeros as its past, hence an empty context.
            cursor.write(x[:, :, :0].clone())
            return x
        cursor.write(_tail(prev, x, CACHE_T))
        b, c, t, h, w = x.shape
        x = self.time_conv(x, prev)  # [B, 2C, T, H, W]
        # Channel half k of input frame i becomes output frame 2i + k.
        return x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _time_down(self, x: Tensor, cursor: StateCursor) -> Tensor:
        prev = cursor.read()
        cursor.write(x[:, :, -1:].clone())
        if prev is None:
            # First chunk (one frame): kept as is, so frame 0 maps to latent frame 0.
            return x
        # Later chunks have an even frame count; with the previous last frame in front, a stride-2 kernel-3
        # conv maps 2n frames to n, and the windows continue across chunk borders.
        return self.time_conv(torch.cat([prev, x], dim=2))  # [B, C, T/2, H, W]


def _middle(dim: int, dropout: float) -> nn.Sequential:
    # Indices 0, 1, 2 are the checkpoint's middle.{0,1,2}.
    return nn.Sequential(
        ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout)
    )


def _run_middle(middle: nn.Sequential, x: Tensor, cursor: StateCursor) -> Tensor:
    x = middle[0](x, cursor)
    x = middle[1](x)
    return middle[2](x, cursor)


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


def _run_head(head: nn.Sequential, x: Tensor, cursor: StateCursor) -> Tensor:
    return cached_conv(head[2], head[1](head[0](x)), cursor)


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> moments [B, out_dim, T', H/s, W/s]; one causal chunk per call."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(d_in, d_out, dropout))
                d_in = d_out
            if i < len(dim_mult) - 1:
                layers.append(Resample(d_out, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1], dropout)
        self.head = _head(dims[-1], out_dim)

    def forward(self, x: Tensor, cursor: StateCursor) -> Tensor:
        x = cached_conv(self.conv1, x, cursor)  # [B, dim, T, H, W]
        for layer in self.downsamples:
            x = layer(x, cursor)
        x = _run_middle(self.middle, x, cursor)  # [B, dim * dim_mult[-1], T', h, w]
        return _run_head(self.head, x, cursor)  # [B, out_dim, T', h, w]


class Decoder3d(nn.Module):
    """Latents [B, z, F, h, w] -> video [B, 3, T, h*s, w*s]; one causal chunk per call."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_upsample: Sequence[bool],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], dropout)
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                d_in //= 2  # the previous level's upsampler halved the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(d_in, d_out, dropout))
                d_in = d_out
            if i < len(dim_mult) - 1:
                layers.append(Resample(d_out, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3)

    def forward(self, x: Tensor, cursor: StateCursor) -> Tensor:
        x = cached_conv(self.conv1, x, cursor)  # [B, dim * dim_mult[-1], F, h, w]
        x = _run_middle(self.middle, x, cursor)
        for layer in self.upsamples:
            x = layer(x, cursor)  # time and space grow at each Resample
        return _run_head(self.head, x, cursor)  # [B, 3, T, H, W]
