"""Random prompt switches for a scene: kind, block, caption B's objects and their geometry.

``sample_switch`` draws colour, shape, direction, still <-> moving and one <-> two object
switches (and pairs of attribute changes) whose after-switch scene is clear: every moving object
has room to travel its named direction and the objects' boxes stay apart (``switch_is_clear``),
so the detectors read caption B there as they read a plain clip's caption in its first frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vidcascade.world.generate import GeometryConfig
from vidcascade.world.holdout import is_held_out
from vidcascade.world.palette import COLORS, MOTION_DIRECTIONS, MOTIONS, SHAPES, ObjectAttrs
from vidcascade.world.render import ClipSpec, object_centers
from vidcascade.world.switch import FRAMES_PER_BLOCK, SWITCH_KINDS, Switch, check_switch, tracks

_ATTRIBUTE_KINDS = ("color", "shape", "direction", "still")
_MAX_TRIES = 200


@dataclass(frozen=True)
class SwitchConfig:
    """What ``sample_switch`` draws."""

    kind_probs: tuple[float, ...] = (0.25, 0.2, 0.2, 0.15, 0.2)
    """Probabilities of ``SWITCH_KINDS`` (colour, shape, direction, still, count)."""
    combo_prob: float = 0.25
    """Share of attribute switches that change a second attribute of the same object too."""
    blocks: tuple[int, int] = (1, 15)
    """Range (inclusive) of the switch block k."""
    geometry: GeometryConfig = GeometryConfig()

    def __post_init__(self) -> None:
        if len(self.kind_probs) != len(SWITCH_KINDS):
            raise ValueError(f"kind_probs needs {len(SWITCH_KINDS)} entries, got {self.kind_probs}")
        if min(self.kind_probs) < 0 or abs(sum(self.kind_probs) - 1.0) > 1e-6:
            raise ValueError(f"kind_probs must be >= 0 and sum to 1, got {self.kind_probs}")
        if not 0.0 <= self.combo_prob <= 1.0:
            raise ValueError(f"combo_prob must be in [0, 1], got {self.combo_prob}")
        if not 1 <= self.blocks[0] <= self.blocks[1]:
            raise ValueError(f"blocks must satisfy 1 <= lo <= hi, got {self.blocks}")


def _room(p: float, half: float, direction: int) -> float:
    return (1.0 - half - p) if direction > 0 else (p - half)


def _speed_for(
    rng: np.random.Generator, motion: str, p: np.ndarray, half: float, geometry: GeometryConfig
) -> float | None:
    """A speed leaving ``run_frames`` of travel from p in ``motion``'s direction; None: no room."""
    if motion == "still":
        return 0.0
    d = MOTION_DIRECTIONS[motion]
    axis = 0 if d[0] else 1
    lo, hi = geometry.speed_range
    top = min(hi, _room(float(p[axis]), half, d[axis]) / max(geometry.run_frames, 1))
    return float(rng.uniform(lo, top)) if top >= lo else None


def build_switch(
    spec: ClipSpec,
    after: Sequence[ObjectAttrs],
    block: int,
    rng: np.random.Generator,
    geometry: GeometryConfig | None = None,
) -> Switch | None:
    """The geometry of a switch to ``after`` at ``block``: speeds of changed motions (leaving room
    to travel ``run_frames``), an entering object's size and place. None where a new motion has
    no room. Does not check the after-switch scene (``switch_is_clear`` does)."""
    geometry = geometry or GeometryConfig()
    t0 = block * FRAMES_PER_BLOCK
    speeds, entry, entry_half = [], None, 0.0
    for i, new in enumerate(after):
        if i < len(spec.objects):
            old = spec.objects[i]
            if new.motion == old.attrs.motion:
                speeds.append(old.speed)
                continue
            p = object_centers(old, t0)[-1]
            speed = _speed_for(rng, new.motion, p, old.half_size, geometry)
        else:
            entry_half = float(rng.uniform(*geometry.half_size_range))
            d = MOTION_DIRECTIONS[new.motion]
            if new.motion == "still":
                side = int(rng.integers(4))
                axis, sign = side // 2, (1 if side % 2 else -1)
            else:
                axis, sign = (0 if d[0] else 1), (d[0] or d[1])
            c = [float(rng.uniform(entry_half, 1.0 - entry_half)) for _ in range(2)]
            c[axis] = entry_half if sign > 0 else 1.0 - entry_half  # touches the edge it came in by
            entry = (c[0], c[1])
            speed = 0.0 if new.motion == "still" else float(rng.uniform(*geometry.speed_range))
        if speed is None:
            return None
        speeds.append(speed)
    sw = Switch(block, tuple(after), tuple(speeds), entry, entry_half)
    check_switch(spec, sw)
    return sw


