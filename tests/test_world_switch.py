"""Prompt switches in the world: the after-switch scene reads back as caption B, transitions are
exact and deterministic."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from vidcascade.eval.detectors import aggregate_matches, detect_objects, match_attributes
from vidcascade.world import (
    PALETTE,
    ClipSpec,
    ObjectAttrs,
    ObjectSpec,
    Switch,
    SwitchConfig,
    build_switch,
    render,
    render_switch,
    sample_spec,
    sample_switch,
)
from vidcascade.world.switch import transition

NUM_SWITCHES = 300


def _draw(rng: np.random.Generator, config: SwitchConfig) -> tuple[ClipSpec, str, Switch]:
    while True:
        spec = sample_spec(rng, two_object_prob=0.5)
        got = sample_switch(spec, rng, config)
        if got is not None:
            return spec, *got


@pytest.fixture(scope="module")
def switched() -> list[tuple[ClipSpec, str, Switch, int]]:
    rng = np.random.default_rng(4321)
    config = SwitchConfig(blocks=(1, 11))
    out = []
    for _ in range(NUM_SWITCHES):
        spec, kind, sw = _draw(rng, config)
        out.append((spec, kind, sw, int(rng.integers(12, 25))))
    return out


def test_detectors_read_the_after_switch_scene(switched) -> None:
    kinds = collections.Counter()
    matches = []
    for spec, kind, sw, length in switched:
        for k in kind.split("+"):
            kinds[k] += 1
        first = (sw.block + 1) * sw.frames_per_block  # the block after the switch block
        frames = render_switch(spec, sw, first + length)
        matches.append(match_attributes(detect_objects(frames[first:]), sw.after))
    acc = aggregate_matches(matches)
    assert set(kinds) == {"color", "shape", "direction", "still", "count"}, kinds
    assert min(kinds.values()) >= 20, kinds
    for field in ("color", "shape", "motion", "count"):
        assert acc[field] >= 0.98, (field, acc)


def test_before_the_switch_is_the_plain_clip_and_after_is_exact(switched) -> None:
    for spec, _, sw, _ in switched[:60]:
        t = sw.start_frame + 12
        frames = render_switch(spec, sw, t)
        np.testing.assert_array_equal(frames[: sw.start_frame], render(spec, sw.start_frame))
        # From block k + 1 every object pixel holds exactly its new palette colour.
        after = frames[sw.start_frame + sw.frames_per_block :].reshape(-1, 3)
        allowed = {tuple(spec.background)} | {PALETTE[o.color] for o in sw.after}
        assert {tuple(int(c) for c in px) for px in np.unique(after, axis=0)} <= allowed


def test_switch_is_deterministic() -> None:
    a = [_draw(np.random.default_rng(11), SwitchConfig()) for _ in range(3)]
    b = [_draw(np.random.default_rng(11), SwitchConfig()) for _ in range(3)]
    for (sa, ka, wa), (sb, kb, wb) in zip(a, b, strict=True):
        assert (sa, ka, wa) == (sb, kb, wb)
        np.testing.assert_array_equal(render_switch(sa, wa, 48), render_switch(sb, wb, 48))


def _one(motion: str = "still", shape: str = "circle", color: str = "red", x: float = 0.5) -> ClipSpec:
    obj = ObjectSpec(ObjectAttrs(color, shape, motion), (x, 0.5), 0.15, 0.0 if motion == "still" else 0.02)
    return ClipSpec((obj,))


def test_colour_blends_over_the_switch_block() -> None:
    spec = _one()
    sw = build_switch(spec, [ObjectAttrs("blue", "circle", "still")], 2, np.random.default_rng(0))
    assert sw is not None
    np.testing.assert_allclose(transition(10, sw), [0, 0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1.0])
    frames = render_switch(spec, sw, 10)
    centre = frames[:, 32, 32].astype(float)  # the still object's centre pixel
    red, blue = np.array(PALETTE["red"], float), np.array(PALETTE["blue"], float)
    for f, a in enumerate(transition(10, sw)):
        np.testing.assert_allclose(centre[f], np.round((1 - a) * red + a * blue), atol=0.5)


def test_shape_morphs_in_place_as_one_object() -> None:
    spec = _one(shape="circle")
    sw = build_switch(spec, [ObjectAttrs("red", "square", "still")], 1, np.random.default_rng(0))
    frames = render_switch(spec, sw, 8)
    area = (frames == np.array(PALETTE["red"], np.uint8)).all(-1).sum((1, 2))
    assert area[0] < area[3] < area[4] < area[5] < area[6]  # circle -> square grows steadily
    for f in range(8):
        found = detect_objects(frames[f : f + 1])
        assert len(found) == 1 and abs(found[0].centroids[0] - 32).max() < 0.6


def test_new_direction_starts_at_the_switch() -> None:
    spec = _one(motion="right", x=0.6)
    sw = build_switch(spec, [ObjectAttrs("red", "circle", "left")], 2, np.random.default_rng(0))
    assert sw is not None
    (found,) = detect_objects(render_switch(spec, sw, 24)[5:])
    assert found.motion == "left"
    assert abs(found.velocity[0] + sw.speeds[0] * 64) < 0.2


def test_second_object_enters_and_leaves_through_an_edge() -> None:
    spec = _one(x=0.5)
    after = [ObjectAttrs("red", "circle", "still"), ObjectAttrs("green", "square", "right")]
    sw = build_switch(spec, after, 2, np.random.default_rng(1))
    frames = render_switch(spec, sw, 24)
    green = (frames == np.array(PALETTE["green"], np.uint8)).all(-1)
    assert not green[:6].any() and green[6].any()
    assert green[6, :, 0].any()  # slides in from the left edge (it moves right)
    assert green[6].sum() < green[7].sum() < green[8].sum() < green[9].sum()
    two = ClipSpec((spec.objects[0], ObjectSpec(after[1], (0.8, 0.2), 0.1, 0.02)))
    gone = build_switch(two, after[:1], 3, np.random.default_rng(2))
    frames = render_switch(two, gone, 16)
    green = (frames == np.array(PALETTE["green"], np.uint8)).all(-1)
    assert green[8].any() and not green[12:].any()


def test_switch_validation() -> None:
    spec = _one()
    with pytest.raises(ValueError, match="block must be >= 1"):
        Switch(0, (ObjectAttrs("red", "circle", "still"),), (0.0,))
    with pytest.raises(ValueError, match="share a colour"):
        two = ClipSpec(
            (spec.objects[0], ObjectSpec(ObjectAttrs("blue", "square", "still"), (0.2, 0.2), 0.1, 0.0))
        )
        render_switch(two, Switch(1, (ObjectAttrs("blue", "circle", "still"), two.attrs[1]), (0.0, 0.0)), 6)
    with pytest.raises(ValueError, match="kind_probs"):
        SwitchConfig(kind_probs=(1.0,))
