"""Serving figures from what a client saw: pure functions of arrival times (seconds) and block events.

Definitions (docs/serving.md repeats them):

- time to first frame: from sending ``start`` to the first frame's arrival.
- block inter-arrival: gaps between consecutive blocks' first frames.
- real-time factor: frames delivered per second (after the first block) over the model's frame rate.
- the simulated viewer starts playing ``buffer_s`` after the first frame arrives and then needs frame
  i at ``start + i / fps``. Deadline attainment: the share of frames that arrived by then (on that
  fixed clock). Underruns: stalls of a viewer that, when a frame is late, waits for it and goes on
  playing from its arrival (no re-buffering).
- input-to-effect: from sending ``prompt`` to the first frame of the first block that had (a) any
  denoising step under the new prompt, (b) every step entirely under it (weight 1; a blend counts
  as done only when it has reached the new prompt).
"""

from __future__ import annotations

import numpy as np


def percentiles(xs, qs=(50, 95, 99)) -> dict[str, float | None]:
    a = np.asarray(list(xs), dtype=np.float64)
    return {f"p{q}": (float(np.percentile(a, q)) if a.size else None) for q in qs}


def simulate_viewer(arrivals: list[float], fps: float, buffer_s: float) -> dict:
    """arrivals: each frame's arrival time, in play order."""
    n = len(arrivals)
    if n == 0:
        return {"deadline_attainment": None, "underruns": None}
    start = arrivals[0] + buffer_s
    met = sum(a <= start + i / fps for i, a in enumerate(arrivals))
    underruns, clock, i0 = 0, start, 0
    for i, a in enumerate(arrivals):
        if a > clock + (i - i0) / fps:
            underruns += 1
            clock, i0 = a, i
    return {"deadline_attainment": met / n, "underruns": underruns}


def real_time_factor(block_times: list[float], frames_per_block: int, fps: float) -> float | None:
    """Frames per second delivered after the first block, over the model's frame rate."""
    if len(block_times) < 2 or block_times[-1] <= block_times[0]:
        return None
    frames = (len(block_times) - 1) * frames_per_block
    return frames / (block_times[-1] - block_times[0]) / fps


def effect_blocks(events: list[dict], prompt: str) -> tuple[dict | None, dict | None]:
    """The first block event with (a) any step under ``prompt`` and (b) all steps entirely under it."""
    first_any = first_all = None
    for ev in events:
        steps = list(zip(ev["prompts"], ev["prompt_weights"] or [1.0] * len(ev["prompts"])))
        if first_any is None and any(p == prompt and w > 0 for p, w in steps):
            first_any = ev
        if first_all is None and steps and all(p == prompt and w >= 1.0 for p, w in steps):
            first_all = ev
            break
    return first_any, first_all
