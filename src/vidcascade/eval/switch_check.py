"""Prompt-switch check: after switching (e.g. red -> blue) at block k, how many blocks until the
new colour shows, with and without re-cache."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..config import CascadeConfig
from ..engine.engine import Engine
from ..weights.bundle import Bundle
from .detectors import detect_objects

SWITCHES = [
    ("a red circle moving right", "a blue circle moving right"),
    ("a green square moving up", "a yellow square moving up"),
    ("a white triangle moving left", "a magenta triangle moving left"),
    ("an orange circle staying still", "a cyan circle staying still"),
]


def _new_color(prompt: str) -> str:
    from ..world import parse_caption

    return parse_caption(prompt)[0].color


def blocks_to_switch(frames: np.ndarray, frames_per_block: int, switch_block: int, color: str) -> int | None:
    """Blocks after ``switch_block`` until a block's dominant detected colour is ``color`` (0 = at once)."""
    nblocks = len(frames) // frames_per_block
    for b in range(switch_block, nblocks):
        clip = frames[b * frames_per_block : (b + 1) * frames_per_block]
        det = detect_objects(clip, max_objects=1)
        if det and det[0].color == color:
            return b - switch_block
    return None


def run_switch_check(
    bundle: Bundle,
    levels: list[int],
    attention: str = "causal",
    blocks: int = 12,
    switch_block: int = 6,
    seeds: int = 4,
    progress: Callable[[int, int], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One row per (level, switch mode) over SWITCHES x ``seeds`` videos; ``progress(done,
    total)`` after every video, ``on_row(row)`` as soon as a row is complete."""
    rows = []
    total, done = switch_videos(levels, seeds), 0
    for level in levels:
        for mode in ("no-recache", "recache"):
            eng = Engine(bundle, CascadeConfig(level=level, attention=attention, switch_mode=mode))
            delays, misses, recache_s = [], 0, []
            for old, new in SWITCHES:
                for seed in range(seeds):
                    v = eng.generate(old, blocks, seed=seed, switches=[(switch_block, new)])
                    fpb = v.frames.shape[1] // blocks
                    d = blocks_to_switch(v.frames[0], fpb, switch_block, _new_color(new))
                    if d is None:
                        misses += 1
                    else:
                        delays.append(d)
                    recache_s += eng.stats.recache_s
                    done += 1
                    if progress:
                        progress(done, total)
            row = {
                "level": level,
                "attention": attention,
                "switch_mode": mode,
                "switch_block": switch_block,
                "mean_blocks_to_new_color": float(np.mean(delays)) if delays else float("nan"),
                "max_blocks_to_new_color": int(max(delays)) if delays else None,
                "never_switched": misses,
                "runs": len(SWITCHES) * seeds,
                "recache_forward_s": float(np.median(recache_s)) if recache_s else 0.0,
            }
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def switch_videos(levels: list[int], seeds: int) -> int:
    """Videos run_switch_check generates: both switch modes at every level."""
    return len(levels) * 2 * len(SWITCHES) * seeds


SWITCH_HEADER = "level | attention | mode | mean blocks | max | never | recache s"


def format_switch_header() -> str:
    title = "prompt switch: blocks after the switch block until the new colour is detected"
    return "\n".join([title, SWITCH_HEADER, "-" * len(SWITCH_HEADER)])


def format_switch_row(r: dict) -> str:
    return (
        f"P{r['level']} | {r['attention']} | {r['switch_mode']} | "
        f"{r['mean_blocks_to_new_color']:.2f} | {r['max_blocks_to_new_color']} | "
        f"{r['never_switched']}/{r['runs']} | {r['recache_forward_s']:.3f}"
    )


def format_switch(rows: list[dict]) -> str:
    return "\n".join([format_switch_header(), *map(format_switch_row, rows)])
