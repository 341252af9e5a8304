"""Clause-wise prompt encoding: each clause of a prompt gets its own encoder pass.

A sentence encoder run over "a green circle moving up and a red square falling" mixes the two
objects' words in every token state, and a small DiT cannot undo that mixing: the embedded model,
fed whole-sentence states, often drew a red circle and a green square for the prompt above. Run
clause by clause, the states of "a green circle moving up" carry nothing of the red square, so
cross-attention binds each object's colour, shape and motion by attending to one clause.

The clauses are split at coordinating words ("and", "while", "as", "together with", ...), not
at commas, so "a red circle, moving right" stays one clause. The states of all clauses are
packed one after another into the encoder's ``text_len`` rows (cross-attention has no text
positions, so their order carries nothing), with zero rows after the last one, as the
``TextEncoder`` contract asks.

Packed that way the rows carry no count: cross-attention is a softmax average over the rows, so
"a red circle" and "a red circle and a red circle" read the same, and a model trained on a mix of
one- and two-object clips draws a second object for a one-object prompt about as often as its
data had two (the phase-8 embedded model: 9 of 21 one-object eval prompts at 16 teacher steps).
The ``counted`` form prefixes every clause with how many clauses the prompt has ("two things: a
red circle moving up"), so each clause's states say how many objects to draw.
"""

from __future__ import annotations

import logging
import re

import torch

from .encoder import TextEncoder

log = logging.getLogger(__name__)

# Coordinating words that join the descriptions of two things. An optional comma before them is
# part of the separator, so "x, and y" splits as "x" / "y".
_SEPARATOR = re.compile(
    r"(?:^|\s*,?\s+)(?:and|while|whereas|as|together with|along with|alongside|plus|next to)\s+|\s*;\s*",
    flags=re.IGNORECASE,
)


COUNT_WORDS = ("one thing", "two things", "three things", "four things")
"""The prefix of each clause in the counted form, by clause count (1-based)."""


def count_prefix(clause: str, clauses: int) -> str:
    """``clause`` as the counted form encodes it: "two things: a red circle moving up"."""
    if not 1 <= clauses <= len(COUNT_WORDS):
        raise ValueError(f"clause count must be in [1, {len(COUNT_WORDS)}], got {clauses}")
    return f"{COUNT_WORDS[clauses - 1]}: {clause}"


def split_clauses(prompt: str, max_clauses: int = 4) -> list[str]:
    """The prompt's clauses, in order; at most ``max_clauses`` (the rest stay in the last one).

    Empty pieces (a prompt that starts or ends with "and") are dropped; a prompt with no
    separator is one clause.
    """
    if max_clauses < 1:
        raise ValueError(f"max_clauses must be >= 1, got {max_clauses}")
    pieces = [p.strip(" ,.") for p in _SEPARATOR.split(prompt.strip())]
    pieces = [p for p in pieces if p]
    if not pieces:
        return [prompt.strip()]
    if len(pieces) > max_clauses:
        # Keep the separators' meaning roughly: the tail joins back with "and".
        pieces = [*pieces[: max_clauses - 1], " and ".join(pieces[max_clauses - 1 :])]
    return pieces


class ClauseTextEncoder:
    """Wraps a per-token encoder (MiniLM) to encode each clause on its own and pack the rows.

    ``encode(prompts) -> [B, text_len, text_dim]``: for prompt b, the rows of its first clause
    (with that clause's own [CLS]/[SEP]), then those of the next, ...; rows past the last clause
    are exactly 0.0; a prompt whose clauses need more than ``text_len`` rows loses the tail of its
    last clauses (logged).
    """

    def __init__(self, encoder: TextEncoder, max_clauses: int = 4, counted: bool = False) -> None:
        if not hasattr(encoder, "tokenize"):
            raise TypeError(f"{type(encoder).__name__} has no tokenize(): clause packing needs token counts")
        if counted and not 1 <= max_clauses <= len(COUNT_WORDS):
            raise ValueError(
                f"counted clauses need max_clauses in [1, {len(COUNT_WORDS)}], got {max_clauses}"
            )
        self.encoder = encoder
        self.max_clauses = max_clauses
        self.counted = counted
        self.text_len = encoder.text_len
        self.text_dim = encoder.text_dim

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim, device=self.device)  # [B, L, D]
        if not prompts:
            return out
        clauses = [split_clauses(p, self.max_clauses) for p in prompts]
        if self.counted:
            clauses = [[count_prefix(c, len(cs)) for c in cs] for cs in clauses]
        flat = [c for cs in clauses for c in cs]
        states = self.encoder.encode(flat)  # [C, L, D], zero rows past each clause's length
        _, lengths = self.encoder.tokenize(flat)  # [C]
        k = 0
        for b, cs in enumerate(clauses):
            row = 0
            for _ in cs:
                n = min(int(lengths[k]), self.text_len - row)
                out[b, row : row + n] = states[k, :n]
                row += n
                k += 1
            if row >= self.text_len and len(cs) > 1:
                log.warning(
                    "prompt %r: its clauses fill all %d text rows; the tail is cut",
                    prompts[b][:60],
                    self.text_len,
                )
        return out
