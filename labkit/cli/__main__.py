"""``python -m labkit.cli``: the ``labkit`` command."""

from labkit.cli.app import main

raise SystemExit(main())
