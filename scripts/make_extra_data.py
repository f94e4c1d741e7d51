#!/usr/bin/env python
"""Build an extra training corpus: many more bona fide voices, each with matched spoofs.

What it builds and how: ``voicescreen.train.extra_data``.

    python scripts/make_extra_data.py                          # all languages, default --out
    python scripts/make_extra_data.py --languages en,fr --max-clips-per-language 5 --out /tmp/x
    python scripts/make_extra_data.py --dev-languages ""       # everything in the train split
"""

import sys

from voicescreen.train.extra_data import main

if __name__ == "__main__":
    sys.exit(main())
