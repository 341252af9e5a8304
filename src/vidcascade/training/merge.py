"""Weight interpolation of two DiTs fine-tuned from the same weights (a "model soup", as in
Wortsman et al., "Robust fine-tuning of zero-shot models", 2022: WiSE-FT).

Why: a fine-tune that teaches the embedded student a new skill (prompt switches) can cost a little
of an old one (motion). Two students that share their starting weights sit in one low-loss basin,
so a point on the straight line between them keeps part of each; the share is a setting to choose
on the validation set, not on the reported one.
"""

from __future__ import annotations

import torch


def check_share(share: float) -> float:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"merge share must be in [0, 1] (the run's weight in the mix), got {share}")
    return float(share)


def interpolate_states(
    ours: dict[str, torch.Tensor], other: dict[str, torch.Tensor], share: float
) -> dict[str, torch.Tensor]:
    """``share * ours + (1 - share) * other``, tensor by tensor, in fp32, in ``ours``' dtype.

    The two must be the same architecture: the same keys with the same shapes.
    """
    share = check_share(share)
    missing, extra = sorted(set(ours) - set(other)), sorted(set(other) - set(ours))
    if missing or extra:
        raise ValueError(
            f"cannot merge DiTs with different tensors: only in the run: {missing[:3]}, "
            f"only in the other: {extra[:3]} (both must be the same model preset)"
        )
    out = {}
    for k, a in ours.items():
        b = other[k]
        if a.shape != b.shape:
            raise ValueError(
                f"cannot merge {k}: shape {tuple(a.shape)} in the run, {tuple(b.shape)} in the other"
            )
        out[k] = (share * a.float() + (1.0 - share) * b.float()).to(a.dtype).contiguous()
    return out
