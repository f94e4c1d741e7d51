"""The ``voicescreen`` command line: one entry point, one subcommand per job.

Commands sit above the libraries and no library imports them. Each family of commands is one
module whose ``add_parsers(subparsers)`` registers it: ``score`` (score, optimize, calibrate,
import-weights, models), ``serve`` (serve, tap), ``deploy`` (worker, export), ``monitor`` and
``train`` (train, eval, explain, data build). This module holds what they share: the flags that
choose how models run and how verdicts are judged, ``--hop``, ``fail`` and ``main``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from voicescreen.audio import HOP_SECONDS

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

log = logging.getLogger("voicescreen")

EXIT_USAGE = 2  # a usage, file, bundle or device error: what ``fail`` returns
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def fail(message: str, command: str | None = None) -> int:
    """Say what went wrong on stderr (``voicescreen: ...``, or ``voicescreen COMMAND: ...``) and
    return the exit status of a usage, file or bundle error."""
    prefix = "voicescreen" if command is None else f"voicescreen {command}"
    print(f"{prefix}: {message}", file=sys.stderr)
    return EXIT_USAGE


def add_hop_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--hop``: seconds between window starts (score, serve, monitor)."""
    parser.add_argument(
        "--hop",
        type=float,
        default=HOP_SECONDS,
        help="window hop, seconds (default: %(default)g)",
    )


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
    from voicescreen.runtimes import AUTO, FAST_PATH_CHOICES

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
    from voicescreen.runtimes import plan_runtime

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
        bf16 = any(p.fast_path == "bf16" for p in (plan, *plan.members))
        if bf16:  # the one start-up path that takes long: say so now
            print(
                f"voicescreen {command}: {bundle.name}: compiling the bf16 encoder first (20-60 "
                "s, seconds once cached; --fast-path exact starts at once); chosen: "
                f"{plan.why}",
                file=sys.stderr,
                flush=True,
            )
        planned.append(bundle.with_plan(plan))
    return planned


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import voicescreen
    from voicescreen.cli import deploy, monitor, score, serve, train

    p = argparse.ArgumentParser(
        prog="voicescreen", description="Screen speech for audio deepfakes (bona fide vs spoof)."
    )
    p.add_argument("--version", action="version", version=f"voicescreen {voicescreen.__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in (score, serve, deploy, monitor, train):
        family.add_parsers(sub)
    return p


def configure_logging(verbose: int) -> None:
    """Log warnings, or with ``-v`` info, with ``-vv`` debug, to stderr."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader left early (`voicescreen models --json | head`)
        # Whatever is still buffered would fail again at exit: send it nowhere, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C: the command has stopped what it was doing
        return EXIT_INTERRUPTED
