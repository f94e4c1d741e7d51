#!/usr/bin/env python
"""Validate a bundle, or every epoch of a frozen-blocks run, on voices its training never heard.

The validation set and its figures (EERs pooled and per channel; bona fide accepted per voice and
spoofs rejected per attack at the ``card``, ``dev``, ``pooled`` and leave-one-voice-out
thresholds) are ``voicescreen.train.validate``; this prints them as Markdown tables and, with
``--out``, writes ``validation.json`` and ``validation.md``.

    python scripts/validate_default.py --bundle models/default --extra EXTRA --out runs/val/default
    python scripts/validate_default.py --run runs/c1/train --extra EXTRA    # every checkpoint
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from voicescreen.train.validate import (
    CHANNELS,
    Validation,
    bundle_scores,
    checkpoint_scores,
    table,
    validation_figures,
    validation_set,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_EXTRA = Path.home() / ".cache" / "voicescreen" / "extra-data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", action="append", metavar="PATH", help="a bundle; repeatable")
    what.add_argument("--run", help="a frozen_blocks run's train folder (its checkpoints)")
    p.add_argument("--data-root", default=str(SHARED / "data"))
    p.add_argument(
        "--extra",
        action="append",
        metavar="DIR",
        help=f"a corpus whose dev split holds held-out voices; repeatable ({DEFAULT_EXTRA})",
    )
    p.add_argument("--cache", help="feature cache folder for --run (default RUN/features)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", help="write validation.json (and the tables) here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    extra = [str(Path(d).expanduser()) for d in (args.extra or [DEFAULT_EXTRA])]
    utts = validation_set(args.data_root, extra)
    rows: dict[str, Validation] = {}
    if args.bundle:
        for path in args.bundle:
            scores, threshold = bundle_scores(path, utts, threads=args.threads)
            rows[path] = validation_figures(utts, scores, threshold)
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        for epoch, scores in checkpoint_scores(args.run, utts, cache=args.cache).items():
            rows[f"epoch {epoch}"] = validation_figures(utts, scores)
    text = []
    for threshold in ("card", "dev", "pooled", "lovo"):
        lines = table(rows, threshold)
        if len(lines) > 2:
            text += [f"At the {threshold} threshold (rates in %):", *lines, ""]
    print("\n".join(text))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = {
            "data_root": args.data_root,
            "extra": extra,
            "channels": list(CHANNELS),
            "models": {k: v.to_dict() for k, v in rows.items()},
        }
        (out / "validation.json").write_text(json.dumps(data, indent=2) + "\n")
        (out / "validation.md").write_text("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
