"""The DiT's training set: world clips encoded once by the trained VAE, with caption embeddings.

Encoding once beats encoding on the fly (which costs about as much as a DiT step;
reference/embedded-model-notes.md). Each clip is rendered from a random scene; each gets several
paraphrased captions, encoded by the same MiniLM text encoder the engine uses.

Stored in one .pt file::

    latents   fp16 [N, z, T, h, w]   normalised VAE latents (the DiT's space)
    text      fp16 [N, P, L, 384]    per-token MiniLM states of P captions (zero rows past the length)
    captions  list[list[str]]        the P captions of each clip
    attrs     list[list[tuple]]      (colour, shape, motion) per object
    overlap   bool [N, T]            frames where the two objects' bounding boxes intersect
    config    dict                   the DataConfig, text_mode included ("sentence" if absent)

With ``switch_share`` > 0 a share of the clips carry a prompt switch (world/switch.py): caption A
for blocks < k, caption B from block k. Those files also hold (absent: no clip switches)::

    switch_block    int64 [N]              k, or -1 for a clip without a switch
    captions_after  list[list[str]]        the P captions of B ([] without a switch)
    attrs_after     list[list[tuple]|None] B's objects (None without a switch)
    text_after      fp16 [M, P, L, 384]    B's token states, one row per switched clip, in clip order

The captions are kept so that the text alone can be encoded again (``reencode_text``, the
``train text`` stage) when the text mode changes: that takes about a minute, the latents 13.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.wan_vae import WanVAE
from ..models.wan_vae_blocks import CausalState
from ..text.modes import check_text_mode
from ..world import SwitchConfig, caption, render, render_switch, sample_spec, sample_switch
from ..world.generate import box_overlaps
from ..world.holdout import is_held_out
from ..world.palette import ObjectAttrs
from ..world.switch import switch_overlaps
from .common import to_video_tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    clips: int = 3000
    frames: int = 48
    """Latent frames per clip (16 blocks of 3)."""
    captions_per_clip: int = 4
    two_object_prob: float = 0.4
    seed: int = 1000
    """Training clips use seeds from here; evaluation uses its own, disjoint seeds."""
    batch: int = 32
    text_mode: str = "clauses"
    """How captions reach MiniLM (text/modes.py TEXT_MODES): clause by clause, so that each
    object's words get token states of their own. Up to step 14,000 the DiT was trained on
    whole-sentence states ("sentence")."""
    switch_share: float = 0.0
    """Share of clips with a prompt switch at a random block k >= 1 (world/switch.py). The switches
    are drawn from a generator of their own, so every clip without one is the clip the same seed
    gives at share 0; share 0 writes the file of old, bit for bit."""

    def __post_init__(self) -> None:
        check_text_mode(self.text_mode)
        if not 0.0 <= self.switch_share <= 1.0:
            raise ValueError(f"switch_share must be in [0, 1], got {self.switch_share}")


def object_overlaps(data: dict) -> np.ndarray:
    """bool [N, T]: frames where a clip's two objects' bounding boxes intersect (one hides part of
    the other). Files built before this field existed are replayed from their seed (geometry only,
    nothing rendered), checked against their stored captions."""
    if "overlap" in data:
        return np.asarray(data["overlap"])
    cfg = data.get("config") or {}
    if not {"seed", "two_object_prob", "captions_per_clip", "frames"} <= set(cfg) or "captions" not in data:
        raise ValueError(
            "this latent data holds neither overlaps nor the config to replay them (rebuild: train data)"
        )
    rng = np.random.default_rng(cfg["seed"])
    out = np.zeros((len(data["captions"]), cfg["frames"]), dtype=bool)
    for i, caps in enumerate(data["captions"]):
        spec = sample_spec(rng, cfg["two_object_prob"])
        if [caption(spec, rng) for _ in range(cfg["captions_per_clip"])] != caps:
            raise ValueError(
                f"replaying the data's seed gives other captions at clip {i}: cannot find its overlaps"
            )
        out[i] = box_overlaps(spec.objects, cfg["frames"])
    return out


def block_overlaps(data: dict, frames_per_block: int) -> np.ndarray:
    """bool [N, blocks]: blocks of each clip with an object overlap in one of their frames."""
    frames = object_overlaps(data)
    n, t = frames.shape
    return frames[:, : t - t % frames_per_block].reshape(n, -1, frames_per_block).any(-1)


def switch_rows(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: its switch block k (-1: none) and its row in ``text_after`` (-1: none), int [N] each.
    Files without switches (all files from before them) give -1 everywhere."""
    n = len(data["text"])
    if "switch_block" not in data:
        return np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    block = np.asarray(data["switch_block"], dtype=np.int64)
    has = block >= 0
    rows = np.where(has, np.cumsum(has) - 1, -1)
    if int(has.sum()) != len(data["text_after"]):
        raise ValueError(f"{int(has.sum())} clips switch but text_after has {len(data['text_after'])} rows")
    return block, rows


def held_out_clips(data: dict) -> np.ndarray:
    """bool [N]: clips whose switch is reserved for evaluation (``world.holdout``). Data built since
    the switch sampler rejects them has none; older switch data may."""
    n = len(data["text"])
    if "attrs_after" not in data:
        return np.zeros(n, dtype=bool)

    def objs(rows) -> list[ObjectAttrs]:
        return [ObjectAttrs(*r) for r in rows]

    return np.array(
        [
            after is not None and is_held_out(objs(before), objs(after))
            for before, after in zip(data["attrs"], data["attrs_after"])
        ],
        dtype=bool,
    )


