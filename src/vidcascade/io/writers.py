"""Video writers that take frames block by block and leave a valid file whenever they are closed.

    w = open_writer(Path("out.mp4"), fps=8.0)   # nothing is created yet
    w.append(frames)                            # uint8 [T, H, W, 3], as each block finishes
    done = w.close()                            # the file of every frame appended so far
    w.abort()                                   # after a failure: remove what was started

Frames go to a hidden temporary file next to the target (``.NAME.PID.part``), which is renamed onto
the target only once it is complete, non-empty and (mp4) ffmpeg exited with status 0: the target
never holds a half-written video. mp4 is encoded while the run goes on (frames piped to ffmpeg);
gif and npz keep the raw frames in a spill file (``.NAME.PID.frames``) and are assembled from it
at close. Any failure is a ``WriteError`` naming the file and the cause.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import RunError, one_line
from .output import ffmpeg_exe, temp_path

log = logging.getLogger(__name__)

MP4_MIN_SIDE = 256
"""Small frames are upscaled (nearest neighbour) until the longer side reaches this, so that
players show them at a visible size."""
FFMPEG_CLOSE_TIMEOUT_S = 300.0


class WriteError(RunError):
    """The output could not be written (exit status 1)."""


@dataclass(frozen=True)
class Written:
    path: Path
    frames: int
    blocks: int
    width: int
    """Frame size stored in the file (mp4: after upscaling)."""
    height: int
    source_width: int
    """Frame size the model made."""
    source_height: int

    def describe(self) -> str:
        """``24 frames 256x256 (64x64 upscaled 4x)`` or ``24 frames 64x64``."""
        size = f"{self.width}x{self.height}"
        if (self.width, self.height) != (self.source_width, self.source_height):
            factor = self.width / self.source_width
            by = f" {factor:g}x" if factor.is_integer() else ""  # odd sides are padded to even
            size += f" ({self.source_width}x{self.source_height} upscaled{by})"
        return f"{self.frames} frames {size}"


class FrameWriter:
    """Base: validation, counting, the temporary file and the final rename."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.frames = 0
        self.blocks = 0
        self.size: tuple[int, int] | None = None
        """(height, width) of the frames, set by the first append."""
        self.part = temp_path(self.path, "part")

    # -- what formats implement
    def _open(self) -> None:
        raise NotImplementedError

    def _write(self, frames: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> tuple[int, int]:
        """Complete ``self.part``; return the (width, height) stored in it."""
        raise NotImplementedError

    def _discard(self) -> None:
        """Stop any helper and remove format-specific files (may run more than once)."""

    # -- the interface
    def append(self, frames: np.ndarray) -> None:
        """Add one block's frames, uint8 [T, H, W, 3] of the same H, W as the first block."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if self.size is None:
            self.size = (frames.shape[1], frames.shape[2])
            self._guard(self._open)
        elif frames.shape[1:3] != self.size:
            first = list(self.size)
            raise ValueError(f"frames are {list(frames.shape[1:3])} but the first block's are {first}")
        self._guard(self._write, np.ascontiguousarray(frames))
        self.frames += frames.shape[0]
        self.blocks += 1

    def close(self) -> Written:
        """Complete the file of every frame appended so far and move it onto the target."""
        if self.frames == 0:
            self.abort()
            raise WriteError(f"could not write {str(self.path)!r}: no frames were made")
        try:
            width, height = self._guard(self._finish)
            if self.part.stat().st_size == 0:
                raise WriteError(f"could not write {str(self.path)!r}: the encoder wrote an empty file")
            os.replace(self.part, self.path)
            if not self.path.is_file() or self.path.stat().st_size == 0:
                raise WriteError(f"could not write {str(self.path)!r}: the file is missing after the rename")
        except OSError as e:
            self.abort()
            raise WriteError(f"could not write {str(self.path)!r}: {one_line(e)}") from e
        except BaseException:
            self.abort()
            raise
        self._discard()
        h, w = self.size
        log.info("wrote %d frames to %s", self.frames, self.path)
        return Written(self.path, self.frames, self.blocks, width, height, w, h)

    def abort(self) -> None:
        """Remove the temporary files; the target is left as it was."""
        self._discard()
        self.part.unlink(missing_ok=True)

    def _guard(self, fn, *a):
        try:
            return fn(*a)
        except WriteError:
            raise
        except OSError as e:
            raise WriteError(f"could not write {str(self.path)!r}: {one_line(e)}") from e


class Mp4Writer(FrameWriter):
    """H.264 (yuv420p, crf 18) through an ffmpeg process that reads raw RGB frames on its stdin."""

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path, fps)
        self._proc: subprocess.Popen | None = None
        self._stderr: BinaryIO | None = None
        self._out_size = (0, 0)

    def _open(self) -> None:
        h, w = self.size
        scale = max(1, MP4_MIN_SIDE // max(h, w))
        ww, hh = w * scale, h * scale
        ww, hh = ww + ww % 2, hh + hh % 2  # yuv420p needs even sides
        self._out_size = (ww, hh)
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{self.fps:g}"]
        cmd += ["-i", "pipe:0"]
        cmd += ["-an", "-vf", f"scale={ww}:{hh}:flags=neighbor", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
        cmd += ["-crf", "18", "-f", "mp4", str(self.part)]
        self._stderr = tempfile.TemporaryFile()
        # Its own session: Ctrl-C and a closing terminal reach this process, which then closes the
        # file with every frame sent, instead of ffmpeg stopping mid-stream on its own.
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True
        )

    def _ffmpeg_said(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return f": {lines[-1]}" if lines else ""

    def _failed(self, what: str) -> WriteError:
        rc = self._proc.poll() if self._proc is not None else None
        status = f" (exit status {rc})" if rc is not None else ""
        return WriteError(f"could not write {str(self.path)!r}: ffmpeg {what}{status}{self._ffmpeg_said()}")

    def _write(self, frames: np.ndarray) -> None:
        try:
            self._proc.stdin.write(frames.tobytes())  # [T, H, W, 3] rgb24
            self._proc.stdin.flush()
        except OSError:  # BrokenPipeError: ffmpeg is gone
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            raise self._failed("stopped reading frames") from None

    def _finish(self) -> tuple[int, int]:
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self._proc.wait(timeout=FFMPEG_CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise self._failed(f"did not finish within {FFMPEG_CLOSE_TIMEOUT_S:g} s") from None
        if rc != 0:
            raise self._failed("failed")
        return self._out_size

    def _discard(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


class _SpillWriter(FrameWriter):
    """Raw frames appended to a spill file; the format is assembled from it at close."""

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path, fps)
        self.spill = temp_path(self.path, "frames")
        self._fh: BinaryIO | None = None

    def _open(self) -> None:
        self._fh = open(self.spill, "wb")

    def _write(self, frames: np.ndarray) -> None:
        self._fh.write(frames.tobytes())  # [T, H, W, 3] uint8
        self._fh.flush()

    def _finish(self) -> tuple[int, int]:
        self._fh.close()
        h, w = self.size
        frames = np.memmap(self.spill, dtype=np.uint8, mode="r", shape=(self.frames, h, w, 3))
        try:
            with open(self.part, "wb") as f:
                self._assemble(frames, f)
        finally:
            del frames
        return w, h

    def _assemble(self, frames: np.ndarray, f: BinaryIO) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self.spill.unlink(missing_ok=True)


class GifWriter(_SpillWriter):
    def _assemble(self, frames: np.ndarray, f: BinaryIO) -> None:
        from PIL import Image

        imgs = [Image.fromarray(np.asarray(x)) for x in frames]
        ms = int(round(1000 / self.fps))
        imgs[0].save(f, format="GIF", save_all=True, append_images=imgs[1:], duration=ms, loop=0)


class NpzWriter(_SpillWriter):
    """``frames`` uint8 [T, H, W, 3] and ``fps``, compressed."""

    def _assemble(self, frames: np.ndarray, f: BinaryIO) -> None:
        np.savez_compressed(f, frames=np.asarray(frames), fps=np.float32(self.fps))


WRITERS = {".mp4": Mp4Writer, ".gif": GifWriter, ".npz": NpzWriter}


def open_writer(path: str | Path, fps: float) -> FrameWriter:
    """The writer for ``path``'s extension (check the path first with ``check_output_path``)."""
    p = Path(path)
    try:
        return WRITERS[p.suffix.lower()](p, fps)
    except KeyError:
        raise ValueError(f"no writer for {p.suffix!r}; use one of {', '.join(WRITERS)}") from None
