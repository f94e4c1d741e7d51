#!/usr/bin/env python
"""Train the bundle that ships inside the package and measure it.

The recipe (``RECIPE``: AASIST-L fine-tuned from the official weights with the product's channel
as augmentation, calibrated on dev pooled over clean, mu-law and GSM-then-mu-law), the targets
and how the bundle is measured and its card written are ``voicescreen.train.default``; this
trains it, then validates, evaluates, writes the card and installs through those functions.

    python scripts/make_extra_data.py                       # once: ~/.cache/voicescreen/extra-data
    X=~/.cache/voicescreen/extra-data
    python scripts/make_default_bundle.py --out runs/default --extra $X --extra-dev $X
    python scripts/make_default_bundle.py ... --install     # + write it to models/default

Candidates are compared on validation, never on eval: ``make_extra_data.py`` holds six languages
out of training (its dev split); ``--extra-dev DIR`` adds them to the per-epoch figures and the
calibration, ``--no-export`` trains only, ``--set KEY=VALUE`` varies the recipe, and
``scripts/validate_default.py --run OUT/train`` scores every epoch on the held-out voices. A full
run writes the validation figures (``--validate DIR``, default the ``--extra-dev`` corpora) to
the card and ``summary.json`` next to the eval figures.

Cost on 2 CPU cores: the front end and the first three encoder blocks stay at the official weights
(``frozen_blocks``, train/frozen.py), so their output for ``feature_copies`` augmented windows of
every training clip is computed once (~7 windows/s: ~20 min for 1,196 clips x 6 and the dev
clips through 3 channels on an idle machine) and the epochs train the last three blocks and the
graph-attention head (55,680 of 85,306 parameters) on that cache (~4 min each).
``--set frozen_blocks=4`` (the previous default) trains the last two blocks (~1 min per epoch).
The full fine-tune (``--set frozen_blocks=0``) is ~1 s per window forward + backward here; use a
GPU for it.

Targets (``TARGETS``) on the eval split, at the card's threshold: EER <= 5 %, >= 95 % of bona
fide accepted, >= 90 % of spoofs rejected. The script prints them next to the measured values; it
does not install a bundle that misses them unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from voicescreen.models.store import DEFAULT_BUNDLE as DEFAULT_DIR
from voicescreen.models.store import REPO
from voicescreen.train.default import (
    ARCHITECTURE,
    RECIPE,
    annotate_card,
    compare_on_eval,
    held_out_validation,
    install,
)

SHARED = REPO.parent / "shared"

log = logging.getLogger("make_default_bundle")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(SHARED / "data"))
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="DIR",
        help="extra training corpus (scripts/make_extra_data.py); repeatable",
    )
    p.add_argument(
        "--extra-dev",
        action="append",
        default=[],
        metavar="DIR",
        help="a corpus whose dev split (held-out voices) joins the dev split for the per-epoch "
        "figures and the calibration; repeatable",
    )
    p.add_argument(
        "--validate",
        action="append",
        default=[],
        metavar="DIR",
        help="a corpus whose dev split (held-out voices) joins the dev split for the validation "
        "figures (scripts/validate_default.py) written to the card; default: the --extra-dev ones",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a RECIPE field (VALUE as JSON, else a string), e.g. epochs=6",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--stop-after", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--no-export",
        action="store_true",
        help="train only (no bundle, no eval): compare candidates on validation with "
        "scripts/validate_default.py --run OUT/train",
    )
    p.add_argument("--install", action="store_true", help=f"write the bundle to {DEFAULT_DIR}")
    p.add_argument("--force", action="store_true", help="install even if the targets are missed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from voicescreen.train.recipes import load_recipe
    from voicescreen.train.trainer import train

    if args.install and args.no_export:
        p.error("--install needs a bundle: drop --no-export")
    overrides = {
        **RECIPE,
        "extra_train": [str(Path(d).expanduser()) for d in args.extra],
        "extra_dev": [str(Path(d).expanduser()) for d in args.extra_dev],
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item}: use KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.threads:
        overrides["threads"] = args.threads
    recipe = load_recipe(ARCHITECTURE, overrides=overrides)
    out = Path(args.out)
    bundle = out / "bundle"
    result = train(
        recipe,
        args.data_root,
        out / "train",
        resume=args.resume,
        export=None if args.no_export else bundle,
        bundle_name="default",
        stop_after=args.stop_after,
        device=args.device,
    )
    if not result.finished:
        log.info("stopped after epoch %d; continue with --resume", result.epochs_done)
        return 0
    if args.no_export:
        log.info("trained; validate with scripts/validate_default.py --run %s", out / "train")
        return 0

    validation = None
    held_out = [str(Path(d).expanduser()) for d in args.validate] or overrides["extra_dev"]
    if held_out:
        validation = held_out_validation(bundle, args.data_root, held_out, out, args.threads)
    compared, measured, ok = compare_on_eval(bundle, args.data_root, out, validation)
    ran = argv if argv is not None else sys.argv[1:]
    annotate_card(bundle, recipe.to_dict(), compared, measured, validation, ran)

    if args.install:
        if not ok and not args.force:
            log.error("not installing: the targets are missed (use --force to install anyway)")
            return 1
        install(bundle, DEFAULT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
