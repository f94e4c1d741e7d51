"""The ``voicescreen`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from voicescreen.audio import CHANNELS, HOP_SECONDS

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

log = logging.getLogger("voicescreen")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

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


def _fail(message: str) -> int:
    print(f"voicescreen: {message}", file=sys.stderr)
    return 2


# --- runtime options (score, serve, monitor) ---------------------------------------------------


def add_runtime_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    backends: tuple[str, ...] = ("onnx", "torch"),
    backend_help: str | None = None,
    streams: bool = False,
) -> None:
    """``--backend``, ``--providers``, ``--threads`` and ``--fast-path`` (and, for commands that
    score streams, ``--reuse``/``--no-reuse``): how a command runs its models in this process.
    Left at ``auto``, ``plan_bundles`` chooses for this machine."""
    from voicescreen.models.runtime import AUTO, FAST_PATH_CHOICES

    parser.add_argument(
        "--backend",
        choices=[AUTO, *backends],
        default=AUTO,
        help=backend_help
        or "onnx (ONNX Runtime) or torch (PyTorch); auto (default): chosen for this machine",
    )
    parser.add_argument(
        "--providers", default="auto", help="ONNX providers: auto or tensorrt,cuda,cpu"
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per model")
    parser.add_argument(
        "--fast-path",
        choices=list(FAST_PATH_CHOICES),
        default=AUTO,
        help="AASIST/AASIST-L on the CPU, built at start-up: exact (ONNX graph rewritten for "
        "this CPU, same scores, ~1 s to build), bf16 (torch, lossy, ~2x where the CPU has "
        "AVX-512 BF16 or AMX, compiling takes 20-60 s and a C++ compiler), none (the bundle's "
        "graph as it is); auto (default): bf16 for streams where the CPU has AVX-512 BF16 or "
        "AMX, else exact. int8 is a bundle of its own: `voicescreen optimize --int8`",
    )
    if streams:
        parser.add_argument(
            "--reuse",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="AASIST/AASIST-L, on ONNX Runtime or the bf16 path: reuse each stream's "
            "encoder frames across overlapping windows (same scores, ~2x fewer encoder samples "
            "per window); window starts move onto the encoder's 2187-sample grid (hop 1 s -> "
            "0.957 s). Default: on wherever the model allows it",
        )


def add_verdict_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--min-speech``: the verdict rule's one knob on the command line (``voicescreen.verdict``;
    score, serve and monitor judge alike)."""
    from voicescreen.verdict import MIN_SPEECH_SECONDS

    parser.add_argument(
        "--min-speech",
        type=float,
        default=MIN_SPEECH_SECONDS,
        metavar="SECONDS",
        help="seconds of speech (VAD voiced) a clip or stream needs before it is called bona "
        "fide or spoof; with less it is uncertain (default: %(default)g)",
    )


def verdict_options(args: argparse.Namespace):
    """The ``SmoothingOptions`` of ``add_verdict_arguments``' flags (ValueError if invalid)."""
    from voicescreen.verdict import SmoothingOptions

    return SmoothingOptions(min_speech=args.min_speech)


def runtime_options(args: argparse.Namespace) -> dict:
    """The options ``Bundle.runtime`` takes, from ``add_runtime_arguments``' flags (a planned
    bundle keeps only those of its backend)."""
    options: dict = {"threads": args.threads}
    if args.backend in ("onnx", "auto"):
        options["providers"] = args.providers
    return options


