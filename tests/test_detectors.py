"""Detectors: accuracy on rendered and perturbed clips, centroids, bounces, occlusion, scoring."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vidcascade.eval.detectors import (
    DetectedObject,
    DetectorConfig,
    aggregate_matches,
    centroids_by_color,
    classify_motion,
    color_masks,
    connected_components,
    detect_objects,
    match_attributes,
)
from vidcascade.world import (
    ClipSpec,
    ObjectAttrs,
    ObjectSpec,
    clip_for,
    object_centers,
    render,
    sample_spec,
)

logger = logging.getLogger(__name__)

NUM_CLIPS = 300


def _box_blur(x: np.ndarray) -> np.ndarray:
    """3x3 box blur of float frames [T, H, W, 3], edges replicated."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    return sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def perturb(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a small generator gets wrong: soft edges, noise (sigma 8 levels), a slight colour shift."""
    x = _box_blur(frames.astype(np.float64))
    x = x * rng.uniform(0.95, 1.05, size=3) + rng.uniform(-10.0, 10.0, size=3)  # per-clip colour jitter
    x = x + rng.normal(0.0, 8.0, size=x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, ClipSpec]]:
    rng = np.random.default_rng(1234)
    out = []
    for _ in range(NUM_CLIPS):
        spec = sample_spec(rng, two_object_prob=0.5)
        out.append((render(spec, int(rng.integers(12, 25)), 64), spec))
    return out


def _accuracy(pairs: list[tuple[np.ndarray, ClipSpec]]) -> dict[str, float]:
    return aggregate_matches(match_attributes(detect_objects(f), spec.attrs) for f, spec in pairs)


def test_accuracy_on_rendered_clips(clips: list[tuple[np.ndarray, ClipSpec]]) -> None:
    acc = _accuracy(clips)
    logger.info("clean detector accuracy over %d clips: %s", NUM_CLIPS, acc)
    assert sum(len(spec.objects) == 2 for _, spec in clips) > NUM_CLIPS // 3
    for field in ("color", "shape", "motion"):
        assert acc[field] >= 0.98, (field, acc)


def test_accuracy_on_perturbed_clips(clips: list[tuple[np.ndarray, ClipSpec]]) -> None:
    rng = np.random.default_rng(99)
    acc = _accuracy([(perturb(f, rng), spec) for f, spec in clips])
    logger.info("perturbed detector accuracy over %d clips: %s", NUM_CLIPS, acc)
    for field in ("color", "shape", "motion"):
        assert acc[field] >= 0.95, (field, acc)


def test_float_frames_match_uint8(clips: list[tuple[np.ndarray, ClipSpec]]) -> None:
    frames, _ = clips[0]
    a, b = detect_objects(frames), detect_objects(frames.astype(np.float32))
    assert [(o.color, o.shape, o.motion) for o in a] == [(o.color, o.shape, o.motion) for o in b]


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_centroids_follow_ground_truth(shape: str) -> None:
    size = 64
    obj = ObjectSpec(ObjectAttrs("cyan", shape, "down"), center=(0.4, 0.3), half_size=0.14, speed=0.03)  # type: ignore[arg-type]
    frames = render(ClipSpec((obj,)), 20, size)
    (found,) = detect_objects(frames)
    truth = object_centers(obj, 20) * size  # (T, 2)
    if shape == "triangle":
        truth[:, 1] += obj.half_size * size / 3  # a triangle's centroid sits a third of the way up
    # Pixel-centre sampling snaps a square's edges to the grid: up to half a pixel of offset.
    np.testing.assert_allclose(found.centroids, truth, atol=0.5 + 1e-6)
    assert (found.color, found.shape, found.motion) == ("cyan", shape, "down")
    assert found.velocity[1] == pytest.approx(0.03 * size, abs=0.1)


def test_bounce_inside_window_keeps_initial_direction() -> None:
    # Starts 5 frames from the right wall: moves right for 5 frames, then left for the rest.
    half, speed = 0.12, 0.04
    obj = ObjectSpec(
        ObjectAttrs("red", "square", "right"), center=(1 - half - 5 * speed, 0.5), half_size=half, speed=speed
    )
    frames = render(ClipSpec((obj,)), 12, 64)
    (found,) = detect_objects(frames)
    assert found.motion == "right"


def test_missing_frames_give_nan_and_keep_motion() -> None:
    frames, spec = clip_for("a yellow triangle moving left", seed=4, num_frames=16)
    frames = frames.copy()
    gone = [0, 3, 4, 9]
    frames[gone] = np.asarray(spec.background, dtype=np.uint8)
    (found,) = detect_objects(frames)
    assert (
        np.isnan(found.centroids[gone]).all() and not np.isnan(np.delete(found.centroids, gone, axis=0)).any()
    )
    assert (found.color, found.shape, found.motion) == ("yellow", "triangle", "left")


