"""The accessor of the global client, installed by ``api``.

Modules below ``api`` that default to the global client (``prometheus``'s apps) call
:func:`global_client` instead of importing ``api``, so imports only ever point down:
``api`` -> ``client`` -> ``prometheus``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Analytics

__all__ = ["global_client", "install"]

_accessor: Callable[[], Analytics] | None = None


def install(accessor: Callable[[], Analytics]) -> None:
    """Make ``accessor`` the way to reach the global client (``api`` does, at import)."""
    global _accessor
    _accessor = accessor


def global_client() -> Analytics:
    """Return the global client (created from the environment on first use)."""
    if _accessor is None:  # api is imported with the package, so this cannot happen
        raise RuntimeError("analytics_sdk.api is not imported: no global client")
    return _accessor()
