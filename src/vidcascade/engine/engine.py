"""Engine: plan -> ticks -> streamed frames, with prompt switches and timing.

``Engine.stream`` yields each block's decoded frames as soon as the block's last denoising step
has run (its clean x0 is final), in block order. ``generate`` collects them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..cache.pool import KVPool
from ..config import CascadeConfig
from ..scheduling.plan import Plan, build_plan, steady_in_flight
from ..scheduling.timesteps import make_schedule
from ..weights.bundle import Bundle
from .executor import Counters, Executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSwitch:
    """From the tick at which ``block`` enters stage 0, every in-flight block uses ``prompt``."""

    block: int
    prompt: str

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or self.block < 0:
            raise ValueError(f"switch block must be an integer >= 0, got {self.block!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"switch at block {self.block}: prompt must be a non-empty string")


@dataclass
class BlockOutput:
    block: int
    latents: torch.Tensor
    """Clean latents [B, C, fpb, h, w] (on the CPU)."""
    frames: np.ndarray
    """Decoded uint8 frames [B, T, H, W, 3]."""
    ready_s: float
    """Seconds from the start of the stream until these frames were decoded."""
    latency_s: float
    """Seconds from the block's first forward until its frames were decoded."""
    prompt: str


@dataclass
class TickRecord:
    n_inflight: int
    committed_tokens: int
    seconds: float


