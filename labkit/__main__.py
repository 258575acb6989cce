"""``python -m labkit``: the ``labkit`` command, as installed on the path."""

from labkit.cli.app import main

raise SystemExit(main())
