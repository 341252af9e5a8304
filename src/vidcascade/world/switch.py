"""Prompt switches in the world: caption A for blocks < k, caption B from block k, rendered exactly.

A ``Switch`` turns a plain ``ClipSpec`` (the scene caption A describes) into a clip whose scene
follows caption B from block ``k`` on. Objects map to objects in the order the captions name
them (B's object i is A's object i). Every transition takes exactly block k: block k-1 shows A,
block k+1 shows B and nothing else. Within block k (frames 3k, 3k+1, 3k+2 with 3 frames per block)
the transition fraction is a = 1/4, 2/4, 3/4:

- *colour*: the object's colour is the linear RGB mix (1 - a) * old + a * new;
- *shape*: a morph at the same place and size: the object is the set where the mix
  (1 - a) * d_old + a * d_new of the two shapes' distance-like level functions is <= 0. Morph,
  not cross-fade, because every frame then still shows one solid, hard-edged object of one
  colour: no ghost of two overlapping half-transparent shapes, the area and centroid stay
  continuous (the detectors follow it as one object through the switch), and the renderer keeps
  its no-alpha rasterisation that a model can learn exactly;
- *motion*: the velocity changes at the switch: from frame 3k on, the object moves in the new
  direction (still: stops; still -> moving: starts at a sampled speed) from where it was at frame
  3k - 1. Objects whose motion does not change keep their trajectory, bounces included;
- *one -> two objects*: the second object slides in through an edge over block k (the edge behind
  its motion; a still one through a random edge) and touches that edge at frame 3(k+1), then
  moves as named; *two -> one*: the second object leaves through its nearest edge over block k.

The embedded VAE has no temporal compression (latent frame f is pixel frame f), so latent block k
starts at pixel frame 3k. ``sample_switch`` (switch_sample.py) draws a random switch for a
spec; the switches it returns leave every moving object ``run_frames`` frames of travel in its
named direction from the switch and keep the objects' boxes apart until ``run_frames`` frames
after block k, so the after-switch scene reads back as caption B, as the first frames of a plain
clip read as its caption. Seeded and deterministic, like the rest of the world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcascade.world.palette import MOTION_DIRECTIONS, PALETTE, ObjectAttrs
from vidcascade.world.render import ClipSpec, _fold, background_frames, object_centers, shape_mask

FRAMES_PER_BLOCK = 3
SWITCH_KINDS: tuple[str, ...] = ("color", "shape", "direction", "still", "count")
"""colour; shape; a moving object's new direction; still <-> moving; one <-> two objects."""


@dataclass(frozen=True)
class Switch:
    """Caption B's scene from block ``block`` of a clip whose blocks before show ``ClipSpec`` A."""

    block: int
    """k >= 1: the first block made under caption B."""
    after: tuple[ObjectAttrs, ...]
    """B's objects in caption order; object i continues A's object i."""
    speeds: tuple[float, ...]
    """Per B object, its speed from the switch on (an unchanged motion keeps A's speed)."""
    entry: tuple[float, float] | None = None
    """Centre of an entering second object at frame 3(k+1) (one -> two objects), else None."""
    entry_half: float = 0.0
    """Half size of the entering object."""
    frames_per_block: int = FRAMES_PER_BLOCK

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"switch block must be >= 1 (block 0 has no before), got {self.block}")
        if not 1 <= len(self.after) <= 2:
            raise ValueError(f"a switch leads to 1 or 2 objects, got {len(self.after)}")
        if len(self.speeds) != len(self.after):
            raise ValueError(f"speeds has {len(self.speeds)} entries for {len(self.after)} objects")
        for obj, speed in zip(self.after, self.speeds, strict=True):
            if (speed == 0.0) != (obj.motion == "still") or speed < 0.0:
                raise ValueError(f"speed {speed} does not fit motion {obj.motion!r}")

    @property
    def start_frame(self) -> int:
        """First frame of the switch block (the VAE maps frame f to latent frame f)."""
        return self.block * self.frames_per_block


