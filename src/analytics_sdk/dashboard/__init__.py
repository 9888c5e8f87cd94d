"""A read-only web dashboard over the query API: pages, SVG charts and a JSON API.

``analytics-sdk-exact dashboard --sink postgresql://...`` serves it; so does a flush worker
started with ``--dashboard``, and ``analytics-sdk-exact demo --dashboard``. In code::

    from analytics_sdk.dashboard import serve
    server = serve(client, ("127.0.0.1", 8050), token="s3cret")
    ...
    server.close()

Modules: ``api`` (parameters in, the query methods' answers out), ``health`` (the
pipeline's state), ``svg`` (charts), ``pages`` (HTML), ``server`` (HTTP), ``static/``
(the stylesheet and a few lines of script, shipped in the package).
"""

from __future__ import annotations

from .api import BadParameter, DashboardAPI, NotAvailable
from .server import DEFAULT_ADDR, TOKEN_VARIABLE, DashboardServer, serve, serve_until_stopped

__all__ = [
    "DEFAULT_ADDR",
    "TOKEN_VARIABLE",
    "BadParameter",
    "DashboardAPI",
    "DashboardServer",
    "NotAvailable",
    "serve",
    "serve_until_stopped",
]
