"""Synonyms and paraphrases: the words captions are written with and the parser reads back.

Invariant (checked by tests): every phrase a caption can contain for one attribute value is
recognised by the parser as that value, and mentions nothing that belongs to another value.
"""

from __future__ import annotations

import functools
import re

# The canonical name comes first; caption generation draws from the whole tuple.
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "ruby"),
    "green": ("green", "emerald", "jade", "lime"),
    "blue": ("blue", "cobalt", "sapphire", "ultramarine"),
    "yellow": ("yellow", "golden", "lemon", "gold"),
    "magenta": ("magenta", "fuchsia", "pink", "purple"),
    "cyan": ("cyan", "turquoise", "teal", "aqua"),
    "white": ("white", "ivory", "snowy", "pearl"),
    "orange": ("orange", "amber", "tangerine"),
}

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball", "round dot", "disk", "orb"),
    "square": ("square", "box", "block", "tile"),
    "triangle": ("triangle", "wedge", "three-sided shape", "pyramid"),
}

# (participle, finite verb) pairs: "a red circle moving right" / "the red circle moves right".
MOTION_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "right": (
        ("moving right", "moves right"),
        ("drifting to the right", "drifts to the right"),
        ("sliding rightwards", "slides rightwards"),
        ("heading right", "heads right"),
        ("travelling right", "travels right"),
        ("gliding to the right", "glides to the right"),
    ),
    "left": (
        ("moving left", "moves left"),
        ("drifting to the left", "drifts to the left"),
        ("sliding leftwards", "slides leftwards"),
        ("heading left", "heads left"),
        ("travelling left", "travels left"),
        ("gliding to the left", "glides to the left"),
    ),
    "up": (
        ("moving up", "moves up"),
        ("rising", "rises"),
        ("floating upwards", "floats upwards"),
        ("sliding up", "slides up"),
        ("heading up", "heads up"),
        ("climbing upward", "climbs upward"),
    ),
    "down": (
        ("moving down", "moves down"),
        ("falling", "falls"),
        ("sinking downwards", "sinks downwards"),
        ("sliding down", "slides down"),
        ("heading down", "heads down"),
        ("dropping down", "drops down"),
    ),
    "still": (
        ("staying still", "stays still"),
        ("resting", "rests"),
        ("not moving", "does not move"),
        ("sitting still", "sits still"),
        ("motionless", "remains motionless"),
        ("standing still", "stands still"),
        ("at rest", "is at rest"),
    ),
}

CANONICAL_MOTION: dict[str, str] = {
    "right": "moving right",
    "left": "moving left",
    "up": "moving up",
    "down": "moving down",
    "still": "staying still",
}

# What the parser looks for in a motion phrase: the direction-bearing words, not the verbs of
# manner ("drifting", "sliding") that all directions share.
# fmt: off
MOTION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "right": ("right", "rightward", "rightwards", "east", "eastward", "eastwards"),
    "left": ("left", "leftward", "leftwards", "west", "westward", "westwards"),
    "up": (
        "up", "upward", "upwards", "rising", "rises", "rise", "climbing", "climbs", "climb",
        "ascending", "ascends", "ascend", "north", "northward", "northwards",
    ),
    "down": (
        "down", "downward", "downwards", "falling", "falls", "fall", "sinking", "sinks", "sink",
        "dropping", "drops", "drop", "descending", "descends", "descend", "south", "southward",
        "southwards",
    ),
    "still": (
        "still", "motionless", "stationary", "static", "immobile", "unmoving", "resting", "rests",
        "rest", "idle", "frozen", "not moving", "not move", "doesn't move", "isn't moving",
        "stays put", "staying put", "in place",
    ),
}
# fmt: on

# Free-text synonyms the parser accepts beyond those captions are generated with.
EXTRA_COLOR_WORDS: dict[str, tuple[str, ...]] = {"magenta": ("violet",), "white": ("snow",)}
EXTRA_SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("dot", "sphere", "round"),
    "square": ("cube", "rectangle"),
    "triangle": ("arrowhead",),
}

_WORD = re.compile(r"[a-z]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphabetic tokens; punctuation and apostrophes split words ("doesn't" -> doesn, t)."""
    return _WORD.findall(text.lower())


@functools.cache
def lexicon() -> dict[tuple[str, ...], tuple[str, str]]:
    """Token sequence -> (kind, canonical value), kind in {"color", "shape", "motion"}."""
    table: dict[tuple[str, ...], tuple[str, str]] = {}
    groups = (
        ("color", COLOR_WORDS),
        ("color", EXTRA_COLOR_WORDS),
        ("shape", SHAPE_WORDS),
        ("shape", EXTRA_SHAPE_WORDS),
        ("motion", MOTION_KEYWORDS),
    )
    for kind, words in groups:
        for value, phrases in words.items():
            for phrase in phrases:
                key = tuple(tokenize(phrase))
                if table.get(key, (kind, value)) != (kind, value):
                    raise ValueError(f"phrase {phrase!r} maps to both {table[key]} and {(kind, value)}")
                table[key] = (kind, value)
    return table
