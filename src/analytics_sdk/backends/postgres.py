"""PostgreSQL sink (``postgresql://``, ``postgres://``) on psycopg 3 and psycopg_pool.

A batch is applied in one transaction: insert its id into the ledger (a conflict means it
was applied already: do nothing), COPY its counters into temporary tables, then upsert them
with ``INSERT ... SELECT ... ORDER BY <primary key> ... ON CONFLICT DO UPDATE``. The ORDER BY
makes concurrent flushers lock rows in the same order, so they never deadlock.

Each ledger row records the transaction that applied it (``xact``): a query compares it with
a snapshot taken before it read the store, to learn which batches committed meanwhile. A
fenced read holds an exclusive advisory lock that every apply takes shared, so no batch
commits while it reads (see ``analytics_sdk.query``).
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError, SinkError, remember_secret
from ..keys import Properties, encode_properties
from ..process import exiting
from . import (
    OptionRule,
    check_option_values,
    check_url_options,
    each,
    floats,
    integers,
    one_of,
    redact_url,
    url_secrets,
)
from .base import (
    Batch,
    Bucket,
    NotOneStatement,
    PropertyValue,
    Retention,
    Sink,
    SinkSnapshot,
    range_index,
)

__all__ = [
    "PostgresSink",
    "build_first_days",
    "build_user_bitmaps",
    "create_partitions",
    "migrate",
    "partition_counts",
    "partitions",
]

DEFAULT_SCHEMA = "analytics"
_OPTIONS = {
    "schema",
    "pool_min",
    "pool_max",
    "pool_timeout",
    "statement_timeout",
    "migrate",
    "hourly_retention_days",
    "user_retention_days",
    "ledger_retention_days",
}
_MAINTAIN_EVERY = 3600.0
CONNECT_TIMEOUT = 2
"""Seconds a new connection may take, unless the URL sets ``connect_timeout``."""


def driver_url_options() -> set[str]:
    """Return the query options libpq accepts in a URL (its connection keywords)."""
    from psycopg import pq

    # "ssl=true" is libpq's URI spelling of sslmode=require
    return {o.keyword.decode() for o in pq.Conninfo.get_defaults()} | {"ssl"}


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _auth_methods(value: str) -> bool:
    methods = value.split(",")
    negated = {method.startswith("!") for method in methods}
    known = ("password", "md5", "gss", "sspi", "scram-sha-256", "oauth", "none")
    return len(negated) == 1 and all(method.lstrip("!") in known for method in methods)


_FLAG = one_of("0", "1")
_TLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_PROTOCOL = one_of("3.0", "3.2", "latest")
# What libpq would refuse only at the first connection (or, for a socket option, at every
# connection): refused at configure() instead. Options absent here are free text (user,
# options, application_name), names the server judges, or paths.
_DRIVER_VALUES: dict[str, OptionRule] = {
    "port": each(integers(1, 65535), "ports from 1 to 65535", blank=True),
    "hostaddr": each((_is_ip_address, ""), "IP addresses", blank=True),
    "connect_timeout": integers(0),
    "keepalives": _FLAG,
    # the kernel's ranges (Linux): a value outside fails setsockopt at every connection
    "keepalives_idle": integers(1, 32767),
    "keepalives_interval": integers(1, 32767),
    "keepalives_count": integers(1, 127),
    "tcp_user_timeout": integers(0),
    "sslmode": one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "ssl": one_of("true"),  # libpq's URI spelling of sslmode=require; no other value
    "sslnegotiation": one_of("postgres", "direct"),
    "sslcompression": _FLAG,
    "sslsni": _FLAG,
    "sslcertmode": one_of("disable", "allow", "require"),
    "ssl_min_protocol_version": one_of(*_TLS),
    "ssl_max_protocol_version": one_of(*_TLS),
    "min_protocol_version": _PROTOCOL,
    "max_protocol_version": _PROTOCOL,
    "channel_binding": one_of("disable", "prefer", "require"),
    "require_auth": (
        _auth_methods,
        "a comma-separated list of password, md5, gss, sspi, scram-sha-256, oauth, none, "
        "all or none of them negated with !",
    ),
    "gssencmode": one_of("disable", "prefer", "require"),
    "gssdelegation": _FLAG,
    "gsslib": one_of("gssapi", "sspi"),
    "target_session_attrs": one_of(
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby"
    ),
    "load_balance_hosts": one_of("disable", "random"),
    # the sink runs queries, which a replication connection refuses
    "replication": one_of("0", "false", "off", "no"),
}
_SECONDS: OptionRule = floats(0, above=True)
_DAYS: OptionRule = integers(1)
_OWN_VALUES: dict[str, OptionRule] = {
    "pool_min": integers(1),
    "pool_max": integers(1),
    "pool_timeout": _SECONDS,
    "statement_timeout": floats(0),  # 0: no limit, as in PostgreSQL
    "hourly_retention_days": _DAYS,
    "user_retention_days": _DAYS,
    "ledger_retention_days": _DAYS,
}


def _check_url(url: str, query: dict[str, str]) -> None:
    """Refuse unknown or malformed query options in a PostgreSQL URL."""
    from ..config import parse_bool

    check_url_options(url, "sink", query, _OPTIONS, "libpq", driver_url_options())
    check_option_values(url, "sink", query, _DRIVER_VALUES, "libpq")
    check_option_values(url, "sink", query, _OWN_VALUES)
    if "migrate" in query:
        try:
            parse_bool(query["migrate"])
        except ValueError as exc:
            raise ConfigurationError(
                f"sink URL {redact_url(url)!r}: migrate={query['migrate']!r} is not accepted; {exc}"
            ) from None


# Pools a forked child must never close: their sockets belong to the parent.
_INHERITED_POOLS: list[Any] = []


def migrations() -> list[tuple[int, str]]:
    """Return the shipped migrations as ``(version, SQL with {schema})``, oldest first."""
    folder = resources.files("analytics_sdk.backends") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def build_user_bitmaps(conn: Any, schema: str) -> int:
    """Number the users of ``schema``'s per-user rows and write the bitmaps of every (event,
    day) and day those rows hold, replacing what is there; return how many (event, day).

    Migration 3 runs this on the rows already stored; a bulk load of ``user_daily_counts``
    in SQL (bypassing :meth:`PostgresSink.apply`) needs it too. Run it in a transaction.
    """
    from psycopg import sql
    from pyroaring import BitMap

    s = sql.Identifier(schema)
    conn.execute(
        sql.SQL(
            "INSERT INTO {s}.user_numbers (user_id) SELECT DISTINCT user_id "
            "FROM {s}.user_daily_counts ORDER BY 1 ON CONFLICT (user_id) DO NOTHING"
        ).format(s=s)
    )
    conn.execute(sql.SQL("DELETE FROM {s}.event_day_users").format(s=s))
    conn.execute(sql.SQL("DELETE FROM {s}.day_users").format(s=s))
    insert = sql.SQL("INSERT INTO {s}.event_day_users (event, day, users) VALUES (%s, %s, %s)")
    days: dict[Any, BitMap] = {}
    chunk: list[tuple[str, Any, bytes]] = []
    written = 0
    with conn.cursor(name="analytics_user_bitmaps") as rows:  # streamed, not all in memory
        rows.execute(
            sql.SQL(
                "SELECT c.event, c.day, array_agg(n.number) FROM {s}.user_daily_counts c "
                "JOIN {s}.user_numbers n USING (user_id) GROUP BY 1, 2"
            ).format(s=s)
        )
        for event, day, numbers in rows:
            users = BitMap(numbers)
            chunk.append((event, day, users.serialize()))
            days.setdefault(day, BitMap()).update(users)
            if len(chunk) >= 500:
                conn.cursor().executemany(insert.format(s=s), chunk)
                written, chunk = written + len(chunk), []
        if chunk:
            conn.cursor().executemany(insert.format(s=s), chunk)
            written += len(chunk)
    conn.cursor().executemany(
        sql.SQL("INSERT INTO {s}.day_users (day, users) VALUES (%s, %s)").format(s=s),
        [(day, users.serialize()) for day, users in days.items()],
    )
    return written


def build_first_days(conn: Any, schema: str) -> int:
    """Write the first-day bitmaps of every event and of any event (``''``) from the day
    bitmaps stored, replacing what is there; return how many (event, day) rows.

    Migration 5 runs this; a bulk load run through :func:`build_user_bitmaps` needs it
    next. Run it in a transaction.
    """
    from psycopg import sql
    from pyroaring import BitMap

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("DELETE FROM {s}.first_day_users").format(s=s))
    conn.execute(sql.SQL("DELETE FROM {s}.ever_users").format(s=s))
    insert_first = sql.SQL(
        "INSERT INTO {s}.first_day_users (event, day, users) VALUES (%s, %s, %s)"
    ).format(s=s)
    insert_ever = sql.SQL("INSERT INTO {s}.ever_users (event, users) VALUES (%s, %s)").format(s=s)
    written = 0
    ever: dict[str, BitMap] = {}
    with conn.cursor(name="analytics_first_days") as rows:  # streamed, in day order
        rows.execute(
            sql.SQL(
                "SELECT event, day, users FROM {s}.event_day_users WHERE users <> '' "
                "UNION ALL SELECT '', day, users FROM {s}.day_users WHERE users <> '' "
                "ORDER BY 1, 2"
            ).format(s=s)
        )
        chunk: list[tuple[str, Any, bytes]] = []
        for event, day, stored in rows:
            seen = ever.setdefault(event, BitMap())
            new = BitMap.deserialize(stored) - seen
            if new:
                seen |= new
                new.run_optimize()
                chunk.append((event, day, new.serialize()))
            if len(chunk) >= 500:
                conn.cursor().executemany(insert_first, chunk)
                written, chunk = written + len(chunk), []
        if chunk:
            conn.cursor().executemany(insert_first, chunk)
            written += len(chunk)
    for users in ever.values():
        users.run_optimize()
    conn.cursor().executemany(insert_ever, [(e, u.serialize()) for e, u in ever.items()])
    return written


CHECK_AFTER_IDLE = 1.0
"""Seconds a connection may sit in the pool and be handed out again unchecked: one that came
back healthy this recently is used as it is; one idle longer is checked first (a server
restart or an idle timeout may have closed it)."""

PARTITIONED = (
    "hourly_counts",
    "user_daily_counts",
    "group_daily_counts",
    "group_user_daily_counts",
)
"""The tables partitioned by UTC month (migrations 4 and 6)."""
_EPOCH = date(1970, 1, 1)


def month_of(day: int) -> date:
    """Return the first day of the UTC month holding ``day`` (days since the epoch)."""
    return (_EPOCH + timedelta(days=day)).replace(day=1)


def next_month(month: date) -> date:
    """Return the first day of the month after ``month``'s."""
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partitions(conn: Any, schema: str, table: str) -> dict[date, str]:
    """Return the monthly partitions of ``schema.table`` as ``{first day: name}``."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))",
        [schema, table],
    ).fetchall()
    found = {}
    for (name,) in rows:
        suffix = name[len(table) + 1 :]
        if name.startswith(f"{table}_") and len(suffix) == 6 and suffix.isdigit():
            found[date(int(suffix[:4]), int(suffix[4:]), 1)] = name
    return found


def create_partitions(conn: Any, schema: str, table: str, months: Iterable[date]) -> list[date]:
    """Create the partitions of ``table`` for ``months`` (first days) that are missing;
    return the months created. Run in a transaction: it takes the schema's migration lock,
    so two processes never create the same partition."""
    from psycopg import sql

    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"analytics_sdk:{schema}"])
    missing = sorted(set(months) - partitions(conn, schema, table).keys())
    for month in missing:
        low: date | datetime = month
        high: date | datetime = next_month(month)
        if table == "hourly_counts":  # timestamptz bounds at UTC midnight
            low, high = (datetime(d.year, d.month, 1, tzinfo=timezone.utc) for d in (low, high))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {s}.{p} PARTITION OF {s}.{t} FOR VALUES FROM ({low}) TO ({high}) "
                "WITH (fillfactor = 70)"
            ).format(
                s=sql.Identifier(schema),
                p=sql.Identifier(f"{table}_{month:%Y%m}"),
                t=sql.Identifier(table),
                low=sql.Literal(low),
                high=sql.Literal(high),
            )
        )
    return missing


def partition_counts(conn: Any, schema: str) -> None:
    """Migration 4's copy: create the partitions of the months the old tables hold rows in
    (and of this month and the next), copy the rows, drop the old tables."""
    from psycopg import sql

    s = sql.Identifier(schema)
    this_month = datetime.now(timezone.utc).date().replace(day=1)
    for table, month in (
        ("hourly_counts", "date_trunc('month', hour AT TIME ZONE 'UTC')::date"),
        ("user_daily_counts", "date_trunc('month', day::timestamp)::date"),
    ):
        old = sql.Identifier(f"{table}_unpartitioned")
        query = sql.SQL(f"SELECT DISTINCT {month} FROM {{s}}.{{old}}").format(s=s, old=old)
        months = [row[0] for row in conn.execute(query)]
        create_partitions(conn, schema, table, [*months, this_month, next_month(this_month)])
        conn.execute(
            sql.SQL("INSERT INTO {s}.{t} SELECT * FROM {s}.{old}").format(
                s=s, t=sql.Identifier(table), old=old
            )
        )
        conn.execute(sql.SQL("DROP TABLE {s}.{old}").format(s=s, old=old))


# Steps of a migration done in Python, right after its SQL file, in its transaction.
_AFTER_SQL: dict[int, Callable[[Any, str], object]] = {
    3: build_user_bitmaps,
    4: partition_counts,
    5: build_first_days,
}


def migrate(conn: Any, schema: str, until: int | None = None) -> list[int]:
    """Apply the migrations ``conn``'s database lacks in ``schema`` (up to version
    ``until``, default all); return their versions.

    Idempotent and safe to run from several processes at once (an advisory lock serialises
    them). Commits.
    """
    from psycopg import sql

    ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"analytics_sdk:{schema}"])
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_version ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        row = conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(ident)
        ).fetchone()
        current = row[0] if row else 0
        applied = []
        for version, text in migrations():
            if version <= current or (until is not None and version > until):
                continue
            conn.execute(sql.SQL(text).format(schema=ident))  # the shipped migration files
            step = _AFTER_SQL.get(version)
            if step is not None:
                step(conn, schema)
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)").format(ident),
                [version],
            )
            applied.append(version)
    return applied


def _option(url: str, options: dict[str, str], name: str, kind: type, default: Any) -> Any:
    if name not in options:
        return default
    try:
        return kind(options[name])
    except ValueError:
        raise ConfigurationError(
            f"sink URL {redact_url(url)!r}: {name}={options[name]!r} is not accepted; "
            f"accepted: {'a number' if kind is float else 'an integer'}"
        ) from None


class PostgresSink(Sink):
    """A sink in PostgreSQL; see the module docstring and ``docs/backends/postgres.md``."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_min: int = 1,
        pool_max: int = 4,
        pool_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        application_name: str = "analytics_sdk",
        auto_migrate: bool = True,
        hourly_retention_days: int | None = None,
        user_retention_days: int | None = None,
        ledger_retention_days: int = 30,
        clock: Callable[[], float] = time.time,
        description: str | None = None,
    ) -> None:
        import psycopg

        if not schema or not schema.isprintable() or schema.lower().startswith("pg_"):
            raise ConfigurationError(
                f"schema {schema!r} is not accepted; accepted: printable text not starting "
                "with 'pg_' (reserved by PostgreSQL)"
            )
        for name, days in (
            ("hourly_retention_days", hourly_retention_days),
            ("user_retention_days", user_retention_days),
            ("ledger_retention_days", ledger_retention_days),
        ):
            if days is not None and (type(days) is not int or days < 1):
                raise ConfigurationError(f"{name}={days!r} is not accepted; accepted: an int >= 1")
        if not 1 <= pool_min <= pool_max:
            raise ConfigurationError(
                f"pool_min={pool_min}, pool_max={pool_max} are not accepted; accepted: 1 <= pool_min <= pool_max"
            )
        self._conninfo = conninfo
        self._errors: tuple[type[Exception], ...] = (psycopg.Error,)
        self.schema = schema
        self._pool_min, self._pool_max, self._pool_timeout = pool_min, pool_max, pool_timeout
        self.connections = pool_max
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._application_name = application_name
        self._auto_migrate = auto_migrate
        self.hourly_retention_days = hourly_retention_days
        self.user_retention_days = user_retention_days
        self.ledger_retention_days = ledger_retention_days
        self._clock = clock
        self._description = description or redact_url(conninfo)
        for secret in url_secrets(conninfo):  # a libpq message may quote it: errors hide it
            remember_secret(secret)
        self._migrated = False
        self._months: set[tuple[str, date]] = set()  # partitions known to exist
        self._next_maintenance = 0.0
        self._lock = threading.Lock()
        self._pool: Any = None
        self._returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._sql = statements(schema)

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], float] = time.time) -> PostgresSink:
        """Return a sink for a ``postgresql://`` (or ``postgres://``) URL.

        Query options: ``schema`` (default ``analytics``), ``pool_min`` / ``pool_max``,
        ``pool_timeout`` and ``statement_timeout`` (seconds), ``migrate`` (apply migrations
        on first use, default true), ``hourly_retention_days``, ``user_retention_days``,
        ``ledger_retention_days`` (default 30); the rest go to libpq (e.g.
        ``application_name``, ``sslmode``).
        """
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        _check_url(url, query)
        options = {k: query.pop(k) for k in list(query) if k in _OPTIONS}
        application_name = query.pop("application_name", "analytics_sdk")
        conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))
        return cls(
            conninfo,
            schema=options.get("schema", DEFAULT_SCHEMA),
            pool_min=_option(url, options, "pool_min", int, 1),
            pool_max=_option(url, options, "pool_max", int, 4),
            pool_timeout=_option(url, options, "pool_timeout", float, 10.0),
            statement_timeout=_option(url, options, "statement_timeout", float, 30.0),
            application_name=application_name,
            auto_migrate=options.get("migrate", "true").lower() not in ("0", "false", "no", "off"),
            hourly_retention_days=_option(url, options, "hourly_retention_days", int, None),
            user_retention_days=_option(url, options, "user_retention_days", int, None),
            ledger_retention_days=_option(url, options, "ledger_retention_days", int, 30),
            clock=clock,
            description=redact_url(url),
        )

    def __repr__(self) -> str:
        return f"PostgresSink({self._description!r}, schema={self.schema!r})"

    # -- connections ------------------------------------------------------------------------

    def _configure(self, conn: Any) -> None:
        # No JIT compilation: the range joins' row estimates are far too high (4.3M for the
        # 431,000 rows of a 90-day series in another time zone), so PostgreSQL compiled
        # them, which took longer than running them (500 ms instead of 180).
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), set_config('jit', 'off', false)",
            [str(self._statement_timeout_ms)],
        )

    def _connect_kwargs(self) -> dict[str, Any]:
        """Arguments of every new connection, pooled or direct.

        Every connection is in autocommit: a statement outside a transaction is one round
        trip and sees one committed state; writes and snapshots begin their transactions
        themselves (``conn.transaction()``, ``BEGIN``), so a connection is lent and given
        back as it is, with no mode to switch either way.
        """
        kwargs: dict[str, Any] = {"application_name": self._application_name, "autocommit": True}
        if "connect_timeout" not in self._conninfo:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT
        return kwargs

    def _get_pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                import psycopg
                from psycopg_pool import ConnectionPool

                # One direct connection first: a wrong host, database or password fails here
                # at once with libpq's reason, not after the pool's timeout with none.
                psycopg.connect(self._conninfo, **self._connect_kwargs()).close()
                self._pool = ConnectionPool(
                    self._conninfo,
                    kwargs=self._connect_kwargs(),
                    configure=self._configure,
                    check=self._check_if_idle,  # a terminated backend is replaced
                    open=False,
                    name=f"analytics_sdk:{self.schema}",
                    min_size=self._pool_min,
                    max_size=self._pool_max,
                    timeout=self._pool_timeout,
                )
                self._pool.open(wait=False)
            return self._pool

    def _note_returned(self, conn: Any) -> None:
        """Remember when ``conn`` came back to the pool (healthy: a broken one is dropped)."""
        self._returned[conn] = time.monotonic()

    def _idle_long(self, conn: Any) -> bool:
        """Whether ``conn`` has been idle in the pool long enough to be checked again."""
        return time.monotonic() - self._returned.get(conn, -CHECK_AFTER_IDLE) >= CHECK_AFTER_IDLE

    def _check_if_idle(self, conn: Any) -> None:
        """The pool's check of a connection it hands out, skipped for one that came back
        healthy within ``CHECK_AFTER_IDLE`` seconds (a round trip saved on every busy read)."""
        from psycopg_pool import ConnectionPool

        if self._idle_long(conn):
            ConnectionPool.check_connection(conn)

    @contextmanager
    def _direct(self) -> Iterator[Any]:
        """One connection of our own, closed after use: the pool starts threads, which
        Python 3.12 and later refuse at interpreter shutdown."""
        import psycopg

        with psycopg.connect(self._conninfo, **self._connect_kwargs()) as conn:
            self._configure(conn)
            yield conn

    @contextmanager
    def _borrow(self) -> Iterator[Any]:
        """A connection from the pool, or, once the exit flush has begun and no pool is
        open, a direct one (opening a pool would start threads)."""
        if self._pool is None and exiting():
            with self._direct() as conn:
                yield conn
            return
        # getconn() and putconn(), not the pool's connection(): that one also enters the
        # connection, whose exit commits (nothing to commit in autocommit) at a cost of its
        # own on every read. The pool rolls back a connection given back in a transaction
        # (none is: each is ended where it begins) and replaces a broken one.
        pool = self._get_pool()
        conn = pool.getconn()
        try:
            yield conn
        finally:
            # Noted here, not in a reset callback of the pool: with one, the pool hands
            # each returned connection to its worker thread, and the next borrower waits
            # for that thread. A broken connection is dropped by the pool all the same.
            self._note_returned(conn)
            pool.putconn(conn)

    @contextmanager
    def _connection(self, what: str, *, migrate_first: bool = True) -> Iterator[Any]:
        try:
            with self._borrow() as conn:
                if migrate_first and not self._migrated and self._auto_migrate:
                    migrate(conn, self.schema)
                    self._migrated = True
                yield conn
        except self._errors as exc:  # PoolTimeout is a psycopg.Error too
            raise SinkError(f"PostgreSQL {self._description} {what} failed: {exc}") from exc

    def for_asyncio(self) -> Sink:
        """Return a twin of this sink on psycopg's ``AsyncConnectionPool`` (same settings,
        same SQL), for the event loop that calls it."""
        from .aio import AsyncPostgresSink

        return AsyncPostgresSink(self)

    def migrate(self) -> list[int]:
        """Apply missing migrations now; return the versions applied."""
        with self._connection("migrate", migrate_first=False) as conn:
            applied = migrate(conn, self.schema)
            self._migrated = True
            return applied

    def check(self) -> None:
        with self._connection("connection check"):
            pass

    def check_readable(self) -> None:
        """Raise :class:`SinkError` unless the schema exists at this SDK's version; never
        creates or migrates anything, and queries after it never migrate either."""
        from psycopg import sql

        latest = migrations()[-1][0]
        self._auto_migrate = False
        with self._connection("schema check", migrate_first=False) as conn:
            table = sql.SQL("{}.schema_version").format(sql.Identifier(self.schema))
            row = conn.execute("SELECT to_regclass(%s)", [table.as_string(conn)]).fetchone()
            if row is None or row[0] is None:
                raise SinkError(
                    f"PostgreSQL {self._description} has no analytics schema {self.schema!r}: "
                    "check the URL's ?schema= (default 'analytics'), or create it with the "
                    "migrate command"
                )
            found = conn.execute(sql.SQL("SELECT max(version) FROM {}").format(table)).fetchone()
        version = found[0] if found else None
        if version is None or version < latest:
            raise SinkError(
                f"PostgreSQL {self._description} schema {self.schema!r} is at version "
                f"{version or 0}; this SDK reads version {latest}: run the migrate command"
            )

    # -- the protocol -----------------------------------------------------------------------

    def apply(self, batch: Batch) -> bool:
        months = {("hourly_counts", month_of(hour // 24)) for _, _, hour in batch.delta.hourly}
        months.update(("user_daily_counts", month_of(day)) for _, _, day in batch.delta.users)
        for *_, day in batch.delta.groups:
            month = month_of(day)
            months.add(("group_daily_counts", month))
            months.add(("group_user_daily_counts", month))
        try:
            if not months <= self._months:
                self._create_partitions(months)
            return self._apply(batch)
        except SinkError:
            self._months.clear()  # a partition dropped meanwhile: look again next time
            raise

    def _create_partitions(self, months: set[tuple[str, date]]) -> None:
        """Create the missing partitions of ``months`` ({(table, month)}) in a transaction
        of their own: creating one locks its table, briefly, not for a whole apply."""
        with self._connection("apply") as conn, conn.transaction():
            for table in PARTITIONED:
                wanted = [month for name, month in months if name == table]
                if wanted:
                    create_partitions(conn, self.schema, table, wanted)
        self._months |= months

    def _apply(self, batch: Batch) -> bool:
        with self._connection("apply") as conn, conn.transaction():
            conn.execute(self._sql["fence_shared"], [self._fence_key])  # a fenced read waits
            counters = batch.delta.keys
            claimed = conn.execute(self._sql["ledger_insert"], [batch.id, counters]).fetchone()
            if claimed is None:
                return False  # already in the ledger: applied by this or another flusher
            conn.execute("SET LOCAL work_mem = '64MB'")  # sort a large batch in memory
            if batch.delta.hourly:
                rows, sets = _hourly_rows(batch)
                keys = sorted(sets)
                conn.execute(self._sql["upsert_sets"], [keys, [sets[k] for k in keys]])
                conn.execute(self._sql["tmp_hourly"])
                with conn.cursor().copy(self._sql["copy_hourly"]) as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.execute(self._sql["upsert_hourly"])
                conn.execute(self._sql["upsert_daily"])
            if batch.delta.users:
                conn.execute(self._sql["tmp_users"])
                with conn.cursor().copy(self._sql["copy_users"]) as copy:
                    for (event, user_id, day), value in batch.delta.users.items():
                        copy.write_row((event, day, user_id, value))
                conn.execute(self._sql["upsert_users"])
                self._add_to_bitmaps(conn)
            if batch.delta.groups:
                conn.execute(self._sql["tmp_groups"])
                with conn.cursor().copy(self._sql["copy_groups"]) as copy:
                    for (event, kind, group, user, day), value in batch.delta.groups.items():
                        copy.write_row((event, kind, group, day, user or "", value))
                conn.execute(self._sql["upsert_groups"])
                conn.execute(self._sql["upsert_group_users"])
        self._maybe_maintain()
        return True

    def _add_to_bitmaps(self, conn: Any) -> None:
        """Number the batch's new users and add its users to the bitmaps of their (event,
        day) and day, in the apply's transaction (the ledger guards them like the counts)."""
        from pyroaring import BitMap

        # Only users without a number ask the sequence for one (ON CONFLICT would use one
        # per row), in user_id order: flushers numbering the same new users wait for each
        # other in the same order, and the loser's SELECT (a new statement, so a new
        # snapshot in READ COMMITTED) sees the winner's numbers.
        conn.execute(self._sql["number_users"])
        by_event: dict[tuple[str, int], BitMap] = {}
        by_day: dict[int, BitMap] = {}
        for event, day, numbers in conn.execute(self._sql["batch_numbers"]):
            users = BitMap(numbers)
            by_event[event, day] = users
            by_day.setdefault(day, BitMap()).update(users)
        events, event_days = (list(c) for c in zip(*sorted(by_event), strict=True))
        self._merge_bitmaps(conn, "event_day_users", [events, event_days], by_event)
        days = sorted(by_day)
        self._merge_bitmaps(conn, "day_users", [days], {(d,): by_day[d] for d in days})
        added: dict[str, dict[int, BitMap]] = {"": by_day}
        for (event, day), users in by_event.items():
            added.setdefault(event, {})[day] = users
        self._add_first_days(conn, added)

    def _add_first_days(self, conn: Any, added: dict[str, dict[int, Any]]) -> None:
        """Keep the first days of ``added``'s users ({event or '': {day: BitMap}}): users
        never seen start a cohort on their day; a user seen first on a later day (late
        data) moves to the earlier one. The event's ever row is locked first, so flushers
        adding to one event take turns; then its cohort rows from the batch's first day."""
        from pyroaring import BitMap

        events = sorted(added)
        conn.execute(self._sql["ever_users_create"], [events])
        ever = {
            event: BitMap.deserialize(stored) if stored else BitMap()
            for event, stored in conn.execute(self._sql["ever_users_lock"], [events])
        }
        first_days = [min(added[event]) for event in events]
        cohorts: dict[tuple[str, int], BitMap] = {
            (event, day): BitMap.deserialize(stored)
            for event, day, stored in conn.execute(
                self._sql["first_day_users_lock"], [events, first_days]
            )
        }
        changed: set[tuple[str, int]] = set()
        grown: list[str] = []
        for event in events:
            seen = ever[event]
            later = sorted(day for e, day in cohorts if e == event)
            for day in sorted(added[event]):
                users = added[event][day]
                returning = users & seen
                for other in (d for d in later if d > day) if returning else ():
                    moved = cohorts[event, other] & returning
                    if moved:  # seen first on a later day: that was not their first
                        cohorts[event, other] -= moved
                        cohorts.setdefault((event, day), BitMap()).update(moved)
                        changed.update(((event, other), (event, day)))
                new = users - seen
                if new:
                    seen |= new
                    cohorts.setdefault((event, day), BitMap()).update(new)
                    changed.add((event, day))
                    if not grown or grown[-1] != event:
                        grown.append(event)
        if grown:
            for event in grown:
                ever[event].run_optimize()
            conn.execute(
                self._sql["ever_users_update"], [grown, [ever[e].serialize() for e in grown]]
            )
        if changed:
            keys = sorted(changed)
            for key in keys:
                cohorts[key].run_optimize()
            conn.execute(
                self._sql["first_day_users_upsert"],
                [
                    [e for e, _ in keys],
                    [d for _, d in keys],
                    [cohorts[k].serialize() for k in keys],
                ],
            )

    def _merge_bitmaps(
        self, conn: Any, table: str, keys: list[list[Any]], added: dict[Any, Any]
    ) -> None:
        """OR ``added`` ({key tuple: BitMap}) into ``table``'s bitmaps, rows locked in key
        order; rows whose bitmap already holds every user are not written."""
        from pyroaring import BitMap

        # Rows exist (empty if new) before they are locked: two flushers adding the first
        # users of a day both lock the one row, instead of both inserting their own.
        conn.execute(self._sql[f"{table}_create"], keys)
        changed: list[tuple[Any, ...]] = []
        for *key, stored in conn.execute(self._sql[f"{table}_lock"], keys):
            users = BitMap.deserialize(stored) if stored else BitMap()
            new = added[tuple(key)]
            if not new.issubset(users):
                changed.append((*key, (users | new).serialize()))
        if changed:
            conn.execute(
                self._sql[f"{table}_update"], [list(c) for c in zip(*changed, strict=True)]
            )

    def applied(self, batch_ids: Iterable[str]) -> set[str]:
        ids = list(batch_ids)
        if not ids:
            return set()
        with self._connection("ledger read") as conn:
            return {row[0] for row in conn.execute(self._sql["ledger_select"], [ids])}

    # -- queries ----------------------------------------------------------------------------

    def _hourly_cutoff_day(self) -> int | None:
        """First day (since the epoch) still kept at hourly resolution, or None (all)."""
        if self.hourly_retention_days is None:
            return None
        return int(self._clock() // 86400) - self.hourly_retention_days

    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        with self._snapshot(fence=False, mark=False) as snapshot:
            return snapshot.hourly_counts(event, start, end, properties)

    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        with self._snapshot(fence=False, mark=False) as snapshot:
            return snapshot.user_counts(event, start, end, user_id)

    def event_totals(self) -> dict[str, int]:
        with self._snapshot(fence=False, mark=False) as snapshot:
            return snapshot.event_totals()

    def snapshot(self, *, fence: bool = False) -> AbstractContextManager[SinkSnapshot]:
        return self._snapshot(fence=fence, mark=True)

    @contextmanager
    def read_once(self) -> Iterator[SinkSnapshot]:
        # One statement in autocommit sees one committed state: no mark, no transaction,
        # one round trip.
        with self._connection("query") as conn:
            yield _PostgresSnapshot(self, conn, once=True)

    @contextmanager
    def _snapshot(self, *, fence: bool, mark: bool) -> Iterator[_PostgresSnapshot]:
        if fence:
            # One connection held throughout: a READ COMMITTED transaction that takes the
            # lock when entering; the reads' snapshots come after the lock is granted, and
            # nothing commits while it is held.
            with self._connection("query") as conn:
                snapshot = _PostgresSnapshot(self, conn)
                try:
                    snapshot.begin("BEGIN ISOLATION LEVEL READ COMMITTED")
                    conn.execute(self._sql["fence"], [self._fence_key])
                    yield snapshot
                    snapshot.end("COMMIT")
                finally:
                    with suppress(*self._errors):  # a broken connection: the pool replaces it
                        snapshot.end("ROLLBACK")
            return
        # The mark (a pg_current_snapshot(): of the whole server, whichever session takes
        # it) on a connection given back at once, so that none is held while the caller
        # reads the store; the first read then borrows one for a REPEATABLE READ transaction,
        # in pipeline mode: BEGIN, the ledger reads asked for ahead (will_ask) and the read
        # go in one round trip, COMMIT in another.
        entered = self._mark() if mark else None
        with ExitStack() as held:
            snapshot = _PostgresSnapshot(self, None, connect=lambda: self._hold(held))
            snapshot.entered = entered
            try:
                yield snapshot
                snapshot.end("COMMIT")
            finally:
                with suppress(*self._errors):  # a broken connection: the pool replaces it
                    snapshot.end("ROLLBACK")

    def _mark(self) -> str:
        """Return ``pg_current_snapshot()`` as text (autocommit: no transaction to end)."""
        with self._connection("query") as conn:
            row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
        return str(row[0])

    def _hold(self, held: ExitStack) -> Any:
        """Borrow a connection until ``held`` closes, in autocommit and pipeline mode."""
        conn = held.enter_context(self._connection("query"))
        held.enter_context(conn.pipeline())
        return conn

    @property
    def _fence_key(self) -> str:
        return f"analytics_sdk:fence:{self.schema}"

    # -- upkeep -----------------------------------------------------------------------------

    def _maybe_maintain(self) -> None:
        now = self._clock()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + _MAINTAIN_EVERY
        this_month = month_of(int(now // 86400))
        ahead = {(t, m) for t in PARTITIONED for m in (this_month, next_month(this_month))}
        import logging

        try:
            self.prune()
        except SinkError as exc:  # upkeep must never fail a flush that committed
            logging.getLogger("analytics_sdk").warning("retention pruning failed: %s", exc)
        try:
            if not ahead <= self._months:
                self._create_partitions(ahead)  # so that no flush waits to create them
        except SinkError as exc:
            logging.getLogger("analytics_sdk").warning("partition creation failed: %s", exc)

    def prune(self) -> dict[str, int]:
        """Drop or delete what is past its retention; return how many rows were deleted per
        table, and how many monthly partitions were dropped (``"<table> partitions"``).

        A month wholly past retention is dropped as one partition; the rows of the month
        the cutoff falls in are deleted (at most the days since that month began).
        """
        today = int(self._clock() // 86400)
        pruned = {}
        with self._connection("prune") as conn, conn.transaction():
            ledger_cutoff = datetime.fromtimestamp(self._clock(), timezone.utc) - timedelta(
                days=self.ledger_retention_days
            )
            pruned["flush_ledger"] = conn.execute(
                self._sql["prune_ledger"], [ledger_cutoff]
            ).rowcount
            for table, days in (
                ("hourly_counts", self.hourly_retention_days),
                ("user_daily_counts", self.user_retention_days),
                ("group_daily_counts", self.user_retention_days),
                ("group_user_daily_counts", self.user_retention_days),
            ):
                if days is None:
                    continue
                cutoff = _EPOCH + timedelta(days=today - days)
                dropped = 0
                for month, name in sorted(partitions(conn, self.schema, table).items()):
                    if next_month(month) <= cutoff:
                        conn.execute(
                            _drop_table(self.schema, name)  # the whole month is past
                        )
                        self._months.discard((table, month))
                        dropped += 1
                bound: date | datetime = cutoff
                if table == "hourly_counts":
                    bound = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=timezone.utc)
                # A custom plan (not prepared): the cutoff prunes the other partitions.
                pruned[table] = conn.execute(
                    self._sql[f"prune_{table}"], [bound], prepare=False
                ).rowcount
                pruned[f"{table} partitions"] = dropped
        return pruned

    def after_fork_in_child(self) -> None:
        # The parent's connections must not be closed from here: keep the pool alive, unused.
        if self._pool is not None:
            _INHERITED_POOLS.append(self._pool)
        self._pool = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=5.0)


class _PostgresSnapshot(SinkSnapshot):
    """Reads on the connection of :meth:`PostgresSink.snapshot`, in one transaction."""

    def __init__(
        self,
        sink: PostgresSink,
        conn: Any,
        *,
        once: bool = False,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self._sink = sink
        self._conn = conn
        self._connect = connect
        """Borrows the connection at the first statement, when ``conn`` is None."""
        self._asked_ids: frozenset[str] = frozenset()
        self._asked: dict[str, Any] = {}
        """The ledger reads sent ahead (:meth:`will_ask`): ``applied`` (of ``_asked_ids``)
        and ``since``, each a cursor until its rows are read, then a set of batch ids."""
        self._sql = sink._sql
        self._open = False
        self._once = once
        """Reads of :meth:`PostgresSink.read_once`: one statement, outside a transaction."""
        self._statements = 0
        self.entered: str | None = None
        """The snapshot taken when entering, or None (a fence, or no mark asked for)."""

    def begin(self, statement: str) -> None:
        """Open the transaction (the connection is in autocommit)."""
        if self._conn is None and self._connect is not None:
            self._conn = self._connect()
        self._conn.execute(statement)
        self._open = True

    def will_ask(self, batch_ids: Collection[str], *, since: bool) -> None:
        if self._once:
            return
        if not self._open:
            self.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # In pipeline mode these wait for no reply: it comes with the next read's.
        self._asked_ids = frozenset(batch_ids)
        if self._asked_ids:
            ids = list(self._asked_ids)
            self._asked["applied"] = self._conn.execute(self._sql["ledger_select"], [ids])
        if since and self.entered is not None:
            entered = {"entered": self.entered}
            self._asked["since"] = self._conn.execute(self._sql["ledger_since"], entered)

    def end(self, statement: str) -> None:
        """Close the transaction, if open."""
        if self._open:
            self._open = False
            self._conn.execute(statement)

    def _rows(self, name: str, params: Any, *, prepare: bool | None = None) -> Any:
        if self._once:
            self._statements += 1
            if self._statements > 1:
                raise NotOneStatement(name)
        elif not self._open:
            self.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # errors: see snapshot()
        return self._conn.execute(self._sql[name], params, prepare=prepare).fetchall()

    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        cutoff = self._sink._hourly_cutoff_day()
        wanted = json.dumps(dict(properties)) if properties else None
        low = start if cutoff is None else max(start or cutoff * 24, cutoff * 24)
        params: dict[str, Any] = {"event": event, "start": low, "end": end, "props": wanted}
        out: dict[int, int] = {}
        for hour, total in self._rows("query_hourly", params):
            out[int(hour)] = int(total)
        if cutoff is not None and (start is None or start < cutoff * 24):
            # Older than the hourly retention: daily totals, at each day's first hour.
            first_day = None if start is None else -(-start // 24)
            last_day = cutoff if end is None else min(cutoff, -(-end // 24))
            daily = {"event": event, "start": first_day, "end": last_day, "props": wanted}
            for day, total in self._rows("query_daily", daily):
                out[int(day) * 24] = out.get(int(day) * 24, 0) + int(total)
        return out

    def period_counts(
        self, event: str, bounds: Sequence[int | None], properties: Properties
    ) -> dict[int, int]:
        days, hours = _plan(bounds, self._sink._hourly_cutoff_day())
        wanted = json.dumps(dict(properties)) if properties else None
        out: dict[int, int] = {}
        # One row per period from each table: whole days from the rollup, the rest by hour.
        for name, ranges in (("periods_daily", days), ("periods_hourly", hours)):
            if len(ranges) == 1:
                # One range (a day, an hour, all time): one row (see _ONE_RANGE).
                i, low, high = ranges[0]
                params = {"event": event, "lo": low, "hi": high, "props": wanted}
                whole = name == "periods_daily" and (low, high) == (_BEFORE_ALL, _AFTER_ALL)
                statement = "periods_daily_all" if whole else f"{name}_one"
                if wanted:
                    statement = f"{statement}_props"
                for (total,) in self._rows(statement, params):
                    if total is not None:
                        out[i] = out.get(i, 0) + int(total)
            elif ranges and name == "periods_daily" and _span(ranges) <= MAX_DAY_SCAN:
                # Many whole days (a series by day, week or month): one range scan of the
                # rollup by day, each day summed into its period here (a few rows a period).
                period_of = {day: i for i, low, high in ranges for day in range(low, high)}
                first, last = min(period_of), max(period_of) + 1
                params = {"event": event, "start": first, "end": last, "props": wanted}
                for day, total in self._rows("query_daily", params):
                    into = period_of.get(int(day))
                    if into is not None:
                        out[into] = out.get(into, 0) + int(total)
            elif ranges:
                period, lows, highs = (list(column) for column in zip(*ranges, strict=True))
                params = {"event": event, "p": period, "lo": lows, "hi": highs, "props": wanted}
                # Planned for these ranges each time: a prepared statement's generic plan
                # does not know how many ranges the arrays hold, and scans the whole table.
                for i, total in self._rows(name, params, prepare=False):
                    out[i] = out.get(i, 0) + int(total)
        return out

    def property_counts(
        self,
        event: str,
        by: str,
        bounds: Sequence[int | None],
        properties: Properties,
        limit: int | None,
        keep: Collection[str],
    ) -> dict[tuple[PropertyValue, int], int]:
        way, params = self._property_rows(event, by, bounds, properties, limit, keep)
        out: dict[tuple[PropertyValue, int], int] = {}
        if way is None:
            return out
        # One row per (value, period); values neither ranked nor kept come summed (NULL).
        for value, absent, period, total in self._rows(
            f"property_periods{way}", params, prepare=False
        ):
            key = Bucket.NONE if absent else Bucket.OTHER if value is None else value
            out[key, period] = out.get((key, period), 0) + int(total)
        return out

    def top_values(
        self,
        event: str,
        by: str,
        start: int | None,
        end: int | None,
        properties: Properties,
        limit: int,
        keep: Collection[str],
    ) -> dict[str, int]:
        way, params = self._property_rows(event, by, [start, end], properties, limit, keep)
        if way is None:
            return {}
        name = f"top_values{way}_kept" if keep else f"top_values{way}"
        return {value: int(n) for value, n in self._rows(name, params, prepare=False)}

    def _property_rows(
        self,
        event: str,
        by: str,
        bounds: Sequence[int | None],
        properties: Properties,
        limit: int | None,
        keep: Collection[str],
    ) -> tuple[str | None, dict[str, Any]]:
        """Return how the rows of a statement by property value are read (a key of
        ``_PROPERTY_ROWS``; None: no range, nothing to read) and its parameters.

        These statements are never prepared, so each is planned for its ranges: a generic
        plan does not know how many ranges the arrays hold and scans the whole table, and
        even for one range (which PostgreSQL kept after five executions) cost 2.1 ms instead
        of 0.7 on a day of 200 property sets.
        """
        days, hours = _plan(bounds, self._sink._hourly_cutoff_day())
        params: dict[str, Any] = {
            "event": event,
            "by": by,
            "props": json.dumps(dict(properties)) if properties else None,
            "limit": limit,
            "keep": list(keep),
        }
        for prefix, ranges in (("d", days), ("h", hours)):
            columns = list(zip(*ranges, strict=True)) or [(), (), ()]
            for name, column in zip(("p", "lo", "hi"), columns, strict=True):
                params[prefix + name] = list(column)
        if not days and not hours:
            return None, params
        way = "" if days and hours else "_daily" if days else "_hourly"
        if len(days) + len(hours) == 1:
            way = f"{way}_one"
            params["p"], params["lo"], params["hi"] = (days or hours)[0]
        return way, params

    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        params = {"event": event, "start": start, "end": end, "user": user_id}
        if user_id is not None and start is not None and end is not None:
            # One user's days: a statement without optional filters, whose generic plan
            # (kept after five executions) is the custom one, so it is not planned again.
            rows = self._rows("user_count", params)
            return {} if rows[0][0] is None else {user_id: int(rows[0][0])}
        return {u: int(n) for u, n in self._rows("query_users", params)}

    def top_users(
        self, event: str, start: int, end: int, limit: int, users: Collection[str]
    ) -> dict[str, int]:
        params = {"event": event, "start": start, "end": end, "limit": limit}
        # One row per user and day: a single day needs no GROUP BY (a top-N sort only).
        ranked = "top_users_day" if end - start == 1 else "top_users"
        out = {u: int(n) for u, n in self._rows(ranked, params)} if limit else {}
        if users:
            params["users"] = list(users)
            out.update((u, int(n)) for u, n in self._rows("users_of", params))
        return out

    def distinct_users(self, event: str, start: int, end: int, exclude: Collection[str]) -> int:
        from pyroaring import BitMap

        # The union of the days' bitmaps (OR in Python: tens of kilobytes a day), less the
        # excluded users' numbers.
        params = {"event": event, "start": start, "end": end}
        days = [BitMap.deserialize(users) for (users,) in self._rows("day_bitmaps", params)]
        if not days:
            return 0
        users = BitMap.union(*days)
        if exclude:
            numbers = self._rows("numbers_of", {"users": list(exclude)})
            return len(users) - users.intersection_cardinality(BitMap(n for (n,) in numbers))
        return len(users)

    def group_counts(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> dict[str, int]:
        params = {"event": event, "type": group_type, "start": start, "end": end}
        params["group"] = group_id
        return {g: int(n) for g, n in self._rows("query_groups", params)}

    def top_groups(
        self, event: str, group_type: str, start: int, end: int, limit: int, groups: Collection[str]
    ) -> dict[str, int]:
        params: dict[str, Any] = {"event": event, "type": group_type, "start": start, "end": end}
        params["limit"] = limit
        out = {g: int(n) for g, n in self._rows("top_groups", params)} if limit else {}
        if groups:
            params["groups"] = list(groups)
            out.update((g, int(n)) for g, n in self._rows("groups_of", params))
        return out

    def distinct_groups(
        self, event: str, group_type: str, start: int, end: int, exclude: Collection[str]
    ) -> int:
        params = {"event": event, "type": group_type, "start": start, "end": end}
        rows = self._rows("distinct_groups", {**params, "exclude": list(exclude)})
        return int(next(iter(rows))[0])

    def _range_users(
        self, events: Collection[str] | None, ranges: Sequence[tuple[int, int]]
    ) -> list[Any]:
        """Return, for each range of days, the bitmap of the users with any of ``events``
        (any event if None) on a day in it."""
        from pyroaring import BitMap

        params: dict[str, Any] = {"start": ranges[0][0], "end": ranges[-1][1]}
        if events is None:
            rows = self._rows("any_days_users", params)
        else:
            rows = self._rows("event_days_users", {**params, "events": sorted(events)})
        days: list[list[Any]] = [[] for _ in ranges]
        for day, stored in rows:
            days[range_index(ranges, day)].append(BitMap.deserialize(stored))
        return [BitMap.union(*found) if found else BitMap() for found in days]

    def _numbers(self, users: Collection[str]) -> tuple[Any, dict[int, str]]:
        """Return the bitmap of ``users``' numbers and the user of each number."""
        from pyroaring import BitMap

        if not users:
            return BitMap(), {}
        found = dict(self._rows("user_numbers_of", {"users": list(users)}))
        return BitMap(found.values()), {number: user for user, number in found.items()}

    def active_users(
        self,
        events: Collection[str] | None,
        ranges: Sequence[tuple[int, int]],
        users: Collection[str],
        group: tuple[str, str] | None = None,
    ) -> tuple[list[int], dict[str, set[int]]]:
        if group is not None:
            return self._group_active_users(events, ranges, set(users), group)
        numbers, user_of = self._numbers(users)
        counts: list[int] = []
        members: dict[str, set[int]] = {}
        for i, active in enumerate(self._range_users(events, ranges)):
            counts.append(len(active) - active.intersection_cardinality(numbers))
            for number in active & numbers if numbers else ():
                members.setdefault(user_of[number], set()).add(i)
        return counts, members

    def _group_active_users(
        self,
        events: Collection[str] | None,
        ranges: Sequence[tuple[int, int]],
        excluded: set[str],
        group: tuple[str, str],
    ) -> tuple[list[int], dict[str, set[int]]]:
        """:meth:`active_users` of one group: its users' days from its per-group rows (a
        group has few users next to a product: one row per user and active day)."""
        params = {
            "type": group[0],
            "id": group[1],
            "events": None if events is None else sorted(events),
            "start": ranges[0][0],
            "end": ranges[-1][1],
        }
        active: list[set[str]] = [set() for _ in ranges]
        members: dict[str, set[int]] = {}
        for user, day in self._rows("group_user_days", params):
            i = range_index(ranges, day)
            if user in excluded:
                members.setdefault(user, set()).add(i)
            else:
                active[i].add(user)
        return [len(found) for found in active], members

    def retention(
        self,
        cohort_event: str | None,
        return_event: str | None,
        ranges: Sequence[tuple[int, int]],
        cohorts: int,
        users: Collection[str],
    ) -> Retention:
        from pyroaring import BitMap

        key = cohort_event or ""  # '' holds the first days of any event
        numbers, user_of = self._numbers(users)
        cohort_end = ranges[cohorts - 1][1]
        params = {"event": key, "start": ranges[0][0], "end": cohort_end}
        days: list[list[Any]] = [[] for _ in range(cohorts)]
        for day, stored in self._rows("first_days_users", params):
            days[range_index(ranges, day)].append(BitMap.deserialize(stored))
        groups = [BitMap.union(*found) if found else BitMap() for found in days]
        back = None if return_event is None else [return_event]
        returned = self._range_users(back, ranges)
        periods = len(ranges) - cohorts + 1
        in_cohorts = BitMap.union(*groups) & numbers if numbers else BitMap()
        sizes: list[int] = []
        retained: list[list[int]] = []
        first: dict[str, int] = {}
        for c, group in enumerate(groups):
            if numbers:
                first.update((user_of[n], c) for n in group & numbers)
                group -= numbers
            sizes.append(len(group))
            retained.append(
                [group.intersection_cardinality(returned[c + k]) for k in range(periods)]
            )
        if numbers:
            # Users asked about seen before the first cohort: ever, but neither in a cohort
            # nor first seen after the cohorts.
            rows = self._rows("ever_users_of", {"event": key})
            ever = BitMap.deserialize(rows[0][0]) if rows and rows[0][0] else BitMap()
            later = {"event": key, "start": cohort_end, "end": None}
            after = [BitMap.deserialize(u) for _, u in self._rows("first_days_users", later)]
            before = (ever & numbers) - in_cohorts - BitMap.union(BitMap(), *after)
            first.update((user_of[n], -1) for n in before)
        returns: dict[str, set[int]] = {}
        for j, active in enumerate(returned):
            for number in active & numbers if numbers else ():
                returns.setdefault(user_of[number], set()).add(j)
        return Retention(sizes=sizes, retained=retained, first=first, returns=returns)

    def event_totals(self) -> dict[str, int]:
        return {event: int(n) for event, n in self._rows("event_totals", None)}

    def applied(self, batch_ids: Iterable[str]) -> set[str]:
        ids = list(batch_ids)
        if not ids:
            return set()
        if "applied" in self._asked and self._asked_ids.issuperset(ids):
            return self._answer("applied") & set(ids)
        return {row[0] for row in self._rows("ledger_select", [ids])}

    def _answer(self, read: str) -> set[str]:
        """The batch ids of a ledger read sent ahead by :meth:`will_ask`."""
        found = self._asked[read]
        if not isinstance(found, set):
            found = self._asked[read] = {row[0] for row in found.fetchall()}
        return set(found)

    def committed_since_entered(self) -> set[str]:
        if self.entered is None:  # behind the fence nothing commits
            return set()
        if "since" in self._asked:
            return self._answer("since")
        return {row[0] for row in self._rows("ledger_since", {"entered": self.entered})}


MAX_DAY_SCAN = 3_700
"""Widest span of days (about ten years) a read of many whole-day periods scans by day; a
wider one joins its ranges instead."""


def _span(ranges: Sequence[tuple[int, int, int]]) -> int:
    """Days from the first range's start to the last one's end (ranges of days)."""
    return max(high for _, _, high in ranges) - min(low for _, low, _ in ranges)


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, as ``psycopg.sql.Identifier`` writes it."""
    return '"' + name.replace('"', '""') + '"'


def statements(schema: str) -> dict[str, str]:
    """The sink's SQL statements for ``schema``, as plain strings: psycopg converts a
    composed query to text at every execution (about 70 µs), a string once (it caches the
    conversion)."""
    s = quote_identifier(schema)
    return {name: text.format(s=s) for name, text in _STATEMENTS.items()}


def _drop_table(schema: str, name: str) -> Any:
    """Return ``DROP TABLE schema.name`` with both names quoted."""
    from psycopg import sql

    return sql.SQL("DROP TABLE {}.{}").format(sql.Identifier(schema), sql.Identifier(name))


_BEFORE_ALL, _AFTER_ALL = -2_000_000, 3_000_000
"""Days from the epoch before and after any stored day (3506 BC, 10183 AD, both dates in
PostgreSQL): the ends of an unbounded range."""


def _plan(
    bounds: Sequence[int | None], cutoff: int | None
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Split periods ``[bounds[i], bounds[i + 1])`` into ranges ``(period, low, high)`` of
    whole UTC days (read from ``daily_counts``) and of hours (``hourly_counts``).

    With hourly retention, hours before the ``cutoff`` day are gone (or going): there, as
    :meth:`PostgresSink.hourly_counts` does, a day counts whole when its first hour is in
    the period.
    """
    days: list[tuple[int, int, int]] = []
    hours: list[tuple[int, int, int]] = []
    for period, (start, end) in enumerate(pairwise(bounds)):
        first = _BEFORE_ALL if start is None else -(-start // 24)  # the first whole day
        last = _AFTER_ALL if end is None else end // 24  # the day after the last whole day
        edges: list[tuple[int | None, int | None]]
        if first >= last:
            edges = [(start, end)]
        else:
            days.append((period, first, last))
            edges = [(start, first * 24), (last * 24, end)]
        for low, high in edges:
            if low is None or high is None or low >= high:
                continue
            if cutoff is not None and low < cutoff * 24:
                # The days starting in [low, min(high, cutoff hour)) come from the rollup.
                whole = (-(-low // 24), -(-min(high, cutoff * 24) // 24))
                if whole[0] < whole[1]:
                    days.append((period, *whole))
                low = cutoff * 24
            if low < high:
                hours.append((period, low, high))
    return days, hours


def _hourly_rows(batch: Batch) -> tuple[list[tuple[str, int, str, int]], dict[str, str]]:
    """Return rows ``(event, hour, props_key, count)`` and the batch's property sets as
    ``{props_key: properties JSON}``, each set encoded once."""
    keys: dict[Properties, str] = {}
    sets: dict[str, str] = {}
    rows = []
    for (event, properties, hour), value in batch.delta.hourly.items():
        key = keys.get(properties)
        if key is None:
            key = keys[properties] = encode_properties(properties)
            sets[key] = json.dumps(dict(properties))
        rows.append((event, hour, key, value))
    return rows, sets


# Rows whose property set contains the filter (the GIN index on property_sets finds them).
_MATCHING_SETS = (
    "(%(props)s::jsonb IS NULL OR props_hash IN "
    "(SELECT props_hash FROM {s}.property_sets WHERE properties @> %(props)s::jsonb))"
)

# Counter rows with their period, from ranges (period, low, high) as in periods_daily and
# periods_hourly.
_DAILY_SETS = (
    "SELECT c.props_hash, d.p, c.count AS n "
    "FROM unnest(%(dp)s::integer[], %(dlo)s::integer[], %(dhi)s::integer[]) AS d (p, lo, hi) "
    "JOIN {s}.daily_counts c ON c.event = %(event)s "
    "AND c.day >= date '1970-01-01' + d.lo AND c.day < date '1970-01-01' + d.hi"
)
_HOURLY_SETS = (
    "SELECT c.props_hash, h.p, c.count AS n "
    "FROM unnest(%(hp)s::integer[], %(hlo)s::bigint[], %(hhi)s::bigint[]) AS h (p, lo, hi) "
    "JOIN {s}.hourly_counts c ON c.event = %(event)s "
    "AND c.hour >= to_timestamp(h.lo * 3600) AND c.hour < to_timestamp(h.hi * 3600)"
)
# Each row's property value read through its set and summed by (value, period). The
# %(limit)s values with the highest totals (NULL: all) and those in %(keep)s come on their
# own; the other values' counts are summed with value NULL, apart from the sets without the
# property (absent).
_SETS_OF_R = (
    "FROM r JOIN {s}.property_sets s ON s.props_hash = r.props_hash "
    "WHERE %(props)s::jsonb IS NULL OR s.properties @> %(props)s::jsonb "
)
_PROPERTY_PERIODS = (
    "), v AS ("
    f"SELECT s.properties ->> %(by)s::text AS value, r.p, sum(r.n) AS n {_SETS_OF_R}"
    "GROUP BY 1, 2"
    "), listed AS ("
    "SELECT value FROM v WHERE value IS NOT NULL GROUP BY value "
    'ORDER BY sum(n) DESC, value COLLATE "C" LIMIT %(limit)s::bigint'
    ") "
    "SELECT CASE WHEN l.value IS NOT NULL OR v.value = ANY(%(keep)s::text[]) "
    "THEN v.value END, v.value IS NULL, v.p, sum(v.n) "
    "FROM v LEFT JOIN listed l ON l.value = v.value "
    "GROUP BY 1, 2, 3"
)
# The same for one period (%(p)s): the values are summed once, ranked without summing them
# again, and the rest summed in one pass (measured on a day of 200 property sets: 0.8 ms
# against 1.1 for _PROPERTY_PERIODS, whose three aggregations serve any number of periods).
_PROPERTY_PERIOD = (
    "), v AS ("
    f"SELECT s.properties ->> %(by)s::text AS value, sum(r.n) AS n {_SETS_OF_R}"
    "GROUP BY 1"
    "), listed AS ("
    "SELECT value FROM v WHERE value IS NOT NULL "
    'ORDER BY n DESC, value COLLATE "C" LIMIT %(limit)s::bigint'
    ") "
    "SELECT CASE WHEN v.value IN (SELECT value FROM listed) OR v.value = ANY(%(keep)s::text[]) "
    "THEN v.value END, v.value IS NULL, %(p)s::integer, sum(v.n) "
    "FROM v GROUP BY 1, 2"
)
# The totals (value, n) of the %(limit)s values with the most, as the hand-written top-N is:
# no other values summed, no sets without the property (their value is NULL). With
# _KEPT, the values in %(keep)s besides (a value in both comes once: UNION).
_VALUE_TOTALS = (
    "), v AS ("
    f"SELECT s.properties ->> %(by)s::text AS value, sum(r.n) AS n {_SETS_OF_R}"
    "GROUP BY 1"
    ") "
)
_TOP = (
    'SELECT value, n FROM v WHERE value IS NOT NULL ORDER BY n DESC, value COLLATE "C" '
    "LIMIT %(limit)s::bigint"
)
_TOP_VALUES = f"{_VALUE_TOTALS}{_TOP}"
_TOP_VALUES_KEPT = (
    f"{_VALUE_TOTALS}({_TOP}) UNION SELECT value, n FROM v WHERE value = ANY(%(keep)s::text[])"
)

# One range's sum (one row: NULL when nothing matched): a day, an hour, all time; with a
# property filter, a statement of its own. Prepared: PostgreSQL keeps a generic plan after
# five executions, and these are written so that it is the plan of their parameters (an
# index range scan), not planned again at every call (0.06 ms of a 0.2 ms count). Without
# a filter no condition is evaluated for each row (all time was 5.5 ms with bounds and
# `$props IS NULL OR ...`, 3.9 without). The filter keeps its `IS NULL OR` form: the sets
# are then a hashed subplan that filters the day's rows (0.12 ms), where a plain `IN` was
# a join whose generic plan, not knowing how many sets match, joined them to the rows one
# by one (0.73 ms).
_ONE_RANGE = {
    "periods_daily_one": (
        "daily_counts",
        "day >= date '1970-01-01' + %(lo)s::integer AND day < date '1970-01-01' + %(hi)s::integer",
    ),
    "periods_hourly_one": (
        "hourly_counts",
        "hour >= to_timestamp(%(lo)s::bigint * 3600) AND hour < to_timestamp(%(hi)s::bigint * 3600)",
    ),
    "periods_daily_all": ("daily_counts", ""),
}


def _one_range(table_and_range: tuple[str, str], props: str) -> str:
    table, where = table_and_range
    conditions = " AND ".join(c for c in ("event = %(event)s", where, props) if c)
    return f"SELECT sum(count) FROM {{s}}.{table} WHERE {conditions}"


# The counter rows (props_hash, n) of the statements by property value: whole days from
# the rollup, the rest by hour, in one statement for each way the ranges come, so that no
# empty range list is joined (its plan assumes a large range: a parallel scan, 50 ms to
# start). Several ranges come as arrays (their rows with their period, p); one range only
# (a day, an hour) as scalars %(lo)s and %(hi)s.
_PROPERTY_ROWS = {
    "": f"{_DAILY_SETS} UNION ALL {_HOURLY_SETS}",
    "_daily": _DAILY_SETS,
    "_hourly": _HOURLY_SETS,
    "_daily_one": (
        "SELECT props_hash, count AS n FROM {s}.daily_counts "
        "WHERE event = %(event)s AND day >= date '1970-01-01' + %(lo)s::integer "
        "AND day < date '1970-01-01' + %(hi)s::integer"
    ),
    "_hourly_one": (
        "SELECT props_hash, count AS n FROM {s}.hourly_counts "
        "WHERE event = %(event)s AND hour >= to_timestamp(%(lo)s::bigint * 3600) "
        "AND hour < to_timestamp(%(hi)s::bigint * 3600)"
    ),
}

_STATEMENTS = {
    "ledger_insert": (
        "INSERT INTO {s}.flush_ledger (batch_id, counters, xact) "
        "VALUES (%s, %s, pg_current_xact_id()) "
        "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id"
    ),
    "ledger_select": "SELECT batch_id FROM {s}.flush_ledger WHERE batch_id = ANY(%s)",
    # Batches whose transaction had not committed when the entering snapshot was taken.
    "ledger_since": (
        "SELECT batch_id FROM {s}.flush_ledger "
        "WHERE xact >= pg_snapshot_xmin(%(entered)s::pg_snapshot) "
        "AND NOT pg_visible_in_snapshot(xact, %(entered)s::pg_snapshot)"
    ),
    "fence": "SELECT pg_advisory_xact_lock(hashtext(%s))",
    "fence_shared": "SELECT pg_advisory_xact_lock_shared(hashtext(%s))",
    "upsert_sets": (
        "INSERT INTO {s}.property_sets (props_hash, properties) "
        "SELECT md5(k)::uuid, p::jsonb FROM unnest(%s::text[], %s::text[]) AS u (k, p) ORDER BY 1 "
        "ON CONFLICT (props_hash) DO NOTHING"
    ),
    "tmp_hourly": (
        "CREATE TEMP TABLE analytics_tmp_hourly (event text, hour bigint, props_key text, "
        "count bigint) ON COMMIT DROP"
    ),
    "copy_hourly": "COPY analytics_tmp_hourly (event, hour, props_key, count) FROM STDIN",
    "upsert_hourly": (
        "INSERT INTO {s}.hourly_counts AS t (event, hour, props_hash, count) "
        "SELECT event, to_timestamp(hour * 3600), md5(props_key)::uuid, count "
        "FROM analytics_tmp_hourly ORDER BY 1, 2, 3 "
        "ON CONFLICT (event, hour, props_hash) DO UPDATE SET count = t.count + EXCLUDED.count"
    ),
    "upsert_daily": (
        "INSERT INTO {s}.daily_counts AS t (event, day, props_hash, count) "
        "SELECT event, date '1970-01-01' + floor(hour / 24.0)::integer, md5(props_key)::uuid, "
        "sum(count) FROM analytics_tmp_hourly GROUP BY 1, 2, props_key ORDER BY 1, 2, 3 "
        "ON CONFLICT (event, day, props_hash) DO UPDATE SET count = t.count + EXCLUDED.count"
    ),
    "tmp_users": (
        "CREATE TEMP TABLE analytics_tmp_users (event text, day integer, user_id text, "
        "count bigint) ON COMMIT DROP"
    ),
    "copy_users": "COPY analytics_tmp_users (event, day, user_id, count) FROM STDIN",
    "upsert_users": (
        "INSERT INTO {s}.user_daily_counts AS t (event, day, user_id, count) "
        "SELECT event, date '1970-01-01' + day, user_id, count "
        "FROM analytics_tmp_users ORDER BY 1, 2, 3 "
        "ON CONFLICT (event, day, user_id) DO UPDATE SET count = t.count + EXCLUDED.count"
    ),
    "tmp_groups": (
        "CREATE TEMP TABLE analytics_tmp_groups (event text, group_type text, group_id text, "
        "day integer, user_id text, count bigint) ON COMMIT DROP"
    ),
    "copy_groups": (
        "COPY analytics_tmp_groups (event, group_type, group_id, day, user_id, count) FROM STDIN"
    ),
    "upsert_groups": (
        "INSERT INTO {s}.group_daily_counts AS t (event, group_type, day, group_id, count) "
        "SELECT event, group_type, date '1970-01-01' + day, group_id, sum(count) "
        "FROM analytics_tmp_groups GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
        "ON CONFLICT (event, group_type, day, group_id) "
        "DO UPDATE SET count = t.count + EXCLUDED.count"
    ),
    "upsert_group_users": (
        "INSERT INTO {s}.group_user_daily_counts AS t "
        "(event, group_type, group_id, day, user_id, count) "
        "SELECT event, group_type, group_id, date '1970-01-01' + day, user_id, count "
        "FROM analytics_tmp_groups ORDER BY 1, 2, 3, 4, 5 "
        "ON CONFLICT (event, group_type, group_id, day, user_id) "
        "DO UPDATE SET count = t.count + EXCLUDED.count"
    ),
    "query_groups": (
        "SELECT group_id, sum(count) FROM {s}.group_daily_counts "
        "WHERE event = %(event)s AND group_type = %(type)s "
        "AND (%(start)s::integer IS NULL OR day >= date '1970-01-01' + %(start)s::integer) "
        "AND (%(end)s::integer IS NULL OR day < date '1970-01-01' + %(end)s::integer) "
        "AND (%(group)s::text IS NULL OR group_id = %(group)s::text) "
        "GROUP BY group_id"
    ),
    # Ranked in SQL; ties by code point (COLLATE "C"), as Python orders str.
    "top_groups": (
        "SELECT group_id, sum(count) AS n FROM {s}.group_daily_counts "
        "WHERE event = %(event)s AND group_type = %(type)s "
        "AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer "
        'GROUP BY group_id ORDER BY n DESC, group_id COLLATE "C" LIMIT %(limit)s'
    ),
    "groups_of": (
        "SELECT group_id, sum(count) FROM {s}.group_daily_counts "
        "WHERE event = %(event)s AND group_type = %(type)s "
        "AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer "
        "AND group_id = ANY(%(groups)s::text[]) GROUP BY group_id"
    ),
    "distinct_groups": (
        "SELECT count(DISTINCT group_id) FROM {s}.group_daily_counts "
        "WHERE event = %(event)s AND group_type = %(type)s "
        "AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer "
        "AND group_id <> ALL(%(exclude)s::text[])"
    ),
    "query_hourly": (
        "SELECT (extract(epoch FROM hour) / 3600)::bigint, sum(count) FROM {s}.hourly_counts "
        "WHERE event = %(event)s "
        "AND (%(start)s::bigint IS NULL OR hour >= to_timestamp(%(start)s::bigint * 3600)) "
        "AND (%(end)s::bigint IS NULL OR hour < to_timestamp(%(end)s::bigint * 3600)) "
        f"AND {_MATCHING_SETS} "
        "GROUP BY hour"
    ),
    "query_daily": (
        "SELECT day - date '1970-01-01', sum(count) FROM {s}.daily_counts "
        "WHERE event = %(event)s "
        "AND (%(start)s::integer IS NULL OR day >= date '1970-01-01' + %(start)s::integer) "
        "AND (%(end)s::integer IS NULL OR day < date '1970-01-01' + %(end)s::integer) "
        f"AND {_MATCHING_SETS} "
        "GROUP BY day"
    ),
    # Periods given as ranges (period, low, high): days since the epoch, then hour buckets.
    # Each range is an index range scan; the sum per period is done here, not in Python.
    "periods_daily": (
        "SELECT r.p, sum(c.count) "
        "FROM unnest(%(p)s::integer[], %(lo)s::integer[], %(hi)s::integer[]) AS r (p, lo, hi) "
        "JOIN {s}.daily_counts c ON c.event = %(event)s "
        "AND c.day >= date '1970-01-01' + r.lo AND c.day < date '1970-01-01' + r.hi "
        f"WHERE {_MATCHING_SETS} "
        "GROUP BY r.p"
    ),
    "periods_hourly": (
        "SELECT r.p, sum(c.count) "
        "FROM unnest(%(p)s::integer[], %(lo)s::bigint[], %(hi)s::bigint[]) AS r (p, lo, hi) "
        "JOIN {s}.hourly_counts c ON c.event = %(event)s "
        "AND c.hour >= to_timestamp(r.lo * 3600) AND c.hour < to_timestamp(r.hi * 3600) "
        f"WHERE {_MATCHING_SETS} "
        "GROUP BY r.p"
    ),
    # The same for one range (see _ONE_RANGE), with and without a property filter.
    **{name: _one_range(read, "") for name, read in _ONE_RANGE.items()},
    **{f"{name}_props": _one_range(read, _MATCHING_SETS) for name, read in _ONE_RANGE.items()},
    # Counts by (value of property %(by)s, period), and the top values' counts, from each
    # way of reading their rows (see _PROPERTY_ROWS).
    **{
        f"property_periods{way}": (
            f"WITH r AS ({rows}{_PROPERTY_PERIOD if way.endswith('_one') else _PROPERTY_PERIODS}"
        )
        for way, rows in _PROPERTY_ROWS.items()
    },
    **{
        f"top_values{way}": f"WITH r AS ({rows}{_TOP_VALUES}"
        for way, rows in _PROPERTY_ROWS.items()
    },
    **{
        f"top_values{way}_kept": f"WITH r AS ({rows}{_TOP_VALUES_KEPT}"
        for way, rows in _PROPERTY_ROWS.items()
    },
    "user_count": (
        "SELECT sum(count) FROM {s}.user_daily_counts WHERE event = %(event)s "
        "AND user_id = %(user)s AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer"
    ),
    "query_users": (
        "SELECT user_id, sum(count) FROM {s}.user_daily_counts "
        "WHERE event = %(event)s "
        "AND (%(start)s::integer IS NULL OR day >= date '1970-01-01' + %(start)s::integer) "
        "AND (%(end)s::integer IS NULL OR day < date '1970-01-01' + %(end)s::integer) "
        "AND (%(user)s::text IS NULL OR user_id = %(user)s::text) "
        "GROUP BY user_id"
    ),
    # Ranked in SQL; ties by code point (COLLATE "C"), as Python orders str.
    "top_users": (
        "SELECT user_id, sum(count) AS n FROM {s}.user_daily_counts "
        "WHERE event = %(event)s AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer "
        'GROUP BY user_id ORDER BY n DESC, user_id COLLATE "C" LIMIT %(limit)s'
    ),
    "top_users_day": (
        "SELECT user_id, count FROM {s}.user_daily_counts "
        "WHERE event = %(event)s AND day = date '1970-01-01' + %(start)s::integer "
        'ORDER BY count DESC, user_id COLLATE "C" LIMIT %(limit)s'
    ),
    "users_of": (
        "SELECT user_id, sum(count) FROM {s}.user_daily_counts "
        "WHERE event = %(event)s AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer AND user_id = ANY(%(users)s::text[]) "
        "GROUP BY user_id"
    ),
    "number_users": (
        "INSERT INTO {s}.user_numbers (user_id) SELECT DISTINCT user_id "
        "FROM analytics_tmp_users t "
        "WHERE NOT EXISTS (SELECT 1 FROM {s}.user_numbers n WHERE n.user_id = t.user_id) "
        "ORDER BY 1 ON CONFLICT (user_id) DO NOTHING"
    ),
    "batch_numbers": (
        "SELECT t.event, t.day, array_agg(n.number) FROM analytics_tmp_users t "
        "JOIN {s}.user_numbers n USING (user_id) GROUP BY 1, 2"
    ),
    "event_day_users_create": (
        "INSERT INTO {s}.event_day_users (event, day, users) "
        "SELECT e, date '1970-01-01' + d, '' FROM unnest(%s::text[], %s::integer[]) AS k (e, d) "
        "ORDER BY 1, 2 ON CONFLICT (event, day) DO NOTHING"
    ),
    "event_day_users_lock": (
        "SELECT event, day - date '1970-01-01', users FROM {s}.event_day_users "
        "WHERE (event, day) IN (SELECT e, date '1970-01-01' + d "
        "FROM unnest(%s::text[], %s::integer[]) AS k (e, d)) ORDER BY 1, 2 FOR UPDATE"
    ),
    "event_day_users_update": (
        "UPDATE {s}.event_day_users AS t SET users = k.u "
        "FROM unnest(%s::text[], %s::integer[], %s::bytea[]) AS k (e, d, u) "
        "WHERE t.event = k.e AND t.day = date '1970-01-01' + k.d"
    ),
    "day_users_create": (
        "INSERT INTO {s}.day_users (day, users) "
        "SELECT date '1970-01-01' + d, '' FROM unnest(%s::integer[]) AS k (d) "
        "ORDER BY 1 ON CONFLICT (day) DO NOTHING"
    ),
    "day_users_lock": (
        "SELECT day - date '1970-01-01', users FROM {s}.day_users "
        "WHERE day IN (SELECT date '1970-01-01' + d FROM unnest(%s::integer[]) AS k (d)) "
        "ORDER BY 1 FOR UPDATE"
    ),
    "day_users_update": (
        "UPDATE {s}.day_users AS t SET users = k.u "
        "FROM unnest(%s::integer[], %s::bytea[]) AS k (d, u) "
        "WHERE t.day = date '1970-01-01' + k.d"
    ),
    "day_bitmaps": (
        "SELECT users FROM {s}.event_day_users "
        "WHERE event = %(event)s AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer AND users <> ''"
    ),
    "numbers_of": "SELECT number FROM {s}.user_numbers WHERE user_id = ANY(%(users)s::text[])",
    "user_numbers_of": (
        "SELECT user_id, number FROM {s}.user_numbers WHERE user_id = ANY(%(users)s::text[])"
    ),
    "ever_users_create": (
        "INSERT INTO {s}.ever_users (event, users) SELECT e, '' FROM unnest(%s::text[]) AS k (e) "
        "ORDER BY 1 ON CONFLICT (event) DO NOTHING"
    ),
    "ever_users_lock": (
        "SELECT event, users FROM {s}.ever_users WHERE event = ANY(%s::text[]) "
        "ORDER BY 1 FOR UPDATE"
    ),
    "ever_users_update": (
        "UPDATE {s}.ever_users AS t SET users = k.u "
        "FROM unnest(%s::text[], %s::bytea[]) AS k (e, u) WHERE t.event = k.e"
    ),
    "first_day_users_lock": (
        "SELECT f.event, f.day - date '1970-01-01', f.users FROM {s}.first_day_users f "
        "JOIN unnest(%s::text[], %s::integer[]) AS k (e, d) "
        "ON f.event = k.e AND f.day >= date '1970-01-01' + k.d ORDER BY 1, 2 FOR UPDATE OF f"
    ),
    "first_day_users_upsert": (
        "INSERT INTO {s}.first_day_users AS t (event, day, users) "
        "SELECT e, date '1970-01-01' + d, u FROM unnest(%s::text[], %s::integer[], %s::bytea[]) "
        "AS k (e, d, u) ORDER BY 1, 2 ON CONFLICT (event, day) DO UPDATE SET users = EXCLUDED.users"
    ),
    # Users' days as (day, bitmap) rows: of some events, of any event, first days.
    "event_days_users": (
        "SELECT day - date '1970-01-01', users FROM {s}.event_day_users "
        "WHERE event = ANY(%(events)s::text[]) AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer AND users <> ''"
    ),
    "any_days_users": (
        "SELECT day - date '1970-01-01', users FROM {s}.day_users "
        "WHERE day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer AND users <> ''"
    ),
    "first_days_users": (
        "SELECT day - date '1970-01-01', users FROM {s}.first_day_users "
        "WHERE event = %(event)s AND day >= date '1970-01-01' + %(start)s::integer "
        "AND (%(end)s::integer IS NULL OR day < date '1970-01-01' + %(end)s::integer) "
        "AND users <> ''"
    ),
    "ever_users_of": "SELECT users FROM {s}.ever_users WHERE event = %(event)s",
    # A group's users and their active days ('' is a call without a user).
    "group_user_days": (
        "SELECT DISTINCT user_id, day - date '1970-01-01' FROM {s}.group_user_daily_counts "
        "WHERE group_type = %(type)s AND group_id = %(id)s AND user_id <> '' "
        "AND (%(events)s::text[] IS NULL OR event = ANY(%(events)s::text[])) "
        "AND day >= date '1970-01-01' + %(start)s::integer "
        "AND day < date '1970-01-01' + %(end)s::integer"
    ),
    # Daily totals hold every count (hourly rows may be pruned), in fewer rows.
    "event_totals": "SELECT event, sum(count) FROM {s}.daily_counts GROUP BY event",
    "prune_ledger": "DELETE FROM {s}.flush_ledger WHERE applied_at < %s",
    "prune_hourly_counts": "DELETE FROM {s}.hourly_counts WHERE hour < %s::timestamptz",
    "prune_user_daily_counts": "DELETE FROM {s}.user_daily_counts WHERE day < %s::date",
    "prune_group_daily_counts": "DELETE FROM {s}.group_daily_counts WHERE day < %s::date",
    "prune_group_user_daily_counts": (
        "DELETE FROM {s}.group_user_daily_counts WHERE day < %s::date"
    ),
}
