"""Reading a switch video block by block: when do the new attributes show, did the rest stay.

Per block b the detectors read (numpy only, as ``detectors``):

- colour, shape and object count from the block's own frames;
- motion from the frames of blocks b and b+1 (b-1 and b for the last block and the one before
  the switch, so that no window mixes the two captions), since a block of the
  embedded model holds only 3 frames, 2 steps of a track. The world bounces objects off the
  walls, so an object read moving opposite to its named direction still shows it when it came
  near the named direction's wall (centroid within ``wall_frac`` of the frame) since the switch
  (new attributes) or since the start (kept objects, caption A before the switch).

A switch's *new attributes* (``SwitchItem.kind``): colour: the changed object's new colour is read
and its old colour is gone; shape: the object of its colour has the new shape; direction and
still-moving: it has the new motion; one -> two: two objects, the new one of its colour and shape
(its motion is left out: the world brings it in from an edge, moving as its entry goes); two -> one:
the leaving object's colour is gone. *Kept* objects (named the same in both captions) must show
their colour, shape and motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcascade.world import ObjectAttrs

from .detectors import DetectedObject, DetectorConfig, detect_objects
from .extra_objects import ExtraObjectConfig, extra_object_blocks
from .switch_set import SwitchItem

_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@dataclass(frozen=True)
class BlockReading:
    """What the detectors read in one block: objects by colour, and their motion over 2 blocks."""

    objects: dict[str, DetectedObject]
    motions: dict[str, str]
    """Motion per colour, over the frames of this block and the next."""
    walls: dict[str, set[str]]
    """Per colour, the directions whose wall the object came near in those frames."""


def _walls_near(obj: DetectedObject, width: int, height: int, wall_frac: float) -> set[str]:
    seen = obj.centroids[~np.isnan(obj.centroids).any(axis=1)]  # (S, 2) x, y
    if not len(seen):
        return set()
    x, y = seen[:, 0], seen[:, 1]
    near = {
        "right": (width - x < wall_frac * width).any(),
        "left": (x < wall_frac * width).any(),
        "down": (height - y < wall_frac * height).any(),
        "up": (y < wall_frac * height).any(),
    }
    return {d for d, hit in near.items() if hit}


def read_blocks(
    frames: np.ndarray,
    frames_per_block: int,
    max_objects: int,
    wall_frac: float = 0.25,
    config: DetectorConfig | None = None,
    cut: int | None = None,
) -> list[BlockReading]:
    """One ``BlockReading`` per block of a clip uint8 [T, H, W, 3]; ``cut``: a block (the switch)
    that no motion window crosses: the block before it reads its motion with the block before."""
    if frames_per_block < 1:
        raise ValueError(f"frames_per_block must be >= 1, got {frames_per_block}")
    config = config or DetectorConfig()
    moving = DetectorConfig(**{**config.__dict__, "window": max(2, 2 * frames_per_block)})
    _, h, w, _ = frames.shape
    blocks = len(frames) // frames_per_block
    out = []
    for b in range(blocks):
        own = frames[b * frames_per_block : (b + 1) * frames_per_block]
        # Blocks b and b+1; where b+1 is past the cut or the end, blocks b-1 and b (same segment).
        stop = blocks if cut is None or b >= cut else cut
        start = 0 if cut is None or b < cut else cut
        first = b if b + 1 < stop else max(start, b - 1)
        pair = frames[first * frames_per_block : (first + 2) * frames_per_block]
        objects = {d.color: d for d in detect_objects(own, max_objects, config)}
        motions, walls = {}, {}
        for d in detect_objects(pair, max_objects, moving):
            motions[d.color] = d.motion
            walls[d.color] = _walls_near(d, w, h, wall_frac)
        out.append(BlockReading(objects, motions, walls))
    return out


def motion_shown(readings: list[BlockReading], b: int, since: int, obj: ObjectAttrs) -> bool:
    """Whether block b shows ``obj``'s motion: the named direction, or the opposite one after the
    object came near the named direction's wall in blocks ``since``..b (it bounced off it)."""
    r = readings[b]
    d = r.objects.get(obj.color)
    motion = r.motions.get(obj.color, d.motion if d is not None else None)
    if motion == obj.motion:
        return True
    if obj.motion not in _OPPOSITE or motion != _OPPOSITE[obj.motion]:
        return False
    return any(obj.motion in readings[j].walls.get(obj.color, ()) for j in range(since, b + 1))


