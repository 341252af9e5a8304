"""Detectors for the synthetic world: per object colour, shape, motion and per-frame centroid.

Built for imperfect generated frames as well as rendered ones (soft edges, noise, slight colour
shifts, frames where an object is missing). Numpy only.

Pipeline for a clip ``[T, H, W, 3]``:

1. per frame, the background is the per-channel median (objects cover far less than half a frame);
2. each pixel is matched to the palette along the line background -> colour: ``alpha`` is how far
   along the line it lies, ``residual`` how far off it. Matching lines instead of points keeps the
   blurred, half-mixed edge pixels of an orange object orange rather than red;
3. the clip's object colours are the palette entries that win enough foreground pixels; pixels are
   then re-assigned among those colours only, and small connected specks are dropped;
4. per object: centroid and bounding box per frame, shape by template IoU in the bounding box
   (majority over frames that show the whole object), motion from the centroid track.

Coordinates: centroids are (x, y) in pixels, x to the right, y downwards, with the centre of pixel
(row i, column j) at (j + 0.5, i + 0.5), i.e. the renderer's continuous coordinates.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vidcascade.world.palette import COLORS, PALETTE, SHAPES, ObjectAttrs, check_name

_PALETTE_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)  # (K, 3)


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of the detectors; sizes and speeds are relative to the frame so they scale with it."""

    min_alpha: float = 0.5
    """A pixel is foreground if it lies at least this far along the line from background to colour."""
    max_residual: float = 60.0
    """Largest distance (RGB levels) of a foreground pixel from its colour's line."""
    min_speck_frac: float = 10 / 4096
    """Connected pieces smaller than this fraction of the frame are specks."""
    keep_piece_frac: float = 0.2
    """Pieces smaller than this fraction of the frame's largest piece of the colour are dropped."""
    min_color_share: float = 0.1
    """A colour is an object only with at least this share of the leading colour's pixels."""
    full_view_frac: float = 0.8
    """Shape votes come from frames showing at least this fraction of the object's typical area."""
    window: int = 12
    """Motion is judged on the centroid track of the first ``window`` frames."""
    still_speed: float = 0.5 / 64
    """Below this speed (frame widths per frame) an object counts as still."""

    def __post_init__(self) -> None:
        for name in ("min_alpha", "min_speck_frac", "keep_piece_frac", "min_color_share", "full_view_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_residual <= 0.0:
            raise ValueError(f"max_residual must be > 0, got {self.max_residual}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 frames, got {self.window}")
        if self.still_speed < 0.0:
            raise ValueError(f"still_speed must be >= 0, got {self.still_speed}")


@dataclass(frozen=True, eq=False)
class DetectedObject:
    """One detected object. ``eq=False``: it holds arrays, compare fields explicitly."""

    color: str
    """Nearest palette colour (one of ``COLORS``)."""
    shape: str
    """One of ``SHAPES``."""
    motion: str
    """One of ``MOTIONS``; ``still`` also when the window holds fewer than two sightings."""
    centroids: np.ndarray
    """float64 [T, 2], (x, y) in pixels; NaN in frames where the object was not found."""
    area: float
    """Median pixel area over the frames where it was found."""
    velocity: tuple[float, float]
    """Estimated (vx, vy) in pixels per frame over the motion window (only the dominant axis)."""
    shape_scores: tuple[float, ...]
    """Mean template IoU per shape in ``SHAPES`` order, over the voting frames."""


def _as_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a clip and return it as float32 [T, H, W, 3] in 0..255 levels."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape [T, H, W, 3], got {frames.shape}")
    if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"expected uint8 (or float in 0..255) frames, got dtype {frames.dtype}")
    return frames.astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class _Evidence:
    """Palette evidence for candidate pixels only: those far enough from the background to matter."""

    shape: tuple[int, int, int]
    """(T, H, W) of the clip."""
    index: np.ndarray
    """int64 [N], flat indices of the candidate pixels into T * H * W."""
    alpha: np.ndarray
    """float32 [N, K], position along each palette colour's line (0 = background, 1 = colour)."""
    resid2: np.ndarray
    """float32 [N, K], squared distance (RGB levels) from each colour's line."""


