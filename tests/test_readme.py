"""Every command of the README runs as written, so that the page cannot go stale.

Shell and Python code blocks are extracted and run in a scratch folder; `vidcascade serve` is
started, checked (its /health and its page answer on the README's URL) and stopped. Two things are
left out,
each for a stated reason: `pip install ...` (CI's own install step is that command) and
`python -m pytest` (this suite). A block that cannot run here (it needs a GPU and downloaded
weights) must be marked `<!-- readme-check: skip: REASON -->` on the line above it; the test
fails on a mark without a reason, so nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_SKIP = re.compile(r"<!-- readme-check: skip(?::\s*(.*?))? -->\s*$")


def _blocks() -> list[tuple[str, str, str | None, int]]:
    """(language, code, skip reason or None, line number) of each bash/python block."""
    text = README.read_text()
    out = []
    for m in _FENCE.finditer(text):
        lang = m.group(1)
        if lang not in ("bash", "python"):
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        s = _SKIP.search(before)
        reason = None if s is None else (s.group(1) or "").strip()
        out.append((lang, m.group(2), reason, line))
    return out


def _runnable(code: str) -> tuple[str, list[str]]:
    """The block without the install step and the test command (CI runs both itself), and the
    server commands apart (each runs until stopped)."""
    lines, servers = [], []
    for line in code.splitlines():
        if line.startswith("vidcascade serve"):
            servers.append(line.split("#", 1)[0].strip())
            continue
        parts = [p.strip() for p in line.split("&&")]
        kept = [p for p in parts if not p.startswith("pip install") and p != "python -m pytest"]
        if kept:
            lines.append(" && ".join(kept))
    return "\n".join(lines), servers


def _check_server(cmd: str, cwd: Path, env: dict[str, str]) -> None:
    """Start a README server command, wait until it answers on the README's URL, then stop it."""
    import urllib.request

    proc = subprocess.Popen(
        ["bash", "-c", f"exec {cmd}"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"{cmd!r} exited early:\n{proc.stdout.read().decode()}"
            try:
                with urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{cmd!r}: no answer on http://127.0.0.1:8000/health"
            time.sleep(0.5)
        with urllib.request.urlopen("http://127.0.0.1:8000/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


BLOCKS = _blocks()


def test_readme_has_blocks_and_every_skip_has_a_reason():
    assert len(BLOCKS) >= 4
    for _lang, _code, reason, line in BLOCKS:
        assert reason is None or reason, f"README line {line}: a readme-check skip needs a reason"


@pytest.mark.parametrize("lang,code,reason,line", BLOCKS, ids=[f"line{b[3]}" for b in BLOCKS])
def test_readme_block_runs(lang, code, reason, line, tmp_path):
    if reason:
        pytest.skip(f"README line {line}: {reason}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        script, servers = _runnable(code)
        # The console script lives next to this interpreter (pip -e); put it first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for server in servers:
            _check_server(server, tmp_path, env)
        if not script.strip():
            return
        cmd = ["bash", "-euo", "pipefail", "-c", script]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    where = f"README line {line} failed:\n{code}"
    assert r.returncode == 0, f"{where}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
