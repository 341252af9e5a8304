"""A time breakdown of a run through hooks, without a branch in the engine: ``with Profile(bundle)
as prof: ...`` times the DiT's forwards (hooks on the model), its attention modules (hooks on
every SelfAttention / CrossAttention; not while the DiT runs compiled: a hook inside the compiled
trunk would break its graph) and the text encoder (a wrapper on ``encode`` for the
duration); the decode and write times come from the run itself (``RunStats.decode_s``, the
writer's appends) and ``engine`` is what is left of the wall time.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from ..engine.compile import is_compiled
from ..models.wan_dit import CrossAttention, SelfAttention
from ..weights.bundle import Bundle

PARTS = ("DiT", "attention", "decode", "write", "text", "engine")


class Profile:
    """Accumulates seconds per part while active; ``table`` formats them."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.seconds: dict[str, float] = defaultdict(float)
        self._handles: list = []
        self._starts: dict[int, float] = {}
        self._encode = None
        self.compiled = False

    def _sync(self) -> None:
        if self.bundle.device.type == "cuda":
            torch.cuda.synchronize(self.bundle.device)

    def _timer(self, part: str):
        def pre(module, args, kwargs=None):
            self._sync()
            self._starts[id(module)] = time.perf_counter()

        def post(module, args, *rest):
            self._sync()
            self.seconds[part] += time.perf_counter() - self._starts.pop(id(module))

        return pre, post

    def __enter__(self) -> Profile:
        dit = self.bundle.dit
        pre, post = self._timer("DiT")
        self._handles += [dit.register_forward_pre_hook(pre), dit.register_forward_hook(post)]
        self.compiled = is_compiled(dit)
        for m in dit.modules() if not self.compiled else ():
            if isinstance(m, (SelfAttention, CrossAttention)):
                pre, post = self._timer("attention")
                self._handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        enc = self.bundle.text_encoder
        self._encode = enc.encode
        self._own = "encode" in getattr(enc, "__dict__", {})  # an instance attribute to put back

        def encode(prompts):
            t0 = time.perf_counter()
            try:
                return self._encode(prompts)
            finally:
                self.seconds["text"] += time.perf_counter() - t0

        enc.encode = encode  # instance attribute for the duration; removed on exit
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._own:
            self.bundle.text_encoder.encode = self._encode
        else:
            del self.bundle.text_encoder.encode

    def table(self, wall_s: float, decode_s: float, write_s: float, overlapped: bool) -> str:
        """Seconds and share of ``wall_s`` per part (DiT includes attention; decode on a worker
        overlaps the DiT, so the shares then add to more than 100%)."""
        s = dict(self.seconds)
        s["decode"], s["write"] = decode_s, write_s
        inline = s.get("DiT", 0.0) + s.get("text", 0.0) + s["write"] + (0.0 if overlapped else s["decode"])
        s["engine"] = max(0.0, wall_s - inline)
        lines = ["part | seconds | share of wall", "-" * 30]
        for p in PARTS:
            if p == "attention" and self.compiled:
                lines.append("attention | - | - (compiled: not timed)")
                continue
            note = (
                " (in DiT)"
                if p == "attention"
                else (" (worker, overlapped)" if p == "decode" and overlapped else "")
            )
            lines.append(f"{p} | {s.get(p, 0.0):.3f} | {100 * s.get(p, 0.0) / wall_s:.1f}%{note}")
        lines.append(f"wall | {wall_s:.3f} | 100%")
        return "\n".join(lines)
