"""``python -m analytics_sdk``: the same as the ``analytics-sdk-exact`` command (alias
``analytics-sdk``)."""

from .cli import main

raise SystemExit(main())
