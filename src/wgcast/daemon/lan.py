"""Plain LAN interfaces (`[[lan]]`): Babel with the RFC 8966 speakers on a LAN.

A mesh edge meets a LAN of babeld / BIRD / FRR routers the way they meet each other: a
socket joined to ff02::1:6 on the LAN hears their multicast Hellos and Updates, and
every link-local source heard becomes a neighbour of the engine (named `fe80::x%eth1`).
Each LAN has one stream of multicast Hellos (the engine's Hello stream `ff02::1:6%eth1`,
babel/hellostream.py) sent to ff02::1:6 from the interface's own link-local address,
each Hello followed by an IHU for every neighbour heard there, as babeld does: that is
how the others (and other wgcast nodes) find us, and every receiver sees one Hello
sequence from our address. Everything else the engine writes to a neighbour (Updates,
requests, acks) goes to it by unicast. A neighbour that goes down is forgotten (heard
again, it comes back).

Routes through a LAN neighbour are kernel routes with its link-local address as the
gateway (IPv4 ones by RTA_VIA), protocol 152 like every wgcast route; no AllowedIPs.
Their announcements are judged by address, like a generic peer's (peer_policy): inside
the LAN's `may_originate` or the anycast prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from wgcast.daemon.config import Config, LanConf
from wgcast.daemon.ports import BABEL_GROUP, Datagrams, Scheduler, Transport
from wgcast.dataplane.system import NetConfigError, System
from wgcast.prefix import Prefix

log = logging.getLogger("wgcast")

def stream_id(ifname: str) -> str:
    """The engine id of a LAN's multicast Hello stream."""
    return f"{BABEL_GROUP}%{ifname}"


#: Neighbours taken on one LAN at most (more are counted and ignored: a flood of
#: forged sources must not grow the engine without bound).
MAX_NEIGHBOURS = 64


@dataclass(frozen=True, slots=True)
class LanNeighbour:
    """A Babel speaker heard on a LAN."""

    name: str
    lan: LanConf
    address: ipaddress.IPv6Address


@dataclass(slots=True)
class LanStats:
    neighbours_refused: int = 0
    route_errors: int = 0


