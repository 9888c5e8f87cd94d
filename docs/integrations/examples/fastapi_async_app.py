"""A FastAPI app on the async API: tracking in handlers, a series awaited in an endpoint, the
client shut down in the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

from fastapi import FastAPI

import analytics_sdk


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Store and sink come from ANALYTICS_STORE and ANALYTICS_SINK.
    analytics_sdk.configure()
    yield
    # The final flush runs on the client's flush thread; the event loop serves on meanwhile.
    await analytics_sdk.ashutdown()


app = FastAPI(lifespan=lifespan)


@app.post("/articles/{slug}/view")
async def view(slug: str, user: str | None = None) -> dict[str, bool]:
    analytics_sdk.track("article_view", user_id=user, properties={"slug": slug})  # never blocks
    return {"ok": True}


@app.get("/stats/views")
async def views(days: int = 7, slug: str | None = None) -> list[dict[str, object]]:
    client = analytics_sdk.get_client()
    today = datetime.now(timezone.utc).date()
    series = await client.aseries(
        "article_view",
        today - timedelta(days=days - 1),
        today,
        properties=None if slug is None else {"slug": slug},
    )
    return [{"day": start.date().isoformat(), "views": n} for start, n in series]


@app.get("/stats/readers")
async def readers(days: int = 7) -> dict[str, int]:
    today = datetime.now(timezone.utc).date()
    client = analytics_sdk.get_client()
    first = today - timedelta(days=days - 1)
    return {"readers": await client.aunique_users("article_view", first, today)}
