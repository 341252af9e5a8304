"""The procedural world: validation, exact rendering, motion and bounces, captions and their parser."""

from __future__ import annotations

import numpy as np
import pytest

from vidcascade.world import (
    COLORS,
    MAX_BACKGROUND_LEVEL,
    MOTIONS,
    PALETTE,
    SHAPES,
    ClipSpec,
    GeometryConfig,
    ObjectAttrs,
    ObjectSpec,
    canonical_caption,
    caption,
    clip_for,
    object_centers,
    parse_caption,
    render,
    sample_attrs,
    sample_spec,
    spec_from_attrs,
)
from vidcascade.world.captions import ONE_OBJECT_TEMPLATES, TWO_OBJECT_TEMPLATES
from vidcascade.world.vocab import COLOR_WORDS, MOTION_PHRASES, SHAPE_WORDS


def _still(color: str, shape: str, center=(0.5, 0.5), half_size=0.15) -> ObjectSpec:
    return ObjectSpec(ObjectAttrs(color, shape, "still"), center=center, half_size=half_size, speed=0.0)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"color": "purple", "shape": "circle", "motion": "left"}, "purple"),
        ({"color": "red", "shape": "hexagon", "motion": "left"}, "hexagon"),
        ({"color": "red", "shape": "circle", "motion": "spinning"}, "spinning"),
    ],
)
def test_object_attrs_reject_unknown_names(kwargs: dict[str, str], bad: str) -> None:
    with pytest.raises(ValueError, match=bad) as info:
        ObjectAttrs(**kwargs)  # type: ignore[arg-type]
    allowed = {"purple": COLORS, "hexagon": SHAPES, "spinning": MOTIONS}[bad]
    assert all(name in str(info.value) for name in allowed)


def test_clip_spec_validation() -> None:
    red, blue = _still("red", "circle", (0.3, 0.3)), _still("blue", "square", (0.7, 0.7))
    with pytest.raises(ValueError, match="different colours"):
        ClipSpec((red, _still("red", "square", (0.7, 0.7))))
    with pytest.raises(ValueError, match="1 to 2 objects"):
        ClipSpec((red, blue, _still("green", "triangle")))
    with pytest.raises(ValueError, match="1 to 2 objects"):
        ClipSpec(())
    with pytest.raises(ValueError, match="background"):
        ClipSpec((red,), background=(10, 41, 10))
    with pytest.raises(ValueError, match="outside the frame"):
        _still("red", "circle", center=(0.05, 0.5), half_size=0.1)
    with pytest.raises(ValueError, match="speed"):
        ObjectSpec(ObjectAttrs("red", "circle", "left"), center=(0.5, 0.5), half_size=0.1, speed=0.0)
    with pytest.raises(ValueError, match="speed"):
        ObjectSpec(ObjectAttrs("red", "circle", "still"), center=(0.5, 0.5), half_size=0.1, speed=0.01)


def test_geometry_config_rejects_infeasible_run() -> None:
    with pytest.raises(ValueError, match="run_frames"):
        GeometryConfig(half_size_range=(0.1, 0.2), speed_range=(0.04, 0.06), run_frames=12)
    with pytest.raises(ValueError, match="background_level"):
        GeometryConfig(background_level=(6, 39), background_tint=4)


# --- rendering --------------------------------------------------------------------------------


def test_render_is_exact_and_background_dark() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        spec = sample_spec(rng, two_object_prob=0.5)
        frames = render(spec, num_frames=16, size=64)
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        allowed = {spec.background} | {PALETTE[o.attrs.color] for o in spec.objects}
        packed = np.unique(frames.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32))
        seen = {(int(p) >> 16, (int(p) >> 8) & 255, int(p) & 255) for p in packed}
        assert seen <= allowed, "no anti-aliasing: only palette and background colours"
        assert max(spec.background) <= MAX_BACKGROUND_LEVEL
        # No overlap in the first run_frames frames: every object is fully visible in frame 0.
        for obj in spec.objects:
            assert np.all(frames[0] == PALETTE[obj.attrs.color], axis=-1).sum() > 0


