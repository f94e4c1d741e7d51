"""``voicescreen score``, ``optimize``, ``calibrate``, ``import-weights`` and ``models``: a bundle
and audio files, offline."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicescreen.audio import CHANNELS
from voicescreen.cli import (
    add_hop_argument,
    add_runtime_arguments,
    add_verdict_arguments,
    fail,
    plan_bundles,
    runtime_options,
    verdict_options,
)

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

# The published AASIST checkpoints (clovaai/aasist, models/weights/, MIT licence).
OFFICIAL_WEIGHTS = {
    "aasist": {
        "sha256": "51d2d9cf0738172f61e2a384ec50a54a55363240f67c971ed55a92435bc1a1c0",
        "published": {"data": "ASVspoof 2019 LA eval", "eer_percent": 0.83, "min_tdcf": 0.0275},
    },
    "aasist-l": {
        "sha256": "814331d088032bb4c3fa61cc014789eadeed464209dd094ab3a2dd6ffbdce27a",
        "published": {"data": "ASVspoof 2019 LA eval", "eer_percent": 0.99, "min_tdcf": 0.0309},
    },
}
AASIST_ATTRIBUTION = (
    "AASIST weights (c) 2021-present NAVER Corp., MIT licence, from clovaai/aasist "
    "(Jung et al., 'AASIST: Audio Anti-Spoofing using Integrated Spectro-Temporal Graph "
    "Attention Networks', ICASSP 2022)"
)


# --- voicescreen score -------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    from voicescreen.audio import AudioError
    from voicescreen.models.bundle import BundleError, load_bundle
    from voicescreen.models.store import resolve_bundle
    from voicescreen.scoring import Scorer

    try:
        bundle = load_bundle(resolve_bundle(args.bundle))
        (bundle,) = plan_bundles([bundle], args, streams=False, command="score")
        smoothing = verdict_options(args)
        scorer = Scorer(bundle, bundle.plan.backend, smoothing=smoothing, **runtime_options(args))
    except (BundleError, FileNotFoundError, ValueError) as e:  # FastPathError is a ValueError
        return fail(str(e))
    if args.hop <= 0:
        return fail("--hop must be positive")

    width = max(len(p) for p in args.files)  # one column of verdicts, whatever the paths
    failed = 0
    for path in args.files:
        try:
            result = scorer.score_file(path, hop=args.hop, channel=args.channel)
        except (AudioError, OSError) as e:
            failed += 1
            if args.json:
                print(json.dumps({"file": path, "error": str(e)}), flush=True)
            else:
                reason = str(e).removeprefix(f"{path}: ")  # the path once, in front
                print(f"{path}: error: {reason}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps(result.to_dict(windows=args.windows)), flush=True)
            continue
        print(
            f"{path:<{width}}  {result.verdict:<9}  score {result.score:+.4f}  "
            f"calibrated {result.calibrated:+.3f}  ({result.duration:.2f} s, "
            f"{result.speech:.2f} s speech, "
            f"{len(result.windows)} window{'s' * (len(result.windows) != 1)}, "
            f"{result.channel}, {result.calibration} calibration)"
            + (f"  {result.reason}" if result.reason else ""),
            flush=True,
        )
        if args.windows:
            for w in result.windows:
                print(
                    f"    [{w.start:7.2f} s - {w.end:7.2f} s]  {w.verdict:<9}  "
                    f"score {w.score:+.4f}  calibrated {w.calibrated:+.3f}  "
                    f"smoothed {w.smoothed:+.3f}"
                )
    if failed:
        total = len(args.files)
        print(f"voicescreen: {failed} of {total} files could not be read", file=sys.stderr)
    return 1 if failed else 0


# --- voicescreen import-weights ----------------------------------------------------------------


def cmd_import_weights(args: argparse.Namespace) -> int:
    import torch

    from voicescreen.models.bundle import BundleError, export_bundle
    from voicescreen.models.registry import get_architecture
    from voicescreen.models.store import bundle_home

    path = Path(args.checkpoint)
    if not path.is_file():
        return fail(f"{path}: no such checkpoint")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        # weights_only: a checkpoint from elsewhere is never unpickled into arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        return fail(f"{path}: not a loadable PyTorch state dict ({e})")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    arch = get_architecture(args.architecture)
    model = arch.build()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        return fail(f"{path}: does not fit the {args.architecture} architecture: {e}")

    official = OFFICIAL_WEIGHTS.get(args.architecture, {})
    is_official = official.get("sha256") == digest
    provenance = {
        "source": str(path.name),
        "source_sha256": digest,
        "official_weights": is_official,
    }
    if args.architecture.startswith("aasist"):
        provenance["attribution"] = AASIST_ATTRIBUTION
    metrics = {"published": official["published"]} if is_official else {}
    out = Path(args.out) if args.out else bundle_home() / f"{args.architecture}-official"
    name = args.name or out.name.removesuffix(".zip")
    try:
        bundle = export_bundle(
            model,
            out,
            architecture=args.architecture,
            config=arch.default_config,
            name=name,
            threshold=0.0,  # the reference decision: bona fide logit > 0
            provenance=provenance,
            metrics=metrics,
        )
    except BundleError as e:
        return fail(str(e))
    print(
        f"wrote {out} ({args.architecture}, {bundle.card['parameters']:,} parameters, "
        f"{'official' if is_official else 'unrecognised'} weights sha256 {digest[:12]}…)"
    )
    return 0


# --- voicescreen optimize ----------------------------------------------------------------------


def cmd_optimize(args: argparse.Namespace) -> int:
    from voicescreen.models.bundle import BundleError, load_bundle
    from voicescreen.models.store import bundle_home, resolve_bundle
    from voicescreen.train.data import ProtocolError
    from voicescreen.train.quantize import CALIBRATION_CLIPS, quantize_bundle

    try:
        bundle = load_bundle(resolve_bundle(args.bundle))
        name = args.name or f"{bundle.name}-int8"
        out = Path(args.out) if args.out else bundle_home() / name
        made = quantize_bundle(
            bundle,
            args.data_root,
            out,
            name=name,
            calibration_clips=args.calibration_clips or CALIBRATION_CLIPS,
            dev_clips=args.dev_clips,
            threads=args.threads,
        )
    except (BundleError, ProtocolError, FileNotFoundError, ValueError) as e:
        return fail(str(e))
    check = made.quantized["check"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    print(
        f"wrote {out} ({made.name}: int8 model.onnx, calibrated on "
        f"{len(made.quantized['calibration']['clips'])} train clips). On {check['clips']} dev "
        f"windows: max |Δlogit| {check['max_abs_logit_diff']:.3f} (median "
        f"{check['median_abs_logit_diff']:.3f}), {check['decisions_changed']} decisions changed, "
        f"EER {pct(check['eer_fp32'])} fp32 -> {pct(check['eer_int8'])} int8"
    )
    return 0


# --- voicescreen calibrate ---------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from voicescreen.models.bundle import BundleError, load_bundle
    from voicescreen.models.store import bundle_home, portable_path, resolve_bundle
    from voicescreen.train.augment import CHANNELS as AUGMENT_CHANNELS
    from voicescreen.train.calibrate import recalibrate
    from voicescreen.train.data import ProtocolError, load_split

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    unknown = [c for c in channels if c not in AUGMENT_CHANNELS]
    if unknown or not channels:
        return fail(f"--channels: unknown {unknown}; use some of {list(AUGMENT_CHANNELS)}")
    try:
        source = resolve_bundle(args.bundle)
        name = load_bundle(source).name
        out = Path(args.out) if args.out else bundle_home() / f"{name}-recalibrated"
        if out.resolve() == Path(source).resolve():
            return fail(f"--out {out} is the bundle itself; write the copy elsewhere")
        utts = load_split(args.data_root, args.split)
        for root in args.extra or []:
            utts += load_split(root, args.split)
        data = {
            "corpora": [portable_path(args.data_root), *map(portable_path, args.extra or [])],
            "split": args.split,
        }
        _, fitted = recalibrate(
            source,
            utts,
            channels,
            out,
            data=data,
            threads=args.threads,
            progress=sys.stderr.isatty(),
        )
    except (BundleError, ProtocolError, FileNotFoundError, ValueError) as e:
        return fail(str(e))

    def line(what: str, c) -> str:
        return f"  {what:<11} threshold {c.threshold:+.4f}  scale {c.scale:.3f}"

    print(f"wrote {out}: {len(utts)} clips x {len(channels)} channels ({', '.join(channels)})")
    print(line("pooled", fitted.pooled))
    for kind, c in fitted.channels.items():
        bona, spoof = fitted.counts[kind]
        print(line(kind, c) + f"  ({bona} bona fide, {spoof} spoof scores)")
    return 0


# --- voicescreen models ------------------------------------------------------------------------


def parameter_count(bundle: Bundle) -> int | None:
    """How many values the bundle's model learned: the card's trainable parameters, or, for a
    model that has none (LFCC-GMM: its two mixtures' weights, means and variances and the feature
    centre are buffers fitted by EM, not trained), the values in its weights file. None when the
    card states no count and the model has no weights."""
    stated = bundle.card.get("parameters")
    if stated:
        return int(stated)
    fitted = sum(t.numel() for t in bundle.state_dict().values())
    return fitted or None


def cmd_models(args: argparse.Namespace) -> int:
    from voicescreen.models.bundle import BundleError, load_bundle
    from voicescreen.models.registry import ARCHITECTURES
    from voicescreen.models.store import bundle_home, installed_bundles

    rows = []
    for name, path in installed_bundles().items():
        try:
            b = load_bundle(path)
            card = b.card
            rows.append(
                {
                    "name": name,
                    "path": str(path),
                    "architecture": b.architecture,
                    "parameters": parameter_count(b),
                    "threshold": b.score.threshold,
                    "metrics": card.get("metrics", {}),
                }
            )
        except BundleError as e:
            rows.append({"name": name, "path": str(path), "error": str(e)})
    if args.json:
        archs = {a.name: a.description for a in ARCHITECTURES.values()}
        print(json.dumps({"bundles": rows, "architectures": archs}, indent=2))
        return 0
    arch_width = max(len(a) for a in ARCHITECTURES)  # columns that hold every name
    name_width = max([24, *(len(r["name"]) for r in rows)])
    print(f"Bundles (shipped default, and {bundle_home()}):")
    if not rows:
        print("  none")
    for r in rows:
        if "error" in r:
            print(f"  {r['name']:<{name_width}} BROKEN: {r['error']}")
        else:
            params = "n/a" if r["parameters"] is None else f"{r['parameters']:,}"
            print(
                f"  {r['name']:<{name_width}} {r['architecture']:<{arch_width}} {params:>10} "
                f"params  threshold {r['threshold']:+.3f}  {r['path']}"
            )
    print("\nArchitectures:")
    for a in ARCHITECTURES.values():
        print(f"  {a.name:<{arch_width}} {a.description}")
    return 0


# --- registration ------------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Register ``score``, ``optimize``, ``calibrate``, ``import-weights`` and ``models``."""
    s = subparsers.add_parser(
        "score",
        help="score audio files (per file, optionally per window)",
        description="Score audio files offline: each file is cut into 4 s windows every --hop "
        "seconds, each window scored by the bundle; prints per file the mean score, the "
        "calibrated score (> 0 bona fide) and the verdict (bonafide, spoof, or uncertain: too "
        "little speech, or a score too near the threshold), and with --windows each window's.",
    )
    s.add_argument("files", nargs="+", metavar="FILE", help="wav/flac/ogg, any rate, mono/stereo")
    s.add_argument("--bundle", help="bundle path or installed name (default: the shipped one)")
    s.add_argument("--windows", action="store_true", help="print the per-window timeline")
    add_hop_argument(s)
    s.add_argument("--json", action="store_true", help="one JSON object per file")
    s.add_argument(
        "--channel",
        choices=CHANNELS,
        help="the files' kind of audio, whose calibration of the bundle they get (default: "
        "measured per file: 8 kHz sources and audio with nothing above 4 kHz are narrowband)",
    )
    add_verdict_arguments(s)
    add_runtime_arguments(s)
    s.set_defaults(func=cmd_score)

    s = subparsers.add_parser(
        "optimize",
        help="write an int8 copy of an AASIST bundle (lossy; calibrated on train clips)",
        description="Quantise an AASIST/AASIST-L bundle's model.onnx to int8 (static QDQ), "
        "calibrated on TRAIN-split clips of --data-root, and write it as a new bundle whose "
        "card records the calibration and, on the dev split, the logit differences and the EER "
        "of both models. The other fast paths are start-up options: --fast-path of score, serve "
        "and monitor.",
    )
    s.add_argument("--int8", action="store_true", required=True, help="quantise to int8")
    s.add_argument("--bundle", help="the fp32 bundle (default: the shipped one)")
    s.add_argument("--data-root", required=True, help="corpus with train and dev splits")
    s.add_argument("--out", help="the new bundle (default: NAME in the user bundle directory)")
    s.add_argument("--name", help="its name (default: the source's name + -int8)")
    s.add_argument("--calibration-clips", type=int, help="train clips to calibrate on (default 32)")
    s.add_argument("--dev-clips", type=int, help="dev clips to check on (default: all)")
    s.add_argument("--threads", type=int, default=None, help="intra-op threads")
    s.set_defaults(func=cmd_optimize)

    s = subparsers.add_parser(
        "calibrate",
        help="recalibrate a bundle on labelled clips, pooled and per channel",
        description="Score the first window of every clip of --split (of --data-root and each "
        "--extra corpus) through each of --channels, and write a copy of the bundle whose card "
        "holds the EER threshold and logistic scale fitted on all of them (pooled) and on each "
        "kind of audio alone (wideband, narrowband: the calibration that streams and files of "
        "that kind get). Calibrate on dev data, never on the data you report on.",
    )
    s.add_argument("--bundle", help="the bundle (default: the shipped one)")
    s.add_argument("--data-root", required=True, help="a corpus in the ASVspoof layout")
    s.add_argument("--extra", action="append", metavar="DIR", help="more corpora; repeatable")
    s.add_argument("--split", default="dev", help="the split to calibrate on (default dev)")
    s.add_argument(
        "--channels",
        default="clean,mulaw,mobile",
        help="channels each clip goes through, comma-separated (default clean,mulaw,mobile)",
    )
    s.add_argument("--out", help="the new bundle (default: NAME-recalibrated, user bundles)")
    s.add_argument("--threads", type=int, default=None, help="intra-op threads")
    s.set_defaults(func=cmd_calibrate)

    from voicescreen.models.registry import ARCHITECTURES

    torch_archs = [n for n, a in ARCHITECTURES.items() if a.trainable and n != "lfcc-gmm"]
    s = subparsers.add_parser("import-weights", help="turn a reference checkpoint into a bundle")
    s.add_argument("architecture", choices=torch_archs)
    s.add_argument("checkpoint", help="the .pth state dict (e.g. the official AASIST.pth)")
    s.add_argument("--out", help="bundle directory or .zip (default: the user bundle directory)")
    s.add_argument("--name", help="bundle name (default: the output's name)")
    s.set_defaults(func=cmd_import_weights)

    s = subparsers.add_parser("models", help="list installed bundles and known architectures")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)