@dataclass
class RunStats:
    blocks: int = 0
    frames: int = 0
    seconds: float = 0.0
    ttff_s: float = 0.0
    block_latency_s: list[float] = field(default_factory=list)
    ticks: list[TickRecord] = field(default_factory=list)
    recache_s: list[float] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Video:
    frames: np.ndarray
    """uint8 [B, T, H, W, 3]."""
    latents: torch.Tensor
    """[B, C, F, h, w]."""
    fps: float
    stats: RunStats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    def __init__(
        self,
        bundle: Bundle,
        cascade: CascadeConfig | None = None,
        *,
        batch: int = 1,
        sync_timing: bool = False,
    ) -> None:
        self.bundle = bundle
        self.cascade = cascade or CascadeConfig()
        self.schedule = make_schedule(bundle.sampling)
        self.lag = self.cascade.resolve_lag(self.schedule.num_steps)
        self.batch = batch
        self.sync_timing = sync_timing
        cfg = bundle.dit.cfg
        h, w = bundle.latent_hw
        fpb = bundle.sampling.frames_per_block
        dtype = bundle.dit.patch_embedding.weight.dtype
        guidance = bundle.sampling.guidance
        self.pool = KVPool(
            num_layers=cfg.num_layers,
            batch=batch * (2 if guidance != 1.0 else 1),  # guidance: text and empty context
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            tokens_per_frame=bundle.dit.tokens_per_frame(h, w),
            frames_per_block=fpb,
            max_inflight_blocks=self._inflight_capacity(),
            sink_frames=bundle.cache.sink_frames,
            window_frames=bundle.cache.window_frames,
            sink_bias=bundle.cache.sink_bias,
            dtype=dtype,
            device=bundle.device,
        )
        self.executor = self._make_executor(
            model=bundle.dit,
            schedule=self.schedule,
            pool=self.pool,
            latent_shape=(cfg.in_dim, h, w),
            frames_per_block=fpb,
            batch=batch,
            causal=self.cascade.attention == "causal",
            guidance=guidance,
        )
        self.stats = RunStats()
        self._text_kv_memo: dict[str, list] = {}

    def _inflight_capacity(self) -> int:
        """In-flight blocks the K/V pool must hold (a subclass that lays the tier out otherwise
        says so here)."""
        return steady_in_flight(self.schedule.num_steps, self.lag)

    def _make_executor(self, **kwargs) -> Executor:
        return Executor(**kwargs)

    @property
    def level(self) -> int:
        return self.schedule.num_steps + 1 - self.lag

    def plan(self, num_blocks: int) -> Plan:
        return build_plan(num_blocks, self.schedule.num_steps, self.lag, self.cascade.attention)

    def text_kv(self, prompt: str) -> list:
        if prompt not in self._text_kv_memo:
            if len(self._text_kv_memo) > 32:
                self._text_kv_memo.clear()
            ctx = self.bundle.text_encoder.encode([prompt]).to(self.bundle.device)
            if self.bundle.sampling.guidance != 1.0:
                # The empty context is all-zero text states, as the model saw under text dropout.
                ctx = torch.cat([ctx, torch.zeros_like(ctx)])
            with torch.no_grad():
                kv = self.bundle.dit.text_kv(ctx)  # [2, ...] under guidance: text, then empty
            if self.batch > 1:
                kv = [tuple(t.repeat_interleave(self.batch, 0) for t in layer) for layer in kv]
            self._text_kv_memo[prompt] = kv
        return self._text_kv_memo[prompt]

    def stream(
        self,
        prompt: str,
        num_blocks: int,
        *,
        seed: int = 0,
        switches: Sequence[PromptSwitch | tuple[int, str]] = (),
    ) -> Iterator[BlockOutput]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        frames = num_blocks * self.bundle.sampling.frames_per_block
        if frames > self.bundle.dit.cfg.rope_max_frames:
            raise ValueError(
                f"{num_blocks} blocks are {frames} latent frames, beyond the model's RoPE table of "
                f"{self.bundle.dit.cfg.rope_max_frames} frame positions"
            )
        sw = [s if isinstance(s, PromptSwitch) else PromptSwitch(*s) for s in switches]
        by_block = {}
        for s in sw:
            if s.block >= num_blocks:
                raise ValueError(f"switch at block {s.block} but the video has blocks 0..{num_blocks - 1}")
            if s.block in by_block:
                raise ValueError(f"two prompt switches at block {s.block}")
            by_block[s.block] = s.prompt

        plan = self.plan(num_blocks)
        ex = self.executor
        ex.reset(seed)
        decoder = self.bundle.make_decoder()
        decoder.reset()
        stats = self.stats = RunStats()
        device = self.bundle.device
        current = prompt
        text_kv = self.text_kv(current)
        started: dict[int, float] = {}
        t0 = time.perf_counter()
        for tick in plan.ticks:
            for e in tick.entries:
                if e.stage == 0 and e.block in by_block:
                    current = by_block[e.block]
                    text_kv = self.text_kv(current)
                    if e.block > 0:  # the sink shows the old prompt: stop raising it
                        self.pool.sink_on_prompt = False
                    if self.cascade.switch_mode == "recache":
                        r0 = time.perf_counter()
                        ex.recache(text_kv)
                        _sync(device)
                        stats.recache_s.append(time.perf_counter() - r0)
                    log.info("prompt switch at block %d: %r", e.block, current)
            ts = time.perf_counter()
            for e in tick.entries:
                started.setdefault(e.block, ts)
            committed = self.pool.valid_committed_tokens()
            ready = ex.run_tick(tick, text_kv)
            if self.sync_timing:
                _sync(device)
            stats.ticks.append(TickRecord(len(tick.entries), committed, time.perf_counter() - ts))
            for block, x0 in ready.items():
                frames = decoder.decode(x0)
                now = time.perf_counter()
                out = BlockOutput(block, x0.cpu(), frames, now - t0, now - started[block], current)
                if block == 0:
                    stats.ttff_s = now - t0
                stats.blocks += 1
                stats.frames += frames.shape[1]
                stats.block_latency_s.append(out.latency_s)
                stats.seconds = now - t0
                yield out
        stats.seconds = time.perf_counter() - t0
        stats.counters = ex.counters

    def generate(
        self,
        prompt: str,
        num_blocks: int,
        *,
        seed: int = 0,
        switches: Sequence[PromptSwitch | tuple[int, str]] = (),
    ) -> Video:
        outs = list(self.stream(prompt, num_blocks, seed=seed, switches=switches))
        frames = np.concatenate([o.frames for o in outs], axis=1)
        latents = torch.cat([o.latents for o in outs], dim=2)
        return Video(frames, latents, self.bundle.fps, self.stats)
