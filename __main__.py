from voicescreen.cli import main

raise SystemExit(main())
