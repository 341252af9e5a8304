"""The executor: runs a Plan's ticks on one device. It decides nothing about *what* runs.

One tick = one forward of every in-flight block (concatenated along frames, per-frame timesteps,
absolute frame positions), then per block the sampler update, and for blocks at their cache step
the promotion of their clean K/V into the committed tier.

Determinism: each block owns a CPU generator seeded from (seed, block), from which its initial
noise and every re-noise draw come, in stage order. The draws of block b are therefore the same at
every cascade level, and level 0 starts block b from the same noise as level 4.

Hot path: a tick allocates no tensor where a preallocated one serves. The in-flight latents are
gathered into a model-input buffer per in-flight count; a re-noise draw fills a scratch buffer
from the block's CPU generator (the same numbers a fresh ``torch.randn`` gives) and is copied to the
device; the sampler updates a block's latents in place with the same operations in the same order
as ``scheduling/timesteps.py`` (bit-identical results). Only a block's start (its own latents) and
its clean x0 (handed to the decoder, so never written again) get fresh tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..cache.pool import KVPool
from ..caching.hook import FeatureCache
from ..models.wan_dit import CausalWanDiT, KVAccess, TextKV, TickTables, sinusoidal_embedding
from ..scheduling.plan import Entry, Tick
from ..scheduling.timesteps import Schedule, x0_from_velocity
from .attention_plan import (
    AttentionImpl,
    TickView,
    check_attention_impl,
    default_attention_impl,
    tick_attention,
)
from .compile import mark_pool_static


def block_seed(seed: int, block: int) -> int:
    """A well-mixed 63-bit seed per (seed, block) (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + block * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


@dataclass
class Counters:
    forwards: int = 0
    """Model calls (one per tick, plus one per re-cache)."""
    block_forwards: int = 0
    """Blocks pushed through the model, summed over calls."""
    recache_forwards: int = 0


@dataclass
class _Block:
    x: torch.Tensor  # [B, C, fpb, h, w] fp32: the input of the block's next stage
    gen: torch.Generator


@dataclass
class Executor:
    model: CausalWanDiT
    schedule: Schedule
    pool: KVPool
    latent_shape: tuple[int, int, int]
    """(C, h, w) of one latent frame."""
    frames_per_block: int
    batch: int = 1
    seed: int = 0
    causal: bool = True
    guidance: float = 1.0
    """Classifier-free guidance: the model runs on a doubled batch (text, empty context)."""
    counters: Counters = field(default_factory=Counters)
    rope_offset: int = 0
    """Frame f runs at RoPE position f - rope_offset (raised by ``rebase``; 0 until a stream
    would pass the model's RoPE table)."""
    sink_shift: int = 0
    """The sink's frames sit at positions f + sink_shift - rope_offset (raised by ``shift_sink``:
    RoPE refresh keeps the sink a fixed distance behind the window)."""
    feature_cache: FeatureCache | None = None
    """Feature cache hook (vidcascade.caching.apply_feature_cache); None = compute everything."""
    attention_impl: AttentionImpl | None = None
    """How a tick's sink bias is applied: "dense" (folded into an additive mask) or "split" (exact,
    through log-sum-exp, mask-free where every key is visible); None = the device's default
    (engine/attention_plan.py)."""

    def __post_init__(self) -> None:
        self.device = self.pool.device
        self.blocks: dict[int, _Block] = {}
        c, h, w = self.latent_shape
        cap = self.pool.layout.capacity
        # Clean latents of the committed frames, slot for slot with the K/V (for re-cache).
        self.committed_x0 = torch.zeros(self.batch, c, cap, h, w, device=self.device)
        self.model_batch = self.batch * (2 if self.guided else 1)
        self._t_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._pos_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._freq_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._rope_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._attn_cache: dict[tuple, object] = {}
        if self.attention_impl is None:
            self.attention_impl = default_attention_impl(self.device)
        mark_pool_static(self.pool.k + self.pool.v)  # CUDA graphs of --compile write them in place
        s = self.schedule
        self._stage_t = [*s.timesteps, s.cache_timestep]
        block_shape = (self.batch, c, self.frames_per_block, h, w)
        self._noise_host = torch.empty(block_shape)  # a re-noise draw, on the CPU generator's side
        self._noise_dev = (
            self._noise_host if self.device.type == "cpu" else torch.empty(block_shape, device=self.device)
        )
        self._scratch = torch.empty(block_shape, device=self.device)  # sigma * v of one block
        self._inputs: dict[int, torch.Tensor] = {}  # n in flight -> model input buffer

    # -- per-block state -------------------------------------------------------------------------

    def _noise(self, gen: torch.Generator) -> torch.Tensor:
        c, h, w = self.latent_shape
        z = torch.randn(self.batch, c, self.frames_per_block, h, w, generator=gen)
        return z.to(self.device)

    def _draw(self, gen: torch.Generator) -> torch.Tensor:
        """Fresh noise of one block from ``gen`` in the scratch buffers (valid until the next draw):
        [B, C, fpb, h, w] on the device."""
        c, h, w = self.latent_shape
        torch.randn(self.batch, c, self.frames_per_block, h, w, generator=gen, out=self._noise_host)
        if self._noise_dev is not self._noise_host:
            self._noise_dev.copy_(self._noise_host)
        return self._noise_dev

    def _start(self, block: int) -> _Block:
        gen = torch.Generator().manual_seed(block_seed(self.seed, block))
        st = _Block(self._noise(gen), gen)
        self.blocks[block] = st
        return st

    # -- cached per-tick tensors -----------------------------------------------------------------

    def _timesteps(self, stages: tuple[int, ...]) -> torch.Tensor:
        if stages not in self._t_cache:
            per_frame = [self._stage_t[s] for s in stages for _ in range(self.frames_per_block)]
            t = torch.tensor(per_frame, dtype=torch.float32, device=self.device)
            self._t_cache[stages] = t[None].expand(self.model_batch, -1)  # [B, n*fpb]
        return self._t_cache[stages]

    def _positions(self, blocks: tuple[int, ...]) -> torch.Tensor:
        """Absolute frame indices of ``blocks`` (in the given order) for RoPE: [n*fpb]."""
        key = (*blocks, -1, self.rope_offset)
        if key not in self._pos_cache:
            if len(self._pos_cache) > 64:
                self._pos_cache.clear()
            fpb, off = self.frames_per_block, self.rope_offset
            frames = [b * fpb + f - off for b in blocks for f in range(fpb)]
            self._pos_cache[key] = torch.tensor(frames, dtype=torch.long, device=self.device)
        return self._pos_cache[key]

    def _tables(self, entries: Sequence[Entry]) -> TickTables:
        """The forward's per-tick tables: the timestep embedding per stage tuple (a handful at
        steady state), RoPE per block tuple (new every tick; a small cache serves repeated runs)."""
        stages = tuple(e.stage for e in entries)
        if stages not in self._freq_cache:
            self._freq_cache[stages] = sinusoidal_embedding(self._timesteps(stages), self.model.cfg.freq_dim)
        key = (*(e.block for e in entries), -1, self.rope_offset)
        if key not in self._rope_cache:
            if len(self._rope_cache) > 64:
                self._rope_cache.clear()
            _, ph, pw = self.model.cfg.patch_size
            _, h, w = self.latent_shape
            pos = self._positions(tuple(e.block for e in entries))
            self._rope_cache[key] = self.model.rope.cos_sin(pos, h // ph, w // pw)
        return TickTables(self._freq_cache[stages], *self._rope_cache[key])

    def use_attention(self, impl: AttentionImpl) -> None:
        """Apply the sink bias through ``impl`` ("dense" | "split") from the next tick on."""
        check_attention_impl(impl)
        self.attention_impl = impl
        self._attn_cache.clear()

    def tick_view(self, n_inflight: int) -> KVAccess:
        """The pool's store for a tick of ``n_inflight`` blocks, attending through a
        ``TickAttention`` prepared once per (in-flight count, committed length, sink bias)."""
        pool = self.pool
        ct = pool.valid_committed_tokens()
        key = (n_inflight, ct, pool.sink_bias_tokens(ct))
        if key not in self._attn_cache:
            self._attn_cache[key] = tick_attention(pool, n_inflight, ct, self.causal, self.attention_impl)
        return TickView(pool.tick_view(n_inflight, self.causal), self._attn_cache[key])

    # -- positions over long streams -------------------------------------------------------------

    def rebase(self, delta: int) -> None:
        """Exact rebase: every stored key moves ``delta`` positions back and later frames run at
        positions ``delta`` lower, so every attention score stays what it was."""
        self.pool.rotate_keys(-delta)
        self.rope_offset += delta
        self.pool.place_sink(self.sink_shift - self.rope_offset)

    def shift_sink(self, delta: int) -> None:
        """Move the sink's stored keys ``delta`` positions forward (RoPE refresh)."""
        self.sink_shift += delta
        self.pool.place_sink(self.sink_shift - self.rope_offset)

    # -- ticks -----------------------------------------------------------------------------------

    @torch.no_grad()
    def run_tick(self, tick: Tick, text_kv: TextKV) -> dict[int, torch.Tensor]:
        """Run one tick; returns {block: clean x0 [B, C, fpb, h, w]} for blocks ready this tick."""
        entries = tick.entries
        n = len(entries)
        states = self.states(entries)
        v = self.forward(entries, states, text_kv, self.tick_view(n))
        fpb = self.frames_per_block
        ready = {}
        for i, (e, st) in enumerate(zip(entries, states)):
            if e.stage == self.schedule.num_steps:  # cache step: its K/V was written clean; promote it
                self.pool.promote(i, n, e.block * fpb)
                self.store_committed_x0(e.block, st.x)
                del self.blocks[e.block]
                continue
            x0 = self.advance(e, st, v[:, :, i * fpb : (i + 1) * fpb])
            if x0 is not None:
                ready[e.block] = x0
        return ready

    def states(self, entries: Sequence[Entry]) -> list[_Block]:
        """Per-block state of ``entries``; a block at its first stage starts from its seeded noise."""
        return [self.blocks.get(e.block) or self._start(e.block) for e in entries]

    def forward(
        self, entries: Sequence[Entry], states: list[_Block], text_kv: TextKV, view: KVAccess
    ) -> torch.Tensor:
        """One model call on ``entries`` (concatenated along frames): velocity [B, C, n*fpb, h, w]."""
        n = len(entries)
        x = self._input(states)  # [model_batch, C, n*fpb, h, w]
        t = self._timesteps(tuple(e.stage for e in entries))  # [B, n*fpb]
        tables = self._tables(entries)  # timestep embedding [B, n*fpb, freq], RoPE [N, Dh/2]
        fc = self.feature_cache
        hook = fc.begin_tick(entries, text_kv) if fc is not None else None
        v = self._guided(x, t, text_kv, tables, view, hook)  # [B, C, n*fpb, h, w]
        if fc is not None:
            fc.end_tick()
        self.counters.forwards += 1
        self.counters.block_forwards += n
        return v

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    def _input(self, states: list[_Block]) -> torch.Tensor:
        """The model's input: the blocks' latents along frames, twice along the batch under
        guidance, in a buffer kept per in-flight count: [model_batch, C, n*fpb, h, w]."""
        n = len(states)
        if n == 1 and not self.guided:
            return states[0].x  # the model does not write its input
        buf = self._inputs.get(n)
        if buf is None:
            c, h, w = self.latent_shape
            buf = torch.empty(self.model_batch, c, n * self.frames_per_block, h, w, device=self.device)
            self._inputs[n] = buf
        torch.cat([st.x for st in states], dim=2, out=buf[: self.batch])
        if self.guided:  # the same latents under the text and the empty context
            buf[self.batch :].copy_(buf[: self.batch])
        return buf

    def _guided(self, x, t, text_kv: TextKV, tables: TickTables, view, hook=None) -> torch.Tensor:
        """The model's velocity [B, ...] from its input ``x`` [model_batch, ...], with
        classifier-free guidance when enabled (``x`` and text_kv then hold the text and the empty
        context stacked along the batch)."""
        if not self.guided:
            return self.model(x, t, text_kv=text_kv, kv=view, layer_hook=hook, tables=tables).float()
        v = self.model(x, t, text_kv=text_kv, kv=view, layer_hook=hook, tables=tables).float()
        v_text, v_empty = v.chunk(2)
        return v_empty + self.guidance * (v_text - v_empty)

    def advance(self, e: Entry, st: _Block, v: torch.Tensor) -> torch.Tensor | None:
        """Sampler update of a denoising stage from its velocity v [B, C, fpb, h, w]; returns the
        clean x0 when this was the block's last denoising step (the cache step then runs on it)."""
        sched = self.schedule
        sig, sig_next = sched.sigmas[e.stage], sched.sigmas[e.stage + 1]
        if e.stage == sched.num_steps - 1:
            st.x = x0_from_velocity(st.x, v, sig)  # a fresh tensor: the decoder may still read it
            return st.x
        # In place, term for term as renoise(x0_from_velocity(...)) / euler_step compute it.
        x, sv = st.x, self._scratch
        if sched.sampler == "renoise":
            x.sub_(torch.mul(v, sig, out=sv))  # x0 = x_t - sigma v
            z = self._draw(st.gen)
            x.mul_(1.0 - sig_next).add_(z.mul_(sig_next))  # (1 - sigma') x0 + sigma' eps
        else:
            x.add_(torch.mul(v, sig_next - sig, out=sv))  # x_t + (sigma' - sigma) v
        return None

    def store_committed_x0(self, block: int, x0: torch.Tensor) -> None:
        """Keep a committed block's clean latents slot for slot with its K/V (for re-cache).
        Call after its K/V was promoted."""
        first = block * self.frames_per_block
        layout = self.pool.layout
        for j in range(self.frames_per_block):
            self.committed_x0[:, :, layout.slot_for(first + j)] = x0[:, :, j]

    @torch.no_grad()
    def recache(self, text_kv: TextKV) -> None:
        """LongLive-style re-cache: one forward of every committed frame under the new prompt."""
        frames = self.pool.layout.visible_frames()
        if not frames:
            return
        nslots = len(frames)
        x = self.committed_x0[:, :, :nslots]  # [B, C, n, h, w]
        if self.guided:
            x = torch.cat([x, x])
        t = torch.full((self.model_batch, nslots), self.schedule.cache_timestep, device=self.device)
        sink = self.pool.layout.sink_frames
        pos = [f - self.rope_offset + (self.sink_shift if f < sink else 0) for f in frames]
        # After exact rebases the sink may sit before position 0, outside the table: re-encode it
        # right behind the window (as refresh places it), then move its keys where they belong.
        if pos and min(pos) < 0:
            window = [p for f, p in zip(frames, pos) if f >= sink]
            back = min(pos) - (min(window) - sink)
            pos = [p - back if f < sink else p for f, p in zip(frames, pos)]
        pos_t = torch.tensor(pos, device=self.device)
        self.model(x, t, text_kv=text_kv, frame_pos=pos_t, kv=self.pool.recache_view())
        if sink and frames[0] == 0 and len(frames) >= sink:
            self.pool.capture_sink(pos[0])
            self.pool.place_sink(self.sink_shift - self.rope_offset)
        self.counters.forwards += 1
        self.counters.recache_forwards += 1

    def reset(self, seed: int) -> None:
        self.seed = seed
        self.blocks.clear()
        self.pool.reset()
        self.rope_offset = 0
        self.sink_shift = 0
        self.counters = Counters()
        if self.feature_cache is not None:
            self.feature_cache.reset()
