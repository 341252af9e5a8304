"""Ground-truth switch clips for the switch metrics' tests, made of two rendered clips: caption A's
scene up to the switch, then caption B's scene, its objects starting where A's were."""

from __future__ import annotations

import numpy as np

from vidcascade.eval.switch_set import SwitchItem
from vidcascade.world import ClipSpec, ObjectSpec, object_centers, render, spec_from_attrs
from vidcascade.world.generate import box_overlaps

SPEED = 2 / 64


def _continued(obj: ObjectSpec, attrs, frame: int) -> ObjectSpec:
    center = object_centers(obj, frame + 1)[-1]
    speed = 0.0 if attrs.motion == "still" else (obj.speed or SPEED)
    return ObjectSpec(
        attrs=attrs, center=(float(center[0]), float(center[1])), half_size=obj.half_size, speed=speed
    )


def render_switch(
    item: SwitchItem, blocks: int, switch_block: int, fpb: int = 3, size: int = 64
) -> np.ndarray:
    """uint8 [blocks * fpb, size, size, 3]: A's scene, then B's from frame switch_block * fpb."""
    rng = np.random.default_rng(item.seed)
    a = spec_from_attrs(item.attrs_before, rng)
    k = switch_block * fpb
    objects = [_continued(o, attrs, k) for o, attrs in zip(a.objects, item.attrs_after, strict=False)]
    if len(item.attrs_after) > len(objects):  # one -> two: the new object somewhere free
        for _ in range(100):
            new = spec_from_attrs(item.attrs_after[len(objects) :], rng).objects[0]
            if not box_overlaps([objects[0], new], blocks * fpb - k).any():
                break
        objects.append(new)
    b = ClipSpec(objects=tuple(objects), background=a.background)
    return np.concatenate([render(a, k, size), render(b, blocks * fpb - k, size)])
