"""Bookkeeping of the committed K/V tier, in frames, with no tensors.

Slots of the committed tier (one slot = one latent frame = tokens_per_frame tokens)::

    slot:   0 .. sink-1          sink .. sink+window-1
          [ sink frames        | rolling window (ring)                  ]
            frames 0..sink-1     newest `window` frames after the sink, in ring order

Frames are committed strictly in order. Until the tier is full, slots fill left to right, so the
valid slots are always the prefix [0, valid_slots); afterwards each new frame overwrites the ring
slot of the oldest window frame. Attention does not care about key order (RoPE is applied before
the keys are stored), so the ring needs no shifting.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class CacheIndexError(IndexError):
    """A write or read does not match the cache cursors."""


@dataclass
class CommittedLayout:
    sink_frames: int
    window_frames: int
    frame_of_slot: list[int | None] = field(init=False)
    next_frame: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.sink_frames < 0 or self.window_frames < 1:
            raise ValueError(
                f"need sink_frames >= 0 and window_frames >= 1, got {self.sink_frames}, {self.window_frames}"
            )
        self.frame_of_slot = [None] * self.capacity

    @property
    def capacity(self) -> int:
        return self.sink_frames + self.window_frames

    @property
    def valid_slots(self) -> int:
        return min(self.next_frame, self.capacity)

    def slot_for(self, frame: int) -> int:
        """Where frame ``frame`` goes when committed (it must be the next frame)."""
        if frame < self.sink_frames:
            return frame
        return self.sink_frames + (frame - self.sink_frames) % self.window_frames

    def commit(self, frames: range) -> list[tuple[int, int]]:
        """Commit consecutive frames; returns (slot, frame) pairs. Raises on a gap or a repeat."""
        out = []
        for f in frames:
            if f != self.next_frame:
                raise CacheIndexError(
                    f"commit of frame {f} out of order: next_frame={self.next_frame}, "
                    f"sink_frames={self.sink_frames}, window_frames={self.window_frames}, "
                    f"valid_slots={self.valid_slots}"
                )
            slot = self.slot_for(f)
            self.frame_of_slot[slot] = f
            self.next_frame += 1
            out.append((slot, f))
        return out

    def visible_frames(self) -> list[int]:
        """Absolute frame index of each valid slot, in slot order."""
        return [f for f in self.frame_of_slot[: self.valid_slots] if f is not None]

    def reset(self) -> None:
        self.frame_of_slot = [None] * self.capacity
        self.next_frame = 0

    def __repr__(self) -> str:
        return (
            f"CommittedLayout(sink={self.sink_frames}, window={self.window_frames}, "
            f"next_frame={self.next_frame}, valid_slots={self.valid_slots}, frames={self.visible_frames()})"
        )
