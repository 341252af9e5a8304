"""Which prompt switches are reserved for evaluation.

A switch's identity is its caption pair in canonical form (the attributes before and after, not
the wording). It is held out when the crc32 of that pair falls in ``HELD_OUT_BUCKETS`` of
``HASH_BUCKETS``: the eval's switch sets draw only held-out pairs, the world's switch sampler and
the trainers never use one. It lives in ``world`` because both sides need it and neither should
import the other.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from vidcascade.world.captions import canonical_caption
from vidcascade.world.palette import ObjectAttrs

HASH_BUCKETS = 8
HELD_OUT_BUCKETS = frozenset({3})


def canonical_pair(before: Sequence[ObjectAttrs], after: Sequence[ObjectAttrs]) -> str:
    """The wording-free identity of a switch: ``"A -> B"`` with both captions in canonical form."""
    return f"{canonical_caption(before)} -> {canonical_caption(after)}"


def is_held_out(before: Sequence[ObjectAttrs], after: Sequence[ObjectAttrs]) -> bool:
    """Whether the switch before -> after is reserved for evaluation (trainers must not sample it).

    crc32, not ``hash()``: the same answer in every process and Python version.
    """
    key = canonical_pair(before, after).encode()
    return zlib.crc32(key) % HASH_BUCKETS in HELD_OUT_BUCKETS
