"""Shared vocabulary of the data plane: device state, AllowedIPs operations, errors.

Both WireGuard backends (the cross-platform UAPI of wireguard-go/boringtun and kernel
WireGuard over netlink) read into the same `Device`/`Peer` dataclasses, take the same
operations and raise the same errors, so the daemon does not care which one it drives.
This module stays pure (no sockets, no asyncio, no clock): `reconcile.py` imports it.
"""

from __future__ import annotations

import errno as _errno
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

# `Prefix`: one AllowedIPs entry (WireGuard stores exact (address, length) pairs), the
# one of wgcast.prefix, re-exported for the back ends.
from wgcast.endpoints import endpoint_parts as endpoint_parts  # the one ip:port parser
from wgcast.prefix import Prefix as Prefix

PeerKey = bytes
"""A peer's 32-byte public key."""


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Peer:
    """One peer as the device reports it."""

    public_key: bytes
    endpoint: str | None = None
    allowed_ips: list[Prefix] = field(default_factory=list)
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0


@dataclass(frozen=True, slots=True)
class Device:
    """A WireGuard interface as the device reports it (keys absent when unset)."""

    private_key: bytes | None = None
    public_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: list[Peer] = field(default_factory=list)

    def peer(self, public_key: bytes) -> Peer | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None

    def allowed_ips_by_peer(self) -> dict[PeerKey, set[Prefix]]:
        """The `actual` input of `reconcile.plan`: every peer, also those without IPs."""
        return {p.public_key: set(p.allowed_ips) for p in self.peers}


# --------------------------------------------------------------------------- ops


@dataclass(frozen=True, slots=True)
class AddAllowedIP:
    """Give `prefix` to `peer`; WireGuard's move semantics take it from any other peer."""

    peer: PeerKey
    prefix: Prefix


@dataclass(frozen=True, slots=True)
class RemoveAllowedIP:
    """Take `prefix` from `peer` so it goes nowhere (only if `peer` holds it)."""

    peer: PeerKey
    prefix: Prefix


@dataclass(frozen=True, slots=True)
class ReplaceAllowedIPs:
    """Set `peer`'s whole list; WireGuard clears then re-adds, so not atomic."""

    peer: PeerKey
    prefixes: tuple[Prefix, ...]


Op = AddAllowedIP | RemoveAllowedIP | ReplaceAllowedIPs


@dataclass(slots=True)
class PeerUpdate:
    """One peer section of a set request: what both wire formats have in common.

    `allowed_ips` holds (prefix, remove) pairs in order; `remove=True` entries need
    removal support (`allowed_ip=-P` / WGALLOWEDIP_F_REMOVE_ME).
    """

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    replace_allowed_ips: bool = False
    endpoint: str | None = None
    persistent_keepalive: int | None = None
    allowed_ips: list[tuple[Prefix, bool]] = field(default_factory=list)


def updates_from_ops(ops: Iterable[Op]) -> list[PeerUpdate]:
    """Peer sections for `ops`, in order, merging consecutive ops of the same peer.

    Every section is `update_only`: an AllowedIPs change must never create a peer
    (it would have no endpoint); peers are created with `set_peer` only.
    A `ReplaceAllowedIPs` starts a new section, because the replace flag clears the
    peer's list before the section's entries are applied.
    """
    out: list[PeerUpdate] = []
    for op in ops:
        last = out[-1] if out else None
        if isinstance(op, ReplaceAllowedIPs):
            out.append(
                PeerUpdate(
                    op.peer,
                    update_only=True,
                    replace_allowed_ips=True,
                    allowed_ips=[(p, False) for p in op.prefixes],
                )
            )
            continue
        if last is None or last.public_key != op.peer or last.remove:
            last = PeerUpdate(op.peer, update_only=True)
            out.append(last)
        last.allowed_ips.append((op.prefix, isinstance(op, RemoveAllowedIP)))
    return out


