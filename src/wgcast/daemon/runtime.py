"""The asyncio runtime: one Babel engine driving one WireGuard interface.

A thin driver around `wgcast.babel.Node`: a UDP socket on the node's control link-local
address (`transport.py`), timers from `next_deadline()`, route events handed to the
data-plane applier (`applier.py`), a local API socket. No flush at start, at stop or on
a crash: what is installed stays installed until the engine decides otherwise.

This is the only module that imports the services; each gets the ports it needs
(`ports.py`), never the `Daemon`. The back ends (WireGuard device, kernel, Babel socket,
move-hold device) are chosen here and can be replaced by fakes in tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
from wgcast.babel.neighbour import LinkCostParams, link_tiebreak
from wgcast.babel.route import SelectionParams
from wgcast.babel.wire import PORT
from wgcast.daemon.api import ApiServer
from wgcast.daemon.applier import DataPlaneApplier
from wgcast.daemon.config import Config
from wgcast.daemon.endpoint_manager import EndpointManager
from wgcast.daemon.membership import MembershipService
from wgcast.daemon.metrics import MetricsServer
from wgcast.daemon.peer_policy import PeerInfo, PeerPolicy, load_remembered, save_remembered
from wgcast.daemon.ports import (
    Cancellable,
    DaemonCounters,
    Datagrams,
    HostNetwork,
    MoveHoldDevice,
    NeighbourSnapshot,
    RouteSnapshot,
    SelectedSnapshot,
    Transport,
)
from wgcast.daemon.state import State, StateError, load_state, save_state
from wgcast.daemon.transport import BABEL_GROUP, UdpTransport
from wgcast.dataplane.move_hold import MoveHoldQueue, move_hold_ifname
from wgcast.dataplane.system import System
from wgcast.dataplane.types import PeerKey, WireGuardBackend
from wgcast.dataplane.uapi import UapiDevice
from wgcast.keys import control_address, decode_key, router_id
from wgcast.prefix import Prefix

log = logging.getLogger("wgcast")

#: On a planned stop, pause between the retraction's acks and the address going down.
_STOP_SETTLE = 0.1


@dataclass
class RouteInfo:
    via: str | None
    metric: int
    router_id: bytes | None
    since: float


@dataclass
class DaemonStats:
    started: float = field(default_factory=time.time)


class LoopScheduler:
    """`ports.Scheduler` on the running asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        return self.loop.call_at(when, callback)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)


