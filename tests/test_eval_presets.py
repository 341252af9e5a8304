"""`vidcascade eval`'s presets and flag clamping, and rows reported as soon as they are done."""

from __future__ import annotations

import json

import pytest

from vidcascade.cli import build_parser, main
from vidcascade.eval.cli_eval import PRESETS, eval_settings
from vidcascade.eval.quality import run_eval
from vidcascade.weights.registry import load_bundle


def _settings(*flags: str):
    return eval_settings(build_parser().parse_args(["eval", *flags]))


def test_quick_is_the_default_and_full_the_reported_table() -> None:
    quick = _settings()
    assert quick.preset == "quick" and quick.prompts == 16 and quick.long_prompts == 2
    assert quick.resolve_levels(4) == [0, 4] and quick.switches == 10
    assert quick.switch_modes == ["no-recache", "recache", "blend"]
    assert quick.configs([0, 4]) == [
        (0, "causal", "joint"),
        (4, "causal", "joint"),
        (4, "bidirectional", "joint"),
    ]
    full = _settings("--full")
    assert (full.prompts, full.long_prompts, full.long_blocks, full.switches) == (64, 8, 60, 80)
    assert full.resolve_levels(4) == [0, 1, 2, 3, 4] and len(full.configs([0, 1, 2, 3, 4])) == 9
    # The user's flags win over either preset.
    mixed = _settings("--full", "--levels", "2", "--prompts", "3", "--no-switch-check")
    assert mixed.resolve_levels(4) == [2] and mixed.prompts == 3 and mixed.switches == 0
    assert _settings("--prompt-set", "validation", "--full").switches == 40  # the whole validation set
    assert _settings("--switches", "3", "--switch-modes", "blend").switch_modes == ["blend"]


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_long_prompts_are_clamped_to_prompts_unless_given(preset: str) -> None:
    full = ["--full"] if preset == "full" else []
    assert _settings(*full, "--prompts", "1").long_prompts == 1
    assert _settings(*full, "--prompts", "100").long_prompts == PRESETS[preset].long_prompts
    assert _settings(*full, "--prompts", "1", "--long-prompts", "0").long_prompts == 0
    assert _settings(*full, "--prompts", "5", "--long-prompts", "5").long_prompts == 5


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--prompts", "2", "--long-prompts", "3"], "--long-prompts 3 is more than --prompts 2"),
        (["--long-prompts", "99"], "--long-prompts 99 is more than the 16 prompts of the quick preset"),
        (["--full", "--long-prompts", "65"], "more than the 64 prompts of the full preset"),
        (["--prompts", "0"], "--prompts must be >= 1, got 0"),
        (["--long-prompts", "-1"], "--long-prompts must be >= 0"),
        (["--long-blocks", "2"], "--long-blocks must be >= 4"),
        (["--attention", "causal,sideways"], "--attention: unknown mode 'sideways'"),
        (["--freshness", ""], "--freshness is empty"),
        (["--switches", "81"], r"--switches must be in 1..80 \(the reported switch set\), got 81"),
        (["--prompt-set", "validation", "--switches", "41"], r"in 1..40 \(the validation switch set\)"),
        (["--switch-modes", "cut"], "--switch-modes: unknown mode 'cut'"),
    ],
)
def test_bad_flags_are_named(flags: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _settings(*flags)


def test_levels_and_freshness_that_leave_nothing_to_run() -> None:
    s = _settings("--levels", "0,7")
    with pytest.raises(ValueError, match="--levels: 7 is out of range 0..4"):
        s.resolve_levels(4)
    with pytest.raises(ValueError, match="per_tick applies to levels >= 1"):
        _settings("--levels", "0", "--freshness", "per_tick").configs([0])


def test_rows_are_reported_as_soon_as_their_configuration_is_done() -> None:
    bundle = load_bundle("random-tiny")
    events: list[tuple[str, int]] = []
    rows = run_eval(
        bundle,
        [(0, "causal"), (2, "causal"), (2, "bidirectional")],
        prompts=2,
        blocks=2,
        long_prompts=1,
        long_blocks=4,
        progress=lambda done, total: events.append(("video", done)),
        on_row=lambda row: events.append(("row", row["level"])),
    )
    per_config = 2 + 1  # prompts + long videos
    assert [e for e in events if e[0] == "row"] == [("row", 0), ("row", 2), ("row", 2)]
    for k, i in enumerate(i for i, e in enumerate(events) if e[0] == "row"):
        assert events[i - 1] == ("video", (k + 1) * per_config)  # right after its last video
    assert len(rows) == 3


def test_eval_with_one_prompt_runs_the_quick_preset_end_to_end(tmp_path, capsys) -> None:
    # `eval --prompts 1` once failed on --long-prompts, a flag the user never gave.
    out = tmp_path / "e.json"
    argv = ["eval", "--model", "random-tiny", "--prompts", "1", "--blocks", "2", "--long-blocks", "4"]
    argv += ["--switches", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["settings"]["preset"] == "quick" and saved["settings"]["long_prompts"] == 1
    assert saved["settings"]["levels"] == [0, 4]
    keys = [(r["level"], r["attention"]) for r in saved["configs"]]
    assert keys == [(0, "causal"), (4, "bidirectional"), (4, "causal")]
    assert all(r["long_blocks"] == 4 for r in saved["configs"])
    switch = saved["switch"]
    assert [(r["level"], r["switch_mode"]) for r in switch] == [
        (0, "no-recache"),
        (0, "recache"),
        (0, "blend"),
        (4, "no-recache"),
        (4, "recache"),
        (4, "blend"),
    ]
    assert all(r["switches"] == 2 and r["switch_set"] == "reported" for r in switch)
    assert all(r["attention"] == "causal" for r in switch)
    assert all(set(r["by_kind"]) == {"color", "shape"} for r in switch)  # the first two kinds
    printed = capsys.readouterr().out
    # Each row is printed as it is done, then again in the final table.
    first_row = printed.index("P0 | causal | joint")
    assert printed.index("P0 | causal | joint", first_row + 1) > printed.index("P4 | causal | joint")
    assert printed.count("prompt switch at block 6 of 12, 2 of the 80 reported switches (--full: all)") == 2
    assert "accuracy by number of objects" in printed and "prompt switch by kind" in printed
    assert all(0.0 <= r["extra_object_share"] <= 1.0 for r in saved["configs"])