def test_overlapping_objects_are_separated_by_colour() -> None:
    under = ObjectSpec(
        ObjectAttrs("orange", "square", "right"), center=(0.35, 0.5), half_size=0.14, speed=0.03
    )
    over = ObjectSpec(ObjectAttrs("yellow", "circle", "still"), center=(0.55, 0.5), half_size=0.12, speed=0.0)
    frames = render(ClipSpec((under, over)), 12, 64)
    rng = np.random.default_rng(0)
    for clip in (frames, perturb(frames, rng)):
        found = {o.color: o for o in detect_objects(clip)}
        assert set(found) == {"orange", "yellow"}
        assert (found["yellow"].shape, found["yellow"].motion) == ("circle", "still")
        assert found["orange"].motion == "right"


def test_blank_and_bad_input() -> None:
    blank = np.full((8, 32, 32, 3), 20, dtype=np.uint8)
    assert detect_objects(blank) == []
    assert centroids_by_color(blank) == {}
    with pytest.raises(ValueError, match="shape"):
        detect_objects(np.zeros((8, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        detect_objects(np.zeros((8, 32, 32, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="purple"):
        color_masks(blank, colors=["purple"])
    with pytest.raises(ValueError, match="window"):
        DetectorConfig(window=1)


def test_centroids_by_color_per_frame() -> None:
    frames, spec = clip_for("a red ball moving up and a blue box resting", seed=1, num_frames=10)
    tracks = centroids_by_color(frames)
    assert set(tracks) == {"red", "blue"}
    assert all(t.shape == (10, 2) for t in tracks.values())
    assert np.ptp(tracks["blue"], axis=0).max() < 1e-9, "a still object's centroid does not move"
    asked = centroids_by_color(frames, colors=["green", "red"])
    assert np.isnan(asked["green"]).all()
    np.testing.assert_array_equal(asked["red"], tracks["red"])


def test_connected_components_labels() -> None:
    mask = np.zeros((2, 6, 6), dtype=bool)
    mask[0, 0:2, 0:2] = True  # a block
    mask[0, 4, 1:6] = True  # a bar
    mask[0, 2:4, 5] = True  # joins the bar from above
    mask[1, 5, 5] = True  # one pixel in the next frame
    labels = connected_components(mask)
    assert labels[0, 0, 0] == labels[0, 1, 1] == 0
    assert labels[0, 2, 5] == labels[0, 4, 1] == 2 * 6 + 5
    assert labels[1, 5, 5] == 36 + 35
    assert (labels[~mask] == -1).all()
    # A long snake, the worst case for label propagation.
    snake = np.zeros((1, 32, 32), dtype=bool)
    snake[0, ::2, :] = True
    snake[0, 1::4, -1] = True
    snake[0, 3::4, 0] = True
    assert len(np.unique(connected_components(snake)[snake])) == 1


def test_speck_is_ignored() -> None:
    frames, _ = clip_for("a green square moving down", seed=2, num_frames=12)
    frames = frames.copy()
    frames[:, 2, 2] = (220, 40, 40)  # a one-pixel red speck in every frame
    assert [o.color for o in detect_objects(frames)] == ["green"]


@pytest.mark.parametrize(
    ("track", "motion"),
    [
        ([[10 + 2 * t, 30] for t in range(12)], "right"),
        ([[30, 40 - 1.5 * t] for t in range(12)], "up"),
        ([[30 + 0.1 * (-1) ** t, 30] for t in range(12)], "still"),
        # A glitched first step (e.g. occlusion) is outvoted by the steady run after it.
        ([[20, 20]] + [[17 + 2 * t, 20] for t in range(1, 12)], "right"),
        ([[np.nan, np.nan]] * 3 + [[20, 10 + 2 * t] for t in range(3, 12)], "down"),
        ([[np.nan, np.nan]] * 12 + [[20, 10], [18, 10]], "left"),
        ([[np.nan, np.nan]] * 11 + [[20, 10]], "still"),
    ],
)
def test_classify_motion(track: list[list[float]], motion: str) -> None:
    assert classify_motion(np.array(track, dtype=np.float64), window=12, still_speed_px=0.5)[0] == motion


def _det(color: str, shape: str, motion: str) -> DetectedObject:
    return DetectedObject(color, shape, motion, np.zeros((1, 2)), 1.0, (0.0, 0.0), (0.0, 0.0, 0.0))


def test_match_attributes_pairs_by_colour_first() -> None:
    expected = [ObjectAttrs("red", "circle", "left"), ObjectAttrs("blue", "square", "still")]
    swapped = [_det("blue", "square", "still"), _det("red", "circle", "up")]
    scores = match_attributes(swapped, expected)
    assert scores == {"color": 1.0, "shape": 1.0, "motion": 0.5, "all": 0.5, "count": 1.0, "objects": 2.0}
    wrong_colour = match_attributes([_det("green", "circle", "left")], expected[:1])
    assert (wrong_colour["color"], wrong_colour["shape"], wrong_colour["motion"]) == (0.0, 1.0, 1.0)
    missing = match_attributes([_det("blue", "square", "still")], expected)
    assert (missing["color"], missing["count"]) == (0.5, 0.0)
    total = aggregate_matches([scores, missing, wrong_colour])
    assert total["color"] == pytest.approx((2 + 1 + 0) / 5)
    assert total["count"] == pytest.approx(2 / 3)
