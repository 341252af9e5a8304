"""CLI smoke tests: run main() in-process; one subprocess check of the console entry point."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vidcascade.cli import main


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_plan_json_tick_counts(capsys):
    rc, out, _ = _run(capsys, "plan", "--steps", "4", "--level", "4", "--blocks", "6", "--json")
    assert rc == 0 and len(json.loads(out)["ticks"]) == 10
    rc, out, _ = _run(capsys, "plan", "--steps", "4", "--level", "0", "--blocks", "6", "--json")
    ticks = json.loads(out)["ticks"]
    assert len(ticks) == 30 and ticks[4] == [[0, 4]]  # stage S = the cache step
    rc, out, _ = _run(capsys, "plan", "--steps", "3", "--lag", "2", "--blocks", "3")
    assert rc == 0 and "lag L=2" in out


def test_generate_levels_same_shape_and_deterministic(tmp_path, capsys):
    paths = {}
    for name, level in (("a4", "4"), ("b4", "4"), ("a0", "0")):
        paths[name] = tmp_path / f"{name}.npz"
        rc, out, _ = _run(
            capsys,
            "generate",
            "a red ball",
            "--blocks",
            "4",
            "--level",
            level,
            "--model",
            "random-tiny",
            "--out",
            str(paths[name]),
        )
        assert rc == 0 and "FPS" in out and "time to first frame" in out
    arr = {k: np.load(p)["frames"] for k, p in paths.items()}
    assert arr["a4"].shape == arr["a0"].shape and arr["a4"].dtype == np.uint8 and arr["a4"].ndim == 4
    assert arr["a4"].shape[-1] == 3
    assert np.array_equal(arr["a4"], arr["b4"])


def test_generate_with_switch_and_gif(tmp_path, capsys):
    out = tmp_path / "s.gif"
    rc, text, _ = _run(
        capsys,
        "generate",
        "red",
        "--blocks",
        "3",
        "--level",
        "2",
        "--model",
        "random-tiny",
        "--switch",
        "1:blue",
        "--switch-mode",
        "recache",
        "--out",
        str(out),
    )
    assert rc == 0 and out.stat().st_size > 0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["generate", "x", "--out", "v.avi"], "unknown extension '.avi'"),
        (["generate", "x", "--blocks", "0", "--out", "v.npz"], "--blocks must be >= 1, got 0"),
        (
            ["generate", "x", "--level", "9", "--model", "random-tiny", "--out", "v.npz"],
            "level must be in 0..4",
        ),
        (["generate", "x", "--model", "no-such-model", "--out", "v.npz"], "unknown model 'no-such-model'"),
        (
            ["generate", "x", "--switch", "7:y", "--blocks", "2", "--model", "random-tiny", "--out", "v.npz"],
            "switch at block 7",
        ),
        (["plan", "--steps", "4", "--lag", "6", "--blocks", "2"], "lag must be in 1..5"),
        (
            ["generate", "x", "--sink-bias", "-1", "--model", "random-tiny", "--out", "v.npz"],
            "--sink-bias: sink_bias must be a finite number >= 0, got -1.0",
        ),
    ],
)
def test_bad_flags_exit_2_with_message(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and needle in err


def _corrupt_model(tmp_path, how: str):
    """A copy of the embedded model folder whose dit.safetensors is truncated or random bytes."""
    import shutil

    from vidcascade.weights.embedded import ASSETS

    folder = tmp_path / f"model-{how}"
    shutil.copytree(ASSETS, folder)
    dit = folder / "dit.safetensors"
    if how == "truncated":
        dit.write_bytes(dit.read_bytes()[: dit.stat().st_size // 3])
    else:
        dit.write_bytes(np.random.default_rng(0).bytes(200_000))
    return folder


def _main_status(capsys, argv):
    """main()'s exit status, also where argparse exits (SystemExit)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "argv, status, line",
    [
        (["--device", "gpu"], 2, "--device 'gpu': expected cpu, cuda or cuda:N"),
        (["--device", "mps"], 2, "--device 'mps': expected cpu, cuda or cuda:N"),
        (["--switch", "-1:foo"], 2, "argument --switch: '-1:foo': the block must be an integer >= 0, got -1"),
        (["--switch=-1:foo"], 2, "argument --switch: '-1:foo': the block must be an integer >= 0, got -1"),
        (["--switch", "x:foo"], 2, "expected BLOCK:PROMPT with an integer BLOCK (e.g. 4:a blue square)"),
        (
            ["--sink-bias", "-1e9"],
            2,
            "--sink-bias: sink_bias must be a finite number >= 0, got -1000000000.0",
        ),
        (["--guidance", "0.5"], 2, "--guidance: guidance must be >= 1 (1 = off), got 0.5"),
        (["--blocks", "-3"], 2, "--blocks must be >= 1, got -3"),
        (["--switch", "1:a", "--switch", "1:b", "--blocks", "2"], 2, "two prompt switches at block 1"),
        (["--level", "9"], 2, "level must be in 0..4 for 4 steps, got 9"),
        (["--model", "truncated"], 2, "dit.safetensors' (truncated or corrupt?): SafetensorError"),
        (["--model", "random"], 2, "dit.safetensors' (truncated or corrupt?): SafetensorError"),
    ],
)
def test_every_bad_value_is_one_line_with_its_status(tmp_path, capsys, argv, status, line):
    argv = list(argv)
    if argv[:1] == ["--model"]:
        argv[1] = str(_corrupt_model(tmp_path, argv[1]))
    elif "--blocks" in argv or "--switch" in " ".join(argv):
        argv += ["--model", "random-tiny"]
    rc, out, err = _main_status(capsys, ["generate", "x", *argv, "--out", str(tmp_path / "v.npz")])
    assert rc == status and out == ""
    assert line in err and err.startswith("vidcascade generate: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "v.npz").exists()


def test_debug_and_verbose_add_the_traceback(tmp_path, capsys):
    for flags in (["--debug"], ["-v"]):
        rc, _, err = _main_status(capsys, [*flags, "generate", "x", "--device", "gpu", "--out", "v.npz"])
        assert rc == 2 and "Traceback (most recent call last)" in err
        assert (
            err.rstrip().splitlines()[-1]
            == "vidcascade generate: error: --device 'gpu': expected cpu, cuda or cuda:N"
        )
    rc, _, err = _main_status(capsys, ["generate", "x", "--device", "gpu", "--out", "v.npz", "--debug"])
    assert rc == 2 and "Traceback" in err  # also after the command


def test_dash_values_reach_their_flag():
    from vidcascade.cli import attach_dash_values, build_parser

    p = build_parser()
    argv = ["generate", "p", "--switch", "-1:foo", "--sink-bias", "-1e9", "--seed", "-4", "--out", "x.mp4"]
    assert attach_dash_values(p, argv) == [
        "generate", "p", "--switch=-1:foo", "--sink-bias=-1e9", "--seed=-4", "--out", "x.mp4"
    ]  # fmt: skip
    same = [
        ["generate", "p", "--out", "--blocks", "3"],  # a missing value stays an error of its own
        ["generate", "p", "--out", "-v"],  # an option of the command is not taken as a value
        ["-v", "generate", "p", "--compile", "-x"],  # --compile takes no value
        ["plan", "--json", "-1"],  # nor does plan's --json (bench's --json does)
        ["generate", "--", "--switch", "-1"],
    ]
    for argv in same:
        assert attach_dash_values(p, argv) == argv
    assert attach_dash_values(p, ["bench", "--json", "-o.json"]) == ["bench", "--json=-o.json"]


def test_console_entry_point_attaches_dash_values(tmp_path):
    """Through sys.argv, as a user types it: the flag's own message, one line, status 2."""
    r = subprocess.run(
        [sys.executable, "-m", "vidcascade", "generate", "x", "--sink-bias", "-1e9", "--out", "v.npz"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and r.stdout == ""
    line = (
        "vidcascade generate: error: --sink-bias: sink_bias must be a finite number >= 0, got -1000000000.0"
    )
    assert r.stderr == line + "\n"


def test_argparse_rejects_malformed_switch(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--switch", "nocolon"])
    assert e.value.code == 2 and "BLOCK:PROMPT" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidcascade",
            "plan",
            "--steps",
            "2",
            "--level",
            "2",
            "--blocks",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["ticks"] == [
        [[0, 0]],
        [[0, 1], [1, 0]],
        [[0, 2], [1, 1]],
        [[1, 2]],
    ]


@pytest.mark.parametrize("guidance, sink_bias", [("1", "0"), ("2", "0"), ("1", "2")])
def test_bench_json_rows(tmp_path, guidance, sink_bias):
    """One row per level with the issue's fields; under guidance the bare forward uses the doubled
    batch, under a sink bias (block 2 of 3 sees it) the additive mask."""
    out = tmp_path / "b.json"
    argv = ["bench", "--model", "random-tiny", "--blocks", "3", "--levels", "0,4", "--repeats", "1"]
    assert main([*argv, "--guidance", guidance, "--sink-bias", sink_bias, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["levels"]
    assert [r["level"] for r in rows] == [0, 4]
    for r in rows:
        assert r["fps"] > 0 and r["ttff_s"] > 0 and r["speedup"] > 0 and "engine_overhead_pct" in r


def test_train_flags_are_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "dit", "--run", str(tmp_path), "--context-probs", "0.5,0.4"])
    assert "sum to 1" in capsys.readouterr().err
    assert main(["train", "dit", "--run", str(tmp_path), "--bidirectional-prob", "2"]) == 2
    assert "bidirectional_prob must be in [0, 1], got 2.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "dit", "--run", str(tmp_path), "--context-noise", "0.5"])
    assert "SHARE,SIGMA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "distill", "--run", str(tmp_path), "--distill-lag-probs", "0.5,0.6"])
    assert "sum to 1" in capsys.readouterr().err
    assert main(["train", "distill", "--run", str(tmp_path), "--distill-lag-probs", "0.5,0.5"]) == 2
    assert "lag_probs needs 5 entries" in capsys.readouterr().err
    assert main(["train", "distill", "--run", str(tmp_path), "--distill-bidirectional-prob", "-1"]) == 2
    assert "bidirectional_prob must be in [0, 1], got -1.0" in capsys.readouterr().err
    assert main(["train", "dit", "--run", str(tmp_path), "--overlap-share", "1.2"]) == 2
    assert "overlap_share must be in [0, 1], got 1.2" in capsys.readouterr().err
    assert main(["train", "distill", "--run", str(tmp_path), "--distill-overlap-share", "-0.5"]) == 2
    assert "overlap_share must be in [0, 1], got -0.5" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_train_all_on_the_committed_run_only_exports(tmp_path):
    """The committed checkpoints are the end of every stage at the default settings: `train all`
    trains nothing and exports the shipped model."""
    from pathlib import Path

    from safetensors.torch import load_file

    from vidcascade.weights.embedded import ASSETS

    run = Path(__file__).resolve().parents[1] / "runs" / "embedded"
    if not (run / "dit_ckpt.pt").exists():
        pytest.skip("runs/embedded checkpoints are not in this checkout")
    before = sorted(p.name for p in run.iterdir())
    assert main(["train", "all", "--run", str(run), "--dest", str(tmp_path)]) == 0
    assert sorted(p.name for p in run.iterdir()) == before  # nothing trained, nothing written
    got, shipped = load_file(str(tmp_path / "dit.safetensors")), load_file(str(ASSETS / "dit.safetensors"))
    assert got.keys() == shipped.keys() and all(torch.equal(got[k], shipped[k]) for k in got)
    assert (tmp_path / "vae.safetensors").read_bytes() == (ASSETS / "vae.safetensors").read_bytes()
    info, ref = (json.loads((d / "model.json").read_text()) for d in (tmp_path, ASSETS))
    assert info == ref


def test_bench_decode_modes_threads_and_profile(tmp_path, capsys):
    """--decode compares modes in one run (rows per level and mode, speedups over P0 of the same
    mode), --threads sets torch's thread count and the header says so, --profile prints the table."""
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "b.json"
    argv = ["bench", "--model", "random-tiny", "--blocks", "3", "--levels", "0,4", "--repeats", "1"]
    argv += ["--decode", "inline,thread", "--threads", "1", "--write", "npz", "--no-switch", "--profile"]
    try:
        assert main([*argv, "--json", str(out)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    text = capsys.readouterr().out
    assert "(2 cores, 1 torch threads)" in text.replace(f"({os.cpu_count()} cores", "(2 cores")
    assert "profile P4 decode thread" in text and "attention |" in text
    rows = json.loads(out.read_text())["levels"]
    assert [(r["level"], r["decode"]) for r in rows] == [
        (0, "inline"),
        (0, "thread"),
        (4, "inline"),
        (4, "thread"),
    ]
    for r in rows:
        assert r["fps_e2e"] > 0 and r["fps_ticks"] > 0 and r["fps_bare"] > 0 and 0 <= r["overlap_pct"] <= 100
        assert r["fps_ticks"] >= r["fps_e2e"] * 0.5 and r["decode_ms_per_block"] > 0
    assert rows[0]["speedup_e2e"] == 1.0 and rows[1]["speedup_e2e"] == 1.0
    assert main([*argv[:9], "--decode", "gpu"]) == 2


def test_bench_cache_columns(tmp_path, capsys):
    """--cache adds, per level, the skipped share and the speedup over the uncached run of the same
    round; threshold 0 never reuses (share 0), a huge one reuses the R steps BWCache allows."""
    out = tmp_path / "b.json"
    argv = ["bench", "--model", "random-tiny", "--blocks", "3", "--levels", "0,4", "--repeats", "1"]
    argv += ["--no-switch", "--write", "none", "--cache", "bwcache", "--json", str(out)]
    shares = {}
    for threshold in ("0", "100"):
        assert main([*argv, "--cache-threshold", threshold, "--cache-interval", "2"]) == 0
        assert "cache skip | cache x e2e | cache x ticks" in capsys.readouterr().out
        rows = json.loads(out.read_text())["levels"]
        assert [r["level"] for r in rows] == [0, 4]
        for r in rows:
            assert r["cache_policy"] == "bwcache" and r["cache_threshold"] == float(threshold)
            assert r["cache_speedup_e2e"] > 0 and r["cache_speedup_ticks"] > 0 and "speedup_e2e" in r
        shares[threshold] = [r["cache_skipped_share"] for r in rows]
    assert shares["0"] == [0.0, 0.0]
    assert all(0 < s < 1 for s in shares["100"])
    assert main([*argv[:9], "--parallel", "temporal", "--cache", "bwcache"]) == 2
    assert "one process only" in capsys.readouterr().err
