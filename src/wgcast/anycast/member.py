"""Refcounted group membership held by connections (the IPV6_JOIN_ANYCAST model).

A connection (an integer id chosen by the driver) belongs to a uid and holds a set of
groups. The reference count of a group is the number of connections holding it; closing
a connection releases everything it held at once, so a crashed member stops counting the
moment its socket closes. Every table is bounded by `Limits`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgcast.anycast import Prefix

__all__ = ["Limits", "MemberError", "Registry"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of the membership tables."""

    #: Open connections of one uid (root, uid 0, is only bound by `connections`).
    connections_per_uid: int = 64
    #: Groups one connection may hold.
    memberships_per_connection: int = 64
    #: Open connections in total.
    connections: int = 4096

    def __post_init__(self) -> None:
        for name in ("connections_per_uid", "memberships_per_connection", "connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1")


class MemberError(Exception):
    """A refused operation; `code` is the API's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Registry:
    """Connections, the groups each holds, and the reference count of every group."""

    __slots__ = ("_counts", "_held", "_per_uid", "_uid", "limits")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._uid: dict[int, int] = {}
        self._held: dict[int, set[Prefix]] = {}
        self._per_uid: dict[int, int] = {}
        self._counts: dict[Prefix, int] = {}

    # ---------------------------------------------------------------- connections

    def connect(self, conn: int, uid: int) -> None:
        """Admit a new connection of `uid`, or raise MemberError(too_many_connections)."""
        if conn in self._uid:
            raise MemberError("internal", f"connection {conn} is already registered")
        if len(self._uid) >= self.limits.connections:
            raise MemberError("too_many_connections",
                              f"the daemon holds {self.limits.connections} connections already")
        n = self._per_uid.get(uid, 0)
        if uid != 0 and n >= self.limits.connections_per_uid:
            raise MemberError("too_many_connections",
                              f"uid {uid} has {n} connections open (at most "
                              f"{self.limits.connections_per_uid})")
        self._uid[conn] = uid
        self._held[conn] = set()
        self._per_uid[uid] = n + 1

    def disconnect(self, conn: int) -> list[Prefix]:
        """Forget a connection; returns the groups it held (their counts are lower now)."""
        uid = self._uid.pop(conn, None)
        if uid is None:
            return []
        left = self._per_uid[uid] - 1
        if left:
            self._per_uid[uid] = left
        else:
            del self._per_uid[uid]
        held = self._held.pop(conn)
        for prefix in held:
            self._decrement(prefix)
        return sorted(held, key=_key)

    def connected(self, conn: int) -> bool:
        return conn in self._uid

    def uid_of(self, conn: int) -> int | None:
        return self._uid.get(conn)

    def connections(self, uid: int | None = None) -> int:
        if uid is None:
            return len(self._uid)
        return self._per_uid.get(uid, 0)

    # ---------------------------------------------------------------- memberships

    def join(self, conn: int, prefix: Prefix) -> int:
        """`conn` holds `prefix` from now on; returns the group's new count."""
        held = self._held.get(conn)
        if held is None:
            raise MemberError("internal", f"connection {conn} is not registered")
        if prefix in held:
            raise MemberError("already_member", f"this connection already holds {prefix}")
        if len(held) >= self.limits.memberships_per_connection:
            raise MemberError("too_many_memberships",
                              f"a connection holds at most "
                              f"{self.limits.memberships_per_connection} groups")
        held.add(prefix)
        n = self._counts.get(prefix, 0) + 1
        self._counts[prefix] = n
        return n

    def leave(self, conn: int, prefix: Prefix) -> int:
        """`conn` stops holding `prefix`; returns the group's new count."""
        held = self._held.get(conn)
        if held is None or prefix not in held:
            raise MemberError("not_member", f"this connection does not hold {prefix}")
        held.discard(prefix)
        return self._decrement(prefix)

    def _decrement(self, prefix: Prefix) -> int:
        n = self._counts[prefix] - 1
        if n:
            self._counts[prefix] = n
        else:
            del self._counts[prefix]
        return n

    def count(self, prefix: Prefix) -> int:
        return self._counts.get(prefix, 0)

    def memberships(self, conn: int) -> frozenset[Prefix]:
        return frozenset(self._held.get(conn, ()))

    def holders(self, prefix: Prefix) -> list[int]:
        """Connections holding `prefix`, in id order."""
        return sorted(c for c, held in self._held.items() if prefix in held)

    def check(self) -> None:
        """Assert the internal invariants (for tests)."""
        counts: dict[Prefix, int] = {}
        per_uid: dict[int, int] = {}
        for conn, held in self._held.items():
            per_uid[self._uid[conn]] = per_uid.get(self._uid[conn], 0) + 1
            for p in held:
                counts[p] = counts.get(p, 0) + 1
        assert counts == self._counts, (counts, self._counts)
        assert per_uid == self._per_uid, (per_uid, self._per_uid)
        assert set(self._uid) == set(self._held)


def _key(p: Prefix) -> tuple[int, int, int]:
    return (p.version, int(p.network_address), p.prefixlen)
