"""``voicescreen monitor``: screen a local input device live, from the terminal
(``voicescreen.monitor`` does the screening; this module turns flags into a source, workers and
a sink).

Exit status: 0 the stream ended (``--duration``, end of ``--input``, Ctrl-C); 1 the audio was
malformed; 2 a usage, device, file or bundle error, or the device stopped mid-stream (after its
summary); 3 ``--exit-on-spoof`` saw a spoof verdict; 130 Ctrl-C before the monitor was listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from typing import Any

from voicescreen.audio import CHANNELS, AudioError
from voicescreen.cli import (
    add_hop_argument,
    add_runtime_arguments,
    add_verdict_arguments,
    configure_logging,
    fail,
    plan_bundles,
    runtime_options,
    verdict_options,
)
from voicescreen.monitor import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    Alerts,
    FileSource,
    JsonLines,
    LiveView,
    PlainLines,
    Sink,
    Source,
    monitor,
    open_mic,
)
from voicescreen.stream import BatchOptions, VadOptions, WindowOptions
from voicescreen.stream.mic import DeviceError
from voicescreen.stream.worker import Scorer


def list_devices(jsonl: bool) -> int:
    from voicescreen.stream import mic

    devices = mic.all_inputs()
    if jsonl:
        for d in devices:
            print(json.dumps(asdict(d)), flush=True)
        return EXIT_OK
    if not devices:
        print("no audio input devices: PortAudio lists none", file=sys.stderr)
        return EXIT_OK
    print("Input devices (--device INDEX or NAME; * the default):")
    for d in devices:
        if d.pulse_source is None:
            mark = "*" if d.default else " "
            print(
                f" {mark}{d.index:3d}  {d.name:<32} {d.hostapi:<8} {d.channels:3d} ch  "
                f"{d.default_rate} Hz"
            )
    pulse = [d for d in devices if d.pulse_source is not None]
    if pulse:
        print(f"PulseAudio sources (--device NAME; recorded through {mic.PULSE_DEVICE!r}):")
        for d in pulse:
            print(f"       {d.name}")
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    if args.hop <= 0:
        return fail("--hop must be positive", "monitor")
    if args.duration is not None and args.duration <= 0:
        return fail("--duration must be positive", "monitor")
    if not 0 <= args.min_voiced <= 1:
        return fail("--min-voiced must be between 0 and 1", "monitor")
    if not args.min_speech >= 0:
        return fail("--min-speech must be >= 0 seconds", "monitor")
    try:
        if args.list_devices:
            return list_devices(args.jsonl)
        if args.input is not None:
            if args.device is not None or args.rate is not None:
                return fail("--input replaces the device: leave out --device and --rate", "monitor")
            source: Source = FileSource(args.input, realtime=not args.fast)
        else:
            if args.fast:
                return fail("--fast applies to --input only", "monitor")
            source = open_mic(args.device, args.rate)  # a busy device fails before the model loads
    except (DeviceError, AudioError) as e:
        return fail(str(e), "monitor")
    try:
        workers = _load_workers(args)
        if isinstance(workers, str):
            return fail(workers, "monitor")
        return asyncio.run(_run(args, source, workers))
    except KeyboardInterrupt:  # before the monitor listens (loading the model): nothing to sum up
        return EXIT_INTERRUPTED


def _load_workers(args: argparse.Namespace) -> dict[str, Scorer] | str:
    """A worker per ``--bundle``, or what is wrong with them."""
    from voicescreen.runtimes import describe_text
    from voicescreen.stream.loading import load_bundles, load_scorers

    try:
        bundles = list(load_bundles(args.bundle or [None]).values())
        bundles = plan_bundles(bundles, args, streams=True, command="monitor")
        workers = load_scorers(bundles, "onnx", BatchOptions(), **runtime_options(args))
    except ValueError as e:  # LoadError and FastPathError are ValueErrors
        return str(e)
    for name, worker in workers.items():  # what it runs on and why (the view does not say)
        print(
            f"voicescreen monitor: {name} on {describe_text(worker.runtime)}",
            file=sys.stderr,
            flush=True,
        )
    return workers


async def _run(args: argparse.Namespace, source: Source, workers: dict[str, Scorer]) -> int:
    if args.jsonl:
        sink: Sink = JsonLines()
    elif sys.stdout.isatty():
        sink = LiveView()
    else:
        sink = PlainLines()
    try:
        outcome = await monitor(
            source,
            workers,
            sink,
            window=WindowOptions(hop_seconds=args.hop),
            vad=VadOptions(min_voiced=args.min_voiced),
            smoothing=verdict_options(args),
            duration=args.duration,
            alerts=Alerts(args.alert_cmd) if args.alert_cmd else None,
            exit_on_spoof=args.exit_on_spoof,
            channel=args.channel,
        )
    except DeviceError as e:
        return fail(str(e), "monitor")
    finally:
        for w in workers.values():
            await w.close()
    if outcome.spoofed:
        print("voicescreen monitor: spoof verdict; stopped (--exit-on-spoof)", file=sys.stderr)
    if outcome.lost:
        fail(
            f"{source.label} stopped delivering audio (unplugged, or its sound server is gone)",
            "monitor",
        )
    return outcome.exit_code


def add_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``monitor`` on the ``voicescreen`` command's subparsers."""
    s = subparsers.add_parser(
        "monitor",
        help="screen a local input device live (terminal view, or --jsonl)",
        description="Screen a microphone, line-in or a sink's monitor live for audio deepfakes.",
    )
    src = s.add_argument_group("input")
    src.add_argument(
        "--device",
        metavar="NAME|INDEX",
        help="input device: PortAudio index or name, a PulseAudio source name "
        "(e.g. a sink's .monitor), or a unique part of one "
        "(default: the system's default input)",
    )
    src.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    src.add_argument(
        "--rate",
        type=int,
        metavar="HZ",
        help="record at this rate (default: the device's native rate)",
    )
    src.add_argument(
        "--input",
        metavar="FILE",
        help="screen an audio file as if it were a device, at real-time pace",
    )
    src.add_argument(
        "--fast",
        action="store_true",
        help="with --input: read the file as fast as the model scores it",
    )
    src.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds of audio (default: until Ctrl-C)",
    )
    m = s.add_argument_group("screening")
    m.add_argument(
        "--bundle",
        action="append",
        metavar="PATH|NAME",
        help="bundle to screen with; repeat for several models side by side "
        "(default: the shipped one)",
    )
    add_hop_argument(m)
    m.add_argument(
        "--channel",
        choices=CHANNELS,
        help="the input's kind of audio, whose calibration of each bundle the scores get "
        "(default: from the device's rate; say narrowband for a phone line on a sound card)",
    )
    m.add_argument(
        "--min-voiced",
        type=float,
        default=0.3,
        metavar="F",
        help="voiced fraction a window needs to be scored (default 0.3)",
    )
    add_verdict_arguments(m)
    add_runtime_arguments(m, streams=True)
    o = s.add_argument_group("output")
    o.add_argument(
        "--jsonl",
        action="store_true",
        help="print every event as one JSON line (docs/events.md) instead of the view",
    )
    o.add_argument(
        "--alert-cmd",
        metavar="CMD",
        help="shell command run when a verdict turns spoof; the verdict event is "
        "on its stdin as JSON",
    )
    o.add_argument(
        "--exit-on-spoof",
        action="store_true",
        help="stop at the first spoof verdict, exit status 3",
    )
    s.set_defaults(func=cmd_monitor)
    return s


def main(argv: list[str] | None = None) -> int:
    """``python -m voicescreen.monitor ARGS``: the ``monitor`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="voicescreen")
    s = add_parsers(parser.add_subparsers(dest="command", required=True))
    s.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    args = parser.parse_args(["monitor", *(sys.argv[1:] if argv is None else argv)])
    configure_logging(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
