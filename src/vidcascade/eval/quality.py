"""Quality evaluation of cascade configurations on the world's prompts (``vidcascade eval``).

For a fixed set of prompts x seeds, disjoint from training (training renders its own seeded
scenes; these prompts come from a separate seed and the generation seeds are the eval index),
every configuration (level, attention) generates the same videos. Per configuration:

- colour / shape / motion accuracy of the detected objects against the prompt;
- count: the right number of objects was found;
- boundary_jump: mean frame change across block boundaries over the mean change inside blocks;
- jerk_px: median |second difference| of object centroids (temporal smoothness, lower = smoother);
- psnr_vs_p0 / ssim_vs_p0: against level 0 with the same prompt and seed;
- drift (on long videos): accuracy over the last quarter minus accuracy over the first quarter;
- extra_object_share: share of videos where some block shows an object the prompt did not name,
  merged blobs included (``extra_objects``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import CascadeConfig
from ..engine.engine import Engine
from ..weights.bundle import Bundle
from ..world import ObjectAttrs, caption, parse_caption, sample_attrs
from .detectors import aggregate_matches, detect_objects, match_attributes
from .extra_objects import shows_extra_object
from .metrics import boundary_jump, centroid_jerk, psnr, ssim

log = logging.getLogger(__name__)

EVAL_PROMPT_SEED = 424242
VALIDATION_PROMPT_SEED = 171717
"""A second fixed set, disjoint from the evaluation set, for choosing settings (such as the
guidance scale) without looking at the numbers that are reported."""
PROMPT_SETS = {"eval": (EVAL_PROMPT_SEED, 10_000), "validation": (VALIDATION_PROMPT_SEED, 20_000)}


@dataclass(frozen=True)
class EvalItem:
    prompt: str
    attrs: tuple[ObjectAttrs, ...]
    seed: int


def eval_items(n: int, two_object_prob: float = 0.3, prompt_set: str = "eval") -> list[EvalItem]:
    """n (prompt, seed) pairs from a fixed generator, paraphrased captions as users would write."""
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {prompt_set!r}; expected one of {sorted(PROMPT_SETS)}")
    prompt_seed, first_seed = PROMPT_SETS[prompt_set]
    rng = np.random.default_rng(prompt_seed)
    out = []
    for i in range(n):
        attrs = sample_attrs(rng, two_object_prob)
        text = caption(attrs, rng)
        out.append(EvalItem(text, tuple(parse_caption(text)), first_seed + i))
    return out


def _scores(frames: np.ndarray, attrs, fpb: int) -> dict[str, float]:
    det = detect_objects(frames, max_objects=len(attrs))
    m = match_attributes(det, attrs)
    jerks = [centroid_jerk(d.centroids) for d in det]
    m["jerk_px"] = float(np.nanmean(jerks)) if jerks and not np.all(np.isnan(jerks)) else float("nan")
    m["boundary_jump"] = boundary_jump(frames, fpb)
    m["extra_object"] = float(shows_extra_object(frames, fpb, len(attrs)))
    return m


VIDEO_FIELDS = ("objects", "color", "shape", "motion", "count")
"""A video's own scores kept in the JSON rows (``videos``), so that two runs over the same prompts
and seeds can be compared video by video (``eval.compare``)."""


def _video_record(seed: int, scores: dict[str, float]) -> dict[str, float]:
    return {"seed": seed, **{k: scores[k] for k in (*VIDEO_FIELDS, "extra_object")}}


def _by_objects(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Accuracies of the one-object and the two-object prompts apart (they fail differently)."""
    out = {}
    for count in sorted({int(r["objects"]) for r in rows}):
        acc = aggregate_matches([r for r in rows if int(r["objects"]) == count])
        out[str(count)] = {
            "prompts": int(acc["clips"]),
            **{f"{k}_acc": acc[k] for k in ("color", "shape", "motion", "all", "count")},
        }
    return out


def _agg(rows: list[dict[str, float]]) -> dict[str, float]:
    acc = aggregate_matches(rows)
    return {
        "color_acc": acc["color"],
        "shape_acc": acc["shape"],
        "motion_acc": acc["motion"],
        "all_acc": acc["all"],
        "count_acc": acc["count"],
        "boundary_jump": float(np.nanmean([r["boundary_jump"] for r in rows])),
        "jerk_px": float(np.nanmean([r["jerk_px"] for r in rows])),
        "extra_object_share": float(np.mean([r["extra_object"] for r in rows])),
        "by_objects": _by_objects(rows),
    }


