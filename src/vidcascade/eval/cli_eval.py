"""``vidcascade eval``: quality of every cascade configuration on the world's prompts.

Two presets: a quick default (a few minutes on a small CPU) for a first look, and ``--full``, the
run behind the reported table. Flags the user gives override the preset; a flag that depends on
another (``--long-prompts`` on ``--prompts``) is clamped when the user did not give it, and an
error names the flags the user gave when they disagree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

ATTENTION_MODES = ("causal", "bidirectional")
SWITCH_MODES = ("no-recache", "recache", "blend")
SWITCH_SET_OF_PROMPT_SET = {"eval": "reported", "validation": "validation"}
FRESHNESS_MODES = ("joint", "per_tick")


@dataclass(frozen=True)
class EvalPreset:
    name: str
    all_levels: bool
    """True: every level 0..S; False: level 0 (the reference) and level S (fully parallel)."""
    prompts: int
    long_prompts: int
    long_blocks: int
    switches: int
    """Switches of the switch check (the first N of the set; every prefix has all kinds in turn)."""


# Quick: the two ends of the cascade with both attentions (P0, PS causal, PS bidirectional) on 16
# prompts, drift on 2 long videos each, 10 switches (2 of each kind) in each of the 3 switch modes
# at P0 and PS. Full: the README's reported table (every level, 64 prompts, drift on 8 long videos
# each, the whole reported switch set of 80). Before the generated switch set, quick took 1 min 48 s
# on 2 CPU cores at load 1-2.5 with the embedded model and full 35 min (niced, load 5-6); the
# switch check adds about 0.4 s a switch video (60 quick, 480 full).
PRESETS = {
    "quick": EvalPreset("quick", all_levels=False, prompts=16, long_prompts=2, long_blocks=60, switches=10),
    "full": EvalPreset("full", all_levels=True, prompts=64, long_prompts=8, long_blocks=60, switches=80),
}


def _epilog() -> str:
    q, f = PRESETS["quick"], PRESETS["full"]
    return (
        "presets (S = the model's step count: 4 for the embedded model):\n"
        f"  default  a quick look: levels 0 and S with --attention's modes, {q.prompts} prompts x seeds\n"
        f"           of --blocks blocks, drift on the first {q.long_prompts} prompts over {q.long_blocks} "
        f"blocks, switch check\n           on {q.switches} switches in 3 modes at levels 0 and S: "
        f"3-5 minutes on 2 CPU cores\n           (each video moves an accuracy by 1/{q.prompts})\n"
        f"  --full   the reported table: every level 0..S, {f.prompts} prompts, drift on the first "
        f"{f.long_prompts} prompts over\n           {f.long_blocks} blocks, switch check on all "
        f"{f.switches} reported switches: about 40 minutes on 2 CPU cores\n"
        "--levels, --prompts, --long-prompts, --long-blocks and --switches override either preset;\n"
        "without --long-prompts the long videos are clamped to --prompts. --prompt-set validation\n"
        "also takes the switches from the validation switch set."
    )


def add_eval_parser(sub, add_model_args, levels_type) -> None:
    e = sub.add_parser(
        "eval",
        help="quality per cascade level and attention mode (quick by default, --full for the table)",
        description="Generate the same prompts x seeds with every cascade configuration and score "
        "colour, shape, motion, object count, block seams and drift against the prompt; prints each "
        "configuration's row as soon as it is done, then the tables.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(e)
    e.add_argument("--full", action="store_true", help="run the reported table's preset (see below)")
    e.add_argument(
        "--levels", type=levels_type, default=None, help="comma-separated levels (default: the preset's)"
    )
    e.add_argument("--attention", default="causal,bidirectional", help="comma-separated attention modes")
    e.add_argument(
        "--freshness",
        default="joint",
        help="comma-separated in-flight K/V freshness: joint and/or per_tick (stale by a tick)",
    )
    e.add_argument(
        "--prompts", type=int, default=None, help="prompts x seeds per configuration (default: the preset's)"
    )
    e.add_argument(
        "--prompt-set",
        choices=["eval", "validation"],
        default="eval",
        help="eval: the reported set; validation: a disjoint set for choosing settings (prompts "
        "and switches)",
    )
    e.add_argument("--blocks", type=int, default=8, help="blocks per video")
    e.add_argument(
        "--long-prompts",
        type=int,
        default=None,
        help="long videos per configuration (drift), on the first N prompts; 0 = none "
        "(default: the preset's, at most --prompts)",
    )
    e.add_argument(
        "--long-blocks", type=int, default=None, help="blocks per long video (default: the preset's)"
    )
    e.add_argument("--no-switch-check", action="store_true", help="skip the prompt-switch check")
    e.add_argument(
        "--switches", type=int, default=None, help="switches of the switch check (default: the preset's)"
    )
    e.add_argument(
        "--switch-modes",
        default=",".join(SWITCH_MODES),
        help="comma-separated switch modes of the switch check",
    )
    e.add_argument("--json", dest="json_path", default=None, metavar="FILE")
    # Feature cache (vidcascade.caching): every video is also made cached and compared.
    e.add_argument(
        "--cache",
        choices=["none", "bwcache", "flowcache"],
        default="none",
        help="also run this feature cache",
    )
    e.add_argument("--cache-threshold", type=float, default=None, help="feature cache threshold")


@dataclass(frozen=True)
class EvalSettings:
    """What one `vidcascade eval` runs, after presets, user flags and clamping."""

    preset: str
    levels: list[int] | None
    """None: the preset's choice, known once the model's step count is."""
    attention: list[str]
    freshness: list[str]
    prompts: int
    blocks: int
    long_prompts: int
    long_blocks: int
    switches: int
    """0: no switch check."""
    switch_modes: list[str]

    def resolve_levels(self, num_steps: int) -> list[int]:
        if self.levels is None:
            return list(range(num_steps + 1)) if PRESETS[self.preset].all_levels else [0, num_steps]
        for lv in self.levels:
            if not 0 <= lv <= num_steps:
                raise ValueError(f"--levels: {lv} is out of range 0..{num_steps} (the model's step count)")
        return self.levels

    def configs(self, levels: list[int]) -> list[tuple[int, str, str]]:
        """(level, attention, freshness): level 0 has one attention and no in-flight K/V to freshen."""
        out = [
            (lv, m, f)
            for f in self.freshness
            for lv in levels
            for m in (self.attention if lv > 0 else self.attention[:1])
            if not (lv == 0 and f == "per_tick")
        ]
        if not out:
            raise ValueError(
                f"--freshness {','.join(self.freshness)} with --levels {','.join(map(str, levels))}: "
                "per_tick applies to levels >= 1 only (level 0 has no in-flight blocks); add a level"
            )
        return out


def _modes(flag: str, text: str, known: tuple[str, ...]) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise ValueError(f"{flag} is empty; expected one or more of {', '.join(known)}")
    for m in modes:
        if m not in known:
            raise ValueError(f"{flag}: unknown mode {m!r}; expected one or more of {', '.join(known)}")
    return list(dict.fromkeys(modes))


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    """The preset (quick, or --full) with the user's flags on top; errors name the user's flags."""
    preset = PRESETS["full" if args.full else "quick"]
    prompts = preset.prompts if args.prompts is None else args.prompts
    if prompts < 1:
        raise ValueError(f"--prompts must be >= 1, got {prompts}")
    if args.blocks < 2:
        raise ValueError(f"--blocks must be >= 2 (boundary_jump compares blocks), got {args.blocks}")
    if args.long_prompts is None:
        # The long videos reuse the first prompts of the set: never more than were asked for.
        long_prompts = min(preset.long_prompts, prompts)
        if long_prompts < preset.long_prompts:
            log.info("--prompts %d: drift on %d long video(s) per configuration", prompts, long_prompts)
    else:
        long_prompts = args.long_prompts
        if long_prompts < 0:
            raise ValueError(f"--long-prompts must be >= 0, got {long_prompts}")
        if long_prompts > prompts:
            given = (
                f"--prompts {prompts}"
                if args.prompts is not None
                else f"the {prompts} prompts of the {preset.name} preset (give --prompts to run more)"
            )
            raise ValueError(
                f"--long-prompts {long_prompts} is more than {given}: the long videos reuse the first "
                "prompts of the set"
            )
    long_blocks = preset.long_blocks if args.long_blocks is None else args.long_blocks
    if long_prompts and long_blocks < 4:
        raise ValueError(
            f"--long-blocks must be >= 4 (drift compares the first and last quarter), got {long_blocks}"
        )
    return EvalSettings(
        preset=preset.name,
        levels=args.levels,
        attention=_modes("--attention", args.attention, ATTENTION_MODES),
        freshness=_modes("--freshness", args.freshness, FRESHNESS_MODES),
        prompts=prompts,
        blocks=args.blocks,
        long_prompts=long_prompts,
        long_blocks=long_blocks,
        switches=0 if args.no_switch_check else _switches(args, preset),
        switch_modes=_modes("--switch-modes", args.switch_modes, SWITCH_MODES),
    )


def _switches(args: argparse.Namespace, preset: EvalPreset) -> int:
    from .switch_set import SWITCH_SETS

    name = SWITCH_SET_OF_PROMPT_SET[args.prompt_set]
    total = SWITCH_SETS[name][2]
    if args.switches is None:
        return min(preset.switches, total)
    if not 1 <= args.switches <= total:
        raise ValueError(f"--switches must be in 1..{total} (the {name} switch set), got {args.switches}")
    return args.switches


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hold a logger at WARNING (unless -v asked for DEBUG): the engine logs every prompt switch,
    and the switch check makes dozens of them."""
    lg = logging.getLogger(logger_name)
    old = lg.level
    if lg.getEffectiveLevel() >= logging.INFO:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(old)


