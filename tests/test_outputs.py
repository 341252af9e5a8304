"""Outputs that never lie: the path is checked before any model work, frames reach the file as
blocks finish, every way of ending (SIGINT, SIGTERM, SIGHUP, an exception) leaves a valid file of
the frames made so far, and a failed write is an error, never "wrote"."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vidcascade.cli import main
from vidcascade.engine.engine import Engine
from vidcascade.io.output import check_output_path
from vidcascade.io.video import read_npz
from vidcascade.io.writers import Mp4Writer, WriteError, open_writer

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

TINY = ["--model", "random-tiny", "--level", "4"]
WROTE = re.compile(
    r"wrote (\S+): (\d+) frames (\d+)x(\d+)(?: \((\d+)x(\d+) upscaled \d+x\))? from (\d+)(?: of (\d+))? block"
)  # groups: path, frames, width, height, [the model's width, height], blocks, [blocks asked]


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _mp4_frames(path: Path) -> tuple[tuple[int, int], int]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    return tuple(meta["size"]), sum(1 for _ in gen)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _blocks(n: int, t: int = 3, h: int = 16, w: int = 24) -> list[np.ndarray]:
    """Smooth, distinct frames (H.264 keeps them close; gif does not merge equal frames)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for b in range(n):
        frames = np.stack(
            [np.stack([xx * 8 + 20 * (b * t + i), yy * 12, np.full_like(xx, 40 * b)], -1) for i in range(t)]
        )
        out.append(np.clip(frames, 0, 255).astype(np.uint8))  # [T, H, W, 3]
    return out


# -- the output path, before any model work --------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the path checks must come first."""

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr("vidcascade.weights.registry.load_bundle", boom)


def _bad_paths(tmp: Path) -> list[tuple[str, str]]:
    (tmp / "d.mp4").mkdir()
    (tmp / "d.npz").mkdir()
    (tmp / "file").write_text("x")
    cases = [
        (str(tmp / "d.mp4"), "is a folder; expected a file name ending in .mp4"),
        (str(tmp / "d.npz"), "is a folder; expected a file name ending in .npz"),
        (str(tmp / "file" / "x.mp4"), "is a file, not a folder"),
        (str(tmp / "nope" / "x.gif"), "does not exist"),
        (str(tmp / "x.avi"), "unknown extension '.avi'"),
    ]
    if Path("/proc/self").exists():  # a folder that refuses new files whatever the permission bits say
        cases.append(("/proc/x.mp4", "cannot create a file in folder '/proc'"))
    if Path("/etc/hostname").is_file():
        cases.append(("/etc/hostname/x.mp4", "'/etc/hostname' is a file, not a folder"))
    return cases


