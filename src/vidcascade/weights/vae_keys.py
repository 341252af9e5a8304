"""Wan2.1 VAE checkpoints: key names (original <-> diffusers), configs, loading and saving.

Formats read by :func:`load_wan_vae`:

* original ``Wan2.1_VAE.pth``: a flat torch state dict in original names; geometry inferred from shapes;
* a ``.safetensors`` file in original names (or diffusers names, detected and converted); a config saved
  by :func:`save_wan_vae` in its metadata is used, otherwise geometry is inferred from shapes;
* a diffusers folder: ``config.json`` (``AutoencoderKLWan``) + ``diffusion_pytorch_model.safetensors``.

diffusers is never imported: its names and config fields are converted here.

Key mapping (R = num_res_blocks; decoder levels hold R + 1 residual blocks, then one upsampler)::

    conv1 / conv2                          quant_conv / post_quant_conv
    {enc,dec}.conv1                        {enc,dec}.conv_in
    {enc,dec}.middle.{0,2}                 {enc,dec}.mid_block.resnets.{0,1}
    {enc,dec}.middle.1                     {enc,dec}.mid_block.attentions.0
    {enc,dec}.head.{0,2}                   {enc,dec}.norm_out / conv_out
    encoder.downsamples.N                  encoder.down_blocks.N
    decoder.upsamples.L*(R+2)+k, k <= R    decoder.up_blocks.L.resnets.k
    decoder.upsamples.L*(R+2)+R+1          decoder.up_blocks.L.upsamplers.0
    inside residual blocks: residual.{0,2,3,6} -> norm1, conv1, norm2, conv2; shortcut -> conv_shortcut
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vidcascade.models.wan_vae import WAN_VAE_PRESETS, WanVAE, WanVAEConfig

logger = logging.getLogger(__name__)

DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
CONFIG_METADATA_KEY = "vidcascade.wan_vae_config"
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
_LIST_LIMIT = 10


class VAECheckpointError(ValueError):
    """A VAE checkpoint that cannot be read or does not match the model."""


# ----- key names --------------------------------------------------------------------------------------

_RES_TO_DIFFUSERS = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}
_RES_TO_ORIGINAL = {v: k for k, v in _RES_TO_DIFFUSERS.items()}
_SIMPLE_TO_DIFFUSERS = {"conv1": "conv_in", "head.0": "norm_out", "head.2": "conv_out"}
_SIMPLE_TO_ORIGINAL = {v: k for k, v in _SIMPLE_TO_DIFFUSERS.items()}


def _swap_prefix(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def original_to_diffusers_key(key: str, num_res_blocks: int) -> str:
    """One original Wan VAE key -> its diffusers ``AutoencoderKLWan`` name; unknown keys pass unchanged."""
    if m := re.fullmatch(r"conv([12])\.(.+)", key):
        return ("quant_conv." if m[1] == "1" else "post_quant_conv.") + m[2]
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if m is None:
        return key
    side, rest = m[1], m[2]
    if (new := _swap_prefix(rest, _SIMPLE_TO_DIFFUSERS)) != rest:
        return f"{side}.{new}"
    if m := re.fullmatch(r"middle\.1\.(.+)", rest):
        return f"{side}.mid_block.attentions.0.{m[1]}"
    if m := re.fullmatch(r"middle\.([02])\.(.+)", rest):
        return f"{side}.mid_block.resnets.{int(m[1]) // 2}.{_swap_prefix(m[2], _RES_TO_DIFFUSERS)}"
    if side == "encoder" and (m := re.fullmatch(r"downsamples\.(\d+)\.(.+)", rest)):
        return f"encoder.down_blocks.{m[1]}.{_swap_prefix(m[2], _RES_TO_DIFFUSERS)}"
    if side == "decoder" and (m := re.fullmatch(r"upsamples\.(\d+)\.(.+)", rest)):
        level, k = divmod(int(m[1]), num_res_blocks + 2)
        if k == num_res_blocks + 1:
            return f"decoder.up_blocks.{level}.upsamplers.0.{m[2]}"
        return f"decoder.up_blocks.{level}.resnets.{k}.{_swap_prefix(m[2], _RES_TO_DIFFUSERS)}"
    return key


def diffusers_to_original_key(key: str, num_res_blocks: int) -> str:
    """One diffusers ``AutoencoderKLWan`` key -> its original Wan name; unknown keys pass unchanged."""
    if m := re.fullmatch(r"(post_)?quant_conv\.(.+)", key):
        return ("conv2." if m[1] else "conv1.") + m[2]
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if m is None:
        return key
    side, rest = m[1], m[2]
    if (new := _swap_prefix(rest, _SIMPLE_TO_ORIGINAL)) != rest:
        return f"{side}.{new}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{side}.middle.1.{m[1]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest):
        return f"{side}.middle.{2 * int(m[1])}.{_swap_prefix(m[2], _RES_TO_ORIGINAL)}"
    if side == "encoder" and (m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest)):
        return f"encoder.downsamples.{m[1]}.{_swap_prefix(m[2], _RES_TO_ORIGINAL)}"
    if side == "decoder" and (m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)):
        index = int(m[1]) * (num_res_blocks + 2) + int(m[2])
        return f"decoder.upsamples.{index}.{_swap_prefix(m[3], _RES_TO_ORIGINAL)}"
    if side == "decoder" and (m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest)):
        return f"decoder.upsamples.{int(m[1]) * (num_res_blocks + 2) + num_res_blocks + 1}.{m[2]}"
    return key


def original_to_diffusers(state_dict: Mapping[str, Tensor], num_res_blocks: int) -> dict[str, Tensor]:
    return {original_to_diffusers_key(k, num_res_blocks): v for k, v in state_dict.items()}


def diffusers_to_original(state_dict: Mapping[str, Tensor], num_res_blocks: int) -> dict[str, Tensor]:
    return {diffusers_to_original_key(k, num_res_blocks): v for k, v in state_dict.items()}


def is_diffusers_naming(keys: Mapping[str, Any] | list[str]) -> bool:
    return any(k.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.")) for k in keys)


def _diffusers_num_res_blocks(keys: Mapping[str, Any]) -> int:
    """Decoder levels hold num_res_blocks + 1 resnets in diffusers naming."""
    found = [int(m[1]) for k in keys if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))]
    return max(found) if found else WAN_VAE_PRESETS["wan2.1"].num_res_blocks


# ----- configs ----------------------------------------------------------------------------------------


def config_from_diffusers(fields: Mapping[str, Any]) -> WanVAEConfig:
    """An ``AutoencoderKLWan`` config.json dict -> WanVAEConfig; Wan2.2-only options are rejected."""
    cls = fields.get("_class_name", "AutoencoderKLWan")
    if cls != "AutoencoderKLWan":
        raise VAECheckpointError(f"config.json describes {cls!r}, expected 'AutoencoderKLWan'")
    base_dim = fields.get("base_dim", 96)
    bad = {
        "is_residual": fields.get("is_residual", False),
        "patch_size": fields.get("patch_size"),
        "decoder_base_dim": fields.get("decoder_base_dim"),
        "attn_scales": fields.get("attn_scales", []),
        "in_channels": fields.get("in_channels", 3),
        "out_channels": fields.get("out_channels", 3),
    }
    ok = {"is_residual": (False,), "patch_size": (None, 1), "decoder_base_dim": (None, base_dim)}
    ok |= {"attn_scales": ([], ()), "in_channels": (3,), "out_channels": (3,)}
    unsupported = [f"{k}={v!r}" for k, v in bad.items() if v not in ok[k]]
    if unsupported:
        options = ", ".join(unsupported)
        raise VAECheckpointError(f"unsupported AutoencoderKLWan options (Wan2.2 VAE?): {options}")
    return WanVAEConfig(
        base_dim=base_dim,
        z_dim=fields.get("z_dim", 16),
        dim_mult=tuple(fields.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=fields.get("num_res_blocks", 2),
        temporal_downsample=tuple(fields.get("temperal_downsample", (False, True, True))),  # sic
        dropout=fields.get("dropout", 0.0),
        latents_mean=fields.get("latents_mean"),
        latents_std=fields.get("latents_std"),
    )


def config_to_diffusers(config: WanVAEConfig) -> dict[str, Any]:
    """WanVAEConfig -> a config.json dict that diffusers' ``AutoencoderKLWan.from_pretrained`` accepts."""
    return {
        "_class_name": "AutoencoderKLWan",
        "base_dim": config.base_dim,
        "z_dim": config.z_dim,
        "dim_mult": list(config.dim_mult),
        "num_res_blocks": config.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(config.temporal_downsample),
        "dropout": config.dropout,
        "latents_mean": list(config.latents_mean or ()),
        "latents_std": list(config.latents_std or ()),
        "scale_factor_temporal": config.temporal_stride,
        "scale_factor_spatial": config.spatial_stride,
    }


