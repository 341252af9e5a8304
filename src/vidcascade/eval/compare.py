"""Two ``vidcascade eval --json`` runs over the same prompts and seeds, compared video by video.

``python -m vidcascade.eval.compare BASE.json NEW.json`` prints, per configuration (level,
attention) and accuracy, NEW minus BASE and a paired bootstrap interval: the videos are resampled
with replacement, the same draw for both runs, and the object-weighted accuracies are recomputed.
Why: an accuracy over 64 prompts moves by about 1/86 per object, so a difference of 0.02 is one or
two objects; the interval says whether such a difference is more than the prompts drawn.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ACCURACIES = ("color", "shape", "motion", "count", "extra_object")
"""Per-object accuracies (color, shape, motion: weighted by the video's objects) and per-video
shares (count: right number of objects; extra_object: shows an object the prompt did not name)."""

PER_OBJECT = {"color", "shape", "motion"}


def _key(row: dict) -> tuple:
    return (row["level"], row["attention"], row.get("freshness", "joint"))


def _arrays(videos: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([float(v[k]) for v in videos]) for k in ("objects", *ACCURACIES)}


def _stat(a: dict[str, np.ndarray], name: str, idx: np.ndarray) -> np.ndarray:
    """The accuracy of each resample (rows of idx) as eval computes it over the whole set."""
    if name in PER_OBJECT:
        w = a["objects"][idx]
        return (a[name][idx] * w).sum(axis=-1) / np.maximum(w.sum(axis=-1), 1.0)
    return a[name][idx].mean(axis=-1)


def compare_rows(base: dict, new: dict, resamples: int = 4000, seed: int = 0, level: float = 0.95) -> dict:
    """NEW - BASE per accuracy, with a paired bootstrap interval at ``level``."""
    bv, nv = base.get("videos"), new.get("videos")
    if not bv or not nv:
        raise ValueError(
            "both eval JSONs need per-video scores ('videos' in each row: eval runs since 2026-12-06)"
        )
    if [v["seed"] for v in bv] != [v["seed"] for v in nv]:
        raise ValueError(
            f"the runs did not make the same videos (seeds {bv[0]['seed']}.. and {nv[0]['seed']}..)"
        )
    a, b = _arrays(bv), _arrays(nv)
    n = len(bv)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    everything = np.arange(n)[None]
    out = {}
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    for name in ACCURACIES:
        base_acc, new_acc = float(_stat(a, name, everything)[0]), float(_stat(b, name, everything)[0])
        boot = _stat(b, name, idx) - _stat(a, name, idx)
        out[name] = {
            "base": base_acc,
            "new": new_acc,
            "diff": new_acc - base_acc,
            "low": float(np.quantile(boot, lo_q)),
            "high": float(np.quantile(boot, hi_q)),
            "videos_changed": int((a[name] != b[name]).sum()),
        }
    return out


def compare_runs(base: dict, new: dict, resamples: int = 4000, seed: int = 0) -> list[dict]:
    """One entry per configuration that both runs measured."""
    new_rows = {_key(r): r for r in new["configs"]}
    out = []
    for row in base["configs"]:
        other = new_rows.get(_key(row))
        if other is None:
            continue
        if row.get("prompt_set") != other.get("prompt_set"):
            raise ValueError(f"prompt sets differ: {row.get('prompt_set')!r} and {other.get('prompt_set')!r}")
        out.append({"config": _key(row), "scores": compare_rows(row, other, resamples, seed)})
    if not out:
        raise ValueError("the two runs share no configuration (level, attention, freshness)")
    return out


def format_comparison(results: list[dict], base_name: str, new_name: str) -> str:
    lines = [
        f"{new_name} minus {base_name}, paired bootstrap 95% interval over the videos "
        "(extra_object: the share of videos with one, lower is better)",
        "level | attention | accuracy | base | new | diff | 95% interval | videos changed",
    ]
    lines.append("-" * len(lines[-1]))
    for r in results:
        level, attention, _ = r["config"]
        for name, s in r["scores"].items():
            lines.append(
                f"P{level} | {attention} | {name} | {s['base']:.3f} | {s['new']:.3f} | {s['diff']:+.3f} | "
                f"[{s['low']:+.3f}, {s['high']:+.3f}] | {s['videos_changed']}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidcascade.eval.compare", description=__doc__.split("\n")[0])
    p.add_argument("base", type=Path, help="eval JSON of the reference model")
    p.add_argument("new", type=Path, help="eval JSON of the model compared with it (same prompts and seeds)")
    p.add_argument("--resamples", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.resamples < 100:
            raise ValueError(f"--resamples must be at least 100, got {args.resamples}")
        runs = []
        for path in (args.base, args.new):
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist (write it with vidcascade eval --json)")
            runs.append(json.loads(path.read_text()))
        results = compare_runs(*runs, resamples=args.resamples, seed=args.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    print(
        format_comparison(results, runs[0].get("model", str(args.base)), runs[1].get("model", str(args.new)))
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
