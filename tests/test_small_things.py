"""The small things a newcomer meets: messages that name what they are about, one warning
per problem, a README that says what the numbers and the test command mean."""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analytics_sdk import Analytics
from analytics_sdk.cli import build_parser, main
from analytics_sdk.prometheus import start_http_server

from .utils import redis_and_postgres

ROOT = Path(__file__).resolve().parent.parent


def test_a_busy_metrics_port_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot serve /metrics on 127\.0\.0\.1:{port}: "):
            start_http_server(port)


def test_the_worker_on_a_busy_port_says_which(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(
                [
                    "worker",
                    "--store",
                    "memory://",
                    "--sink",
                    "memory://",
                    "--metrics-addr",
                    f"127.0.0.1:{port}",
                ]
            )
    assert info.value.code == 1
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in capsys.readouterr().err


def test_every_cli_option_with_a_default_shows_it() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, command in commands.items()
        for action in command._actions
        if action.option_strings
        and action.default not in (None, False, [], argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert missing == []
    assert "(default 30)" in commands["worker"].format_help()


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.parametrize(
    ("spool", "warning"),
    [
        ("None", "shutdown flush incomplete"),
        ("os.environ['ANALYTICS_SPOOL_DIR']", "the store could not take 1 counts at shutdown"),
    ],
)
def test_a_failed_shutdown_warns_once_not_again_at_exit(spool: str, warning: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    done = run_script(
        f"""
        import logging, os
        import analytics_sdk as analytics
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        analytics.configure(
            store="redis://127.0.0.1:{port}/0?socket_connect_timeout=0.5",
            shutdown_timeout=1,
            spool_dir={spool},
        )
        analytics.track("signup")
        assert not analytics.shutdown().complete
        """
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one warning, none repeated by the exit hook
    assert lines[0].startswith(f"WARNING {warning}"), done.stderr


def test_a_successful_shutdown_leaves_nothing_to_say_at_exit() -> None:
    with redis_and_postgres("exitmsg") as (store, sink):
        done = run_script(
            f"""
            import logging
            import analytics_sdk as analytics
            logging.basicConfig(level=logging.WARNING)
            analytics.configure(store={store!r}, sink={sink!r})
            analytics.track("signup")
            result = analytics.shutdown()
            assert result.complete and result.flushed == 1, result
            """
        )
    assert done.stderr == ""


def test_the_demo_reports_the_real_track_rate_and_says_what_its_own_rate_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from analytics_sdk.demo import track_rate

    assert track_rate(calls=1000) > 0
    assert main(["demo", "--seconds", "0.5", "--threads", "2", "--users", "10"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"track\(\) alone +[\d,]+ calls/s on one thread \([\d.]+ µs per call", out)
    assert "the rate above is the simulated application's" in out


def test_the_readme_promises_no_rate_the_demo_contradicts() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())  # wrapping aside
    assert "millions of calls per second" not in readme
    assert "in about half a microsecond" in readme


def test_the_readme_documents_every_variable_the_tests_read() -> None:
    readme = (ROOT / "README.md").read_text()
    read = set()
    for path in (ROOT / "tests").glob("*.py"):
        read |= set(re.findall(r"\"(ANALYTICS_(?:TEST_\w+|REQUIRE_SERVICES))\"", path.read_text()))
    assert {"ANALYTICS_TEST_REDIS_URL", "ANALYTICS_TEST_POSTGRES_URL"} <= read
    for variable in read:
        assert f"`{variable}`" in readme, variable
    assert "`redis://127.0.0.1:6379/0`" in readme
    assert "`postgresql://postgres@127.0.0.1:5432/test`" in readme


def test_every_troubleshooting_entry_has_a_cause_and_a_fix() -> None:
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert "troubleshooting.md" in (ROOT / "mkdocs.yml").read_text()
    entries = re.split(r"^### ", page, flags=re.M)[1:]
    assert len(entries) >= 20
    for entry in entries:
        title = entry.splitlines()[0]
        assert "**Cause.**" in entry, title
        assert "**Fix.**" in entry, title
    for message in (
        "unknown option(s)",
        "is not accepted; accepted:",
        "cannot serve /metrics on",
        "shutdown flush incomplete",
        "analytics-sdk-exact[redis]",
        "read failed: Timeout reading from socket",
        "read failed: DB index is out of range",
        "has maxmemory-policy <policy>: it may evict live counters",
        "set maxmemory-policy noeviction, or allow_eviction=true to only warn",
        "cannot read maxmemory-policy; it must be noeviction",
        "evicted <n> keys since this process started: counts may be lost",
        "the shard-count key {<prefix>}:meta was lost (evicted or deleted); restored",
        "hold counts or claims: it was lost (evicted, deleted or flushed)",
        "has no analytics counters under prefix '<prefix>'",
        "the buffer is full (max_buffered_keys=<n>, and the outbox holds as many) while the "
        "store is failing: dropped <n> counts since the last warning",
        "spool replay failed, retrying later; the spooled counts are kept",
        "cannot write to the spool <dir>: <reason>; counts stay in memory",
        "cannot read the spool <dir>: <reason>",
        "spool file <path> is unreadable (<reason>); set aside as <path>.corrupt",
    ):
        assert message in page, message


def test_the_exit_hook_leaves_a_client_shut_down_completely_alone() -> None:
    # Shut down completely, nothing tracked since: the exit hook (shutdown() again) calls
    # neither backend, so it cannot wait on one that went away or write a key back.
    from analytics_sdk.backends import MemoryCounterStore, MemorySink
    from analytics_sdk.process import _shutdown_all

    from .faults import Faults

    store, sink = MemoryCounterStore(), MemorySink()
    client = Analytics(store=store, sink=sink, background=False)
    client.track("signup")
    assert client.shutdown().complete
    calls = Faults(store).calls, Faults(sink).calls
    _shutdown_all()
    assert client.shutdown().complete
    assert calls == ({}, {})
    # A keyed call after shutdown() is pushed at once, and the next shutdown flushes it.
    client.track("webhook", dedupe_key="evt_1")
    assert client.shutdown().flushed == 1
    assert client.count("webhook") == 1
    assert calls[0]["claim_batches"] >= 1
