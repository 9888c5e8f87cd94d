"""Store and sink URL options: a misspelled or malformed option is refused at configure()."""

from __future__ import annotations

import pytest

from analytics_sdk import Analytics, ConfigurationError
from analytics_sdk.backends import sink_from_url, store_from_url
from analytics_sdk.testing import ManualClock

from .utils import (
    delete_redis_prefix,
    drop_schema,
    postgres_url_or_skip,
    redis_url_or_skip,
    unique_name,
)

pytestmark = pytest.mark.services

# A working value for every redis-py option a plain redis:// URL accepts.
REDIS_SAMPLES = {
    "db": "0",
    "socket_timeout": "2",
    "socket_connect_timeout": "1.5",
    "socket_read_size": "65536",
    "socket_keepalive": "true",
    "retry_on_timeout": "false",
    "max_connections": "20",
    "health_check_interval": "0",
    "protocol": "2",
    "legacy_responses": "true",
    "client_name": "shop-web",
    "encoding": "utf-8",
    "encoding_errors": "strict",
    "username": "default",
    "password": "unused",
}
# the server has no password: AUTH would be refused, so these are only checked as kwargs
NEEDS_AUTH = {"username", "password"}


def test_a_misspelled_redis_option_is_refused_at_configure_listing_the_accepted_ones() -> None:
    url = redis_url_or_skip()
    with pytest.raises(ConfigurationError) as info:
        Analytics(store=f"{url}?socket_timout=2&prefix=x", background=False)
    text = str(info.value)
    assert "unknown option(s) socket_timout (did you mean socket_timeout?)" in text
    assert (
        "accepted: allow_eviction, cluster, prefix, shards, ttl; and the redis-py options " in text
    )
    for name in REDIS_SAMPLES:
        assert name in text


def test_the_redis_accepted_options_are_exactly_the_samples() -> None:
    from analytics_sdk.backends.redis import driver_url_options

    assert driver_url_options(tls=False, cluster=False) == set(REDIS_SAMPLES)
    tls = driver_url_options(tls=True, cluster=False)
    assert {"ssl_ca_certs", "ssl_cert_reqs", "ssl_check_hostname"} <= tls
    assert "timeout" not in tls


@pytest.mark.parametrize(("name", "value"), sorted(REDIS_SAMPLES.items()))
def test_every_accepted_redis_option_really_works(name: str, value: str) -> None:
    url = redis_url_or_skip()
    prefix = unique_name("opt")
    store = store_from_url(f"{url}?prefix={prefix}&{name}={value}", ManualClock().time)
    try:
        client = store._redis  # type: ignore[attr-defined]
        client.connection_pool.make_connection()  # a refused keyword raises TypeError here
        if name not in NEEDS_AUTH:
            assert client.ping()
    finally:
        store.close()
        delete_redis_prefix(url, prefix)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("timeout=2", "unknown option(s) timeout"),
        ("lib_name=x", "unknown option(s) lib_name"),
        ("retry_on_error=ConnectionError", "unknown option(s) retry_on_error"),
        ("ssl_ca_certs=/etc/ca.pem", "unknown option(s) ssl_ca_certs"),  # only for rediss://
        ("Prefix=x", "unknown option(s) Prefix (did you mean prefix?)"),
        (
            "socket_timeout=soon",
            "socket_timeout='soon' is not accepted by redis-py; accepted: a number",
        ),
        ("db=zero", "db='zero' is not accepted by redis-py; accepted: a number"),
        (
            "socket_keepalive=off",  # redis-py would read it as true
            "socket_keepalive='off' is not accepted by redis-py; accepted: true/false, yes/no",
        ),
        ("retry_on_timeout=maybe", "retry_on_timeout='maybe' is not accepted by redis-py"),
        ("cluster=maybe", "cluster='maybe' is not accepted; accepted: one of 1/0, true/false"),
    ],
)
def test_bad_redis_options_are_refused(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        store_from_url(f"redis://127.0.0.1:6379/0?{query}", ManualClock().time)
    assert message in str(info.value)


def test_tls_options_are_accepted_on_rediss() -> None:
    store = store_from_url(
        "rediss://127.0.0.1:1/0?ssl_cert_reqs=none&ssl_check_hostname=false", ManualClock().time
    )
    store.close()


def test_a_misspelled_postgres_option_is_refused_at_configure_listing_libpq_keywords() -> None:
    url = postgres_url_or_skip()
    with pytest.raises(ConfigurationError) as info:
        Analytics(sink=f"{url}?schema=x&sslmod=disable", background=False)
    text = str(info.value)
    assert "unknown option(s) sslmod (did you mean sslmode?)" in text
    assert "accepted: hourly_retention_days, ledger_retention_days, migrate, pool_max" in text
    assert "and the libpq options " in text
    for keyword in ("application_name", "connect_timeout", "sslmode", "target_session_attrs"):
        assert keyword in text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pool_maximum=3", "unknown option(s) pool_maximum (did you mean pool_max?)"),
        ("migrate=sometimes", "migrate='sometimes' is not accepted; accepted: one of 1/0"),
    ],
)
def test_bad_postgres_options_are_refused(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        sink_from_url(f"postgresql://u:hunter2@127.0.0.1/db?{query}", ManualClock().time)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


def test_libpq_options_in_the_url_reach_the_connection() -> None:
    url = postgres_url_or_skip()
    schema = unique_name("opt")
    sink = sink_from_url(
        f"{url}?schema={schema}&connect_timeout=3&sslmode=disable&application_name={schema}",
        ManualClock().time,
    )
    try:
        sink.migrate()  # type: ignore[attr-defined]
        with sink._get_pool().connection() as conn:  # type: ignore[attr-defined]
            row = conn.execute("SELECT current_setting('application_name')").fetchone()
        assert row == (schema,)
    finally:
        sink.close()
        drop_schema(url, schema)


@pytest.mark.parametrize("kind", ["store", "sink"])
def test_memory_urls_take_no_options(kind: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Analytics(**{kind: "memory://?prefix=x"}, background=False)  # type: ignore[arg-type]
    assert str(info.value).startswith(
        f"{kind} URL 'memory://?prefix=***': unknown option(s) prefix"
    )
    assert str(info.value).endswith("accepted: none")
