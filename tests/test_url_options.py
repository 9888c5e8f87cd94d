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
        ("db=zero", "db='zero' is not accepted by redis-py; accepted: an integer, 0 or more"),
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


@pytest.mark.parametrize(
    ("query", "accepted"),
    [
        ("max_connections=-1", "an integer, 1 or more"),
        ("max_connections=0", "an integer, 1 or more"),
        ("socket_timeout=-1", "a number more than 0"),
        ("socket_timeout=0", "a number more than 0"),
        ("socket_timeout=nan", "a number more than 0"),
        ("socket_connect_timeout=inf", "a number more than 0"),
        ("protocol=7", "one of 2, 3"),
        ("db=-1", "an integer, 0 or more"),
        ("socket_read_size=0", "an integer, 1 or more"),
        ("health_check_interval=-5", "an integer, 0 or more"),
        ("client_name=shop%20web", "text without spaces or special characters"),
        ("encoding=utf-9", "a Python codec name"),
        ("encoding_errors=loose", "strict, ignore, replace or another codec error handler"),
        ("socket_keepalive=2", "true/false, yes/no or 1/0"),
        ("legacy_responses=on", "true/false, yes/no or 1/0"),
    ],
)
def test_redis_option_values_the_driver_would_fail_on_are_refused_at_configure(
    query: str, accepted: str
) -> None:
    name, value = query.split("=")
    with pytest.raises(ConfigurationError) as info:
        Analytics(store=f"redis://127.0.0.1:6379/0?{query}", background=False)
    shown = value.replace("%20", " ")
    assert f"{name}={shown!r} is not accepted by redis-py; accepted: {accepted}" in str(info.value)


@pytest.mark.parametrize(
    ("query", "accepted"),
    [
        ("ssl_cert_reqs=maybe", "one of none, optional, required"),
        ("ssl_min_version=5", "a value of ssl.TLSVersion"),
        ("ssl_ciphers=NO-SUCH-CIPHER", "an OpenSSL cipher list"),
        ("ssl_check_hostname=sure", "true/false, yes/no or 1/0"),
    ],
)
def test_bad_tls_option_values_are_refused_on_rediss(query: str, accepted: str) -> None:
    name, value = query.split("=")
    with pytest.raises(ConfigurationError) as info:
        store_from_url(f"rediss://127.0.0.1:6379/0?{query}", ManualClock().time)
    assert f"{name}={value!r} is not accepted by redis-py; accepted: {accepted}" in str(info.value)