def _emit(line: str) -> None:
    """A result line on stdout at once, around the progress bar on stderr."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def cmd_eval(args: argparse.Namespace, load_bundle) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..engine.engine import Engine
    from .quality import format_by_objects, format_eval, format_eval_header, format_eval_row, run_eval
    from .switch_check import (
        format_by_kind,
        format_switch,
        format_switch_header,
        format_switch_row,
        run_switch_check,
        switch_videos,
    )

    settings = eval_settings(args)  # every flag checked before the model loads
    bundle = load_bundle(args)
    levels = settings.resolve_levels(bundle.sampling.num_steps)
    configs = settings.configs(levels)
    switch_levels = sorted({0, max(levels)})
    switch_set = SWITCH_SET_OF_PROMPT_SET[args.prompt_set]
    n_switch = switch_videos(switch_levels, settings.switches, tuple(settings.switch_modes))
    log.info(
        "eval (%s): %d configuration(s) x %d prompts, %d long video(s) each%s",
        settings.preset,
        len(configs),
        settings.prompts,
        settings.long_prompts,
        f", switch check on {n_switch} videos" if n_switch else "",
    )
    bar = tqdm(total=1, unit="video", leave=False, disable=None, file=sys.stderr)
    eval_total = 0

    def eval_progress(done: int, total: int) -> None:
        nonlocal eval_total
        eval_total = total
        bar.total, bar.n = total + n_switch, done
        bar.refresh()

    def switch_progress(done: int, total: int) -> None:
        bar.n = eval_total + done
        bar.refresh()

    def on_row(row: dict[str, Any]) -> None:
        if not rows_seen:
            long_blocks = settings.long_blocks if settings.long_prompts else None
            _emit(
                format_eval_header(
                    bundle.name, settings.prompts, args.prompt_set, settings.blocks, long_blocks
                )
            )
        rows_seen.append(row)
        _emit(format_eval_row(row))

    def on_switch_row(row: dict[str, Any]) -> None:
        if not switch_seen:
            _emit(format_switch_header(switch_set, settings.switches))
        switch_seen.append(row)
        _emit(format_switch_row(row))

    rows_seen: list[dict] = []
    switch_seen: list[dict] = []
    switch_rows: list[dict] = []
    try:
        with logging_redirect_tqdm():  # log lines go above the bar, not through it
            rows = run_eval(
                bundle,
                configs,
                settings.prompts,
                settings.blocks,
                settings.long_prompts,
                settings.long_blocks,
                eval_progress,
                prompt_set=args.prompt_set,
                on_row=on_row,
                feature_cache=_feature_cache(args),
            )
            if settings.switches:
                with _quiet(Engine.__module__), _quiet("vidcascade.engine.session"):
                    switch_rows = run_switch_check(
                        bundle,
                        switch_levels,
                        # The engine's default attention where it was asked for, as users run it.
                        "causal" if "causal" in settings.attention else settings.attention[0],
                        switches=settings.switches,
                        switch_set=switch_set,
                        modes=tuple(settings.switch_modes),
                        progress=switch_progress,
                        on_row=on_switch_row,
                    )
    finally:
        bar.close()
    print()
    print(format_eval(rows, bundle.name))
    if args.cache != "none":
        print(_format_cache(rows, args.cache))
    print(format_by_objects(rows))
    if switch_rows:
        print(format_switch(switch_rows))
        print(format_by_kind(switch_rows))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "model": bundle.name,
                    "settings": asdict(settings) | {"levels": levels},
                    "configs": rows,
                    "switch": switch_rows,
                },
                f,
                indent=2,
            )
        print(f"wrote {args.json_path}")
    return 0


def _feature_cache(args: argparse.Namespace):
    if args.cache == "none":
        return None
    from ..config import FeatureCacheConfig

    return FeatureCacheConfig(policy=args.cache, threshold=args.cache_threshold)


def _format_cache(rows: list[dict], policy: str) -> str:
    lines = [
        f"feature cache {policy} against the uncached videos of the same seeds:",
        "| level | attention | skipped | PSNR | SSIM | colour | shape | motion |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| P{r['level']} | {r['attention']} | {r['cache_skipped_share']:.1%} | "
            f"{r['cache_psnr_vs_uncached']:.2f} | {r['cache_ssim_vs_uncached']:.4f} | "
            f"{r['cache_color_acc']:.3f} | {r['cache_shape_acc']:.3f} | {r['cache_motion_acc']:.3f} |"
        )
    return "\n".join(lines)