def _drift(engine: Engine, items: list[EvalItem], blocks: int, tick: Callable[[], None]) -> dict[str, float]:
    first, last = [], []
    for it in items:
        frames = engine.generate(it.prompt, blocks, seed=it.seed).frames[0]
        q = len(frames) // 4
        first.append(match_attributes(detect_objects(frames[:q], max_objects=len(it.attrs)), it.attrs))
        last.append(match_attributes(detect_objects(frames[-q:], max_objects=len(it.attrs)), it.attrs))
        tick()
    a, b = aggregate_matches(first), aggregate_matches(last)
    long_videos = [
        {"seed": it.seed, **{f"{k}_{q}": m[k] for q, m in (("first", f), ("last", la)) for k in VIDEO_FIELDS}}
        for it, f, la in zip(items, first, last, strict=True)
    ]
    return {
        "long_blocks": blocks,
        "long_color_first": a["color"],
        "long_color_last": b["color"],
        "long_shape_first": a["shape"],
        "long_shape_last": b["shape"],
        "long_count_last": b["count"],
        "drift_color": b["color"] - a["color"],
        "drift_shape": b["shape"] - a["shape"],
        "long_videos": long_videos,
    }


def make_engine(bundle: Bundle, level: int, attention: str, freshness: str = "joint") -> Engine:
    """joint runs the plain engine; per_tick (stale in-flight K/V) runs the distributed engine as a
    single rank, whose results do not depend on the number of ranks."""
    cascade = CascadeConfig(level=level, attention=attention, freshness=freshness)
    if freshness == "joint":
        return Engine(bundle, cascade)
    from ..distributed.comm import init_comm
    from ..distributed.engine import DistEngine

    return DistEngine(bundle, cascade, init_comm(bundle.device, rank=0, world_size=1))


def _cached_engine(bundle: Bundle, level: int, attention: str, freshness: str, feature_cache):
    if feature_cache is None or feature_cache.policy == "none":
        return None
    from ..caching import apply_feature_cache

    engine = make_engine(bundle, level, attention, freshness)
    return engine, apply_feature_cache(engine, feature_cache)


def _cache_columns(cols: list[tuple[dict, float, float, float]]) -> dict[str, float]:
    if not cols:
        return {}
    acc = aggregate_matches([c[0] for c in cols])
    return {
        "cache_skipped_share": float(np.mean([c[1] for c in cols])),
        "cache_psnr_vs_uncached": float(np.mean([min(c[2], 100.0) for c in cols])),
        "cache_ssim_vs_uncached": float(np.mean([c[3] for c in cols])),
        **{f"cache_{k}_acc": acc[k] for k in ("color", "shape", "motion")},
    }


