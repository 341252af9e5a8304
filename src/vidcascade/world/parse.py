"""Free-text caption -> per-object (colour, shape, motion).

The parser finds colour, shape and motion mentions (longest phrase first) and splits the caption
into one clause per object at each colour word that follows a completed mention. It therefore
reads any caption the templates produce, the canonical form, and most free text that names each
object's colour before its shape and motion ("the crimson ball rises while a box rests").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vidcascade.world.palette import COLORS, MOTIONS, SHAPES, ObjectAttrs
from vidcascade.world.vocab import lexicon, tokenize


@dataclass
class _Clause:
    """Mentions gathered for one object while scanning (mutable scratch state, never returned)."""

    color: str | None = None
    shapes: list[str] = field(default_factory=list)
    motions: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)


def _mentions(tokens: list[str]) -> list[tuple[str, str, str]]:
    """(kind, value, matched words) for each lexicon phrase, scanning left to right, longest first."""
    table = lexicon()
    longest = max(len(key) for key in table)
    found: list[tuple[str, str, str]] = []
    i = 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            hit = table.get(tuple(tokens[i : i + n]))
            if hit is not None:
                found.append((hit[0], hit[1], " ".join(tokens[i : i + n])))
                i += n
                break
        else:
            i += 1
    return found


def _clauses(text: str, mentions: list[tuple[str, str, str]]) -> list[_Clause]:
    """Group mentions per object: a colour after a shape or motion starts the next object."""
    clauses = [_Clause()]
    for kind, value, words in mentions:
        current = clauses[-1]
        if kind == "color":
            if current.color is not None and (current.shapes or current.motions):
                current = _Clause()
                clauses.append(current)
            elif current.color not in (None, value):
                raise ValueError(
                    f"cannot parse caption {text!r}: colours {current.color!r} and {value!r} "
                    "describe the same object"
                )
            current.color = value
        elif kind == "shape":
            current.shapes.append(value)
        else:
            current.motions.append(value)
        current.words.append(words)
    return clauses


def _single(
    text: str, index: int, clause: _Clause, kind: str, values: list[str], allowed: tuple[str, ...]
) -> str:
    """The one value a clause names for ``kind``; repeats of the same value are fine."""
    where = f"object {index + 1} ({' '.join(clause.words) or 'no recognised words'})"
    distinct = sorted(set(values))
    if not distinct:
        raise ValueError(
            f"cannot parse caption {text!r}: {where} has no {kind} word; known {kind}s: {', '.join(allowed)}"
        )
    if len(distinct) > 1:
        raise ValueError(f"cannot parse caption {text!r}: {where} names several {kind}s: {distinct}")
    return distinct[0]


def parse_caption(text: str) -> list[ObjectAttrs]:
    """Objects described by ``text`` in order of mention; ValueError says what was not understood."""
    mentions = _mentions(tokenize(text))
    if not any(kind == "color" for kind, _, _ in mentions):
        raise ValueError(
            f"cannot parse caption {text!r}: no colour word found; known colours: {', '.join(COLORS)}"
        )
    objects = []
    for index, clause in enumerate(_clauses(text, mentions)):
        color = clause.color
        assert color is not None  # the first clause takes the first colour; later ones start with one
        shape = _single(text, index, clause, "shape", clause.shapes, SHAPES)
        motion = _single(text, index, clause, "motion", clause.motions, MOTIONS)
        objects.append(ObjectAttrs(color=color, shape=shape, motion=motion))  # type: ignore[arg-type]
    return objects
