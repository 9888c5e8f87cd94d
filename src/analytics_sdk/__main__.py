"""``python -m analytics_sdk``: the same as the ``analytics-sdk`` command."""

from .cli import main

raise SystemExit(main())