def _color_evidence(x: np.ndarray, min_alpha: float) -> _Evidence:
    """Match the pixels of float frames [T, H, W, 3] against the palette."""
    t, h, w, _ = x.shape
    background = np.median(x.reshape(t, -1, 3), axis=1)  # (T, 3)
    d = (x - background[:, None, None, :]).reshape(t, h * w, 3)  # (T, HW, 3)
    dd = np.einsum("tpc,tpc->tp", d, d)  # (T, HW)
    e = _PALETTE_RGB[None, :, :] - background[:, None, :]  # (T, K, 3)
    ee = np.einsum("tkc,tkc->tk", e, e)  # (T, K)
    # A projection is never longer than the vector, so a pixel nearer the background than
    # min_alpha times the shortest colour line cannot reach min_alpha on any line: skip it.
    index = np.flatnonzero(dd >= (min_alpha**2 * ee.min(axis=1))[:, None])  # (N,)
    frame = index // (h * w)
    d_n = d.reshape(-1, 3)[index]  # (N, 3)
    e_n = e[frame]  # (N, K, 3)
    dots = np.einsum("nc,nkc->nk", d_n, e_n)  # (N, K)
    ee_n = ee[frame]  # (N, K)
    # Beyond the palette colour (alpha > 1) still counts as that colour: brighter is not "less red".
    alpha = np.clip(dots / ee_n, 0.0, 1.5)  # (N, K)
    resid2 = dd.reshape(-1)[index][:, None] - 2.0 * alpha * dots + alpha * alpha * ee_n  # |d - alpha e|^2
    return _Evidence((t, h, w), index, alpha, np.maximum(resid2, 0.0))


def _assign(evidence: _Evidence, colors: list[int], config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Best of ``colors`` per candidate pixel: (position in ``colors`` int64 [N], foreground bool [N])."""
    resid2 = evidence.resid2[:, colors]  # (N, k)
    owner = np.argmin(resid2, axis=1)  # (N,)
    rows = np.arange(len(owner))
    fg = (evidence.alpha[:, colors][rows, owner] >= config.min_alpha) & (
        resid2[rows, owner] <= config.max_residual**2
    )
    return owner, fg


def _select_colors(evidence: _Evidence, max_objects: int, config: DetectorConfig) -> list[int]:
    """Palette indices of the clip's objects, by decreasing pixel count."""
    owner, fg = _assign(evidence, list(range(len(COLORS))), config)
    counts = np.bincount(owner[fg], minlength=len(COLORS))  # (K,)
    if counts.max() == 0:
        return []
    t, h, w = evidence.shape
    # An object must be visible in a fair part of the clip, not just a speck in one frame.
    floor = max(config.min_speck_frac * h * w * max(1.0, t / 4), config.min_color_share * counts.max())
    order = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k] >= floor]
    return order[:max_objects]


