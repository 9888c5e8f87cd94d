"""A FastAPI app counting page views by route template, method, status class and user."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

import analytics_sdk
from analytics_sdk.integrations.fastapi import instrument

# Store and sink come from ANALYTICS_STORE and ANALYTICS_SINK; each worker process
# imports this module, so each configures its own client.
analytics_sdk.configure()

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@app.post("/signup", status_code=201)
async def signup() -> dict[str, str]:
    analytics_sdk.track("signup")  # counted for the request's user
    return {}


@app.get("/health")
async def health() -> str:
    return "ok"


def current_user(scope: dict[str, Any]) -> str | None:
    # A real app decodes its session cookie or token here (the ASGI scope has the headers).
    for name, value in scope["headers"]:
        if name == b"x-user":
            return value.decode()
    return None


instrument(app, resolve=current_user, page_views=True, exclude_paths=["/health", "/static"])
