"""The Wan2.1 video VAE in plain PyTorch, with explicit causal state for chunked encode and decode.

References: Wan-Video/Wan2.1 ``wan/modules/vae.py`` (architecture, chunk schedule, latent statistics).

Compression: ``temporal_stride`` = 2 ** (number of True in temporal_downsample), ``spatial_stride`` =
2 ** (len(dim_mult) - 1). A video of 1 + k * temporal_stride frames maps to 1 + k latent frames: frame 0
alone to latent 0, then each group of ``temporal_stride`` frames to one latent frame.

Latent scaling is explicit: :meth:`WanVAE.encode` returns the raw posterior mean ``mu`` and
:meth:`WanVAE.decode` takes raw latents. Diffusion models work on ``normalize(mu) = (mu - mean) / std``;
call :meth:`WanVAE.denormalize` (``z * std + mean``) before decoding their output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vidcascade.models.wan_vae_blocks import CausalConv3d, CausalState, Decoder3d, Encoder3d, StateCursor

logger = logging.getLogger(__name__)

# Per-channel statistics of the Wan2.1 latent space (identical in Wan, the causal repos and diffusers).
WAN21_LATENTS_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class WanVAEConfig:
    """Geometry of a Wan2.1-style causal video VAE."""

    base_dim: int = 96
    """Channels of the first encoder level (and of the last decoder level)."""
    z_dim: int = 16
    """Latent channels."""
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Channel multiplier per level; len(dim_mult) - 1 levels halve height and width."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level (the decoder uses one more)."""
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    """Per downsampling level, whether it also halves time (decoder: reversed). May be all False."""
    dropout: float = 0.0
    """Dropout inside residual blocks (training only)."""
    latents_mean: tuple[float, ...] | None = None
    """Per-channel latent mean; default Wan2.1's for z_dim 16, zeros otherwise."""
    latents_std: tuple[float, ...] | None = None
    """Per-channel latent std; default Wan2.1's for z_dim 16, ones otherwise."""

    def __post_init__(self) -> None:
        for name in ("base_dim", "z_dim", "num_res_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WanVAEConfig.{name} must be a positive int, got {value!r}")
        # Accept lists (from JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "dim_mult", tuple(self.dim_mult))
        object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
        if not self.dim_mult or any(not isinstance(m, int) or m < 1 for m in self.dim_mult):
            raise ValueError(f"WanVAEConfig.dim_mult must be positive ints, got {self.dim_mult!r}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig.temporal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
                f"entries, got {self.temporal_downsample!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"WanVAEConfig.dropout must be in [0, 1), got {self.dropout!r}")
        wan = self.z_dim == len(WAN21_LATENTS_MEAN)
        for name, wan_default, fill in (
            ("latents_mean", WAN21_LATENTS_MEAN, 0.0),
            ("latents_std", WAN21_LATENTS_STD, 1.0),
        ):
            value = getattr(self, name)
            if value is None:
                value = wan_default if wan else (fill,) * self.z_dim
            value = tuple(map(float, value))
            if len(value) != self.z_dim:
                raise ValueError(f"WanVAEConfig.{name} has {len(value)} values but z_dim is {self.z_dim}")
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.latents_std):  # type: ignore[union-attr]
            raise ValueError(f"WanVAEConfig.latents_std must be positive, got {self.latents_std!r}")

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


WAN_VAE_PRESETS: dict[str, WanVAEConfig] = {
    # The released Wan2.1_VAE.pth (about 127M parameters).
    "wan2.1": WanVAEConfig(),
    # About 0.2M parameters, for tests: the same structure and 4x8x8 compression.
    "tiny": WanVAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1),
}