# --------------------------------------------------------------------------- errors


class WireGuardError(Exception):
    """A WireGuard request failed; `errno` as the implementation reported it (positive)."""

    def __init__(self, errno: int, request: str, detail: str = "") -> None:
        self.errno = errno
        self.request = request
        self.detail = detail
        name = _errno.errorcode.get(errno, "?")
        msg = f"{request} failed: errno {errno} ({name}): {self.meaning}"
        super().__init__(msg + (f"; {detail}" if detail else ""))

    meaning = "WireGuard reported an error"


class DeviceNotFound(WireGuardError):
    meaning = "no such WireGuard device (no UAPI socket / no such interface)"


class MalformedRequest(WireGuardError):
    meaning = "the request did not parse (EPROTO): a bug in wgcast"


class InvalidValue(WireGuardError):
    meaning = "a value was rejected (EINVAL): bad key, prefix, endpoint or unsupported key"


class PortInUse(WireGuardError):
    meaning = "the listen port (or fwmark) could not be bound (EADDRINUSE)"


class DeviceIOError(WireGuardError):
    meaning = "the implementation failed to read or write the request (EIO)"


class PermissionDenied(WireGuardError):
    meaning = "not allowed (EPERM/EACCES): needs CAP_NET_ADMIN"


class NotSupported(WireGuardError):
    meaning = "not supported by this WireGuard implementation"


class MalformedReply(WireGuardError):
    meaning = "the implementation answered something that does not parse"


class UnknownWireGuardError(WireGuardError):
    meaning = "unexpected error from the WireGuard implementation"


_BY_ERRNO: dict[int, type[WireGuardError]] = {
    _errno.ENOENT: DeviceNotFound,
    _errno.ENODEV: DeviceNotFound,
    _errno.EPROTO: MalformedRequest,
    _errno.EINVAL: InvalidValue,
    _errno.EADDRINUSE: PortInUse,
    _errno.EIO: DeviceIOError,
    _errno.EPERM: PermissionDenied,
    _errno.EACCES: PermissionDenied,
    _errno.EOPNOTSUPP: NotSupported,
}


def error_for(errno: int, request: str, detail: str = "") -> WireGuardError:
    """The specific exception for an errno (sign ignored: wireguard-go sends -22)."""
    code = abs(errno)
    return _BY_ERRNO.get(code, UnknownWireGuardError)(code, request, detail)


# --------------------------------------------------------------------------- backend


