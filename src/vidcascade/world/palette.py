"""The closed vocabulary of the synthetic world: colours, shapes and motions, and one object's attributes.

Everything else in ``world`` (rendering, captions, parsing) and the detectors in ``eval`` refer to
these canonical names; synonyms live in ``vocab.py`` and never leave the caption layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColorName = Literal["red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange"]
ShapeName = Literal["circle", "square", "triangle"]
MotionName = Literal["left", "right", "up", "down", "still"]

# Saturated, mutually distant RGB values on a dark background; the closest pair (yellow/orange)
# is still ~70 levels apart, which is what the detectors' colour matching relies on.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "magenta": (210, 60, 200),
    "cyan": (40, 200, 210),
    "white": (235, 235, 235),
    "orange": (240, 140, 30),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")

# Unit direction (dx, dy) in image coordinates: x grows to the right, y grows downwards.
MOTION_DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}

# The background is dark so that every object colour stands out; renderers and tests check this bound.
MAX_BACKGROUND_LEVEL = 40


def check_name(kind: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``value`` and the allowed names when ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class ObjectAttrs:
    """What a caption says about one object: canonical colour, shape and motion names."""

    color: ColorName
    """One of ``COLORS``."""
    shape: ShapeName
    """One of ``SHAPES``."""
    motion: MotionName
    """One of ``MOTIONS``; ``still`` means the object never moves."""

    def __post_init__(self) -> None:
        check_name("colour", self.color, COLORS)
        check_name("shape", self.shape, SHAPES)
        check_name("motion", self.motion, MOTIONS)