def check_switch(spec: ClipSpec, switch: Switch) -> None:
    """ValueError unless ``switch`` can follow ``spec``: one object more, fewer or as many, an
    entering object with its geometry, and no colour shared by two objects at any time."""
    n_a, n_b = len(spec.objects), len(switch.after)
    if abs(n_a - n_b) > 1:
        raise ValueError(f"a switch changes the object count by at most one, got {n_a} -> {n_b}")
    if (n_b > n_a) != (switch.entry is not None):
        raise ValueError("an entry position is given exactly when a second object enters")
    colors = [{o.color} for o in spec.attrs]
    colors += [set() for _ in range(n_b - n_a)]
    for i, obj in enumerate(switch.after):
        colors[i].add(obj.color)
    for i in range(len(colors)):
        for j in range(i + 1, len(colors)):
            if colors[i] & colors[j]:
                raise ValueError(f"objects {i} and {j} would share a colour: {colors[i] & colors[j]}")


def transition(num_frames: int, switch: Switch) -> np.ndarray:
    """Transition fraction per frame, float [T]: 0 before block k, (i+1)/(fpb+1) at its frame i, 1 after."""
    f = np.arange(num_frames, dtype=np.float64) - switch.start_frame
    fpb = switch.frames_per_block
    return np.where(f < 0, 0.0, np.minimum((f + 1) / (fpb + 1), 1.0))


@dataclass(frozen=True, eq=False)
class Track:
    """One object slot over a switched clip: where, whether visible, colour and shape per frame."""

    centers: np.ndarray
    """float64 [T, 2], frame-relative (x, y); meaningless where not visible."""
    visible: np.ndarray
    """bool [T]."""
    colors: np.ndarray
    """float64 [T, 3] RGB."""
    shapes: tuple[str, str]
    """(shape before, shape after)."""
    morph: np.ndarray
    """float64 [T]: 0 = the shape before, 1 = after, between = the morph."""
    half: float


