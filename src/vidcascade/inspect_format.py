"""The text form of `vidcascade inspect`'s report (inspect_cmd.py builds the dict)."""

from __future__ import annotations

from typing import Any


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _steps(s: dict[str, Any]) -> str:
    steps = ", ".join(f"{t:g}" for t in s["steps"])
    warp = "warped at shift" if s["warp"] else "unwarped, shift"
    guidance = f"guidance {s['guidance']:g}" + (" (off)" if s["guidance"] == 1 else "")
    return (
        f"{len(s['steps'])} steps [{steps}] {warp} {s['shift']:g}, {s['sampler']} sampler, "
        f"{s['frames_per_block']} latent frames/block, {guidance}"
    )


def _dit_lines(dit: dict[str, Any]) -> list[str]:
    where = dit["path"] or "no file"
    notes = f" ({'; '.join(dit['notes'])})" if dit["notes"] else ""
    lines = [f"  DiT         {dit['format']}: {where}{notes}"]
    if g := dit.get("geometry"):
        heads = f"{g['num_heads']} heads of {g['head_dim']}"
        lines.append(
            f"  geometry    dim {g['dim']}, {g['num_layers']} layers, {heads}, ffn {g['ffn_dim']}, "
            f"in/out {g['in_dim']}/{g['out_dim']}, text {g['text_len']}x{g['text_dim']}, "
            f"patch {'x'.join(map(str, g['patch_size']))}"
        )
        dtypes = ", ".join(f"{k} {v:,}" for k, v in dit["dtypes"].items())
        counts = f"{dit['num_params']:,} stored, {dit['model_params']:,} in the model"
        lines.append(f"  parameters  {counts}; {dtypes}")
    if lora := dit.get("lora"):
        lines.append(f"  LoRA        {lora['path']}: {lora['merged_layers']} linear layers")
    return lines


def _kv_lines(kv: dict[str, Any]) -> list[str]:
    latent = f"latent {kv['latent'][0]}x{kv['latent'][1]}, {kv['tokens_per_frame']} tokens/frame"
    window = f"{kv['sink_frames']} sink + {kv['window_frames']} window"
    lines = [
        f"  K/V cache   {kv['dtype']} at {kv['height']}x{kv['width']} ({latent}), batch 1",
        f"    per latent frame        {_size(kv['bytes_per_frame'])}",
        f"    committed {window}  {_size(kv['committed_bytes'])}",
        f"    cross-attention text    {_size(kv['cross_attn_bytes'])}",
    ]
    for lv in kv["levels"]:
        inflight = f"{lv['in_flight_blocks']} in flight {_size(lv['inflight_bytes'])}"
        lines.append(f"    level P{lv['level']}: {inflight}, pool {_size(lv['pool_bytes'])}")
    return lines


def format_report(rep: dict[str, Any]) -> str:
    name = f" {rep['name']!r}" if rep.get("name") and rep["name"] != rep["path"] else ""
    preset = f" (preset {rep['preset']})" if rep.get("preset") else ""
    lines = [f"{rep['path']}: {rep.get('kind', '?')}{name}{preset}"]
    if rep.get("description"):
        lines.append(f"  about       {rep['description']}")
    if "train_step" in rep:
        lines.append(f"  trained     step {rep['train_step']}")
    if rep.get("trained") is False:
        lines.append("  trained     no: random weights, the output is noise-like")
    if dit := rep.get("dit"):
        lines += _dit_lines(dit)
    if vae := rep.get("vae"):
        detail = (
            f": z_dim {vae['z_dim']}, stride {'x'.join(map(str, vae['stride']))}" if "z_dim" in vae else ""
        )
        lines.append(f"  VAE         {vae.get('note') or vae['path']}{detail}")
    if te := rep.get("text_encoder"):
        mode = f", {te['mode']} mode" if te.get("mode") else ""
        dim = f": {te['text_dim']}-d" if "text_dim" in te else ""
        lines.append(f"  text        {te['source']}{mode}{dim}")
    if s := rep.get("sampling"):
        lines.append(f"  sampling    {_steps(s)}")
    if c := rep.get("cache"):
        bias = f"sink bias {c['sink_bias']:g}" + (" (off)" if c["sink_bias"] == 0 else "")
        frames = f"{c['sink_frames']} sink + {c['window_frames']} window latent frames"
        lines.append(f"  cache       {frames}, {bias}")
    if size := rep.get("size"):
        fps = f", {rep['fps']:g} fps" if rep.get("fps") else ""
        lines.append(f"  output      {size[1]}x{size[0]} pixels (width x height){fps}")
    if rep.get("settings_from"):
        lines.append(f"  settings    from {rep['settings_from']}")
    if kv := rep.get("kv_cache"):
        lines += _kv_lines(kv)
    lines.append("  problems    " + ("none" if not rep["problems"] else ""))
    lines += [f"    - {p}" for p in rep["problems"]]
    n = len(rep["problems"])
    lines.append("  usable" if rep["usable"] else f"  NOT usable ({n} problem{'s' if n > 1 else ''} above)")
    return "\n".join(lines)
