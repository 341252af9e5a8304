"""Writing a whole video at once (mp4, gif or .npz with key 'frames'), and reading .npz back.

Block-by-block writing is in ``writers.py``; path checks in ``output.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .output import FORMATS, OutputError, check_output_path
from .writers import WriteError, Written, open_writer

__all__ = ["FORMATS", "OutputError", "WriteError", "Written", "check_output_path", "read_npz", "write_video"]


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Written:
    """frames uint8 [T, H, W, 3]; raises ``OutputError`` (bad path) or ``WriteError``."""
    p = check_output_path(path)
    writer = open_writer(p, fps)
    try:
        writer.append(frames)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_npz(path: str | Path) -> np.ndarray:
    with np.load(path) as z:
        return z["frames"]