class WanVAE(nn.Module):
    """Wan2.1 causal video VAE; parameter names match ``Wan2.1_VAE.pth``.

    Chunked causal processing follows Wan: encode takes frame 0 alone, then ``temporal_stride`` frames per
    chunk; decode takes latent frames one at a time (or ``frames_per_pass`` at a time after the first),
    and latent frame 0 decodes to one frame, later ones to ``temporal_stride`` frames. The ``*_step``
    methods run one chunk with an explicit :class:`CausalState`, so several streams can share one module.
    """

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder3d(
            c.base_dim, 2 * c.z_dim, c.dim_mult, c.num_res_blocks, c.temporal_downsample, c.dropout
        )
        self.conv1 = CausalConv3d(2 * c.z_dim, 2 * c.z_dim, 1)  # moments (mu, logvar)
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)  # applied to latents before the decoder
        self.decoder = Decoder3d(
            c.base_dim, c.z_dim, c.dim_mult, c.num_res_blocks, c.temporal_downsample[::-1], c.dropout
        )
        # Latent statistics as non-persistent buffers: they follow .to(device) (building a tensor from the
        # config on every call would be a host-to-device copy on the hot path) but stay out of the state
        # dict, which must equal the original checkpoint. device="cpu" keeps them real under a meta context.
        stats_shape = (1, c.z_dim, 1, 1, 1)
        mean = torch.tensor(c.latents_mean or (), dtype=torch.float32, device="cpu").view(stats_shape)
        std = torch.tensor(c.latents_std or (), dtype=torch.float32, device="cpu").view(stats_shape)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_std", std, persistent=False)

    @property
    def temporal_stride(self) -> int:
        return self.config.temporal_stride

    @property
    def spatial_stride(self) -> int:
        return self.config.spatial_stride

    def num_latent_frames(self, num_frames: int) -> int:
        if num_frames < 1 or (num_frames - 1) % self.temporal_stride:
            raise ValueError(f"a video needs 1 + k * {self.temporal_stride} frames, got {num_frames}")
        return 1 + (num_frames - 1) // self.temporal_stride

    def num_frames(self, num_latent_frames: int) -> int:
        return 1 + (num_latent_frames - 1) * self.temporal_stride if num_latent_frames > 0 else 0

    # ----- latent scaling -------------------------------------------------------------------------------

    def normalize(self, mu: Tensor) -> Tensor:
        """Raw latents [B, z, F, h, w] -> the diffusion model's space: (mu - mean) / std."""
        return (mu - self.latents_mean.to(mu.dtype)) / self.latents_std.to(mu.dtype)

    def denormalize(self, z: Tensor) -> Tensor:
        """The diffusion model's latents [B, z, F, h, w] -> raw latents for :meth:`decode`: z * std + mean."""
        return z * self.latents_std.to(z.dtype) + self.latents_mean.to(z.dtype)

    # ----- encode -------------------------------------------------------------------------------------

    def encode_step(self, video: Tensor, state: CausalState) -> tuple[Tensor, CausalState]:
        """One causal chunk: video [B, 3, T, H, W] -> moments [B, 2z, T', h, w] and the next state.

        T' = 1 for a stream's first chunk (when temporal_stride > 1), else T / temporal_stride.

        A fresh stream starts with exactly one frame (unless temporal_stride is 1); later chunks need a
        multiple of ``temporal_stride`` frames so the temporal downsampling windows line up.
        """
        self._check_video(video)
        t, s = video.shape[2], self.temporal_stride
        if s > 1 and (t != 1 if state.is_fresh else t % s):
            need = "exactly 1 frame" if state.is_fresh else f"a multiple of {s} frames"
            raise ValueError(f"encode chunk {state.chunks} needs {need}, got {t}")
        cursor = StateCursor(state, "encoder")
        x = self.encoder(video, cursor)  # [B, 2z, T', h, w]
        return self.conv1(x), cursor.finish()

    def encode_moments(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Video [B, 3, 1 + k*stride, H, W] in [-1, 1] -> (mu, logvar), each [B, z, 1 + k, h, w]."""
        self.num_latent_frames(video.shape[2])
        state = CausalState()
        out: list[Tensor] = []
        start = 0
        while start < video.shape[2]:
            end = 1 if start == 0 else start + self.temporal_stride
            moments, state = self.encode_step(video[:, :, start:end], state)
            out.append(moments)
            start = end
        mu, logvar = torch.cat(out, dim=2).chunk(2, dim=1)
        return mu, logvar

    def encode(self, video: Tensor) -> Tensor:
        """Video [B, 3, 1 + k*stride, H, W] in [-1, 1] -> raw posterior mean [B, z, 1 + k, H/s, W/s]."""
        return self.encode_moments(video)[0]

    # ----- decode -------------------------------------------------------------------------------------

    def decode_step(
        self, z: Tensor, state: CausalState, frames_per_pass: int = 1
    ) -> tuple[Tensor, CausalState]:
        """Raw latents [B, z, F, h, w] -> video [B, 3, T, H, W] in [-1, 1] and the next state.

        T = F * stride, minus (stride - 1) when the stream starts here. The first latent frame of a
        stream always runs alone (its temporal upsamplers are skipped); the rest run ``frames_per_pass``
        at a time, which gives the same result up to float rounding and trades memory for speed.
        """
        self._check_latents(z)
        if frames_per_pass < 1:
            raise ValueError(f"frames_per_pass must be >= 1, got {frames_per_pass}")
        x = self.conv2(z)  # [B, z, F, h, w]
        out: list[Tensor] = []
        start = 0
        while start < x.shape[2]:
            end = start + (1 if state.is_fresh else frames_per_pass)
            cursor = StateCursor(state, "decoder")
            out.append(self.decoder(x[:, :, start:end], cursor))  # [B, 3, t, H, W]
            state = cursor.finish()
            start = end
        video = torch.cat(out, dim=2) if out else x.new_zeros((x.shape[0], 3, 0, *self._pixels(x)))
        return video.clamp(-1.0, 1.0), state

    def decode(self, z: Tensor, frames_per_pass: int = 1) -> Tensor:
        """Raw latents [B, z, F, h, w] -> video [B, 3, 1 + (F-1)*stride, H, W] in [-1, 1]."""
        return self.decode_step(z, CausalState(), frames_per_pass)[0]

    # ----- checks -------------------------------------------------------------------------------------

    def _pixels(self, z: Tensor) -> tuple[int, int]:
        return z.shape[3] * self.spatial_stride, z.shape[4] * self.spatial_stride

    def _check_video(self, video: Tensor) -> None:
        s = self.spatial_stride
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[3] % s or video.shape[4] % s:
            raise ValueError(
                f"video must be [B, 3, T, H, W] with H and W multiples of {s}, got {tuple(video.shape)}"
            )

    def _check_latents(self, z: Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"latents must be [B, {self.config.z_dim}, F, h, w], got {tuple(z.shape)}")