def data_text_mode(data: dict) -> str:
    """The text mode a latent data file was encoded with (files from before text modes: sentence)."""
    return (data.get("config") or {}).get("text_mode", "sentence")


@torch.no_grad()
def encode_captions(text_encoder, captions: list[list[str]], batch: int = 256) -> torch.Tensor:
    """fp16 [N, P, L, D] token states of P captions per clip."""
    if not captions:
        return torch.zeros(0, 0, text_encoder.text_len, text_encoder.text_dim, dtype=torch.float16)
    n, p = len(captions), len(captions[0])
    out = torch.zeros(n, p, text_encoder.text_len, text_encoder.text_dim, dtype=torch.float16)
    step = max(1, batch // p)
    for start in range(0, n, step):
        flat = [c for caps in captions[start : start + step] for c in caps]
        emb = text_encoder.encode(flat).float().cpu()  # [n*p, L, D]
        out[start : start + step] = emb.view(-1, p, *emb.shape[1:]).half()
    return out


def reencode_text(data_path: Path, text_encoder, text_mode: str, only_if_changed: bool = False) -> bool:
    """Encode the stored captions again (for another text mode); the latents stay as they are.
    With ``only_if_changed``, a file already in ``text_mode`` is left alone. True if it was rewritten."""
    if not data_path.exists():
        raise FileNotFoundError(f"{data_path} is missing: run `vidcascade train data` first")
    data = torch.load(data_path, map_location="cpu", weights_only=False)
    if only_if_changed and data_text_mode(data) == text_mode:
        return False
    if "captions" not in data:
        raise ValueError(f"{data_path} holds no captions to encode again (rebuild it: train data)")
    log.info("encoding the captions of %s again: %s -> %s text", data_path, data_text_mode(data), text_mode)
    data["text"] = encode_captions(text_encoder, data["captions"])
    if "text_after" in data:
        data["text_after"] = encode_captions(text_encoder, [c for c in data["captions_after"] if c])
    data["config"] = {**(data.get("config") or {}), "text_mode": check_text_mode(text_mode)}
    tmp = data_path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(data_path)
    return True


@torch.no_grad()
def build_latent_data(vae: WanVAE, text_encoder, out: Path, cfg: DataConfig) -> Path:
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed)
    vae.eval()
    z, c, t = vae.config.z_dim, cfg.captions_per_clip, cfg.frames
    h = w = 64 // vae.spatial_stride
    latents = torch.empty(cfg.clips, z, t, h, w, dtype=torch.float16)
    captions: list[list[str]] = []
    attrs: list[list[tuple[str, str, str]]] = []
    overlap = np.zeros((cfg.clips, t), dtype=bool)
    # Switches come from a generator of their own: the plain clips stay those of share 0.
    srng = np.random.default_rng([cfg.seed, 25])
    switches = SwitchConfig(blocks=(1, t // 3 - 1))
    switch_block = np.full(cfg.clips, -1, dtype=np.int64)
    captions_after: list[list[str]] = []
    attrs_after: list[list[tuple[str, str, str]] | None] = []
    for start in tqdm(range(0, cfg.clips, cfg.batch), desc="encode clips", unit="batch", mininterval=5):
        n = min(cfg.batch, cfg.clips - start)
        frames = np.empty((n, t, 64, 64, 3), dtype=np.uint8)
        for i in range(n):
            spec = sample_spec(rng, cfg.two_object_prob)
            drawn = None
            if cfg.switch_share > 0 and srng.random() < cfg.switch_share:
                drawn = sample_switch(spec, srng, switches)
            caps = [caption(spec, rng) for _ in range(c)]
            captions.append(caps)
            attrs.append([(a.color, a.shape, a.motion) for a in spec.attrs])
            if drawn is None:
                frames[i] = render(spec, t)
                overlap[start + i] = box_overlaps(spec.objects, t)
                captions_after.append([])
                attrs_after.append(None)
            else:
                sw = drawn[1]
                frames[i] = render_switch(spec, sw, t)
                overlap[start + i] = switch_overlaps(spec, sw, t)
                switch_block[start + i] = sw.block
                captions_after.append([caption(sw.after, srng) for _ in range(c)])
                attrs_after.append([(a.color, a.shape, a.motion) for a in sw.after])
        moments, _ = vae.encode_step(to_video_tensor(frames), CausalState())
        latents[start : start + n] = vae.normalize(moments.chunk(2, dim=1)[0]).half()
    text = encode_captions(text_encoder, captions)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = dict(cfg.__dict__)
    data = {
        "latents": latents,
        "text": text,
        "captions": captions,
        "attrs": attrs,
        "overlap": torch.from_numpy(overlap),
        "config": config,
    }
    if cfg.switch_share > 0:
        data["switch_block"] = torch.from_numpy(switch_block)
        data["captions_after"] = captions_after
        data["attrs_after"] = attrs_after
        data["text_after"] = encode_captions(text_encoder, [caps for caps in captions_after if caps])
    else:
        del config["switch_share"]  # the file of old, bit for bit
    torch.save(data, out)
    log.info(
        "wrote %s: %d clips x %d frames, %d with a prompt switch",
        out,
        cfg.clips,
        t,
        int((switch_block >= 0).sum()),
    )
    return out
