"""The fixed, seeded prompt-switch sets of ``vidcascade eval``: a reported set and a validation set.

A switch changes the prompt from caption A to caption B at block ``switch_block`` of a video. Five
kinds, each changing one thing of one object (objects map to objects in the order the captions
name them; the other object of a two-object scene is left as it was):

- ``color``: one object gets another colour (never the other object's);
- ``shape``: one object gets another shape;
- ``direction``: a moving object turns by 90 degrees (a reversal is what a bounce does anyway);
- ``still-moving``: a still object starts moving, or a moving one stops;
- ``count``: a second object comes in (one -> two), or the second object leaves (two -> one).

Both captions are independent paraphrases (``world.caption``), as users write them.

Disjoint from training, checkably: a switch is *held out* when a hash of its canonical caption pair
(the attributes before and after, not the wording) falls in ``HELD_OUT_BUCKETS`` of
``HASH_BUCKETS``. Every switch of both sets is held out, and a trainer that samples switches must
reject held-out pairs with ``is_held_out`` (about 1 pair in 8): the eval never runs a switch whose
attribute change was trained on, whatever its wording. The video seeds (the engine's noise) come
from ranges of their own (``SWITCH_SETS``), apart from the eval prompts' (10,000 and 20,000 on).
The two sets share no canonical pair and no seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vidcascade.world import COLORS, MOTIONS, SHAPES, ObjectAttrs, caption, parse_caption
from vidcascade.world.generate import sample_attrs
from vidcascade.world.holdout import canonical_pair, is_held_out

KINDS: tuple[str, ...] = ("color", "shape", "direction", "still-moving", "count")
"""Buckets of the canonical-pair hash reserved for evaluation (1 of 8)."""

SWITCH_SETS: dict[str, tuple[int, int, int]] = {
    # name: (sampling seed, first video seed, switches)
    "reported": (909090, 30_000, 80),
    "validation": (515151, 40_000, 40),
}
"""The reported set (what README and docs quote) and the validation set (for choosing settings)."""

_TWO_OBJECT_PROB = 0.3
"""Share of colour / shape / direction / still-moving switches on two-object scenes (as eval's
prompts); count switches alternate one -> two and two -> one."""
_MAX_TRIES = 10_000
_PERPENDICULAR = {
    "left": ("up", "down"),
    "right": ("up", "down"),
    "up": ("left", "right"),
    "down": ("left", "right"),
}
"""A direction switch turns by 90 degrees: an object that bounced off a wall already moves the
opposite way under the old caption, so a reversal could read as shown without any switch."""


@dataclass(frozen=True)
class SwitchItem:
    """One switch: generate ``before`` with ``seed``, switch to ``after`` at the switch block."""

    kind: str
    before: str
    after: str
    attrs_before: tuple[ObjectAttrs, ...]
    attrs_after: tuple[ObjectAttrs, ...]
    changed: int | None
    """Index (in ``attrs_after``) of the object the switch changes or brings in; None for a
    two -> one switch, whose change is an object leaving."""
    seed: int

    @property
    def kept(self) -> tuple[int, ...]:
        """Indices of the objects (the same in both captions) that the switch leaves as they were."""
        return tuple(
            i for i in range(min(len(self.attrs_before), len(self.attrs_after))) if i != self.changed
        )


def _other(rng: np.random.Generator, options: Sequence[str], exclude: Sequence[str]) -> str:
    choices = [o for o in options if o not in exclude]
    return choices[int(rng.integers(len(choices)))]


def _with(obj: ObjectAttrs, **changes: str) -> ObjectAttrs:
    fields = {"color": obj.color, "shape": obj.shape, "motion": obj.motion, **changes}
    return ObjectAttrs(**fields)  # type: ignore[arg-type]


def _draft(kind: str, index: int, rng: np.random.Generator) -> tuple[list, list, int | None]:
    """(attributes before, after, changed object) for one switch of ``kind``."""
    if kind == "count":
        two_to_one = index % 2 == 1  # alternate within the kind: one -> two, then two -> one
        before = sample_attrs(rng, 1.0 if two_to_one else 0.0)
        if two_to_one:
            return before, before[:1], None
        first = before[0]
        new = ObjectAttrs(
            color=_other(rng, COLORS, [first.color]),  # type: ignore[arg-type]
            shape=SHAPES[int(rng.integers(len(SHAPES)))],  # type: ignore[arg-type]
            motion=MOTIONS[int(rng.integers(len(MOTIONS)))],  # type: ignore[arg-type]
        )
        return before, [first, new], 1
    before = sample_attrs(rng, _TWO_OBJECT_PROB)
    i = int(rng.integers(len(before)))
    obj = before[i]
    if kind == "color":
        new = _with(obj, color=_other(rng, COLORS, [o.color for o in before]))
    elif kind == "shape":
        new = _with(obj, shape=_other(rng, SHAPES, [obj.shape]))
    elif kind == "direction":
        if obj.motion == "still":  # a direction switch needs a moving object
            obj = before[i] = _with(obj, motion=_other(rng, MOTIONS, ["still"]))
        new = _with(obj, motion=_other(rng, _PERPENDICULAR[obj.motion], []))
    elif kind == "still-moving":
        moving = _other(rng, MOTIONS, ["still"])
        if obj.motion == "still":
            new = _with(obj, motion=moving)
        else:
            new = _with(obj, motion="still")
    else:
        raise ValueError(f"unknown switch kind {kind!r}; expected one of {', '.join(KINDS)}")
    after = list(before)
    after[i] = new
    return before, after, i


def _sample_set(name: str, exclude: set[str]) -> list[SwitchItem]:
    sampling_seed, first_seed, n = SWITCH_SETS[name]
    rng = np.random.default_rng(sampling_seed)
    items: list[SwitchItem] = []
    seen = set(exclude)
    per_kind = dict.fromkeys(KINDS, 0)
    tries = 0
    while len(items) < n:
        kind = KINDS[len(items) % len(KINDS)]  # kinds interleave, so any prefix is balanced
        tries += 1
        if tries > _MAX_TRIES:
            raise RuntimeError(f"could not draw {n} distinct held-out switches for {name!r}")
        before, after, changed = _draft(kind, per_kind[kind], rng)
        key = canonical_pair(before, after)
        if key in seen or not is_held_out(before, after):
            continue
        seen.add(key)
        per_kind[kind] += 1
        text_a, text_b = caption(before, rng), caption(after, rng)
        items.append(
            SwitchItem(
                kind=kind,
                before=text_a,
                after=text_b,
                attrs_before=tuple(parse_caption(text_a)),
                attrs_after=tuple(parse_caption(text_b)),
                changed=changed,
                seed=first_seed + len(items),
            )
        )
    return items


def switch_items(switch_set: str = "reported", n: int | None = None) -> list[SwitchItem]:
    """The first ``n`` switches (all when None) of a fixed set; every prefix has the kinds in turn.

    The validation set is drawn after excluding the reported set's canonical pairs.
    """
    if switch_set not in SWITCH_SETS:
        raise ValueError(f"unknown switch set {switch_set!r}; expected one of {sorted(SWITCH_SETS)}")
    total = SWITCH_SETS[switch_set][2]
    if n is not None and not 1 <= n <= total:
        raise ValueError(f"the {switch_set} switch set holds {total} switches, asked for {n}")
    reported = _sample_set("reported", set())
    if switch_set == "reported":
        items = reported
    else:
        items = _sample_set(switch_set, {canonical_pair(i.attrs_before, i.attrs_after) for i in reported})
    return items if n is None else items[:n]
