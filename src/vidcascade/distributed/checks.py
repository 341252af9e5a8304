"""Start-up check: every rank must run the same job with the same weights.

Each rank builds a fingerprint (configs, cascade settings, prompt schedule, seed, blocks, weights
checksums); rank fingerprints are all-gathered and compared with rank 0's. Any difference raises
``RankMismatchError`` on every rank, naming the rank and the fields, before any tick runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import ConfigError
from ..engine.engine import Engine, PromptSwitch
from .comm import Comm


class RankMismatchError(ConfigError):
    """Ranks were started with different settings or weights."""


def weights_checksum(model: torch.nn.Module) -> dict[str, tuple[float, float, float]]:
    """Per parameter: (sum, sum of every 3rd element, sum of |x|), accumulated in float64."""
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            out[name] = (
                float(flat.sum(dtype=torch.float64)),
                float(flat[::3].sum(dtype=torch.float64)),
                float(flat.abs().sum(dtype=torch.float64)),
            )
    return out


def fingerprint(
    engine: Engine,
    prompt: str,
    num_blocks: int,
    seed: int,
    switches: Sequence[object] = (),
    *,
    weights: dict[str, tuple[float, float, float]] | None = None,
) -> dict[str, object]:
    """What must agree across ranks; ``weights`` is a precomputed ``weights_checksum``."""
    b = engine.bundle
    return {
        "model": repr(b.dit.cfg),
        "sampling": repr(b.sampling),
        "cache": repr(b.cache),
        "latent_hw": tuple(b.latent_hw),
        "dtype": str(b.dit.patch_embedding.weight.dtype),
        "device_type": b.device.type,
        "cascade": repr(engine.cascade),
        "batch": engine.batch,
        "prompt": prompt,
        "switches": repr(
            [(s.block, s.prompt) if isinstance(s, PromptSwitch) else tuple(s) for s in switches]
        ),
        "seed": seed,
        "blocks": num_blocks,
        "weights": weights if weights is not None else weights_checksum(b.dit),
    }


def _short(v: object, width: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= width else s[: width - 3] + "..."


def _weights_differ(a: dict, b: dict) -> str | None:
    if a.keys() != b.keys():
        only = sorted(set(a) ^ set(b))
        return f"parameter names differ ({', '.join(only[:3])}{', ...' if len(only) > 3 else ''})"
    for name, (s0, t0, m0) in a.items():
        s1, t1, m1 = b[name]
        tol = 1e-9 * max(m0, m1) + 1e-30
        if abs(s0 - s1) > tol or abs(t0 - t1) > tol or not math.isclose(m0, m1, rel_tol=1e-9, abs_tol=1e-30):
            return f"parameter {name} differs (sum {s1!r} vs {s0!r})"
    return None


def compare_fingerprints(prints: list[dict[str, object]]) -> list[str]:
    """One line per rank that differs from rank 0."""
    ref = prints[0]
    problems = []
    for r, fp in enumerate(prints[1:], start=1):
        diffs = []
        for key in ref.keys() | fp.keys():
            a, b = ref.get(key), fp.get(key)
            if key == "weights" and isinstance(a, dict) and isinstance(b, dict):
                why = _weights_differ(a, b)
                if why:
                    diffs.append(f"weights: {why}")
            elif a != b:
                diffs.append(f"{key}: {_short(b)} (rank 0: {_short(a)})")
        if diffs:
            problems.append(f"rank {r} differs from rank 0 in " + "; ".join(sorted(diffs)))
    return problems


def check_ranks_agree(comm: Comm, fp: dict[str, object]) -> None:
    """All-gather the fingerprints; raise the same error on every rank if any rank differs."""
    problems = compare_fingerprints(comm.all_gather_object(fp))
    if problems:
        raise RankMismatchError(
            f"the {comm.world_size} ranks were not started with the same job: " + " | ".join(problems)
        )
