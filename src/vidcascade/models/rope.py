"""3-D rotary position embedding of Wan: time, height and width parts of each head.

head_dim d is split into complex pairs [d/2 - 2*(d/2 // 3), d/2 // 3, d/2 // 3] for (frame, row,
column); each part rotates consecutive channel pairs by position * theta^(-2i/part_dim).
Reference: reference/block_causal_models.md §1.3 item 7. The temporal index is the *absolute*
frame index, so that a block keeps its positions whether it runs alone or inside a cascade.
"""

from __future__ import annotations

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs given to (time, height, width)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _axis_angles(max_len: int, pairs: int) -> torch.Tensor:
    # [max_len, pairs] in float64, as Wan computes its tables.
    dim = 2 * pairs
    inv = 1.0 / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(torch.arange(max_len, dtype=torch.float64), inv)


class RopeTables:
    """Per-axis cos/sin tables, computed once in float64 and stored in float32 per device.

    Not an nn.Module buffer on purpose: casting the model to bf16 must not cast these tables.
    """

    def __init__(self, head_dim: int, max_len: int) -> None:
        self.head_dim = head_dim
        self.max_len = max_len
        self.split = rope_split(head_dim)
        angles = [_axis_angles(max_len, p) for p in self.split]
        self._cos = [a.cos().float() for a in angles]
        self._sin = [a.sin().float() for a in angles]
        self._per_device: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def _tables(self, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if device not in self._per_device:
            self._per_device[device] = ([c.to(device) for c in self._cos], [s.to(device) for s in self._sin])
        return self._per_device[device]

    def cos_sin(self, frame_pos: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [F*H*W, head_dim/2] for tokens in (frame, row, column) order."""
        # Checked on the CPU only: on a GPU it would be a host sync every forward (the engine
        # checks the video length against the table before it starts); not while compiling,
        # where reading a value breaks the graph every forward.
        check = frame_pos.device.type == "cpu" and frame_pos.numel() and not torch.compiler.is_compiling()
        if check and int(frame_pos.max()) >= self.max_len:
            raise ValueError(
                f"frame position {int(frame_pos.max())} is beyond the RoPE table of {self.max_len} "
                "positions; raise ModelConfig.rope_max_frames or use a rolling cache with fewer frames"
            )
        if check and int(frame_pos.min()) < 0:
            raise ValueError(f"frame position {int(frame_pos.min())} is below 0, where the RoPE table starts")
        if height > self.max_len or width > self.max_len:
            raise ValueError(f"latent grid {height}x{width} exceeds the RoPE table of {self.max_len}")
        coss, sins = self._tables(frame_pos.device)
        nf = frame_pos.numel()
        out = []
        for tables in (coss, sins):
            ct, ch, cw = tables
            t = ct[frame_pos][:, None, None, :].expand(nf, height, width, -1)  # [F, H, W, pt]
            h = ch[:height][None, :, None, :].expand(nf, height, width, -1)  # [F, H, W, ph]
            w = cw[:width][None, None, :, :].expand(nf, height, width, -1)  # [F, H, W, pw]
            out.append(torch.cat([t, h, w], dim=-1).reshape(nf * height * width, -1))
        return out[0], out[1]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [B, N, H, D] by angles given as cos/sin [N, D/2]."""
    dtype = x.dtype
    xf = x.float().unflatten(-1, (-1, 2))  # [B, N, H, D/2, 2]
    xr, xi = xf[..., 0], xf[..., 1]  # [B, N, H, D/2]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = torch.stack((xr * c - xi * s, xr * s + xi * c), dim=-1)  # [B, N, H, D/2, 2]
    return out.flatten(-2).to(dtype)


def time_rotation(
    head_dim: int, delta: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [pt] of a shift by ``delta`` frame positions on the time part of the rotation
    (any integer, negative too; angles computed in float64 as the tables are)."""
    pt = rope_split(head_dim)[0]
    angle = float(delta) * _axis_angles(2, pt)[1]  # delta * theta^(-2i/dim), [pt]
    return angle.cos().float().to(device), angle.sin().float().to(device)


def rotate_time_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """In place: rotate the time channels of already rotated keys x [B, H, N, Dh] further by the
    angles cos/sin [pt] (``time_rotation``). Because RoPE is a rotation, a key stored at position
    p and rotated by delta is the key at position p + delta; height and width parts are untouched."""
    pt = cos.shape[0]
    xt = x[..., : 2 * pt].float().unflatten(-1, (pt, 2))  # [B, H, N, pt, 2]
    xr, xi = xt[..., 0], xt[..., 1]
    out = torch.stack((xr * cos - xi * sin, xr * sin + xi * cos), dim=-1)  # [B, H, N, pt, 2]
    x[..., : 2 * pt] = out.flatten(-2).to(x.dtype)