def infer_config(state_dict: Mapping[str, Tensor]) -> WanVAEConfig:
    """Geometry from the encoder's shapes (original names); the wan2.1 preset if the keys are missing.

    latents_mean/std are not in a state dict: Wan2.1's for z_dim 16, zeros/ones otherwise.
    """
    if "encoder.conv1.weight" not in state_dict or "conv2.weight" not in state_dict:
        return WAN_VAE_PRESETS["wan2.1"]  # the strict key check then names what is missing
    base_dim = state_dict["encoder.conv1.weight"].shape[0]
    z_dim = state_dict["conv2.weight"].shape[0]
    indices = sorted({int(m[1]) for k in state_dict if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]  # residual-block output channels per level
    temporal: list[bool] = []
    for n in indices:
        prefix = f"encoder.downsamples.{n}."
        if prefix + "resample.1.weight" in state_dict:
            temporal.append(prefix + "time_conv.weight" in state_dict)
            levels.append([])
        elif prefix + "residual.2.weight" in state_dict:
            levels[-1].append(state_dict[prefix + "residual.2.weight"].shape[0])
    if not levels[0] or any(not level for level in levels):
        return WAN_VAE_PRESETS["wan2.1"]
    return WanVAEConfig(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=tuple(level[-1] // base_dim for level in levels),
        num_res_blocks=len(levels[0]),
        temporal_downsample=tuple(temporal),
    )


# ----- loading ----------------------------------------------------------------------------------------


def _preview(keys: list[str]) -> str:
    return ", ".join(keys[:_LIST_LIMIT]) + (", ..." if len(keys) > _LIST_LIMIT else "")


def _read_torch(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors all mean "not a readable checkpoint"
        raise VAECheckpointError(f"cannot read VAE checkpoint '{path}': {type(e).__name__}: {e}") from e
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))  # {"state_dict": {...}} wrappers
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise VAECheckpointError(f"VAE checkpoint '{path}' is not a flat state dict of tensors")
    return obj


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise VAECheckpointError(f"cannot read VAE checkpoint '{path}': {type(e).__name__}: {e}") from e


def _read_checkpoint(
    path: Path, override: WanVAEConfig | None
) -> tuple[dict[str, Tensor], WanVAEConfig | None]:
    """State dict in original names, and the config if the checkpoint carries one."""
    config: WanVAEConfig | None = None
    if path.is_dir():
        if not (path / DIFFUSERS_CONFIG).is_file() or not (path / DIFFUSERS_WEIGHTS).is_file():
            raise VAECheckpointError(
                f"unknown VAE checkpoint format: folder '{path}' "
                f"lacks {DIFFUSERS_CONFIG} or {DIFFUSERS_WEIGHTS}"
            )
        try:
            fields = json.loads((path / DIFFUSERS_CONFIG).read_text())
            config = config_from_diffusers(fields)
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise VAECheckpointError(f"bad {DIFFUSERS_CONFIG} in '{path}': {e}") from e
        state_dict, _ = _read_safetensors(path / DIFFUSERS_WEIGHTS)
    elif path.suffix == ".safetensors":
        state_dict, metadata = _read_safetensors(path)
        if CONFIG_METADATA_KEY in metadata:
            try:
                config = WanVAEConfig(**json.loads(metadata[CONFIG_METADATA_KEY]))
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                raise VAECheckpointError(f"bad config metadata in '{path}': {e}") from e
    elif path.suffix in TORCH_SUFFIXES:
        state_dict = _read_torch(path)
    else:
        raise VAECheckpointError(
            f"unknown VAE checkpoint format: '{path}' (expected a diffusers folder with {DIFFUSERS_CONFIG} "
            f"and {DIFFUSERS_WEIGHTS}, a {'/'.join(TORCH_SUFFIXES)} file or a .safetensors file)"
        )
    if is_diffusers_naming(state_dict):
        known = override or config
        blocks = known.num_res_blocks if known else _diffusers_num_res_blocks(state_dict)
        state_dict = diffusers_to_original(state_dict, blocks)
    return state_dict, config


def _build(config: WanVAEConfig, state_dict: Mapping[str, Tensor], path: Path) -> WanVAE:
    """A new WanVAE holding exactly ``state_dict``; raises before anything is loaded if it does not fit."""
    with torch.device("meta"):  # no init cost: every parameter is replaced by the checkpoint's
        model = WanVAE(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_preview(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_preview(mismatched)})")
    if problems:
        raise VAECheckpointError(f"VAE checkpoint '{path}' does not match {config}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def load_wan_vae(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    config: WanVAEConfig | None = None,
) -> WanVAE:
    """Load a Wan2.1 VAE from a diffusers folder, an original ``.pth`` or a ``.safetensors`` file.

    ``config`` overrides the one read from or inferred from the checkpoint. ``dtype=None`` keeps the
    checkpoint's dtype. Returns the model in eval mode. Raises :class:`VAECheckpointError` (a
    ValueError) for unreadable files, unknown formats and any key or shape mismatch.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VAE checkpoint not found: '{path}'")
    state_dict, found = _read_checkpoint(path, config)
    model = _build(config or found or infer_config(state_dict), state_dict, path)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    logger.info("loaded Wan VAE from %s", path)
    logger.debug("Wan VAE config: %s", model.config)
    return model.eval()


# ----- saving -----------------------------------------------------------------------------------------


def _plain_state_dict(model: WanVAE) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_wan_vae(model: WanVAE, path: str | Path) -> None:
    """Write the weights in original names: ``.pth``/``.pt`` (like Wan2.1_VAE.pth) or ``.safetensors``.

    The safetensors file also carries the config in its metadata, so latents_mean/std survive.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix == ".safetensors":
        meta = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(model.config))}
        save_file(_plain_state_dict(model), str(path), metadata=meta)
    elif path.suffix in TORCH_SUFFIXES:
        torch.save(_plain_state_dict(model), path)
    else:
        raise ValueError(f"save_wan_vae writes .safetensors or {'/'.join(TORCH_SUFFIXES)}, got '{path}'")


def save_wan_vae_diffusers(model: WanVAE, folder: str | Path) -> None:
    """Write a diffusers ``AutoencoderKLWan`` folder: config.json + diffusion_pytorch_model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DIFFUSERS_CONFIG).write_text(json.dumps(config_to_diffusers(model.config), indent=2))
    weights = original_to_diffusers(_plain_state_dict(model), model.config.num_res_blocks)
    save_file(weights, str(folder / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
