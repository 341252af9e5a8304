"""Block-by-block VAE decoding (and encoding) of one stream, with the causal state held explicitly.

Concatenating the outputs of :meth:`StreamingDecoder.decode` over consecutive latent blocks gives the same
video as one :meth:`WanVAE.decode` of the whole latent video (up to float rounding). Unlike the zero-cache
wrappers of the causal repos, the first block uses Wan's first-chunk rule, so no junk frames need dropping.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vidcascade.models.wan_vae import WanVAE
from vidcascade.models.wan_vae_blocks import CausalState


class StreamingDecoder:
    """Decodes the latent blocks of one stream in order; keep one instance per stream.

    The model is shared and stateless; this object holds the stream's :class:`CausalState`
    (the last <= 2 input frames of each temporal layer of the decoder).
    """

    def __init__(self, vae: WanVAE, *, normalized: bool = False, frames_per_pass: int = 1) -> None:
        """``normalized``: blocks are in the diffusion model's space and get ``vae.denormalize`` first.
        ``frames_per_pass``: latent frames per decoder pass after the first (memory vs speed)."""
        self.vae = vae
        self.normalized = normalized
        self.frames_per_pass = frames_per_pass
        self.state = CausalState()
        self._geometry: tuple[int, int, int] | None = None  # (batch, h, w) of the stream
        self.latent_frames = 0
        self.frames = 0

    def reset(self) -> None:
        """Start a new stream."""
        self.state = CausalState()
        self._geometry = None
        self.latent_frames = 0
        self.frames = 0

    def decode(self, latent_block: Tensor) -> Tensor:
        """Latent block [B, z, F, h, w] -> its video frames [B, 3, T, H, W] in [-1, 1].

        T = F * temporal_stride, except the stream's first block, whose first latent frame gives 1 frame.
        """
        geometry = (latent_block.shape[0], latent_block.shape[-2], latent_block.shape[-1])
        if self._geometry is not None and geometry != self._geometry:
            raise ValueError(
                f"latent block (batch, h, w) = {geometry} differs from this stream's {self._geometry}; "
                "call reset() to start a new stream"
            )
        z = self.vae.denormalize(latent_block) if self.normalized else latent_block
        video, self.state = self.vae.decode_step(z, self.state, self.frames_per_pass)
        self._geometry = geometry
        self.latent_frames += latent_block.shape[2]
        self.frames += video.shape[2]
        return video


class StreamingEncoder:
    """Encodes the frames of one stream as they arrive; returns posterior means as soon as they are complete.

    Frames are buffered until a full causal chunk is available (1 frame first, then ``temporal_stride``),
    so any split of the input gives the same latents as one :meth:`WanVAE.encode` (up to float rounding).
    """

    def __init__(self, vae: WanVAE, *, normalized: bool = False) -> None:
        """``normalized``: return ``vae.normalize(mu)`` (the diffusion model's space) instead of raw mu."""
        self.vae = vae
        self.normalized = normalized
        self.state = CausalState()
        self._pending: Tensor | None = None  # [B, 3, t < chunk, H, W] frames not yet encoded

    def reset(self) -> None:
        """Start a new stream."""
        self.state = CausalState()
        self._pending = None

    @property
    def pending_frames(self) -> int:
        return 0 if self._pending is None else self._pending.shape[2]

    def encode(self, frames: Tensor) -> Tensor:
        """Frames [B, 3, T, H, W] -> latents [B, z, F, h, w] for every chunk completed so far (F may be 0)."""
        x = frames if self._pending is None else torch.cat([self._pending, frames], dim=2)
        out: list[Tensor] = []
        start = 0
        s = self.vae.temporal_stride
        while True:
            # A fresh stream encodes frame 0 alone; after that, all complete chunks go in one pass.
            size = 1 if self.state.is_fresh else (x.shape[2] - start) // s * s
            if size == 0 or x.shape[2] - start < size:
                break
            moments, self.state = self.vae.encode_step(x[:, :, start : start + size], self.state)
            out.append(moments.chunk(2, dim=1)[0])
            start += size
        self._pending = x[:, :, start:].clone() if start < x.shape[2] else None
        if not out:
            h, w = (n // self.vae.spatial_stride for n in x.shape[-2:])
            return x.new_zeros((x.shape[0], self.vae.config.z_dim, 0, h, w))
        mu = torch.cat(out, dim=2)
        return self.vae.normalize(mu) if self.normalized else mu


class VAEFrameDecoder:
    """A StreamingDecoder that returns uint8 frames: the engine's ``FrameDecoder`` for a Wan VAE.

    Latents come in the diffusion model's (normalised) space; output is [B, T, H, W, 3] uint8.
    """

    def __init__(self, vae: WanVAE, *, frames_per_pass: int = 1) -> None:
        self.stream = StreamingDecoder(vae, normalized=True, frames_per_pass=frames_per_pass)

    def reset(self) -> None:
        self.stream.reset()

    @torch.no_grad()
    def decode(self, latents: Tensor):
        vae = self.stream.vae
        p = next(vae.parameters())
        video = self.stream.decode(latents.to(device=p.device, dtype=p.dtype))  # [B, 3, T, H, W] in [-1, 1]
        frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # [B, T, H, W, 3]
