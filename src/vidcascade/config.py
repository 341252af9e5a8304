"""Typed, validated configuration for vidcascade.

One frozen dataclass per concern, checked in ``__post_init__`` so that a bad value fails where it
is made, with a message that names the value and what was expected. Field docstrings (the string
literal after each field) double as CLI help.

The definitions (stage, lag, cascade level, K/V tiers, prompt switch) are those of DESIGN.md §1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

AttentionMode = Literal["causal", "bidirectional"]
SwitchMode = Literal["no-recache", "recache", "blend"]
PositionMode = Literal["exact", "refresh"]
SamplerKind = Literal["renoise", "euler"]
Freshness = Literal["joint", "per_tick"]


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _positive_int(name: str, value: object) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{name} must be a positive integer, got {value!r}",
    )


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Geometry of a (causal) Wan DiT. Names follow the original Wan configs."""

    dim: int = 1536
    """Width of the residual stream."""
    ffn_dim: int = 8960
    """Hidden width of the feed-forward network."""
    num_heads: int = 12
    """Attention heads; head_dim = dim / num_heads."""
    num_layers: int = 30
    """Transformer blocks."""
    in_dim: int = 16
    """Latent channels in."""
    out_dim: int = 16
    """Latent channels out (the velocity)."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """(t, h, w) patch of the Conv3d patch embedding."""
    text_dim: int = 4096
    """Width of the text encoder's per-token states."""
    text_len: int = 512
    """Text tokens: prompts are zero-padded to this length before the text MLP."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    eps: float = 1e-6
    """Epsilon of LayerNorm and RMSNorm."""
    cross_attn_norm: bool = True
    """LayerNorm with affine before cross-attention (norm3)."""
    rope_max_frames: int = 1024
    """Length of the RoPE position table (frames, rows and columns)."""

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_dim",
            "text_len",
            "freq_dim",
            "rope_max_frames",
        ):
            _positive_int(name, getattr(self, name))
        _check(
            self.dim % self.num_heads == 0,
            f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})",
        )
        hd = self.dim // self.num_heads
        # RoPE splits head_dim into time/height/width parts of whole complex pairs.
        _check(hd % 2 == 0 and hd >= 6, f"head_dim = dim/num_heads must be even and >= 6, got {hd}")
        _check(self.freq_dim % 2 == 0, f"freq_dim must be even, got {self.freq_dim}")
        _check(
            len(self.patch_size) == 3 and all(isinstance(p, int) and p > 0 for p in self.patch_size),
            f"patch_size must be three positive ints, got {self.patch_size!r}",
        )
        _check(self.eps > 0, f"eps must be > 0, got {self.eps}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_dim_out(self) -> int:
        return math.prod(self.patch_size) * self.out_dim

    def num_params(self) -> int:
        """Parameter count of the DiT with this geometry (no biases omitted)."""
        d, f, p = self.dim, self.ffn_dim, math.prod(self.patch_size)
        n = d * self.in_dim * p + d  # patch embedding
        n += self.text_dim * d + d + d * d + d  # text MLP
        n += self.freq_dim * d + d + d * d + d  # time MLP
        n += 6 * d * d + 6 * d  # time projection
        per_block = 6 * d  # modulation
        per_block += 2 * (4 * (d * d + d) + 2 * d)  # self + cross attention with q/k norms
        per_block += 2 * d  # norm3 (affine)
        per_block += d * f + f + f * d + d  # ffn
        n += self.num_layers * per_block
        n += 2 * d + d * self.patch_dim_out + self.patch_dim_out  # head
        return n


MODEL_PRESETS: dict[str, ModelConfig] = {
    # Shapes from reference/block_causal_models.md §1.1 (Wan2.1 T2V).
    "wan-1.3b": ModelConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan-14b": ModelConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # The embedded default: 8-channel per-frame latents of 8x8, 2x2 patches -> 16 tokens per frame,
    # conditioned on MiniLM per-token states (384-d).
    "tiny": ModelConfig(
        dim=192, ffn_dim=768, num_heads=4, num_layers=6, in_dim=8, out_dim=8, text_dim=384, text_len=32
    ),
}


@dataclass(frozen=True)
class SamplingConfig:
    """Denoising schedule of one block (Self-Forcing conventions, reference §3)."""

    steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    """Timesteps as written, t_1 > ... > t_S, in (0, num_train_timesteps]."""
    warp: bool = True
    """Replace each listed t by the shifted table value (Self-Forcing's warp_denoising_step)."""
    shift: float = 5.0
    """Timestep shift of the flow-matching sigma table."""
    frames_per_block: int = 3
    """Latent frames denoised together as one block."""
    context_noise: float = 0.0
    """Timestep of the cache step (the clean re-run that writes committed K/V)."""
    sampler: SamplerKind = "renoise"
    """renoise: x0 re-noised with fresh noise (Self-Forcing); euler: deterministic flow ODE."""
    num_train_timesteps: int = 1000
    """Length of the training timestep table."""
    guidance: float = 1.0
    """Classifier-free guidance scale; 1 = off. Above 1 every forward also runs the empty context
    (its own K/V cache), and v = v_empty + guidance * (v_text - v_empty)."""

    def __post_init__(self) -> None:
        _check(len(self.steps) >= 1, "steps must list at least one timestep")
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        _positive_int("num_train_timesteps", self.num_train_timesteps)
        for s in steps:
            _check(
                0 < s <= self.num_train_timesteps,
                f"each step must be in (0, {self.num_train_timesteps}], got {s}",
            )
        _check(
            all(a > b for a, b in zip(steps, steps[1:])),
            f"steps must be strictly decreasing, got {list(steps)}",
        )
        _check(self.shift > 0, f"shift must be > 0, got {self.shift}")
        _positive_int("frames_per_block", self.frames_per_block)
        _check(
            0 <= self.context_noise < self.num_train_timesteps,
            f"context_noise must be in [0, {self.num_train_timesteps}), got {self.context_noise}",
        )
        _choice("sampler", self.sampler, ("renoise", "euler"))
        _check(self.guidance >= 1.0, f"guidance must be >= 1 (1 = off), got {self.guidance}")

    @property
    def num_steps(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class CacheConfig:
    """Committed K/V tier: a sink that is never evicted plus a rolling window (frames)."""

    sink_frames: int = 3
    """First latent frames kept for the whole video."""
    window_frames: int = 12
    """Most recent committed latent frames kept besides the sink."""
    sink_bias: float = 0.0
    """Added to the attention logits of the sink's keys once the window holds frames (0 = plain
    attention). Above 0 every block looks back at the video's first block more than at the recent
    ones, which keeps long videos of a small model on prompt; the model's default comes from its
    bundle."""
    positions: PositionMode = "exact"
    """RoPE positions of streams longer than the table: exact (re-rotate every cached key back
    when the table would run out: attention unchanged) or refresh (the same, and the sink is kept
    at most ``refresh_gap`` frames behind the window). See engine/positions.py. Exact by default:
    within the table it changes nothing; the embedded model ships refresh (measured on 2,000-block
    streams: shape stays on prompt in the last quarter, where exact drifts)."""
    refresh_gap: int = 150
    """refresh: most frames between the sink and the oldest window frame (the embedded model was
    trained with gaps up to 150 frames)."""

    def __post_init__(self) -> None:
        _choice("positions", self.positions, ("exact", "refresh"))
        _check(
            isinstance(self.refresh_gap, int)
            and not isinstance(self.refresh_gap, bool)
            and self.refresh_gap >= 0,
            f"refresh_gap must be an integer >= 0 (frames), got {self.refresh_gap!r}",
        )
        _check(
            isinstance(self.sink_frames, int) and self.sink_frames >= 0,
            f"sink_frames must be an integer >= 0, got {self.sink_frames!r}",
        )
        _positive_int("window_frames", self.window_frames)
        _check(
            isinstance(self.sink_bias, (int, float))
            and not isinstance(self.sink_bias, bool)
            and math.isfinite(self.sink_bias)
            and self.sink_bias >= 0,
            f"sink_bias must be a finite number >= 0, got {self.sink_bias!r}",
        )

    @property
    def committed_frames(self) -> int:
        return self.sink_frames + self.window_frames


@dataclass(frozen=True)
class CascadeConfig:
    """How blocks overlap. Give either ``level`` (P) or ``lag`` (L); P = S + 1 - L."""

    level: int | None = None
    """Cascade level P: 0 = sequential, S = fully parallel."""
    lag: int | None = None
    """Lag L in ticks between consecutive blocks entering stage 0 (1 <= L <= S+1)."""
    attention: AttentionMode = "causal"
    """Cross-block attention among in-flight blocks: causal or bidirectional."""
    switch_mode: SwitchMode = "no-recache"
    """What a prompt switch does: no-recache (cascade), recache (LongLive baseline) or blend (the
    encoded prompt moves from old to new over a few blocks; engine/session.py)."""
    freshness: Freshness = "joint"
    """Multi-process only: joint (exact) or per_tick (in-flight K/V one tick stale)."""

    def __post_init__(self) -> None:
        _check(
            not (self.level is not None and self.lag is not None),
            f"give either level or lag, not both (level={self.level}, lag={self.lag})",
        )
        for name in ("level", "lag"):
            v = getattr(self, name)
            _check(
                v is None or (isinstance(v, int) and not isinstance(v, bool)),
                f"{name} must be an integer, got {v!r}",
            )
        _check(self.level is None or self.level >= 0, f"level must be >= 0, got {self.level}")
        _check(self.lag is None or self.lag >= 1, f"lag must be >= 1, got {self.lag}")
        _choice("attention", self.attention, ("causal", "bidirectional"))
        _choice("switch_mode", self.switch_mode, ("no-recache", "recache", "blend"))
        _choice("freshness", self.freshness, ("joint", "per_tick"))

    def resolve_lag(self, num_steps: int) -> int:
        """The lag L for a schedule of ``num_steps`` denoising steps (S); default: fully parallel."""
        stages = num_steps + 1
        if self.lag is not None:
            _check(self.lag <= stages, f"lag must be in 1..{stages} for {num_steps} steps, got {self.lag}")
            return self.lag
        if self.level is not None:
            _check(
                self.level <= num_steps,
                f"level must be in 0..{num_steps} for {num_steps} steps, got {self.level}",
            )
            return stages - self.level
        return 1


CachePolicy = Literal["none", "bwcache", "flowcache"]
CACHE_POLICY_DEFAULTS = {"bwcache": 0.15, "flowcache": 0.015}
"""Default thresholds: BWCache's released ``thresh``; FlowCache's MAGI-1 ``rel_l1_thresh`` (fast)."""


@dataclass(frozen=True)
class FeatureCacheConfig:
    """Feature cache (DESIGN §1): reuse a DiT block's residual for a (video block, DiT block) pair
    instead of computing it. docs/caching.md describes each field and which source it follows."""

    policy: CachePolicy = "none"
    """none (never reuse), bwcache (hsc113/BWCache semantics) or flowcache (per video block)."""
    threshold: float | None = None
    """Reuse below this indicator value; None = the policy's default (0 = never reuse)."""
    interval: int | None = None
    """BWCache R: steps reused after a computed one; None = round(10% of the steps), at least 1."""
    last_steps: float = 0.5
    """BWCache tail: after the first reuse decision at step k, the last int(k * last_steps) steps
    (< 1: a fraction of k) or int(last_steps) steps (>= 1) are computed; at least the last one."""
    variant: Literal["code", "paper"] = "code"
    """BWCache: code = one static schedule written at the first trigger (released code); paper =
    check at every computed step, reuse the next R steps."""
    granularity: Literal["stack", "dit_block"] = "stack"
    """BWCache: stack = one decision per video block for all DiT blocks (code); dit_block = one
    per (video block, DiT block), each on its own indicator."""
    kv: Literal["fresh", "stale"] = "fresh"
    """K/V a skipping row offers the others: fresh (projected from its current input) or stale
    (stored at its last computed step)."""
    warmup: int = 5
    """FlowCache: denoising steps a video block always computes first."""

    def __post_init__(self) -> None:
        _choice("cache policy", self.policy, ("none", "bwcache", "flowcache"))
        _check(
            self.threshold is None
            or (
                isinstance(self.threshold, (int, float))
                and math.isfinite(self.threshold)
                and self.threshold >= 0
            ),
            f"cache threshold must be a finite number >= 0, got {self.threshold!r}",
        )
        _check(
            self.interval is None or (isinstance(self.interval, int) and self.interval >= 1),
            f"cache interval must be an integer >= 1, got {self.interval!r}",
        )
        _check(
            isinstance(self.last_steps, (int, float)) and self.last_steps >= 0,
            f"cache last_steps must be a number >= 0, got {self.last_steps!r}",
        )
        _choice("cache variant", self.variant, ("code", "paper"))
        _choice("cache granularity", self.granularity, ("stack", "dit_block"))
        _choice("cache kv", self.kv, ("fresh", "stale"))
        _check(
            isinstance(self.warmup, int) and self.warmup >= 0,
            f"cache warmup must be an integer >= 0, got {self.warmup!r}",
        )

    @property
    def resolved_threshold(self) -> float:
        if self.threshold is not None:
            return float(self.threshold)
        return CACHE_POLICY_DEFAULTS.get(self.policy, 0.0)

    def resolved_interval(self, num_steps: int) -> int:
        return self.interval if self.interval is not None else max(1, round(0.1 * num_steps))


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs besides weights."""

    model: ModelConfig = field(default_factory=lambda: MODEL_PRESETS["tiny"])
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)


def model_preset(name: str) -> ModelConfig:
    """Look up a named geometry; the error lists the known names."""
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}") from None
