"""Redis counter store (``redis://``, ``rediss://``, ``redis+cluster://``).

Key layout, for prefix ``P`` and shard ``s`` (every key of a shard shares the hash tag
``{P:s}``, so each script touches one Redis Cluster slot)::

    {P:s}:live:h:<event>:<hour>   HASH  "<properties>" -> count   live hourly counters
    {P:s}:live:u:<event>:<day>    HASH  "<user_id>"    -> count   live per-user daily
    {P:s}:live:g:<event>:<day>    HASH  "<group_type>|<group_id>" (calls without a user) or
                                        "<group_type>|<group_id>|<user_id>" -> count
                                                                 live per-group daily
    {P:s}:hashes                  SET   names of the live hashes (the pending marker)
    {P:s}:ix:h:<event>            ZSET  the event's hourly hashes, live and claimed: member
    {P:s}:ix:u:<event>                  "|<bucket>" (live) or "<batch>|<bucket>" (claimed),
    {P:s}:ix:g:<event>                  scored by the bucket (hour or day)
    {P:s}:gen                     STRING how many CLAIM steps moved counters (reads check it)
    {P:s}:seq:<producer>          STRING last push sequence applied from that producer (one
                                         key per producer: its pushes all go to one shard)
    {P:s}:dd:<dedupe key>         STRING end of the key's dedupe window (ms), on the key's shard
    {P:s}:dseq:<producer>         STRING last push sequence whose keyed calls this shard applied
    {P:s}:claims                  ZSET  batch id -> claim time
    {P:s}:claim:<batch>           SET   names of the batch's hashes
    {P:s}:claim:<batch>:h:<event>:<hour>  HASH  the claimed counters (live hashes renamed,
    {P:s}:claim:<batch>:u:<event>:<day>         or fields moved out of them)
    {P:s}:claim:<batch>:g:<event>:<day>
    {P:s}:step:<batch>            STRING last CLAIM step of the batch and its result (10 min,
                                         or deleted once the batch is built: reads report a
                                         batch that has one as still being built)

A query reads only the hashes of the buckets it asks for, found in the event's index, and
of those only the fields it needs (one user's, with ``HGET``), never a whole event.

Earlier versions kept one hash per event (``{P:s}:live:h:<event>``, fields
``"<properties>|<hour>"``, and ``{P:s}:live:u:<event>``, fields ``"<user_id>|<day>"``),
listed in ``{P:s}:idx``. Counts left in that layout are still read by queries (the event's
hash, probed by name) and claimed by flushers (CLAIM moves any hash; a batch is decoded by
the form of its hashes' names), so they are flushed once after an upgrade; new pushes write
the layout above only.

Event names, properties, user ids, group types and group ids are escaped (:mod:`analytics_sdk.keys`), so no
character can break a key or a field. A push picks its shard from its producer, so a retry
lands on the same shard, a producer has one sequence key, and pushes from many processes
spread over all shards.

Every script is safe to run twice with the same arguments (the driver may re-send one whose
reply was lost) and runs whole or not at all during Redis Cluster resharding: it declares in
``KEYS`` every key it touches (a key it finds it needs but was not given makes it return the
keys it needs, having written nothing, and the client calls again with them), so Redis
refuses it (``ASK``/``TRYAGAIN``) rather than stopping it half way, and it writes what makes
a retry a no-op (the push sequence) last. Every script's work is bounded: a CLAIM step moves
at most ``CLAIM_STEP`` counters of at most ``MAX_HASHES_PER_CLAIM`` hashes, an ACK deletes
one batch, a push applies one push; reads are plain commands, each bounded (``HGET``,
``HSCAN`` and ``ZRANGE`` pages), checked against ``{P:s}:gen``: a read during which a CLAIM
step moved counters is read again, so it sees every counter once, live or claimed. redis-py's
own retries are turned off: the SDK retries pushes itself, with backoff, so a hung node costs
one ``socket_timeout``.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from ..errors import ConfigurationError, StoreError
from ..keys import (
    GroupKey,
    HourKey,
    Properties,
    UserKey,
    decode_properties,
    encode_properties,
    escape,
    unescape,
)
from . import (
    OptionRule,
    check_option_values,
    check_url_options,
    floats,
    integers,
    one_of,
    redact_url,
)
from .base import (
    DEFAULT_MAX_BATCH_KEYS,
    Batch,
    Bucket,
    CounterStore,
    Deduped,
    Delta,
    Pending,
    PropertyValue,
    Push,
    UserDay,
    in_range,
    matches,
)

__all__ = ["RedisCounterStore"]

ASYNC_MAX_CONNECTIONS = 16
"""Connections the asyncio twin of a store keeps at most per event loop, unless the URL sets
``max_connections``; more concurrent reads wait for one."""

logger = logging.getLogger("analytics_sdk")

T = TypeVar("T")

DEFAULT_PREFIX = "analytics"
DEFAULT_TTL = 7 * 24 * 3600
"""Live counters expire this long after creation: a safety net, far beyond any flush."""
MIN_TTL = 3600
CLAIM_STEP = 2_000
"""Counters one CLAIM call moves at most: Redis runs nothing else meanwhile, so a batch of
``max_batch_keys`` is built in steps of this size."""
STEP_TTL = 600
"""Seconds a batch's step record is kept: long enough for any retry of its last step."""
MAX_HASHES_PER_CLAIM = 1_000
"""Live hashes (one per event and hour, and per event and day) one CLAIM declares at most;
the rest waits for the next claim of the flush."""
READ_PAGE = 1_000
"""Index entries one ``ZRANGE`` and fields one ``HSCAN`` returns at most (roughly, for
``HSCAN``): no read command holds Redis long."""
READ_SCANS = 32
"""``HSCAN`` commands sent in one round trip at most."""
READ_ATTEMPTS = 10
"""Reads of a shard before a query gives up because CLAIM steps kept moving its counters
(each read is retried only if a step moved counters while it ran)."""
SEQUENCE_TTL = 30 * 24 * 3600
"""How long a producer's last push sequence is kept: a push retried after a longer outage
would be applied again, so this outlives any plausible outage."""

MAX_SHARDS = 1024
FOUND_KEYS = 0
"""First element of a script's reply that ran nothing: the rest are the keys it needs."""

# KEYS: {tag}:hashes, {tag}:seq:<producer>, then per live hash: the hash and its event's
# index. ARGV: sequence, attempt (a token per call of push()), sequence ttl, live ttl, then
# per live hash (in KEYS order): bucket, field count, field, delta, field, delta... The
# sequence key holds "<sequence>:<attempt>" (or, written by earlier versions, "<sequence>").
# Returns 1 if this attempt applied the push (also when the driver re-sent it after a lost
# reply), 0 if an earlier one did.
PUSH = """
local seq = tonumber(ARGV[1])
local current = redis.call('GET', KEYS[2])
if current then
  local colon = string.find(current, ':', 1, true)
  local last = tonumber(colon and string.sub(current, 1, colon - 1) or current)
  if seq <= last then
    if seq == last and colon and string.sub(current, colon + 1) == ARGV[2] then return 1 end
    return 0
  end
end
local ttl = tonumber(ARGV[4])
local i = 5
for k = 3, #KEYS, 2 do
  local key = KEYS[k]
  local bucket = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for j = 1, n do
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('SADD', KEYS[1], key)
  redis.call('ZADD', KEYS[k + 1], bucket, '|' .. bucket)
  -- Expire once, at creation: a TTL refreshed on every push would never arrive.
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
end
redis.call('EXPIRE', KEYS[1], ttl)
-- Last: a script stopped before this line left no mark that would skip its retry.
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS: {tag}:idx (the earlier layout's index), {tag}:hashes, {tag}:claims,
# {tag}:claim:<batch>, {tag}:step:<batch>, {tag}:gen, then per live hash: the hash, the claim
# hash it moves to, and its event's index (for a hash of the earlier layout, the hash
# itself: it has none). Every key the script touches is declared, so a cluster refuses the
# whole script, never half of it, while the slot moves. ARGV: batch id, now, room, n, step,
# step ttl, then per live hash its bucket ("" for the earlier layout). One step of building a
# batch: moves at most room counters, whole hashes by RENAME, and from a hash larger than
# what is left, that many distinct fields (HRANDFIELD), adding to what earlier steps moved
# (HINCRBY: a push may have brought a moved field back); the index entry "<batch>|<bucket>"
# follows the counters, and {tag}:gen counts the steps that moved any (a read that saw it
# change reads again). Returns {counters moved by all steps so far, 1 if the declared hashes
# ran out}. A step already run (a lost reply the driver sent again) returns its result and
# moves nothing more.
CLAIM = """
local idx, hashes, claims, claim, steps, gen = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local n, step = tonumber(ARGV[4]), tonumber(ARGV[5])
local total = 0
local last = redis.call('GET', steps)
if last then
  local done, moved, ran_out = string.match(last, '^(%d+):(%d+):(%d+)$')
  if tonumber(done) >= step then return {tonumber(moved), tonumber(ran_out)} end
  total = tonumber(moved)
