"""In-memory back ends for the real `Daemon`: a WireGuard device, the kernel, the Babel
socket and the move-hold device, so unit tests run whole daemons without root, without
interfaces and without a socket to the outside.

`Mesh` wires daemons together: every datagram a daemon sends to a peer's control address
is delivered to that peer's daemon on the next loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from wgcast import keys
from wgcast.daemon.config import Config, loads
from wgcast.daemon.ports import Datagrams
from wgcast.daemon.runtime import Daemon
from wgcast.dataplane.move_hold import MoveHoldStats
from wgcast.dataplane.types import Device, Peer, PeerUpdate, WireGuardBackend
from wgcast.prefix import Prefix

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class FakeDevice(WireGuardBackend):
    """A WireGuard device in memory, behind the real `WireGuardBackend` logic (move
    semantics of an add, native removal)."""

    def __init__(self, private: bytes, peers: Iterable[bytes]) -> None:
        super().__init__()
        self.private = private
        self.peers: dict[bytes, list[Prefix]] = {k: [] for k in peers}
        self.endpoints: dict[bytes, str | None] = dict.fromkeys(self.peers)
        self.requests: list[str] = []
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return "fake0"

    def _mutex(self) -> AbstractAsyncContextManager[Any]:
        return self._lock

    async def _get(self) -> Device:
        return Device(private_key=self.private, public_key=keys.public_from_private(self.private),
                      peers=[Peer(k, endpoint=self.endpoints[k], allowed_ips=list(v))
                             for k, v in self.peers.items()])

    async def _send(self, updates: Sequence[PeerUpdate], *, private_key: bytes | None = None,
                    listen_port: int | None = None, fwmark: int | None = None,
                    request: str = "set") -> None:
        self.requests.append(request)
        for up in updates:
            if up.endpoint is not None:
                self.endpoints[up.public_key] = up.endpoint
            mine = self.peers.setdefault(up.public_key, [])
            if up.replace_allowed_ips:
                mine.clear()
            for p, remove in up.allowed_ips:
                if remove:
                    if p in mine:
                        mine.remove(p)
                    continue
                for other in self.peers.values():  # WireGuard moves an entry
                    if p in other:
                        other.remove(p)
                mine.append(p)

    async def _test_removal(self) -> bool | None:
        return True

    def holder(self, prefix: Prefix) -> bytes | None:
        return next((k for k, v in self.peers.items() if prefix in v), None)


@dataclass
class FakeHost:
    """`ports.HostNetwork`: kernel routes (prefix -> interface) and addresses."""

    ifname: str
    routes: dict[Prefix, str] = field(default_factory=dict)
    addresses: set[tuple[str, str]] = field(default_factory=set)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def ensure_up(self, ifname: str | None = None) -> None:
        self.calls.append(("up", ifname or self.ifname))

    async def match_mtu(self, ifname: str) -> None:
        self.calls.append(("mtu", ifname))

    async def list_routes(self) -> set[Prefix]:
        return {p for p, dev in self.routes.items() if dev == self.ifname}

    async def add_routes(self, prefixes: Iterable[Prefix]) -> None:
        for p in prefixes:
            self.routes[p] = self.ifname

    async def remove_routes(self, prefixes: Iterable[Prefix]) -> None:
        for p in prefixes:
            self.routes.pop(p, None)

    async def route_via(self, prefixes: Iterable[Prefix], ifname: str) -> None:
        ps = list(prefixes)
        self.calls.append(("route_via", (sorted(map(str, ps)), ifname)))
        for p in ps:
            self.routes[p] = ifname

    async def remove_routes_via(self, prefixes: Iterable[Prefix], ifname: str) -> None:
        for p in prefixes:
            if self.routes.get(p) == ifname:
                del self.routes[p]

    async def add_address(self, addr: Interface | str, *, ifname: str | None = None) -> None:
        self.addresses.add((str(addr), ifname or self.ifname))

    async def remove_address(self, addr: Interface | str, *, ifname: str | None = None) -> None:
        self.addresses.discard((str(addr), ifname or self.ifname))

    async def add_group_address(self, addr: Interface | str, *, ifname: str = "lo") -> None:
        self.addresses.add((str(addr), ifname))


class FakeMoveHold:
    """`ports.MoveHoldDevice` without a TUN: counts holds and releases."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.families = {4, 6}
        self.held: set[Prefix] = set()
        self.opened = self.closed = False
        self._stats = MoveHoldStats()

    @property
    def stats(self) -> MoveHoldStats:
        return self._stats

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def hold(self, prefix: Prefix) -> None:
        self.held.add(prefix)
        self._stats.holds += 1

    def release(self, prefix: Prefix) -> int:
        self.held.discard(prefix)
        return 0


