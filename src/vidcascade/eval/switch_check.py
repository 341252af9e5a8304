"""Prompt-switch check of ``vidcascade eval``: the fixed switch set (``switch_set``), generated at
every (level, switch mode), read block by block (``switch_metrics``).

Per (level, mode), over the switches: the share whose new attributes all show within 1 and within
2 blocks after the switch block (0 = in the switch block itself), the mean blocks to show (over
those that show), the share never shown, the share whose caption A showed in the last block the
switch did not touch (``score_switch``'s ``last_before``), how often the objects the switch did
not name stayed as they were (share of blocks, after and before the switch, over the switches
that keep an object), and the share of videos with an object no caption named.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..config import CascadeConfig
from ..engine.engine import Engine
from ..engine.session import SWITCH_MODES
from ..weights.bundle import Bundle
from .switch_metrics import score_switch
from .switch_set import KINDS, SWITCH_SETS, SwitchItem, switch_items

SWITCH_BLOCKS = 12
SWITCH_BLOCK = 6


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _summary(scores: list[dict]) -> dict:
    delays = [s["blocks_to_show"] for s in scores]
    shown = [d for d in delays if d is not None]
    n = len(scores)
    return {
        "shown_within_1": sum(d <= 1 for d in shown) / n,
        "shown_within_2": sum(d <= 2 for d in shown) / n,
        "mean_blocks_to_show": float(np.mean(shown)) if shown else None,
        "never_shown": (n - len(shown)) / n,
    }


def summarize(scores: list[dict], items: list[SwitchItem]) -> dict:
    """The row figures of one (level, mode) from ``score_switch`` results of ``items``."""
    kept = [s for s in scores if s["kept_after"] is not None]
    by_kind = {}
    for kind in KINDS:
        mine = [s for s, it in zip(scores, items, strict=True) if it.kind == kind]
        if mine:
            by_kind[kind] = {"switches": len(mine), **_summary(mine)}
    return {
        **_summary(scores),
        "before_shown": float(np.mean([s["before_shown"] for s in scores])),
        "kept_after": _mean([s["kept_after"] for s in kept]),
        "kept_before": _mean([s["kept_before"] for s in kept]),
        "kept_switches": len(kept),
        "extra_object_share": float(np.mean([s["extra_object"] for s in scores])),
        "by_kind": by_kind,
    }


def run_switch_check(
    bundle: Bundle,
    levels: list[int],
    attention: str = "causal",
    switches: int | None = None,
    switch_set: str = "reported",
    modes: tuple[str, ...] = SWITCH_MODES,
    blocks: int = SWITCH_BLOCKS,
    switch_block: int = SWITCH_BLOCK,
    progress: Callable[[int, int], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One row per (level, switch mode) over the first ``switches`` of ``switch_set`` (all: None);
    ``progress(done, total)`` after every video, ``on_row(row)`` as soon as a row is complete."""
    items = switch_items(switch_set, switches)
    total, done = switch_videos(levels, len(items), modes), 0
    rows = []
    for level in levels:
        for mode in modes:
            eng = Engine(bundle, CascadeConfig(level=level, attention=attention, switch_mode=mode))
            last_before = max(0, switch_block - math.ceil(bundle.sampling.num_steps / eng.lag))
            scores, recache_s = [], []
            for it in items:
                v = eng.generate(it.before, blocks, seed=it.seed, switches=[(switch_block, it.after)])
                frames = v.frames[0]
                scores.append(score_switch(frames, frames.shape[0] // blocks, it, switch_block, last_before))
                recache_s += eng.stats.recache_s
                done += 1
                if progress:
                    progress(done, total)
            row = {
                "level": level,
                "attention": attention,
                "switch_mode": mode,
                "switch_set": switch_set,
                "switches": len(items),
                "switch_block": switch_block,
                "last_block_before": last_before,
                "blocks": blocks,
                **summarize(scores, items),
                "recache_forward_s": float(np.median(recache_s)) if recache_s else 0.0,
            }
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def switch_videos(levels: list[int], switches: int, modes: tuple[str, ...] = SWITCH_MODES) -> int:
    """Videos run_switch_check generates: every switch mode at every level."""
    return len(levels) * len(modes) * switches


SWITCH_HEADER = (
    "level | attention | mode | switches | <=1 blk | <=2 blk | mean blk | never | A shown | "
    "kept after (before) | extra obj | recache s"
)


def format_switch_header(switch_set: str = "reported", switches: int | None = None) -> str:
    total = SWITCH_SETS[switch_set][2]
    switches = total if switches is None else switches
    n = f"{switches} of the {total} {switch_set} switches" + ("" if switches == total else " (--full: all)")
    title = (
        f"prompt switch at block {SWITCH_BLOCK} of {SWITCH_BLOCKS}, {n}: share of switches whose new "
        "attributes all show within 1 / 2 blocks after the switch block"
    )
    return "\n".join([title, SWITCH_HEADER, "-" * len(SWITCH_HEADER)])


def _f(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_switch_row(r: dict) -> str:
    kept = f"{_f(r['kept_after'], '.2f')} ({_f(r['kept_before'], '.2f')})"
    return (
        f"P{r['level']} | {r['attention']} | {r['switch_mode']} | {r['switches']} | "
        f"{r['shown_within_1']:.3f} | {r['shown_within_2']:.3f} | {_f(r['mean_blocks_to_show'])} | "
        f"{r['never_shown']:.3f} | {r['before_shown']:.3f} | {kept} | {r['extra_object_share']:.3f} | "
        f"{r['recache_forward_s']:.3f}"
    )


def format_by_kind(rows: list[dict]) -> str:
    head = "level | mode | kind | switches | <=1 blk | <=2 blk | mean blk | never"
    lines = ["prompt switch by kind", head, "-" * len(head)]
    for r in rows:
        for kind, k in r["by_kind"].items():
            lines.append(
                f"P{r['level']} | {r['switch_mode']} | {kind} | {k['switches']} | "
                f"{k['shown_within_1']:.3f} | {k['shown_within_2']:.3f} | "
                f"{_f(k['mean_blocks_to_show'])} | {k['never_shown']:.3f}"
            )
    return "\n".join(lines)


def format_switch(rows: list[dict]) -> str:
    r0 = rows[0]
    return "\n".join([format_switch_header(r0["switch_set"], r0["switches"]), *map(format_switch_row, rows)])