def _shows(readings: list[BlockReading], b: int, obj: ObjectAttrs, motion: bool = True) -> bool:
    d = readings[b].objects.get(obj.color)
    if d is None or d.shape != obj.shape:
        return False
    return not motion or motion_shown(readings, b, 0, obj)


def new_shown(item: SwitchItem, readings: list[BlockReading], b: int, switch_block: int) -> bool:
    """Whether block b shows every attribute the switch ``item`` brings (see the module docstring)."""
    reading = readings[b]
    if item.changed is None:  # two -> one: the second object has left
        return item.attrs_before[1].color not in reading.objects
    new = item.attrs_after[item.changed]
    if item.kind == "count":
        return len(reading.objects) == len(item.attrs_after) and _shows(readings, b, new, motion=False)
    old = item.attrs_before[item.changed]
    d = reading.objects.get(new.color)
    if d is None:
        return False
    if item.kind == "color":
        return old.color not in reading.objects
    if item.kind == "shape":
        return d.shape == new.shape
    return motion_shown(readings, b, switch_block, new)


def kept_shown(item: SwitchItem, readings: list[BlockReading], b: int) -> bool:
    """Whether block b shows every object the switch leaves as it was: colour, shape and motion."""
    return all(_shows(readings, b, item.attrs_after[i]) for i in item.kept)


def score_switch(
    frames: np.ndarray,
    frames_per_block: int,
    item: SwitchItem,
    switch_block: int,
    last_before: int | None = None,
    extra: ExtraObjectConfig | None = None,
) -> dict:
    """One switch video's reading: blocks to show (from ``switch_block``), whether caption A showed
    in block ``last_before`` (default: the block before the switch), kept objects before (blocks up
    to ``last_before``) and after (from the switch block), and whether it shows an object that
    neither caption named.

    ``last_before``: the last block the switch did not touch. In a cascade the blocks in flight at
    the switch take the new prompt for their remaining steps, so that is ``switch_block - ceil(S /
    L)`` (S steps, lag L): the block before the switch at P0, four blocks before at P4 (S = 4).
    """
    blocks = len(frames) // frames_per_block
    if not 1 <= switch_block < blocks:
        raise ValueError(f"switch_block must be in 1..{blocks - 1}, got {switch_block}")
    last_before = switch_block - 1 if last_before is None else last_before
    if not 0 <= last_before < switch_block:
        raise ValueError(f"last_before must be in 0..{switch_block - 1}, got {last_before}")
    most = max(len(item.attrs_before), len(item.attrs_after))
    readings = read_blocks(frames, frames_per_block, most + 1, cut=last_before + 1)
    shown = (b for b in range(switch_block, blocks) if new_shown(item, readings, b, switch_block))
    delay = next((b - switch_block for b in shown), None)
    before_ok = all(_shows(readings, last_before, a) for a in item.attrs_before)
    kept_before = kept_after = None
    if item.kept:
        kept = [kept_shown(item, readings, b) for b in range(blocks)]
        kept_before = float(np.mean(kept[: last_before + 1]))
        kept_after = float(np.mean(kept[switch_block:]))
    # From the switch on, the old version of the changed object (or the leaving one) may linger
    # beside the new: that is a late switch, read above; an extra object is one neither caption named.
    after = len(item.attrs_after) + (0 if item.kind == "count" and item.changed is not None else 1)
    named = [len(item.attrs_before)] * switch_block + [after] * (blocks - switch_block)
    return {
        "blocks_to_show": delay,
        "before_shown": before_ok,
        "kept_before": kept_before,
        "kept_after": kept_after,
        "extra_object": bool(extra_object_blocks(frames, frames_per_block, named, extra).any()),
    }
