#!/usr/bin/env python
"""Benchmark every architecture: parameters, GFLOPs per window, batch-1 latency and batch-N
throughput, eager PyTorch against ONNX Runtime (CPU), on real speech windows.

    python scripts/bench_models.py [--models aasist,lcnn] [--batches 16,32] [--repeats 5]

Writes the table into docs/benchmarks.md (section "models") and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from benchlib import command_line, machine, spread, timed, versions, write_section

from voicescreen.audio import load_audio, pad_repeat
from voicescreen.models.bundle import export_bundle
from voicescreen.models.registry import ARCHITECTURES, get_architecture
from voicescreen.runtimes import open_runtime

SHARED = Path(__file__).resolve().parents[2] / "shared"


def speech_windows(n: int, samples: int) -> np.ndarray:
    """``n`` windows cut from real dev-split clips of the corpus."""
    proto = SHARED / "data" / "protocols" / "VS.cm.dev.trl.txt"
    names = [line.split()[1] for line in proto.read_text().splitlines() if line.strip()]
    step = max(1, len(names) // n)
    clips = [load_audio(SHARED / "data" / "flac" / f"{f}.flac") for f in names[::step][:n]]
    return np.stack([pad_repeat(c, samples) for c in clips])


def gflops_per_window(model: torch.nn.Module, samples: int) -> float:
    """FLOPs (2 per multiply-add) of one window: matmuls and convolutions as counted by
    torch's FlopCounterMode, plus the recurrent layers, which it does not see."""
    from torch.utils.flop_counter import FlopCounterMode

    rnn_flops = 0

    def rnn_hook(module, inputs, output):
        nonlocal rnn_flops
        x = inputs[0]
        steps = x.shape[1] if module.batch_first else x.shape[0]
        gates = {torch.nn.GRU: 3, torch.nn.LSTM: 4}[type(module)]
        h = module.hidden_size
        dirs = 2 if module.bidirectional else 1
        for layer in range(module.num_layers):
            n_in = module.input_size if layer == 0 else h * dirs
            rnn_flops += 2 * steps * dirs * gates * h * (n_in + h)

    hooks = [
        m.register_forward_hook(rnn_hook)
        for m in model.modules()
        if isinstance(m, torch.nn.GRU | torch.nn.LSTM)
    ]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():  # the counter's module hooks need autograd tensors
        model(torch.zeros(1, samples))
    for h in hooks:
        h.remove()
    return (counter.get_total_flops() + rnn_flops) / 1e9


def fitted_gmm(samples: int) -> torch.nn.Module:
    from voicescreen.models.gmm import CONFIGS, LFCCGMMConfig, fit_lfcc_gmm

    proto = SHARED / "data" / "protocols" / "VS.cm.train.trn.txt"
    rows = [line.split() for line in proto.read_text().splitlines() if line.strip()]
    clips = {label: [] for label in ("bonafide", "spoof")}
    for r in rows:
        if len(clips[r[4]]) < 20:
            clips[r[4]].append(load_audio(SHARED / "data" / "flac" / f"{r[1]}.flac"))
    return fit_lfcc_gmm(
        clips["bonafide"], clips["spoof"], LFCCGMMConfig.from_dict(CONFIGS["lfcc-gmm"])
    )


def bench_one(name: str, batches: list[int], repeats: int, tmp: Path) -> dict:
    arch = get_architecture(name)
    samples = arch.input_samples()
    torch.manual_seed(0)
    model = fitted_gmm(samples) if name == "lfcc-gmm" else arch.build()
    model.eval()
    x = speech_windows(max(batches), samples)
    bundle = export_bundle(
        model,
        tmp / name,
        architecture=name,
        config=arch.default_config,
        name=name,
        check_input=x[:2],
    )
    runtimes = {
        "eager": lambda: open_runtime(bundle, "torch", device="cpu"),
        "onnx": lambda: open_runtime(bundle, "onnx"),
    }
    row = {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": gflops_per_window(model, samples),
    }
    for kind, make in runtimes.items():
        rt = make()  # one runtime at a time, so no idle thread pool competes with the other
        lat = timed(lambda rt=rt: rt(x[:1]), repeats)
        row[f"{kind}_b1_ms"] = [1000 * v for v in spread(lat)]
        for b in batches:
            ts = timed(lambda rt=rt, b=b: rt(x[:b]), max(2, repeats // 2))
            med, fastest, slowest = spread(ts)
            row[f"{kind}_b{b}_wps"] = [b / med, b / slowest, b / fastest]  # median, lo, hi
        print(f"  {name} {kind}: {row}", file=sys.stderr, flush=True)
        del rt
    return row


def fmt(triple: list[float], digits: int = 1) -> str:
    med, lo, hi = triple
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(n for n, a in ARCHITECTURES.items() if a.trainable))
    p.add_argument("--batches", default="16,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    import tempfile

    load0 = f"{os.getloadavg()[0]:.2f}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench_one(name, batches, args.repeats, Path(tmp)))

    head = ["model", "params", "GFLOPs/window", "eager b1 ms", "ORT b1 ms"]
    for b in batches:
        head += [f"eager b{b} win/s", f"ORT b{b} win/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", f"{r['gflops']:.2f}"]
        cells += [fmt(r["eager_b1_ms"], 0), fmt(r["onnx_b1_ms"], 0)]
        for b in batches:
            cells += [fmt(r[f"eager_b{b}_wps"], 2), fmt(r[f"onnx_b{b}_wps"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    cmd = command_line()
    body = f"""## Model zoo: cost per 4 s window

Machine: {machine()}. {versions()}. Load average before / after: {load0} / {os.getloadavg()[0]:.2f}.
Command: `{cmd.strip()}`. Inputs: real speech windows from the dev split of `../shared/data`.
Cells: median (min–max) over {args.repeats} repeats of batch 1 and {max(2, args.repeats // 2)} of
each larger batch; eager = PyTorch eager in `inference_mode`, ORT = ONNX Runtime CPU provider on the
bundle's `model.onnx`, both with all cores. GFLOPs count 2 per multiply-add.

{table}
"""
    print(body)
    if not args.no_write:
        write_section("models", body)


if __name__ == "__main__":
    main()
