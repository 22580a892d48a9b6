"""What the daemon's parts may see of each other: small Protocols and frozen snapshots.

The runtime (`daemon/runtime.py`) owns the event loop, the Babel engine, the WireGuard
device and the kernel; it is the only module that imports the services (api, membership,
metrics, endpoint manager, data-plane applier, peer policy, transport). Each service gets
only the ports below, never the `Daemon`: so a service can be read, tested and changed
without knowing the runtime's private state, and a test fake implements a port, not a
copy of the daemon's private names.

Snapshots are frozen copies taken when asked: holding one never pins engine state, and
a service cannot change what the engine decided.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from wgcast.dataplane.move_hold import MoveHoldStats
from wgcast.dataplane.types import PeerKey
from wgcast.prefix import Prefix

#: Babel's link-local multicast group (RFC 8966 section 5): what a Transport joins, and
#: where Hellos for every listener on a link go.
BABEL_GROUP = ipaddress.IPv6Address("ff02::1:6")

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# --------------------------------------------------------------------------- peers


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One configured peer as the daemon uses it."""

    name: str
    key: PeerKey
    control: ipaddress.IPv6Address
    router_id: bytes
    may_originate: tuple[Prefix, ...]
    endpoints: tuple[str, ...] = ()
    #: Not a wgcast node (babeld, BIRD, FRR...): its router-id is not the hash of its
    #: key, so what it sends is judged by address alone (see PeerPolicy.refusal).
    generic: bool = False

# --------------------------------------------------------------------------- time


