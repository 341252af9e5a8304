"""Clip specifications and their exact, alias-free rasterisation.

Geometry is stored in frame-relative units (1.0 = frame width), so one ``ClipSpec`` renders the same
scene at any size. A pixel belongs to a shape iff its centre lies inside it: no anti-aliasing, so
every object pixel holds exactly its palette colour and a model can learn the world exactly.

Layout of a rendered clip: ``uint8 [T, H, W, 3]``, H == W == size, RGB, frame 0 first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcascade.world.palette import (
    MAX_BACKGROUND_LEVEL,
    MOTION_DIRECTIONS,
    PALETTE,
    ObjectAttrs,
)

MIN_SIZE = 16
MAX_OBJECTS = 2


@dataclass(frozen=True)
class ObjectSpec:
    """One object's attributes and geometry, in frame-relative units."""

    attrs: ObjectAttrs
    center: tuple[float, float]
    """Centre (x, y) at frame 0; x to the right, y downwards, both in [half_size, 1 - half_size]."""
    half_size: float
    """Radius of a circle, half the side of a square, half the base (and height) of a triangle."""
    speed: float
    """Distance travelled per frame along the motion's axis; 0 exactly when the motion is ``still``."""

    def __post_init__(self) -> None:
        if not 0.0 < self.half_size < 0.5:
            raise ValueError(f"half_size must be in (0, 0.5), got {self.half_size}")
        for axis, value in zip("xy", self.center, strict=True):
            if not self.half_size <= value <= 1.0 - self.half_size:
                raise ValueError(
                    f"center {axis}={value} puts the object outside the frame "
                    f"(allowed [{self.half_size}, {1.0 - self.half_size}])"
                )
        if self.speed < 0.0:
            raise ValueError(f"speed must be >= 0, got {self.speed}")
        if (self.speed == 0.0) != (self.attrs.motion == "still"):
            raise ValueError(
                f"speed {self.speed} does not fit motion {self.attrs.motion!r}: "
                "exactly the still objects have speed 0"
            )


@dataclass(frozen=True)
class ClipSpec:
    """One or two objects over a uniform dark background; object 0 is drawn first (underneath)."""

    objects: tuple[ObjectSpec, ...]
    background: tuple[int, int, int] = (16, 16, 16)
    """Background RGB, every channel in [0, MAX_BACKGROUND_LEVEL]."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a clip holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        colors = [obj.attrs.color for obj in self.objects]
        if len(set(colors)) != len(colors):
            raise ValueError(f"objects in one clip must have different colours, got {colors}")
        if len(self.background) != 3 or not all(0 <= c <= MAX_BACKGROUND_LEVEL for c in self.background):
            raise ValueError(
                f"background must be 3 channels in [0, {MAX_BACKGROUND_LEVEL}], got {self.background}"
            )

    @property
    def attrs(self) -> list[ObjectAttrs]:
        """The objects' attributes in draw order (what a caption describes)."""
        return [obj.attrs for obj in self.objects]


def _fold(position: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map an unbounded straight-line position into [low, high] by reflecting at both walls."""
    span = high - low
    phase = np.mod(position - low, 2.0 * span)  # a triangle wave of period 2 * span
    return low + np.where(phase > span, 2.0 * span - phase, phase)


def object_centers(obj: ObjectSpec, num_frames: int) -> np.ndarray:
    """Frame-relative centres (x, y) of ``obj`` for frames 0..num_frames-1: float64 [T, 2].

    Constant velocity, reflected elastically at the walls forever (a bounce flips the velocity).
    """
    t = np.arange(num_frames, dtype=np.float64)  # (T,)
    dx, dy = MOTION_DIRECTIONS[obj.attrs.motion]
    low, high = obj.half_size, 1.0 - obj.half_size
    x = _fold(obj.center[0] + dx * obj.speed * t, low, high)  # (T,)
    y = _fold(obj.center[1] + dy * obj.speed * t, low, high)  # (T,)
    return np.stack([x, y], axis=1)


def shape_mask(shape: str, cx: np.ndarray, cy: np.ndarray, half: float, size: int) -> np.ndarray:
    """Boolean masks [T, size, size] of a shape centred at pixel coordinates (cx[t], cy[t]).

    Pixel (row i, column j) has its centre at (j + 0.5, i + 0.5). The triangle points up, its apex
    at (cx, cy - half) and its base of width 2*half on the line y = cy + half.
    """
    coords = np.arange(size, dtype=np.float64) + 0.5
    dx = coords[None, None, :] - cx[:, None, None]  # (T, 1, W)
    dy = coords[None, :, None] - cy[:, None, None]  # (T, H, 1)
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Width grows linearly from 0 at the apex to 2*half at the base.
        return (np.abs(dy) <= half) & (np.abs(dx) <= 0.5 * (dy + half))
    raise ValueError(f"unknown shape {shape!r}")


def background_frames(spec: ClipSpec, num_frames: int, size: int) -> np.ndarray:
    """Checked frame count and size, and ``uint8 [num_frames, size, size, 3]`` of the background."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = np.asarray(spec.background, dtype=np.uint8)
    return frames


def render(spec: ClipSpec, num_frames: int, size: int = 64) -> np.ndarray:
    """Rasterise ``spec`` into ``uint8 [num_frames, size, size, 3]`` frames."""
    frames = background_frames(spec, num_frames, size)
    for obj in spec.objects:  # later objects overwrite earlier ones: a fixed draw order
        centers = object_centers(obj, num_frames) * size  # (T, 2) in pixels
        mask = shape_mask(obj.attrs.shape, centers[:, 0], centers[:, 1], obj.half_size * size, size)
        frames[mask] = np.asarray(PALETTE[obj.attrs.color], dtype=np.uint8)
    return frames
