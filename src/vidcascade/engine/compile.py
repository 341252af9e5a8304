"""``--compile``: the DiT's trunk compiled once per tick shape.

What the forward needs that depends only on the tick (RoPE tables, the timestep embedding, the
attention's masks) is prepared outside the compiled part (``CausalWanDiT.prepare``, the executor's
per-shape caches, ``engine/attention_plan.py``); the compiled part (``CausalWanDiT._trunk``) has
no graph break, and its shapes are a function of (in-flight blocks, committed length, sink bias
on/off, causal or bidirectional): static at steady state. Before the window is full each new
committed length is one more shape, so a run compiles a bounded number of graphs
(``tick_shape_bound``), compiled with ``dynamic=False`` (no symbolic shapes: each shape gets its
own specialised graph, which CUDA graphs need).

On CUDA the trunk is compiled with ``mode="reduce-overhead"`` (CUDA graphs, one per shape); the
K/V pool's tensors, which the trunk writes, are marked as static addresses (``mark_pool_static``)
so the graphs may mutate them in place, and each call's output is copied out of the graph's
memory before the next replay overwrites it. (Not run on a GPU yet: scripts/gpu-check.sh does.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..config import CacheConfig, SamplingConfig
from ..models.wan_dit import CausalWanDiT

log = logging.getLogger(__name__)


def tick_shape_bound(sampling: SamplingConfig, cache: CacheConfig) -> int:
    """Most distinct forward shapes a model sees over every level, both cross-block attentions,
    prompt switches (the sink bias off) and re-cache forwards: in-flight blocks 1..S+1 times the
    committed lengths (0, one block, ... up to sink + window frames)."""
    lengths = math.ceil((cache.sink_frames + cache.window_frames) / sampling.frames_per_block) + 1
    inflight = sampling.num_steps + 1
    return 2 * 2 * inflight * lengths + lengths


def default_compile_mode(device: torch.device) -> str | None:
    """CUDA graphs on CUDA (shapes are static per tick shape); inductor's default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


def compile_dit(
    model: CausalWanDiT,
    *,
    mode: str | None = "auto",
    backend: str = "inductor",
    max_shapes: int = 64,
    dynamic: bool | None = False,
) -> CausalWanDiT:
    """Compile ``model``'s trunk in place (the module keeps its type and its eager ``_trunk``).

    mode: torch.compile's mode; "auto" = ``default_compile_mode`` of the model's device.
    max_shapes: raise dynamo's recompile limit to at least this many graphs (``tick_shape_bound``
    of the model's sampling and cache); beyond the limit dynamo runs further shapes uncompiled.
    dynamic: False = a graph per tick shape (the default); None = dynamo's automatic dynamic
    shapes (a shape that changes is made symbolic on its first recompile: fewer graphs, for a
    large model whose every graph takes minutes to compile; CUDA graphs still record per shape)."""
    device = model.patch_embedding.weight.device
    if mode == "auto":
        mode = default_compile_mode(device)
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, max_shapes)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 2 * max_shapes)
    compiled = torch.compile(model._trunk, mode=mode, backend=backend, dynamic=dynamic)
    if mode == "reduce-overhead":

        def run(*args):
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args).clone()  # the graph's output memory is reused by the next replay

        model.compiled_trunk = run
    else:
        model.compiled_trunk = compiled
    log.info("compiled the DiT trunk (backend %s, mode %s, up to %s shapes)", backend, mode, max_shapes)
    return model


def is_compiled(model: CausalWanDiT) -> bool:
    return model.compiled_trunk is not None


@contextmanager
def eager(model: CausalWanDiT) -> Iterator[None]:
    """Run ``model`` uncompiled for the duration (its compiled graphs are kept for later)."""
    saved = model.compiled_trunk
    model.compiled_trunk = None
    try:
        yield
    finally:
        model.compiled_trunk = saved


def mark_pool_static(tensors: list[torch.Tensor]) -> None:
    """Mark K/V tensors as static addresses so that CUDA graphs may write them in place."""
    for t in tensors:
        if t.device.type == "cuda":
            torch._dynamo.mark_static_address(t)