def connected_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of each frame of a boolean [T, H, W] mask.

    Returns int64 [T, H, W]: for foreground pixels the flat index of their component's first pixel
    (unique per component across the clip), -1 elsewhere. Minimum-label propagation over all frames
    at once; pointer jumping (adopt the label of the pixel one's label names) cuts the rounds from
    the component's diameter to a handful.
    """
    n = mask.size
    sentinel = n  # larger than any index, so background never wins a minimum
    labels = np.where(mask, np.arange(n).reshape(mask.shape), sentinel)
    while True:
        new = labels.copy()
        np.minimum(new[:, 1:], labels[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], labels[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], labels[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], labels[:, :, 1:], out=new[:, :, :-1])
        new = np.where(mask, new, sentinel)
        lookup = np.append(new.ravel(), sentinel)  # label -> that pixel's label (sentinel -> itself)
        for _ in range(2):  # pointer jumping: adopt the label of the pixel one's label points at
            new = lookup[new]
            lookup = np.append(new.ravel(), sentinel)
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def _drop_specks(mask: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """Keep only pieces that are neither absolutely tiny nor small next to the frame's largest piece."""
    if not mask.any():
        return mask
    t, h, w = mask.shape
    # Label only the region the object visits: components never cross the empty margin.
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    region = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop = mask[region]  # (T, h', w')
    labels = connected_components(crop)
    roots, inverse, sizes = np.unique(labels[crop], return_inverse=True, return_counts=True)
    frame_of_root = roots // (crop.shape[1] * crop.shape[2])
    largest = np.zeros(t, dtype=np.int64)
    np.maximum.at(largest, frame_of_root, sizes)
    big_enough = sizes >= config.min_speck_frac * h * w
    keep = big_enough & (sizes >= config.keep_piece_frac * largest[frame_of_root])
    out = np.zeros_like(mask)
    out[region][crop] = keep[inverse]
    return out


def color_masks(
    frames: np.ndarray,
    colors: Sequence[str] | None = None,
    max_objects: int = 2,
    config: DetectorConfig | None = None,
) -> dict[str, np.ndarray]:
    """Per colour, the cleaned boolean mask [T, H, W] of its object.

    ``colors`` given: masks for exactly those palette colours (maybe empty). Otherwise the clip's
    colours are detected, at most ``max_objects`` of them, most pixels first.
    """
    config = config or DetectorConfig()
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    evidence = _color_evidence(_as_frames(frames), config.min_alpha)
    if colors is None:
        chosen = _select_colors(evidence, max_objects, config)
    else:
        for color in colors:
            check_name("colour", color, COLORS)
        chosen = [COLORS.index(c) for c in colors]
    if not chosen:
        return {}
    # Re-assign among the clip's colours only, so that mixed edge pixels join the right object.
    owner, fg = _assign(evidence, chosen, config)
    masks = {}
    for i, k in enumerate(chosen):
        flat = np.zeros(int(np.prod(evidence.shape)), dtype=bool)
        flat[evidence.index[fg & (owner == i)]] = True
        masks[COLORS[k]] = _drop_specks(flat.reshape(evidence.shape), config)
    return masks


def mask_centroids(mask: np.ndarray) -> np.ndarray:
    """(x, y) centroid in pixels of each frame of a boolean [T, H, W] mask: float64 [T, 2], NaN if empty."""
    _, h, w = mask.shape
    area = mask.sum(axis=(1, 2)).astype(np.float64)  # (T,)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (mask.sum(axis=1) @ (np.arange(w) + 0.5)) / area  # (T,)
        y = (mask.sum(axis=2) @ (np.arange(h) + 0.5)) / area  # (T,)
    return np.stack([x, y], axis=1)


def centroids_by_color(
    frames: np.ndarray,
    colors: Sequence[str] | None = None,
    max_objects: int = 2,
    config: DetectorConfig | None = None,
) -> dict[str, np.ndarray]:
    """Per colour, the per-frame centroid track float64 [T, 2] (NaN where absent); for smoothness metrics."""
    return {c: mask_centroids(m) for c, m in color_masks(frames, colors, max_objects, config).items()}


@functools.cache
def _templates(h: int, w: int) -> np.ndarray:
    """Ideal circle, square and triangle (apex up) inscribed in an h x w box: bool [3, h, w]."""
    u = (np.arange(w) + 0.5)[None, :] / w - 0.5  # (1, w), -0.5..0.5
    v = (np.arange(h) + 0.5)[:, None] / h  # (h, 1), 0 at the top .. 1 at the bottom
    circle = u * u + (v - 0.5) ** 2 <= 0.25
    square = np.ones((h, w), dtype=bool)
    triangle = np.abs(u) <= 0.5 * v
    by_name = {"circle": circle, "square": square, "triangle": np.broadcast_to(triangle, (h, w))}
    return np.stack([by_name[s] for s in SHAPES])


def _bounding_boxes(mask: np.ndarray) -> np.ndarray:
    """Inclusive (y0, y1, x0, x1) per frame of a boolean [T, H, W] mask: int64 [T, 4] (junk if empty)."""
    _, h, w = mask.shape
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # (T, H), (T, W)
    y0, y1 = rows.argmax(axis=1), h - 1 - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), w - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([y0, y1, x0, x1], axis=1)


