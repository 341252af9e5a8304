"""Engine: plan -> ticks -> streamed frames, with prompt switches and timing.

``Engine.session`` is the one code path: an open-ended stream steered while it runs
(engine/session.py). ``Engine.stream`` is a session that ends after N blocks with its prompt
switches scheduled in advance; it yields each block's decoded frames as soon as the block's last
denoising step has run (its clean x0 is final), in block order. ``generate`` collects them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..cache.pool import KVPool
from ..config import CascadeConfig
from ..scheduling.plan import Plan, build_plan, steady_in_flight
from ..scheduling.timesteps import make_schedule
from ..weights.bundle import Bundle
from .decode_worker import check_decode_mode
from .executor import Counters, Executor
from .session import Session

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
    """One finished block of a stream."""

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
    """The prompt of the tick that finished the block (the target of a blend in progress)."""
    prompts: tuple[str, ...] = ()
    """The prompt each of the block's denoising ticks ran under, in order (S entries; under a
    blend, the prompt the conditioning was moving to)."""
    prompt_weights: tuple[float, ...] = ()
    """Per denoising tick, the weight of ``prompts[i]`` in the conditioning (1.0 = entirely that
    prompt; below 1 during a blend, the rest being the context the blend started from)."""
    tick_seconds: tuple[float, ...] = ()
    """Wall time of each of the block's denoising ticks (the whole tick: every block in it)."""


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
    decode_s: list[float] = field(default_factory=list)
    """Per block, seconds its VAE decode (and host copy) took, inline or on the decode worker."""
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


def default_decode_mode(device: torch.device) -> str:
    """The decode worker on CUDA (its own stream: no host sync in the tick loop). On CPU the
    worker when torch leaves a core free for it (fewer intra-op threads than cores), else inline.
    Measured with the embedded model on 2 cores, interleaved: 1 torch thread, quiet machine:
    worker e2e +18..+37% over inline; 2 threads: worker slower (the cores are oversubscribed),
    at P0 33 against 52 FPS; 1 thread with the cores loaded by other work: within -6..+2%."""
    if device.type == "cuda":
        return "thread"
    return "thread" if torch.get_num_threads() < (os.cpu_count() or 1) else "inline"


class Engine:
    def __init__(
        self,
        bundle: Bundle,
        cascade: CascadeConfig | None = None,
        *,
        batch: int = 1,
        sync_timing: bool = False,
        decode: str | None = None,
    ) -> None:
        self.bundle = bundle
        self.decode_mode = default_decode_mode(bundle.device) if decode is None else check_decode_mode(decode)
        """How ``stream`` / ``generate`` decode: inline (in the tick loop) or thread (on the decode
        worker, overlapped with the next ticks). A live ``session`` decodes inline unless given
        ``decode_mode="thread"`` (inline, no tick runs ahead of its consumer)."""
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
        self._context_memo: dict[str, torch.Tensor] = {}
        self._active_session: Session | None = None

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

    def text_context(self, prompt: str) -> torch.Tensor:
        """The encoded prompt [1, L, text_dim] on the model's device (memoised)."""
        if prompt not in self._context_memo:
            if len(self._context_memo) > 32:
                self._context_memo.clear()
            self._context_memo[prompt] = self.bundle.text_encoder.encode([prompt]).to(self.bundle.device)
        return self._context_memo[prompt]

    def kv_of_context(self, ctx: torch.Tensor) -> list:
        """Cross-attention K/V of every layer for an encoded prompt ``ctx`` [1, L, text_dim]."""
        if self.bundle.sampling.guidance != 1.0:
            # The empty context is all-zero text states, as the model saw under text dropout.
            ctx = torch.cat([ctx, torch.zeros_like(ctx)])
        with torch.no_grad():
            kv = self.bundle.dit.text_kv(ctx)  # [2, ...] under guidance: text, then empty
        if self.batch > 1:
            kv = [tuple(t.repeat_interleave(self.batch, 0) for t in layer) for layer in kv]
        return kv

    def text_kv(self, prompt: str) -> list:
        """``kv_of_context(text_context(prompt))``, memoised per prompt."""
        if prompt not in self._text_kv_memo:
            if len(self._text_kv_memo) > 32:
                self._text_kv_memo.clear()
            self._text_kv_memo[prompt] = self.kv_of_context(self.text_context(prompt))
        return self._text_kv_memo[prompt]

    def session(self, prompt: str, **options) -> Session:
        """An open-ended stream under ``prompt``: iterate it for BlockOutputs; ``set_prompt`` /
        ``pause`` / ``resume`` / ``stop`` from any thread. ``options`` are ``Session``'s (seed,
        switch_mode, blend_blocks, max_blocks, decode, decode_mode, on_boundary), with its
        defaults; one session runs on an engine at a time (they share its K/V pool)."""
        return Session(self, prompt, **options)

    def _session_finished(self) -> None:
        """Called when a session's stream ended normally (a subclass finishes pending work)."""

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
        sw = [s if isinstance(s, PromptSwitch) else PromptSwitch(*s) for s in switches]
        seen = set()
        for s in sw:
            if s.block >= num_blocks:
                raise ValueError(f"switch at block {s.block} but the video has blocks 0..{num_blocks - 1}")
            if s.block in seen:
                raise ValueError(f"two prompt switches at block {s.block}")
            seen.add(s.block)
        # A fixed-length stream has no live control: it may run ahead of its consumer.
        session = self.session(prompt, seed=seed, max_blocks=num_blocks, decode_mode=self.decode_mode)
        for s in sorted(sw, key=lambda s: s.block):
            session.set_prompt(s.prompt, at_block=s.block)
        yield from session

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
