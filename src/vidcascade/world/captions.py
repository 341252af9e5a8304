"""Caption generation: a random paraphrase of a scene, or its one canonical wording.

Every template names each object's colour before its shape and motion, and puts a connective
between objects, which is the structure ``parse_caption`` relies on to read captions back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidcascade.world.palette import ObjectAttrs
from vidcascade.world.render import ClipSpec
from vidcascade.world.vocab import CANONICAL_MOTION, COLOR_WORDS, MOTION_PHRASES, SHAPE_WORDS

# Placeholders: {np} "a small red circle", {the} "the red circle", {bare} "red circle",
# {ing} "moving right" (participle), {fin} "moves right" (finite verb). Suffix 1/2 = object index.
ONE_OBJECT_TEMPLATES: tuple[str, ...] = (
    "{np} {ing}",
    "{the} {fin}",
    "{np} is {ing}",
    "there is {np} {ing}",
    "a video of {np} {ing}",
    "{bare} {ing}",
    "{np}, {ing}",
    "on a dark background, {np} {ing}",
    "a clip where {the} {fin}",
)
TWO_OBJECT_TEMPLATES: tuple[str, ...] = (
    "{np1} {ing1} and {np2} {ing2}",
    "{the1} {fin1} while {the2} {fin2}",
    "{the1} {fin1}, and {the2} {fin2}",
    "{the1} {fin1} as {the2} {fin2}",
    "{np1} {ing1}, together with {np2} {ing2}",
    "two shapes: {np1} {ing1} and {np2} {ing2}",
    "{np1} {ing1} while {the2} {fin2}",
)
# Size words carry no meaning in this world (all objects are small); they only vary the wording.
ADJECTIVES: tuple[str, ...] = ("", "", "small ", "little ")


def _attrs_of(scene: ClipSpec | Sequence[ObjectAttrs]) -> list[ObjectAttrs]:
    attrs = scene.attrs if isinstance(scene, ClipSpec) else list(scene)
    if not 1 <= len(attrs) <= 2:
        raise ValueError(f"captions describe 1 or 2 objects, got {len(attrs)}")
    return attrs


def _article(next_word: str) -> str:
    return "an" if next_word[:1] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_fields(attrs: ObjectAttrs, rng: np.random.Generator) -> dict[str, str]:
    """The template fields describing one object, with randomly chosen synonyms."""
    color = _pick(rng, COLOR_WORDS[attrs.color])
    shape = _pick(rng, SHAPE_WORDS[attrs.shape])
    phrases = MOTION_PHRASES[attrs.motion]
    ing, fin = phrases[int(rng.integers(len(phrases)))]
    adjective = _pick(rng, ADJECTIVES)
    described = f"{adjective}{color} {shape}"
    return {
        "np": f"{_article(described)} {described}",
        "the": f"the {color} {shape}",
        "bare": f"{color} {shape}",
        "ing": ing,
        "fin": fin,
    }


def caption(scene: ClipSpec | Sequence[ObjectAttrs], rng: np.random.Generator) -> str:
    """A random paraphrase of ``scene`` (a spec or its objects' attributes), objects in draw order."""
    attrs = _attrs_of(scene)
    if len(attrs) == 1:
        text = _pick(rng, ONE_OBJECT_TEMPLATES).format(**_object_fields(attrs[0], rng))
    else:
        fields = {}
        for index, obj in enumerate(attrs, start=1):
            fields.update({f"{key}{index}": value for key, value in _object_fields(obj, rng).items()})
        text = _pick(rng, TWO_OBJECT_TEMPLATES).format(**fields)
    # Casing and a full stop vary too, so that a text encoder does not see one rigid surface form.
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        text += "."
    return text


def canonical_caption(scene: ClipSpec | Sequence[ObjectAttrs]) -> str:
    """The plain wording, e.g. "a red circle moving right and an orange square staying still"."""
    parts = []
    for obj in _attrs_of(scene):
        described = f"{obj.color} {obj.shape}"
        parts.append(f"{_article(described)} {described} {CANONICAL_MOTION[obj.motion]}")
    return " and ".join(parts)
