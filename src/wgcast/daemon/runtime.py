"""The asyncio runtime: one Babel engine driving one WireGuard interface.

A thin driver around `wgcast.babel.Node`: a UDP socket on the node's control link-local
address, timers from `next_deadline()`, route events turned into AllowedIPs moves and
kernel routes, a local API socket. No flush at start, at stop or on a crash: what is
installed stays installed until the engine decides otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wgcast.anycast.group import DRAIN_METRIC
from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.events import (
    LOCAL,
    NeighbourDown,
    NeighbourUp,
    RetractionAcked,
    RouteSelected,
    SeqnoChanged,
)
from wgcast.babel.neighbour import LinkCostParams
from wgcast.babel.route import SelectionParams
from wgcast.babel.wire import PORT, Prefix
from wgcast.daemon.config import Config
from wgcast.daemon.endpoint_manager import EndpointManager
from wgcast.daemon.state import State, load_state, save_state
from wgcast.dataplane.backend import open_device
from wgcast.dataplane.hold import HoldQueue, hold_ifname
from wgcast.dataplane.reconcile import holders, plan, simulate
from wgcast.dataplane.system import NetConfigError, System
from wgcast.dataplane.types import PeerKey, WireGuardBackend
from wgcast.keys import control_address, router_id

if TYPE_CHECKING:
    from wgcast.daemon.membership import MembershipService
    from wgcast.daemon.metrics import MetricsServer

log = logging.getLogger("wgcast")

#: Prefixes nobody may announce to us: link-local, multicast, loopback.
_NEVER = tuple(ipaddress.ip_network(p) for p in ("fe80::/10", "ff00::/8", "::1/128",
                                                 "127.0.0.0/8", "224.0.0.0/4"))


#: On a planned stop, pause between the retraction's acks and the address going down.
_STOP_SETTLE = 0.1

#: Added to 3 round trips to the old peer when holding a move (service time, scheduling).
_HOLD_MARGIN = 0.01


def _overlaps(p: Prefix, nets: tuple[Prefix, ...] | list[Prefix] | set[Prefix]) -> bool:
    return any(p.version == n.version and p.overlaps(n) for n in nets)  # type: ignore[arg-type]


@dataclass
class PeerInfo:
    name: str
    key: PeerKey
    control: ipaddress.IPv6Address
    router_id: bytes
    may_originate: tuple[Prefix, ...]
    endpoints: tuple[str, ...] = ()


@dataclass
class RouteInfo:
    via: str | None
    metric: int
    router_id: bytes | None
    since: float


@dataclass
class DaemonStats:
    started: float = field(default_factory=time.time)
    dataplane_applies: int = 0
    dataplane_ops: int = 0
    dataplane_errors: int = 0
    last_apply_ms: float = 0.0
    announcements_dropped: int = 0
    held_moves: int = 0
    held_packets: int = 0


class Daemon:
    """wgcast for one interface."""

    def __init__(self, config: Config, backend: WireGuardBackend | None = None) -> None:
        self.config = config
        self.backend = backend or open_device(config.interface, config.backend)
        self.system = System(config.interface)
        self.stats = DaemonStats()
        self.peers: dict[str, PeerInfo] = {}
        self.by_control: dict[ipaddress.IPv6Address, str] = {}
        self.by_key: dict[PeerKey, str] = {}
        self.routes: dict[Prefix, RouteInfo] = {}
        self.node: Node | None = None
        self.public_key = b""
        self.control = ipaddress.IPv6Address("fe80::1")
        self._desired: dict[Prefix, PeerKey | None] = {}
        self._actual: dict[PeerKey, set[Prefix]] = {}
        self._kroutes: set[Prefix] = set()
        self._inherited: set[Prefix] = set()
        #: Make-before-break moves (dataplane/hold.py): prefix -> end of its hold.
        self.hold: HoldQueue | None = None
        self._holding: dict[Prefix, float] = {}
        #: Last metric of a real path per prefix: bounds the round trip of a held move.
        self._path_metric: dict[Prefix, int] = {}
        self._hold_off = False
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        self._ifindex = 0
        self._acks: dict[Prefix, asyncio.Future[None]] = {}
        self._served: dict[Prefix, str] = {}
        self._api_server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.endpoints: EndpointManager | None = None
        self.metrics: MetricsServer | None = None

    # ------------------------------------------------------------ clock

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # ------------------------------------------------------------ start

    async def start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        dev = await self.backend.get()
        if dev.public_key is None:
            raise RuntimeError(f"{cfg.interface}: the WireGuard interface has no private key")
        self.public_key = dev.public_key
        rid = router_id(self.public_key)
        self.control = control_address(self.public_key)
        state = load_state(cfg.state_file)
        seqno = 0
        if state is not None and state.router_id == rid:
            # Jump ahead of anything the mesh may remember from before the restart.
            seqno = (state.seqno + 16) & 0xFFFF
        self._actual = dev.allowed_ips_by_peer()
        self._kroutes = await self.system.list_routes()
        self._inherited = set(self._kroutes)
        await self.system.ensure_up()
        await self.system.add_address(ipaddress.IPv6Interface(f"{self.control}/64"))
        if cfg.timers.move_hold > 0:
            await self._open_hold()
        self._ifindex = socket.if_nametoindex(cfg.interface)
        anycast = tuple(cfg.anycast)
        ensure: list[tuple[PeerKey, Prefix]] = []
        remembered = _load_policy(cfg.state_file)
        first_seen: dict[str, list[str]] = {}
        for pc in cfg.peers:
            key = pc.key
            ctrl = control_address(key)
            found = set(self._actual.get(key, set()))
            if pc.may_originate is not None:
                may = tuple(pc.may_originate) + anycast
            elif pc.public_key in remembered:
                # AllowedIPs "as found at start" means at the first start: later ones
                # also hold routes we installed, which prove nothing about the peer.
                may = tuple(remembered[pc.public_key]) + anycast
            else:
                own = {p for p in found if p.prefixlen != 128 or p.network_address != ctrl}
                may = tuple(sorted(own - self._inherited, key=str)) + anycast
            first_seen[pc.public_key] = [str(p) for p in may if p not in anycast]
            self.peers[pc.name] = PeerInfo(pc.name, key, ctrl, router_id(key), may,
                                           tuple(str(e) for e in pc.endpoints))
            self.by_control[ctrl] = pc.name
            self.by_key[key] = pc.name
            ctrl_net = ipaddress.IPv6Network(f"{ctrl}/128")
            if ctrl_net not in found:
                ensure.append((key, ctrl_net))
        _save_policy(cfg.state_file, {**first_seen, **remembered})
        if ensure:
            from wgcast.dataplane.types import AddAllowedIP

            await self.backend.apply([AddAllowedIP(k, p) for k, p in ensure])
            for k, p in ensure:
                self._actual.setdefault(k, set()).add(p)
        self._open_socket()
        timers = cfg.timers
        ncfg = NodeConfig(
            router_id=rid,
            hello_interval=timers.hello,
            dead=timers.dead,
            update_interval=timers.update,
            link=LinkCostParams(cfg.link.base_cost, float(cfg.link.rtt_cost_per_ms),
                                cfg.link.max_rtt_cost),
            selection=SelectionParams(mode=cfg.route_selection),
            seqno=seqno,
            accept=self._accept,
        )
        self.node = Node(ncfg, self.now())
        for pc in cfg.peers:
            self.node.add_neighbour(pc.name, pc.cost)
        for p in cfg.addresses:
            self.node.originate(p, 0, now=self.now())
        # Groups (static ones included) are served by the membership service (run()),
        # once their health checks pass.
        self._save_state()
        self._pump()
        self.endpoints = EndpointManager(self)  # multi-endpoint peers (endpoint_manager.py)
        await self.endpoints.start()
        log.info("%s: router-id %s, control %s, %d peers, seqno %d", cfg.interface, rid.hex(),
                 self.control, len(self.peers), seqno)

    def _open_socket(self) -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                            self.config.interface.encode())
        sock.bind((str(self.control), self.config.port or PORT, 0, self._ifindex))
        sock.setblocking(False)
        self._sock = sock
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_readable)

    # ------------------------------------------------------------ policy

    def _accept(self, neighbour: str, prefix: Prefix, rid: bytes) -> bool:
        """A peer may originate what the config allows it; nobody may take ours."""
        ok = True
        if _overlaps(prefix, _NEVER) or _overlaps(prefix, tuple(self.config.addresses)):
            ok = False
        else:
            origin = next((p for p in self.peers.values() if p.router_id == rid), None)
            if origin is not None:
                ok = any(prefix.version == m.version and prefix.subnet_of(m)  # type: ignore[arg-type]
                         for m in origin.may_originate)
            else:
                # Transit route from a non-peer: it must not claim a direct peer's space.
                for p in self.peers.values():
                    own = tuple(m for m in p.may_originate if m not in self.config.anycast)
                    if _overlaps(prefix, own):
                        ok = False
                        break
        if not ok:
            self.stats.announcements_dropped += 1
        return ok

    # ------------------------------------------------------------ engine I/O

    def _on_readable(self) -> None:
        assert self._sock is not None and self.node is not None
        for _ in range(64):
            try:
                data, addr = self._sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("receive: %s", e)
                break
            try:
                src = ipaddress.IPv6Address(addr[0].split("%")[0])
            except ValueError:
                continue
            name = self.by_control.get(src)
            if name is None:
                self.node.counters["packets_unknown_neighbour"] += 1
                continue
            self.node.receive(self.now(), name, data)
            if self.endpoints is not None:
                self.endpoints.received(name)
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        assert self.node is not None
        self.node.handle_timer(self.now())
        self._pump()

    def _pump(self) -> None:
        """Send what the engine wrote, apply its events, re-arm its timer."""
        node = self.node
        assert node is not None and self._sock is not None and self._loop is not None
        for name, data in node.datagrams_to_send():
            peer = self.peers[name]
            # No handshake yet or peer unreachable: the next Hello retries.
            with contextlib.suppress(OSError):
                self._sock.sendto(data, (str(peer.control), self.config.port or PORT, 0,
                                         self._ifindex))
        now = self.now()
        while (ev := node.next_event()) is not None:
            if isinstance(ev, RouteSelected):
                self.routes[ev.prefix] = RouteInfo(ev.via, ev.metric, ev.router_id, time.time())
                if ev.via is None or ev.via == LOCAL:
                    self._path_metric.pop(ev.prefix, None)
                elif ev.metric < DRAIN_METRIC:  # a real path, not a draining instance
                    self._path_metric[ev.prefix] = ev.metric
                if ev.via is None or ev.via == LOCAL:
                    self._desired[ev.prefix] = None
                else:
                    self._desired[ev.prefix] = self.peers[ev.via].key
                self._dirty.set()
                log.debug("route %s via %s metric %d", ev.prefix, ev.via, ev.metric)
            elif isinstance(ev, NeighbourUp | NeighbourDown):
                log.info("neighbour %s %s", ev.neighbour,
                         "up" if isinstance(ev, NeighbourUp) else "down")
                if self.endpoints is not None:
                    self.endpoints.on_neighbour(ev)
            elif isinstance(ev, SeqnoChanged):
                self._save_state()
            elif isinstance(ev, RetractionAcked):
                fut = self._acks.pop(ev.prefix, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        deadline = node.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(max(deadline, now), self._on_timer)

    def _save_state(self) -> None:
        if self.node is None:
            return
        try:
            save_state(self.config.state_file, State(self.node.router_id, self.node.seqno))
        except OSError as e:
            log.warning("cannot save state to %s: %s", self.config.state_file, e)

    # ------------------------------------------------------------ data plane

    async def _dataplane(self) -> None:
        """Apply route changes to AllowedIPs and kernel routes, coalescing bursts."""
        grace_until = self.now() + 2 * self.config.timers.update + \
            self.config.timers.dead_interval
        inherited_done = not self._inherited
        while not self._stop.is_set():
            timeout = None if inherited_done else max(0.0, grace_until - self.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout)
            self._dirty.clear()
            if not inherited_done and self.now() >= grace_until:
                # Routes a previous run installed that nobody announces any more.
                for p in self._inherited:
                    self._desired.setdefault(p, None)
                inherited_done = True
            try:
                await self._apply_once()
            except Exception as e:  # keep forwarding; re-read and retry
                self.stats.dataplane_errors += 1
                log.warning("data plane update failed (%s); re-reading the device", e)
                with contextlib.suppress(Exception):
                    self._actual = (await self.backend.get()).allowed_ips_by_peer()
                    self._kroutes = await self.system.list_routes()
                await asyncio.sleep(0.05)
                self._dirty.set()

    async def _open_hold(self) -> None:
        q = HoldQueue(hold_ifname(self.config.interface))
        try:
            q.open()
            await self.system.match_mtu(q.ifname)
            await self.system.ensure_up(q.ifname)
        except (OSError, NetConfigError) as e:
            q.close()
            log.warning("%s: cannot create the hold device %s (%s): moves away from a live "
                        "peer will lose the replies in flight", self.config.interface,
                        q.ifname, e)
            return
        self.hold = q
        if 6 not in q.families:
            log.warning("%s: IPv6 forwarding is off (net.ipv6.conf.all.forwarding): IPv6 "
                        "moves are not held, replies in flight may be lost on a move",
                        self.config.interface)

    def _hold_time(self, p: Prefix, old: PeerKey) -> float:
        """How long to hold a move of `p` away from peer `old`: 0 when that peer is down
        (nothing comes back through a dead link). Its route may already be gone: when a
        node further down the old path moved first, it poisons the route back to us, yet
        the replies it forwarded are still on their way through it.

        The replies in flight come from as far as the old instance: a link's cost is
        base + rtt_cost_per_ms x its RTT, so the last real path metric / rtt_cost_per_ms
        bounds the path's round trip from above. Plus a margin, at most `move_hold`."""
        node = self.node
        name = self.by_key.get(old)
        if node is None or name is None or self.hold is None or \
                p.version not in self.hold.families:
            return 0.0
        nb = node.neighbours.get(name)
        if nb is None or not nb.up:
            return 0.0
        rtt = 3 * (nb.rtt_ms or 0.0)
        metric = self._path_metric.get(p)
        per_ms = self.config.link.rtt_cost_per_ms
        if metric is not None and per_ms > 0:
            rtt = max(rtt, metric / per_ms)
        return min(self.config.timers.move_hold, rtt / 1000.0 + _HOLD_MARGIN)

    async def _holds(self, desired: dict[Prefix, PeerKey],
                     owner: dict[Prefix, PeerKey]) -> list[Prefix]:
        """Start the holds of new graceful moves and pin every held prefix to its old
        peer in `desired`; returns the prefixes whose hold is over (released after the
        apply, once their route points back at WireGuard)."""
        hold = self.hold
        assert hold is not None and self._loop is not None
        now = self.now()
        start: list[Prefix] = []
        if not self._hold_off:
            for p, key in desired.items():
                old = owner.get(p)
                if old is None or old == key or p in self._holding:
                    continue
                wait = self._hold_time(p, old)
                if wait > 0:
                    start.append(p)
                    self._holding[p] = now + wait
                    self._loop.call_at(now + wait, self._dirty.set)
        if start:
            for p in start:
                hold.hold(p)  # queue first, then route here: no packet slips through
            try:
                await self.system.route_via(start, hold.ifname)
            except NetConfigError as e:
                log.warning("hold: cannot route %d prefixes to %s (%s); moving at once",
                            len(start), hold.ifname, e)
                for p in start:
                    self._holding.pop(p, None)
                    hold.release(p)
        done: list[Prefix] = []
        for p, until in list(self._holding.items()):
            old = owner.get(p)
            if self._hold_off or until <= now or desired.get(p) in (None, old):
                done.append(p)
                del self._holding[p]
            elif old is not None:
                desired[p] = old
        return done

    async def _unhold(self, done: list[Prefix], desired: dict[Prefix, PeerKey]) -> None:
        """Routes of released prefixes back to WireGuard, then their packets out."""
        hold = self.hold
        assert hold is not None
        back = [p for p in done if p in desired]
        gone = [p for p in done if p not in desired]
        try:
            if back:
                await self.system.add_routes(back)
                self._kroutes |= set(back)
            if gone:
                await self.system.remove_routes_via(gone, hold.ifname)
        finally:
            n = sum(hold.release(p) for p in done)
            self.stats.held_moves += len(done)
            self.stats.held_packets += n

    async def _apply_once(self) -> None:
        t0 = time.perf_counter()
        desired = {p: k for p, k in self._desired.items() if k is not None}
        managed = set(self._desired)
        done: list[Prefix] = []
        owner = holders(self._actual)  # computed once: the holds and plan() both need it
        if self.hold is not None:
            done = await self._holds(desired, owner)
        try:
            await self._apply_plan(desired, managed, t0, owner)
        finally:
            if done:
                await self._unhold(done, desired)

    async def _apply_plan(self, desired: dict[Prefix, PeerKey], managed: set[Prefix],
                          t0: float, owner: dict[Prefix, PeerKey]) -> None:
        ops = plan(desired, self._actual, managed, owner)
        if ops:
            await self.backend.apply(ops)
            self._actual = simulate(self._actual, ops)
        want_routes = set(desired)
        add = want_routes - self._kroutes
        drop = {p for p in managed if p not in want_routes} & self._kroutes
        if add:
            await self.system.add_routes(add)
            self._kroutes |= add
        if drop:
            await self.system.remove_routes(drop)
            self._kroutes -= drop
        if ops or add or drop:
            self.stats.dataplane_applies += 1
            self.stats.dataplane_ops += len(ops)
            self.stats.last_apply_ms = (time.perf_counter() - t0) * 1000

    # ------------------------------------------------------------ groups

    async def serve(self, prefix: Prefix, metric: int | None = None) -> None:
        """Address up, then originate (DESIGN: order on join)."""
        group = self.config.group(prefix)
        ifname = group.address_interface if group else "lo"
        m = metric if metric is not None else (group.metric if group else 0)
        await self.system.add_group_address(_host_interface(prefix), ifname=ifname)
        self._served[prefix] = ifname
        assert self.node is not None
        self.node.originate(prefix, m, now=self.now())
        self._pump()

    async def unserve(self, prefix: Prefix, wait: float | None = None,
                      settle: float = 0.0) -> bool:
        """Retract, wait for the neighbours' acks (bounded), then address down.

        `settle`: a pause between the acks and the address going down (a drain lets the
        packets already on their way arrive)."""
        assert self.node is not None
        if prefix not in self._served:
            return True
        grace = self.config.timers.retract_grace if wait is None else wait
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[prefix] = fut
        self.node.retract(prefix, now=self.now())
        self._pump()
        acked = True
        try:
            await asyncio.wait_for(fut, grace)
        except TimeoutError:
            acked = False
            self._acks.pop(prefix, None)
        if settle > 0:
            await asyncio.sleep(settle)
        ifname = self._served.pop(prefix)
        with contextlib.suppress(Exception):
            await self.system.remove_address(_host_interface(prefix), ifname=ifname)
        return acked

    async def _drain_out(self, prefix: Prefix, membership: MembershipService) -> None:
        """A planned stop drains like `drain` does, bounded to stay quick: announce the
        instance as a very bad one, wait until the neighbours with another instance moved
        (their data planes hold the move: nothing in flight is lost), then retract."""
        t = self.config.timers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.5, 5 * t.hello)
        await self.serve(prefix, metric=DRAIN_METRIC)
        while loop.time() < deadline and not membership.neighbours_moved(prefix):
            await asyncio.sleep(0.005)
        await self.unserve(prefix, settle=_STOP_SETTLE)

    # ------------------------------------------------------------ run

    async def run(self) -> int:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        from wgcast.daemon.api import ApiServer
        from wgcast.daemon.membership import MembershipService

        api = ApiServer(self)
        membership = MembershipService(self, api)
        await membership.start()  # join/leave/drain + health checks, before clients come
        await api.start()
        metrics = await self._start_metrics(membership)
        dp = asyncio.create_task(self._dataplane())
        self._dirty.set()
        _sd_notify("READY=1")
        await self._stop.wait()
        _sd_notify("STOPPING=1")
        await membership.stop()
        log.info("stopping: draining %d served groups", len(self._served))
        await asyncio.gather(*(self._drain_out(p, membership) for p in list(self._served)),
                             return_exceptions=True)
        hold = self.config.timers.restart_hold
        if self.node is not None and hold > 0:
            # Own unicast routes stay: neighbours keep us for the restart hold time.
            self.node.hold(hold, now=self.now())
            self._pump()
        # Let the dataplane task flush the last moves (no more holds), then stop without
        # any flush.
        self._hold_off = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._apply_once(), 1.0)
        dp.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await dp
        await api.stop()
        if metrics is not None:
            await metrics.stop()
        self._save_state()
        self.close()
        with contextlib.suppress(Exception):
            await self.backend.close()
        return 0

    async def _start_metrics(self, membership: MembershipService) -> MetricsServer | None:
        """The Prometheus endpoint, if configured. Routing matters more than metrics: a
        listen error is logged and the daemon runs on without them."""
        ep = self.config.metrics
        if ep is None:
            return None
        from wgcast.daemon.metrics import MetricsServer

        server = MetricsServer(self, membership, ep.host, ep.port)
        try:
            await server.start()
        except OSError as e:
            log.error("metrics: cannot listen on %s: %s; running without metrics", ep, e)
            return None
        self.metrics = server
        return server

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.endpoints is not None:
            self.endpoints.close()
        if self.hold is not None:
            self.hold.close()
            self.hold = None
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        node = self.node
        assert node is not None
        return {
            "interface": self.config.interface,
            "backend": self.backend.kind,
            "router_id": node.router_id.hex(),
            "control_address": str(self.control),
            "seqno": node.seqno,
            "uptime_s": round(time.time() - self.stats.started, 3),
            "neighbours_up": sum(1 for n in node.neighbours.values() if n.up),
            "neighbours": len(node.neighbours),
            "routes": len(node.selected),
            "served": sorted(map(str, self._served)),
            "timers": {"hello": self.config.timers.hello, "dead": self.config.timers.dead,
                       "update": self.config.timers.update},
            "counters": dict(node.counters),
            "dataplane": {"applies": self.stats.dataplane_applies,
                          "ops": self.stats.dataplane_ops,
                          "errors": self.stats.dataplane_errors,
                          "last_apply_ms": round(self.stats.last_apply_ms, 3),
                          "held_moves": self.stats.held_moves,
                          "held_packets": self.stats.held_packets,
                          "holding": sorted(map(str, self._holding)),
                          "hold_device": self.hold.ifname if self.hold is not None else None,
                          "hold": None if self.hold is None else {
                              k: getattr(self.hold.stats, k) for k in
                              ("holds", "held", "released", "dropped_full", "unmatched")}},
            "announcements_dropped": self.stats.announcements_dropped,
            "endpoints": self.endpoints.status() if self.endpoints is not None else None,
        }

    def route_table(self) -> list[dict[str, Any]]:
        node = self.node
        assert node is not None
        out = []
        for prefix, sel in sorted(node.selected.items(), key=lambda kv: str(kv[0])):
            alts = [{"neighbour": r.neighbour, "metric": node._route_metric(r),
                     "router_id": r.router_id.hex(), "seqno": r.seqno}
                    for r in node.routes.routes(prefix).values()]
            out.append({
                "prefix": str(prefix), "via": sel.via, "metric": sel.metric,
                "router_id": sel.router_id.hex(), "seqno": sel.seqno,
                "installed": prefix in self._kroutes or sel.via == LOCAL,
                "routes": alts,
            })
        return out

    def peer_table(self) -> list[dict[str, Any]]:
        node = self.node
        assert node is not None
        out = []
        for name, info in self.peers.items():
            nb = node.neighbours[name]
            out.append({
                "name": name, "public_key": _b64(info.key), "control": str(info.control),
                "up": nb.up, "rtt_ms": None if nb.rtt_ms is None else round(nb.rtt_ms, 3),
                "cost": node.neighbour_cost(name), "endpoints": list(info.endpoints),
                "routes_via": len(node.routes.via(name)),
                **(self.endpoints.peer_view(name) if self.endpoints is not None else {}),
            })
        return out


def _policy_path(state_file: str) -> str:
    return state_file + ".policy"


def _load_policy(state_file: str) -> dict[str, list[Prefix]]:
    """Per-peer prefixes remembered from the first start (see `start`)."""
    try:
        with open(_policy_path(state_file)) as f:
            raw = json.load(f)
        return {k: [ipaddress.ip_network(p) for p in v] for k, v in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        log.warning("ignoring %s: %s", _policy_path(state_file), e)
        return {}


def _save_policy(state_file: str, policy: dict[str, list[Any]]) -> None:
    path = _policy_path(state_file)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({k: [str(p) for p in v] for k, v in policy.items()}, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot save %s: %s", path, e)


def _host_interface(prefix: Prefix) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{prefix.network_address}/{prefix.max_prefixlen}")


def _b64(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()


def _sd_notify(state: str) -> None:
    """systemd readiness: a datagram to $NOTIFY_SOCKET, when there is one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), path)