@pytest.mark.parametrize(
    ("query", "accepted"),
    [
        ("ttl=x", "an integer, 3600 or more"),
        ("ttl=60", "an integer, 3600 or more"),
        ("shards=0", "an integer from 1 to 1024"),
        ("shards=many", "an integer from 1 to 1024"),
    ],
)
def test_bad_redis_store_option_values_are_refused(query: str, accepted: str) -> None:
    name, value = query.split("=")
    with pytest.raises(ConfigurationError) as info:
        store_from_url(f"redis://127.0.0.1:6379/0?{query}", ManualClock().time)
    assert str(info.value).endswith(f"{name}={value!r} is not accepted; accepted: {accepted}")


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
        ("pool_timeout=0", "pool_timeout='0' is not accepted; accepted: a number more than 0"),
        ("pool_max=-1", "pool_max='-1' is not accepted; accepted: an integer, 1 or more"),
        (
            "statement_timeout=-5",
            "statement_timeout='-5' is not accepted; accepted: a number, 0 or more",
        ),
        (
            "ledger_retention_days=0",
            "ledger_retention_days='0' is not accepted; accepted: an integer, 1 or more",
        ),
    ],
)
def test_bad_postgres_options_are_refused(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        sink_from_url(f"postgresql://u:hunter2@127.0.0.1/db?{query}", ManualClock().time)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("query", "accepted"),
    [
        ("sslmode=bogus", "one of disable, allow, prefer, require, verify-ca, verify-full"),
        ("sslmode=REQUIRE", "one of disable, allow, prefer, require, verify-ca, verify-full"),
        ("connect_timeout=x", "an integer, 0 or more"),
        ("connect_timeout=-1", "an integer, 0 or more"),
        ("port=99999", "a comma-separated list of ports from 1 to 65535"),
        ("port=5432,x", "a comma-separated list of ports from 1 to 65535"),
        ("hostaddr=db.example.com", "a comma-separated list of IP addresses"),
        ("keepalives=yes", "one of 0, 1"),
        ("keepalives_idle=0", "an integer from 1 to 32767"),
        ("keepalives_interval=-1", "an integer from 1 to 32767"),
        ("keepalives_count=1000", "an integer from 1 to 127"),
        ("tcp_user_timeout=soon", "an integer, 0 or more"),
        ("ssl=false", "one of true"),
        ("sslnegotiation=tls", "one of postgres, direct"),
        ("sslcompression=true", "one of 0, 1"),
        ("sslsni=2", "one of 0, 1"),
        ("sslcertmode=always", "one of disable, allow, require"),
        ("ssl_min_protocol_version=TLSv1.4", "one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"),
        ("ssl_max_protocol_version=tls1.3", "one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"),
        ("min_protocol_version=3.1", "one of 3.0, 3.2, latest"),
        ("max_protocol_version=4", "one of 3.0, 3.2, latest"),
        ("channel_binding=always", "one of disable, prefer, require"),
        ("require_auth=scram", "a comma-separated list of password, md5, gss, sspi"),
        ("require_auth=!md5,password", "all or none of them negated with !"),
        ("gssencmode=on", "one of disable, prefer, require"),
        ("gssdelegation=yes", "one of 0, 1"),
        ("gsslib=kerberos", "one of gssapi, sspi"),
        ("target_session_attrs=master", "one of any, read-write, read-only, primary, standby"),
        ("load_balance_hosts=roundrobin", "one of disable, random"),
        ("replication=database", "one of 0, false, off, no"),
    ],
)
def test_libpq_option_values_it_would_refuse_at_connection_are_refused_at_configure(
    query: str, accepted: str
) -> None:
    name, value = query.split("=")
    with pytest.raises(ConfigurationError) as info:
        Analytics(sink=f"postgresql://u:hunter2@127.0.0.1/db?{query}", background=False)
    text = str(info.value)
    assert f"{name}={value!r} is not accepted by libpq; accepted: " in text
    assert accepted in text
    assert "hunter2" not in text


# Values the check accepts, each libpq keyword it covers: against the test server, each either
# connects or fails for a reason of that server (no TLS, not a standby...), never the value.
LIBPQ_ACCEPTED = {
    "port": ["5432"],
    "hostaddr": ["127.0.0.1"],
    "connect_timeout": ["0", "3"],
    "keepalives": ["0", "1"],
    "keepalives_idle": ["1", "30"],
    "keepalives_interval": ["10"],
    "keepalives_count": ["3"],
    "tcp_user_timeout": ["0", "1000"],
    "sslmode": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
    "ssl": ["true"],
    "sslnegotiation": ["postgres", "direct"],
    "sslcompression": ["0", "1"],
    "sslsni": ["0", "1"],
    "sslcertmode": ["disable", "allow", "require"],
    "ssl_min_protocol_version": ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"],
    "ssl_max_protocol_version": ["TLSv1.2", "TLSv1.3"],
    "min_protocol_version": ["3.0", "3.2", "latest"],
    "max_protocol_version": ["3.0", "3.2", "latest"],
    "channel_binding": ["disable", "prefer", "require"],
    "require_auth": ["password,md5,gss,sspi,scram-sha-256,none", "!password,!md5", "oauth"],
    "gssencmode": ["disable", "prefer", "require"],
    "gssdelegation": ["0", "1"],
    "gsslib": ["gssapi", "sspi"],
    "target_session_attrs": [
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ],
    "load_balance_hosts": ["disable", "random"],
    "replication": ["0", "false", "off", "no"],
}


def test_every_libpq_value_check_has_samples() -> None:
    from analytics_sdk.backends.postgres import _DRIVER_VALUES

    assert set(LIBPQ_ACCEPTED) == set(_DRIVER_VALUES)


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in LIBPQ_ACCEPTED.items() for value in values],
)
def test_libpq_takes_every_value_the_check_accepts(name: str, value: str) -> None:
    import psycopg

    url = postgres_url_or_skip()
    sink_from_url(f"{url}?{name}={value}", ManualClock().time).close()
    extra = "" if name == "connect_timeout" else "&connect_timeout=2"
    failure = ""
    try:
        psycopg.connect(f"{url}?{name}={value}{extra}").close()
    except psycopg.OperationalError as exc:
        failure = str(exc)
    # none, or the server's reasons: never libpq's refusal of the value
    assert "invalid" not in failure
    assert "setsockopt" not in failure


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