def test_bad_output_paths_fail_before_any_model_work(tmp_path, capsys, no_model):
    for out, needle in _bad_paths(tmp_path):
        rc, stdout, err = _run(capsys, "generate", "a red ball", "--blocks", "8", "--out", out)
        assert rc == 2, (out, err)
        assert needle in err and "wrote" not in stdout, (out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("vidcascade generate: error: output ")
    assert _leftovers(tmp_path) == []  # the probe file is gone


def test_bench_json_path_is_checked_before_the_benchmark(tmp_path, capsys, no_model):
    (tmp_path / "d.json").mkdir()
    rc, stdout, err = _run(capsys, "bench", "--json", str(tmp_path / "d.json"))
    assert rc == 2 and stdout == "" and err.strip().endswith("is a folder; expected a file name")
    rc, _, err = _run(capsys, "bench", "--json", str(tmp_path / "nope" / "b.json"))
    assert rc == 2 and "does not exist" in err


# -- writers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".gif", ".npz"])
def test_writer_appends_blocks_and_renames_only_when_complete(tmp_path, ext):
    target = tmp_path / f"v{ext}"
    blocks = _blocks(3)
    w = open_writer(check_output_path(target), fps=8.0)
    for b in blocks:
        w.append(b)
        assert not target.exists()  # the target appears complete or not at all
    done = w.close()
    assert done.path == target and done.frames == 9 and done.blocks == 3
    assert _leftovers(tmp_path) == []
    want = np.concatenate(blocks)
    if ext == ".npz":
        assert np.array_equal(read_npz(target), want)
        assert (done.width, done.height) == (24, 16)
    elif ext == ".gif":
        from PIL import Image

        with Image.open(target) as im:
            assert im.n_frames == 9 and im.size == (24, 16)
    else:
        # 24x16 is upscaled 10x (nearest neighbour) to 240x160; every frame is in the file.
        assert (done.width, done.height) == (240, 160)
        assert done.describe() == "9 frames 240x160 (24x16 upscaled 10x)"
        assert _mp4_frames(target) == ((240, 160), 9)
        gen = imageio_ffmpeg.read_frames(str(target))
        next(gen)
        first = np.frombuffer(next(gen), np.uint8).reshape(160, 240, 3)[::10, ::10].astype(int)
        assert np.abs(first - want[0]).mean() < 6.0  # H.264 at crf 18 on a smooth frame


def test_writer_without_frames_leaves_nothing(tmp_path):
    w = open_writer(tmp_path / "v.mp4", fps=8.0)
    with pytest.raises(WriteError, match="no frames were made"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_that_dies_is_a_write_error_and_leaves_no_file(tmp_path):
    target = tmp_path / "v.mp4"
    w = Mp4Writer(target, fps=8.0)
    a, b = _blocks(2)
    w.append(a)
    w._proc.kill()
    w._proc.wait()
    with pytest.raises(WriteError, match=r"could not write .*v\.mp4.*ffmpeg"):
        for _ in range(50):  # the pipe buffer may take a few blocks before it reports the broken pipe
            w.append(b)
        w.close()
    w.abort()
    assert list(tmp_path.iterdir()) == []


# -- generate: every way of ending ---------------------------------------------------------------


def test_readme_command_says_what_was_written(tmp_path, capsys):
    """The embedded model's 64x64 frames are stored upscaled in the mp4: the line says both."""
    out = tmp_path / "demo.mp4"
    rc, stdout, _ = _run(capsys, "generate", "a red circle moving right", "--blocks", "2", "--out", str(out))
    assert rc == 0
    m = WROTE.search(stdout)
    assert m and m.group(1) == str(out)
    frames, w, h, sw, sh, blocks = (int(m.group(i)) for i in (2, 3, 4, 5, 6, 7))
    assert (w, h, sw, sh, blocks) == (256, 256, 64, 64, 2)
    assert _mp4_frames(out) == ((w, h), frames) and frames == 6
    assert "(64x64 upscaled 4x) from 2 blocks, level P4" in stdout


def _interrupt_stream(monkeypatch, at_block: int, action):
    """Engine.stream runs ``action()`` just before it would yield block ``at_block``."""
    original = Engine.stream

    def stream(self, *a, **k):
        for o in original(self, *a, **k):
            if o.block == at_block:
                action()
            yield o

    monkeypatch.setattr(Engine, "stream", stream)


def _full_run(tmp_path, capsys, blocks: int) -> np.ndarray:
    ref = tmp_path / "ref.npz"
    assert _run(capsys, "generate", "a red ball", "--blocks", str(blocks), *TINY, "--out", str(ref))[0] == 0
    return read_npz(ref)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_mid_run_writes_the_blocks_made_so_far(tmp_path, capsys, monkeypatch, sig):
    signum = getattr(signal, sig, None)
    if signum is None:
        pytest.skip(f"no {sig} here")
    ref = _full_run(tmp_path, capsys, 4)
    _interrupt_stream(monkeypatch, 2, lambda: (os.kill(os.getpid(), signum), time.sleep(5)))
    out = tmp_path / "s.npz"
    rc, stdout, err = _run(capsys, "generate", "a red ball", "--blocks", "4", *TINY, "--out", str(out))
    assert rc == 128 + signum, err
    assert "from 2 of 4 blocks" in stdout and stdout.rstrip().endswith(f"stopped by {sig}")
    got = read_npz(out)
    assert np.array_equal(got, ref[: len(got)]) and len(got) == 2 * len(ref) // 4
    assert _leftovers(tmp_path) == []


def test_a_signal_mid_run_gif(tmp_path, capsys, monkeypatch):
    from PIL import Image

    _interrupt_stream(monkeypatch, 1, lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))
    out = tmp_path / "s.gif"
    rc, stdout, _ = _run(capsys, "generate", "a red ball", "--blocks", "3", *TINY, "--out", str(out))
    m = WROTE.search(stdout)
    assert rc == 143 and m and (m.group(7), m.group(8)) == ("1", "3")
    with Image.open(out) as im:
        assert im.n_frames == int(m.group(2))


def test_an_exception_mid_run_writes_the_blocks_made_before_it(tmp_path, capsys, monkeypatch):
    ref = _full_run(tmp_path, capsys, 4)

    def fail():
        raise RuntimeError("the device fell over")

    _interrupt_stream(monkeypatch, 3, fail)
    out = tmp_path / "e.npz"
    rc, stdout, err = _run(capsys, "generate", "a red ball", "--blocks", "4", *TINY, "--out", str(out))
    assert rc == 1
    assert "from 3 of 4 blocks" in stdout and stdout.rstrip().endswith("ended by an error after block 2")
    n = 3 * len(ref) // 4
    assert err.strip() == (
        f"vidcascade generate: error: RuntimeError: the device fell over (after 3 of 4 blocks: the {n} "
        f"frames made before it are in '{out}')"
    )
    assert np.array_equal(read_npz(out), ref[:n])


def test_a_write_failure_mid_run_is_an_error_not_wrote(tmp_path, capsys, monkeypatch):
    """ffmpeg dies after the first block: exit 1 with ffmpeg's failure, no "wrote", no file."""
    real_write = Mp4Writer._write

    def write(self, frames):
        if self.blocks == 1:
            self._proc.kill()
            self._proc.wait()
            for _ in range(50):  # until the pipe reports it
                real_write(self, frames)
        real_write(self, frames)

    monkeypatch.setattr(Mp4Writer, "_write", write)
    out = tmp_path / "w.mp4"
    rc, stdout, err = _run(capsys, "generate", "a red ball", "--blocks", "3", *TINY, "--out", str(out))
    assert rc == 1 and "wrote" not in stdout
    assert err.startswith(
        f"vidcascade generate: error: could not write '{out}': ffmpeg stopped reading frames"
    )
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_folder_vanishing_mid_run_is_an_error(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "gone"
    folder.mkdir()
    _interrupt_stream(monkeypatch, 1, lambda: shutil.rmtree(folder))
    rc, stdout, err = _run(capsys, "generate", "x", "--blocks", "2", *TINY, "--out", str(folder / "v.npz"))
    assert rc == 1 and "wrote" not in stdout and f"could not write '{folder / 'v.npz'}'" in err


def test_ctrl_c_during_model_load_is_one_line(capsys, monkeypatch, tmp_path):
    def load(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    monkeypatch.setattr("vidcascade.weights.registry.load_bundle", load)
    rc, stdout, err = _run(capsys, "generate", "x", "--out", str(tmp_path / "v.mp4"))
    assert rc == 130 and stdout == ""
    assert err == "vidcascade generate: stopped by SIGINT before the first block was made; nothing written\n"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_to_the_process_leaves_a_playable_mp4_of_the_frames_made(tmp_path):
    """The real thing: `kill -TERM` on a running `python -m vidcascade generate`."""
    out = tmp_path / "t.mp4"
    cmd = [sys.executable, "-m", "vidcascade", "generate", "a red ball", "--blocks", "300", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".part") for p in tmp_path.iterdir()):  # the first block is in ffmpeg
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    m = WROTE.search(stdout)
    assert m and stdout.rstrip().endswith("stopped by SIGTERM"), stdout
    frames, blocks, asked = int(m.group(2)), int(m.group(7)), int(m.group(8))
    assert 1 <= blocks < asked == 300 and frames == 3 * blocks
    assert _mp4_frames(out) == ((256, 256), frames)  # playable, every frame the line counts
    assert f"stopped by SIGTERM: closing {out} with the {frames} frames of {blocks} blocks" in stderr
    assert "Traceback" not in stderr and _leftovers(tmp_path) == []


def test_write_video_checks_the_path_and_returns_what_it_wrote(tmp_path):
    from vidcascade.io.video import write_video

    done = write_video(tmp_path / "a.npz", np.concatenate(_blocks(2)), 8.0)
    assert done.frames == 6 and read_npz(tmp_path / "a.npz").shape == (6, 16, 24, 3)
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        write_video(tmp_path / "d.npz", np.concatenate(_blocks(1)), 8.0)


def test_stop_signals_hold_defer_and_respect_ignored_signals():
    from vidcascade.errors import Stopped
    from vidcascade.io.signals import StopSignals, current

    def deliver(sig):
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler runs at the next bytecode of the main thread

    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as s:
        assert current() is s
        with pytest.raises(Stopped) as e:
            with s.hold():  # deferred to the end of the block, then raised
                deliver(signal.SIGTERM)
                reached = True
        assert reached and e.value.signum == signal.SIGTERM and e.value.name == "SIGTERM"
        with s.hold(discard=True):
            deliver(signal.SIGINT)
        with pytest.raises(Stopped):
            deliver(signal.SIGINT)
    if hasattr(signal, "SIGHUP"):  # nohup: an ignored SIGHUP stays ignored
        old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            with StopSignals():
                deliver(signal.SIGHUP)
        finally:
            signal.signal(signal.SIGHUP, old)
    assert signal.getsignal(signal.SIGTERM) is before  # restored
