"""Seeded scene sampling: attributes -> geometry -> ``ClipSpec``, and ``clip_for(caption, seed)``.

The geometry depends only on the attributes and the random generator, so every paraphrase of a
caption gives the same clip for the same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vidcascade.world.palette import (
    COLORS,
    MAX_BACKGROUND_LEVEL,
    MOTION_DIRECTIONS,
    MOTIONS,
    SHAPES,
    ObjectAttrs,
)
from vidcascade.world.parse import parse_caption
from vidcascade.world.render import ClipSpec, ObjectSpec, object_centers, render

logger = logging.getLogger(__name__)

# Rejection sampling of two-object layouts almost always succeeds within a few tries; the cap only
# guards against configurations where the constraint is nearly infeasible.
_MAX_LAYOUT_TRIES = 200


@dataclass(frozen=True)
class GeometryConfig:
    """Ranges for sampled geometry, in frame-relative units (multiply by the frame size for pixels)."""

    half_size_range: tuple[float, float] = (7 / 64, 10 / 64)
    """Object radius / half side; 7-10 px at 64x64."""
    speed_range: tuple[float, float] = (1.5 / 64, 3 / 64)
    """Distance per frame of moving objects; 1.5-3 px at 64x64."""
    run_frames: int = 12
    """A moving object travels in its named direction for at least this many frames before the first
    bounce, and two objects do not overlap during these frames, so the caption is visible early."""
    background_level: tuple[int, int] = (6, 20)
    """Range of the background's grey level."""
    background_tint: int = 4
    """Each channel deviates from the grey level by at most this much (a per-clip tint)."""

    def __post_init__(self) -> None:
        lo_h, hi_h = self.half_size_range
        if not 0.0 < lo_h <= hi_h < 0.5:
            raise ValueError(f"half_size_range must satisfy 0 < lo <= hi < 0.5, got {self.half_size_range}")
        lo_s, hi_s = self.speed_range
        if not 0.0 < lo_s <= hi_s:
            raise ValueError(f"speed_range must satisfy 0 < lo <= hi, got {self.speed_range}")
        if self.run_frames < 0:
            raise ValueError(f"run_frames must be >= 0, got {self.run_frames}")
        if 1.0 - 2.0 * hi_h - self.run_frames * hi_s < 0.0:
            raise ValueError(
                f"run_frames={self.run_frames} at speed {hi_s} does not fit in the frame with "
                f"half_size {hi_h}: the largest, fastest object would bounce earlier"
            )
        lo_b, hi_b = self.background_level
        if not 0 <= self.background_tint <= lo_b <= hi_b <= MAX_BACKGROUND_LEVEL - self.background_tint:
            raise ValueError(
                f"background_level {self.background_level} with tint {self.background_tint} must stay "
                f"within [0, {MAX_BACKGROUND_LEVEL}]"
            )


def sample_attrs(rng: np.random.Generator, two_object_prob: float = 0.5) -> list[ObjectAttrs]:
    """Uniformly random attributes for one object, or two objects of different colours."""
    if not 0.0 <= two_object_prob <= 1.0:
        raise ValueError(f"two_object_prob must be in [0, 1], got {two_object_prob}")
    count = 2 if rng.random() < two_object_prob else 1
    colors = rng.choice(len(COLORS), size=count, replace=False)
    return [
        ObjectAttrs(
            color=COLORS[int(c)],  # type: ignore[arg-type]
            shape=SHAPES[int(rng.integers(len(SHAPES)))],  # type: ignore[arg-type]
            motion=MOTIONS[int(rng.integers(len(MOTIONS)))],  # type: ignore[arg-type]
        )
        for c in colors
    ]


def _place(attrs: ObjectAttrs, rng: np.random.Generator, geometry: GeometryConfig) -> ObjectSpec:
    """Sample size, speed and a start position that leaves ``run_frames`` of travel before a wall."""
    half = float(rng.uniform(*geometry.half_size_range))
    speed = 0.0 if attrs.motion == "still" else float(rng.uniform(*geometry.speed_range))
    low, high = half, 1.0 - half
    run = geometry.run_frames * speed
    center = []
    for direction in MOTION_DIRECTIONS[attrs.motion]:
        if direction > 0:
            center.append(float(rng.uniform(low, high - run)))
        elif direction < 0:
            center.append(float(rng.uniform(low + run, high)))
        else:
            center.append(float(rng.uniform(low, high)))
    return ObjectSpec(attrs=attrs, center=(center[0], center[1]), half_size=half, speed=speed)


def box_overlaps(objects: Sequence[ObjectSpec], num_frames: int) -> np.ndarray:
    """bool (T,): frames where the bounding boxes of two objects intersect (all False for one)."""
    if len(objects) < 2:
        return np.zeros(num_frames, dtype=bool)
    a, b = objects
    ca, cb = object_centers(a, num_frames), object_centers(b, num_frames)  # (T, 2) each
    gap = np.abs(ca - cb) - (a.half_size + b.half_size)  # (T, 2); boxes are apart where any gap > 0
    return np.all(gap <= 0.0, axis=1)


def _overlap_early(objects: Sequence[ObjectSpec], num_frames: int) -> bool:
    """Whether the bounding boxes of two objects intersect in any of the first ``num_frames`` frames."""
    return bool(box_overlaps(objects, num_frames).any())


def spec_from_attrs(
    attrs: Sequence[ObjectAttrs], rng: np.random.Generator, geometry: GeometryConfig | None = None
) -> ClipSpec:
    """Sample geometry and background for the given object attributes (draw order as given)."""
    geometry = geometry or GeometryConfig()
    check_frames = max(geometry.run_frames, 1)
    objects: tuple[ObjectSpec, ...] = ()
    for _ in range(_MAX_LAYOUT_TRIES):
        objects = tuple(_place(a, rng, geometry) for a in attrs)
        if not _overlap_early(objects, check_frames):
            break
    else:
        logger.debug("no overlap-free layout for %s after %d tries", attrs, _MAX_LAYOUT_TRIES)
    level = int(rng.integers(geometry.background_level[0], geometry.background_level[1] + 1))
    tint = rng.integers(-geometry.background_tint, geometry.background_tint + 1, size=3)
    background = tuple(int(level + t) for t in tint)
    return ClipSpec(objects=objects, background=background)  # type: ignore[arg-type]


def sample_spec(
    rng: np.random.Generator, two_object_prob: float = 0.5, geometry: GeometryConfig | None = None
) -> ClipSpec:
    """A random scene: attributes from ``sample_attrs``, geometry from ``spec_from_attrs``."""
    return spec_from_attrs(sample_attrs(rng, two_object_prob), rng, geometry)


def clip_for(
    caption: str, seed: int, num_frames: int, size: int = 64, geometry: GeometryConfig | None = None
) -> tuple[np.ndarray, ClipSpec]:
    """The clip a caption describes: ``(uint8 [T, size, size, 3], spec)``, deterministic in (caption, seed).

    Raises ValueError when the caption cannot be parsed or describes an impossible scene.
    """
    attrs = parse_caption(caption)
    spec = spec_from_attrs(attrs, np.random.default_rng(seed), geometry)
    return render(spec, num_frames, size), spec