def _voting_frames(
    mask: np.ndarray, area: np.ndarray, boxes: np.ndarray, config: DetectorConfig
) -> np.ndarray:
    """Frames whose view of the object is trustworthy for its shape: indices into T."""
    _, h, w = mask.shape
    found = area > 0
    typical = np.percentile(area[found], 90)
    full = found & (area >= config.full_view_frac * typical)
    box_h, box_w = boxes[:, 1] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 2] + 1
    # Every shape of this world has a square bounding box; a lopsided one means occlusion or clipping.
    square_box = np.maximum(box_h, box_w) <= 1.34 * np.minimum(box_h, box_w)
    inside = (boxes[:, 0] > 0) & (boxes[:, 2] > 0) & (boxes[:, 1] < h - 1) & (boxes[:, 3] < w - 1)
    for candidate in (full & square_box & inside, full & square_box, full):
        if candidate.any():
            return np.flatnonzero(candidate)
    return np.flatnonzero(found)


def classify_shape(mask: np.ndarray, config: DetectorConfig | None = None) -> tuple[str, tuple[float, ...]]:
    """Shape of the object in a boolean [T, H, W] mask: (name, mean IoU per shape in ``SHAPES`` order).

    Each voting frame picks the template (inscribed in its bounding box) with the highest IoU; the
    majority wins, ties broken by mean IoU.
    """
    config = config or DetectorConfig()
    area = mask.sum(axis=(1, 2))  # (T,)
    if not area.any():
        return SHAPES[0], tuple(0.0 for _ in SHAPES)
    boxes = _bounding_boxes(mask)
    frames = _voting_frames(mask, area, boxes, config)
    ious = np.empty((len(frames), len(SHAPES)))
    for row, t in enumerate(frames):
        y0, y1, x0, x1 = boxes[t]
        crop = mask[t, y0 : y1 + 1, x0 : x1 + 1]  # (h, w)
        templates = _templates(y1 - y0 + 1, x1 - x0 + 1)  # (S, h, w)
        inter = (templates & crop).sum(axis=(1, 2))
        union = (templates | crop).sum(axis=(1, 2))
        ious[row] = inter / union
    votes = np.bincount(ious.argmax(axis=1), minlength=len(SHAPES))
    mean_iou = ious.mean(axis=0)
    best = int(np.argmax(votes + 1e-3 * mean_iou))
    return SHAPES[best], tuple(float(s) for s in mean_iou)


def _first_run(steps: np.ndarray, threshold: float) -> np.ndarray:
    """The leading steps of one consistent sign (ignoring sub-threshold ones): pre-bounce motion.

    A lone step of the other sign at the start (a glitch) is skipped rather than trusted.
    """
    significant = steps[np.abs(steps) > threshold]
    if len(significant) == 0:
        return steps
    signs = np.sign(significant)
    changes = np.flatnonzero(signs[1:] != signs[:-1]) + 1  # where a new run starts
    bounds = np.concatenate([[0], changes, [len(significant)]])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if stop - start >= 2:
            return significant[start:stop]
    return significant