class Scheduler(Protocol):
    """The event loop's clock and file readiness (the runtime's asyncio loop).

    One clock for everything: the engine, the services and the timers all read `now()`.
    """

    def now(self) -> float:
        """Seconds on the loop's monotonic clock."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Run `callback` at loop time `when`."""
        ...

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `fd` is readable."""
        ...

    def remove_reader(self, fd: int) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True, slots=True)
class NeighbourSnapshot:
    """One Babel neighbour as the engine saw it when asked."""

    name: str
    up: bool
    #: Smoothed RTT through the tunnel, None before the first sample.
    rtt_ms: float | None
    #: Loop time of the last Hello heard, None before the first.
    last_hello: float | None
    #: The neighbour's own Hello interval (seconds), 0.0 while unknown.
    hello_interval: float


@dataclass(frozen=True, slots=True)
class RouteSnapshot:
    """One route to a prefix, learned from `neighbour`."""

    neighbour: str
    router_id: bytes
    seqno: int
    #: The metric the neighbour announced.
    refmetric: int
    #: `refmetric` plus the link cost to the neighbour (what selection compares).
    metric: int


@dataclass(frozen=True, slots=True)
class SelectedSnapshot:
    """The route selected for a prefix (`via` is the engine's LOCAL for own prefixes)."""

    prefix: Prefix
    via: str
    metric: int
    router_id: bytes
    seqno: int


class EngineView(Protocol):
    """Read-only queries on the Babel engine; every answer is a copy."""

    @property
    def router_id(self) -> bytes: ...

    @property
    def seqno(self) -> int: ...

    def neighbour(self, name: str) -> NeighbourSnapshot | None:
        """The neighbour `name`, None if the engine does not know it."""
        ...

    def neighbours(self) -> tuple[NeighbourSnapshot, ...]: ...

    def neighbour_cost(self, name: str) -> int:
        """Link cost to `name` (65535: unreachable)."""
        ...

    def routes_to(self, prefix: Prefix) -> tuple[RouteSnapshot, ...]:
        """Every route the engine holds to `prefix`, one per neighbour."""
        ...

    def routes_via(self, name: str) -> int:
        """How many routes were learned from `name`."""
        ...

    def selected(self) -> tuple[SelectedSnapshot, ...]:
        """Every prefix with a selected route, own ones included."""
        ...

    def counters(self) -> Mapping[str, int]:
        """The engine's event counters (packets, bytes, updates, ...)."""
        ...


class EngineControl(Protocol):
    """The two engine actions a service may take (the endpoint manager after a switch)."""

    def hello_now(self, name: str) -> None:
        """Queue a Hello to `name` now (it leaves on the next `flush`)."""
        ...

    def flush(self) -> None:
        """Send what the engine wrote and act on its events (the runtime's pump)."""
        ...


# --------------------------------------------------------------------------- groups


class GroupServing(Protocol):
    """Serving an anycast group: address up and originate, or retract and address down."""

    async def serve(self, prefix: Prefix, metric: int | None = None) -> None: ...

    async def unserve(self, prefix: Prefix, wait: float | None = None,
                      settle: float = 0.0) -> bool:
        """Retract, wait (bounded) for the neighbours' acks; True when all acked."""
        ...


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """One configured group as the membership service sees it."""

    prefix: Prefix
    served: bool
    members: int
    healthy: bool
    draining: bool


class GroupSource(Protocol):
    """Where the metrics read the groups' state (the membership service)."""

    def group_snapshots(self) -> tuple[GroupSnapshot, ...]: ...


# --------------------------------------------------------------------------- API

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class CommandRegistry(Protocol):
    """The API server as a plug-in sees it: commands by name, hooks on new connections."""

    handlers: dict[str, Handler]
    connect_hooks: list[Callable[[Any], None]]


@dataclass(frozen=True, slots=True)
class DaemonCounters:
    """Every number the metrics export, read at once (one consistent scrape)."""

    interface: str
    router_id: bytes
    control_address: str
    seqno: int
    routes: int
    served_groups: int
    babel: Mapping[str, int]
    dataplane_applies: int
    dataplane_ops: int
    dataplane_errors: int
    last_apply_ms: float
    held_moves: int
    held_packets: int
    #: Packets dropped by a full move-hold queue; None without a move-hold device.
    move_hold_dropped: int | None
    announcements_dropped: int
    #: Refused announcements by (neighbour, reason) (peer_policy.REASONS).
    announcements_refused: Mapping[tuple[str, str], int]
    #: The endpoint manager's status (counters and its probe port), None without one.
    endpoints: Mapping[str, Any] | None
    #: State file saves that failed (retried; never fatal).
    state_save_errors: int = 0
    #: Owned AllowedIPs / routes put back after someone else changed them.
    dataplane_put_back: int = 0
    #: Resyncs after the interface came back (recreated, wireguard-go restarted).
    interface_resyncs: int = 0
    #: Origin signatures made, verified (Ed25519), and answered from memory.
    signatures: Mapping[str, int] = field(default_factory=dict)


class StatusSource(Protocol):
    """The daemon's state for the API (JSON-ready views) and the metrics (counters)."""

    def status(self) -> dict[str, Any]: ...

    def route_table(self) -> list[dict[str, Any]]: ...

    def peer_table(self) -> list[dict[str, Any]]: ...

    def counters(self) -> DaemonCounters | None:
        """None before the engine runs."""
        ...


# --------------------------------------------------------------------------- kernel


class HostNetwork(Protocol):
    """The kernel side of the data plane: links, routes and addresses
    (`wgcast.dataplane.system.System`)."""

    async def ensure_up(self, ifname: str | None = None) -> None: ...

    async def match_mtu(self, ifname: str) -> None: ...

    async def list_routes(self) -> set[Prefix]: ...

    async def add_routes(self, prefixes: Iterable[Prefix]) -> None: ...

    async def remove_routes(self, prefixes: Iterable[Prefix]) -> None: ...

    async def route_via(self, prefixes: Iterable[Prefix], ifname: str) -> None: ...

    async def remove_routes_via(self, prefixes: Iterable[Prefix], ifname: str) -> None: ...

    async def add_address(self, addr: Interface | str, *,
                          ifname: str | None = None) -> None: ...

    async def remove_address(self, addr: Interface | str, *,
                             ifname: str | None = None) -> None: ...

    async def add_group_address(self, addr: Interface | str, *, ifname: str = "lo") -> None: ...


class MoveHoldDevice(Protocol):
    """Where packets of a moving prefix wait until the replies through the old peer are
    in (`wgcast.dataplane.move_hold.MoveHoldQueue`)."""

    ifname: str
    #: IP versions whose packets can be held (re-injection needs forwarding on).
    families: set[int]

    def open(self) -> None: ...

    def close(self) -> None: ...

    def hold(self, prefix: Prefix) -> None:
        """Queue the prefix's packets from now on (route them here next)."""
        ...

    def release(self, prefix: Prefix) -> int:
        """Send the queued packets on; returns how many."""
        ...

    @property
    def stats(self) -> MoveHoldStats: ...


#: (source, bytes, arrival time on the loop's clock or None if the socket did not say).
Datagrams = list[tuple[ipaddress.IPv6Address, bytes, float | None]]


class Transport(Protocol):
    """The Babel socket: datagrams to and from the neighbours' control addresses."""

    def open(self, control: ipaddress.IPv6Address,
             on_datagrams: Callable[[Datagrams], None]) -> None:
        """Bind on `control`; each readable burst arrives as one batch."""
        ...

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        """Best effort: a peer without a handshake drops it, the next Hello retries."""
        ...

    def reopen(self) -> None:
        """Bind again on the interface's current ifindex (it was recreated)."""
        ...

    def drain(self) -> None:
        """Deliver, now and bounded, the datagrams that have already arrived."""
        ...

    def close(self) -> None: ...
