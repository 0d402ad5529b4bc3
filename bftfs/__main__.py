"""``python -m bftfs`` is the ``bftfs`` command."""

from bftfs.cli import main

raise SystemExit(main())