def _exit_point(p: np.ndarray, half: float) -> np.ndarray:
    """Centre just outside the frame through the edge nearest to p (fully hidden)."""
    dist = [p[0], 1.0 - p[0], p[1], 1.0 - p[1]]  # left, right, top, bottom
    side = int(np.argmin(dist))
    out = p.copy()
    out[side // 2] = -half if side % 2 == 0 else 1.0 + half
    return out


def _entry_start(target: tuple[float, float], half: float) -> np.ndarray:
    """Fully hidden start of an entering object: beyond the edge its target touches."""
    return _exit_point(np.asarray(target, dtype=np.float64), half)


def tracks(spec: ClipSpec, switch: Switch, num_frames: int) -> list[Track]:
    """Per object slot (A's objects, then an entering one) its track over ``num_frames`` frames."""
    check_switch(spec, switch)
    t0, fpb = switch.start_frame, switch.frames_per_block
    a = transition(num_frames, switch)  # [T]
    f = np.arange(num_frames, dtype=np.float64)
    out = []
    n_slots = max(len(spec.objects), len(switch.after))
    for i in range(n_slots):
        old = spec.objects[i] if i < len(spec.objects) else None
        new = switch.after[i] if i < len(switch.after) else None
        if old is not None:
            half = old.half_size
            centers = object_centers(old, num_frames)  # [T, 2]
            visible = np.ones(num_frames, dtype=bool)
            p_last = object_centers(old, t0)[-1] if t0 > 0 else np.asarray(old.center)
            if new is None:  # leaves through the nearest edge over block k
                exit_p = _exit_point(p_last, half)
                moving = f >= t0
                centers[moving] = p_last + a[moving, None] * (exit_p - p_last)
                visible = a < 1.0
            elif new.motion != old.attrs.motion:
                d = np.asarray(MOTION_DIRECTIONS[new.motion], dtype=np.float64)
                steps = np.maximum(f - (t0 - 1), 0.0)[:, None]  # frames since the last old one
                line = p_last[None, :] + d[None, :] * switch.speeds[i] * steps
                after = np.stack([_fold(line[:, j], half, 1.0 - half) for j in range(2)], axis=1)
                centers = np.where((f >= t0)[:, None], after, centers)
            col_old = np.asarray(PALETTE[old.attrs.color], dtype=np.float64)
            col_new = col_old if new is None else np.asarray(PALETTE[new.color], dtype=np.float64)
            shapes = (old.attrs.shape, old.attrs.shape if new is None else new.shape)
        else:  # enters through an edge over block k, then moves as named
            assert new is not None and switch.entry is not None
            half = switch.entry_half
            target = np.asarray(switch.entry, dtype=np.float64)
            start = _entry_start(switch.entry, half)
            d = np.asarray(MOTION_DIRECTIONS[new.motion], dtype=np.float64)
            steps = np.maximum(f - (t0 + fpb), 0.0)[:, None]
            line = target[None, :] + d[None, :] * switch.speeds[i] * steps
            centers = np.stack([_fold(line[:, j], half, 1.0 - half) for j in range(2)], axis=1)
            sliding = a < 1.0
            centers[sliding] = start + a[sliding, None] * (target - start)
            visible = a > 0.0
            col_old = col_new = np.asarray(PALETTE[new.color], dtype=np.float64)
            shapes = (new.shape, new.shape)
        colors = (1.0 - a)[:, None] * col_old + a[:, None] * col_new
        morph = a if shapes[0] != shapes[1] else np.zeros(num_frames)
        out.append(Track(centers, visible, colors, shapes, morph, half))
    return out


def shape_level(shape: str, cx: np.ndarray, cy: np.ndarray, half: float, size: int) -> np.ndarray:
    """Distance-like level function [T, size, size] of a shape (<= 0 inside; as ``shape_mask``)."""
    coords = np.arange(size, dtype=np.float64) + 0.5
    dx = coords[None, None, :] - cx[:, None, None]  # (T, 1, W)
    dy = coords[None, :, None] - cy[:, None, None]  # (T, H, 1)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    if shape == "triangle":
        # The slanted sides' distance is their half-plane value over the normal's length sqrt(1.25).
        return np.maximum(np.abs(dy) - half, (np.abs(dx) - 0.5 * (dy + half)) / np.sqrt(1.25))
    raise ValueError(f"unknown shape {shape!r}")


def render_switch(spec: ClipSpec, switch: Switch, num_frames: int, size: int = 64) -> np.ndarray:
    """Rasterise a switched clip into ``uint8 [num_frames, size, size, 3]``; the frames before
    block k equal ``render(spec, ...)``, those from block k + 1 on show B exactly."""
    frames = background_frames(spec, num_frames, size)
    for tr in tracks(spec, switch, num_frames):  # slot order = draw order
        cx, cy, half = tr.centers[:, 0] * size, tr.centers[:, 1] * size, tr.half * size
        mask = shape_mask(tr.shapes[0], cx, cy, half, size)  # [T, H, W]
        if tr.shapes[1] != tr.shapes[0]:
            done = tr.morph >= 1.0
            mask[done] = shape_mask(tr.shapes[1], cx[done], cy[done], half, size)
            mid = (tr.morph > 0.0) & ~done
            if mid.any():
                m = tr.morph[mid, None, None]
                level = (1 - m) * shape_level(tr.shapes[0], cx[mid], cy[mid], half, size)
                level += m * shape_level(tr.shapes[1], cx[mid], cy[mid], half, size)
                mask[mid] = level <= 0.0
        mask &= tr.visible[:, None, None]
        colors = np.round(tr.colors).astype(np.uint8)  # [T, 3]
        frames[mask] = np.broadcast_to(colors[:, None, None, :], frames.shape)[mask]
    return frames


def switch_overlaps(spec: ClipSpec, switch: Switch, num_frames: int) -> np.ndarray:
    """bool [T]: frames where two visible objects' bounding boxes intersect (as ``box_overlaps``)."""
    trs = tracks(spec, switch, num_frames)
    if len(trs) < 2:
        return np.zeros(num_frames, dtype=bool)
    gap = np.abs(trs[0].centers - trs[1].centers) - (trs[0].half + trs[1].half)  # [T, 2]
    return np.all(gap <= 0.0, axis=1) & trs[0].visible & trs[1].visible
