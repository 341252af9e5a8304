"""vidcascade eval end to end on the untrained model (numbers meaningless; plumbing and invariants)."""

import json

from vidcascade.cli import main
from vidcascade.eval.quality import eval_items
from vidcascade.world import parse_caption


def test_eval_items_are_fixed_and_parseable():
    a, b = eval_items(70), eval_items(70)
    assert a == b and len({(i.prompt, i.seed) for i in a}) == 70
    assert all(tuple(parse_caption(i.prompt)) == i.attrs for i in a)
    v = eval_items(70, prompt_set="validation")
    assert not {(i.prompt, i.seed) for i in v} & {(i.prompt, i.seed) for i in a}
    assert not {i.seed for i in v} & {i.seed for i in a}


def test_eval_cli_rows(tmp_path, capsys):
    out = tmp_path / "e.json"
    rc = main(
        [
            "eval",
            "--model",
            "random-tiny",
            "--levels",
            "0,2",
            "--attention",
            "causal,bidirectional",
            "--freshness",
            "joint,per_tick",
            "--prompts",
            "2",
            "--blocks",
            "2",
            "--long-prompts",
            "1",
            "--long-blocks",
            "4",
            "--no-switch-check",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    rows = json.loads(out.read_text())["configs"]
    keys = {(r["level"], r["attention"], r["freshness"]) for r in rows}
    assert keys == {
        (0, "causal", "joint"),
        (2, "causal", "joint"),
        (2, "bidirectional", "joint"),
        (2, "causal", "per_tick"),
        (2, "bidirectional", "per_tick"),
    }
    for r in rows:
        for k in (
            "color_acc",
            "shape_acc",
            "motion_acc",
            "boundary_jump",
            "psnr_vs_p0",
            "ssim_vs_p0",
            "drift_color",
        ):
            assert k in r
        assert sum(b["prompts"] for b in r["by_objects"].values()) == r["prompts"] == 2
    p0 = next(r for r in rows if r["level"] == 0)
    assert p0["psnr_vs_p0"] == 100.0 and abs(p0["ssim_vs_p0"] - 1.0) < 1e-6
    printed = capsys.readouterr().out
    assert "color_acc" in printed and "accuracy by number of objects" in printed


def test_eval_cli_names_the_flags_the_user_gave(capsys):
    # The long videos are drawn from the first --prompts items: asking for more must not silently
    # run fewer, and the error names what the user typed.
    rc = main(["eval", "--model", "random-tiny", "--prompts", "1", "--long-prompts", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--long-prompts 4 is more than --prompts 1" in err and err.count("\n") == 1
    rc = main(["eval", "--model", "random-tiny", "--long-prompts", "20"])
    assert rc == 2
    assert "--long-prompts 20 is more than the 16 prompts of the quick preset" in capsys.readouterr().err
