"""What one training step shows the DiT: which blocks are clean context, which are noisy, at which
noise levels, who attends to whom, and at which frame positions.

The model must handle every situation the engine puts it in, so the layouts mix:

- *single*: committed clean context, then one noisy block (the sequential pipeline, diffusion
  forcing style: schedule sigmas or a continuous shifted sigma);
- *tick*: a cascade tick: committed clean context, then in-flight blocks at staggered stages of
  the 4-step schedule (lag 1..4), the oldest possibly at its cache step (clean, t = 0), attending
  to each other causally or bidirectionally;
- *forcing*: several noisy blocks at independent levels (plain diffusion forcing);
- *first*: the clip's first 1-3 blocks, noisy at independent levels, with no context: how every
  video starts, from the caption alone.

Context sometimes includes a *sink*: the clip's first block at positions 0..2 followed, after a gap
of unseen frames, by recent blocks, as the rolling cache holds it deep into a long video.
Layouts are pure data (numpy only); the trainer turns them into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Layout:
    clip_blocks: tuple[int, ...]
    """Clip block index of each sequence block, in sequence order."""
    positions: tuple[int, ...]
    """RoPE frame position of each sequence block's first frame."""
    sigmas: tuple[tuple[float, ...], ...]
    """Per sequence block, per batch sample: noise level (0 = clean context)."""
    loss: tuple[bool, ...]
    """Per sequence block: whether its prediction is trained."""
    n_context: int
    """Leading blocks that are committed clean context (block-causal among themselves)."""
    bidirectional: bool
    """Whether the in-flight blocks (after the context) see each other in both directions."""
    style: str
    stages: tuple[int, ...] | None = None
    """Tick layouts: the schedule stage of each sequence block (-1 committed context, S the cache
    step); None for the styles without a tick. With ``lag`` it places the sample on the engine's
    tick clock (which prompt each block was made under across a switch: switch_text.py)."""
    lag: int | None = None
    """Tick layouts: the cascade lag L (block b at stage s at tick b*L + s)."""


def shifted(u: np.ndarray | float, shift: float) -> np.ndarray | float:
    return shift * u / (1 + (shift - 1) * u)