def plan_bundles(
    bundles: list[Bundle], args: argparse.Namespace, *, streams: bool, command: str
) -> list[Bundle]:
    """Each bundle with its runtime plan (``runtime.plan_runtime``) from the command's flags,
    each plan logged with why it was chosen, and said on stderr before a start-up compile that
    takes a while. Raises ``FastPathError`` for flags that cannot run a bundle."""
    from voicescreen.models.runtime import plan_runtime

    planned = []
    for bundle in bundles:
        plan = plan_runtime(
            bundle,
            backend=args.backend,
            fast_path=args.fast_path,
            reuse=getattr(args, "reuse", None) if streams else False,
            streams=streams,
            providers=args.providers,
        )
        log.info(
            "%s: %s%s%s (%s)",
            bundle.name,
            plan.backend,
            f", fast path {plan.fast_path}" if plan.fast_path else "",
            ", encoder reuse" if plan.reuse else "",
            plan.why,
        )
        if plan.fast_path == "bf16":  # the one start-up path that takes long: say so now
            print(
                f"voicescreen {command}: {bundle.name}: compiling the bf16 encoder first (20-60 "
                "s, seconds once cached; --fast-path exact starts at once); chosen: "
                f"{plan.why}",
                file=sys.stderr,
                flush=True,
            )
        planned.append(bundle.with_plan(plan))
    return planned


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
        return _fail(str(e))
    if args.hop <= 0:
        return _fail("--hop must be positive")

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
        return _fail(f"{path}: no such checkpoint")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        # weights_only: a checkpoint from elsewhere is never unpickled into arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        return _fail(f"{path}: not a loadable PyTorch state dict ({e})")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    arch = get_architecture(args.architecture)
    model = arch.build()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        return _fail(f"{path}: does not fit the {args.architecture} architecture: {e}")

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
        return _fail(str(e))
    print(
        f"wrote {out} ({args.architecture}, {bundle.card['parameters']:,} parameters, "
        f"{'official' if is_official else 'unrecognised'} weights sha256 {digest[:12]}…)"
    )
    return 0


# --- voicescreen optimize ----------------------------------------------------------------------


def cmd_optimize(args: argparse.Namespace) -> int:
    from voicescreen.models.bundle import BundleError, load_bundle
    from voicescreen.models.optimize import CALIBRATION_CLIPS, quantize_bundle
    from voicescreen.models.store import bundle_home, resolve_bundle
    from voicescreen.train.data import ProtocolError

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
        return _fail(str(e))
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
        return _fail(f"--channels: unknown {unknown}; use some of {list(AUGMENT_CHANNELS)}")
    try:
        source = resolve_bundle(args.bundle)
        name = load_bundle(source).name
        out = Path(args.out) if args.out else bundle_home() / f"{name}-recalibrated"
        if out.resolve() == Path(source).resolve():
            return _fail(f"--out {out} is the bundle itself; write the copy elsewhere")
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
        return _fail(str(e))

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


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import voicescreen

    p = argparse.ArgumentParser(
        prog="voicescreen", description="Screen speech for audio deepfakes (bona fide vs spoof)."
    )
    p.add_argument("--version", action="version", version=f"voicescreen {voicescreen.__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
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
    s.add_argument(
        "--hop",
        type=float,
        default=HOP_SECONDS,
        help="window hop, seconds (default: %(default)g)",
    )
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

    s = sub.add_parser(
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

    s = sub.add_parser(
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

    torch_archs = [n for n in ARCHITECTURES if n != "lfcc-gmm"]
    s = sub.add_parser("import-weights", help="turn a reference checkpoint into a bundle")
    s.add_argument("architecture", choices=torch_archs)
    s.add_argument("checkpoint", help="the .pth state dict (e.g. the official AASIST.pth)")
    s.add_argument("--out", help="bundle directory or .zip (default: the user bundle directory)")
    s.add_argument("--name", help="bundle name (default: the output's name)")
    s.set_defaults(func=cmd_import_weights)

    s = sub.add_parser("models", help="list installed bundles and known architectures")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    from voicescreen.monitor import add_parsers as add_monitor_parsers
    from voicescreen.scale import add_parsers as add_scale_parsers
    from voicescreen.train.commands import add_parsers as add_train_parsers
    from voicescreen.web.commands import add_parsers as add_web_parsers

    add_web_parsers(sub)
    add_scale_parsers(sub)
    add_monitor_parsers(sub)
    add_train_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader left early (`voicescreen models --json | head`)
        # Whatever is still buffered would fail again at exit: send it nowhere, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C: the command has stopped what it was doing
        return EXIT_INTERRUPTED