class MemoryTransport:
    """`ports.Transport` on a `Mesh`: datagrams go to the daemon owning the address."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.control: ipaddress.IPv6Address | None = None
        self.on_datagrams: Callable[[Datagrams], None] | None = None
        self.sent = 0

    def open(self, control: ipaddress.IPv6Address,
             on_datagrams: Callable[[Datagrams], None]) -> None:
        self.control = control
        self.on_datagrams = on_datagrams
        self.mesh.transports[control] = self

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        assert self.control is not None
        self.sent += 1
        if self.control in self.mesh.cut or dest in self.mesh.cut:
            return
        other = self.mesh.transports.get(dest)
        if other is not None and other.on_datagrams is not None:
            batch: Datagrams = [(self.control, data, None)]
            asyncio.get_running_loop().call_soon(other.on_datagrams, batch)

    def reopen(self) -> None:
        pass

    def drain(self) -> None:
        pass  # datagrams are delivered by call_soon, never queued

    def close(self) -> None:
        if self.control is not None:
            self.mesh.transports.pop(self.control, None)
        self.on_datagrams = None


@dataclass
class Node:
    """One daemon of a test mesh and its fake back ends."""

    name: str
    private: bytes
    daemon: Daemon
    device: FakeDevice
    host: FakeHost
    move_holds: list[FakeMoveHold]

    @property
    def public(self) -> bytes:
        return keys.public_from_private(self.private)


class Mesh:
    """Daemons joined by memory transports; `cut` silences a control address."""

    def __init__(self) -> None:
        self.transports: dict[ipaddress.IPv6Address, MemoryTransport] = {}
        self.cut: set[ipaddress.IPv6Address] = set()
        self.nodes: dict[str, Node] = {}

    def add(self, name: str, private: bytes, config: Config | str) -> Node:
        cfg = loads(config) if isinstance(config, str) else config
        device = FakeDevice(private, [p.key for p in cfg.peers])
        host = FakeHost(cfg.interface)
        holds: list[FakeMoveHold] = []

        def open_move_hold(wg: str) -> FakeMoveHold:
            q = FakeMoveHold(f"{wg}-h")
            holds.append(q)
            return q

        d = Daemon(cfg, device, host=host, transport=MemoryTransport(self),
                   open_move_hold=open_move_hold)
        node = Node(name, private, d, device, host, holds)
        self.nodes[name] = node
        return node

    async def start(self) -> None:
        for n in self.nodes.values():
            await n.daemon.start()

    def close(self) -> None:
        for n in self.nodes.values():
            n.daemon.close()


def config_text(name: str, tmp: str, peers: dict[str, bytes], extra: str = "",
                peer_extra: dict[str, str] | None = None, state_file: str | None = None,
                timers: str = "") -> str:
    """A config for node `name`: fast timers, probes off, state under `tmp`."""
    state = state_file or f"{tmp}/{name}.state"
    out = [f'interface = "wg-{name}"', f'state_file = "{state}"',
           f'api_socket = "{tmp}/{name}.sock"', "probe_port = 0", extra,
           "[timers]", 'profile = "fast"', timers]
    for pname, pub in peers.items():
        out += ["[[peers]]", f'name = "{pname}"', f'public_key = "{keys.b64(pub)}"',
                (peer_extra or {}).get(pname, "")]
    return "\n".join(out) + "\n"


@contextlib.asynccontextmanager
async def running(mesh: Mesh) -> AsyncIterator[Mesh]:
    """Start every daemon and their data-plane tasks; close them all after."""
    await mesh.start()
    stop = asyncio.Event()
    tasks = []
    for n in mesh.nodes.values():
        dp = n.daemon.dataplane
        assert dp is not None
        tasks.append(asyncio.create_task(dp.run(stop)))
        dp.kick()
    try:
        yield mesh
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        mesh.close()


async def until(cond: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll `cond` on the loop until it holds (bounded): the async twin of
    `wgcast.lab.system.wait_for`, for tests inside an event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        await asyncio.sleep(0.005)
