"""The embedded model's text modes: how a prompt reaches MiniLM (torch-free, so the CLI can list them)."""

from __future__ import annotations

TEXT_MODES = ("sentence", "clauses", "counted-clauses")
"""The whole prompt in one pass, each clause in its own pass, or each clause in its own pass
prefixed by the number of clauses (text/clauses.py says why)."""


def check_text_mode(mode: str) -> str:
    if mode not in TEXT_MODES:
        raise ValueError(f"unknown text mode {mode!r}; expected one of {', '.join(TEXT_MODES)}")
    return mode
