"""The server's one state object: the loaded model, its engines, the device slot, counters, recordings.

One session at a time per device: ``try_acquire`` hands the slot to one worker; a second client is
refused with a ``busy`` event (it keeps its connection and may send ``start`` again later). Engines
(one per cascade level and attention mode, sharing the bundle's weights) are built on first use and
at most ``max_engines`` are kept, since each holds a K/V pool. With a feature cache config, every
engine built gets the cache (its counters reset with each session).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, OrderedDict, deque

import numpy as np

from ..config import CascadeConfig, FeatureCacheConfig
from ..weights.bundle import Bundle
from .protocol import ServeConfig

log = logging.getLogger(__name__)


def percentile(xs, q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else None


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux), for the leak checks in /metrics."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Recording:
    """The JPEG frames a session sent, bounded, for the mp4 download."""

    def __init__(self, max_frames: int, fps: float) -> None:
        self.frames: deque[bytes] = deque(maxlen=max_frames)
        self.fps = fps
        self.lock = threading.Lock()

    def add(self, jpeg: bytes) -> None:
        with self.lock:
            self.frames.append(jpeg)

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return list(self.frames)


class ServerState:
    def __init__(
        self,
        bundle: Bundle,
        cfg: ServeConfig,
        *,
        level: int | None = None,
        attention: str = "causal",
        max_engines: int = 2,
        max_recordings: int = 4,
        fixed_engine=None,
        feature_cache: FeatureCacheConfig | None = None,
    ) -> None:
        """``fixed_engine``: under torchrun, the one DistEngine every session runs on (its level and
        attention are the server's; a start asking for others is refused). ``feature_cache``:
        applied to every engine built here (one process only; None or policy "none": off)."""
        self.bundle = bundle
        self.cfg = cfg
        self.num_steps = bundle.sampling.num_steps
        # Default: the level given, else CascadeConfig's default (fully parallel).
        self.default_level = self.num_steps + 1 - CascadeConfig(level=level).resolve_lag(self.num_steps)
        self.default_attention = attention
        self.max_engines = max_engines
        self.max_recordings = max_recordings
        self._engines: OrderedDict[tuple[int, str], object] = OrderedDict()
        self.fixed_engine = fixed_engine
        if feature_cache is not None and feature_cache.policy == "none":
            feature_cache = None
        if feature_cache is not None and fixed_engine is not None:
            raise ValueError("the feature cache works in one process only, not on a DistEngine")
        self.feature_cache = feature_cache
        self.launch = lambda worker: worker.start()
        """Runs a Worker: its own thread here; the Driver thread under torchrun."""
        self._engine_lock = threading.Lock()
        self._slot_lock = threading.Lock()
        self.active = None  # the Worker holding the device, if any
        self.recordings: OrderedDict[str, Recording] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self.connections = 0
        self.started_at = time.time()
        self.ready = False
        # Figures of the latest session (bounded), for /metrics.
        self.block_latency_s: deque[float] = deque(maxlen=512)
        self.inter_arrival_s: deque[float] = deque(maxlen=512)
        self.last_ttff_s: float | None = None
        self.last_cache_skipped_share: float | None = None
        from ..eval.bench import machine_info

        self.machine = machine_info(bundle.device)

    # -- engines -------------------------------------------------------------------------------
    def engine(self, level: int | None, attention: str | None):
        from ..engine.engine import Engine

        key = (self.default_level if level is None else level, attention or self.default_attention)
        if self.fixed_engine is not None:
            eng = self.fixed_engine
            if key != (eng.level, eng.cascade.attention):
                raise ValueError(
                    f"this server runs level P{eng.level} with {eng.cascade.attention} attention on "
                    f"{eng.comm.world_size} ranks; got P{key[0]} {key[1]}"
                )
            return eng
        with self._engine_lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            while len(self._engines) >= self.max_engines:
                old, _ = self._engines.popitem(last=False)
                log.info("dropped the engine for level P%d %s (at most %d kept)", *old, self.max_engines)
            eng = Engine(self.bundle, CascadeConfig(level=key[0], attention=key[1]))
            if self.feature_cache is not None:
                from ..caching import apply_feature_cache

                apply_feature_cache(eng, self.feature_cache)
            self._engines[key] = eng
            log.info("built the engine for level P%d, %s attention", *key)
            return eng

    def warmup(self, prompt: str = "a red circle moving right", blocks: int = 2) -> float:
        """Run a short session on the default engine so the first client does not pay for first-call
        costs (allocation, ``--compile``). Returns the seconds it took."""
        t0 = time.perf_counter()
        eng = self.engine(None, None)
        session = eng.session(prompt, seed=0, max_blocks=blocks)
        for _ in session:
            pass
        self.ready = True
        return time.perf_counter() - t0

    # -- the device slot -----------------------------------------------------------------------
    def try_acquire(self, worker) -> bool:
        with self._slot_lock:
            if self.active is not None:
                self.counters["busy_refusals"] += 1
                return False
            self.active = worker
            self.counters["sessions_started"] += 1
            return True

    def release(self, worker) -> None:
        with self._slot_lock:
            if self.active is worker:
                self.active = None

    def recording(self, sid: str) -> Recording:
        rec = Recording(self.cfg.record_frames, self.bundle.fps)
        with self._slot_lock:
            self.recordings[sid] = rec
            while len(self.recordings) > self.max_recordings:
                self.recordings.popitem(last=False)
        return rec

    # -- figures -------------------------------------------------------------------------------
    def health(self) -> dict:
        return {
            "status": "ok" if self.ready else "warming",
            "model": self.bundle.name,
            "busy": self.active is not None,
        }

    def metrics(self) -> dict:
        lat, gap = list(self.block_latency_s), list(self.inter_arrival_s)
        return {
            "model": self.bundle.name,
            "machine": self.machine,
            "ready": self.ready,
            "uptime_s": time.time() - self.started_at,
            "sessions_active": int(self.active is not None),
            "connections_open": self.connections,
            "threads": threading.active_count(),
            "rss_bytes": rss_bytes(),
            "engines": [f"P{lv}/{att}" for lv, att in self._engines],
            "counters": dict(self.counters),
            "feature_cache": None
            if self.feature_cache is None
            else {"policy": self.feature_cache.policy, "threshold": self.feature_cache.resolved_threshold},
            "latest_session": {
                "ttff_s": self.last_ttff_s,
                "block_latency_p50_s": percentile(lat, 50),
                "block_latency_p95_s": percentile(lat, 95),
                "inter_arrival_p50_s": percentile(gap, 50),
                "inter_arrival_p95_s": percentile(gap, 95),
                "inter_arrival_p99_s": percentile(gap, 99),
                "cache_skipped_share": self.last_cache_skipped_share,
            },
        }
