"""The local spool: pushes a process could not deliver, kept on disk until a store takes them.

When the store is down at exit (or has been failing for ``spool_after`` seconds), the
scheduler hands the outbox and the buffer to :meth:`Spool.write`: one file per producer,
holding its pushes with their producer id and sequence. The next client start and every
flush of a flusher (the ``analytics-sdk-exact worker``) :meth:`~Spool.replay` the files into the
store. The store's per-producer sequence makes replaying an applied push a no-op, so a file
is deleted only after the store accepted all of it, and a replay cut short is simply done
again.

Layout: ``<spool_dir>/<fingerprint>/<created>-<producer>.spool`` where the fingerprint is a
hash of the store's :meth:`~analytics_sdk.backends.base.CounterStore.identity` (server and
prefix, never credentials), so a spool is only ever replayed into the store it was meant for.
A file is three lines, written to a temporary name, fsynced, renamed, and the directory
fsynced::

    analytics-sdk-spool 1
    {"store": ..., "producer": ..., "created": ..., "pushes": [{"sequence": n, "hourly": [...], "users": [...], "groups": [...]}]}
    sha256 <hex digest of the JSON line>

A file whose checksum or contents do not hold (torn by a crash, truncated, edited) is renamed
to ``*.corrupt`` with a warning; a file of a newer format version is left for that version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .backends.base import DEFAULT_DEDUPE_WINDOW, CounterStore, Deduped, Delta, Push
from .keys import GroupKey, HourKey, UserKey

__all__ = ["FORMAT_VERSION", "ReplayResult", "Spool", "SpoolError", "default_spool_dir"]

logger = logging.getLogger("analytics_sdk")

FORMAT_VERSION = 3
"""The newest format this version reads and writes: 2 added calls made with a
``dedupe_key``, 3 per-group counters (``"groups"``, and the groups of keyed calls). A file is
written with the oldest version that holds its contents, so earlier versions read it."""
MAGIC = "analytics-sdk-spool"
SUFFIX = ".spool"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600.0
"""A temporary file this old was left by a process that died while writing it."""

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: replayers rely on the store's dedup only
    fcntl = None  # type: ignore[assignment]


class SpoolError(Exception):
    """A spool file that cannot be read: torn, truncated, or not a spool file."""


def default_spool_dir() -> str:
    """Return the per-user spool directory of this platform."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
        return os.path.join(base, "analytics_sdk", "spool")
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
        return os.path.expanduser("~/Library/Application Support/analytics_sdk/spool")
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec says to ignore a relative path
        state = os.path.expanduser("~/.local/state")
    return os.path.join(state, "analytics_sdk", "spool")


def fingerprint(identity: str) -> str:
    """Return the directory name of the spool of the store named ``identity``."""
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


@attrs.frozen(kw_only=True)
class ReplayResult:
    """What one replay moved from the spool into the store."""

    files: int = 0
    """Spool files the store accepted entirely (and that were deleted)."""
    pushes: int = 0
    """Pushes sent to the store (those it had already applied are no-ops there)."""
    counts: int = 0
    """Counts the store added (a push it had already applied adds none)."""


def encode(identity: str, pushes: list[Push], created: float) -> bytes:
    """Return the bytes of a spool file holding ``pushes`` (all of one producer)."""
    body = {
        "store": identity,
        "producer": pushes[0].producer,
        "created": created,
        "pushes": [
            {
                "sequence": push.sequence,
                "hourly": [
                    [event, [list(pair) for pair in properties], hour, value]
                    for (event, properties, hour), value in push.delta.hourly.items()
                ],
                "users": [
                    [event, user_id, day, value]
                    for (event, user_id, day), value in push.delta.users.items()
                ],
                **(
                    {
                        "groups": [
                            [event, group_type, group_id, user_id, day, value]
                            for (
                                event,
                                group_type,
                                group_id,
                                user_id,
                                day,
                            ), value in push.delta.groups.items()
                        ]
                    }
                    if push.delta.groups
                    else {}
                ),
                **(
                    {
                        "deduped": [
                            [
                                d.key,
                                d.event,
                                [list(p) for p in d.properties],
                                d.hour,
                                d.user_id,
                                d.value,
                                *([[list(g) for g in d.groups]] if d.groups else []),
                            ]
                            for d in push.deduped
                        ],
                        "dedupe_window": push.dedupe_window,
                    }
                    if push.deduped
                    else {}
                ),
            }
            for push in pushes
        ],
    }
    line = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
    digest = hashlib.sha256(line).hexdigest()
    grouped = any(push.delta.groups or any(d.groups for d in push.deduped) for push in pushes)
    version = 3 if grouped else 2 if any(push.deduped for push in pushes) else 1
    return b"%s %d\n%s\nsha256 %s\n" % (MAGIC.encode(), version, line, digest.encode())


