#!/usr/bin/env python
"""What one training step costs per window on this machine, float32 against bfloat16 autocast
(``voicescreen train --cpu-bf16``), for each recipe at its own batch size.

A step is what the trainer does per batch: forward in train mode, cross-entropy, backward and an
Adam update. Inputs are real speech windows (random crops of train-split clips of
``../shared/data``, in the recipe's window length) with their labels; both precisions start from
the same weights, with the same dropout masks, and see the same batches, so the loss column also
shows how far bfloat16 moves the numbers after a few steps (AASIST's top-k graph pooling turns
small differences into different node choices, so its losses part more than the others').

    python scripts/bench_train.py [--recipes aasist aasist-l rawnet2 lcnn] [--steps 3]
        [--threads 2] [--no-write]

Writes section "train" of docs/benchmarks.md and prints it.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from benchlib import machine, spread, versions, write_section

from voicescreen.audio import load_audio
from voicescreen.models.registry import get_architecture
from voicescreen.train.data import load_split
from voicescreen.train.recipes import load_recipe

log = logging.getLogger("bench_train")
SHARED = Path(__file__).resolve().parents[2] / "shared"


def batches(root: Path, samples: int, batch: int, n: int, seed: int = 0):
    """``n`` (windows, labels) batches of random crops of train-split clips, repeat-padded."""
    rng = np.random.default_rng(seed)
    utts = load_split(root, "train")
    out = []
    for _ in range(n):
        picks = rng.choice(len(utts), batch, replace=False)
        xs, ys = [], []
        for i in picks:
            x = load_audio(utts[i].path)
            if x.size > samples:
                start = int(rng.integers(0, x.size - samples + 1))
                x = x[start : start + samples]
            xs.append(np.resize(x, samples))  # repeat-pads short clips
            ys.append(int(utts[i].label == "bonafide"))
        out.append((torch.from_numpy(np.stack(xs)).float(), torch.tensor(ys)))
    return out


def steps(model: torch.nn.Module, data, bf16: bool) -> tuple[list[float], float]:
    """Seconds per window of each step after the first (warm-up), and the last step's loss."""
    import time

    model = copy.deepcopy(model).train()
    torch.manual_seed(0)  # the same dropout masks for both precisions
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times, loss = [], float("nan")
    for x, y in data:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        step_loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        step_loss.backward()
        opt.step()
        times.append((time.perf_counter() - t0) / len(x))
        loss = float(step_loss)
    return times[1:], loss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["aasist", "aasist-l", "rawnet2", "lcnn"])
    p.add_argument("--data-root", default=str(SHARED / "data"))
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    rows = []
    for name in args.recipes:
        recipe = load_recipe(name)
        arch = get_architecture(recipe.architecture)
        samples = arch.input_samples(recipe.model_config())
        torch.manual_seed(0)
        model = arch.build(recipe.model_config())
        data = batches(Path(args.data_root), samples, recipe.batch_size, args.steps + 1)
        fp32, loss32 = steps(model, data, bf16=False)
        bf16, loss16 = steps(model, data, bf16=True)
        m32, m16 = spread(fp32)[0], spread(bf16)[0]
        log.info("%s: fp32 %.3f s/window, bf16 %.3f s/window", name, m32, m16)
        rows.append(
            f"| {name} ({recipe.architecture}) | {recipe.batch_size} | "
            f"{m32:.3f} ({min(fp32):.3f}–{max(fp32):.3f}) | "
            f"{m16:.3f} ({min(bf16):.3f}–{max(bf16):.3f}) | {m32 / m16:.2f}× | "
            f"{600 * m32 / 60:.1f} / {600 * m16 / 60:.1f} | {loss32:.4f} / {loss16:.4f} |"
        )
    load_after = os.getloadavg()[0]

    body = "\n".join(
        [
            "## Training: cost per window, float32 and bfloat16",
            "",
            f"Machine: {machine()}. {versions()}. {args.threads} threads. "
            f"Load average before / after: {load_before:.2f} / {load_after:.2f}.",
            f"Command: `python scripts/bench_train.py --steps {args.steps}`. Each recipe at its "
            "own batch size, from random weights; one step = forward (train mode), "
            "cross-entropy, backward, Adam. Inputs: random crops of train-split clips of "
            "`../shared/data`. Cells: median (min–max) seconds per window over "
            f"{args.steps} steps after a warm-up step; both precisions see the same batches "
            "from the same weights with the same dropout masks.",
            "",
            "| recipe | batch | fp32 s/window | bf16 s/window (`--cpu-bf16`) | speed-up | "
            "min per 600-clip epoch fp32 / bf16 | loss after the last step fp32 / bf16 |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("train", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
