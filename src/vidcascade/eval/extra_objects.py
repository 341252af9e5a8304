"""Objects the prompt did not name: a second blob of a named colour, a stray shape of another
colour, or an extra blob merged into a named object.

Per frame, the objects are counted colour by colour: every connected piece of a colour's mask
that is not a speck counts as one object, and a piece larger than any single object of this world
can be (its bounding box's long side, or its area, well beyond the largest object the world draws)
counts as two, since it is a named object with something grown onto it. Two named objects that
overlap have different colours (the world never gives one colour to two objects), so they stay two
pieces. A block shows an extra object when most of its frames count more objects than were named;
a video when any block does.

Sizes are relative to the frame so they scale with it; the defaults come from the world's largest
object (half size 10/64, so at most 21 pixels across at 64x64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .detectors import DetectorConfig, color_masks, connected_components


@dataclass(frozen=True)
class ExtraObjectConfig:
    """Thresholds of the extra-object count (fractions of the frame's width or area)."""

    min_piece_frac: float = 24 / 4096
    """A piece of at least this share of the frame (24 px at 64x64, a quarter of the smallest
    triangle) is an object; smaller ones are specks."""
    merged_extent_frac: float = 26 / 64
    """A piece whose bounding box's long side exceeds this share of the width (1.25 x the largest
    object, 21 px at 64) holds two objects."""
    merged_area_frac: float = 600 / 4096
    """A piece with more than this share of the frame's area (1.35 x the largest square) holds two."""
    min_color_share: float = 0.05
    """A colour is considered when it has this share of the leading colour's pixels in the block."""
    max_colors: int = 4
    """At most this many colours are read per block (named objects + extras)."""

    def __post_init__(self) -> None:
        for name in ("min_piece_frac", "merged_extent_frac", "merged_area_frac", "min_color_share"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.max_colors < 1:
            raise ValueError(f"max_colors must be >= 1, got {self.max_colors}")


def objects_per_frame(frames: np.ndarray, config: ExtraObjectConfig | None = None) -> np.ndarray:
    """Estimated object count of each frame of a clip uint8 [T, H, W, 3]: int64 [T]."""
    config = config or ExtraObjectConfig()
    t, h, w, _ = np.asarray(frames).shape
    # Absolute speck size only: a small second blob next to a big one is what we look for.
    det = DetectorConfig(
        min_speck_frac=config.min_piece_frac, keep_piece_frac=0.0, min_color_share=config.min_color_share
    )
    counts = np.zeros(t, dtype=np.int64)
    for mask in color_masks(frames, None, config.max_colors, det).values():
        for f in np.flatnonzero(mask.any(axis=(1, 2))):
            counts[f] += _pieces_as_objects(mask[f], config)
    return counts


def _too_big(ys: np.ndarray, xs: np.ndarray, config: ExtraObjectConfig, h: int, w: int) -> bool:
    """Whether pixels (ys, xs) span more than one object of this world can."""
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    return extent > config.merged_extent_frac * w or len(ys) > config.merged_area_frac * h * w


def _pieces_as_objects(mask: np.ndarray, config: ExtraObjectConfig) -> int:
    """Objects in one colour's mask of one frame, bool [H, W]."""
    h, w = mask.shape
    labels = connected_components(mask[None])[0]  # (H, W), -1 = background
    pieces = [np.nonzero(labels == root) for root in np.unique(labels[mask])]
    ys, xs = np.nonzero(mask)
    if len(pieces) > 1 and not _too_big(ys, xs, config, h, w):
        # Pieces that together fit one object: one object cut by another drawn over it.
        return 1
    return sum(2 if _too_big(py, px, config, h, w) else 1 for py, px in pieces)


def extra_object_blocks(
    frames: np.ndarray,
    frames_per_block: int,
    named: Sequence[int],
    config: ExtraObjectConfig | None = None,
) -> np.ndarray:
    """bool [B]: blocks where most frames count more objects than ``named[b]`` (objects named for block b)."""
    if frames_per_block < 1:
        raise ValueError(f"frames_per_block must be >= 1, got {frames_per_block}")
    blocks = len(frames) // frames_per_block
    if len(named) != blocks:
        raise ValueError(f"named counts for {len(named)} blocks, but the clip has {blocks}")
    out = np.zeros(blocks, dtype=bool)
    for b in range(blocks):
        clip = frames[b * frames_per_block : (b + 1) * frames_per_block]
        over = objects_per_frame(clip, config) > named[b]
        out[b] = over.sum() * 2 > len(over)
    return out


def shows_extra_object(
    frames: np.ndarray, frames_per_block: int, named: int, config: ExtraObjectConfig | None = None
) -> bool:
    """Whether any block of a video whose prompt names ``named`` objects shows more objects."""
    blocks = len(frames) // frames_per_block
    return bool(extra_object_blocks(frames, frames_per_block, [named] * blocks, config).any())
