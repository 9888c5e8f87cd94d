"""``context(user_id=..., properties=..., groups=...)``: ambient values for every ``track()``
inside.

Backed by a ``ContextVar``, so it follows ``await`` and is copied into asyncio tasks created
inside it; threads started inside do not inherit it (run them with
``contextvars.copy_context().run``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

import attrs

from .events import validate_groups, validate_properties, validate_user_id
from .keys import Groups, Properties

__all__ = ["Scope", "context", "current_scope"]

MAX_SCOPE_PROPERTIES = 64


@attrs.frozen(kw_only=True)
class Scope:
    """The ambient user id, properties and groups."""

    user_id: str | None = None
    properties: Properties = ()
    groups: Groups = ()
    """Checked for form only: ``track()`` checks the types against its client's."""


_SCOPE: ContextVar[Scope | None] = ContextVar("analytics_sdk_scope", default=None)
current_scope = _SCOPE.get
"""Return the active :class:`Scope`, or ``None`` outside any ``context()``."""


def merge_properties(base: Properties, override: Properties) -> Properties:
    """Return ``base`` updated with ``override`` (override wins), sorted."""
    if not base:
        return override
    if not override:
        return base
    merged = dict(base)
    merged.update(override)
    return tuple(sorted(merged.items()))


def merge_groups(base: Groups, override: Groups) -> Groups:
    """Return ``base`` updated with ``override`` (override wins per group type), sorted."""
    if not base:
        return override
    if not override:
        return base
    merged = dict(base)
    merged.update(override)
    return tuple(sorted(merged.items()))


class context:
    """Set a user id, properties and groups for every ``track()`` in the block; nests and
    merges (the inner block wins per property key and per group type)."""

    __slots__ = ("_scope", "_tokens")

    def __init__(
        self,
        *,
        user_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        checked_user = None if user_id is None else validate_user_id(user_id)
        checked = (
            () if properties is None else validate_properties(properties, MAX_SCOPE_PROPERTIES)
        )
        self._scope = Scope(
            user_id=checked_user,
            properties=checked,
            groups=() if groups is None else validate_groups(groups, None),
        )
        self._tokens: list[Token[Scope | None]] = []

    def __enter__(self) -> Scope:
        outer = _SCOPE.get()
        scope = self._scope
        if outer is not None:
            scope = Scope(
                user_id=scope.user_id if scope.user_id is not None else outer.user_id,
                properties=merge_properties(outer.properties, scope.properties),
                groups=merge_groups(outer.groups, scope.groups),
            )
        self._tokens.append(_SCOPE.set(scope))
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _SCOPE.reset(self._tokens.pop())

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