def test_render_sizes_and_validation() -> None:
    spec = ClipSpec((_still("red", "circle"),))
    for size in (16, 32, 96):
        assert render(spec, 3, size).shape == (3, size, size, 3)
    with pytest.raises(ValueError, match="size"):
        render(spec, 3, 8)
    with pytest.raises(ValueError, match="num_frames"):
        render(spec, 0, 64)


@pytest.mark.parametrize(("shape", "fill"), [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)])
def test_shape_fill_ratio_of_bounding_box(shape: str, fill: float) -> None:
    frame = render(ClipSpec((_still("white", shape, half_size=0.3),)), 1, 128)[0]
    mask = frame.max(axis=-1) > 100
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    assert abs(rows[-1] - rows[0] - (cols[-1] - cols[0])) <= 1, "every shape has a square bounding box"
    assert mask.sum() / box == pytest.approx(fill, abs=0.03)


def test_draw_order_later_object_on_top() -> None:
    bottom, top = _still("red", "square", (0.5, 0.5)), _still("blue", "circle", (0.5, 0.5))
    frame = render(ClipSpec((bottom, top)), 1, 64)[0]
    assert tuple(frame[32, 32]) == PALETTE["blue"]


@pytest.mark.parametrize("motion", MOTIONS)
def test_named_direction_first_then_bounces_forever(motion: str) -> None:
    geometry = GeometryConfig()
    rng = np.random.default_rng(MOTIONS.index(motion))
    for _ in range(30):
        attrs = ObjectAttrs("red", "circle", motion)  # type: ignore[arg-type]
        obj = spec_from_attrs([attrs], rng).objects[0]
        centers = object_centers(obj, 300)  # (T, 2)
        assert np.all(centers >= obj.half_size - 1e-12) and np.all(centers <= 1 - obj.half_size + 1e-12)
        steps = np.diff(centers, axis=0)
        if motion == "still":
            assert np.all(steps == 0)
            continue
        axis = 0 if motion in ("left", "right") else 1
        sign = 1 if motion in ("right", "down") else -1
        run = steps[: geometry.run_frames, axis] * sign
        np.testing.assert_allclose(run, obj.speed, atol=1e-9)
        assert np.all(steps[:, 1 - axis] == 0)
        # Constant speed except on frames that straddle a bounce; the velocity flips at each wall.
        along = steps[:, axis]
        assert np.all(np.abs(along) <= obj.speed + 1e-9)
        assert np.sum(np.abs(np.abs(along) - obj.speed) < 1e-9) > 0.9 * len(along)
        assert np.any(along * sign < 0), "300 frames are long enough to bounce"


def test_long_clip_keeps_objects_inside() -> None:
    frames, spec = clip_for("a white square moving right and a red ball moving up", seed=3, num_frames=240)
    white = np.all(frames == PALETTE["white"], axis=-1).sum(axis=(1, 2))
    assert white.min() > 0.9 * white.max(), "never clipped by the border (red may overlap it)"


def test_clip_for_is_deterministic_and_paraphrase_invariant() -> None:
    a, spec_a = clip_for("a red circle moving right", seed=5, num_frames=12)
    b, _ = clip_for("a red circle moving right", seed=5, num_frames=12)
    c, _ = clip_for("the crimson disc drifts to the right.", seed=5, num_frames=12)
    d, _ = clip_for("a red circle moving right", seed=6, num_frames=12)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, d)
    assert spec_a.attrs == [ObjectAttrs("red", "circle", "right")]
    assert clip_for("a red circle moving right", seed=5, num_frames=12, size=32)[0].shape == (12, 32, 32, 3)
    with pytest.raises(ValueError, match="different colours"):
        clip_for("a red ball moving up and a crimson box resting", seed=0, num_frames=4)


def test_sample_spec_object_counts() -> None:
    rng = np.random.default_rng(1)
    assert all(len(sample_spec(rng, two_object_prob=0.0).objects) == 1 for _ in range(50))
    specs = [sample_spec(rng, two_object_prob=1.0) for _ in range(50)]
    assert all(len(s.objects) == 2 and s.objects[0].attrs.color != s.objects[1].attrs.color for s in specs)
    with pytest.raises(ValueError, match="two_object_prob"):
        sample_attrs(rng, two_object_prob=1.5)


