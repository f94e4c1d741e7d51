"""``voicescreen train``, ``eval``, ``fuse``, ``explain`` and ``data build``: the commands over
``voicescreen.train``.

    voicescreen train aasist-l --data-root ../shared/data --out runs/aasist-l \\
        --init ../shared/reference/aasist/AASIST-L.pth --export runs/aasist-l/bundle
    voicescreen eval --bundle runs/aasist-l/bundle --data-root ../shared/data --split eval \\
        --out runs/aasist-l/eval
    voicescreen fuse default runs/w/bundle --data-root runs/corpus-v2 --out runs/fused
    voicescreen explain clip.flac --bundle runs/aasist-l/bundle --out runs/aasist-l/explain
    voicescreen data build runs/corpus-v2 --size small --seed 0
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Any

from voicescreen.cli import configure_logging, fail

log = logging.getLogger("voicescreen")


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_progress", False) else None  # None: when stderr is a TTY


# --- voicescreen train -------------------------------------------------------------------------


def recipe_from_args(args: argparse.Namespace):
    """The recipe named on the command line, with the TOML file and the flags applied."""
    from voicescreen.train.recipes import load_recipe, parse_sets

    overrides: dict[str, Any] = parse_sets(args.set)
    flags = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "subset": args.subset,
        "init": args.init,
        "num_workers": args.workers,
        "threads": args.threads,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.per_attack:
        overrides["per_attack"] = True
    if args.extra_train:
        overrides["extra_train"] = list(args.extra_train)
    if args.class_weights is not None:
        overrides["class_weights"] = args.class_weights
    if args.no_amp:
        overrides["amp"] = False
    if args.cpu_bf16:
        overrides["cpu_bf16"] = True
    if args.augment is not None:
        overrides["augment"] = {"preset": args.augment}
    if args.calibrate_on is not None:
        overrides["calibration"] = [c.strip() for c in args.calibrate_on.split(",") if c.strip()]
    return load_recipe(args.recipe, args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from voicescreen.train.data import ProtocolError
    from voicescreen.train.trainer import TrainError, train

    try:
        recipe = recipe_from_args(args)
    except (ValueError, KeyError, OSError) as e:
        return fail(f"recipe: {e.args[0] if e.args else e}")
    if args.show_recipe:
        import json

        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    try:
        result = train(
            recipe,
            args.data_root,
            args.out,
            resume=args.resume,
            export=args.export,
            bundle_name=args.name,
            stop_after=args.stop_after,
            device=args.device,
            progress=_progress(args),
        )
    except (TrainError, ProtocolError, ValueError, RuntimeError) as e:
        return fail(str(e))
    last = result.history[-1] if result.history else {}
    figures = ", ".join(
        f"{k} {last[k]:.4f}"
        for k in ("train_loss", "train_acc", "dev_loss", "dev_acc", "dev_eer")
        if k in last
    )
    print(
        f"{recipe.name}: {result.epochs_done}/{recipe.epochs} epochs in {result.out_dir}"
        + (f" ({figures})" if figures else "")
    )
    if result.bundle is not None:
        dev = result.metrics["dev"]
        print(
            f"wrote bundle {result.bundle}: threshold {dev['threshold']:+.4f} "
            f"(EER threshold on dev, {'+'.join(dev['channels'])}), dev EER {100 * dev['eer']:.2f} %"
        )
    return 0


# --- voicescreen eval --------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from voicescreen.models.bundle import BundleError
    from voicescreen.models.store import resolve_bundle
    from voicescreen.train.data import ProtocolError
    from voicescreen.train.evaluate import evaluate
    from voicescreen.train.grouped import BootstrapOptions

    split = args.split
    if args.folds and split is not None:
        return fail("--folds scores the folds' held-out parts of train and dev; drop --split")
    if not args.folds and split is None:
        split = "eval"
    try:
        channels = _channels(args.channels) if args.channels else None
        by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else []
        folds = None
        if args.folds:
            from voicescreen.train.folds import parse_folds

            folds = parse_folds(args.data_root, args.folds)
        bundle = resolve_bundle(args.bundle)
        result = evaluate(
            bundle,
            args.data_root,
            split,
            args.out,
            channels=channels,
            by=by,
            folds=folds,
            bootstrap=BootstrapOptions(args.bootstrap, seed=args.seed),
            backend=args.backend,
            channel=args.channel,
            asv_scores=args.asv_scores,
            subset=args.subset,
            per_attack=args.per_attack,
            seed=args.seed,
            threads=args.threads,
            progress=_progress(args),
            command=shlex.join(["voicescreen", *sys.argv[1:]]) if args.record_command else None,
            screen=resolve_bundle(args.screen) if args.screen else None,
            bands=_bands(args.bands),
        )
    except (BundleError, ProtocolError, FileNotFoundError, ValueError, RuntimeError) as e:
        return fail(str(e))
    f = result.figures
    tdcf = "n/a" if f.min_tdcf is None else f"{f.min_tdcf:.4f}"
    at = (  # the card's calibrations that judged the clips, or its one threshold
        ", ".join(f"{k} {c['threshold']:+.4f} ({c['clips']})" for k, c in f.calibrations.items())
        if f.calibrations
        else f"{f.threshold:+.4f}"
    )
    print(
        f"{split or 'folds'}: EER {100 * f.eer:.2f} %, min t-DCF {tdcf}, at the card's threshold "
        f"{at}: bona fide accepted {100 * f.bonafide_accepted:.1f} %, spoofs "
        f"rejected {100 * f.spoof_rejected:.1f} %  -> {result.files['report']}"
    )
    if result.cascade:
        for b in result.cascade["bands"]:
            print(
                f"cascade {result.cascade['screen']['name']} > {args.bundle or 'default'}, band "
                f"{b['band']:g}: expert on {100 * b['escalated']:.1f} % of windows, EER "
                f"{100 * b['eer']:.2f} %, bona fide accepted {100 * b['bonafide_accepted']:.1f} "
                f"%, spoofs rejected {100 * b['spoof_rejected']:.1f} %"
            )
    return 0


def _bands(spec: str) -> list[float]:
    try:
        bands = [float(b) for b in spec.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--bands takes numbers, e.g. 0.5,1,2; got {spec!r}") from None
    if not bands or any(not (b >= 0) for b in bands):
        raise ValueError(f"--bands takes numbers >= 0, e.g. 0.5,1,2; got {spec!r}")
    return bands


def _channels(spec: str) -> list[str]:
    """``--channels``: channel names (``opus@8k`` for a bit rate), and ``validation``: the
    validation set less the codecs this machine's FFmpeg lacks, each left out with a warning
    (the report lists the codecs that ran). A codec named alone must be there: the evaluation
    refuses it otherwise, never substituting another."""
    from voicescreen.train.augment import VALIDATION_CHANNELS, channel_available, parse_channel

    out: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if item == "validation":
            for c in VALIDATION_CHANNELS:
                if channel_available(c):
                    out.append(c)
                else:
                    log.warning("channel %s left out: this machine's FFmpeg lacks its codec", c)
        elif item:
            parse_channel(item)  # a bad name fails here, with the known ones
            out.append(item)
    return list(dict.fromkeys(out))


# --- voicescreen fuse --------------------------------------------------------------------------


def cmd_fuse(args: argparse.Namespace) -> int:
    from voicescreen.models.bundle import BundleError
    from voicescreen.models.store import portable_path, resolve_bundle
    from voicescreen.train.data import ProtocolError, balanced_subset, load_split
    from voicescreen.train.fusion import fuse_bundles

    try:
        channels = _channels(args.channels)
        paths = [resolve_bundle(b) for b in args.bundles]
        utts = load_split(args.data_root, args.split)
        for root in args.extra or []:
            utts += load_split(root, args.split)
        if args.subset:
            picked = balanced_subset(utts, args.subset, args.seed, args.per_attack)
            utts = sorted(picked, key=lambda u: u.file)
        data = {
            "corpora": [portable_path(args.data_root), *map(portable_path, args.extra or [])],
            "split": args.split,
            "subset": args.subset,
            "per_attack": args.per_attack,
        }
        bundle, fit = fuse_bundles(
            paths,
            utts,
            channels,
            args.out,
            name=args.name,
            data=data,
            threads=args.threads,
            progress=_progress(args),
            seed=args.seed,
            command=shlex.join(["voicescreen", *sys.argv[1:]]),
        )
    except (BundleError, ProtocolError, FileNotFoundError, ValueError) as e:
        return fail(str(e), "fuse")
    members = bundle.card["provenance"]["members"]
    print(f"wrote {args.out}: {len(utts)} clips x {len(channels)} channels ({', '.join(channels)})")
    terms = " ".join(f"{w:+.4f}*{m['name']}" for w, m in zip(fit.weights, members, strict=True))
    print(f"  fused = {fit.bias:+.4f} {terms}")
    kinds = sorted({k for f in fit.figures.values() for k in f if k != "pooled"})
    width = max(len(k) for k in fit.figures)
    print(f"  {'EER %':<{width}}  pooled  " + "  ".join(f"{k:>10}" for k in kinds))
    for who, f in fit.figures.items():
        cells = "  ".join(f"{100 * f[k]:>10.2f}" if k in f else f"{'-':>10}" for k in kinds)
        print(f"  {who:<{width}}  {100 * f['pooled']:>6.2f}  {cells}")
    return 0


# --- voicescreen explain -----------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from voicescreen.audio import AudioError
    from voicescreen.models.bundle import BundleError
    from voicescreen.models.store import resolve_bundle
    from voicescreen.train.explain import ExplainError, explain

    try:
        result = explain(args.file, resolve_bundle(args.bundle), args.out)
    except (BundleError, ExplainError, AudioError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    print(
        f"{args.file}: {result.verdict} (score {result.score:+.4f}); "
        f"{len(result.files)} files in {args.out}"
    )
    return 0


# --- voicescreen data build -------------------------------------------------------------------


def cmd_data_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voicescreen.train.corpus import BuildOptions, RenderError, build
    from voicescreen.train.synth import MissingTool

    opts = BuildOptions(
        size=args.size,
        seed=args.seed,
        cache=Path(args.cache).expanduser(),
        jobs=args.jobs,
        progress=_progress(args),
    )
    try:
        result = build(args.out, opts)
    except (MissingTool, RenderError, ValueError, OSError) as e:
        return fail(f"data build: {e}")
    recipes = result.plan.recipes
    eers = ", ".join(f"{k} {100 * v:.1f} %" for k, v in result.eers.items())
    print(
        f"{len(recipes)} clips ({sum(r.label == 'bonafide' for r in recipes)} bona fide) in "
        f"{result.out}, {result.rendered} rendered, {result.wall_s:.0f} s; single-feature EERs: "
        f"{eers}"
    )
    return 0


def cmd_data_splice(args: argparse.Namespace) -> int:
    from voicescreen.train.data import ProtocolError
    from voicescreen.train.splice import SpliceOptions, build_splice_corpus

    try:
        options = SpliceOptions(candidates=args.candidates, seed=args.seed)
        result = build_splice_corpus(
            args.sources,
            args.out,
            options,
            split=args.split,
            limit=args.limit,
            progress=_progress(args),
        )
    except (ProtocolError, ValueError, OSError) as e:
        return fail(f"data splice: {e}")
    print(
        f"{result.clips} splice spoofs ({result.units} units, {result.seconds / 60:.1f} min) in "
        f"{result.out}; {result.skipped} clips with too little speech left out"
    )
    return 0


# --- parsers -----------------------------------------------------------------------------------


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``eval``, ``explain`` and ``data`` on the ``voicescreen`` parser."""
    from voicescreen.train.augment import CHANNELS, PRESETS
    from voicescreen.train.evaluate import CASCADE_BANDS
    from voicescreen.train.recipes import RECIPES

    s = subparsers.add_parser(
        "train",
        help="train a recipe on an ASVspoof-layout corpus, optionally export a bundle",
        description="Train a recipe (the study's settings by default) on the train split, with "
        "per-epoch dev figures and checkpoints; --export calibrates on dev and writes a bundle.",
    )
    s.add_argument(
        "recipe",
        nargs="?",
        choices=list(RECIPES),
        metavar="RECIPE",
        help=f"one of {', '.join(RECIPES)} (or recipe = ... in --config)",
    )
    s.add_argument("--data-root", required=True, help="corpus root (ASVspoof 2019 LA or flat)")
    s.add_argument("--out", required=True, help="run folder: checkpoints, history, recipe")
    s.add_argument("--config", help="TOML file with recipe fields, [model] and [augment]")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any recipe field, TOML values, dotted keys "
        "(e.g. model.gat_dims=[8,8], augment.noise.p=0.5); repeatable",
    )
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--subset", type=int, help="seeded class-balanced subset of the train split")
    s.add_argument("--per-attack", action="store_true", help="balance the subset's attacks")
    s.add_argument(
        "--extra-train",
        action="append",
        metavar="DIR",
        help="another corpus (same layout) whose whole train split is added; repeatable",
    )
    s.add_argument(
        "--class-weights",
        type=float,
        nargs=2,
        metavar=("SPOOF", "BONAFIDE"),
        help="weighted cross-entropy, e.g. 0.1 0.9 as AASIST",
    )
    s.add_argument("--init", help="official checkpoint (.pth) or bundle to start from")
    s.add_argument("--augment", choices=list(PRESETS), help="augmentation preset")
    s.add_argument(
        "--calibrate-on",
        metavar="CH[,CH]",
        help=f"dev channels for the exported threshold, pooled ({', '.join(CHANNELS)})",
    )
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    s.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="bfloat16 autocast on CPU (AVX-512 BF16/AMX: ~2x faster); float32 otherwise",
    )
    s.add_argument("--workers", type=int, help="DataLoader worker processes")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    s.add_argument("--stop-after", type=int, metavar="N", help="stop after epoch N (resume later)")
    s.add_argument("--export", metavar="BUNDLE", help="write a calibrated bundle (dir or .zip)")
    s.add_argument("--name", help="bundle name (default: the export path's name)")
    s.add_argument("--show-recipe", action="store_true", help="print the resolved recipe, exit")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)

    s = subparsers.add_parser(
        "eval",
        help="score a split with a bundle; Markdown report, plots, ASVspoof score file",
        description="EER, min t-DCF, per-attack EER and acceptance rates at the bundle's "
        "threshold, scoring each clip's first window.",
    )
    s.add_argument("--bundle", help="bundle path or installed name (default: the shipped one)")
    s.add_argument("--data-root", required=True)
    s.add_argument(
        "--split", choices=["dev", "eval", "train"], help="split to score (default: eval)"
    )
    s.add_argument("--out", required=True, help="report folder")
    s.add_argument(
        "--channel",
        choices=list(CHANNELS),
        default="clean",
        help="pass each clip through this codec before scoring",
    )
    s.add_argument(
        "--channels",
        metavar="CH[,CH]",
        help="score every clip through each of these channels (e.g. clean,mulaw,opus@8k; "
        "'validation' for clean, G.722, mu-law, A-law, GSM, AMR-NB and Opus 8/16/24 kb/s)",
    )
    s.add_argument(
        "--by",
        metavar="KIND[,KIND]",
        help="report per group with bootstrap intervals: fold, channel, attack, and from "
        "sources.tsv family, system, language, package, speaker, recording",
    )
    s.add_argument(
        "--folds",
        metavar="KIND|FOLD[,...]",
        help="score the held-out parts of these folds of train+dev instead of a split: kinds "
        "(family, system, package, language, speaker) or single folds (family=hmm)",
    )
    s.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the grouped intervals (0: none)",
    )
    s.add_argument(
        "--asv-scores",
        help="ASVspoof 2019 ASV score file for the t-DCF (default: looked for beside the data)",
    )
    s.add_argument(
        "--screen",
        metavar="BUNDLE",
        help="also score the windows with this cheaper bundle and report what `serve --screen` "
        "would decide at each --bands (the expert running only where the screen is close); "
        "scores.csv gains its scores (screen_score, screen_calibrated)",
    )
    s.add_argument(
        "--bands",
        metavar="B[,B]",
        default=",".join(f"{b:g}" for b in CASCADE_BANDS),
        help="with --screen: the cascade bands to report, calibrated units (default: %(default)s)",
    )
    s.add_argument("--subset", type=int, help="score a seeded class-balanced subset only")
    s.add_argument(
        "--per-attack",
        action="store_true",
        help="spread the subset's spoofs evenly over the attacks (systems), so that a small "
        "system is not left out",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    s.add_argument("--threads", type=int)
    s.add_argument(
        "--record-command", action="store_true", help="write this command line into the report"
    )
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = subparsers.add_parser(
        "fuse",
        help="fuse two or more bundles' scores into one bundle (logistic regression)",
        description="Score labelled clips with every bundle, fit a logistic regression of the "
        "labels on their scores, calibrate the fused score (pooled and per kind of audio) and "
        "write one bundle that runs every member and the regression. Fit it on validation "
        "data none of the members trained on.",
    )
    s.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle paths or installed names")
    s.add_argument("--data-root", required=True)
    s.add_argument("--extra", action="append", metavar="ROOT", help="another corpus (repeatable)")
    s.add_argument("--split", choices=["dev", "eval", "train"], default="dev", help="default: dev")
    s.add_argument(
        "--channels",
        default="clean,mulaw",
        metavar="CH[,CH]",
        help="score every clip through each of these channels (default: clean,mulaw)",
    )
    s.add_argument("--subset", type=int, help="fit on a seeded class-balanced subset only")
    s.add_argument(
        "--per-attack", action="store_true", help="spread the subset's spoofs over the attacks"
    )
    s.add_argument("--name", default="fusion", help="the fused bundle's name (default: fusion)")
    s.add_argument("--out", required=True, help="bundle folder (or .zip) to write")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_fuse)

    s = subparsers.add_parser("explain", help="heatmaps of AASIST's graph attention for one clip")
    s.add_argument("file", help="audio file (its first window is scored)")
    s.add_argument("--bundle", help="an AASIST or AASIST-L bundle (default: the shipped one)")
    s.add_argument("--out", required=True, help="folder for the PNGs and arrays")
    s.set_defaults(func=cmd_explain)

    from voicescreen.train.corpus import DEFAULT_CACHE, SIZES

    data = subparsers.add_parser("data", help="build corpora")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = actions.add_parser(
        "build",
        help="build corpus v2 (bona fide from Debian packages, spoofs from TTS and vocoders)",
        description="Plan, render (cached, resumable) and write an ASVspoof-layout corpus with "
        "sources.tsv and a README; deterministic from the seed.",
    )
    s.add_argument("out", help="output folder (created, or replaced if it holds a corpus)")
    s.add_argument("--size", choices=list(SIZES), default="small")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cache", default=str(DEFAULT_CACHE), help="packages and rendered clips")
    s.add_argument("--jobs", type=int, default=0, help="render processes (0: one per CPU)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_build)
    s = actions.add_parser(
        "splice",
        help="unit-selection-like spoofs cut from corpora's own bona fide clips",
        description="One spoof per bona fide clip: its own speech re-cut into 50-250 ms units "
        "joined where a spectral join cost is lowest (voicescreen.train.splice); written as a "
        "train split for --extra-train.",
    )
    s.add_argument("out", help="output folder (its flac/ and protocols/ are replaced)")
    s.add_argument("sources", nargs="+", help="corpus roots whose bona fide clips are cut")
    s.add_argument("--split", default="train", help="the sources' split to cut (default train)")
    s.add_argument("--limit", type=int, default=None, help="at most this many clips, drawn evenly")
    s.add_argument("--candidates", type=int, default=16, help="units weighed at each join")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_splice)


def main(argv: list[str] | None = None) -> int:
    """Run one of these subcommands alone (``python -m voicescreen.cli.train ...``)."""
    p = argparse.ArgumentParser(prog="voicescreen")
    p.add_argument("-v", "--verbose", action="count", default=0)
    add_parsers(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = p.parse_args(argv)
    configure_logging(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "add_parsers",
    "cmd_data_build",
    "cmd_eval",
    "cmd_explain",
    "cmd_fuse",
    "cmd_train",
    "main",
    "recipe_from_args",
]