end
local room = tonumber(ARGV[3])
local moved_now = 0
for i = 1, n do
  if room == 0 then break end
  local live, dest, index = KEYS[3 * i + 4], KEYS[3 * i + 5], KEYS[3 * i + 6]
  local bucket = ARGV[6 + i]
  local size = redis.call('HLEN', live)
  local fresh = redis.call('EXISTS', dest) == 0
  local gone = size <= room
  if size == 0 then
    -- expired, or claimed by another flusher meanwhile
  elseif size <= room and fresh then
    redis.call('RENAME', live, dest)
    redis.call('PERSIST', dest)  -- a claim never expires before its ack
  else
    local picked
    if size <= room then
      picked = redis.call('HGETALL', live)
    else
      picked = redis.call('HRANDFIELD', live, room, 'WITHVALUES')
    end
    for first = 1, #picked, 2000 do  -- unpack() takes a few thousand values at most
      local stop = math.min(first + 1999, #picked)
      local fields = {}
      for j = first, stop, 2 do
        if not fresh then redis.call('HINCRBY', dest, picked[j], picked[j + 1]) end
        table.insert(fields, picked[j])
      end
      if fresh then redis.call('HSET', dest, unpack(picked, first, stop)) end
      redis.call('HDEL', live, unpack(fields))
    end
  end
  if gone then
    redis.call('SREM', idx, live)
    redis.call('SREM', hashes, live)
    if bucket ~= '' then redis.call('ZREM', index, '|' .. bucket) end
  end
  if size > 0 then
    redis.call('SADD', claim, dest)
    if bucket ~= '' then redis.call('ZADD', index, bucket, ARGV[1] .. '|' .. bucket) end
    local moved = math.min(size, room)
    room = room - moved
    total = total + moved
    moved_now = moved_now + moved
  end
end
if moved_now > 0 then redis.call('INCR', gen) end
if total > 0 then redis.call('ZADD', claims, 'NX', ARGV[2], ARGV[1]) end
local ran_out = room > 0 and 1 or 0
redis.call('SET', steps, step .. ':' .. total .. ':' .. ran_out, 'EX', ARGV[6])
return {total, ran_out}
"""

# KEYS: {tag}:claims, {tag}:claim:<batch>, then its hashes and their events' indexes. ARGV:
# batch id, tag. Returns {1, removed} or, having done nothing, {FOUND_KEYS, keys needed}.
# Twice is harmless: the second run finds nothing left to delete. UNLINK frees a large
# batch's memory outside the script.
ACK = """
local declared = {}
for _, key in ipairs(KEYS) do declared[key] = true end
local head = ARGV[2] .. ':claim:' .. ARGV[1] .. ':'
local needed, missing, plan = {}, false, {}
local function need(key)
  table.insert(needed, key)
  if not declared[key] then missing = true end
end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  need(key)
  local kind, event, bucket = string.match(string.sub(key, #head + 1), '^([hug]):([^:]*):(%d+)$')
  if kind then
    local index = ARGV[2] .. ':ix:' .. kind .. ':' .. event
    need(index)
    table.insert(plan, {key, index, ARGV[1] .. '|' .. bucket})
  else
    table.insert(plan, {key})
  end
end
if missing then return {0, needed} end
for _, item in ipairs(plan) do
  redis.call('UNLINK', item[1])
  if item[2] then redis.call('ZREM', item[2], item[3]) end
end
redis.call('DEL', KEYS[2])
return {1, redis.call('ZREM', KEYS[1], ARGV[1])}
"""

# Calls made with a dedupe key. KEYS: {tag}:hashes, {tag}:dseq:<producer>, then the keys'
# marks ({tag}:dd:<key>), the live hashes and their events' indexes. ARGV: sequence, attempt,
# sequence ttl, live ttl, now (ms, the SDK's clock), end of a new mark's window (ms), a mark's
# ttl (ms), then per call: its mark's KEYS index, value, target count (1, one more with a
# user, one more per group),
# then per target: live hash's KEYS index, index's KEYS index, bucket, field. A call whose
# key is not marked within its window is counted (as PUSH counts) and its key marked, in the
# same script: a key is never marked without its count, nor counted twice. The push's
# sequence, per producer and shard (the shard is the key's, not the producer's), written
# last, makes a retry a no-op, as in PUSH. Returns the counts added.
DEDUPE = """
local seq = tonumber(ARGV[1])
local current = redis.call('GET', KEYS[2])
if current then
  local colon = string.find(current, ':', 1, true)
  local last = tonumber(colon and string.sub(current, 1, colon - 1) or current)
  if seq <= last then return 0 end
end
local ttl = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local added, touched = 0, {}
local i = 8
while i <= #ARGV do
  local marker = KEYS[tonumber(ARGV[i])]
  local value = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  local mark = redis.call('GET', marker)
  local fresh = (not mark) or tonumber(mark) <= now
  if fresh then
    redis.call('SET', marker, ARGV[6], 'PX', ARGV[7])
    added = added + tonumber(value)
  end
  for j = 1, n do
    if fresh then
      local h = tonumber(ARGV[i])
      redis.call('HINCRBY', KEYS[h], ARGV[i + 3], value)
      if not touched[h] then
        touched[h] = true
        redis.call('SADD', KEYS[1], KEYS[h])
        redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], '|' .. ARGV[i + 2])
        if redis.call('TTL', KEYS[h]) < 0 then redis.call('EXPIRE', KEYS[h], ttl) end
      end
    end
    i = i + 4
  end
end
if next(touched) then redis.call('EXPIRE', KEYS[1], ttl) end
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return added
"""
DEDUPE_MARK_SLACK = 60.0
"""Seconds a dedupe mark outlives its window in Redis (the window itself is decided by the
SDK's clock, written in the mark)."""

_OPTIONS = {"prefix", "shards", "ttl", "cluster", "allow_eviction"}
_OWN_VALUES = {"shards": integers(1, MAX_SHARDS), "ttl": integers(MIN_TTL)}
# redis-py passes URL query options to its connections: those it parses itself (numbers,
# booleans) and those whose value is a string work; these are the string ones.
_DRIVER_TEXT_OPTIONS = {
    "client_name",
    "username",
    "password",
    "encoding",
    "encoding_errors",
}
_DRIVER_TLS_OPTIONS = {
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_password",
    "ssl_ciphers",
}
# timeout belongs to BlockingConnectionPool (a plain pool's connections refuse it);
# retry_on_error would be parsed into a list of characters, not of exception classes;
# lib_name and lib_version are deprecated (a DeprecationWarning at every connection)
_DRIVER_UNUSABLE = {"timeout", "retry_on_error", "lib_name", "lib_version"}


def _bool_text(value: str) -> bool:
    # redis-py reads any text but 0/f/false/n/no as true ("off" too): accept only the
    # spellings it reads as meant
    return value.strip().lower() in ("1", "0", "true", "false", "yes", "no")


def _encoding(value: str) -> bool:
    try:
        codecs.lookup(value)
    except LookupError:
        return False
    return True


def _error_handler(value: str) -> bool:
    try:
        codecs.lookup_error(value)
    except LookupError:
        return False
    return True


def _ciphers(value: str) -> bool:
    import ssl

    try:
        ssl.create_default_context().set_ciphers(value)
    except ssl.SSLError:
        return False
    return True


def _tls_version(value: str) -> bool:
    import ssl

    try:
        ssl.TLSVersion(int(value))
    except ValueError:
        return False
    return True


_BOOLEAN: OptionRule = (_bool_text, "true/false, yes/no or 1/0")
_SECONDS: OptionRule = floats(0, above=True)
# What redis-py would fail on at each connection (or, for a timeout, at each call): refused
# at configure() instead. Options absent here are free text (password) or paths.
_DRIVER_VALUES: dict[str, OptionRule] = {
    "db": integers(0),
    "socket_timeout": _SECONDS,
    "socket_connect_timeout": _SECONDS,
    "socket_read_size": integers(1),
    "socket_keepalive": _BOOLEAN,
    "retry_on_timeout": _BOOLEAN,
    "max_connections": integers(1),
    "health_check_interval": integers(0),
    "protocol": one_of("2", "3"),
    "legacy_responses": _BOOLEAN,
    # Redis refuses a name with spaces, newlines or other characters outside '!'..'~'
    "client_name": (
        lambda value: all("!" <= c <= "~" for c in value),
        "text without spaces or special characters",
    ),
    "encoding": (_encoding, "a Python codec name, e.g. utf-8"),
    "encoding_errors": (_error_handler, "strict, ignore, replace or another codec error handler"),
    "ssl_check_hostname": _BOOLEAN,
    "ssl_cert_reqs": one_of("none", "optional", "required"),
    "ssl_min_version": (_tls_version, "a value of ssl.TLSVersion, e.g. 771 for TLS 1.2"),
    "ssl_ciphers": (_ciphers, "an OpenSSL cipher list, e.g. ECDHE+AESGCM"),
}


def driver_url_options(*, tls: bool, cluster: bool) -> set[str]:
    """Return the query options redis-py accepts in a URL of this kind."""
    from redis import cluster as redis_cluster
    from redis import connection

    names = set(connection.URL_QUERY_ARGUMENT_PARSERS) | _DRIVER_TEXT_OPTIONS
    names = (names | _DRIVER_TLS_OPTIONS) - _DRIVER_UNUSABLE
    if not tls:
        names = {n for n in names if not n.startswith("ssl_")}
    if cluster:  # RedisCluster drops, silently, what it does not pass on to its nodes
        names &= set(getattr(redis_cluster, "REDIS_ALLOWED_KEYS", names))
    return names


def _check_url(url: str, query: dict[str, str]) -> bool:
    """Refuse unknown or malformed query options in a Redis URL; return whether it is a cluster."""
    from redis import connection

    from ..config import parse_bool

    scheme = urlsplit(url).scheme.lower()
    for name in ("cluster", "allow_eviction"):
        try:
            parse_bool(query.get(name, "false"))
        except ValueError as exc:
            raise ConfigurationError(
                f"Redis URL {redact_url(url)!r}: {name}={query[name]!r} is not accepted; {exc}"
            ) from None
    cluster = scheme == "redis+cluster" or parse_bool(query.get("cluster", "false"))
    theirs = driver_url_options(tls=scheme == "rediss", cluster=cluster)
    check_url_options(url, "store", query, _OPTIONS, "redis-py", theirs)
    check_option_values(url, "store", query, _DRIVER_VALUES, "redis-py")
    for name, value in query.items():
        # options redis-py parses that no rule above covers (its verify flags): its parser
        parse: Any = connection.URL_QUERY_ARGUMENT_PARSERS.get(name)
        if name in _DRIVER_VALUES or parse is None:
            continue
        try:
            parse(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"store URL {redact_url(url)!r}: {name}={value!r} is not accepted by redis-py"
            ) from None
    check_option_values(url, "store", query, _OWN_VALUES)
    return cluster


def _hour_field(properties: Properties, hour: int) -> str:
    return f"{encode_properties(properties)}|{hour}"


def _group_field(group_type: str, group_id: str, user_id: str | None) -> str:
    """Return the field of a per-group counter: ``<type>|<id>``, then ``|<user>`` if any."""
    field = f"{escape(group_type)}|{escape(group_id)}"
    return field if user_id is None else f"{field}|{escape(user_id)}"


def _decode_group_field(field: str) -> tuple[str, str, str | None]:
    """Return ``(group_type, group_id, user_id or None)`` of a per-group counter's field."""
    parts = field.split("|")
    if len(parts) == 2:
        return unescape(parts[0]), unescape(parts[1]), None
    if len(parts) != 3:
        raise ValueError(f"malformed group field {field!r}; expected 'type|id' or 'type|id|user'")
    return unescape(parts[0]), unescape(parts[1]), unescape(parts[2])


def _decode_hash(suffix: str, fields: dict[str, str], delta: Delta) -> None:
    """Add the fields of hash ``suffix`` to ``delta``: ``h:<event>:<hour>`` (fields
    ``<properties>``), ``u:<event>:<day>`` (fields ``<user_id>``) or ``g:<event>:<day>``
    (fields ``<type>|<id>[|<user_id>]``), or of the earlier layout ``h:<event>`` /
    ``u:<event>`` (fields ``<properties>|<hour>``, ``<user_id>|<day>``)."""
    kind, _, rest = suffix.partition(":")
    encoded_event, per_bucket, bucket_text = rest.partition(":")
    event = unescape(encoded_event)
    if kind == "g":
        day = int(bucket_text)
        for field, value in fields.items():
            group_key: GroupKey = (event, *_decode_group_field(field), day)
            delta.groups[group_key] = delta.groups.get(group_key, 0) + int(value)
        return
    for field, value in fields.items():
        if per_bucket:
            head, bucket = field, int(bucket_text)
        else:
            head, _, text = field.rpartition("|")
            bucket = int(text)
        if kind == "h":
            hour_key: HourKey = (event, decode_properties(head), bucket)
            delta.hourly[hour_key] = delta.hourly.get(hour_key, 0) + int(value)
        else:
            user_key: UserKey = (event, unescape(head), bucket)
            delta.users[user_key] = delta.users.get(user_key, 0) + int(value)


def _fields(target: _Target, start: int | None, end: int | None) -> Iterator[tuple[str, int, str]]:
    """Yield ``(field's key part, bucket, value)`` of the fields a target read in buckets
    ``[start, end)``: a per-bucket hash's bucket is in range (the index was read by range);
    a hash of the earlier layout has the bucket in each field (``<key part>|<bucket>``)."""
    bucket = target.bucket
    for page in target.pages:
        if bucket is not None:
            for name, value in page.items():
                yield name, bucket, value
            continue
        for name, value in page.items():
            head, _, text = name.rpartition("|")
            field_bucket = int(text)
            if in_range(field_bucket, start, end):
                yield head, field_bucket, value


@attrs.define
class _Target:
    """A hash a pending read reads: live (batch ``""``) or claimed, of one bucket or (the
    earlier layout, bucket ``None``) of all of an event's."""

    key: str
    batch: str
    bucket: int | None
    cursor: int = 0
    pages: list[dict[str, str]] = attrs.field(factory=list)


@attrs.define
class _Tail:
    """Commands a read sends at the end of each of its pipelines (:meth:`RedisCounterStore._scan`,
    ``_read_field``), and the replies of the last one sent (None: none was sent)."""

    commands: list[tuple[Any, ...]]
    replies: list[Any] | None = None


class RedisCounterStore(CounterStore):
    """A counter store in Redis or Redis Cluster; see the module docstring for the keys."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        shards: int = 1,
        ttl: int = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
        description: str = "redis",
        allow_eviction: bool = False,
    ) -> None:
        from redis.exceptions import RedisClusterException, RedisError

        if not prefix or not prefix.isprintable():
            raise ConfigurationError(
                f"Redis prefix {prefix!r} is not accepted; accepted: printable text"
            )
        if type(shards) is not int or not 1 <= shards <= MAX_SHARDS:
            raise ConfigurationError(
                f"shards={shards!r} is not accepted; accepted: an int from 1 to 1024"
            )
        if type(ttl) is not int or ttl < MIN_TTL:
            raise ConfigurationError(
                f"ttl={ttl!r} is not accepted; accepted: an int >= {MIN_TTL} (seconds)"
            )
        self._redis = client
        self._errors: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
        self.allow_eviction = allow_eviction
        self.evicted_keys = 0
        """Keys the server evicted since this store first used it (counts may be lost)."""
        self._evicted_at_start: int | None = None
        self._keys: dict[tuple[str, int, str], list[str]] = {}  # the keys a read last needed
        self.prefix = prefix
        self.shards = shards
        self.ttl = ttl
        self._clock = clock
        self._description = description
        self._tags = [f"{{{escape(prefix)}:{s}}}" for s in range(shards)]
        self._layout_lock = threading.Lock()
        self._layout_checked = False
        self._read_only = False
        self._location = _location(client)
        self._lua_push = client.register_script(PUSH)
        self._lua_claim = client.register_script(CLAIM)
        self._in_doubt: set[str] = set()
        self._lua_ack = client.register_script(ACK)
        self._lua_dedupe = client.register_script(DEDUPE)
        self._url: str | None = None  # set by from_url: the async API's twin connects alike
        self._asyncio = False  # a twin on redis.asyncio (see for_asyncio)

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], float] = time.time) -> RedisCounterStore:
        """Return a store for ``redis://``, ``rediss://`` or ``redis+cluster://`` URLs.

        Query options: ``prefix`` (default ``analytics``), ``shards`` (default 1; 16 on a
        cluster), ``ttl`` (seconds, default 7 days), ``cluster=true`` (same as
        ``redis+cluster://``), ``allow_eviction=true`` (warn instead of refusing a server
        whose ``maxmemory-policy`` may evict counters); the rest go to redis-py (e.g.
        ``socket_timeout``). redis-py's retries are off whatever the URL says: the SDK
        retries pushes itself, so a hung server costs one ``socket_timeout``.
        """
        return cls._from_url(url, clock, asyncio=False)

    @classmethod
    def _from_url(cls, url: str, clock: Callable[[], float], *, asyncio: bool) -> RedisCounterStore:
        """:meth:`from_url`, on redis-py's asyncio client with ``asyncio`` (its calls are then
        awaited through the async API's bridge, see :mod:`analytics_sdk.backends.aio`)."""
        from redis.backoff import NoBackoff

        from ..config import parse_bool

        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        cluster = _check_url(url, query)
        options = {k: query.pop(k) for k in list(query) if k in _OPTIONS}
        scheme = parts.scheme.lower()
        base_scheme = "redis" if scheme in ("redis", "redis+cluster") else "rediss"
        driver_url = urlunsplit(parts._replace(scheme=base_scheme, query=urlencode(query)))
        # No driver retries: a re-sent script may run twice (each is safe twice), and a
        # RedisCluster retrying 10 times would block a write-through track() 11 timeouts.
        from redis.retry import Retry

        kwargs: dict[str, Any] = {"decode_responses": True, "retry": Retry(NoBackoff(), 0)}
        if "socket_timeout" not in query:
            kwargs["socket_timeout"] = 5.0
        if "socket_connect_timeout" not in query:
            kwargs["socket_connect_timeout"] = 2.0
        shards = int(options.get("shards", 16 if cluster else 1))
        ttl = int(options.get("ttl", DEFAULT_TTL))
        client: Any
        if asyncio:
            import redis.asyncio
            from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
            from redis.asyncio.retry import Retry as AsyncRetry

            from .aio import AwaitingDriver

            kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
            if cluster:
                client = AsyncRedisCluster.from_url(driver_url, **kwargs)
            else:
                # Coroutines, unlike threads, come by the hundred: past max_connections they
                # wait for a connection (up to socket_timeout) instead of failing.
                if "max_connections" not in query:
                    kwargs["max_connections"] = ASYNC_MAX_CONNECTIONS
                wait = query.get("socket_timeout", kwargs.get("socket_timeout"))
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    driver_url, timeout=None if wait is None else float(wait), **kwargs
                )
                client = redis.asyncio.Redis.from_pool(pool)  # closed with the client
            client = AwaitingDriver(client)
        elif cluster:
            from redis.cluster import RedisCluster

            client = RedisCluster.from_url(driver_url, **kwargs)
        else:
            import redis

            client = redis.Redis.from_url(driver_url, **kwargs)
        store = cls(
            client,
            prefix=options.get("prefix", DEFAULT_PREFIX),
            shards=shards,
            ttl=ttl,
            clock=clock,
            description=redact_url(url),
            allow_eviction=parse_bool(options.get("allow_eviction", "false")),
        )
        if cluster:  # the address configured, not whichever node the driver found first
            store._location = f"cluster:{parts.hostname}:{parts.port or 6379}"
        store._url, store._asyncio = url, asyncio
        return store

    def for_asyncio(self) -> CounterStore:
        """Return a twin of this store on ``redis.asyncio`` (same URL, keys and scripts), for
        the event loop that calls it; a store made from a client rather than a URL has none
        (:class:`~analytics_sdk.errors.ConfigurationError`)."""
        if self._url is None:
            raise ConfigurationError(
                f"{self!r} was made from a redis-py client: the async API needs a store made "
                "from a URL (RedisCounterStore.from_url), to open asyncio connections alike"
            )
        if self._asyncio:
            return self
        return RedisCounterStore._from_url(self._url, self._clock, asyncio=True)

    def __repr__(self) -> str:
        return f"RedisCounterStore({self._description!r}, prefix={self.prefix!r}, shards={self.shards})"

    def identity(self) -> str:
        return f"redis:{self._location}/{escape(self.prefix)}"

    def _check_layout(self) -> None:
        """At first use: refuse a server that may evict counters, and adopt the shard count
        the prefix was created with (every client of a prefix must read and claim the same
        shards, or counts on the others would go unflushed)."""
        if self._layout_checked:
            return
        # The round trips run outside the lock (running them twice is harmless): a lock held
        # across the network would be inherited held by a child forked meanwhile.
        try:
            self._check_eviction_policy()
            recorded = self._recorded_shards()
        except self._errors as exc:
            raise StoreError(f"Redis {self._description} read failed: {exc}") from exc
        with self._layout_lock:
            if self._layout_checked:
                return
            if recorded != self.shards:
                logger.warning(
                    "Redis prefix %r was created with shards=%d; using that instead of shards=%d",
                    self.prefix,
                    recorded,
                    self.shards,
                )
                self.shards = recorded
                self._tags = [f"{{{escape(self.prefix)}:{s}}}" for s in range(recorded)]
            self._layout_checked = True

    def _nodes(self) -> list[dict[str, Any]]:
        """Per-command options addressing each master (one entry on a single server)."""
        if hasattr(self._redis, "get_primaries"):
            return [{"target_nodes": node} for node in self._redis.get_primaries()]
        return [{}]

    def _check_eviction_policy(self) -> None:
        from redis.exceptions import ResponseError

        for node in self._nodes():
            policy = None
            # CONFIG may be disabled or not allowed (managed Redis): then INFO says it.
            with contextlib.suppress(ResponseError):
                policy = self._redis.config_get("maxmemory-policy", **node).get("maxmemory-policy")
            if policy is None:
                with contextlib.suppress(ResponseError):
                    policy = self._redis.info("memory", **node).get("maxmemory_policy")
            if policy is None:
                # Both refused: maybe the connection itself is (db=99 is "DB index is out of
                # range" on every command); then that is the error to report, not the policy.
                self._redis.ping(**node)
                logger.warning(
                    "Redis %s: cannot read maxmemory-policy; it must be noeviction, or live "
                    "counters may be evicted",
                    self._description,
                )
            elif policy != "noeviction":
                message = (
                    f"Redis {self._description} has maxmemory-policy {policy}: it may evict "
                    "live counters (they carry a TTL, so volatile-* policies evict them "
                    "first); set maxmemory-policy noeviction"
                )
                if not self.allow_eviction:
                    logger.error("%s (or allow_eviction=true to only warn)", message)
                    raise StoreError(f"{message}, or allow_eviction=true to only warn")
                logger.warning("%s (allowed by allow_eviction=true)", message)
        self._evicted_at_start = self._evicted_now()

    def _evicted_now(self) -> int:
        from redis.exceptions import ResponseError

        evicted = 0
        for node in self._nodes():
            with contextlib.suppress(ResponseError):  # INFO disabled: nothing to report
                evicted += int(self._redis.info("stats", **node).get("evicted_keys", 0))
        return evicted

    def _watch(self) -> None:
        """Report keys evicted since start, and restore a shard-count key that was lost
        (this store knows the count the prefix was created with)."""
        try:
            evicted = self._evicted_now() - (self._evicted_at_start or 0)
            meta = f"{{{escape(self.prefix)}}}:meta"
            restored = self._redis.hsetnx(meta, "shards", self.shards)
        except self._errors:
            return  # the claim that follows reports the failure
        if evicted > self.evicted_keys:
            logger.error(
                "Redis %s evicted %d keys since this process started: counts may be lost; "
                "set maxmemory-policy noeviction",
                self._description,
                evicted,
            )
            self.evicted_keys = evicted
        if restored:
            logger.error(
                "Redis %s: the shard-count key %s was lost (evicted or deleted); restored "
                "shards=%d",
                self._description,
                meta,
                self.shards,
            )

    def _recorded_shards(self) -> int:
        """The prefix's shard count; fail loudly if data lies outside it, or if the count
        was lost while shards hold data (writing a new one would strand those counts)."""
        key = f"{{{escape(self.prefix)}}}:meta"
        recorded = self._redis.hget(key, "shards")
        if recorded is None:
            used = self._shards_with_data(0)
            if used:
                # A client writes the key before its first count: data found after a read
                # that missed the key may be a client's that started meanwhile.
                recorded = self._redis.hget(key, "shards")
                if recorded is None:
                    message = (
                        f"Redis {self._description}: the shard-count key {key} is missing "
                        f"while shards {used[:8]} hold counts or claims: it was lost (evicted, "
                        "deleted or flushed). Writing a new count could strand counts; restore "
                        f"it with HSET {key} shards <the count the prefix was created with, at "
                        f"least {used[-1] + 1}>"
                    )
                    logger.error("%s", message)
                    raise StoreError(message)
            elif self._read_only:
                raise StoreError(
                    f"Redis {self._description} has no analytics counters under prefix "
                    f"{self.prefix!r} (no key {key}): check the URL's ?prefix= (default "
                    f"{DEFAULT_PREFIX!r}); the key appears at the first push of an application "
                    "or the start of a worker using that prefix"
                )
            else:
                self._redis.hsetnx(key, "shards", self.shards)
                recorded = self._redis.hget(key, "shards")
        count = int(recorded)
        stray = self._shards_with_data(count)
        if stray:
            message = (
                f"Redis {self._description}: prefix {self.prefix!r} records shards={count} "
                f"but shards {stray[:8]} hold counts or claims that no flusher would claim "
                f"(the shard-count key {key} was lost and rewritten?); set it back with "
                f"HSET {key} shards <the original count, at least {stray[-1] + 1}>"
            )
            logger.error("%s", message)
            raise StoreError(message)
        return count

    def _shards_with_data(self, first: int) -> list[int]:
        """Shards from ``first`` up to the maximum that hold live counters or claims."""
        shards = range(first, MAX_SHARDS)
        pipe = self._redis.pipeline(transaction=False)
        for shard in shards:
            tag = f"{{{escape(self.prefix)}:{shard}}}"
            pipe.exists(f"{tag}:idx", f"{tag}:hashes", f"{tag}:claims")
        return [shard for shard, n in zip(shards, pipe.execute(), strict=True) if n]

    def _run(self, what: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except self._errors as exc:
            raise StoreError(f"Redis {self._description} {what} failed: {exc}") from exc

    def _call(self, what: str, script: Any, shard: int, *args: Any) -> Any:
        tag = self._tags[shard]
        return self._run(what, script, [f"{tag}:idx"], [tag, *args])

    def _declared(
        self, what: str, script: Any, shard: int, base: list[str], args: list[Any]
    ) -> list[Any]:
        """Run a script that declares every key: with the keys it needed last time, then
        with those it reports needing, until it runs (it writes nothing before that)."""
        cache = (what, shard, base[-1])
        for _ in range(10):
            keys = [*base, *self._keys.get(cache, ())]
            reply = self._run(what, script, keys, args)
            if reply[0] != FOUND_KEYS:
                return list(reply[1:])
            if len(self._keys) > 4096:
                self._keys.clear()  # one entry per event read: keep it bounded
            self._keys[cache] = list(reply[1])
        raise StoreError(f"Redis {self._description} {what}: the keys kept changing; retry")

    def _shard_of(self, push: Push) -> int:
        # By producer, not push: a producer's sequence lives in one key on one shard.
        return zlib.crc32(push.producer.encode()) % self.shards

    def push(self, push: Push) -> bool:
        self._check_layout()
        by_hash: dict[tuple[str, int], list[str]] = {}
        for (event, properties, hour), value in push.delta.hourly.items():
            by_hash.setdefault((f"h:{escape(event)}", hour), []).extend(
                (encode_properties(properties), str(value))
            )
        for (event, user_id, day), value in push.delta.users.items():
            by_hash.setdefault((f"u:{escape(event)}", day), []).extend(
                (escape(user_id), str(value))
            )
        for (event, group_type, group_id, user, day), value in push.delta.groups.items():
            by_hash.setdefault((f"g:{escape(event)}", day), []).extend(
                (_group_field(group_type, group_id, user), str(value))
            )
        tag = self._tags[self._shard_of(push)]
        keys = [f"{tag}:hashes", f"{tag}:seq:{push.producer}"]
        attempt = uuid.uuid4().hex[:12]  # tells the driver's re-send of this call from others
        args: list[Any] = [push.sequence, attempt, max(self.ttl, SEQUENCE_TTL), self.ttl]
        for (series, bucket), fields in by_hash.items():
            keys += (f"{tag}:live:{series}:{bucket}", f"{tag}:ix:{series}")
            args += [bucket, len(fields) // 2, *fields]
        applied = bool(self._run("push", self._lua_push, keys, args))
        if push.deduped:
            self._push_deduped(push)
        return applied

    def _push_deduped(self, push: Push) -> None:
        """Count the calls of ``push`` made with a dedupe key, each on its key's shard."""
        by_shard: dict[int, list[Deduped]] = {}
        for call in push.deduped:
            shard = zlib.crc32(call.key.encode()) % self.shards
            by_shard.setdefault(shard, []).append(call)
        now = self._clock()
        window_ms = int(push.dedupe_window * 1000)
        for shard, calls in by_shard.items():
            tag = self._tags[shard]
            keys = [f"{tag}:hashes", f"{tag}:dseq:{push.producer}"]
            index: dict[str, int] = {}

            def at(key: str, keys: list[str] = keys, index: dict[str, int] = index) -> int:
                if key not in index:
                    keys.append(key)
                    index[key] = len(keys)  # Lua counts from 1
                return index[key]

            attempt = uuid.uuid4().hex[:12]
            args: list[Any] = [
                push.sequence,
                attempt,
                max(self.ttl, SEQUENCE_TTL),
                self.ttl,
                int(now * 1000),
                int(now * 1000) + window_ms,
                window_ms + int(DEDUPE_MARK_SLACK * 1000),
            ]
            for call in calls:
                targets = [
                    (f"h:{escape(call.event)}", call.hour, encode_properties(call.properties))
                ]
                day = call.hour // 24
                if call.user_id is not None:
                    targets.append((f"u:{escape(call.event)}", day, escape(call.user_id)))
                for group_type, group_id in call.groups:
                    field = _group_field(group_type, group_id, call.user_id)
                    targets.append((f"g:{escape(call.event)}", day, field))
                args += [at(f"{tag}:dd:{escape(call.key)}"), call.value, len(targets)]
                for series, bucket, field in targets:
                    hashed = at(f"{tag}:live:{series}:{bucket}")
                    args += [hashed, at(f"{tag}:ix:{series}"), bucket, field]
            self._run("push", self._lua_dedupe, keys, args)

    def has_push(self, push: Push) -> bool:
        self._check_layout()
        key = f"{self._tags[self._shard_of(push)]}:seq:{push.producer}"  # as PUSH writes it
        try:
            last = self._redis.get(key)
        except self._errors as exc:
            raise StoreError(f"Redis {self._description} read failed: {exc}") from exc
        return last is not None and push.sequence <= int(last.partition(":")[0])

    def claim_batches(self, max_keys: int = DEFAULT_MAX_BATCH_KEYS) -> Iterator[Batch]:
        self._check_layout()
        self._watch()
        first = random.randrange(self.shards)  # flushers started together spread out
        for n in range(self.shards):
            shard = (first + n) % self.shards
            more = True
            while more:
                batch, more = self._claim_shard(shard, max_keys)
                if batch is not None:
                    yield batch

    def _live_hashes(self, tag: str) -> tuple[list[str], bool]:
        """Return up to ``MAX_HASHES_PER_CLAIM`` live hash names of a shard (``SSCAN`` of its
        index, and of the earlier layout's), and whether there may be more."""
        found: set[str] = set()
        for index in (f"{tag}:hashes", f"{tag}:idx"):
            cursor = 0
            while len(found) <= MAX_HASHES_PER_CLAIM:
                cursor, names = self._redis.sscan(index, cursor, count=MAX_HASHES_PER_CLAIM)
                found.update(names)
                if not cursor:
                    break
            if cursor:
                return sorted(found)[:MAX_HASHES_PER_CLAIM], True
        live = sorted(key for key in found if key.startswith(f"{tag}:live:"))
        return live[:MAX_HASHES_PER_CLAIM], len(live) > MAX_HASHES_PER_CLAIM

    def _claim_shard(self, shard: int, max_keys: int) -> tuple[Batch | None, bool]:
        """Claim one batch of ``shard``; return it (if anything was live) and whether more
        may be live. Two steps: read the index, then claim exactly the hashes read, all of
        them declared to the script; a hash pushed in between waits for the next claim. The
        script moves at most ``CLAIM_STEP`` counters a call (Redis runs nothing else while
        it does), so a batch takes a few calls; then the batch is read back."""
        tag = self._tags[shard]
        try:
            declared, more_hashes = self._live_hashes(tag)
        except self._errors as exc:
            raise StoreError(f"Redis {self._description} claim failed: {exc}") from exc
        prefix = f"{tag}:live:"
        declared = [key for key in declared if key.startswith(prefix)]
        if not declared:
            return None, more_hashes
        now = self._clock()
        batch_id = f"{shard}.{uuid.uuid4().hex}"
        claim = f"{tag}:claim:{batch_id}"
        keys = [f"{tag}:idx", f"{tag}:hashes", f"{tag}:claims", claim, f"{tag}:step:{batch_id}"]
        keys.append(f"{tag}:gen")
        buckets: list[str] = []
        for key in declared:
            suffix = key[len(prefix) :]
            series, _, bucket = suffix.rpartition(":")
            if series.count(":") == 1:  # "<kind>:<event>:<bucket>"
                keys += (key, f"{claim}:{suffix}", f"{tag}:ix:{series}")
                buckets.append(bucket)
            else:  # the earlier layout, "<kind>:<event>": no index, no bucket
                keys += (key, f"{claim}:{suffix}", key)
                buckets.append("")
        moved = step = ran_out = 0
        while moved < max_keys and not ran_out:
            step += 1
            room = min(CLAIM_STEP, max_keys - moved)
            args = [batch_id, repr(now), room, len(declared), step, STEP_TTL, *buckets]
            try:
                moved, ran_out = self._lua_claim(keys=keys, args=args)
            except self._errors as exc:
                # The script may have run with its reply lost: the flusher must look for it.
                self._in_doubt.add(batch_id)
                raise StoreError(f"Redis {self._description} claim failed: {exc}") from exc
        more = not ran_out or more_hashes
        if not moved:
            return None, more
        try:
            # Built: no step follows (the last one's reply is in), so the step record goes,
            # which tells readers that nothing more will move into the batch.
            self._redis.delete(f"{tag}:step:{batch_id}")
        except self._errors as exc:
            self._in_doubt.add(batch_id)  # claimed: the next flush of this flusher applies it
            raise StoreError(f"Redis {self._description} claim failed: {exc}") from exc
        try:
            batch = self.read_claim(batch_id)
        except StoreError:
            self._in_doubt.add(batch_id)  # claimed: the next flush of this flusher applies it
            raise
        return batch, more

    def take_claims_in_doubt(self) -> set[str]:
        taken, self._in_doubt = self._in_doubt, set()
        return taken

    def claimed_ids(self, older_than: float = 0.0) -> dict[str, float]:
        self._check_layout()
        cutoff = self._clock() - older_than
        found: dict[str, float] = {}
        for tag in self._tags:
            try:
                rows = self._redis.zrangebyscore(f"{tag}:claims", "-inf", cutoff, withscores=True)
            except self._errors as exc:
                raise StoreError(f"Redis {self._description} read failed: {exc}") from exc
            found.update((batch_id, float(at)) for batch_id, at in rows)
        return found

    def read_claim(self, batch_id: str) -> Batch | None:
        self._check_layout()
        shard = self._shard_of_batch(batch_id)
        if shard is None:
            return None
        tag = self._tags[shard]
        claim = f"{tag}:claim:{batch_id}"
        # Plain reads, a chunk at a time (no script holds Redis for a whole batch): a claim
        # never changes until its ack deletes it, and an acknowledged batch is in the
        # sink's ledger, so a read that an ack cut short is applied as a no-op.
        try:
            claimed_at = self._redis.zscore(f"{tag}:claims", batch_id)
            if claimed_at is None:
                return None
            delta = Delta()
            targets = [_Target(key, batch_id, None) for key in sorted(self._redis.smembers(claim))]
            self._scan("read", targets)  # a few hashes' pages a round trip
            for target in targets:
                for page in target.pages:
                    _decode_hash(target.key[len(claim) + 1 :], page, delta)
            if self._redis.zscore(f"{tag}:claims", batch_id) is None:
                return None  # acknowledged meanwhile
        except self._errors as exc:
            raise StoreError(f"Redis {self._description} read failed: {exc}") from exc
        return Batch(id=batch_id, delta=delta, claimed_at=float(claimed_at))

    def _shard_of_batch(self, batch_id: str) -> int | None:
        shard_text, _, _ = batch_id.partition(".")
        if not shard_text.isdigit() or int(shard_text) >= self.shards:
            return None  # not one of ours
        return int(shard_text)

    def ack(self, batch_id: str) -> None:
        self._check_layout()
        shard_text, _, _ = batch_id.partition(".")
        if not shard_text.isdigit() or int(shard_text) >= self.shards:
            return  # not one of ours: nothing to delete
        tag = self._tags[int(shard_text)]
        claim = f"{tag}:claim:{batch_id}"
        self._declared(
            "ack", self._lua_ack, int(shard_text), [f"{tag}:claims", claim], [batch_id, tag]
        )
        self._keys.pop(("ack", int(shard_text), claim), None)

    def _pipeline(
        self, what: str, commands: Iterable[tuple[Any, ...]], tail: _Tail | None = None
    ) -> list[Any]:
        """Send ``commands`` (``(redis-py method name, *arguments)``), then the ``tail``'s,
        in one round trip (per node, in order); return the replies of ``commands`` (the
        tail's go to ``tail.replies``)."""
        sent = list(commands) + (tail.commands if tail is not None else [])
        try:
            pipe = self._redis.pipeline(transaction=False)
            for name, *args in sent:
                getattr(pipe, name)(*args)
            replies = list(pipe.execute())
        except self._errors as exc:
            raise StoreError(f"Redis {self._description} {what} failed: {exc}") from exc
        if tail is None:
            return replies
        mine = len(replies) - len(tail.commands)
        tail.replies = replies[mine:]
        return replies[:mine]

    def _read_shards(
        self,
        what: str,
        plan: Callable[[str], list[tuple[Any, ...]]],
        read: Callable[[dict[int, list[Any]], _Tail], dict[int, T]],
    ) -> dict[int, tuple[T, set[str]]]:
        """Read every shard consistently, with plain bounded commands; return each shard's
        result and the batches that were still being built (see below).

        The first round trip sends, per shard, ``GET {tag}:gen``, ``ZRANGE {tag}:claims``
        and the commands ``plan(tag)`` lists; ``read(replies by shard: the batch ids, then
        the plan's; a tail)`` does the rest. Then ``gen`` is read again, by the tail: sent
        after the reads in each of ``read``'s pipelines (Redis runs a pipeline's commands in
        order, and a shard's keys share a node), the last pipeline's replies counting (or a
        round trip of its own if ``read`` sent none). A shard whose ``gen`` changed
        meanwhile (a CLAIM step moved counters: one may have been read both live and claimed,
        or neither) is read again. The tail also asks which of the batches read still have
        a step record: their flusher has not finished building them, so a later step may move
        into them a counter this read saw live (the query must then treat their commit as that
        of a batch it did not read)."""
        out: dict[int, tuple[T, set[str]]] = {}
        todo = list(range(len(self._tags)))
        for _ in range(READ_ATTEMPTS):
            first: list[tuple[Any, ...]] = []
            for shard in todo:
                tag = self._tags[shard]
                first += [("get", f"{tag}:gen"), ("zrange", f"{tag}:claims", 0, -1), *plan(tag)]
            replies = self._pipeline(what, first)
            per = len(replies) // len(todo)
            started = {s: replies[i * per : (i + 1) * per] for i, s in enumerate(todo)}
            last: list[tuple[Any, ...]] = []
            for shard in todo:
                tag = self._tags[shard]
                last.append(("get", f"{tag}:gen"))
                last += [("exists", f"{tag}:step:{b}") for b in started[shard][1]]
            tail = _Tail(last)
            results = read({s: r[1:] for s, r in started.items()}, tail)
            replies = tail.replies if tail.replies is not None else self._pipeline(what, last)
            again = []
            for shard in todo:
                batches = started[shard][1]
                gen, building = replies[0], replies[1 : 1 + len(batches)]
                replies = replies[1 + len(batches) :]
                if gen == started[shard][0]:
                    open_ = {b for b, n in zip(batches, building, strict=True) if n}
                    out[shard] = (results[shard], open_)
                else:
                    again.append(shard)
            if not again:
                return out
            todo = again
        raise StoreError(
            f"Redis {self._description} {what}: counters of shards {todo[:8]} were being "
            f"claimed during each of {READ_ATTEMPTS} reads; retry"
        )

    def _scan(self, what: str, targets: list[_Target], tail: _Tail | None = None) -> None:
        """Read whole hashes into their targets, ``READ_SCANS`` ``HSCAN`` pages a round trip
        (each with the ``tail``'s commands after them)."""
        todo = list(targets)
        while todo:
            chunk, todo = todo[:READ_SCANS], todo[READ_SCANS:]
            pages = self._pipeline(
                what, [("hscan", t.key, t.cursor, None, READ_PAGE) for t in chunk], tail
            )
            for target, (cursor, fields) in zip(chunk, pages, strict=True):
                target.pages.append(fields)
                target.cursor = int(cursor)
                if target.cursor:
                    todo.append(target)

    def _read_pending(
        self,
        kind: str,
        event: str,
        start: int | None,
        end: int | None,
        user: str | None,
        decode: Callable[[Iterator[tuple[str, int, str]], dict[T, int]], None],
    ) -> Pending[T]:
        """Read the pending counts of ``event`` (``kind`` ``h`` or ``u``) in buckets
        ``[start, end)``: the live and claimed hashes of those buckets only (the event's
        index lists them), and of one user only its field (``HGET``)."""
        self._check_layout()
        series = f"{kind}:{escape(event)}"
        low = "-inf" if start is None else str(start)
        high = "+inf" if end is None else f"({end}"
        field = None if user is None else escape(user)

        def plan(tag: str) -> list[tuple[Any, ...]]:
            return [("zrangebyscore", f"{tag}:ix:{series}", low, high, 0, READ_PAGE, True)]

        def read(
            first: dict[int, list[Any]], tail: _Tail
        ) -> dict[int, tuple[list[str], list[_Target]]]:
            found: dict[int, tuple[list[str], list[_Target]]] = {}
            pages: dict[int, list[tuple[str, float]]] = {}
            for shard, (batches, page) in first.items():
                tag = self._tags[shard]
                # The earlier layout's hashes: one per event, live and in each batch.
                targets = [_Target(f"{tag}:live:{series}", "", None)]
                targets += [_Target(f"{tag}:claim:{b}:{series}", b, None) for b in batches]
                found[shard] = (list(batches), targets)
                pages[shard] = list(page)
            for shard, members in self._index_pages(series, high, pages).items():
                tag = self._tags[shard]
                for member in members:
                    batch, _, bucket = member.rpartition("|")
                    key = f"{tag}:live:" if not batch else f"{tag}:claim:{batch}:"
                    found[shard][1].append(_Target(f"{key}{series}:{bucket}", batch, int(bucket)))
            targets = [t for _, shard_targets in found.values() for t in shard_targets]
            if field is None:
                self._scan("read", targets, tail)
            else:
                self._read_field(field, start, end, targets, tail)
            return found

        pending: Pending[T] = Pending()
        for (batches, targets), building in self._read_shards("read", plan, read).values():
            pending.building.update(building)
            for batch in batches:
                pending.claimed.setdefault(batch, {})
            for target in targets:
                counts = (
                    pending.claimed.setdefault(target.batch, {}) if target.batch else pending.live
                )
                decode(_fields(target, start, end), counts)
        return pending

    def _index_pages(
        self, series: str, high: str, pages: dict[int, list[tuple[str, float]]]
    ) -> dict[int, list[str]]:
        """Return, by shard, the members of ``{tag}:ix:<series>`` up to ``high``, given each
        shard's first page (``READ_PAGE`` members from the low end, with scores).

        Pages follow by score, not by offset (a push or an ack between two pages would
        shift offsets: a member read twice, or skipped): a full page is kept up to its last
        score, exclusive, and the next page starts at that score; a page of a single score
        (as many claimed batches of one bucket) is followed by that score's members whole,
        then the scores above it. A member a push adds or an ack removes meanwhile is a count
        that arrived during the read, or a committed batch's, which the sink holds."""
        out: dict[int, list[str]] = {shard: [] for shard in pages}
        todo = dict(pages)
        while todo:
            calls: list[tuple[Any, ...]] = []
            follow: list[tuple[int, bool]] = []  # (shard, whether a whole score comes first)
            for shard, page in todo.items():
                key = f"{self._tags[shard]}:ix:{series}"
                if len(page) < READ_PAGE:
                    out[shard] += [member for member, _ in page]
                    continue
                last = page[-1][1]
                whole = page[0][1] == last  # one score fills the page: read that score whole
                if whole:
                    calls.append(("zrangebyscore", key, last, last))
                    calls.append(("zrangebyscore", key, f"({last}", high, 0, READ_PAGE, True))
                else:
                    out[shard] += [member for member, score in page if score < last]
                    calls.append(("zrangebyscore", key, last, high, 0, READ_PAGE, True))
                follow.append((shard, whole))
            replies = self._pipeline("read", calls) if calls else []
            todo = {}
            for shard, whole in follow:
                if whole:
                    out[shard] += list(replies.pop(0))
                todo[shard] = list(replies.pop(0))
        return out

    def _read_field(
        self,
        field: str,
        start: int | None,
        end: int | None,
        targets: list[_Target],
        tail: _Tail | None = None,
    ) -> None:
        """Read one field (a user's) of each target: ``HGET`` where the hash is per bucket;
        ``HMGET`` of its days, or the whole hash over an unbounded or long range, in a hash
        of the earlier layout."""
        days = None
        if start is not None and end is not None and end - start <= 400:
            days = [f"{field}|{day}" for day in range(start, end)]
        whole = [t for t in targets if t.bucket is None and days is None]
        narrow = [t for t in targets if t not in whole]

        calls: list[tuple[Any, ...]] = []
        for t in narrow:
            if t.bucket is not None:
                calls.append(("hget", t.key, field))
            elif days:
                calls.append(("hmget", t.key, days))
            else:
                calls.append(("exists", t.key))  # an empty range: nothing to read
        for target, value in zip(narrow, self._pipeline("read", calls, tail), strict=True):
            if target.bucket is not None:
                if value is not None:
                    target.pages.append({field: value})
            elif days:
                found = dict(zip(days, value, strict=True))
                target.pages.append({k: v for k, v in found.items() if v is not None})
        self._scan("read", whole, tail)

    def pending_hourly(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> Pending[int]:
        matching: dict[str, bool] = {}

        def decode(fields: Iterator[tuple[str, int, str]], counts: dict[int, int]) -> None:
            for head, hour, value in fields:
                wanted = matching.get(head)
                if wanted is None:
                    wanted = matching[head] = matches(decode_properties(head), properties)
                if wanted:
                    counts[hour] = counts.get(hour, 0) + int(value)

        return self._read_pending("h", event, start, end, None, decode)

    def pending_property_hourly(
        self, event: str, by: str, start: int | None, end: int | None, properties: Properties
    ) -> Pending[tuple[PropertyValue, int]]:
        values: dict[str, PropertyValue | None] = {}  # per property set: its value, if it matches

        def decode(
            fields: Iterator[tuple[str, int, str]], counts: dict[tuple[PropertyValue, int], int]
        ) -> None:
            for head, hour, value in fields:
                if head not in values:
                    pairs = decode_properties(head)
                    matched = matches(pairs, properties)
                    values[head] = dict(pairs).get(by, Bucket.NONE) if matched else None
                found = values[head]
                if found is not None:
                    key = (found, hour)
                    counts[key] = counts.get(key, 0) + int(value)

        return self._read_pending("h", event, start, end, None, decode)

    def pending_users(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> Pending[str]:
        def decode(fields: Iterator[tuple[str, int, str]], counts: dict[str, int]) -> None:
            for head, _, value in fields:
                user = unescape(head)
                if user_id is None or user == user_id:
                    counts[user] = counts.get(user, 0) + int(value)

        return self._read_pending("u", event, start, end, user_id, decode)

    def pending_groups(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> Pending[str]:
        # The field starts with the type and the id: groups are told apart without decoding
        # every field, and a user's part is never unescaped.
        head = f"{escape(group_type)}|"
        exact = None if group_id is None else f"{head}{escape(group_id)}"

        def decode(fields: Iterator[tuple[str, int, str]], counts: dict[str, int]) -> None:
            for field, _, value in fields:
                if not field.startswith(head):
                    continue
                encoded, _, _ = field[len(head) :].partition("|")
                if exact is not None and f"{head}{encoded}" != exact:
                    continue
                group = unescape(encoded)
                counts[group] = counts.get(group, 0) + int(value)

        return self._read_pending("g", event, start, end, None, decode)

    def _read_listed(
        self, kind: str, wanted: Callable[[str, int | None], bool]
    ) -> tuple[dict[str, list[tuple[str, _Target]]], set[str]]:
        """Read whole every pending hash of ``kind`` (``h``, ``u`` or ``g``) whose event and bucket
        (None: a hash of the earlier layout) ``wanted`` accepts, found in the shard's sets of
        live hashes and in each batch's set of hashes (``SSCAN``), read with ``HSCAN``.

        Returns the targets read with their event, by batch (``""``: live), and the batches
        still being built."""
        self._check_layout()

        def plan(tag: str) -> list[tuple[Any, ...]]:
            return []

        def read(
            first: dict[int, list[Any]], tail: _Tail
        ) -> dict[int, tuple[list[str], list[_Target]]]:
            found: dict[int, tuple[list[str], list[_Target]]] = {}
            for shard, (batches,) in first.items():
                tag = self._tags[shard]
                targets: list[_Target] = []
                sets = [(f"{tag}:hashes", ""), (f"{tag}:idx", "")]
                sets += [(f"{tag}:claim:{b}", b) for b in batches]
                for name, batch in sets:
                    head = f"{tag}:live:{kind}:" if not batch else f"{tag}:claim:{batch}:{kind}:"
                    for key in sorted(self._set_members(name)):
                        if key.startswith(head):
                            event, _, bucket = key[len(head) :].partition(":")
                            number = int(bucket) if bucket else None
                            if wanted(unescape(event), number):
                                targets.append(_Target(key, batch, number))
                found[shard] = (list(batches), targets)
            self._scan("read", [t for _, ts in found.values() for t in ts], tail)
            return found

        out: dict[str, list[tuple[str, _Target]]] = {"": []}
        open_: set[str] = set()
        for shard, ((batches, targets), building) in self._read_shards("read", plan, read).items():
            open_.update(building)
            tag = self._tags[shard]
            for batch in batches:
                out.setdefault(batch, [])
            for target in targets:
                head = f"{tag}:live:" if not target.batch else f"{tag}:claim:{target.batch}:"
                event = unescape(target.key[len(head) + 2 :].partition(":")[0])
                out[target.batch].append((event, target))
        return out, open_

    def _set_members(self, name: str) -> set[str]:
        """Return the members of set ``name``, read with ``SSCAN`` pages."""
        members: set[str] = set()
        cursor = 0
        while True:
            try:
                cursor, page = self._redis.sscan(name, cursor, count=READ_PAGE)
            except self._errors as exc:
                raise StoreError(f"Redis {self._description} read failed: {exc}") from exc
            members.update(page)
            if not cursor:
                return members

    def pending_event_totals(self) -> Pending[str]:
        """Every pending hourly counter summed per event (every hourly hash, found in the
        shard's sets of hashes)."""
        read, building = self._read_listed("h", lambda event, bucket: True)

        def totals(targets: list[tuple[str, _Target]]) -> dict[str, int]:
            out: dict[str, int] = {}
            for event, target in targets:
                total = sum(int(value) for page in target.pages for value in page.values())
                out[event] = out.get(event, 0) + total
            return out

        return Pending(
            live=totals(read.pop("")),
            claimed={batch: totals(targets) for batch, targets in read.items()},
            building=building,
        )

    def pending_user_days(
        self,
        events: Collection[str] | None,
        start: int | None,
        end: int | None,
        group: tuple[str, str] | None = None,
    ) -> Pending[UserDay]:
        """Every pending per-user daily counter of ``events`` (all if None) over days
        ``[start, end)``: the per-user hashes of those events and days (with ``group``, the
        per-group hashes, fields of that group with a user), found in the shard's sets of
        hashes (a query of every event has no index to read)."""

        def wanted(event: str, day: int | None) -> bool:
            in_days = day is None or in_range(day, start, end)
            return in_days and (events is None or event in events)

        read, building = self._read_listed("u" if group is None else "g", wanted)
        # A group's fields with a user: "<type>|<id>|<user>".
        prefix = None if group is None else f"{escape(group[0])}|{escape(group[1])}|"

        def users(targets: list[tuple[str, _Target]]) -> dict[UserDay, int]:
            out: dict[UserDay, int] = {}
            for event, target in targets:
                for head, day, value in _fields(target, start, end):
                    if prefix is None:
                        user = unescape(head)
                    elif head.startswith(prefix):
                        user = unescape(head[len(prefix) :])
                    else:
                        continue
                    key = (event, user, day)
                    out[key] = out.get(key, 0) + int(value)
            return out

        return Pending(
            live=users(read.pop("")),
            claimed={batch: users(targets) for batch, targets in read.items()},
            building=building,
        )

    def check_readable(self) -> None:
        """Raise :class:`StoreError` unless the prefix holds this SDK's counters (its
        shard-count key); never writes it, and reads after this never do either."""
        self._read_only = True
        self._check_layout()

    def check(self) -> None:
        self._check_layout()
        try:
            self._redis.ping()
        except self._errors as exc:
            raise StoreError(f"Redis {self._description} ping failed: {exc}") from exc

    def after_fork_in_child(self) -> None:
        # redis-py replaces the parent's connections itself on their first use in the child,
        # under its own locks, which another thread of the parent may have held at the fork.
        self._layout_lock = threading.Lock()
        _fresh_driver_locks(self._redis)

    def close(self) -> None:
        try:
            self._redis.close()
        except self._errors:
            pass


_NEW_LOCK: dict[type, Any] = {
    type(threading.Lock()): threading.Lock,
    type(threading.RLock()): threading.RLock,
}


def _fresh_driver_locks(client: Any) -> None:
    """Give every lock of the driver's objects reachable from ``client`` (its pools and
    connections, a cluster's node manager and nodes, their event dispatchers and
    registries) a new one, in a forked child.

    A lock of the parent's held by another of its threads at the fork (one checking a
    connection out or in, say) stays held forever in the child, where that thread does not
    exist: redis-py's first use in the child would wait on it for good (its fork check
    resets the pool under such a lock). Only the forking thread runs in the child at this
    point; the state those locks guard is whole (the holder was stopped between two Python
    operations) and the pools' is discarded by that reset. A lock shared by two objects
    stays shared.
    """
    fresh: dict[int, Any] = {}
    seen: set[int] = set()
    todo: list[Any] = [client]

    def renewed(value: Any) -> Any:
        new_lock = _NEW_LOCK.get(type(value))
        if new_lock is None:
            if type(value).__module__.startswith("redis") and id(value) not in seen:
                todo.append(value)
            elif isinstance(value, (dict, list, tuple, set)) and id(value) not in seen:
                seen.add(id(value))
                todo.extend(value.values() if isinstance(value, dict) else value)
            return value
        if id(value) not in fresh:
            fresh[id(value)] = new_lock()
        return fresh[id(value)]

    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if _NEW_LOCK.get(type(obj)) is not None or not hasattr(obj, "__dict__"):
            continue
        for name, value in list(vars(obj).items()):
            new_value = renewed(value)
            if new_value is not value:
                setattr(obj, name, new_value)
            elif isinstance(value, dict):
                for key, item in list(value.items()):
                    if _NEW_LOCK.get(type(item)) is not None:
                        value[key] = renewed(item)


def _location(client: Any) -> str:
    """Return the server (and database) ``client`` talks to, without credentials."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"{where}/{kwargs.get('db', 0)}"
    node = client.get_default_node()  # a cluster client built by the caller
    if node is None:  # redis.asyncio's, before it first connects: from_url names it
        return "cluster"
    return f"cluster:{node.host}:{node.port}"