# --- captions and parsing ---------------------------------------------------------------------


def test_canonical_caption() -> None:
    assert canonical_caption([ObjectAttrs("red", "circle", "right")]) == "a red circle moving right"
    two = [ObjectAttrs("orange", "square", "still"), ObjectAttrs("blue", "triangle", "up")]
    assert canonical_caption(two) == "an orange square staying still and a blue triangle moving up"


def test_parse_inverts_random_captions() -> None:
    rng = np.random.default_rng(2)
    texts = set()
    for _ in range(4000):
        attrs = sample_attrs(rng, two_object_prob=0.5)
        text = caption(attrs, rng)
        texts.add(text)
        assert parse_caption(text) == attrs, text
        assert parse_caption(canonical_caption(attrs)) == attrs
    assert len(texts) > 3500, "paraphrases vary"


def test_every_synonym_and_template_parses() -> None:
    """Each vocabulary entry in every template, one dimension varied at a time."""
    base = {"color": "red", "shape": "circle", "motion": "right"}
    cases = []
    for kind, table in (("color", COLOR_WORDS), ("shape", SHAPE_WORDS)):
        for value, words in table.items():
            for word in words:
                cases.append(({**base, kind: value}, {kind: word}))
    for value, phrases in MOTION_PHRASES.items():
        for ing, fin in phrases:
            cases.append(({**base, "motion": value}, {"ing": ing, "fin": fin}))
    other = {"np2": "a green box", "the2": "the green box", "ing2": "resting", "fin2": "rests"}
    other_attrs = ObjectAttrs("green", "square", "still")
    for attrs, words in cases:
        color = words.get("color", attrs["color"])
        shape = words.get("shape", attrs["shape"])
        ing, fin = words.get("ing", "moving " + attrs["motion"]), words.get("fin", "moves " + attrs["motion"])
        one = {"np": f"a {color} {shape}", "the": f"the {color} {shape}", "bare": f"{color} {shape}"}
        fields = {**one, "ing": ing, "fin": fin}
        expected = ObjectAttrs(**attrs)  # type: ignore[arg-type]
        for template in ONE_OBJECT_TEMPLATES:
            text = template.format(**fields)
            assert parse_caption(text) == [expected], text
        numbered = {f"{k}1": v for k, v in fields.items()} | other
        for template in TWO_OBJECT_TEMPLATES:
            text = template.format(**numbered)
            assert parse_caption(text) == [expected, other_attrs], text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red circle moving right", [("red", "circle", "right")]),
        ("a crimson disc drifting to the right", [("red", "circle", "right")]),
        ("the blue square slides up", [("blue", "square", "up")]),
        ("a small green triangle sitting still", [("green", "triangle", "still")]),
        ("an orange box heading left", [("orange", "square", "left")]),
        ("A big violet sphere falling downwards!", [("magenta", "circle", "down")]),
        ("moving west, a teal cube", [("cyan", "square", "left")]),
        (
            "the ivory wedge doesn't move while a golden ball climbs",
            [("white", "triangle", "still"), ("yellow", "circle", "up")],
        ),
        (
            "Scarlet pyramid stays put; an emerald round dot glides east.",
            [("red", "triangle", "still"), ("green", "circle", "right")],
        ),
        ("a red red ball moving left", [("red", "circle", "left")]),
    ],
)
def test_parse_free_text(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert parse_caption(text) == [ObjectAttrs(*e) for e in expected]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("hello world", "no colour word"),
        ("a purple elephant dancing", "no shape word"),
        ("a red ball", "no motion word"),
        ("a red ball moving left and right", "several motions"),
        ("a red blue ball moving left", "colours 'red' and 'blue'"),
        ("a green circle moving up and a cyan square", "object 2 .*no motion word"),
    ],
)
def test_parse_errors_say_what_failed(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as info:
        parse_caption(text)
    assert repr(text) in str(info.value)


def test_caption_accepts_spec_and_rejects_bad_counts() -> None:
    rng = np.random.default_rng(3)
    spec = sample_spec(rng, two_object_prob=1.0)
    assert parse_caption(caption(spec, rng)) == spec.attrs
    with pytest.raises(ValueError, match="1 or 2 objects"):
        caption([], rng)