def classify_motion(
    centroids: np.ndarray, window: int = 12, still_speed_px: float = 0.5
) -> tuple[str, tuple[float, float]]:
    """Motion name and (vx, vy) in px/frame from a centroid track float [T, 2] (NaN = not found).

    Uses the sightings in the first ``window`` frames (or, with fewer than two there, the first
    ``window`` sightings anywhere): the dominant axis of the median absolute step, then the median
    signed step of the first consistent run along it, so a bounce inside the window does not flip
    it. Fewer than two sightings in all: ``still``.
    """
    track = np.asarray(centroids, dtype=np.float64)
    seen = np.flatnonzero(~np.isnan(track).any(axis=1))
    early = seen[seen < window]
    seen = early if len(early) >= 2 else seen[:window]
    if len(seen) < 2:
        return "still", (0.0, 0.0)
    gaps = np.diff(seen).astype(np.float64)  # frames between sightings
    steps = np.diff(track[seen], axis=0) / gaps[:, None]  # (S, 2) px per frame
    axis = int(np.argmax(np.median(np.abs(steps), axis=0)))
    speed = float(np.median(_first_run(steps[:, axis], still_speed_px)))
    if abs(speed) < still_speed_px:
        return "still", (0.0, 0.0)
    if axis == 0:
        return ("right" if speed > 0 else "left"), (speed, 0.0)
    return ("down" if speed > 0 else "up"), (0.0, speed)


def detect_objects(
    frames: np.ndarray, max_objects: int = 2, config: DetectorConfig | None = None
) -> list[DetectedObject]:
    """Objects in a clip ``[T, H, W, 3]`` (uint8, or float in 0..255), most pixels first."""
    config = config or DetectorConfig()
    width = np.asarray(frames).shape[2]
    detected = []
    for color, mask in color_masks(frames, None, max_objects, config).items():
        area = mask.sum(axis=(1, 2))  # (T,)
        if not area.any():
            continue
        centroids = mask_centroids(mask)
        shape, scores = classify_shape(mask, config)
        motion, velocity = classify_motion(centroids, config.window, config.still_speed * width)
        detected.append(
            DetectedObject(
                color=color,
                shape=shape,
                motion=motion,
                centroids=centroids,
                area=float(np.median(area[area > 0])),
                velocity=velocity,
                shape_scores=scores,
            )
        )
    return detected


def match_attributes(detected: Sequence[DetectedObject], expected: Sequence[ObjectAttrs]) -> dict[str, float]:
    """Fraction of expected objects whose colour / shape / motion / all three were detected.

    Objects are paired by colour first; expected objects left over take the remaining detections in
    order (so a wrong colour can still score its shape and motion), or none. Also reports ``count``
    (1.0 when as many objects were detected as expected) and ``objects`` (how many were expected).
    """
    remaining = list(detected)
    pairs: list[tuple[ObjectAttrs, DetectedObject | None]] = []
    unmatched = []
    for exp in expected:
        hit = next((d for d in remaining if d.color == exp.color), None)
        if hit is None:
            unmatched.append(exp)
        else:
            remaining.remove(hit)
            pairs.append((exp, hit))
    for exp in unmatched:
        pairs.append((exp, remaining.pop(0) if remaining else None))
    fields = ("color", "shape", "motion")
    hits = [[d is not None and getattr(d, f) == getattr(e, f) for f in fields] for e, d in pairs]
    n = max(len(pairs), 1)
    scores = {f: sum(row[i] for row in hits) / n for i, f in enumerate(fields)}
    scores["all"] = sum(all(row) for row in hits) / n
    scores["count"] = float(len(detected) == len(expected))
    scores["objects"] = float(len(expected))
    return scores


def aggregate_matches(matches: Iterable[dict[str, float]]) -> dict[str, float]:
    """Combine ``match_attributes`` results: per-object accuracies weighted by objects, count per clip."""
    matches = list(matches)
    if not matches:
        raise ValueError("no matches to aggregate")
    objects = max(sum(m["objects"] for m in matches), 1.0)
    out = {
        f: sum(m[f] * m["objects"] for m in matches) / objects for f in ("color", "shape", "motion", "all")
    }
    out["count"] = sum(m["count"] for m in matches) / len(matches)
    out["clips"] = float(len(matches))
    return out
