"""A one-file Django project counting page views by route, method, status class and user."""

from __future__ import annotations

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path

import analytics_sdk

settings.configure(
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
    SECRET_KEY="example-only",
    MIDDLEWARE=[
        # After AuthenticationMiddleware in a project that has it, so request.user is set.
        "analytics_sdk.integrations.django.AnalyticsMiddleware",
    ],
    ANALYTICS_SDK={
        "RESOLVE": f"{__name__}.current_user",
        "PAGE_VIEWS": True,
        "EXCLUDE_PATHS": ["/health", "/static"],
    },
)
django.setup()

# Store and sink come from ANALYTICS_STORE and ANALYTICS_SINK. Configured at import, so
# under `gunicorn --preload` the master configures once and every worker inherits it.
analytics_sdk.configure()


def current_user(request: HttpRequest) -> str | None:
    # A real project returns request.user.get_username() when request.user.is_authenticated.
    return request.headers.get("X-User")


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    return HttpResponse(str(item_id))


def signup(request: HttpRequest) -> HttpResponse:
    analytics_sdk.track("signup")  # counted for the request's user
    return HttpResponse(status=201)


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [
    path("items/<int:item_id>", item),
    path("signup", signup),
    path("health", health),
]

application = get_wsgi_application()
