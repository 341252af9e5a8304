"""The WebSocket protocol: limits, client messages (validated), the binary frame header.

Client -> server: JSON text messages ``{"type": "start" | "prompt" | "pause" | "resume" | "stop", ...}``.
Server -> client: JSON text events and binary frames (an 8-byte header, then one JPEG). docs/serving.md
is the reference; this file is the one place that decides what is valid.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError

SWITCH_MODES = ("no-recache", "recache", "blend")
ATTENTIONS = ("causal", "bidirectional")

FRAME_HEADER = struct.Struct(">IHH")
"""Binary frame header, big-endian: block (u32), frame index within the block (u16), reserved (u16)."""


@dataclass(frozen=True)
class ServeConfig:
    """Limits and knobs of one server. Every queue and every input is bounded by one of these."""

    max_message_bytes: int = 4096
    """Largest client message accepted; a larger one gets an error (the connection stays up)."""
    max_prompt_chars: int = 500
    """Longest prompt accepted."""
    prompt_rate: float = 4.0
    """Prompt changes per second a client may send (token bucket, burst of the same size)."""
    max_session_s: float = 600.0
    """Wall-clock length after which a session is stopped (reason ``limit``)."""
    max_session_blocks: int | None = None
    """Blocks after which a session is stopped (None: only the time limit)."""
    send_queue_frames: int = 24
    """Frames a connection may have waiting to be sent; past it the oldest waiting frame is dropped."""
    record_frames: int = 4800
    """Frames of a session kept (as the JPEGs sent) for the mp4 download; oldest dropped past it."""
    jpeg_quality: int = 90
    pace: bool = True
    """Generate at most ``lead_s`` ahead of a viewer playing at the model's frame rate."""
    lead_s: float = 1.0
    """How far ahead of real time a paced session may run (the client's jitter buffer)."""
    token: str | None = None
    """When set, WebSocket and recording URLs must carry ``?token=...``."""

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_prompt_chars", "send_queue_frames", "record_frames"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.prompt_rate > 0:
            raise ConfigError(f"prompt_rate must be > 0 per second, got {self.prompt_rate!r}")
        if not self.max_session_s > 0:
            raise ConfigError(f"max_session_s must be > 0 seconds, got {self.max_session_s!r}")
        if self.max_session_blocks is not None and self.max_session_blocks < 1:
            raise ConfigError(f"max_session_blocks must be >= 1 or None, got {self.max_session_blocks!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        if not self.lead_s >= 0:
            raise ConfigError(f"lead_s must be >= 0 seconds, got {self.lead_s!r}")
        if self.token is not None and not self.token:
            raise ConfigError("token must be a non-empty string or None")


class ProtocolError(Exception):
    """A client message that is not acted on; sent back as ``{"type": "error", "code", "message"}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def event(self) -> dict:
        return {"type": "error", "code": self.code, "message": str(self)}


@dataclass(frozen=True)
class Start:
    prompt: str
    seed: int = 0
    level: int | None = None
    attention: Literal["causal", "bidirectional"] | None = None
    switch_mode: Literal["no-recache", "recache", "blend"] = "no-recache"
    blend_blocks: int = 4
    pace: bool | None = None


@dataclass(frozen=True)
class Prompt:
    prompt: str
    mode: Literal["no-recache", "recache", "blend"] | None = None


@dataclass(frozen=True)
class Control:
    """pause, resume or stop."""

    type: Literal["pause", "resume", "stop"]


Message = Start | Prompt | Control


def _prompt(d: dict, cfg: ServeConfig) -> str:
    p = d.get("prompt")
    if not isinstance(p, str) or not p.strip():
        raise ProtocolError("bad_value", f"prompt must be a non-empty string, got {p!r:.80}")
    if len(p) > cfg.max_prompt_chars:
        raise ProtocolError("too_long", f"prompt has {len(p)} characters, at most {cfg.max_prompt_chars}")
    return p.strip()


def _int(d: dict, key: str, default, lo: int, hi: int):
    v = d.get(key, default)
    if v is None and default is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolError("bad_value", f"{key} must be an integer in {lo}..{hi}, got {v!r:.40}")
    return v


def _choice(d: dict, key: str, default, choices: tuple[str, ...]):
    v = d.get(key, default)
    if v is None and default is None:
        return None
    if v not in choices:
        raise ProtocolError("bad_value", f"{key} must be one of {', '.join(choices)}, got {v!r:.40}")
    return v


def parse_message(raw: str | bytes | None, cfg: ServeConfig, num_steps: int) -> Message:
    """One client message -> a typed message, or ProtocolError naming what is wrong."""
    if raw is None:
        raise ProtocolError("malformed", "empty message")
    if isinstance(raw, bytes):
        raise ProtocolError("malformed", "binary messages are not accepted; send JSON text")
    if len(raw.encode("utf-8", "replace")) > cfg.max_message_bytes:
        raise ProtocolError("too_large", f"message over {cfg.max_message_bytes} bytes")
    try:
        d = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("malformed", f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError("malformed", f"expected a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    if kind == "start":
        return Start(
            prompt=_prompt(d, cfg),
            seed=_int(d, "seed", 0, 0, 2**31 - 1),
            level=_int(d, "level", None, 0, num_steps),
            attention=_choice(d, "attention", None, ATTENTIONS),
            switch_mode=_choice(d, "switch_mode", "no-recache", SWITCH_MODES),
            blend_blocks=_int(d, "blend_blocks", 4, 1, 64),
            pace=_bool(d, "pace"),
        )
    if kind == "prompt":
        return Prompt(prompt=_prompt(d, cfg), mode=_choice(d, "mode", None, SWITCH_MODES))
    if kind in ("pause", "resume", "stop"):
        return Control(kind)
    raise ProtocolError(
        "unknown_type", f"unknown message type {kind!r:.40}; expected start, prompt, pause, resume or stop"
    )


def _bool(d: dict, key: str) -> bool | None:
    v = d.get(key)
    if v is not None and not isinstance(v, bool):
        raise ProtocolError("bad_value", f"{key} must be true or false, got {v!r:.40}")
    return v


class RateLimiter:
    """Token bucket: ``rate`` events per second, bursts up to ``rate`` (at least 1)."""

    def __init__(self, rate: float, clock) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def frame_message(block: int, index: int, jpeg: bytes) -> bytes:
    return FRAME_HEADER.pack(block, index, 0) + jpeg


def parse_frame(data: bytes) -> tuple[int, int, bytes]:
    """Binary frame -> (block, index within block, JPEG bytes)."""
    block, index, _ = FRAME_HEADER.unpack_from(data)
    return block, index, data[FRAME_HEADER.size :]