class WireGuardBackend(ABC):
    """What the daemon needs from a WireGuard implementation; UAPI and netlink agree.

    Subclasses implement `_get`, `_send`, `_test_removal` and `_mutex`; the AllowedIPs
    logic (removal support and its fallback) lives here once. Every public method holds
    the backend's mutex: the removal fallback is a read followed by a replace, and a
    change slipped in between would be wiped by the replace.
    """

    #: Which back end this is ("uapi", "netlink"): shown by `wgcast status`.
    kind: str = "?"

    def __init__(self) -> None:
        self._removal: bool | None = None

    @property
    @abstractmethod
    def name(self) -> str:
        """The interface name."""

    @abstractmethod
    def _mutex(self) -> AbstractAsyncContextManager[Any]:
        """The lock serialising this backend's public operations (an asyncio.Lock)."""

    @abstractmethod
    async def _get(self) -> Device:
        """Read the whole device (caller holds the mutex)."""

    @abstractmethod
    async def _send(
        self,
        updates: Sequence[PeerUpdate],
        *,
        private_key: bytes | None = None,
        listen_port: int | None = None,
        fwmark: int | None = None,
        request: str = "set",
    ) -> None:
        """Send one set request (the backend may split it on the wire)."""

    @abstractmethod
    async def _test_removal(self) -> bool | None:
        """True/False if single-prefix removal works; None if it cannot tell now."""

    async def get(self) -> Device:
        """Read the whole device."""
        async with self._mutex():
            return await self._get()

    async def supports_removal(self) -> bool:
        """Whether `RemoveAllowedIP` maps to a native removal; tested once, cached."""
        async with self._mutex():
            return await self._supports_removal()

    async def _supports_removal(self) -> bool:
        if self._removal is None:
            found = await self._test_removal()
            if found is None:
                return False
            self._removal = found
        return self._removal

    async def apply(self, ops: Sequence[Op]) -> None:
        """Apply AllowedIPs operations in order, in as few requests as possible.

        Without native removal, removals run last as one `replace_allowed_ips` per
        affected peer with the peer's remaining list, read right before (so a removal
        costs O(that peer's list) there).
        A failure can leave part of the batch applied: re-read and re-plan.
        """
        if not ops:
            return
        async with self._mutex():
            removals = [op for op in ops if isinstance(op, RemoveAllowedIP)]
            if not removals or await self._supports_removal():
                await self._send(updates_from_ops(ops), request="apply")
                return
            rest = [op for op in ops if not isinstance(op, RemoveAllowedIP)]
            if rest:
                await self._send(updates_from_ops(rest), request="apply")
            current = (await self._get()).peers
            gone: dict[PeerKey, set[Prefix]] = {}
            for op in removals:
                gone.setdefault(op.peer, set()).add(op.prefix)
            replaces: list[Op] = []
            for peer in current:
                drop = gone.get(peer.public_key)
                if drop and drop.intersection(peer.allowed_ips):
                    keep = tuple(p for p in peer.allowed_ips if p not in drop)
                    replaces.append(ReplaceAllowedIPs(peer.public_key, keep))
            if replaces:
                await self._send(updates_from_ops(replaces), request="apply (remove by replace)")

    async def _locked_send(self, updates: Sequence[PeerUpdate], **kw: Any) -> None:
        async with self._mutex():
            await self._send(updates, **kw)

    async def set_peer(
        self,
        public_key: bytes,
        *,
        endpoint: str | None = None,
        allowed_ips: Sequence[Prefix] | None = None,
        persistent_keepalive: int | None = None,
        replace_allowed_ips: bool = False,
    ) -> None:
        """Add a peer or update one; given allowed IPs are added (or replace the list)."""
        if endpoint is not None:
            endpoint_parts(endpoint)
        up = PeerUpdate(
            public_key,
            replace_allowed_ips=replace_allowed_ips,
            endpoint=endpoint,
            persistent_keepalive=persistent_keepalive,
            allowed_ips=[(p, False) for p in allowed_ips or ()],
        )
        await self._locked_send([up], request="set_peer")

    async def set_endpoint(self, public_key: bytes, endpoint: str) -> None:
        """Point an existing peer at "ip:port" / "[ip6]:port" (never creates the peer)."""
        endpoint_parts(endpoint)
        up = PeerUpdate(public_key, update_only=True, endpoint=endpoint)
        await self._locked_send([up], request="set_endpoint")

    async def restart_handshake(self, public_key: bytes) -> bool:
        """Let the next packet to the peer start a handshake at once.

        WireGuard sends at most one handshake initiation per 5 s per peer: after its
        endpoint moved away from a dead address, the next try would wait. Only for a peer
        without a working session. False where the backend cannot do it.
        """
        return False

    async def remove_peer(self, public_key: bytes) -> None:
        await self._locked_send([PeerUpdate(public_key, remove=True)], request="remove_peer")

    async def configure(
        self,
        *,
        private_key: bytes | None = None,
        listen_port: int | None = None,
        fwmark: int | None = None,
    ) -> None:
        """Device-level settings (used by tests and the lab; the daemon reads them)."""
        await self._locked_send(
            [],
            private_key=private_key,
            listen_port=listen_port,
            fwmark=fwmark,
            request="configure",
        )

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (the netlink socket); UAPI holds none between requests."""