class NodeView:
    """`ports.EngineView` of a `Node`: frozen copies from the engine's public queries."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def router_id(self) -> bytes:
        return self._node.router_id

    @property
    def seqno(self) -> int:
        return self._node.seqno

    def neighbour(self, name: str) -> NeighbourSnapshot | None:
        st = self._node.neighbour_state(name)
        if st is None:
            return None
        up, rtt_ms, last_hello, hello_interval = st
        return NeighbourSnapshot(name, up, rtt_ms, last_hello, hello_interval)

    def neighbours(self) -> tuple[NeighbourSnapshot, ...]:
        out = []
        for name in self._node.neighbour_names():
            nb = self.neighbour(name)
            if nb is not None:
                out.append(nb)
        return tuple(out)

    def neighbour_cost(self, name: str) -> int:
        return self._node.neighbour_cost(name)

    def routes_to(self, prefix: Prefix) -> tuple[RouteSnapshot, ...]:
        return tuple(RouteSnapshot(*e) for e in self._node.route_entries(prefix))

    def routes_via(self, name: str) -> int:
        return self._node.route_count_via(name)

    def selected(self) -> tuple[SelectedSnapshot, ...]:
        return tuple(SelectedSnapshot(p, s.via, s.metric, s.router_id, s.seqno)
                     for p, s in self._node.selected.items())

    def selected_count(self) -> int:
        return len(self._node.selected)

    def counters(self) -> Mapping[str, int]:
        return dict(self._node.counters)


class Daemon:
    """wgcast for one interface.

    Back ends (all optional; the real ones by default): `backend` the WireGuard device,
    `host` the kernel's links, routes and addresses, `transport` the Babel socket,
    `open_move_hold` the move-hold device of a WireGuard interface name."""

    def __init__(self, config: Config, backend: WireGuardBackend | None = None, *,
                 host: HostNetwork | None = None, transport: Transport | None = None,
                 open_move_hold: Callable[[str], MoveHoldDevice] | None = None) -> None:
        self.config = config
        # The WireGuard device.
        self.backend = backend if backend is not None else UapiDevice(config.interface)
        self.system: HostNetwork = host if host is not None else System(config.interface)
        self.transport: Transport = transport if transport is not None else \
            UdpTransport(config.interface, config.port or PORT)
        self.stats = DaemonStats()
        self.policy = PeerPolicy(config.addresses, config.anycast,
                                 max_routes=config.max_routes_per_peer)
        #: (mtime_ns, size, inode) of the roster file last read (reloaded when it moves).
        self._roster_stamp: tuple[int, int, int] | None = None
        self.peers: dict[str, PeerInfo] = self.policy.peers
        self.by_control: dict[ipaddress.IPv6Address, str] = {}
        self.by_key: dict[PeerKey, str] = {}
        #: Neighbours whose datagrams go to ff02::1:6 (multicast Hellos), see start().
        self.multicast: set[str] = set()
        self.routes: dict[Prefix, RouteInfo] = {}
        self.node: Node | None = None
        self.view: NodeView | None = None
        self.public_key = b""
        self.control = ipaddress.IPv6Address("fe80::1")
        self.clock: LoopScheduler | None = None
        self.dataplane: DataPlaneApplier | None = None
        self._open_move_hold = open_move_hold or _open_move_hold
        self._stop = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._acks: dict[Prefix, asyncio.Future[None]] = {}
        self._served: dict[Prefix, str] = {}
        self.endpoints: EndpointManager | None = None
        self.metrics: MetricsServer | None = None

    # ------------------------------------------------------------ clock

    def now(self) -> float:
        assert self.clock is not None
        return self.clock.now()

    # ------------------------------------------------------------ start

    async def start(self) -> None:
        cfg = self.config
        clock = self.clock = LoopScheduler(asyncio.get_running_loop())
        dp = self.dataplane = DataPlaneApplier(cfg, self.backend, self.system, clock,
                                               lambda: self.view, self.by_key,
                                               self._open_move_hold)
        dev = await self.backend.get()
        if dev.public_key is None:
            raise RuntimeError(f"{cfg.interface}: the WireGuard interface has no private key")
        self.public_key = dev.public_key
        rid = router_id(self.public_key)
        self.policy.own_router_id = rid
        if cfg.roster:
            err = self._load_roster()
            if err is not None:
                raise RuntimeError(f"{cfg.interface}: {err}")
        self.control = control_address(self.public_key)
        state = load_state(cfg.state_file)
        seqno = 0
        if state is not None and state.router_id == rid:
            # Jump ahead of anything the mesh may remember from before the restart.
            seqno = (state.seqno + 16) & 0xFFFF
        await dp.load(dev)
        inherited = dp.inherited()
        await self.system.ensure_up()
        await self.system.add_address(ipaddress.IPv6Interface(f"{self.control}/64"))
        if cfg.timers.move_hold > 0:
            await dp.open_move_hold()
        anycast = tuple(cfg.anycast)
        ensure: list[tuple[PeerKey, Prefix]] = []
        remembered = load_remembered(cfg.state_file)
        first_seen: dict[str, list[str]] = {}
        # Neighbours that get multicast Hellos (sent to ff02::1:6): RFC 8966 speakers
        # (babel = "generic"), and the peer of a single-peer link whose AllowedIPs cover
        # the group (it hears multicast anyway, as babeld's own WireGuard links are set up).
        group = ipaddress.IPv6Network(f"{BABEL_GROUP}/128")
        covering = [pc for pc in cfg.peers
                    if any(p.version == 6 and group.subnet_of(p)
                           for p in dp.allowed_ips(pc.key))]
        self.multicast = {pc.name for pc in cfg.peers if pc.babel == "generic"}
        if len(cfg.peers) == 1 and covering:
            self.multicast.add(cfg.peers[0].name)
        for pc in cfg.peers:
            key = pc.key
            ctrl = pc.babel_address or control_address(key)
            found = dp.allowed_ips(key)
            if pc.babel == "generic" and not covering:
                covering.append(pc)
                ensure.append((key, group))
            elif pc.babel == "generic" and pc not in covering:
                log.warning("%s: peer %s is generic but ff02::1:6 is in another peer's "
                            "AllowedIPs: it will not hear our multicast Hellos",
                            cfg.interface, pc.name)
            if pc.may_originate is not None:
                may = tuple(pc.may_originate) + anycast
            elif pc.public_key in remembered:
                # AllowedIPs "as found at start" means at the first start: later ones
                # also hold routes we installed, which prove nothing about the peer.
                may = tuple(remembered[pc.public_key]) + anycast
            else:
                own = {p for p in found if p.prefixlen != 128 or p.network_address != ctrl}
                may = tuple(sorted(own - inherited, key=str)) + anycast
            first_seen[pc.public_key] = [str(p) for p in may if p not in anycast]
            self.policy.add(PeerInfo(pc.name, key, ctrl, router_id(key), may,
                                     tuple(str(e) for e in pc.endpoints),
                                     generic=pc.babel == "generic"))
            self.by_control[ctrl] = pc.name
            self.by_key[key] = pc.name
            ctrl_net = ipaddress.IPv6Network(f"{ctrl}/128")
            if ctrl_net not in found:
                ensure.append((key, ctrl_net))
        save_remembered(cfg.state_file, {**first_seen, **remembered})
        await dp.ensure(ensure)
        self.transport.open(self.control, self._on_datagrams)
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
            accept=self.policy.accept,
        )
        self.node = Node(ncfg, self.now())
        self.policy.routes_from = self.node.route_count_via
        self.policy.has_route = self.node.has_route
        self.view = NodeView(self.node)
        for pc in cfg.peers:
            self.node.add_neighbour(pc.name, pc.cost,
                                    tie=link_tiebreak(self.public_key,
                                                      decode_key(pc.public_key)),
                                    multicast=pc.name in self.multicast,
                                    ipv4_next_hop=None if pc.ipv4_next_hop is None
                                    else pc.ipv4_next_hop.packed)
        for p in cfg.addresses:
            self.node.originate(p, 0, now=self.now())
        # Groups (static ones included) are served by the membership service (run()),
        # once their health checks pass.
        self._save_state()
        self._pump()
        # Multi-endpoint peers (endpoint_manager.py).
        self.endpoints = EndpointManager(cfg, self.backend, self.public_key, clock,
                                         self.view, self)
        await self.endpoints.start()
        log.info("%s: router-id %s, control %s, %d peers, seqno %d", cfg.interface, rid.hex(),
                 self.control, len(self.peers), seqno)

    # ------------------------------------------------------------ engine I/O

    def _on_datagrams(self, batch: Datagrams) -> None:
        assert self.node is not None
        for src, data in batch:
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
        assert node is not None and self.clock is not None and self.dataplane is not None
        multicast = self.multicast
        for name, data in node.datagrams_to_send():
            self.transport.send(data, BABEL_GROUP if name in multicast
                                else self.peers[name].control)
        now = self.now()
        while (ev := node.next_event()) is not None:
            if isinstance(ev, RouteSelected):
                self.routes[ev.prefix] = RouteInfo(ev.via, ev.metric, ev.router_id, time.time())
                peer = None if ev.via is None or ev.via == LOCAL else self.peers[ev.via].key
                self.dataplane.route_selected(ev.prefix, peer, ev.metric)
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
            self._timer = self.clock.loop.call_at(max(deadline, now), self._on_timer)

    # ports.EngineControl (the endpoint manager after a switch)

    def hello_now(self, name: str) -> None:
        assert self.node is not None
        self.node.hello_now(name, self.now())

    def flush(self) -> None:
        self._pump()

    def _save_state(self) -> None:
        if self.node is None:
            return
        try:
            save_state(self.config.state_file, State(self.node.router_id, self.node.seqno))
        except (OSError, StateError) as e:  # save_state raises StateError for any OSError
            log.warning("cannot save state to %s: %s", self.config.state_file, e)

    # ------------------------------------------------------------ groups (ports.GroupServing)

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
        assert self.view is not None and self.dataplane is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        api = ApiServer(self.config, self)
        membership = MembershipService(self.config, api, self, self.view)
        await membership.start()  # join/leave/drain + health checks, before clients come
        await api.start()
        metrics = await self._start_metrics(membership)
        dp = asyncio.create_task(self.dataplane.run(self._stop))
        roster_watch = asyncio.create_task(self.watch_roster()) if self.config.roster \
            else None
        self.dataplane.kick()
        _sd_notify("READY=1")
        await self._stop.wait()
        _sd_notify("STOPPING=1")
        await membership.stop()
        log.info("stopping: draining %d served groups", len(self._served))
        await asyncio.gather(*(self._drain_out(p, membership) for p in list(self._served)),
                             return_exceptions=True)
        restart_hold = self.config.timers.restart_hold
        if self.node is not None and restart_hold > 0:
            # Own unicast routes stay: neighbours keep us for the restart hold time.
            self.node.hold(restart_hold, now=self.now())
            self._pump()
        # Let the data plane flush the last moves (no more move holds), then stop without
        # any flush.
        await self.dataplane.final_apply(1.0)
        dp.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await dp
        if roster_watch is not None:
            roster_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await roster_watch
        await api.stop()
        if metrics is not None:
            await metrics.stop()
        self._save_state()
        self.close()
        return 0

    async def _start_metrics(self, membership: MembershipService) -> MetricsServer | None:
        """The Prometheus endpoint, if configured. Routing matters more than metrics: a
        listen error is logged and the daemon runs on without them."""
        ep = self.config.metrics
        if ep is None:
            return None
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

    # ------------------------------------------------------------ roster

    def _load_roster(self) -> str | None:
        """(Re)read the roster file; a newer, valid one replaces the one in use. Returns
        what is wrong (the roster in use, if any, stays), or None."""
        from datetime import UTC, datetime

        from wgcast.roster import RosterError, accept_newer, parse

        path, key = self.config.roster, self.config.mesh_key
        assert key is not None
        try:
            st = os.stat(path)
            self._roster_stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            new = accept_newer(self.policy.roster, parse(text, path), key, datetime.now(UTC))
        except OSError as e:
            return f"roster: cannot read {path}: {e.strerror}"
        except RosterError as e:
            return str(e)
        old = self.policy.roster
        self.policy.roster = new
        if old is None or old.serial != new.serial:
            log.info("roster: serial %d in use (%d members)%s", new.serial, len(new.members),
                     "" if old is None else f", was serial {old.serial}")
        return None

    async def watch_roster(self, every: float = 2.0) -> None:
        """Pick up a new roster file without a restart (a changed file is re-read; an
        invalid or older one is refused with one log line, the current one stays).
        Routes the new roster refuses fade at their next refresh (within 3.5 update
        intervals); routes it newly allows come with the next periodic update."""
        while True:
            await asyncio.sleep(every)
            err: str | None
            try:
                st = os.stat(self.config.roster)
            except OSError as e:
                stamp = None
                err = f"roster: cannot read {self.config.roster}: {e.strerror}"
            else:
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                err = None
            if stamp == self._roster_stamp:
                continue  # unchanged (or still unreadable: said once)
            self._roster_stamp = stamp
            if err is None:
                err = self._load_roster()
            if err is not None:
                log.error("%s; keeping serial %s", err,
                          self.policy.roster.serial if self.policy.roster else "-")

    def close(self) -> None:
        if self.endpoints is not None:
            self.endpoints.close()
        if self.dataplane is not None:
            self.dataplane.close()
        if self._timer is not None:
            self._timer.cancel()
        self.transport.close()

    # ------------------------------------------------------------ views (ports.StatusSource)

    def status(self) -> dict[str, Any]:
        node, dp = self.node, self.dataplane
        assert node is not None and dp is not None and self.view is not None
        q = dp.move_hold
        neighbours = self.view.neighbours()
        return {
            "interface": self.config.interface,
            "router_id": node.router_id.hex(),
            "control_address": str(self.control),
            "seqno": node.seqno,
            "uptime_s": round(time.time() - self.stats.started, 3),
            "neighbours_up": sum(1 for n in neighbours if n.up),
            "neighbours": len(neighbours),
            "routes": self.view.selected_count(),
            "served": sorted(map(str, self._served)),
            "timers": {"hello": self.config.timers.hello, "dead": self.config.timers.dead,
                       "update": self.config.timers.update},
            "counters": dict(node.counters),
            "dataplane": {"applies": dp.stats.applies,
                          "ops": dp.stats.ops,
                          "errors": dp.stats.errors,
                          "last_apply_ms": round(dp.stats.last_apply_ms, 3),
                          "held_moves": dp.stats.held_moves,
                          "held_packets": dp.stats.held_packets,
                          "holding": sorted(map(str, dp.holding())),
                          "hold_device": q.ifname if q is not None else None,
                          "hold": None if q is None else {
                              k: getattr(q.stats, k) for k in
                              ("holds", "held", "released", "dropped_full", "unmatched")}},
            "announcements_dropped": self.policy.dropped,
            "announcements_refused": self.policy.dropped_table(),
            "roster": None if self.policy.roster is None else {
                "serial": self.policy.roster.serial,
                "members": len(self.policy.roster.members)},
            "endpoints": self.endpoints.status() if self.endpoints is not None else None,
        }

    def route_table(self) -> list[dict[str, Any]]:
        view, dp = self.view, self.dataplane
        assert view is not None and dp is not None
        out = []
        for sel in sorted(view.selected(), key=lambda s: str(s.prefix)):
            name = self.policy.origin_name
            alts = [{"neighbour": r.neighbour, "metric": r.metric,
                     "router_id": r.router_id.hex(), "origin": name(r.router_id),
                     "seqno": r.seqno}
                    for r in view.routes_to(sel.prefix)]
            origin = "local" if sel.via == LOCAL else name(sel.router_id)
            out.append({
                "prefix": str(sel.prefix), "via": sel.via, "metric": sel.metric,
                "router_id": sel.router_id.hex(), "origin": origin, "seqno": sel.seqno,
                "installed": dp.installed(sel.prefix) or sel.via == LOCAL,
                "routes": alts,
            })
        return out

    def peer_table(self) -> list[dict[str, Any]]:
        view = self.view
        assert view is not None
        out = []
        for name, info in self.peers.items():
            nb = view.neighbour(name)
            assert nb is not None
            out.append({
                "name": name, "public_key": _b64(info.key), "control": str(info.control),
                "up": nb.up, "rtt_ms": None if nb.rtt_ms is None else round(nb.rtt_ms, 3),
                "cost": view.neighbour_cost(name), "endpoints": list(info.endpoints),
                "routes_via": view.routes_via(name),
                **(self.endpoints.peer_view(name) if self.endpoints is not None else {}),
            })
        return out

    def counters(self) -> DaemonCounters | None:
        node, dp = self.node, self.dataplane
        if node is None or dp is None:
            return None
        q = dp.move_hold
        return DaemonCounters(
            interface=self.config.interface, router_id=node.router_id,
            control_address=str(self.control), seqno=node.seqno, routes=len(node.selected),
            served_groups=len(self._served), babel=dict(node.counters),
            dataplane_applies=dp.stats.applies, dataplane_ops=dp.stats.ops,
            dataplane_errors=dp.stats.errors, last_apply_ms=dp.stats.last_apply_ms,
            held_moves=dp.stats.held_moves, held_packets=dp.stats.held_packets,
            move_hold_dropped=q.stats.dropped_full if q is not None else None,
            announcements_dropped=self.policy.dropped,
            announcements_refused=dict(self.policy.dropped_by),
            endpoints=self.endpoints.status() if self.endpoints is not None else None)


def _open_move_hold(wg_ifname: str) -> MoveHoldDevice:
    return MoveHoldQueue(move_hold_ifname(wg_ifname))


def _host_interface(prefix: Prefix) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{prefix.network_address}/{prefix.max_prefixlen}")


def _b64(key: bytes) -> str:
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
