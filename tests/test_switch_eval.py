"""The generated switch sets, the per-block switch reading and the extra-object count, on clips the
world renders (ground truth): a switch made of caption A's clip then caption B's must read as shown
at once, a clip that never switches must not, and a clean clip must show no extra object."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from _switch_clips import render_switch
from vidcascade.eval.detectors import connected_components
from vidcascade.eval.extra_objects import extra_object_blocks, objects_per_frame, shows_extra_object
from vidcascade.eval.quality import PROMPT_SETS, eval_items
from vidcascade.eval.switch_check import summarize
from vidcascade.eval.switch_metrics import score_switch
from vidcascade.eval.switch_set import KINDS, SWITCH_SETS, canonical_pair, is_held_out, switch_items
from vidcascade.world import (
    PALETTE,
    ClipSpec,
    ObjectAttrs,
    ObjectSpec,
    parse_caption,
    render,
    spec_from_attrs,
)
from vidcascade.world.generate import sample_attrs
from vidcascade.world.render import shape_mask

FPB, BLOCKS, K = 3, 12, 6


def _keys(items) -> set[str]:
    return {canonical_pair(i.attrs_before, i.attrs_after) for i in items}


def test_switch_sets_are_fixed_balanced_and_disjoint() -> None:
    reported, validation = switch_items("reported"), switch_items("validation")
    assert reported == switch_items("reported") and len(reported) >= 64 and len(validation) >= 32
    assert switch_items("reported", 10) == reported[:10]
    for items in (reported, validation):
        assert [i.kind for i in items[: len(KINDS)]] == list(KINDS)  # every prefix cycles the kinds
        assert {i.kind: sum(j.kind == i.kind for j in items) for i in items} == dict.fromkeys(
            KINDS, len(items) // len(KINDS)
        )
        assert len(_keys(items)) == len(items)
        for i in items:
            assert tuple(parse_caption(i.before)) == i.attrs_before
            assert tuple(parse_caption(i.after)) == i.attrs_after
            assert i.attrs_before != i.attrs_after and is_held_out(i.attrs_before, i.attrs_after)
    # Paraphrased on both sides: most captions are not the canonical wording.
    assert (
        sum(i.before != canonical_pair(i.attrs_before, i.attrs_after).split(" -> ")[0] for i in reported) > 60
    )
    assert not _keys(reported) & _keys(validation)
    seeds = [{i.seed for i in s} for s in (reported, validation)]
    assert not seeds[0] & seeds[1]
    for name in PROMPT_SETS:  # apart from the eval prompts' video seeds
        assert not {it.seed for it in eval_items(64, prompt_set=name)} & (seeds[0] | seeds[1])
    with pytest.raises(ValueError, match="the reported switch set holds 80 switches, asked for 81"):
        switch_items("reported", 81)


def test_held_out_pairs_are_about_one_in_eight() -> None:
    # What a trainer's switch sampler rejects: a fixed share of pairs, whatever the wording.
    rng = np.random.default_rng(0)
    pairs = [(sample_attrs(rng, 0.3), sample_attrs(rng, 0.3)) for _ in range(4000)]
    share = np.mean([is_held_out(a, b) for a, b in pairs])
    assert 0.10 < share < 0.15
    a, b = pairs[0]
    assert is_held_out(a, b) == is_held_out(list(a), list(b))  # depends on attributes only
    assert SWITCH_SETS["reported"][2] >= 64


@pytest.mark.parametrize("delay", [0, 1, 3])  # last_before: any block before the clip switches
def test_ground_truth_switches_read_with_their_delay(delay: int) -> None:
    # The first 3 switches of each kind; the clip switches ``delay`` blocks after the switch block.
    items = switch_items("reported", 15)
    scores = []
    for it in items:
        frames = render_switch(it, BLOCKS, K + delay)
        scores.append(score_switch(frames, FPB, it, K, last_before=K - 1 - delay))
    assert [s["blocks_to_show"] for s in scores] == [delay] * len(items)
    assert all(s["before_shown"] and not s["extra_object"] for s in scores)
    assert all(
        s["kept_after"] == 1.0 and s["kept_before"] == 1.0 for s in scores if s["kept_after"] is not None
    )
    row = summarize(scores, items)
    assert row["shown_within_1"] == (1.0 if delay <= 1 else 0.0)
    assert row["shown_within_2"] == (1.0 if delay <= 2 else 0.0)
    assert row["mean_blocks_to_show"] == delay and row["never_shown"] == 0.0
    assert set(row["by_kind"]) == set(KINDS)


def test_a_clip_that_never_switches_never_shows_the_new_attributes() -> None:
    items = switch_items("reported", 15)
    for it in items:
        frames = render(spec_from_attrs(it.attrs_before, np.random.default_rng(it.seed)), BLOCKS * FPB)
        assert score_switch(frames, FPB, it, K)["blocks_to_show"] is None, it


def test_a_kept_object_that_changes_is_caught() -> None:
    # A two-object colour switch whose other object also changes shape: kept_after drops to 0.
    it = next(i for i in switch_items("reported") if i.kind == "color" and i.kept)
    other = it.kept[0]
    o = it.attrs_after[other]
    new_shape = next(s for s in ("circle", "square", "triangle") if s != o.shape)
    after = list(it.attrs_after)
    after[other] = ObjectAttrs(color=o.color, shape=new_shape, motion=o.motion)  # type: ignore[arg-type]
    wrong = dataclasses.replace(it, attrs_after=tuple(after))
    score = score_switch(render_switch(wrong, BLOCKS, K), FPB, it, K)
    assert score["blocks_to_show"] == 0 and score["kept_before"] == 1.0 and score["kept_after"] == 0.0


def _paint(
    frames: np.ndarray, color: str, shape: str, center: tuple[float, float], half: float
) -> np.ndarray:
    """A copy of ``frames`` with a still shape (pixel units) drawn over every frame."""
    t, size = len(frames), frames.shape[1]
    cx, cy = np.full(t, center[0]), np.full(t, center[1])
    out = frames.copy()
    out[shape_mask(shape, cx, cy, half, size)] = PALETTE[color]
    return out


def test_extra_objects_are_flagged_and_clean_clips_are_not() -> None:
    rng = np.random.default_rng(3)
    clean = 0
    for _ in range(40):  # ground truth: one and two objects, never more than named
        attrs = sample_attrs(rng, 0.5)
        frames = render(spec_from_attrs(attrs, rng), 8 * FPB)
        clean += not shows_extra_object(frames, FPB, len(attrs))
    assert clean == 40
    red = [ObjectAttrs("red", "circle", "still")]
    spec = spec_from_attrs(red, np.random.default_rng(0))
    frames = render(spec, 8 * FPB)
    x, y = (c * 64 for c in spec.objects[0].center)
    far = (10.0 if x > 32 else 54.0, 10.0 if y > 32 else 54.0)
    # A second red blob apart, a stray triangle of another colour, a red blob grown onto the circle.
    apart = _paint(frames, "red", "circle", far, 5.0)
    stray = _paint(frames, "green", "triangle", far, 6.0)
    below = (x, y + 64 * spec.objects[0].half_size + 5.0)
    merged = _paint(frames, "red", "circle", below, 6.0)
    for bad in (apart, stray, merged):
        assert shows_extra_object(bad, FPB, 1)
        assert not shows_extra_object(bad, FPB, 2)  # two named: nothing extra
    assert not shows_extra_object(frames, FPB, 1)
    # Per block: the blob only from block 5 on.
    late = np.concatenate([frames[: 5 * FPB], apart[5 * FPB :]])
    assert extra_object_blocks(late, FPB, [1] * 8).tolist() == [False] * 5 + [True] * 3


def test_two_named_objects_overlapping_are_not_an_extra_object() -> None:
    # A blue triangle drawn over a red square cuts it into two pieces (81 px each): pieces that
    # together fit one object are one object.
    half = 10 / 64
    red = ObjectSpec(ObjectAttrs("red", "square", "still"), (0.5, 0.5), half, 0.0)
    blue = ObjectSpec(ObjectAttrs("blue", "triangle", "still"), (0.5, 0.5 - 1 / 64), half + 1 / 64, 0.0)
    frames = render(ClipSpec((red, blue)), 2 * FPB)
    pieces = connected_components((frames == PALETTE["red"]).all(axis=-1))
    assert len(np.unique(pieces[0][pieces[0] >= 0])) == 2
    assert objects_per_frame(frames).tolist() == [2] * 2 * FPB
    assert not shows_extra_object(frames, FPB, 2)
