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
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager, suppress
from typing import Any

REDIS_URL = os.environ.get("ANALYTICS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers(url: str = REDIS_URL) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        import redis
    except ImportError:
        return False
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


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
    with cluster(masters) as started:
        yield started.url


class Cluster:
    """A Redis Cluster this test run started: its node ports, the proxies in front of them
    (when started ``proxied``), and slot migrations between its nodes."""

    def __init__(self, ports: list[int], proxies: dict[int, Proxy]) -> None:
        self.ports = ports
        self.proxies = proxies
        """Node port -> the proxy every client reaches it through (the port it announces)."""

    @property
    def url(self) -> str:
        first = self.ports[0]
        port = self.proxies[first].port if self.proxies else first
        return f"redis+cluster://127.0.0.1:{port}"

    def node(self, port: int) -> Any:
        """A plain (non-cluster) client of one node, reached directly."""
        import redis

        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)

    def owner(self, slot: int) -> int:
        """Return the port of the node that serves ``slot``."""
        for port in self.ports:
            node = self.node(port)
            try:
                if slot in _own_slots(node):
                    return port
            finally:
                node.close()
        raise RuntimeError(f"no node serves slot {slot}")

    def proxy_of(self, slot: int) -> Proxy:
        """The proxy in front of the node serving ``slot``."""
        return self.proxies[self.owner(slot)]

    def migration(self, slot: int) -> SlotMigration:
        """Prepare moving ``slot`` from its node to another master (the way
        ``redis-cli --cluster reshard`` does, one step at a time)."""
        source = self.owner(slot)
        target = next(p for p in self.ports if p != source)
        return SlotMigration(self, slot, source, target)


def _own_slots(node: Any) -> set[int]:
    slots: set[int] = set()
    for line in node.execute_command("CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "myself" in fields[2]:
            for part in fields[8:]:
                if part.startswith("["):
                    continue
                start, _, end = part.partition("-")
                slots.update(range(int(start), int(end or start) + 1))
    return slots


class SlotMigration:
    """One slot moving between two masters: ``begin()`` (IMPORTING on the target, MIGRATING
    on the source), ``move(keys)`` (``MIGRATE`` some or all of its keys), ``finish()`` (the
    rest, then ``SETSLOT ... NODE`` everywhere)."""

    def __init__(self, cluster: Cluster, slot: int, source: int, target: int) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = cluster.node(source)
        self.target = cluster.node(target)
        self.target_port = target
        self.source_id = self.source.execute_command("CLUSTER", "MYID")
        self.target_id = self.target.execute_command("CLUSTER", "MYID")

    def begin(self) -> None:
        self.target.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id)
        self.source.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id)

    def remaining(self) -> list[str]:
        """The slot's keys still on the source."""
        return list(self.source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100_000))

    def move(self, keys: list[str] | None = None) -> list[str]:
        """``MIGRATE`` ``keys`` (default: every key still on the source); return those moved."""
        keys = self.remaining() if keys is None else keys
        if keys:
            self.source.execute_command(
                "MIGRATE", "127.0.0.1", self.target_port, "", 0, 5000, "KEYS", *keys
            )
        return keys

    def finish(self) -> None:
        self.move()
        for node in (self.target, self.source):
            node.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)
        for port in self.cluster.ports:
            other = self.cluster.node(port)
            try:
                other.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)
            finally:
                other.close()
        self.source.close()
        self.target.close()


def _start_redis(
    workdir: str,
    args: Callable[[int, Proxy | None], list[str]],
    *,
    proxied: bool = False,
    taken: Container[int] = (),
) -> tuple[subprocess.Popen[bytes], int, Proxy | None]:
    """Start a redis-server (``args(port, proxy)`` added) on a free loopback port. A port
    that another process took meanwhile is detected (our server exits, or the one answering
    is not ours) and another port is tried."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed to start a test server")
    for _ in range(20):
        port = cluster_port()
        if port in taken:
            continue
        proxy = Proxy("127.0.0.1", port) if proxied else None
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, *args(port, proxy)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if _answers_as(cli, port, process):
            return process, port, proxy
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if proxy is not None:
            proxy.close()
    raise RuntimeError("could not start a redis-server on a free port")


def _answers_as(cli: str, port: int, process: subprocess.Popen[bytes]) -> bool:
    """Wait until ``process`` answers on ``port``; False if it died or another server did."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        done = subprocess.run(
            [cli, "-p", str(port), "info", "server"], capture_output=True, text=True
        )
        if "process_id:" in done.stdout:
            return f"process_id:{process.pid}" in done.stdout.split()
        if "unknown command" in done.stdout + done.stderr:  # INFO renamed away: PING
            time.sleep(0.2)  # a server that lost the port race has exited by now
            return process.poll() is None and _ping(cli, port)
        time.sleep(0.05)
    return False


