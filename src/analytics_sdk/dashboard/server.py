"""The dashboard's HTTP server: a stdlib ``ThreadingHTTPServer`` on a daemon thread.

Read-only (GET and HEAD only), on loopback unless told otherwise. With a token, every page,
asset and API call needs it: ``Authorization: Bearer TOKEN``, or the cookie a browser gets
by opening any page once with ``?token=TOKEN`` (the page then reloads without it in the URL).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import socket
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ..errors import BackendError
from .api import ENDPOINTS, BadParameter, DashboardAPI, NotAvailable, Params, to_json
from .pages import PAGES, error_page

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from ..client import Analytics

__all__ = ["DEFAULT_ADDR", "TOKEN_VARIABLE", "DashboardServer", "serve", "serve_until_stopped"]

logger = logging.getLogger("analytics_sdk.dashboard")

DEFAULT_ADDR = ("127.0.0.1", 8050)
TOKEN_VARIABLE = "ANALYTICS_DASHBOARD_TOKEN"
COOKIE = "analytics_dashboard_token"
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
SECURITY_HEADERS = {
    # Nothing is fetched from elsewhere, nothing inline runs: an escaping slip cannot execute.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, to_json(answer).encode(), "application/json", headers)

    def _html(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8", headers)

    def _given_token(self, query: dict[str, list[str]]) -> tuple[str | None, bool]:
        """Return the token the request carries and whether it came in the URL."""
        header = self.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip(), False
        if "token" in query:
            return query["token"][-1], True
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # a malformed Cookie header is no token
            return None, False
        return (cookie[COOKIE].value if COOKIE in cookie else None), False

    def _authorized(self, path: str, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if token is None:
            return True
        given, in_url = self._given_token(query)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            message = (
                "a token is required: send Authorization: Bearer TOKEN, or open the page "
                "once with ?token=TOKEN"
                if given is None
                else "the token is not accepted"
            )
            headers = {"WWW-Authenticate": 'Bearer realm="analytics_sdk dashboard"'}
            if path.startswith("/api"):
                self._json(HTTPStatus.UNAUTHORIZED, {"error": message}, headers)
            else:
                self._html(HTTPStatus.UNAUTHORIZED, error_page(401, message), headers)
            return False
        if in_url and not path.startswith("/api"):
            # Keep the token out of the address bar, history and shared links: a cookie.
            rest = {k: v for k, v in query.items() if k != "token"}
            location = path + ("?" + urlencode(rest, doseq=True) if rest else "")
            self._send(
                HTTPStatus.SEE_OTHER,
                b"",
                "text/plain",
                {
                    "Location": location,
                    "Set-Cookie": f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict",
                },
            )
            return False
        return True

    def _host_accepted(self, path: str) -> bool:
        """On loopback, only requests addressed to loopback: a web page elsewhere cannot
        read the dashboard through a DNS name rebound to 127.0.0.1."""
        accepted = self.server.hosts
        host = self.headers.get("Host", "").lower()
        if accepted is None or host in accepted:
            return True
        message = f"Host {host!r} is not accepted; accepted: {', '.join(sorted(accepted))}"
        if path.startswith("/api"):
            self._json(HTTPStatus.BAD_REQUEST, {"error": message})
        else:
            self._html(HTTPStatus.BAD_REQUEST, error_page(400, message))
        return False

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        if not self._host_accepted(path) or not self._authorized(path, query):
            return
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            if name in STATIC:
                self._send(
                    HTTPStatus.OK, _static(name), STATIC[name], {"Cache-Control": "max-age=3600"}
                )
            else:
                self._html(HTTPStatus.NOT_FOUND, error_page(404, f"no asset {name!r}"))
        elif path == "/api" or path == "/api/":
            self._json(
                HTTPStatus.OK,
                {
                    f"/api/{name}": {"parameters": list(accepted), "returns": doc}
                    for name, (accepted, doc) in ENDPOINTS.items()
                },
            )
        elif path.startswith("/api/"):
            self._api(path[len("/api/") :], query)
        elif path in PAGES:
            self._page(path, query)
        else:
            self._html(
                HTTPStatus.NOT_FOUND,
                error_page(404, f"no page {path!r}; accepted: {', '.join(PAGES)}, /api"),
            )

    def _api(self, name: str, query: dict[str, list[str]]) -> None:
        api = self.server.api
        if name not in ENDPOINTS:
            self._json(
                HTTPStatus.NOT_FOUND,
                {"error": f"no endpoint {name!r}; accepted: {', '.join(ENDPOINTS)}"},
            )
            return
        try:
            answer = api.call(name, query)
        except BadParameter as exc:
            self._json(HTTPStatus.BAD_REQUEST, exc.to_dict())
        except NotAvailable as exc:
            self._json(HTTPStatus.NOT_IMPLEMENTED, {"error": str(exc), "method": exc.method})
        except BackendError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        else:
            self._json(HTTPStatus.OK, answer)

    def _page(self, path: str, query: dict[str, list[str]]) -> None:
        render, accepted = PAGES[path]
        try:
            text = render(self.server.api, Params(query, accepted))
        except BadParameter as exc:
            self._html(HTTPStatus.BAD_REQUEST, error_page(400, str(exc)))
        except BackendError as exc:
            self._html(HTTPStatus.SERVICE_UNAVAILABLE, error_page(503, str(exc)))
        else:
            self._html(HTTPStatus.OK, text)

    do_HEAD = do_GET

    def _read_only(self) -> None:
        self._json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": f"method {self.command} is not accepted; accepted: GET, HEAD (read-only)"},
            {"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_PATCH = do_DELETE = _read_only


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], api: DashboardAPI, token: str | None) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)
        self.api = api
        self.token = token
        port = self.server_address[1]
        self.hosts: frozenset[str] | None = None
        if _is_loopback(addr[0]):
            names = ("127.0.0.1", "localhost", "[::1]")
            self.hosts = frozenset(f"{name}:{port}" for name in names)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""A bearer token's characters (RFC 6750): safe in a header, a URL and a cookie."""