class NewerFormat(SpoolError):
    """A spool file written by a newer version of the SDK."""


def _int(value: Any) -> int:
    if type(value) is not int:
        raise SpoolError(f"expected an integer, found {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise SpoolError(f"expected a string, found {value!r}")
    return value


def decode(data: bytes) -> tuple[str, list[Push]]:
    """Return ``(store identity, pushes in sequence order)`` of a spool file's bytes."""
    lines = data.split(b"\n")
    head = lines[0].split(b" ")
    if len(head) != 2 or head[0] != MAGIC.encode() or not head[1].isdigit():
        raise SpoolError("not a spool file (bad header)")
    if int(head[1]) > FORMAT_VERSION:
        raise NewerFormat(f"format version {int(head[1])}; this version reads {FORMAT_VERSION}")
    if len(lines) != 4 or lines[3] != b"" or not lines[2].startswith(b"sha256 "):
        raise SpoolError("incomplete file (torn or truncated write)")
    if hashlib.sha256(lines[1]).hexdigest().encode() != lines[2][len(b"sha256 ") :]:
        raise SpoolError("checksum mismatch")
    try:
        body = json.loads(lines[1])
        identity = _str(body["store"])
        producer = _str(body["producer"])
        pushes = []
        for item in body["pushes"]:
            delta = Delta()
            for event, properties, hour, value in item["hourly"]:
                props = tuple((_str(k), _str(v)) for k, v in properties)
                hour_key: HourKey = (_str(event), props, _int(hour))
                delta.hourly[hour_key] = delta.hourly.get(hour_key, 0) + _int(value)
            for event, user_id, day, value in item["users"]:
                user_key: UserKey = (_str(event), _str(user_id), _int(day))
                delta.users[user_key] = delta.users.get(user_key, 0) + _int(value)
            for event, group_type, group_id, user_id, day, value in item.get("groups", ()):
                group_key: GroupKey = (
                    _str(event),
                    _str(group_type),
                    _str(group_id),
                    None if user_id is None else _str(user_id),
                    _int(day),
                )
                delta.groups[group_key] = delta.groups.get(group_key, 0) + _int(value)
            sequence = _int(item["sequence"])
            deduped = tuple(_deduped(call) for call in item.get("deduped", ()))
            window = item.get("dedupe_window", DEFAULT_DEDUPE_WINDOW)
            if not isinstance(window, (int, float)) or isinstance(window, bool):
                raise SpoolError(f"expected a number, found {window!r}")
            pushes.append(
                Push(
                    producer=producer,
                    sequence=sequence,
                    delta=delta,
                    deduped=deduped,
                    dedupe_window=float(window),
                )
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolError(f"unreadable contents: {exc!r}") from None
    if not pushes:
        raise SpoolError("no pushes")
    return identity, sorted(pushes, key=lambda p: p.sequence)


def _deduped(call: list[Any]) -> Deduped:
    """Return the keyed call a spool file lists (its groups from format 3 on)."""
    key, event, properties, hour, user_id, value, *rest = call
    groups = rest[0] if rest else ()
    return Deduped(
        key=_str(key),
        event=_str(event),
        properties=tuple((_str(k), _str(v)) for k, v in properties),
        hour=_int(hour),
        user_id=None if user_id is None else _str(user_id),
        value=_int(value),
        groups=tuple((_str(t), _str(g)) for t, g in groups),
    )


def _fsync_dir(path: str) -> None:
    """Make a rename or unlink in directory ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _claimed(path: str) -> Iterator[int | None]:
    """Yield an open descriptor of ``path`` locked for this replayer, or ``None`` if another
    replayer holds it or it was already replayed and deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None  # another process replays this file right now
                return
        # Between our listing and our lock, another replayer may have finished the file and
        # deleted it: then the name is gone (or names a new file).
        try:
            current = os.stat(path)
        except FileNotFoundError:
            yield None
            return
        if current.st_ino != os.fstat(fd).st_ino:
            yield None
            return
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class Spool:
    """The spool directory of one store: write pushes into it, replay them out of it."""

    def __init__(self, root: str, identity: str) -> None:
        self.identity = identity
        self.root = root
        self.directory = os.path.join(root, fingerprint(identity))
        self._reported: set[str] = set()  # files already warned about (newer format, other store)

    def __repr__(self) -> str:
        return f"Spool({self.directory!r})"

    def write(self, pushes: list[Push]) -> str:
        """Write ``pushes`` (one producer's, in sequence order) durably; return the path."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        created = time.time()
        data = encode(self.identity, pushes, created)
        name = f"{int(created * 1e6):017d}-{pushes[0].producer}{SUFFIX}"
        final = os.path.join(self.directory, name)
        temp = os.path.join(self.directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.close(fd)
        os.replace(temp, final)
        _fsync_dir(self.directory)
        return final

    def files(self) -> list[str]:
        """Return the paths of the spool files waiting for replay, oldest first."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [os.path.join(self.directory, n) for n in sorted(names) if n.endswith(SUFFIX)]

    def replay(
        self,
        store: CounterStore,
        *,
        deadline: float = math.inf,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> ReplayResult:
        """Push every spool file into ``store`` and delete each one it accepted entirely.

        Stops at the first store failure (raised; the file stays for the next replay) or at
        ``deadline``. Files another replayer holds are skipped; unreadable ones are set aside.
        """
        files = pushes = counts = 0
        for path in self.files():
            if monotonic() >= deadline:
                break
            with _claimed(path) as fd:
                if fd is None:
                    continue
                loaded = self._load(path, fd)
                if loaded is None:
                    continue
                for push in loaded:
                    applied = store.push(push)  # a store failure propagates; the file stays
                    pushes += 1
                    counts += push.total if applied else 0
                os.unlink(path)  # while locked: no other replayer can be between read and delete
                _fsync_dir(self.directory)
                files += 1
        self._remove_stale_temps()
        return ReplayResult(files=files, pushes=pushes, counts=counts)

    def _load(self, path: str, fd: int) -> list[Push] | None:
        """Return the pushes of a claimed file, or None (with a warning) if it must not be
        replayed."""
        try:
            identity, pushes = decode(_read_all(fd))
        except NewerFormat as exc:
            self._report(path, "spool file %s is left alone: %s", path, exc)
            return None
        except (SpoolError, OSError) as exc:
            aside = path + ".corrupt"
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            logger.warning("spool file %s is unreadable (%s); set aside as %s", path, exc, aside)
            return None
        if identity != self.identity:
            self._report(
                path,
                "spool file %s belongs to store %r, not %r; left alone",
                path,
                identity,
                self.identity,
            )
            return None
        return pushes

    def _report(self, path: str, message: str, *args: object) -> None:
        if path not in self._reported:
            self._reported.add(path)
            logger.warning(message, *args)

    def _remove_stale_temps(self) -> None:
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        cutoff = time.time() - STALE_TEMP_SECONDS
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    @classmethod
    def for_store(cls, root: str | None, store: CounterStore) -> Spool | None:
        """Return the spool of ``store`` under ``root``, or None if spooling is off or the
        store lives only in this process (nothing to replay into after a restart)."""
        if root is None:
            return None
        identity = store.identity()
        if identity is None:
            return None
        return cls(root, identity)