@contextmanager
def cluster(masters: int = 3, *, proxied: bool = False) -> Iterator[Cluster]:
    """Start a Redis Cluster of ``masters`` nodes on free loopback ports. ``proxied``: each
    node announces the port of a :class:`Proxy` in front of it, so every client connection
    (not the cluster bus) goes through a proxy a test can cut, stall or make lose replies.

    A cluster whose nodes do not join in time (seen on a loaded machine) is torn down and
    started again on other ports, three times at most."""
    for attempt in range(1, CLUSTER_ATTEMPTS + 1):
        try:
            started = _start_cluster(masters, proxied)
        except (RuntimeError, subprocess.SubprocessError):
            if attempt == CLUSTER_ATTEMPTS:
                raise
            continue
        try:
            yield started.cluster
        finally:
            started.stop()
        return


CLUSTER_ATTEMPTS = 3


class _Started:
    """The processes, proxies and directory of one cluster start, and how to stop them."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.proxies: dict[int, Proxy] = {}
        self.ports: list[int] = []
        self.cluster = Cluster(self.ports, self.proxies)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for proxy in self.proxies.values():
            proxy.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _start_cluster(masters: int, proxied: bool) -> _Started:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-server and redis-cli are needed to start a test cluster")
    started = _Started(tempfile.mkdtemp(prefix="analytics-cluster-"))
    ports, proxies = started.ports, started.proxies

    def node_args(port: int, proxy: Proxy | None) -> list[str]:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        if proxy is not None:
            args += ["--cluster-announce-port", str(proxy.port),
                     "--cluster-announce-bus-port", str(port + 10_000)]  # fmt: skip
        return args

    try:
        while len(ports) < masters:
            process, port, proxy = _start_redis(
                started.workdir, node_args, proxied=proxied, taken=ports
            )
            started.processes.append(process)
            ports.append(port)
            if proxy is not None:
                proxies[port] = proxy
        addresses = [proxies[p].port if proxied else p for p in ports]
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in addresses),
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
        for proxy in proxies.values():  # each proxy reaches its cluster node
            _wait_for(lambda p=proxy.port: _cluster_ok(cli, [p]), "a proxy reaches no node")
    except BaseException:
        started.stop()
        raise
    return started


@contextmanager
def redis_server(*args: str) -> Iterator[str]:
    """Start a private redis-server on a free loopback port with extra ``args`` (e.g.
    ``--maxmemory-policy volatile-lru``); yield its URL."""
    workdir = tempfile.mkdtemp(prefix="analytics-redis-")
    try:
        process, port, _ = _start_redis(workdir, lambda port, proxy: list(args))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
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
      instead of returning the reply (the server did the work; the client never hears);
    - ``stall = True``: keep connections open but forward nothing either way (a hung
      server: requests are never answered, and never run);
    - ``delay = seconds``: hold each reply that long before forwarding it (a slow server);
    - ``requests``: every chunk clients sent (``sent(b"EVALSHA")`` counts commands);
    - ``reply_bytes``: how many bytes the server sent back.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.refuse = False
        self.lose_next_reply = False
        self.stall = False
        self.delay = 0.0
        self.requests: list[bytes] = []
        self.reply_bytes = 0
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
                if request:
                    self.requests.append(data)
                else:
                    self.reply_bytes += len(data)
                if self.stall:
                    continue  # a hung server: nothing runs, nothing answers
                if not request and self.delay:
                    time.sleep(self.delay)  # a slow server
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

    def sent(self, marker: bytes) -> int:
        """How many request chunks contained ``marker`` (case-insensitive)."""
        marker = marker.lower()
        return sum(marker in chunk.lower() for chunk in list(self.requests))

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
        # shutdown() wakes the thread blocked in accept(): a plain close() leaves the socket
        # listening in the kernel until that call returns, so the port would keep
        # forwarding to the old target.
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
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
