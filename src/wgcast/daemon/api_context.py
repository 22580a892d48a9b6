"""The API's request context: errors with stable codes, client connections, credentials.

Shared by the API server and its plug-ins (the membership commands), so a plug-in needs
neither the server nor the daemon: a handler raises `ApiError` and reads the connection
it serves with `current_connection()`.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("wgcast.api")


class ApiError(Exception):
    """A request refused; `code` is the stable `error` of the reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def prefix_arg(raw: object, expected: str = "an IP prefix"
               ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A request's "prefix": a string naming an exact prefix, bounded; ApiError if not."""
    if not isinstance(raw, str) or len(raw) > 64:
        raise ApiError("bad_request", f'expected "prefix": {expected} such as '
                                      '"fd00:a::53/128"')
    try:
        return ipaddress.ip_network(raw.strip(), strict=True)
    except ValueError as e:
        raise ApiError("bad_prefix", f"not a prefix: {e}") from None


@dataclass(frozen=True, slots=True)
class PeerCred:
    """SO_PEERCRED of a client: its pid, uid and gid when it connected."""

    pid: int
    uid: int
    gid: int


@dataclass(eq=False)
class Connection:
    """One client connection, as handlers see it through `current_connection()`.

    `id` is unique for the server's lifetime; `peer` is None where the platform has no
    SO_PEERCRED. Callbacks registered with `on_close` run once, when the connection ends
    (EOF, error, daemon stop), in the order registered; `data` is free for plug-ins.
    """

    id: int
    peer: PeerCred | None
    data: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    _on_close: list[Callable[[Connection], None]] = field(default_factory=list)

    def on_close(self, callback: Callable[[Connection], None]) -> None:
        if self.closed:
            callback(self)
        else:
            self._on_close.append(callback)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        callbacks, self._on_close = self._on_close, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # one plug-in's bug must not skip the others
                log.exception("API connection close callback failed")


_current: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "wgcast_api_connection", default=None)


def current_connection() -> Connection:
    """The connection whose request is being handled (inside a handler only)."""
    conn = _current.get()
    if conn is None:
        raise RuntimeError("current_connection() outside an API request")
    return conn


def bind_connection(conn: Connection) -> contextvars.Token[Connection | None]:
    """Make `conn` the current connection of this task (the server, per client)."""
    return _current.set(conn)


def unbind_connection(token: contextvars.Token[Connection | None]) -> None:
    _current.reset(token)
