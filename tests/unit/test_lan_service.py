"""The [[lan]] service (daemon/lan.py) with a fake socket and a fake kernel: who becomes
a neighbour, where its datagrams go, and which gateway routes are installed."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from wgcast.daemon import lan as lanmod
from wgcast.daemon.config import loads
from wgcast.daemon.lan import LanService
from wgcast.daemon.ports import Datagrams

A = ipaddress.IPv6Address
N = ipaddress.ip_network
OWN, L1, L2 = A("fe80::1"), A("fe80::2"), A("fe80::3")


class FakeTransport:
    def __init__(self, ifname: str, port: int) -> None:
        self.ifname, self.port = ifname, port
        self.opened: A | None = None
        self.sent: list[tuple[bytes, A]] = []
        self.on: Callable[[Datagrams], None] | None = None

    def open(self, control: A, on_datagrams: Callable[[Datagrams], None]) -> None:
        self.opened, self.on = control, on_datagrams

    def send(self, data: bytes, dest: A) -> None:
        self.sent.append((data, dest))

    def reopen(self) -> None: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...


class FakeSystem:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.routes: dict[Any, A] = {}
        self.leftover: dict[Any, A] = {}
        self.calls: list[tuple[dict[Any, A], dict[Any, A]]] = []

    async def list_addresses(self, ifname: str) -> list[Any]:
        return [ipaddress.ip_interface("fe80::1/64"), ipaddress.ip_interface("fd00::9/64")]

    async def list_gateway_routes(self) -> dict[Any, A]:
        self.routes.update(self.leftover)
        return dict(self.leftover)

    async def change_gateway_routes(self, replace: dict[Any, A], remove: dict[Any, A]) -> None:
        self.calls.append((dict(replace), dict(remove)))
        self.routes.update(replace)
        for p in remove:
            self.routes.pop(p, None)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def call_at(self, when: float, callback: Callable[[], None]) -> Any: ...

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...


CONF = loads('interface = "wg0"\n[[lan]]\ninterface = "eth1"\nmay_originate = ["fd00:b::/48"]\n')


def _service() -> tuple[LanService, dict[str, FakeTransport], dict[str, FakeSystem]]:
    ts: dict[str, FakeTransport] = {}
    ss: dict[str, FakeSystem] = {}

    def mk_t(ifname: str, port: int) -> FakeTransport:
        ts[ifname] = FakeTransport(ifname, port)
        return ts[ifname]

    def mk_s(ifname: str) -> FakeSystem:
        ss[ifname] = FakeSystem(ifname)
        return ss[ifname]

    return LanService(CONF, Clock(), mk_t, mk_s), ts, ss  # type: ignore[arg-type]


def test_speaks_from_the_link_local_address_and_takes_link_local_neighbours() -> None:
    svc, ts, _ = _service()
    heard: list[tuple[str, Datagrams]] = []
    asyncio.run(svc.start(lambda lan, batch: heard.append((lan.interface, batch))))
    assert ts["eth1"].opened == OWN
    (lan,) = CONF.lan
    nb = svc.neighbour(lan, L1)
    assert nb is not None and nb.name == "fe80::2%eth1" and svc.neighbour(lan, L1) is nb
    assert svc.neighbour(lan, A("fd00::5")) is None  # not link-local
    assert svc.neighbour(lan, OWN) is None  # ourselves
    svc.send(nb.name, b"x")
    assert ts["eth1"].sent == [(b"x", L1)]
    svc.forget(nb.name)
    assert nb.name not in svc.neighbours


def test_neighbours_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(lanmod, "MAX_NEIGHBOURS", 2)
    svc, _, _ = _service()
    asyncio.run(svc.start(lambda lan, batch: None))
    (lan,) = CONF.lan
    assert svc.neighbour(lan, L1) and svc.neighbour(lan, L2)
    assert svc.neighbour(lan, A("fe80::4")) is None
    assert svc.stats.neighbours_refused == 1


def test_routes_through_neighbours_follow_the_selection() -> None:
    svc, _, ss = _service()
    (lan,) = CONF.lan

    async def go() -> None:
        await svc.start(lambda lan, batch: None)
        n1, n2 = svc.neighbour(lan, L1), svc.neighbour(lan, L2)
        assert n1 is not None and n2 is not None
        p, q = N("fd00:b::1/128"), N("10.0.2.0/24")
        svc.route_selected(p, n1.name)
        svc.route_selected(q, n1.name)
        await svc.apply_once()
        assert ss["eth1"].routes == {p: L1, q: L1}
        svc.route_selected(p, n2.name)  # moves: one replace, nothing removed
        await svc.apply_once()
        assert ss["eth1"].calls[-1] == ({p: L2}, {})
        svc.route_selected(q, None)  # now own, unreachable or through WireGuard
        svc.route_selected(N("fd00:c::/64"), None)  # never on the LAN: nothing to do
        await svc.apply_once()
        assert ss["eth1"].calls[-1] == ({}, {q: L1})
        assert ss["eth1"].routes == {p: L2}
        assert svc.installed(p) and not svc.installed(q)

    asyncio.run(go())


def test_leftover_routes_go_after_the_grace_unless_selected_again() -> None:
    svc, _, _ = _service()
    (lan,) = CONF.lan
    kept, stale = N("fd00:b::1/128"), N("fd00:b::2/128")

    def mk_s(ifname: str) -> FakeSystem:
        s = FakeSystem(ifname)
        s.leftover = {kept: L1, stale: L1}
        systems[ifname] = s
        return s

    systems: dict[str, FakeSystem] = {}
    svc._make_system = mk_s  # type: ignore[assignment]
    clock = svc.clock
    assert isinstance(clock, Clock)

    async def go() -> None:
        await svc.start(lambda lan, batch: None)
        n1 = svc.neighbour(lan, L1)
        assert n1 is not None
        svc.route_selected(kept, n1.name)
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run(stop))
        await asyncio.sleep(0.05)
        assert systems["eth1"].routes == {kept: L1, stale: L1}  # within the grace
        clock.t = 1000.0
        svc.route_selected(kept, n1.name)  # wakes the loop after the grace
        for _ in range(100):
            if stale not in systems["eth1"].routes:
                break
            await asyncio.sleep(0.01)
        stop.set()
        svc._dirty.set()
        await asyncio.wait_for(task, 5)
        assert systems["eth1"].routes == {kept: L1}

    asyncio.run(go())


def test_a_selection_made_while_the_kernel_is_written_is_applied_next() -> None:
    """The engine runs on while a round of routes is written: a route selected during
    that write is not taken as installed, it goes in the next round."""
    svc, _, ss = _service()
    (lan,) = CONF.lan
    p, q = N("fd00:b::1/128"), N("fd00:b::2/128")

    async def go() -> None:
        await svc.start(lambda lan, batch: None)
        n1 = svc.neighbour(lan, L1)
        assert n1 is not None
        system = ss["eth1"]
        plain = system.change_gateway_routes

        async def meanwhile(replace: dict[Any, A], remove: dict[Any, A]) -> None:
            if q not in system.routes and q not in replace:
                svc.route_selected(q, n1.name)  # selected during the write
            await plain(replace, remove)

        system.change_gateway_routes = meanwhile  # type: ignore[method-assign]
        svc.route_selected(p, n1.name)
        await svc.apply_once()
        assert system.routes == {p: L1} and not svc.installed(q)
        await svc.apply_once()
        assert system.routes == {p: L1, q: L1} and svc.installed(q)

    asyncio.run(go())
