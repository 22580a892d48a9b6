"""Kernel routes and local addresses for a managed WireGuard interface (pyroute2).

Routes for routed prefixes point at the WireGuard interface and carry our own
protocol number, so wgcast can list and reconcile exactly its own routes and leave
everyone else's alone (no flush at start or stop: a restart keeps forwarding).
Addresses: the node's control link-local /128 on the WireGuard interface, and served
anycast groups on `lo` (IPv6 ones with preferred_lft 0, so they are never chosen as a
source address).

pyroute2's IPRoute is synchronous here; every call runs on one dedicated worker thread
(one socket, used from one thread), awaited from asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import wgcast.dataplane.pyroute2_bare  # noqa: F401  (first: see there)

# isort: split
from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wgcast.dataplane.types import Prefix
from wgcast.prefix import prefix_key

RTPROT_WGCAST = 152
"""Route protocol of wgcast's routes: unused by the kernel, iproute2's rt_protos, bird
(12), babeld (42), FRR (11, 186-196) and keepalived (18)."""

RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
IFA_F_NODAD = 0x02
INFINITY_LIFE_TIME = 0xFFFFFFFF

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RouteDiff:
    """What `reconcile_routes` changed."""

    added: tuple[Prefix, ...]
    removed: tuple[Prefix, ...]


class NetConfigError(Exception):
    """A route or address change failed; names the operation and the errno."""

    def __init__(self, what: str, err: NetlinkError) -> None:
        self.errno = err.code
        name = errno.errorcode.get(err.code, "?")
        super().__init__(f"{what}: errno {err.code} ({name}) {err}")


class System:
    """Routes and addresses of one WireGuard interface, optionally inside a netns."""

    def __init__(
        self,
        ifname: str,
        *,
        netns: str | None = None,
        table: int = RT_TABLE_MAIN,
        metric: int | None = None,
        protocol: int = RTPROT_WGCAST,
    ) -> None:
        self.ifname = ifname
        self.netns = netns
        self.table = table
        self.metric = metric
        self.protocol = protocol
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wgcast-rt-{ifname}")
        self._ipr: Any = None

    # ----------------------------------------------------------------- plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _sock(self) -> Any:
        if self._ipr is None:
            self._ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
        return self._ipr

    def _index(self, ifname: str) -> int:
        if not self.netns:
            # Our own namespace: one ioctl, where pyroute2's lookup dumps and decodes
            # every link (it was a tenth of an idle daemon's CPU, at every audit).
            try:
                return socket.if_nametoindex(ifname)
            except OSError:
                raise NetConfigError(
                    f"link {ifname}", NetlinkError(errno.ENODEV, f"no interface {ifname}")
                ) from None
        found = self._sock().link_lookup(ifname=ifname)
        if not found:
            raise NetConfigError(
                f"link {ifname}", NetlinkError(errno.ENODEV, f"no interface {ifname}")
            )
        return int(found[0])

    async def close(self) -> None:
        def shut() -> None:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

        await self._run(shut)
        self._pool.shutdown(wait=False)

    # ----------------------------------------------------------------- links

    async def ensure_up(self, ifname: str | None = None) -> None:
        """Set the link up (idempotent); the WireGuard interface by default."""
        name = ifname or self.ifname

        def up() -> None:
            try:
                self._sock().link("set", index=self._index(name), state="up")
            except NetlinkError as e:
                raise NetConfigError(f"set {name} up", e) from e

        await self._run(up)

    async def match_mtu(self, ifname: str) -> None:
        """Give `ifname` the WireGuard interface's MTU (the hold device: a held packet
        must never be refused for a size the tunnel accepts)."""

        def work() -> None:
            ipr = self._sock()
            try:
                link = ipr.link("get", index=self._index(self.ifname))[0]
                ipr.link("set", index=self._index(ifname), mtu=int(link.get("IFLA_MTU")))
            except NetlinkError as e:
                raise NetConfigError(f"set the mtu of {ifname}", e) from e

        await self._run(work)

    # ----------------------------------------------------------------- routes

    def _route_args(self, p: Prefix, oif: int) -> dict[str, Any]:
        args: dict[str, Any] = {
            "dst": str(p),
            "oif": oif,
            "proto": self.protocol,
            "table": self.table,
            "family": socket.AF_INET if p.version == 4 else socket.AF_INET6,
            "scope": RT_SCOPE_LINK if p.version == 4 else RT_SCOPE_UNIVERSE,
        }
        if self.metric is not None:
            args["priority"] = self.metric
        return args

    def _list_routes(self) -> set[Prefix]:
        ipr = self._sock()
        oif = self._index(self.ifname)
        out: set[Prefix] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.route("dump", family=family, proto=self.protocol):
                table = msg.get("table") or msg["table"]
                if msg["proto"] != self.protocol or table != self.table:
                    continue
                if msg.get("oif") != oif:
                    continue
                dst = msg.get("dst") or ("0.0.0.0" if family == socket.AF_INET else "::")
                out.add(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
        return out

    def _change(self, verb: str, prefixes: Iterable[Prefix], ifname: str | None = None) -> None:
        ipr = self._sock()
        dev = ifname or self.ifname
        oif = self._index(dev)
        for p in prefixes:
            try:
                ipr.route(verb, **self._route_args(p, oif))
            except NetlinkError as e:
                if verb == "del" and e.code == errno.ESRCH:
                    continue  # already gone: the goal is reached
                raise NetConfigError(f"route {verb} {p} dev {dev}", e) from e

    async def list_routes(self) -> set[Prefix]:
        """Our routes (our protocol, our table) through this interface."""
        return await self._run(self._list_routes)

    async def add_routes(self, prefixes: Iterable[Prefix]) -> None:
        """Install (replace: idempotent) routes to the interface."""
        await self._run(self._change, "replace", sorted(prefixes, key=prefix_key))

    async def remove_routes(self, prefixes: Iterable[Prefix]) -> None:
        await self._run(self._change, "del", sorted(prefixes, key=prefix_key))

    async def route_via(self, prefixes: Iterable[Prefix], ifname: str) -> None:
        """Point our routes to `prefixes` at another device (replace), e.g. the hold TUN."""
        await self._run(self._change, "replace", sorted(prefixes, key=prefix_key), ifname)

    async def remove_routes_via(self, prefixes: Iterable[Prefix], ifname: str) -> None:
        await self._run(self._change, "del", sorted(prefixes, key=prefix_key), ifname)

    async def reconcile_routes(self, desired: Iterable[Prefix]) -> RouteDiff:
        """Make our routes equal `desired`: add first, then remove (never a flush)."""
        want = set(desired)

        def work() -> RouteDiff:
            have = self._list_routes()
            add = sorted(want - have, key=prefix_key)
            drop = sorted(have - want, key=prefix_key)
            self._change("replace", add)
            self._change("del", drop)
            return RouteDiff(tuple(add), tuple(drop))

        return await self._run(work)

    # ----------------------------------------------------------------- gateway routes
    # On a LAN ([[lan]]) a route goes through a neighbour, by its IPv6 link-local address:
    # IPv6 with that gateway, IPv4 with it as an RTA_VIA (RFC 5549 style, Linux >= 5.2).

    def _gateway_args(self, p: Prefix, oif: int, gateway: ipaddress.IPv6Address) -> dict[str, Any]:
        args = self._route_args(p, oif)
        args["scope"] = RT_SCOPE_UNIVERSE
        if p.version == 6:
            args["gateway"] = str(gateway)
        else:
            args["via"] = {"family": socket.AF_INET6, "addr": str(gateway)}
        return args

    def _list_gateway_routes(self) -> dict[Prefix, ipaddress.IPv6Address]:
        ipr = self._sock()
        oif = self._index(self.ifname)
        out: dict[Prefix, ipaddress.IPv6Address] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.route("dump", family=family, proto=self.protocol):
                table = msg.get("table") or msg["table"]
                if msg["proto"] != self.protocol or table != self.table or \
                        msg.get("oif") != oif:
                    continue
                gw = msg.get("gateway") if family == socket.AF_INET6 else \
                    (msg.get("via") or {}).get("addr")
                if not gw:
                    continue
                dst = msg.get("dst") or ("0.0.0.0" if family == socket.AF_INET else "::")
                out[ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)] = \
                    ipaddress.IPv6Address(gw)
        return out

    async def list_gateway_routes(self) -> dict[Prefix, ipaddress.IPv6Address]:
        """Our routes through this interface that have a gateway (a LAN's), by prefix."""
        return await self._run(self._list_gateway_routes)

    async def change_gateway_routes(self, replace: dict[Prefix, ipaddress.IPv6Address],
                                    remove: dict[Prefix, ipaddress.IPv6Address]) -> None:
        """Install (replace) routes through gateways on this interface, then remove
        others (a route already gone, or replaced by one elsewhere, is not an error)."""

        def work() -> None:
            ipr = self._sock()
            oif = self._index(self.ifname)
            for verb, routes in (("replace", replace), ("del", remove)):
                for p in sorted(routes, key=prefix_key):
                    try:
                        ipr.route(verb, **self._gateway_args(p, oif, routes[p]))
                    except NetlinkError as e:
                        if verb == "del" and e.code == errno.ESRCH:
                            continue
                        raise NetConfigError(f"route {verb} {p} via {routes[p]} dev "
                                             f"{self.ifname}", e) from e

        await self._run(work)

    # ----------------------------------------------------------------- addresses

    def _addr(
        self, verb: str, addr: Interface, ifname: str, flags: int, preferred: int | None
    ) -> None:
        args: dict[str, Any] = {
            "index": self._index(ifname),
            "address": str(addr.ip),
            "prefixlen": addr.network.prefixlen,
        }
        if verb == "add":
            args["flags"] = flags
            if preferred is not None:
                args["IFA_CACHEINFO"] = {
                    "ifa_preferred": preferred,
                    "ifa_valid": INFINITY_LIFE_TIME,
                }
        try:
            self._sock().addr(verb, **args)
        except NetlinkError as e:
            if verb == "add" and e.code == errno.EEXIST:
                return
            if verb == "del" and e.code in (errno.EADDRNOTAVAIL, errno.ENOENT):
                return
            raise NetConfigError(f"address {verb} {addr} dev {ifname}", e) from e

    async def add_address(
        self,
        addr: Interface | str,
        *,
        ifname: str | None = None,
        deprecated: bool = False,
    ) -> None:
        """Add an address (idempotent). `deprecated` sets preferred_lft 0 (IPv6 only)."""
        iface = ipaddress.ip_interface(addr)
        preferred = 0 if deprecated and iface.version == 6 else None
        flags = IFA_F_NODAD if iface.version == 6 else 0
        await self._run(self._addr, "add", iface, ifname or self.ifname, flags, preferred)

    async def remove_address(self, addr: Interface | str, *, ifname: str | None = None) -> None:
        """Remove an address (idempotent)."""
        iface = ipaddress.ip_interface(addr)
        await self._run(self._addr, "del", iface, ifname or self.ifname, 0, None)

    async def add_control_address(self, addr: ipaddress.IPv6Address) -> None:
        """The node's control link-local address, as a /128 on the WireGuard interface."""
        await self.add_address(ipaddress.IPv6Interface(f"{addr}/128"))

    async def add_group_address(self, addr: Interface | str, *, ifname: str = "lo") -> None:
        """A served anycast group's address (on `lo` by default; IPv6 deprecated)."""
        await self.add_address(addr, ifname=ifname, deprecated=True)

    async def list_addresses(self, ifname: str | None = None) -> list[Interface]:
        """Addresses on a link (the WireGuard interface by default)."""
        name = ifname or self.ifname

        def work() -> list[Interface]:
            ipr = self._sock()
            index = self._index(name)
            out: list[Interface] = []
            for msg in ipr.addr("dump", index=index):
                if msg.get("index") != index:
                    continue
                out.append(ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}"))
            return out

        return await self._run(work)
