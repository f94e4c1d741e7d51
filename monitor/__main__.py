"""``python -m voicescreen.monitor ARGS``: the ``voicescreen monitor`` command on its own."""

from voicescreen.cli.monitor import main

raise SystemExit(main())