@dataclass(frozen=True)
class LayoutSampler:
    schedule_sigmas: tuple[float, ...] = (1.0, 0.9, 0.75, 0.5)
    """The inference schedule (4 steps at shift 3, warped)."""
    clip_blocks: int = 16
    frames_per_block: int = 3
    max_blocks: int = 7
    context_probs: tuple[float, ...] = (0.3, 0.2, 0.2, 0.15, 0.15)
    """Probabilities of 0, 1, 2, ... committed context blocks (before the noisy ones). The engine's
    cache holds up to sink + window = 5 blocks deep into a long video."""
    bidirectional_prob: float = 0.45
    """Share of multi-block tick/single layouts whose in-flight blocks see each other both ways."""
    max_gap_frames: int = 150
    shift: float = 3.0
    start_prob: float = 0.5
    """Share of sink-less layouts that begin at the clip's first block: the only place where the
    caption's motion is certain (later blocks may follow a bounce) and where block 0 of a video
    starts, from text alone."""
    style_probs: tuple[float, float, float, float] = (0.3, 0.2, 0.35, 0.15)
    """Probabilities of the styles first / single / tick / forcing. Text-only starts get their own
    style: without it the model learnt to continue context but hardly to draw from the caption
    (measured: colour of a first block from text 0.2 -> 0.47 after 300 steps of first-block data)."""

    def with_first_prob(self, p: float) -> LayoutSampler:
        """The same sampler with the *first* style at probability p, the others rescaled."""
        rest = self.style_probs[1:]
        scale = (1.0 - p) / sum(rest)
        return replace(self, style_probs=(p, *(r * scale for r in rest)))

    def __post_init__(self) -> None:
        for name in ("style_probs", "context_probs"):
            probs = getattr(self, name)
            if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
                raise ValueError(f"{name} must be probabilities summing to 1, got {probs}")
        if not 0.0 <= self.bidirectional_prob <= 1.0:
            raise ValueError(f"bidirectional_prob must be in [0, 1], got {self.bidirectional_prob}")

    def _sigma(self, rng: np.random.Generator, batch: int, stage: int | None) -> tuple[float, ...]:
        """Noise per sample. At a schedule stage: mostly its exact sigma, else a level between the
        midpoints to its neighbours (so staggered stages stay ordered). Free: a schedule sigma or a
        continuous shifted one."""
        sched = self.schedule_sigmas
        out = []
        for _ in range(batch):
            if stage is not None:
                if rng.random() < 0.75:
                    out.append(sched[stage])
                else:
                    hi = 1.0 if stage == 0 else (sched[stage] + sched[stage - 1]) / 2
                    lo = (
                        sched[stage] / 2 if stage + 1 == len(sched) else (sched[stage] + sched[stage + 1]) / 2
                    )
                    out.append(float(rng.uniform(lo, hi)))
            elif rng.random() < 0.5:
                out.append(sched[int(rng.integers(len(sched)))])
            else:
                out.append(float(shifted(rng.uniform(0.02, 1.0), self.shift)))
        return tuple(out)

    def sample(self, rng: np.random.Generator, batch_for) -> Layout:
        """A random layout; ``batch_for(num_blocks)`` picks the batch size once the length is known."""
        steps = len(self.schedule_sigmas)
        style = str(rng.choice(["first", "single", "tick", "forcing"], p=self.style_probs))
        n_ctx = int(rng.choice(len(self.context_probs), p=self.context_probs))
        # Stage of each noisy block: an int (schedule stage, S = clean cache step) or None (free level).
        if style == "first":
            # The start of a video from text alone: the clip's first 1-3 blocks, no context.
            stages = [None] * int(rng.integers(1, 4))
            n_ctx = 0
        elif style == "single":
            stages: list[int | None] = [None]
        elif style == "tick":
            lag = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.2, 0.2, 0.2]))
            oldest = int(rng.integers(lag, steps + 1))  # stage of the oldest in-flight block
            stages = [oldest - i * lag for i in range(oldest // lag + 1)][: min(5, self._room)]
        else:
            stages = [None] * int(rng.integers(2, 4))
        n_ctx = max(0, min(n_ctx, self._room - len(stages)))
        nb = n_ctx + len(stages)
        batch = int(batch_for(nb))
        sig = [(0.0,) * batch if s == steps else self._sigma(rng, batch, s) for s in stages]
        loss = [s != steps for s in stages]
        bidirectional = (
            len(stages) > 1 and style in ("tick", "single") and rng.random() < self.bidirectional_prob
        )
        blocks, positions = self._place(rng, n_ctx, nb, style == "first")
        sigmas = ((0.0,) * batch,) * n_ctx + tuple(sig)
        loss = (False,) * n_ctx + tuple(loss)
        if style != "tick":
            return Layout(blocks, positions, sigmas, loss, n_ctx, bidirectional, style)
        tick_stages = (-1,) * n_ctx + tuple(int(s) for s in stages)  # type: ignore[arg-type]
        return Layout(blocks, positions, sigmas, loss, n_ctx, bidirectional, style, tick_stages, lag)

    @property
    def _room(self) -> int:
        """Most blocks a layout may hold: within max_blocks and within one clip."""
        return min(self.max_blocks, self.clip_blocks)

    def _place(
        self, rng: np.random.Generator, n_ctx: int, nb: int, at_start: bool
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Clip blocks and RoPE positions of a layout of nb blocks, the first n_ctx of them context."""
        fpb = self.frames_per_block
        if n_ctx >= 2 and rng.random() < 0.5:
            # Sink block 0, then nb-1 consecutive later blocks, after a gap of unseen frames.
            first = int(rng.integers(1, self.clip_blocks - (nb - 1) + 1))
            blocks = (0, *range(first, first + nb - 1))
            gap = fpb * int(rng.integers(0, self.max_gap_frames // fpb + 1))
            return blocks, (0, *(b * fpb + gap for b in blocks[1:]))
        at_start = at_start or rng.random() < self.start_prob
        first = 0 if at_start else int(rng.integers(0, self.clip_blocks - nb + 1))
        blocks = tuple(range(first, first + nb))
        return blocks, tuple(b * fpb for b in blocks)

    def check_lag_probs(self, lag_probs: tuple[float, ...]) -> None:
        """Probabilities of the lags 1..S+1 of a tick: S+1 entries, >= 0, summing to 1."""
        n = len(self.schedule_sigmas) + 1
        if len(lag_probs) != n:
            raise ValueError(f"lag_probs needs {n} entries (lags 1..{n}), got {lag_probs}")
        if min(lag_probs) < 0 or abs(sum(lag_probs) - 1.0) > 1e-6:
            raise ValueError(f"lag_probs must be >= 0 and sum to 1, got {lag_probs}")

    def sample_tick(
        self,
        rng: np.random.Generator,
        batch_for,
        lag_probs: tuple[float, ...] = (0.3, 0.15, 0.15, 0.15, 0.25),
    ) -> tuple[Layout, tuple[int, ...]]:
        """One tick of the engine exactly as inference runs it, for distillation: every noisy block
        at a stage of the schedule (no jitter), lag 1..S+1 (S+1: the sequential pipeline), and with
        probability ``style_probs[0]`` the start of a video (no context). Returns the layout and
        the stage of each sequence block (-1 for committed context, S for the cache step)."""
        self.check_lag_probs(lag_probs)
        steps = len(self.schedule_sigmas)
        start = rng.random() < self.style_probs[0]
        n_ctx = 0 if start else int(rng.choice(len(self.context_probs), p=self.context_probs))
        lag = 1 + int(rng.choice(steps + 1, p=lag_probs))
        # At the start of a video the oldest block may still be early in its schedule.
        oldest = int(rng.integers(0, steps + 1))
        stages = [oldest - i * lag for i in range(oldest // lag + 1)][: self._room]
        if stages == [steps]:
            stages = [int(rng.integers(0, steps))]  # a lone cache step trains nothing
        n_ctx = max(0, min(n_ctx, self._room - len(stages)))
        nb = n_ctx + len(stages)
        batch = int(batch_for(nb))
        bidirectional = len(stages) > 1 and rng.random() < self.bidirectional_prob
        blocks, positions = self._place(rng, n_ctx, nb, start)
        sched = (*self.schedule_sigmas, 0.0)
        sigmas = ((0.0,) * batch,) * n_ctx + tuple((sched[s],) * batch for s in stages)
        loss = (False,) * n_ctx + tuple(s != steps for s in stages)
        all_stages = (-1,) * n_ctx + tuple(stages)
        layout = Layout(blocks, positions, sigmas, loss, n_ctx, bidirectional, "tick", all_stages, lag)
        return layout, all_stages


def layout_mask(layout: Layout, tokens_per_block: int) -> np.ndarray:
    """[N, N] bool (True = attend): context block-causal; in-flight blocks see all context and each
    other causally or bidirectionally."""
    nb = len(layout.clip_blocks)
    allow = np.zeros((nb, nb), dtype=bool)
    for q in range(nb):
        for k in range(nb):
            if k <= q:
                allow[q, k] = True
            elif q >= layout.n_context and layout.bidirectional:
                allow[q, k] = True
    return np.repeat(np.repeat(allow, tokens_per_block, axis=0), tokens_per_block, axis=1)
