"""``vidcascade train``: the embedded model's reproducible, resumable training pipeline.

Stages (each resumes from its checkpoint in the run folder, so the command can be re-run after an
interruption): ``vae`` -> ``data`` (encode world clips once; ``text`` encodes only the captions
again, for another text mode) -> ``dit`` -> ``distill`` (the guided many-step sampler into the
engine's 4 steps) -> ``export`` (write the package's embedded model). ``all`` runs whatever of
these is not finished yet. ``decoder`` (fine-tune the VAE decoder on noisy latents, encoder
frozen) is optional and not part of ``all``: it served the earlier VAE trained with absolute
latent noise; the shipped VAE is trained with relative noise and already decodes noisy latents
cleanly (vae_train.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ..text.modes import TEXT_MODES

log = logging.getLogger(__name__)


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="train the embedded model (resumable)")
    t.add_argument("stage", choices=["vae", "data", "text", "decoder", "dit", "distill", "export", "all"])
    t.add_argument("--run", default="runs/embedded", help="run folder (checkpoints, data)")
    t.add_argument("--minutes", type=float, default=None, help="wall-clock budget for this call (vae/dit)")
    t.add_argument("--vae-steps", type=int, default=None)
    t.add_argument("--decoder-steps", type=int, default=None)
    t.add_argument(
        "--dit-steps",
        type=int,
        default=None,
        help="DiT steps (default 1200: the last phase, resumed from phase 5)",
    )
    t.add_argument("--distill-steps", type=int, default=None)
    t.add_argument(
        "--distill-guidance",
        type=float,
        default=None,
        help="the teacher's guidance, baked into the distilled student (default 3)",
    )
    t.add_argument(
        "--distill-lag-probs",
        type=_probs,
        default=None,
        help="probabilities of the cascade lags 1..5 in distillation ticks (default 0.45,0.1,0.1,0.1,0.25)",
    )
    t.add_argument(
        "--distill-bidirectional-prob",
        type=float,
        default=None,
        help="share of multi-block distillation ticks with bidirectional attention (default 0.75)",
    )
    t.add_argument(
        "--distill-context-noise",
        type=_noise,
        default=None,
        metavar="SHARE,SIGMA",
        help="share of distillation ticks whose clean blocks get noise up to SIGMA, still labelled t=0 "
        "(default 0.5,0.1)",
    )
    t.add_argument(
        "--distill-init",
        default=None,
        metavar="WEIGHTS",
        help="start a new distillation run's student from these weights (an earlier "
        "dit_distilled_ema.safetensors or distill_ckpt.pt) instead of the teacher's",
    )
    t.add_argument(
        "--distill-rollouts",
        type=int,
        default=None,
        metavar="CLIPS",
        help="clips the student draws itself (one block ahead of the true clip) at the start of a "
        "distillation run; it then sees its own blocks as context in half the ticks while the "
        "teacher sees the true ones (default 0: off)",
    )
    t.add_argument(
        "--distill-rollout-focus",
        choices=["any", "overlap"],
        default=None,
        help="clips of the rollouts: any, or those whose two objects overlap (and ticks around the "
        "overlap) (default any)",
    )
    t.add_argument(
        "--first-prob",
        type=float,
        default=None,
        help="share of DiT steps on a video's first blocks (default 0.45)",
    )
    t.add_argument(
        "--two-object-share",
        type=float,
        default=None,
        help="share of samples from two-object clips (dit and distill; default 0.75)",
    )
    t.add_argument(
        "--overlap-share",
        type=float,
        default=None,
        help="share of DiT samples from clips whose two objects overlap in the sample's blocks "
        "(default 0.35)",
    )
    t.add_argument(
        "--distill-overlap-share",
        type=float,
        default=None,
        help="the same for distillation ticks (default 0.35)",
    )
    t.add_argument(
        "--bidirectional-prob",
        type=float,
        default=None,
        help="share of multi-block cascade-tick layouts with bidirectional attention (default 0.6)",
    )
    t.add_argument(
        "--context-probs",
        type=_probs,
        default=None,
        help="probabilities of 0, 1, 2, ... clean context blocks, comma-separated "
        "(default 0.2,0.1,0.1,0.15,0.2,0.25)",
    )
    t.add_argument(
        "--context-noise",
        type=_noise,
        default=None,
        metavar="SHARE,SIGMA",
        help="share of DiT samples whose clean context gets noise up to SIGMA, still labelled t=0 "
        "(default 0,0)",
    )
    t.add_argument(
        "--dit-init",
        default=None,
        metavar="WEIGHTS",
        help="start a new DiT run from these weights (dit_ckpt.pt or .safetensors) instead of random",
    )
    t.add_argument(
        "--dit-lr", type=float, default=None, help="peak learning rate of the DiT stage (default 2e-4)"
    )
    t.add_argument("--clips", type=int, default=None, help="training clips to encode (data stage)")
    t.add_argument(
        "--switch-share",
        type=float,
        default=None,
        help="prompt switches: data: share of clips with a switch at a random block (default 0: the "
        "data of old); dit / distill: share of samples from clips whose switch falls inside the "
        "sample's blocks, each block conditioned on the caption it was made under (default 0)",
    )
    t.add_argument(
        "--text-mode",
        choices=TEXT_MODES,
        default=None,
        help="captions through MiniLM whole, clause by clause, or clause by clause with the clause "
        "count in front (data and text stages; default clauses)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    t.add_argument("--dest", default=None, help="export destination (default: the package's assets)")
    t.add_argument(
        "--merge-with",
        default=None,
        metavar="WEIGHTS",
        help="export: interpolate the run's DiT with these weights of the same model (a .safetensors "
        "file or checkpoint, e.g. the student the run was distilled from) (default: no merge)",
    )
    t.add_argument(
        "--merge-share",
        type=float,
        default=None,
        help="export with --merge-with: the run's weight in the mix, in [0, 1] (default 0.5)",
    )


def _probs(text: str) -> tuple[float, ...]:
    try:
        probs = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated probabilities, got {text!r}") from None
    if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"probabilities must be >= 0 and sum to 1, got {text!r}")
    return probs


def _noise(text: str) -> tuple[float, float]:
    try:
        share, sigma = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SHARE,SIGMA (two numbers), got {text!r}") from None
    return share, sigma  # ranges: DiTTrainConfig checks them, as for every other DiT flag


def _step_of(ckpt: Path, product: Path | None = None) -> int:
    """Step a stage reached: from its resume checkpoint, else from the step in its product's
    safetensors metadata (a finished distillation keeps only its product in the run folder)."""
    import torch

    if ckpt.exists():
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"])
    if product is not None and product.exists():
        from safetensors import safe_open

        with safe_open(str(product), "pt") as f:
            return int((f.metadata() or {}).get("step", 0))
    return 0


def _given(**overrides) -> dict:
    """The flags the user set (None = keep the config's default)."""
    return {k: v for k, v in overrides.items() if v is not None}


def cmd_train(args: argparse.Namespace) -> int:

    import torch

    from ..weights.embedded import embedded_text_encoder
    from .distill import DistillConfig, distill
    from .dit_train import DiTTrainConfig, train_dit
    from .latent_data import DataConfig, build_latent_data, reencode_text
    from .merge import check_share
    from .vae_train import DecoderTuneConfig, VAETrainConfig, finetune_decoder, train_vae

    if args.merge_with and args.stage not in ("export", "all"):
        raise ValueError(f"--merge-with applies to the export stage, not to {args.stage!r}")
    if args.merge_share is not None:
        # Checked before any stage runs: `all` exports last, after hours of training.
        if not args.merge_with:
            raise ValueError("--merge-share needs --merge-with (the weights to merge the run's DiT with)")
        check_share(args.merge_share)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    vcfg = VAETrainConfig(seed=args.seed, **_given(steps=args.vae_steps))
    ftcfg = DecoderTuneConfig(**_given(steps=args.decoder_steps))
    dcfg = DataConfig(**_given(clips=args.clips, text_mode=args.text_mode, switch_share=args.switch_share))
    tcfg = DiTTrainConfig(
        seed=args.seed,
        **_given(
            steps=args.dit_steps,
            first_prob=args.first_prob,
            two_object_share=args.two_object_share,
            overlap_share=args.overlap_share,
            bidirectional_prob=args.bidirectional_prob,
            context_probs=args.context_probs,
            context_noise=args.context_noise,
            init_from=args.dit_init,
            lr=args.dit_lr,
            switch_share=args.switch_share,
        ),
    )
    klayouts = DistillConfig().layouts
    if args.distill_bidirectional_prob is not None:
        klayouts = dataclasses.replace(klayouts, bidirectional_prob=args.distill_bidirectional_prob)
    if args.distill_overlap_share is not None:
        klayouts = dataclasses.replace(klayouts, overlap_share=args.distill_overlap_share)
    if args.switch_share is not None:
        klayouts = dataclasses.replace(klayouts, switch_share=args.switch_share)
    if args.two_object_share is not None:
        klayouts = dataclasses.replace(klayouts, two_object_share=args.two_object_share)
    kcfg = DistillConfig(
        seed=args.seed,
        layouts=klayouts,
        **_given(
            steps=args.distill_steps,
            guidance=args.distill_guidance,
            lag_probs=args.distill_lag_probs,
            context_noise=args.distill_context_noise,
            init_from=args.distill_init,
            rollout_clips=args.distill_rollouts,
            rollout_focus=args.distill_rollout_focus,
        ),
    )
    stages = ["vae", "data", "dit", "distill", "export"] if args.stage == "all" else [args.stage]
    data_path = run / "latents.pt"
    # Resumable stages: (checkpoint, steps, run). With `all`, a finished stage is skipped; a stage
    # that stopped at its time budget ends the call (run it again to resume).
    distilled = run / "dit_distilled_ema.safetensors"
    resumable = {
        "vae": ("vae_ckpt.pt", vcfg.steps, lambda: train_vae(run, vcfg, args.minutes)),
        "decoder": ("vae_dec_ckpt.pt", ftcfg.steps, lambda: finetune_decoder(run, ftcfg, args.minutes)),
        "dit": ("dit_ckpt.pt", tcfg.steps, lambda: train_dit(data_path, run, tcfg, args.minutes)),
        "distill": ("distill_ckpt.pt", kcfg.steps, lambda: distill(data_path, run, kcfg, args.minutes)),
    }

    def reached(stage: str) -> int:
        return _step_of(run / resumable[stage][0], distilled if stage == "distill" else None)

    for stage in stages:
        if stage in resumable:
            _, steps, run_stage = resumable[stage]
            done = reached(stage) >= steps and (stage != "vae" or (run / "vae.safetensors").exists())
            if args.stage == "all" and done:
                log.info("%s: done", stage)
                continue
            run_stage()
            if reached(stage) < steps:
                return 0
        elif stage == "data":
            finished = reached("dit") >= tcfg.steps and reached("distill") >= kcfg.steps
            if args.stage == "all" and (data_path.exists() or finished):
                log.info("data: done (or not needed: the DiT has finished)")
                if data_path.exists() and not finished:
                    # The DiT still trains on it: its captions must be in the run's text mode.
                    reencode_text(
                        data_path, embedded_text_encoder(dcfg.text_mode), dcfg.text_mode, only_if_changed=True
                    )
                continue
            from ..weights.vae_keys import load_wan_vae

            vae = load_wan_vae(run / "vae.safetensors", dtype=torch.float32)
            build_latent_data(vae, embedded_text_encoder(dcfg.text_mode), data_path, dcfg)
        elif stage == "text":
            reencode_text(data_path, embedded_text_encoder(dcfg.text_mode), dcfg.text_mode)
        else:
            from .export import export_embedded

            kw = {"dest": Path(args.dest)} if args.dest else {}
            if args.merge_with:
                kw["merge_with"] = Path(args.merge_with)
            if args.merge_share is not None:
                kw["merge_share"] = args.merge_share
            export_embedded(run, **kw)
    return 0
