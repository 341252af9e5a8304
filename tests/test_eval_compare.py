"""eval.compare: per-video scores in eval rows, and the paired comparison of two runs."""

import json

import numpy as np
import pytest

from vidcascade.eval.compare import compare_runs, main
from vidcascade.eval.quality import run_eval
from vidcascade.weights.registry import load_bundle


def test_rows_keep_per_video_scores_that_give_the_row_accuracies():
    rows = run_eval(
        load_bundle("random-tiny"), [(0, "causal")], prompts=3, blocks=2, long_prompts=1, long_blocks=4
    )
    row = rows[0]
    videos = row["videos"]
    assert [v["seed"] for v in videos] == [10_000, 10_001, 10_002]
    w = np.array([v["objects"] for v in videos])
    for name in ("color", "shape", "motion"):
        acc = (np.array([v[name] for v in videos]) * w).sum() / w.sum()
        assert acc == pytest.approx(row[f"{name}_acc"])
    assert np.mean([v["count"] for v in videos]) == pytest.approx(row["count_acc"])
    assert np.mean([v["extra_object"] for v in videos]) == pytest.approx(row["extra_object_share"])
    (long,) = row["long_videos"]
    assert long["seed"] == 10_000
    assert long["shape_last"] - long["shape_first"] == pytest.approx(row["drift_shape"])


def _run(scores, level=0, prompt_set="eval"):
    videos = [
        {
            "seed": 10_000 + i,
            "objects": o,
            "color": c,
            "shape": s,
            "motion": m,
            "count": 1.0,
            "extra_object": x,
        }
        for i, (o, c, s, m, x) in enumerate(scores)
    ]
    row = {
        "level": level,
        "attention": "causal",
        "freshness": "joint",
        "prompt_set": prompt_set,
        "videos": videos,
    }
    return {"model": "m", "configs": [row]}


def test_paired_difference_and_interval():
    base = [(1, 1.0, 1.0, 1.0, 0.0)] * 20 + [(2, 1.0, 0.5, 1.0, 1.0)] * 20
    same = compare_runs(_run(base), _run(base), resamples=500)[0]["scores"]
    assert all(s["diff"] == 0 and s["low"] == 0 and s["high"] == 0 for s in same.values())
    worse = list(base)
    worse[0] = (1, 1.0, 1.0, 0.0, 0.0)  # one object of 60 loses its motion
    motion = compare_runs(_run(base), _run(worse), resamples=2000)[0]["scores"]["motion"]
    assert motion["diff"] == pytest.approx(-1 / 60) and motion["videos_changed"] == 1
    assert motion["low"] < motion["diff"] <= motion["high"] <= 0.0
    # Every video worse: the interval excludes zero.
    all_worse = [(o, c, s, 0.0, x) for o, c, s, _, x in base]
    motion = compare_runs(_run(base), _run(all_worse), resamples=500)[0]["scores"]["motion"]
    assert motion["diff"] == -1.0 and motion["high"] == -1.0


def test_mismatched_runs_are_clear_errors(tmp_path, capsys):
    base = [(1, 1.0, 1.0, 1.0, 0.0)] * 4
    shifted = _run(base)
    for i, v in enumerate(shifted["configs"][0]["videos"]):
        v["seed"] = 20_000 + i
    with pytest.raises(ValueError, match="same videos"):
        compare_runs(_run(base), shifted)
    with pytest.raises(ValueError, match="prompt sets differ"):
        compare_runs(_run(base), _run(base, prompt_set="validation"))
    with pytest.raises(ValueError, match="share no configuration"):
        compare_runs(_run(base), _run(base, level=4))
    old = _run(base)
    del old["configs"][0]["videos"]
    with pytest.raises(ValueError, match="per-video scores"):
        compare_runs(old, _run(base))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run(base)))
    assert main([str(a), str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    b.write_text(json.dumps(_run(base)))
    assert main([str(a), str(b), "--resamples", "200", "--json", str(tmp_path / "c.json")]) == 0
    assert "P0 | causal | motion | 1.000 | 1.000 | +0.000" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())[0]["scores"]["color"]["diff"] == 0
