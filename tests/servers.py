"""Real servers for the tests: Redis, a Redis Cluster the suite starts itself, a TCP proxy.

A test that needs a server it cannot reach skips, or fails under ANALYTICS_REQUIRE_SERVICES.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

REDIS_URL = os.environ.get("ANALYTICS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers(url: str = REDIS_URL) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """Return a free port whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20_000, 50_000)
        if _is_free(port) and _is_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[str]:
    """Start a Redis Cluster of ``masters`` nodes on free loopback ports; yield its URL."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed to start a test cluster")
    workdir = tempfile.mkdtemp(prefix="analytics-cluster-")
    ports: list[int] = []
    while len(ports) < masters:
        port = cluster_port()
        if port not in ports:
            ports.append(port)
    processes = []
    try:
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        workdir,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _wait_for(lambda p=port: _ping(cli, p), f"node {port} did not start")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        _wait_for(lambda: _cluster_ok(cli, ports), "cluster did not reach state ok")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _ping(cli: str, port: int) -> bool:
    done = subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, text=True)
    return done.stdout.strip() == "PONG"


def _cluster_ok(cli: str, ports: list[int]) -> bool:
    for port in ports:
        done = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True
        )
        if "cluster_state:ok" not in done.stdout:
            return False
    return True


def _wait_for(check, message: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)


class Proxy:
    """A TCP proxy on a free loopback port that a test can make drop or refuse connections.

    - ``drop()``: close every open connection now;
    - ``refuse = True``: close new connections as soon as they are accepted;
    - ``lose_next_reply = True``: forward the next request, then close the connection
      instead of returning the reply (the server did the work; the client never hears).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.refuse = False
        self.lose_next_reply = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, request: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not request and self.lose_next_reply:
                    self.lose_next_reply = False
                    break  # the request reached the server; its reply never reaches the client
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def drop(self) -> None:
        """Close every connection that is open now."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed = True
        self.listener.close()
        self.drop()


@contextmanager
def prometheus_server(targets: dict[str, str], scrape_interval: str = "500ms") -> Iterator[str]:
    """Start a real Prometheus scraping ``{job: "host:port"}`` on a free loopback port; yield
    its URL. Needs Debian's ``prometheus`` package."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("the prometheus binary is not installed (Debian package 'prometheus')")
    workdir = tempfile.mkdtemp(prefix="analytics-prometheus-")
    jobs = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']"
        for job, target in targets.items()
    )
    config = f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}\n"
    with open(os.path.join(workdir, "prometheus.yml"), "w") as f:
        f.write(config)
    port = cluster_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir}/prometheus.yml",
            f"--storage.tsdb.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _http_ok(f"{url}/-/ready"), "prometheus did not become ready", timeout=60)
        yield url
    finally:
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
