#!/usr/bin/env python
"""What a cascade costs in detection: a cheap screen scores every window, the expert only those
the screen finds close to its threshold (``stream.worker.Cascade``: ``|screen calibrated| <=
band``). Measured on a split the models were not trained on (dev by default), never eval.

For each screen bundle and band: the share of windows escalated to the expert, the cascade's EER
and its bona fide acceptance / spoof rejection at the calibrated threshold (0), next to the expert
alone and the screen alone on the same windows, and the model arithmetic per window in units of
the first expert path alone (from each model's measured windows/s here). Each clip's evaluation
window (its first 64,600 samples, as ``voicescreen eval`` scores) goes through each channel the
product expects (clean, 8 kHz mu-law, GSM then mu-law); rows are pooled over the channels, each
window judged at its model's calibration for its kind of audio. The rule and its figures are
``train.evaluate.cascade_figures``, which ``voicescreen eval --screen`` reports on any corpus
(with groups and the eval report); this script adds each model's measured cost.

    python scripts/bench_cascade.py --expert models/default --screen runs/lcnn/bundle \\
        [--screen runs/gmm/bundle] [--data-root ../shared/data] [--split dev]
        [--bands 0.5 1 2 4 8] [--expert-paths plain bf16] [--no-write]

``--expert-paths``: the expert on its plain ONNX graph and/or on the bf16 fast path (PyTorch,
``--fast-path bf16``: lossy; with ``--reuse`` its stream scores are these to bf16 rounding), each
alone and behind every screen.

Writes section "cascade" of docs/benchmarks.md and prints it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import command_line, machine, versions, write_section

from voicescreen.models.bundle import load_bundle
from voicescreen.models.store import portable_path, resolve_bundle
from voicescreen.runtimes import open_runtime
from voicescreen.train.data import load_split
from voicescreen.train.evaluate import BATCH, cascade_figures, score_utterances

log = logging.getLogger("bench_cascade")
SHARED = Path(__file__).resolve().parents[2] / "shared"
CHANNELS = ("clean", "mulaw", "mobile")


def calibrated_scores(
    bundle_path: str, utts, channels, fast_path: str = "plain"
) -> tuple[str, np.ndarray, float]:
    """(name, calibrated scores (channels x clips), windows/s) of a bundle on ONNX Runtime, or
    on the torch backend's bf16 fast path (``fast_path`` "bf16")."""
    bundle = load_bundle(resolve_bundle(bundle_path))
    if fast_path == "bf16":
        runtime = open_runtime(bundle, "torch", fast_path="bf16")
    else:
        runtime = open_runtime(bundle, "onnx")
    # Warm up on every batch shape the scoring uses, so no first call (a compile on the bf16
    # path) is counted in the rate.
    for n in {1, BATCH, len(utts) % BATCH} - {0}:
        runtime(np.zeros((n, bundle.input_samples), np.float32))
    busy = 0.0

    def score(x: np.ndarray) -> np.ndarray:
        nonlocal busy
        t = time.perf_counter()
        s = runtime(x)[1]
        busy += time.perf_counter() - t
        return s

    rows = []
    for ch in channels:
        kinds: list[str] = []  # each window judged at its kind of audio's calibration, as served
        raw = score_utterances(score, utts, bundle.input_samples, ch, kinds=kinds)
        rows.append(
            [bundle.score.for_channel(k)[0].calibrate(x) for k, x in zip(kinds, raw, strict=True)]
        )
        log.info("%s on %s: scored %d clips", bundle.name, ch, len(utts))
    name = bundle.name if fast_path == "plain" else f"{bundle.name} ({fast_path})"
    return name, np.array(rows, dtype=np.float64), len(channels) * len(utts) / busy


def row(f: dict) -> str:
    return f"{f['eer']:.1%} | {f['bonafide_accepted']:.1%} | {f['spoof_rejected']:.1%}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--expert", required=True, help="the expensive bundle (e.g. AASIST-L)")
    p.add_argument("--screen", action="append", required=True, help="a cheap bundle (repeatable)")
    p.add_argument("--data-root", default=str(SHARED / "data"))
    p.add_argument("--split", default="dev", choices=["train", "dev"], help="never eval")
    p.add_argument("--channels", default=",".join(CHANNELS))
    p.add_argument("--bands", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0])
    p.add_argument(
        "--expert-paths",
        nargs="+",
        default=["plain"],
        choices=["plain", "bf16"],
        help="the expert's runtime(s): plain ONNX graph, bf16 fast path",
    )
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("voicescreen").setLevel(logging.WARNING)

    utts = load_split(args.data_root, args.split)
    bona = np.array([u.label == "bonafide" for u in utts])
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    experts = [calibrated_scores(args.expert, utts, channels, path) for path in args.expert_paths]
    lines = [
        f"Each clip's evaluation window of the `{args.split}` split of "
        f"`{portable_path(args.data_root)}` "
        f"({len(utts)} clips: {bona.sum()} bona fide, {(~bona).sum()} spoof) through "
        f"{', '.join(channels)}, pooled ({len(channels) * len(utts)} windows). Calibrated scores: "
        "> 0 is bona fide, each model at its own card's threshold. A window is escalated when "
        "|screen score| <= band; the cascade's score is then the expert's, otherwise the "
        "screen's. Arithmetic per window = screen + escalated share x expert, in units of "
        f"the first expert alone ({experts[0][0]}), from the windows/s measured here "
        "(batches of 16).",
        "",
        f"Machine: {machine()}; {versions()}.",
        "",
        "| scorer | band | escalated | EER | bona fide accepted | spoofs rejected | "
        f"arithmetic vs {experts[0][0]} alone |",
        "|---|---|---|---|---|---|---|",
    ]
    windows = [u for _ in channels for u in utts]  # one per score, channel by channel
    unit = experts[0][2]  # windows/s of the first expert: every cost is in its windows
    screens = [calibrated_scores(path, utts, channels) for path in args.screen]
    for expert_name, expert, expert_rate in experts:
        alone = cascade_figures(windows, expert.reshape(-1), expert.reshape(-1), [])
        lines.append(
            f"| {expert_name} alone ({expert_rate:.1f} windows/s) | - | 100 % | "
            f"{row(alone['expert_alone'])} | {unit / expert_rate:.2f} |"
        )
    for name, screen, rate in screens:
        cost = unit / rate
        for i, (expert_name, expert, expert_rate) in enumerate(experts):
            got = cascade_figures(windows, expert.reshape(-1), screen.reshape(-1), args.bands)
            if i == 0:
                lines.append(
                    f"| {name} alone ({rate:.0f} windows/s) | - | 0 % | "
                    f"{row(got['screen_alone'])} | {cost:.2f} |"
                )
            for b in got["bands"]:
                lines.append(
                    f"| {name} > {expert_name} | {b['band']:g} | {b['escalated']:.0%} | {row(b)} "
                    f"| {cost + b['escalated'] * unit / expert_rate:.2f} |"
                )
    body = "\n".join(lines)
    command = command_line()
    if not args.no_write:
        write_section("cascade", f"`{command}`\n\n{body}")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