def switch_is_clear(spec: ClipSpec, switch: Switch, geometry: GeometryConfig | None = None) -> bool:
    """Whether the after-switch scene reads as caption B: every moving object travels its named
    direction for ``run_frames`` frames from the switch (an entering one from block k + 1), and
    the objects' boxes stay apart from the switch until ``run_frames`` frames after block k."""
    geometry = geometry or GeometryConfig()
    run, fpb, t0 = max(geometry.run_frames, 1), switch.frames_per_block, switch.start_frame
    end = t0 + fpb + run + 1
    trs = tracks(spec, switch, end)
    for i, new in enumerate(switch.after):
        if new.motion == "still":
            continue
        first = t0 - 1 if i < len(spec.objects) else t0 + fpb
        d = np.asarray(MOTION_DIRECTIONS[new.motion], dtype=np.float64)
        steps = np.diff(trs[i].centers[first : first + run + 1], axis=0) @ d  # along the direction
        if not (steps > 0).all():
            return False
    if len(trs) == 2:
        both = trs[0].visible & trs[1].visible
        gap = np.abs(trs[0].centers - trs[1].centers) - (trs[0].half + trs[1].half)  # [T, 2]
        apart = (gap > 0.0).any(axis=1)
        if not (apart | ~both)[t0:].all():
            return False
    return True


def _other(rng: np.random.Generator, options: Sequence[str], current: str) -> str:
    rest = [o for o in options if o != current]
    return rest[int(rng.integers(len(rest)))]


def _changed(rng: np.random.Generator, obj: ObjectAttrs, kind: str, taken: set[str]) -> ObjectAttrs | None:
    """obj with one attribute changed by ``kind``; None when the kind does not apply."""
    if kind == "color":
        free = [c for c in COLORS if c not in taken]
        return ObjectAttrs(free[int(rng.integers(len(free)))], obj.shape, obj.motion)  # type: ignore[arg-type]
    if kind == "shape":
        return ObjectAttrs(obj.color, _other(rng, SHAPES, obj.shape), obj.motion)  # type: ignore[arg-type]
    if kind == "direction":
        if obj.motion == "still":
            return None
        return ObjectAttrs(obj.color, obj.shape, _other(rng, MOTIONS[:4], obj.motion))  # type: ignore[arg-type]
    moving = [m for m in MOTIONS if m != "still"]
    motion = moving[int(rng.integers(len(moving)))] if obj.motion == "still" else "still"
    return ObjectAttrs(obj.color, obj.shape, motion)  # type: ignore[arg-type]


def _applies(kind: str, attrs: Sequence[ObjectAttrs]) -> bool:
    """Whether a switch of ``kind`` can change one of the objects (direction: a moving one)."""
    return kind != "direction" or any(o.motion != "still" for o in attrs)


def sample_after(
    rng: np.random.Generator, spec: ClipSpec, config: SwitchConfig, kind: str | None = None
) -> tuple[str, list[ObjectAttrs]]:
    """A random switch kind ("color", "color+shape", "count", ...) and B's objects for ``spec``;
    ``kind`` given: a switch of that (first) kind, which must apply (``_applies``)."""
    attrs = list(spec.attrs)
    taken = {o.color for o in attrs}
    while True:
        if kind is None or not _applies(kind, attrs):
            kind = SWITCH_KINDS[int(rng.choice(len(SWITCH_KINDS), p=config.kind_probs))]
        if kind == "count":
            if len(attrs) == 2:
                return "count", attrs[:1]
            free = [c for c in COLORS if c not in taken]
            new = ObjectAttrs(
                free[int(rng.integers(len(free)))],  # type: ignore[arg-type]
                SHAPES[int(rng.integers(len(SHAPES)))],  # type: ignore[arg-type]
                MOTIONS[int(rng.integers(len(MOTIONS)))],  # type: ignore[arg-type]
            )
            return "count", [*attrs, new]
        i = int(rng.integers(len(attrs)))
        changed = _changed(rng, attrs[i], kind, taken)
        if changed is None:
            continue
        kinds = [kind]
        if rng.random() < config.combo_prob:
            second = _ATTRIBUTE_KINDS[int(rng.integers(len(_ATTRIBUTE_KINDS)))]
            motion_pair = {kind, second} == {"direction", "still"}
            if second != kind and not motion_pair:
                again = _changed(rng, changed, second, taken)
                if again is not None:
                    changed, kinds = again, [kind, second]
        attrs[i] = changed
        return "+".join(sorted(kinds, key=SWITCH_KINDS.index)), attrs


def sample_switch(
    spec: ClipSpec, rng: np.random.Generator, config: SwitchConfig | None = None
) -> tuple[str, Switch] | None:
    """A random, clear switch for ``spec`` (its kind and the ``Switch``): the kind once, then block
    k in ``config.blocks`` and B's objects drawn until ``switch_is_clear``; None if no draw is."""
    config = config or SwitchConfig()
    # The kind is drawn once: redrawing it with the block would favour the kinds that are clear
    # more often (stopping an object frees it from needing room), not the configured mix.
    first = None
    while first is None or not _applies(first, spec.attrs):
        first = SWITCH_KINDS[int(rng.choice(len(SWITCH_KINDS), p=config.kind_probs))]
    for _ in range(_MAX_TRIES):
        block = int(rng.integers(config.blocks[0], config.blocks[1] + 1))
        kind, after = sample_after(rng, spec, config, first)
        sw = build_switch(spec, after, block, rng, config.geometry)
        # Held-out pairs belong to the eval's switch sets (world/holdout.py): never trained on.
        if sw is None or is_held_out(spec.attrs, sw.after):
            continue
        if switch_is_clear(spec, sw, config.geometry):
            return kind, sw
    return None
