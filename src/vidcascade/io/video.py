"""Writing frames: mp4 (H.264 via imageio-ffmpeg), gif, or raw .npz (uint8 T x H x W x 3, key 'frames')."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMATS = (".mp4", ".gif", ".npz")


def check_output_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise ValueError(
            f"output {str(p)!r}: unknown extension {p.suffix!r}; use one of {', '.join(FORMATS)}"
        )
    if p.parent and not p.parent.exists():
        raise ValueError(f"output {str(p)!r}: folder {str(p.parent)!r} does not exist")
    return p


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """frames uint8 [T, H, W, 3]."""
    p = check_output_path(path)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    ext = p.suffix.lower()
    if ext == ".npz":
        np.savez_compressed(p, frames=frames, fps=np.float32(fps))
    elif ext == ".gif":
        _write_gif(p, frames, fps)
    else:
        _write_mp4(p, frames, fps)
    log.info("wrote %d frames to %s", len(frames), p)
    return p


def _write_mp4(p: Path, frames: np.ndarray, fps: float) -> None:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise RuntimeError('writing mp4 needs imageio-ffmpeg: pip install "vidcascade[video]"') from e
    t, h, w, _ = frames.shape
    # H.264 with yuv420p needs even sizes; small frames are upscaled so players show them.
    scale = max(1, 256 // max(h, w))
    hh, ww = h * scale, w * scale
    hh, ww = hh + hh % 2, ww + ww % 2
    # Frames go in at their own size; ffmpeg upscales with nearest neighbour.
    writer = imageio_ffmpeg.write_frames(
        str(p),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-vf", f"scale={ww}:{hh}:flags=neighbor", "-crf", "18"],
    )
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def _write_gif(p: Path, frames: np.ndarray, fps: float) -> None:
    try:
        from PIL import Image
    except ImportError as e:
        raise RuntimeError("writing gif needs Pillow (pip install pillow)") from e
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(p, save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)), loop=0)


def read_npz(path: str | Path) -> np.ndarray:
    with np.load(path) as z:
        return z["frames"]
