"""The output path of ``generate``, checked before any model work so that a run never ends in an
unwritable file, and the names of the temporary files written next to it."""

from __future__ import annotations

import os
from pathlib import Path

FORMATS = (".mp4", ".gif", ".npz")


class OutputError(ValueError):
    """An output path that cannot be written (exit status 2: nothing was run)."""


def temp_path(target: Path, kind: str) -> Path:
    """A hidden file next to ``target`` (same folder, so the final rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{kind}")


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise OutputError(
            f'writing .mp4 needs ffmpeg from imageio-ffmpeg (pip install "vidcascade[video]"): {e}'
        ) from None


def check_output_path(path: str | Path) -> Path:
    """``path`` if a video can be written there, else an ``OutputError`` naming what is wrong.

    The extension is known and its encoder installed, the target is not a folder, and its folder
    exists and accepts a new file (tried by creating and removing a probe file: permission bits
    do not tell, e.g. in /proc or on a read-only mount).
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in FORMATS:
        raise OutputError(
            f"output {str(p)!r}: unknown extension {p.suffix!r}; use one of {', '.join(FORMATS)}"
        )
    if ext == ".mp4":
        ffmpeg_exe()
    elif ext == ".gif":
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise OutputError('writing .gif needs Pillow (pip install "vidcascade[video]")') from None
    return check_file_target(p, f"a file name ending in {ext}")


def check_file_target(path: str | Path, expected: str = "a file name", what: str = "output") -> Path:
    """``path`` if a file can be created or replaced there (``what`` names it in the errors)."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {str(p)!r} is a folder; expected {expected}")
    parent = p.parent
    if not parent.exists():
        raise OutputError(f"{what} {str(p)!r}: folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{what} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    if p.exists() and not p.is_file():
        raise OutputError(f"{what} {str(p)!r} exists and is not a regular file")
    probe = temp_path(p, "probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{what} {str(p)!r}: cannot create a file in folder {str(parent)!r} ({e.strerror})"
        ) from None
    return p