def run_eval(
    bundle: Bundle,
    configs: list[tuple[int, str] | tuple[int, str, str]],
    prompts: int = 64,
    blocks: int = 8,
    long_prompts: int = 8,
    long_blocks: int = 60,
    progress: Callable[[int, int], None] | None = None,
    prompt_set: str = "eval",
    on_row: Callable[[dict], None] | None = None,
    feature_cache=None,
) -> list[dict]:
    """One row per (level, attention[, freshness]); ``progress(done, total)`` after every video,
    ``on_row(row)`` as soon as a configuration's row is complete. With ``feature_cache`` (a
    FeatureCacheConfig) every video is also made with that cache, and the row gets ``cache_*``
    columns: skipped share, PSNR / SSIM against the uncached video of the same seed, accuracies."""
    configs = [(c[0], c[1], c[2] if len(c) > 2 else "joint") for c in configs]
    items = eval_items(prompts, prompt_set=prompt_set)
    fpb_frames = None
    ref_frames: dict[int, np.ndarray] = {}
    rows = []
    order = sorted(configs, key=lambda c: (c[0] != 0, c))  # level 0 first: the PSNR/SSIM reference
    if not any(c[0] == 0 and c[2] == "joint" for c in order):
        order = [(0, "causal", "joint"), *order]
    total = len(order) * (len(items) + long_prompts)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    for level, attention, freshness in order:
        engine = make_engine(bundle, level, attention, freshness)
        cached = _cached_engine(bundle, level, attention, freshness, feature_cache)
        per, ps, ss = [], [], []
        cache_cols: list[tuple[dict, float, float, float]] = []
        for k, it in enumerate(items):
            video = engine.generate(it.prompt, blocks, seed=it.seed)
            frames = video.frames[0]
            if cached is not None:
                cached_frames = cached[0].generate(it.prompt, blocks, seed=it.seed).frames[0]
                cache_cols.append(
                    (
                        _scores(cached_frames, it.attrs, frames.shape[0] // blocks),
                        cached[1].counters.skipped_share,
                        psnr(cached_frames, frames),
                        ssim(cached_frames, frames),
                    )
                )
            fpb_frames = fpb_frames or frames.shape[0] // blocks
            per.append(_scores(frames, it.attrs, fpb_frames))
            if level == 0 and freshness == "joint":
                ref_frames[k] = frames
            ps.append(psnr(frames, ref_frames[k]))
            ss.append(ssim(frames, ref_frames[k]))
            tick()
        row = {
            "level": level,
            "attention": attention,
            "freshness": freshness,
            "lag": engine.lag,
            "prompts": len(items),
            "prompt_set": prompt_set,
            "blocks": blocks,
            **_agg(per),
            "psnr_vs_p0": float(np.mean(ps)),
            "ssim_vs_p0": float(np.mean(ss)),
            **_cache_columns(cache_cols),
            "videos": [_video_record(it.seed, m) for it, m in zip(items, per, strict=True)],
        }
        if long_prompts:
            row.update(_drift(engine, items[:long_prompts], long_blocks, tick))
        if (level, attention, freshness) in configs:
            rows.append(row)
            if on_row:
                on_row(row)
        log.debug(  # the CLI prints the row itself
            "eval P%d %s %s: %s",
            level,
            attention,
            freshness,
            {k: round(v, 3) for k, v in row.items() if isinstance(v, float)},
        )
    return rows


EVAL_COLUMNS = [
    ("level", "P{}"),
    ("attention", "{}"),
    ("freshness", "{}"),
    ("color_acc", "{:.3f}"),
    ("shape_acc", "{:.3f}"),
    ("motion_acc", "{:.3f}"),
    ("count_acc", "{:.3f}"),
    ("boundary_jump", "{:.2f}"),
    ("jerk_px", "{:.2f}"),
    ("extra_object_share", "{:.3f}"),
    ("psnr_vs_p0", "{:.1f}"),
    ("ssim_vs_p0", "{:.3f}"),
    ("drift_color", "{:+.3f}"),
    ("drift_shape", "{:+.3f}"),
]


def format_eval_header(
    model: str, prompts: int, prompt_set: str, blocks: int, long_blocks: int | None
) -> str:
    """The title and column names of the table (``long_blocks`` None: no drift columns)."""
    head = [c for c, _ in EVAL_COLUMNS if long_blocks is not None or not c.startswith("drift_")]
    lines = [
        f"eval: model {model}; {prompts} {prompt_set} prompts x seeds, {blocks} blocks"
        + (f"; drift over {long_blocks} blocks" if long_blocks is not None else ""),
        " | ".join(head),
    ]
    lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def format_eval_row(row: dict) -> str:
    return " | ".join(f.format(row[c]) for c, f in EVAL_COLUMNS if c in row)


def format_eval(rows: list[dict], model: str) -> str:
    r0 = rows[0]
    header = format_eval_header(
        model, r0["prompts"], r0.get("prompt_set", "eval"), r0["blocks"], r0.get("long_blocks")
    )
    return "\n".join([header, *map(format_eval_row, rows)])


def format_by_objects(rows: list[dict]) -> str:
    """The same rows split into one-object and two-object prompts."""
    head = "level | attention | freshness | objects | prompts | color_acc | shape_acc | motion_acc | all_acc"
    lines = ["accuracy by number of objects in the prompt", head, "-" * len(head)]
    for r in rows:
        for count, a in r["by_objects"].items():
            lines.append(
                f"P{r['level']} | {r['attention']} | {r['freshness']} | {count} | {a['prompts']} | "
                f"{a['color_acc']:.3f} | {a['shape_acc']:.3f} | {a['motion_acc']:.3f} | {a['all_acc']:.3f}"
            )
    return "\n".join(lines)
