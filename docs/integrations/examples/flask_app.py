"""A Flask app counting page views by route, method, status class and user."""

from __future__ import annotations

from flask import Flask, Request

import analytics_sdk
from analytics_sdk.integrations.flask import init_app

# Store and sink come from ANALYTICS_STORE and ANALYTICS_SINK. Configured at import, so
# under `gunicorn --preload` the master configures once and every worker inherits it.
analytics_sdk.configure()

app = Flask(__name__)


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@app.post("/signup")
def signup() -> tuple[str, int]:
    analytics_sdk.track("signup")  # counted for the request's user
    return "", 201


@app.get("/health")
def health() -> str:
    return "ok"


def current_user(request: Request) -> str | None:
    # A real app returns its logged-in user here (session, flask_login.current_user).
    return request.headers.get("X-User")


init_app(app, resolve=current_user, page_views=True, exclude_paths=["/health", "/static"])
