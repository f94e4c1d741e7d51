#!/usr/bin/env python
"""Benchmark the Whisper tiny.en front-end per 4 s window (64600 samples, 403 mel frames, 202
encoder frames): our PyTorch encoder (eager), CTranslate2's encoder on the same features, the
whole whisper-tiny-pool graph in ONNX Runtime (what a bundle serves) with the default hidden
state (first block: the other three blocks are not run) and with the full encoder, the trained
back-end alone (what a training step runs on cached frames), and AASIST-L for comparison.
Needs the whisper extra.

    python scripts/bench_whisper.py [--batches 1,8] [--threads 1,2] [--repeats 5] [--no-write]

Writes the table into docs/benchmarks.md (section "whisper") and prints it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_models import speech_windows
from benchlib import command_line, machine, spread, timed, versions, write_section

from voicescreen.audio import WINDOW_SAMPLES
from voicescreen.models import whisper as W
from voicescreen.models.bundle import export_bundle
from voicescreen.models.registry import get_architecture

NAME = "whisper-tiny-pool"
GRAPHS = {  # label -> (architecture, config overrides) exported to ONNX
    "whole model, ONNX Runtime, layers [1] (default)": (NAME, {}),
    "whole model, ONNX Runtime, layers [4] (full encoder)": (NAME, {"layers": [4]}),
    "for comparison: AASIST-L, ONNX Runtime": ("aasist-l", {}),
}


def onnx_graphs(tmp: Path) -> dict[str, bytes]:
    out = {}
    for i, (label, (name, config)) in enumerate(GRAPHS.items()):
        torch.manual_seed(0)
        model = get_architecture(name).build(config)
        bundle = export_bundle(model, tmp / str(i), architecture=name, config=config, name=name)
        out[label] = bundle.files["model.onnx"]
    return out


def runners(
    model: W.WhisperPool, graphs: dict[str, bytes], threads: int
) -> dict[str, Callable[[np.ndarray], object]]:
    """Label -> function (B, samples) windows -> anything, for each way of running it."""
    import ctranslate2
    import onnxruntime as ort

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        label: ort.InferenceSession(g, options, providers=["CPUExecutionProvider"])
        for label, g in graphs.items()
    }
    full = W.pretrained_encoder()[0]

    def mel(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.ascontiguousarray(model.mel(torch.from_numpy(x)).numpy())

    def eager_encoder(x: np.ndarray):
        with torch.inference_mode():
            return full(model.mel(torch.from_numpy(x)))

    def ct2_encode(compute_type: str):
        m = ctranslate2.models.Whisper(
            str(W.model_dir()), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        return lambda x: m.encode(ctranslate2.StorageView.from_array(mel(x)))

    def onnx(session):
        return lambda x: session.run(None, {"waveform": x})

    def eager_back_end(frames: torch.Tensor):
        with torch.inference_mode():
            return model.head_logits(frames)

    return {
        "mel (PyTorch)": mel,
        "mel + full encoder, PyTorch eager": eager_encoder,
        "mel + full encoder, CTranslate2 fp32": ct2_encode("float32"),
        "mel + full encoder, CTranslate2 int8": ct2_encode("int8"),
        **{label: onnx(s) for label, s in sessions.items()},
        "back-end only, on cached frames": eager_back_end,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="1,2", help="intra-op threads, each a set of rows")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    load0 = f"{os.getloadavg()[0]:.2f}"
    torch.manual_seed(0)
    model = get_architecture(NAME).build()
    x_all = speech_windows(max(batches), WINDOW_SAMPLES)
    with torch.inference_mode():
        frames_all = model.frozen_features(torch.from_numpy(x_all))
    with tempfile.TemporaryDirectory() as tmp:
        graphs = onnx_graphs(Path(tmp))
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for label, run in runners(model, graphs, threads).items():
            cells = []
            for b in batches:
                arg = frames_all[:b] if label.startswith("back-end") else x_all[:b]
                secs = timed(lambda run=run, arg=arg: run(arg), args.repeats)
                med, lo, hi = (1000 * s / b for s in spread(secs))
                cells.append(f"{med:.1f} ({lo:.1f}–{hi:.1f})")
            rows.append(f"| {label} | {threads} | " + " | ".join(cells) + " |")
    cols = " | ".join(f"batch {b}: ms/window" for b in batches)
    table = "\n".join(
        [f"| per 4 s window | threads | {cols} |", "|---|---|" + "---|" * len(batches), *rows]
    )
    body = f"""## Whisper tiny.en front-end: cost per 4 s window

Machine: {machine()}. {versions()}. Load average before / after: {load0} / {os.getloadavg()[0]:.2f}.
Command: `{command_line().strip()}`. Inputs: real speech windows from the dev split (64600
samples, 403 mel frames, 202 encoder frames). Cells: median (min–max) over {args.repeats} repeats,
divided by the batch. Training on cached frames runs the frozen encoder once per cached window,
then only the back-end.

{table}
"""
    print(body)
    if not args.no_write:
        write_section("whisper", body)


if __name__ == "__main__":
    main()