def _check_token(token: str) -> None:
    # The message never shows the token: it is a secret.
    if not TOKEN.fullmatch(token):
        raise ValueError(
            "the dashboard token is not accepted; accepted: letters, digits and - . _ ~ + / "
            "(then = signs), e.g. from python -c 'import secrets; print(secrets.token_urlsafe())'"
        )


class DashboardServer:
    """The dashboard of one client, served on a daemon thread from construction on."""

    def __init__(
        self,
        client: Analytics,
        addr: tuple[str, int] = DEFAULT_ADDR,
        *,
        token: str | None = None,
        health: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        """Serve ``client``'s data on ``addr`` (port 0 picks a free port); ``token`` (default:
        ``ANALYTICS_DASHBOARD_TOKEN``, if set) is then required; ``health`` is a flush
        worker's health check, shown with the pipeline's."""
        if token is None:
            token = os.environ.get(TOKEN_VARIABLE) or None
        if token is not None:
            _check_token(token)
        self.token = token
        self.api = DashboardAPI(client, health=health)
        host, port = addr
        try:
            self._server = _Server((host, port), self.api, token)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise OSError(
                exc.errno, f"cannot serve the dashboard on {where}: {exc.strerror or exc}"
            ) from exc
        bound = self._server.server_address
        self.addr, self.port = str(bound[0]), int(bound[1])
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="analytics-sdk-dashboard", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://addr:port/``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._pid == os.getpid():
            self._server.shutdown()
            self.api.close()
        self._server.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    client: Analytics,
    addr: tuple[str, int] = DEFAULT_ADDR,
    *,
    token: str | None = None,
    health: Callable[[], tuple[bool, str]] | None = None,
) -> DashboardServer:
    """Start serving ``client``'s dashboard on ``addr``; return the server (``close()`` it)."""
    return DashboardServer(client, addr, token=token, health=health)


def serve_until_stopped(
    client: Analytics,
    addr: tuple[str, int] = DEFAULT_ADDR,
    *,
    token: str | None = None,
    out: TextIO,
) -> None:
    """Serve ``client``'s dashboard, print where to ``out``, and return on SIGINT or
    SIGTERM (Ctrl-C, or a supervisor stopping the process)."""
    from ..process import wait_for_stop

    with DashboardServer(client, addr, token=token) as server:

        def serving() -> None:  # once a stop signal is heard
            if server.token is None:
                out.write(f"dashboard on {server.url} (read-only; Ctrl-C stops it)\n")
            else:
                out.write(
                    f"dashboard on {server.url} (read-only; Ctrl-C stops it); it asks for the "
                    f"token: open {server.url}?token=TOKEN once, or send Authorization: "
                    "Bearer TOKEN\n"
                )
            out.flush()

        wait_for_stop(threading.Event(), serving)