class LanService:
    """The `[[lan]]` interfaces of one daemon: their sockets, their neighbours and the
    kernel routes through them.

    `make_transport(ifname, port)` and `make_system(ifname)` give the socket and the
    kernel side of one LAN (the real ones by default; fakes in tests)."""

    def __init__(self, config: Config, clock: Scheduler,
                 make_transport: Callable[[str, int], Transport],
                 make_system: Callable[[str], System]) -> None:
        self.config = config
        self.clock = clock
        self._make_transport = make_transport
        self._make_system = make_system
        self.transports: dict[str, Transport] = {}
        self.systems: dict[str, System] = {}
        #: The interface's own link-local address (we speak from it).
        self.addresses: dict[str, ipaddress.IPv6Address] = {}
        self.neighbours: dict[str, LanNeighbour] = {}
        #: Hello stream id (stream_id) -> its LAN.
        self.streams: dict[str, LanConf] = {}
        self.stats = LanStats()
        #: prefix -> the neighbour to route through (None: no LAN route).
        self._desired: dict[Prefix, LanNeighbour | None] = {}
        #: prefix -> (interface, gateway) installed.
        self._installed: dict[Prefix, tuple[str, ipaddress.IPv6Address]] = {}
        self._inherited: set[Prefix] = set()
        self._dirty = asyncio.Event()

    async def start(self, on_datagrams: Callable[[LanConf, Datagrams], None],
                    on_address: Callable[[LanConf, ipaddress.IPv6Address], None]
                    = lambda _lan, _ll: None) -> None:
        """Find each LAN's link-local address (`on_address`: before its socket opens),
        read the routes a previous run left (removed after a grace period unless
        selected again), open the sockets."""
        for lan in self.config.lan:
            system = self.systems[lan.interface] = self._make_system(lan.interface)
            addrs = await system.list_addresses(lan.interface)
            ll = next((a.ip for a in addrs if a.version == 6 and a.ip.is_link_local), None)
            if not isinstance(ll, ipaddress.IPv6Address):
                raise RuntimeError(f"{lan.interface}: the LAN interface has no IPv6 "
                                   "link-local address (is it up? addrgenmode none?): "
                                   "Babel speaks from one")
            self.addresses[lan.interface] = ll
            self.streams[stream_id(lan.interface)] = lan
            on_address(lan, ll)
            for p, gw in (await system.list_gateway_routes()).items():
                self._installed[p] = (lan.interface, gw)
                self._inherited.add(p)
            t = self.transports[lan.interface] = self._make_transport(
                lan.interface, self.config.port)
            t.open(ll, lambda batch, lan=lan: on_datagrams(lan, batch))  # type: ignore[misc]
            log.info("%s: LAN, Babel from %s on ff02::1:6", lan.interface, ll)

    def close(self) -> None:
        for t in self.transports.values():
            t.close()
        self.transports.clear()

    # ------------------------------------------------------------ neighbours

    def neighbour(self, lan: LanConf, src: ipaddress.IPv6Address) -> LanNeighbour | None:
        """The neighbour a datagram from `src` on `lan` comes from, created when new;
        None for a source that cannot be one (not link-local, ourselves, too many)."""
        name = f"{src}%{lan.interface}"
        nb = self.neighbours.get(name)
        if nb is not None:
            return nb
        if not src.is_link_local or src == self.addresses.get(lan.interface):
            return None
        if sum(1 for n in self.neighbours.values() if n.lan == lan) >= MAX_NEIGHBOURS:
            self.stats.neighbours_refused += 1
            return None
        nb = self.neighbours[name] = LanNeighbour(name, lan, src)
        log.info("%s: new Babel neighbour %s", lan.interface, src)
        return nb

    def forget(self, name: str) -> None:
        self.neighbours.pop(name, None)

    def send(self, name: str, data: bytes) -> None:
        nb = self.neighbours[name]
        t = self.transports.get(nb.lan.interface)
        if t is not None:
            t.send(data, nb.address)

    def send_group(self, sid: str, data: bytes) -> None:
        """A packet of a LAN's Hello stream: to ff02::1:6 on that LAN."""
        t = self.transports.get(self.streams[sid].interface)
        if t is not None:
            t.send(data, BABEL_GROUP)

    # ------------------------------------------------------------ routes

    def route_selected(self, prefix: Prefix, via: str | None) -> None:
        """The engine's choice for `prefix`: through LAN neighbour `via`, or not
        through a LAN (None: own, unreachable or through WireGuard)."""
        nb = self.neighbours.get(via) if via is not None else None
        if nb is None and prefix not in self._installed and prefix not in self._desired:
            return
        self._desired[prefix] = nb
        self._dirty.set()

    def installed(self, prefix: Prefix) -> bool:
        return prefix in self._installed

    async def run(self, stop: asyncio.Event) -> None:
        """Apply the routes as they change; leftovers of a previous run go after the
        grace period (2 updates + the dead interval) unless selected again."""
        t = self.config.timers
        grace_until = self.clock.now() + 2 * t.update + t.dead_interval
        fails = 0
        while not stop.is_set():
            timeout = max(0.0, grace_until - self.clock.now()) if self._inherited else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout)
            self._dirty.clear()
            if self._inherited and self.clock.now() >= grace_until:
                for p in self._inherited:
                    self._desired.setdefault(p, None)
                self._inherited.clear()
            try:
                await self.apply_once()
            except (NetConfigError, OSError) as e:
                self.stats.route_errors += 1
                fails += 1
                if fails == 1:
                    log.warning("LAN routes: %s (retrying, backing off)", e)
                await asyncio.sleep(min(2.0, 0.05 * 2 ** (fails - 1)))
                self._dirty.set()
                continue
            fails = 0

    async def apply_once(self) -> None:
        replace: dict[str, dict[Prefix, ipaddress.IPv6Address]] = {}
        remove: dict[str, dict[Prefix, ipaddress.IPv6Address]] = {}
        # What is applied now: a selection that changes while the kernel is being
        # written (the engine runs on) stays desired for the next round.
        applying = dict(self._desired)
        for p, nb in applying.items():
            want = None if nb is None else (nb.lan.interface, nb.address)
            have = self._installed.get(p)
            if want is not None and want != have:
                # A replace takes the place of any route to `p` (same table and metric),
                # wherever it went: nothing to remove first.
                replace.setdefault(want[0], {})[p] = want[1]
            elif want is None and have is not None:
                remove.setdefault(have[0], {})[p] = have[1]
        for ifname in sorted(set(replace) | set(remove)):
            await self.systems[ifname].change_gateway_routes(replace.get(ifname, {}),
                                                             remove.get(ifname, {}))
        for p, nb in applying.items():
            if nb is None:
                self._installed.pop(p, None)
            else:
                self._installed[p] = (nb.lan.interface, nb.address)
            if p in self._desired and self._desired[p] is nb:
                if nb is None:
                    del self._desired[p]
            else:
                self._dirty.set()  # changed meanwhile: apply the new choice next

    # ------------------------------------------------------------ status

    def status(self, neighbour_view: Callable[[str], dict[str, object]]) -> list[dict[str, object]]:
        return [{"interface": lan.interface,
                 "address": str(self.addresses.get(lan.interface, "")),
                 "neighbours": [{"name": n.name, "address": str(n.address),
                                 **neighbour_view(n.name)}
                                for n in self.neighbours.values() if n.lan == lan],
                 "routes": sum(1 for i, _ in self._installed.values() if i == lan.interface)}
                for lan in self.config.lan]
