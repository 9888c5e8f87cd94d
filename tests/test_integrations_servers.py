"""The docs' example apps under their real servers, with real HTTP requests on loopback:
Flask and Django under gunicorn with --preload and several workers (the SDK configured in
the master before the fork), FastAPI under uvicorn with two workers. After a graceful stop
(SIGTERM), the page views per route template, method, status class and user, and the
sign-ups tracked inside the handlers, are exact in PostgreSQL."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

import analytics_sdk
from analytics_sdk import Analytics
from analytics_sdk.backends.postgres import PostgresSink

from .utils import redis_and_postgres

pytestmark = pytest.mark.services

EXAMPLES = Path(__file__).parent.parent / "docs" / "integrations" / "examples"
SDK_ROOT = str(Path(analytics_sdk.__file__).resolve().parent.parent)
REQUESTS = int(os.environ.get("ANALYTICS_TEST_SERVER_REQUESTS", "3000"))
"""The issue asks for 10,000; 3,000 keeps each test well under 30 s on a 2-core machine."""

USERS = [f"u{n}" for n in range(7)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@contextmanager
def serving(command: list[str], store: str, sink: str, log: Path) -> Iterator[int]:
    """Run the server on a free loopback port until the block ends, then SIGTERM it and
    require a clean exit."""
    port = free_port()
    # The server runs in the examples' folder: the SDK under test comes first on its path.
    path = os.pathsep.join([SDK_ROOT, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "ANALYTICS_STORE": store, "ANALYTICS_SINK": sink}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *command, "--bind" if command[0] == "gunicorn" else "--port",
             f"127.0.0.1:{port}" if command[0] == "gunicorn" else str(port)],
            cwd=EXAMPLES, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not answers(port):  # a separate process: nothing to tick but its port
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            yield port
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


Request = tuple[str, str, str | None]  # method, path, user


def plan(n: int) -> list[Request]:
    """A fixed mix: item pages, sign-ups, unmatched paths, bad item ids, health checks."""
    requests: list[Request] = []
    for i in range(n):
        user = None if i % 11 == 0 else USERS[i % len(USERS)]
        kind = i % 10
        if kind < 5:
            requests.append(("GET", f"/items/{i}", user))
        elif kind < 7:
            requests.append(("POST", "/signup", user))
        elif kind == 7:
            requests.append(("GET", f"/no/such/page/{i}", user))
        elif kind == 8:
            requests.append(("GET", "/items/not-a-number", user))
        else:
            requests.append(("GET", "/health", user))
    return requests


def send_all(port: int, requests: list[Request]) -> Counter[int]:
    def send(request: Request) -> int:
        method, path, user = request
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, headers={"X-User": user} if user else {})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(send, requests))


def check_counts(
    sink_url: str,
    requests: list[Request],
    route_of: Callable[[str, str], tuple[str, str]],
) -> None:
    """Compare PostgreSQL with what the requests must have counted: ``route_of(method,
    path)`` gives the (route template, status class) the framework answers."""
    expected: Counter[tuple[str, str, str]] = Counter()
    users: Counter[str] = Counter()
    signups: Counter[str] = Counter()
    for method, path, user in requests:
        if path == "/health":
            continue  # excluded
        route, status = route_of(method, path)
        expected[route, method, status] += 1
        if user is not None:
            users[user] += 1
            if path == "/signup":
                signups[user] += 1
    # Only the sink: a memory store and a fresh buffer add nothing.
    client = Analytics(store="memory://", sink=sink_url, background=False)
    try:
        for (route, method, status), n in expected.items():
            props = {"route": route, "method": method, "status": status}
            assert client.count("page_view", properties=props) == n, props
        assert client.count("page_view") == sum(expected.values())
        assert client.count("signup") == sum(1 for m, p, _ in requests if p == "/signup")
    finally:
        client.shutdown()
    sink = PostgresSink.from_url(sink_url)
    try:
        assert sink.user_counts("page_view", None, None, None) == dict(users)
        assert sink.user_counts("signup", None, None, None) == dict(signups)
    finally:
        sink.close()


def flask_routes(method: str, path: str) -> tuple[str, str]:
    if path == "/signup":
        return "/signup", "2xx"
    if path.startswith("/items/") and path[7:].isdigit():
        return "/items/<int:item_id>", "2xx"
    return "(unmatched)", "4xx"


def django_routes(method: str, path: str) -> tuple[str, str]:
    return flask_routes(method, path)  # the same converters and templates


def fastapi_routes(method: str, path: str) -> tuple[str, str]:
    if path == "/signup":
        return "/signup", "2xx"
    if path.startswith("/items/"):  # a bad id matches the route and fails validation: 422
        return "/items/{item_id}", "2xx" if path[7:].isdigit() else "4xx"
    return "(unmatched)", "4xx"


SERVERS = {
    "flask-gunicorn": (
        ["gunicorn", "--preload", "--workers", "4", "flask_app:app"],
        flask_routes,
    ),
    "django-gunicorn": (
        ["gunicorn", "--preload", "--workers", "4", "django_app:application"],
        django_routes,
    ),
    "fastapi-uvicorn": (
        ["uvicorn", "--workers", "2", "--host", "127.0.0.1", "fastapi_app:app"],
        fastapi_routes,
    ),
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_counts_are_exact_after_a_graceful_stop(server: str, tmp_path: Path) -> None:
    command, route_of = SERVERS[server]
    pytest.importorskip(command[0])
    requests = plan(REQUESTS)
    with redis_and_postgres("web") as (store_url, sink_url):
        with serving(command, store_url, sink_url, tmp_path / "server.log") as port:
            statuses = send_all(port, requests)
        assert sum(statuses.values()) == len(requests)
        assert 500 not in statuses, statuses
        # What the store still holds after the workers' final flushes reaches the sink now.
        flusher = Analytics(store=store_url, sink=sink_url, background=False)
        try:
            assert flusher.flush().complete
        finally:
            flusher.shutdown()
        check_counts(sink_url, requests, route_of)
