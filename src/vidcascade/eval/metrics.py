"""Video metrics that need no learned weights: PSNR, SSIM, block-boundary jump, smoothness.

Conventions (fixed here, since papers differ): frames are uint8 [T, H, W, 3]; PSNR is over the
whole video, 10 log10(255^2 / MSE), capped at 100 dB for identical videos; SSIM is the mean over
frames and channels of the Gaussian-window SSIM (window 11, sigma 1.5, C1 = (0.01 L)^2,
C2 = (0.03 L)^2, L = 255, borders reflect-padded), as torchmetrics computes it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse < 1e-10 else float(10 * np.log10(255.0**2 / mse))


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 videos [T, H, W, 3]."""
    x = torch.from_numpy(a).double().permute(0, 3, 1, 2)  # [T, 3, H, W]
    y = torch.from_numpy(b).double().permute(0, 3, 1, 2)
    g = _gauss()
    k = (g[:, None] * g[None, :])[None, None].expand(3, 1, -1, -1)  # [3, 1, 11, 11]

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(z, (5, 5, 5, 5), mode="reflect"), k, groups=3)  # same size

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx = (blur(x * x) - mx * mx).clamp_min(0)
    syy = (blur(y * y) - my * my).clamp_min(0)
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive frames, [T-1]."""
    f = frames.astype(np.float32)
    return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))


def boundary_jump(frames: np.ndarray, frames_per_block: int, first_block_frames: int | None = None) -> float:
    """Mean frame-to-frame change across block boundaries over the mean change inside blocks.

    1.0 means a block boundary is invisible. ``first_block_frames`` covers VAEs whose first block
    decodes to fewer frames (Wan's 4x temporal VAE: 9 then 12).
    """
    d = frame_changes(frames)
    first = frames_per_block if first_block_frames is None else first_block_frames
    boundary = np.zeros(len(d), dtype=bool)
    b = first
    while b - 1 < len(d):
        boundary[b - 1] = True  # change from frame b-1 to frame b crosses a boundary
        b += frames_per_block
    inside = d[~boundary].mean() if (~boundary).any() else np.nan
    across = d[boundary].mean() if boundary.any() else np.nan
    return float(across / max(inside, 1e-6))


def centroid_jerk(centroids: np.ndarray) -> float:
    """Median |second difference| of a centroid track [T, 2] in pixels (lower is smoother).

    The median ignores the few frames where a bounce reverses the velocity.
    """
    c = centroids[~np.isnan(centroids).any(axis=1)]
    if len(c) < 3:
        return float("nan")
    return float(np.median(np.linalg.norm(np.diff(c, n=2, axis=0), axis=1)))
