"""No credential in any repr, error, log line or metric: URL passwords, ?password= options,
libpq conninfo strings; checked against real connection failures on a closed local port."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from analytics_sdk import Analytics, Config, ConfigurationError, SinkError, StoreError
from analytics_sdk.backends import redact_url, sink_from_url, store_from_url
from analytics_sdk.cli import main
from analytics_sdk.testing import ManualClock

SECRET = "s3cretValue"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cretValue@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://h:6379/0?password=s3cretValue&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://h/0?password=s3cret%26Value", "redis://h/0?password=***"),
        ("rediss://h/0?ssl_password=s3cretValue", "rediss://h/0?ssl_password=***"),
        (
            "postgresql://app:s3cretValue@[::1]:5432/db?sslmode=require",
            "postgresql://app:***@[::1]:5432/db?sslmode=require",
        ),
        ("postgresql://app@db/app?password=s3cretValue", "postgresql://app@db/app?password=***"),
        (
            "postgresql://db/app?sslpassword=s3cretValue&oauth_client_secret=s3cretValue",
            "postgresql://db/app?sslpassword=***&oauth_client_secret=***",
        ),
        ("postgresql://db/app?PASSWORD=s3cretValue", "postgresql://db/app?PASSWORD=***"),
        ("host=db user=app password=s3cretValue", "host=db user=app password=***"),
        ("host=db password = 's3cret Value' dbname=x", "host=db password = *** dbname=x"),
        ("dbname=x password='it\\'s s3cretValue'", "dbname=x password=***"),
        ("memory://", "memory://"),
        (
            "postgresql:///app?host=/run/pg&password=s3cretValue",
            "postgresql:///app?host=/run/pg&password=***",
        ),
    ],
)
def test_redact_url_hides_every_form_of_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_reprs_of_client_and_config_hide_password_options() -> None:
    store = f"redis://127.0.0.1:{closed_port()}/0?password={SECRET}"
    sink = f"postgresql://app@127.0.0.1:{closed_port()}/db?password={SECRET}"
    config = Config.load({}, store=store, sink=sink, background=False, shutdown_timeout=0.5)
    assert SECRET not in repr(config)
    assert "password=***" in repr(config)
    with Analytics(config) as client:
        assert SECRET not in repr(client)
        assert repr(client).count("password=***") == 2


def test_a_conninfo_string_in_a_setting_or_variable_is_hidden_in_the_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Config.load({"ANALYTICS_SINK": f"host=db password={SECRET}"})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        Analytics(sink=f"host=db password={SECRET}", background=False)
    assert SECRET not in str(info.value)


def test_a_misspelled_password_option_is_hidden_in_the_unknown_option_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        store_from_url(f"redis://127.0.0.1/0?pasword={SECRET}", ManualClock().time)
    assert SECRET not in str(info.value)
    assert "pasword=***" in str(info.value)


def test_store_errors_flush_results_logs_and_the_shutdown_warning_hide_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = f"redis://127.0.0.1:{closed_port()}/0?password={SECRET}&socket_connect_timeout=0.5"
    client = Analytics(store=store, background=False, shutdown_timeout=0.5)
    client.track("signup")
    with pytest.raises(StoreError) as info:
        client.store.claim()
    assert "Connection refused" in str(info.value)  # a real driver failure
    assert SECRET not in str(info.value)
    result = client.flush(timeout=2)
    assert not result.complete
    assert result.error
    assert SECRET not in repr(result)
    client.shutdown(timeout=0.5)
    assert "could not take 1 counts at shutdown" in caplog.text  # and spooled them
    assert SECRET not in caplog.text
    assert client.scheduler.spool is not None
    spooled = client.scheduler.spool.files()
    assert len(spooled) == 1
    with open(spooled[0]) as f:
        assert SECRET not in f.read()
    assert SECRET not in generate_latest().decode()


def test_sink_errors_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/db?sslpassword={SECRET}"
    sink = sink_from_url(f"{url}&pool_timeout=0.5&connect_timeout=1", ManualClock().time)
    try:
        with pytest.raises(SinkError) as info:
            sink.migrate()  # type: ignore[attr-defined]
        assert SECRET not in str(info.value)
        assert "app:***@" in str(info.value)
    finally:
        sink.close()
    assert SECRET not in caplog.text


def test_a_driver_message_quoting_the_password_is_scrubbed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libpq quotes a malformed password in its error ('invalid percent-encoded token: "..."')
    password = "s3cret%zzValue"
    sink = sink_from_url(
        f"postgresql://app:{password}@127.0.0.1:{closed_port()}/db?pool_timeout=0.5",
        ManualClock().time,
    )
    import analytics_sdk.backends.postgres as postgres

    monkeypatch.setattr(postgres, "exiting", lambda: True)  # the exit path: a direct connection
    try:
        with pytest.raises(SinkError) as info:
            sink.migrate()  # type: ignore[attr-defined]
        text = str(info.value)
        assert "percent-encoded" in text  # the driver's own message, with the token hidden
        assert password not in text
        assert password not in repr(info.value)
    finally:
        sink.close()


def test_the_cli_error_hides_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://app@127.0.0.1:{closed_port()}/db?password={SECRET}&pool_timeout=0.5"
    with pytest.raises(SystemExit):
        main(["migrate", "--sink", url])
    captured = capsys.readouterr()
    assert "error" in captured.err
    assert SECRET not in captured.out + captured.err


def test_a_sink_built_from_a_conninfo_string_hides_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from analytics_sdk.backends.postgres import PostgresSink

    password = "s3cret%zzConninfo"  # quoted back by libpq: 'invalid percent-encoded token'
    sink = PostgresSink(
        f"postgresql://app:{password}@127.0.0.1:{closed_port()}/db", pool_timeout=0.5
    )
    try:
        assert password not in repr(sink)
        with pytest.raises(SinkError) as info:
            sink.migrate()
        assert "percent-encoded" in str(info.value)
        assert password not in str(info.value)
    finally:
        sink.close()
    conninfo = PostgresSink(f"host=127.0.0.1 port={closed_port()} password={SECRET}")
    assert SECRET not in repr(conninfo)
    conninfo.close()


def test_log_lines_of_ours_and_of_the_drivers_hide_remembered_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "s3cretLogged"
    sink = sink_from_url(f"postgresql://app:{password}@127.0.0.1:1/db", ManualClock().time)
    sink.close()
    caplog.set_level(logging.DEBUG)
    # what psycopg_pool logs while it retries: libpq's message, which may quote the password
    logging.getLogger("psycopg.pool").warning("error connecting: %s", f'token "{password}"')
    logging.getLogger("analytics_sdk").warning("flush failed: %s", password)
    try:
        raise ValueError(password)
    except ValueError:
        logging.getLogger("analytics_sdk.worker").exception("worker failed")
    mine = [
        r
        for r in caplog.records
        if r.getMessage().startswith(("error connecting: token", "flush failed", "worker failed"))
    ]
    assert len(mine) == 3
    for record in mine:
        text = logging.Formatter().format(record)
        assert password not in text
        assert "***" in text


def test_passwords_for_real_servers_appear_nowhere(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A Redis that requires a password and a PostgreSQL reached with ``?password=``: counts
    arrive; reprs, the real servers' refusals (a wrong password, a database that does not
    exist), log lines, the shutdown warning, the spool and /metrics never show the password."""
    import redis

    from analytics_sdk.prometheus import registry_for

    from .servers import redis_server
    from .utils import drop_schema, postgres_url_or_skip, skip_or_fail, unique_name

    caplog.set_level(logging.DEBUG)
    pg_url = postgres_url_or_skip()
    wrong = "wr0ngSecretValue"
    try:
        started = redis_server()
        redis_url = started.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a redis-server: {exc}")
        raise
    schema = unique_name("redact")
    try:
        with redis.Redis.from_url(redis_url) as admin:  # our own server: CONFIG is ours
            admin.config_set("requirepass", SECRET)
        store = f"{redis_url}?password={SECRET}&prefix={unique_name('redact')}"
        sink = f"{pg_url}?password={SECRET}&schema={schema}"  # trust auth: accepted
        clock = ManualClock()
        with Analytics(store=store, sink=sink, clock=clock, background=False) as client:
            client.track("signup", value=3)
            assert client.flush(timeout=30).complete
            assert client.count("signup") == 3  # the password was the right one
            assert SECRET not in repr(client) + repr(client.config)
            assert SECRET not in generate_latest(registry_for(client)).decode()

        refused = Analytics(
            store=f"{redis_url}?password={wrong}&socket_connect_timeout=2",
            sink=f"{pg_url.rsplit('/', 1)[0]}/no_such_db_{schema}?password={wrong}",
            background=False,
            shutdown_timeout=2,
            spool_dir=str(tmp_path),
        )
        refused.track("signup")
        with pytest.raises(StoreError) as store_error:
            refused.store.claim()
        assert "password" in str(store_error.value).lower()  # the server's own refusal
        with pytest.raises(SinkError) as sink_error:
            refused.sink.migrate()  # type: ignore[attr-defined]
        assert "does not exist" in str(sink_error.value)  # the server's own refusal
        result = refused.flush(timeout=5)
        assert not result.complete
        refused.shutdown(timeout=2)
        spooled = list(tmp_path.rglob("*"))
        assert any(p.is_file() for p in spooled)  # the store refused, so the buffer was spooled
        texts = [
            str(store_error.value),
            repr(store_error.value),
            str(sink_error.value),
            repr(sink_error.value),
            repr(result),
            repr(refused),
            caplog.text,
            generate_latest(registry_for(refused)).decode(),
            generate_latest().decode(),
            *(p.read_text(errors="replace") for p in spooled if p.is_file()),
        ]
        for text in texts:
            assert SECRET not in text
            assert wrong not in text
    finally:
        started.__exit__(None, None, None)
        drop_schema(pg_url, schema)
