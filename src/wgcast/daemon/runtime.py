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
import dataclasses
import errno
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from wgcast.babel.liveness import LivenessParams
from wgcast.babel.neighbour import LinkCostParams, link_tiebreak
from wgcast.babel.route import SelectionParams
from wgcast.babel.wire import PORT, Ack, RouteUpdate, decode_packet, encode_packet, resolve
from wgcast.daemon.api import ApiError, ApiServer
from wgcast.daemon.api_context import prefix_arg
from wgcast.daemon.applier import DataPlaneApplier
from wgcast.daemon.catchments import CatchmentCollector, catchment_table
from wgcast.daemon.config import Config, ConfigError, LanConf, PeerConf, load
from wgcast.daemon.endpoint_manager import EndpointManager
from wgcast.daemon.lan import LanService, stream_id
from wgcast.daemon.lock import InterfaceLock
from wgcast.daemon.membership import MembershipService
from wgcast.daemon.metrics import MetricsServer
from wgcast.daemon.notify import sd_notify
from wgcast.daemon.peer_health import NOT_ON_DEVICE, PeerDoctor
from wgcast.daemon.peer_policy import (
    PeerPolicy,
    load_remembered,
    load_roster_serial,
    own_sign_key_problem,
    roster_serial_path,
    save_remembered,
    save_roster_serial,
)
from wgcast.daemon.ports import (
    Cancellable,
    DaemonCounters,
    Datagrams,
    HostNetwork,
    MoveHoldDevice,
    NeighbourSnapshot,
    PeerInfo,
    RouteSnapshot,
    SelectedSnapshot,
    Transport,
)
from wgcast.daemon.reload import diff, refusals
from wgcast.daemon.rx_feed import RxFeed
from wgcast.daemon.state import State, StateError, load_state, save_state
from wgcast.daemon.trace import TraceRing
from wgcast.daemon.transport import BABEL_GROUP, UdpTransport
from wgcast.daemon.web import WebServer
from wgcast.dataplane.backend import open_device
from wgcast.dataplane.move_hold import MoveHoldQueue, move_hold_ifname
from wgcast.dataplane.system import System
from wgcast.dataplane.types import Device, PeerKey, PermissionDenied, WireGuardBackend
from wgcast.keys import control_address, decode_key, router_id
from wgcast.origin import Signer, Verifier
from wgcast.prefix import Prefix
from wgcast.roster import Roster

log = logging.getLogger("wgcast")

#: Seconds between retries of a state file save that failed.
STATE_RETRY = 5.0

#: A recreated interface that is still down gets this long to be set up by whoever
#: recreated it (wg-quick adds its addresses, then sets the link up) before wgcast
#: adds its control address and sets it up itself: no race with `ip address add`.
UP_GRACE = 2.0

_SIOCGIFFLAGS = 0x8913

#: Largest share of the time spent reading the device and the kernel routes back
#: (audits): a slow read (many AllowedIPs) makes the audits rarer. Half a percent of a
#: core: at 2% the audits were a third of an idle daemon's CPU, and 32 daemons of a lab
#: spent 64% of a core on them.
AUDIT_SHARE = 0.005
#: ... but at least this often.
AUDIT_MAX = 2.0

#: On a planned stop, pause between the retraction's acks and the address going down.
_STOP_SETTLE = 0.1

#: Longest time an Ack waits for the data plane (see `Daemon._gate_acks`).
ACK_GATE_MAX = 1.0
#: Babel TLV types (RFC 8966 section 4.3): Pad1, and Ack.
_TLV_PAD1 = 0
_TLV_ACK = 3


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
        # The WireGuard device (None: a LAN-only node, see start()).
        self.backend: WireGuardBackend | None = backend if backend is not None else \
            open_device(config.interface, config.backend) if config.interface else None
        self.system: HostNetwork = host if host is not None else \
            System(config.interface or "lo")
        self.transport: Transport = transport if transport is not None else \
            UdpTransport(config.interface, config.port or PORT) if config.interface else \
            _NoTransport()
        self.stats = DaemonStats()
        self.policy = PeerPolicy(config.addresses, config.anycast,
                                 max_routes=config.max_routes_per_peer,
                                 max_rate=config.max_update_rate)
        #: Signs what we originate (wgcast.origin); on while a roster is configured.
        self.signer: Signer | None = None
        self._sign_problem: str | None = None
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
        #: The [[lan]] interfaces (lan.py), None without any.
        self.lan: LanService | None = None
        self.metrics: MetricsServer | None = None
        self.web: WebServer | None = None
        #: Failed state file saves (all time), the last error while failing, the retry.
        self.state_errors = 0
        self.state_error: str | None = None
        self._state_retry: asyncio.TimerHandle | None = None
        #: Reads a sysctl ("net/ipv4/ip_forward"); None if unreadable (tests replace it).
        self.read_sysctl: Callable[[str], str | None] = _read_sysctl
        #: What is wrong with the host right now (logged once as an error, in status).
        self.problems: list[str] = []
        #: The membership service while `run()` runs (a reload updates its groups).
        self.membership: MembershipService | None = None
        #: Own addresses originated (a reload originates and retracts the difference).
        self._addresses: tuple[Prefix, ...] = tuple(config.addresses)
        self._reload_lock = asyncio.Lock()
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload: dict[str, Any] | None = None
        self._background: set[asyncio.Task[tuple[bool, str]]] = set()
        #: Why peers are down (`wgcast peers`), device peers not in the config.
        self.doctor: PeerDoctor | None = None
        #: Route-change events of the anycast prefixes (`wgcast trace`).
        self.trace = TraceRing(config.anycast)
        #: Acks held back per neighbour: (since, the Ack's bytes, the prefixes its
        #: retraction named, None: all); see _gate.
        self._held: dict[str, list[tuple[float, bytes, tuple[Prefix, ...] | None]]] = {}
        self._held_timer: asyncio.TimerHandle | None = None
        #: Acks held back until the data plane moved, and those sent on the time bound.
        self.acks_held = 0
        self.acks_gate_expired = 0
        #: WireGuard's rx counters between two device reads (see _feed_rx).
        self._rx_feed = RxFeed()

    # ------------------------------------------------------------ clock

    def now(self) -> float:
        assert self.clock is not None
        return self.clock.now()

    # ------------------------------------------------------------ start

    async def start(self) -> None:
        cfg = self.config
        self.clock = LoopScheduler(asyncio.get_running_loop())
        if self.backend is None:
            rid, seqno = self._lan_only_identity()
        else:
            rid, seqno = await self._start_wireguard(self.backend)
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
            signer=self.signer,
            observe=self._heard,
            # dead: Hellos missed (generic neighbours), probes unanswered (wgcast ones).
            liveness=LivenessParams(idle_hello_interval=timers.idle_hello,
                                    probes=2 * timers.dead),
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
            if len(pc.endpoints) > 1:
                self.node.watch(pc.name, now=self.now())
        for p in cfg.addresses:
            self.node.originate(p, 0, now=self.now())
        if cfg.lan:
            self.lan = LanService(cfg, self.clock, UdpTransport, System)
            with _needs_root("binding the Babel sockets to the [[lan]] interfaces"):
                await self.lan.start(self._on_lan_datagrams, self._on_lan_address)
        # Groups (static ones included) are served by the membership service (run()),
        # once their health checks pass.
        self._save_state()
        self._pump()
        if self.backend is not None:
            # Multi-endpoint peers (endpoint_manager.py).
            self.endpoints = EndpointManager(cfg, self.backend, self.public_key, self.clock,
                                             self.view, self)
            await self.endpoints.start()
            self.doctor = PeerDoctor(cfg.interface, self.peers, self.view, self.now,
                                     our_key=self.public_key, our_control=str(self.control),
                                     roster=lambda: self.policy.roster)
            log.info("%s: router-id %s, control %s, %d peers, seqno %d", cfg.interface,
                     rid.hex(), self.control, len(self.peers), seqno)
        else:
            log.info("%s: LAN-only node (no WireGuard interface), router-id %s, seqno %d",
                     cfg.label, rid.hex(), seqno)

    def _lan_only_identity(self) -> tuple[bytes, int]:
        """A LAN-only node has no key to derive its router-id from: it draws one at its
        first start and keeps it in the state file (with the seqno, as every node)."""
        state = load_state(self.config.state_file)
        if state is not None:
            rid, seqno = state.router_id, (state.seqno + 16) & 0xFFFF
        else:
            rid, seqno = bytes(8), 0
            while rid in (bytes(8), b"\xff" * 8):
                rid = os.urandom(8)
        self.policy.own_router_id = rid
        return rid, seqno

    async def _start_wireguard(self, backend: WireGuardBackend) -> tuple[bytes, int]:
        """The WireGuard side: the device's key (router-id, control address), the
        data plane, the peers' AllowedIPs, the Babel socket. (router-id, first seqno)."""
        cfg = self.config
        assert self.clock is not None
        dp = self.dataplane = DataPlaneApplier(cfg, backend, self.system, self.clock,
                                               lambda: self.view, self.by_key,
                                               self._open_move_hold)
        dp.trace = self.trace
        dp.on_applied = self._release_held
        with _needs_root(f"reading the WireGuard interface {cfg.interface}"):
            dev = await backend.get()
        if dev.public_key is None:
            raise RuntimeError(f"{cfg.interface}: the WireGuard interface has no private key")
        self.public_key = dev.public_key
        rid = router_id(self.public_key)
        self.policy.own_router_id = rid
        if dev.private_key is not None and any(dev.private_key):
            self.signer = Signer(dev.private_key, rid, time.time)
            self.signer.enabled = False
        if cfg.roster:
            if self.signer is None:
                raise RuntimeError(f"{cfg.interface}: a roster needs this node to sign what "
                                   "it originates, but the device gave no private key to "
                                   "derive the signing key from")
            err = self._load_roster()
            if err is not None:
                raise RuntimeError(f"{cfg.interface}: {err}")
        self.control = control_address(self.public_key)
        state = load_state(cfg.state_file)
        seqno = 0
        if state is not None and state.router_id == rid:
            # Jump ahead of anything the mesh may remember from before the restart.
            seqno = (state.seqno + 16) & 0xFFFF
        with _needs_root(f"reading the routes of {cfg.interface}"):
            await dp.load(dev)
        inherited = dp.inherited()
        with _needs_root(f"setting {cfg.interface} up and adding its control address"):
            await self.system.ensure_up()
            await self.system.add_address(ipaddress.IPv6Interface(f"{self.control}/64"))
        if cfg.timers.move_hold > 0:
            await dp.open_move_hold()
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
            found = dp.allowed_ips(pc.key)
            if pc.babel == "generic" and not covering:
                covering.append(pc)
                ensure.append((pc.key, group))
            elif pc.babel == "generic" and pc not in covering:
                log.warning("%s: peer %s is generic but ff02::1:6 is in another peer's "
                            "AllowedIPs: it will not hear our multicast Hellos",
                            cfg.interface, pc.name)
            first_seen[pc.public_key] = self._add_peer_info(pc, found, inherited, remembered)
            ctrl_net = ipaddress.IPv6Network(f"{pc.babel_address or control_address(pc.key)}/128")
            if ctrl_net not in found:
                ensure.append((pc.key, ctrl_net))
        save_remembered(cfg.state_file, {**first_seen, **remembered})
        dp.controls = self._controls
        with _needs_root(f"setting the peers' AllowedIPs on {cfg.interface}"):
            await dp.ensure(ensure)
        with _needs_root(f"binding the Babel socket to {cfg.interface}"):
            self.transport.open(self.control, self._on_datagrams)
        return rid, seqno

    def _controls(self) -> list[tuple[PeerKey, Prefix]]:
        """Each configured peer's control /128 (kept in its AllowedIPs)."""
        return [(i.key, ipaddress.IPv6Network(f"{i.control}/128")) for i in self.peers.values()]

    def _add_peer_info(self, pc: PeerConf, found: set[Prefix], inherited: frozenset[Prefix],
                       remembered: Mapping[str, list[Prefix]]) -> list[str]:
        """Policy and lookups of one configured peer; returns what it may originate
        besides the anycast space (remembered at the first start)."""
        key = pc.key
        ctrl = pc.babel_address or control_address(key)
        anycast = tuple(self.config.anycast)
        if pc.may_originate is not None:
            may = tuple(pc.may_originate) + anycast
        elif pc.public_key in remembered:
            # AllowedIPs "as found at start" means at the first start: later ones
            # also hold routes we installed, which prove nothing about the peer.
            may = tuple(remembered[pc.public_key]) + anycast
        else:
            own = {p for p in found if p.prefixlen != 128 or p.network_address != ctrl}
            may = tuple(sorted(own - inherited, key=str)) + anycast
        self.policy.add(PeerInfo(pc.name, key, ctrl, router_id(key), may,
                                 tuple(str(e) for e in pc.endpoints),
                                 generic=pc.babel == "generic"))
        self.by_control[ctrl] = pc.name
        self.by_key[key] = pc.name
        return [str(p) for p in may if p not in anycast]

    # ------------------------------------------------------------ reload

    async def reload_file(self) -> tuple[bool, str]:
        """Read the config file again and apply it (SIGHUP, `wgcast reload`). Returns
        (applied, what changed or why it was refused); a refusal keeps the running
        config and is logged with the messages of `wgcast check`."""
        async with self._reload_lock:
            try:
                new = load(self.config.path)
            except ConfigError as e:
                for m in e.errors:
                    log.error("reload refused (the running config stays): %s", m)
                return self._reloaded(False, "\n".join(e.errors))
            return await self.reload(new)

    def _reloaded(self, ok: bool, message: str) -> tuple[bool, str]:
        if ok:
            self.reloads += 1
        else:
            self.reload_errors += 1
        self.last_reload = {"ok": ok, "message": message, "at": time.time()}
        return ok, message

    async def reload(self, new: Config) -> tuple[bool, str]:
        """Apply a new config to the running daemon (see `reload_file`)."""
        refused = refusals(self.config, new)
        if refused:
            for m in refused:
                log.error("reload refused (the running config stays): %s", m)
            return self._reloaded(False, "\n".join(refused))
        ch = diff(self.config, new)
        node, dp = self.node, self.dataplane
        if not ch or node is None or (dp is None and self.backend is not None):
            self.config = new
            log.info("reload: %s", ch.describe())
            return self._reloaded(True, ch.describe())
        if new.roster and (new.roster, new.mesh_key) != (self.config.roster,
                                                          self.config.mesh_key):
            old_cfg, old_roster = self.config, self.policy.roster
            self.config, self.policy.roster = new, None
            err = self._load_roster()
            if err is not None:
                self.config, self.policy.roster = old_cfg, old_roster
                log.error("reload refused (the running config stays): %s", err)
                return self._reloaded(False, err)
        elif not new.roster:
            self.policy.roster = None
            self._signing(None)
        self.config = new
        if dp is not None:
            dp.config = new
        now = self.now()
        # Peers: removed (and re-keyed) ones leave the engine (their routes go with them),
        # added ones come in as at start; the WireGuard peers themselves are the operator's.
        gone = [p.name for p in ch.peers_removed]
        for name in gone:
            info = self.peers.pop(name, None)
            if info is not None:
                self.by_control.pop(info.control, None)
                self.by_key.pop(info.key, None)
            node.remove_neighbour(name)
        ensure: list[tuple[PeerKey, Prefix]] = []
        if ch.peers_added or ch.peers_changed:
            # (A LAN-only node has no peers: its config cannot name any.)
            assert dp is not None and self.backend is not None
            dev = await self.backend.get()
            remembered = load_remembered(new.state_file)
            first_seen: dict[str, list[str]] = {}
            for pc in ch.peers_added:
                wg = dev.peer(pc.key)
                found = set(wg.allowed_ips) if wg is not None else set()
                first_seen[pc.public_key] = self._add_peer_info(pc, found, dp.inherited(),
                                                                remembered)
                if wg is None:
                    log.warning("reload: peer %s is not a peer of %s (yet): add it with "
                                "wg set or wg-quick", pc.name, new.interface)
                else:
                    ctrl_net = ipaddress.IPv6Network(f"{control_address(pc.key)}/128")
                    if ctrl_net not in found:
                        ensure.append((pc.key, ctrl_net))
                if pc.babel == "generic":
                    self.multicast.add(pc.name)
                node.add_neighbour(pc.name, pc.cost,
                                   tie=link_tiebreak(self.public_key, pc.key),
                                   multicast=pc.name in self.multicast,
                                   ipv4_next_hop=None if pc.ipv4_next_hop is None
                                   else pc.ipv4_next_hop.packed)
                if len(pc.endpoints) > 1:
                    node.watch(pc.name, now=self.now())
            for _old, pc in ch.peers_changed:
                self._add_peer_info(pc, dp.allowed_ips(pc.key), dp.inherited(), remembered)
                nb = node.neighbours.get(pc.name)
                if nb is not None:
                    # Several endpoints: their paths are judged by fast Hellos (watch).
                    node.watch(pc.name, len(pc.endpoints) > 1, self.now())
                    nb.extra_cost = pc.cost
                    if nb.up:
                        node.hello_now(pc.name, now)  # its IHU carries the new cost
            if first_seen:
                save_remembered(new.state_file, {**first_seen, **remembered})
        if ch.keys:
            self.policy.own = tuple(new.addresses)
            self.policy.anycast = tuple(new.anycast)
            self.policy.max_routes = new.max_routes_per_peer
            self.policy.max_rate = new.max_update_rate
            if "anycast" in ch.keys and dp is not None:
                for pc in new.peers:
                    self._add_peer_info(pc, dp.allowed_ips(pc.key), dp.inherited(),
                                        load_remembered(new.state_file))
            if "anycast" in ch.keys and self.lan is not None:
                for name, info in self.policy.lan.items():
                    lan = self.lan.neighbours[name].lan
                    self.policy.lan[name] = dataclasses.replace(
                        info, may_originate=tuple(lan.may_originate) + tuple(new.anycast))
        old_addr = set(self._addresses)
        for p in old_addr - set(new.addresses):
            node.retract(p, now=now)
        for p in new.addresses:
            if p not in old_addr:
                node.originate(p, 0, now=now)
        self._addresses = tuple(new.addresses)
        t = new.timers
        node.config = dataclasses.replace(
            node.config, hello_interval=t.hello, dead=t.dead,
            liveness=dataclasses.replace(node.config.liveness, idle_hello_interval=t.idle_hello,
                                         probes=2 * t.dead),
            link=LinkCostParams(new.link.base_cost, float(new.link.rtt_cost_per_ms),
                                new.link.max_rtt_cost),
            selection=SelectionParams(mode=new.route_selection))
        if ensure and dp is not None:
            with contextlib.suppress(Exception):
                await dp.ensure(ensure)
        self.trace.set_anycast(new.anycast)
        if self.endpoints is not None:
            moved = [n for o, n in ch.peers_changed
                     if (o.endpoints, o.probe_port) != (n.endpoints, n.probe_port)]
            await self.endpoints.reload(new, gone + [n.name for n in moved],
                                        ch.peers_added + moved)
        if self.membership is not None:
            self.membership.reload(new)
        self._pump()
        if dp is not None:
            dp.kick()
        log.info("reload: %s", ch.describe())
        return self._reloaded(True, ch.describe())

    def _on_sighup(self) -> None:
        if self.membership is None:
            log.warning("SIGHUP while starting: ignored (send it again once started)")
            return
        task = asyncio.create_task(self.reload_file(), name="wgcast-reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _api_reload(self, req: dict[str, Any]) -> dict[str, Any]:
        ok, message = await self.reload_file()
        if not ok:
            raise ApiError("reload_refused", message)
        return {"changed": message}

    # ------------------------------------------------------------ engine I/O

    def _on_datagrams(self, batch: Datagrams) -> None:
        assert self.node is not None
        for src, data, arrived in batch:
            name = self.by_control.get(src)
            if name is None:
                self.node.counters["packets_unknown_neighbour"] += 1
                continue
            self.node.receive(self.now(), name, data, arrived)
            if self.endpoints is not None:
                self.endpoints.received(name)
        self._pump()

    def _on_lan_address(self, lan: LanConf, ll: ipaddress.IPv6Address) -> None:
        """A LAN's address is known: its multicast Hello stream starts (at once)."""
        assert self.node is not None
        self.node.add_hello_stream(stream_id(lan.interface), ll.packed, now=self.now())

    def _on_lan_datagrams(self, lan: LanConf, batch: Datagrams) -> None:
        """Datagrams heard on a LAN: every new link-local source is a new neighbour."""
        node, service = self.node, self.lan
        assert node is not None and service is not None
        for src, data, arrived in batch:
            nb = service.neighbour(lan, src)
            if nb is None:
                node.counters["packets_unknown_neighbour"] += 1
                continue
            if nb.name not in node.neighbours:
                node.add_neighbour(nb.name, lan.cost, multicast=True,
                                   ipv4_next_hop=None if lan.ipv4_next_hop is None
                                   else lan.ipv4_next_hop.packed)
                node.join_hello_stream(nb.name, stream_id(lan.interface), src.packed)
                self.policy.lan[nb.name] = PeerInfo(
                    nb.name, b"", src, b"", tuple(lan.may_originate) + tuple(self.config.anycast),
                    generic=True)
            node.receive(self.now(), nb.name, data, arrived)
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        assert self.node is not None
        # What has arrived first: a verdict on a silent neighbour must not be reached
        # while its Hellos wait in the socket behind a burst we are still working through.
        self.transport.drain()
        self.node.handle_timer(self.now())
        self._pump()

    def _pump(self) -> None:
        """Send what the engine wrote, apply its events, re-arm its timer."""
        node, dp = self.node, self.dataplane
        assert node is not None and self.clock is not None
        multicast, lan, trace = self.multicast, self.lan, self.trace
        now = self.now()
        sent = node.datagrams_to_send()
        for name, data in sent:
            if lan is not None and name in lan.neighbours:
                lan.send(name, data)
            elif lan is not None and name in lan.streams:
                lan.send_group(name, data)
            elif not self._gate(name, data, now):
                self.transport.send(data, BABEL_GROUP if name in multicast
                                    else self.peers[name].control)
        while (ev := node.next_event()) is not None:
            if isinstance(ev, RouteSelected):
                self.routes[ev.prefix] = RouteInfo(ev.via, ev.metric, ev.router_id, time.time())
                trace.event(ev.prefix, now, "selected", neighbour=ev.via, metric=ev.metric,
                            router_id=ev.router_id)
                on_lan = lan is not None and ev.via in lan.neighbours
                if dp is not None:
                    peer = None if ev.via is None or ev.via == LOCAL or on_lan \
                        else self.peers[ev.via].key
                    dp.route_selected(ev.prefix, peer, ev.metric, ev.router_id)
                if lan is not None:
                    lan.route_selected(ev.prefix, ev.via if on_lan else None)
                log.debug("route %s via %s metric %d", ev.prefix, ev.via, ev.metric)
            elif isinstance(ev, NeighbourUp | NeighbourDown):
                log.info("neighbour %s %s", ev.neighbour,
                         "up" if isinstance(ev, NeighbourUp) else "down")
                if lan is not None and ev.neighbour in lan.neighbours:
                    if isinstance(ev, NeighbourDown):
                        # Gone from the LAN: forgotten (its routes go with it); a
                        # datagram from it makes it a new neighbour again.
                        node.remove_neighbour(ev.neighbour)
                        self.policy.lan.pop(ev.neighbour, None)
                        lan.forget(ev.neighbour)
                elif self.endpoints is not None:
                    self.endpoints.on_neighbour(ev)
                if isinstance(ev, NeighbourDown) and dp is not None:
                    # Its control /128 may have gone (wg syncconf, wg set): look now,
                    # not at the next periodic audit.
                    dp.audit()
                    for p, r in self.routes.items():
                        if r.via == ev.neighbour:
                            trace.event(p, now, "neighbour_down", neighbour=ev.neighbour,
                                        note=ev.note)
                    trace.forget_neighbour(ev.neighbour)
            elif isinstance(ev, SeqnoChanged):
                self._save_state()
            elif isinstance(ev, RetractionAcked):
                trace.event(ev.prefix, now, "acked")
                fut = self._acks.pop(ev.prefix, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        if sent and trace.hot(now):
            self._trace_sent(now, sent)
        deadline = node.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.clock.loop.call_at(max(deadline, now), self._on_timer)

    def _gate(self, name: str, data: bytes, now: float) -> bool:
        """Hold back the Acks of retractions to `name` while our data plane still sends
        it traffic for a prefix they retracted (a route change not applied yet): such an
        Ack means "nothing more comes to you from me", which a draining instance waits
        for before its address goes down, however slow this node is to apply. Every
        other TLV, and every other Ack (quiet mode's deliveries: their sender resends
        after 0.4 s), goes now: a neighbour must not think us dead. Bounded by
        ACK_GATE_MAX. True if the datagram was handled here (sent without the Acks it
        held)."""
        dp = self.dataplane
        info = self.peers.get(name)
        node = self.node
        # Cheapest first: nearly always nothing is moving (no look at the bytes).
        if dp is None or info is None or node is None or \
                not dp.moving_away(info.key) or not _has_ack(data):
            return False
        try:
            tlvs = decode_packet(data)
        except Exception:  # our own bytes; never let the gate lose a datagram
            return False
        hold: list[tuple[Ack, tuple[Prefix, ...] | None]] = []
        for t in tlvs:
            if isinstance(t, Ack):
                gone = node.retractions_acked(name, t.opaque)
                if gone and dp.moving_away(info.key, named := _named(gone)):
                    hold.append((t, named))
        if not hold:
            return False
        held_acks = {a for a, _ in hold}
        rest = [t for t in tlvs if not (isinstance(t, Ack) and t in held_acks)]
        held = self._held.setdefault(name, [])
        self.acks_held += 1
        for ack, named in hold:
            held.append((now, encode_packet([ack]), named))
        if self._held_timer is None and self.clock is not None:
            self._held_timer = self.clock.loop.call_at(now + ACK_GATE_MAX,
                                                       self._release_held)
        if rest:
            self.transport.send(encode_packet(rest), BABEL_GROUP if name in self.multicast
                                else info.control)
        return True

    def _release_held(self) -> None:
        """Send the held Acks whose prefixes the data plane no longer sends to their
        neighbour, or that waited ACK_GATE_MAX."""
        if not self._held:
            return
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        dp = self.dataplane
        now = self.now()
        first = None
        for name in list(self._held):
            info = self.peers.get(name)
            keep = []
            for entry in self._held[name]:
                at, data, named = entry
                expired = now >= at + ACK_GATE_MAX
                if info is not None and dp is not None and not expired and \
                        dp.moving_away(info.key, named):
                    keep.append(entry)
                    first = at if first is None else min(first, at)
                    continue
                if expired:
                    self.acks_gate_expired += 1
                if info is not None:
                    self.transport.send(data, BABEL_GROUP if name in self.multicast
                                        else info.control)
            if keep:
                self._held[name] = keep
            else:
                del self._held[name]
        if first is not None and self.clock is not None:
            self._held_timer = self.clock.loop.call_at(first + ACK_GATE_MAX,
                                                       self._release_held)

    def _heard(self, neighbour: str, prefix: Prefix, rid: bytes, seqno: int,
               metric: int) -> None:
        """The engine's Update observer: the trace keeps those that change something, the
        data plane notes draining instances (move holds)."""
        self.trace.heard(self.now(), neighbour, prefix, rid, seqno, metric)
        if self.dataplane is not None:
            self.dataplane.heard(neighbour, prefix, metric)

    def _trace_sent(self, now: float, sent: Sequence[tuple[str, bytes]]) -> None:
        """The Updates of traced prefixes in what was just sent (looked at only for a
        while after a traced prefix changed: no cost in steady state)."""
        trace = self.trace
        out: dict[tuple[Prefix, int, bytes, int], list[str]] = {}
        for name, data in sent:
            try:
                msgs = list(resolve(decode_packet(data)))
            except Exception:  # our own bytes; never let the trace break the pump
                continue
            for m in msgs:
                if isinstance(m, RouteUpdate) and m.prefix is not None and \
                        trace.watched(m.prefix):
                    out.setdefault((m.prefix, m.metric, m.router_id, m.seqno),
                                   []).append(name)
        for (p, metric, rid, seqno), names in out.items():
            trace.event(p, now, "update_sent", metric=metric, router_id=rid, seqno=seqno,
                        note="to " + ",".join(sorted(set(names))))

    async def _api_trace(self, req: dict[str, Any]) -> dict[str, Any]:
        """`wgcast trace`: the events of one prefix, or which prefixes have some."""
        raw = req.get("prefix")
        since = req.get("since")
        if since is not None and (isinstance(since, bool) or
                                  not isinstance(since, int | float)):
            raise ApiError("bad_request", "since: expected seconds on CLOCK_MONOTONIC")
        base = {"interface": self.config.interface, "node": self.node_name(),
                "clock": "CLOCK_MONOTONIC seconds (shared by every process of the host)",
                "now": round(self.now(), 6)}
        if raw is None:
            return {**base, **self.trace.summary()}
        prefix = prefix_arg(raw)
        return {**base, **self.trace.view(prefix, None if since is None else float(since))}

    # ports.EngineControl (the endpoint manager after a switch)

    def hello_now(self, name: str) -> None:
        assert self.node is not None
        self.node.hello_now(name, self.now())

    def flush(self) -> None:
        self._pump()

    def _save_state(self) -> None:
        """Save the router-id and seqno. A write error (a full or read-only disk) is
        never fatal: one warning when the saves start failing, counted
        (`wgcast_state_save_errors_total`), retried every `STATE_RETRY` seconds, one
        info line when a save works again."""
        if self.node is None:
            return
        if self._state_retry is not None:
            self._state_retry.cancel()
            self._state_retry = None
        try:
            save_state(self.config.state_file, State(self.node.router_id, self.node.seqno))
        except (OSError, StateError) as e:  # save_state raises StateError for any OSError
            self.state_errors += 1
            if self.state_error is None:
                log.warning("%s; routing goes on, retrying every %gs", e, STATE_RETRY)
            self.state_error = str(e)
            if self.clock is not None and not self._stop.is_set():
                self._state_retry = self.clock.loop.call_later(STATE_RETRY, self._save_state)
            return
        if self.state_error is not None:
            log.info("state saved to %s again (after %d failed saves)",
                     self.config.state_file, self.state_errors)
        self.state_error = None

    # ------------------------------------------------------------ groups (ports.GroupServing)

    async def serve(self, prefix: Prefix, metric: int | None = None) -> None:
        """Address up, then originate (DESIGN: order on join)."""
        group = self.config.group(prefix)
        ifname = group.address_interface if group else "lo"
        m = metric if metric is not None else (group.metric if group else 0)
        if self._served.get(prefix) != ifname:
            # A served group announced again (a drain's first step, a new metric) keeps
            # its address: no netlink round trip before the announcement goes out.
            await self.system.add_group_address(_host_interface(prefix), ifname=ifname)
        self._served[prefix] = ifname
        assert self.node is not None
        self.trace.event(prefix, self.now(), "originated", metric=m)
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
        self.trace.event(prefix, self.now(), "retracted")
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
        self.trace.event(prefix, self.now(), "address_down",
                         note="acked" if acked else "not acked in time")
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
        lock = InterfaceLock(self.config.state_file, fallback=self.config.api_socket + ".lock")
        lock.acquire()  # AlreadyRunning: before anything is touched
        try:
            return await self._run()
        finally:
            lock.release()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)  # not fatal while starting
        await self.start()
        assert self.view is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        api = ApiServer(self.config, self)
        api.handlers["reload"] = self._api_reload
        api.handlers["catchments"] = self._api_catchments
        api.handlers["peers"] = self._api_peers
        api.handlers["trace"] = self._api_trace
        membership = self.membership = MembershipService(self.config, api, self, self.view,
                                                         trace=self.trace)
        await membership.start()  # join/leave/drain + health checks, before clients come
        await api.start()
        metrics = await self._start_metrics(membership)
        web = await self._start_web()
        tasks: list[asyncio.Task[None]] = []
        if self.dataplane is not None:
            tasks += [asyncio.create_task(self.dataplane.run(self._stop)),
                      asyncio.create_task(self.watch_interface()),
                      asyncio.create_task(self.watch_peers())]
            self.dataplane.kick()
        if self.lan is not None:
            tasks.append(asyncio.create_task(self.lan.run(self._stop)))
        # Always watching: a reload may add (or remove) the roster.
        roster_watch: asyncio.Task[None] | None = asyncio.create_task(self.watch_roster())
        tasks.append(asyncio.create_task(self.watch_host()))
        # Serving: the API answers, groups and routes are being announced.
        sd_notify("READY=1", f"STATUS={self.status_line()}")
        await self._stop.wait()
        sd_notify("STOPPING=1", f"STATUS=stopping: draining {len(self._served)} served "
                  "groups")
        await membership.stop()
        log.info("stopping: draining %d served groups", len(self._served))
        await asyncio.gather(*(self._drain_out(p, membership) for p in list(self._served)),
                             return_exceptions=True)
        restart_hold = self.config.timers.restart_hold
        if self.node is not None and restart_hold > 0:
            # Own unicast routes stay: neighbours keep us for the restart hold time.
            self.node.restart_hold(restart_hold, now=self.now())
            self._pump()
        # Let the data plane flush the last moves (no more move holds), then stop without
        # any flush.
        if self.dataplane is not None:
            await self.dataplane.final_apply(1.0)
            tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await tasks[0]
            tasks = tasks[1:]
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if roster_watch is not None:
            roster_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await roster_watch
        await api.stop()
        if metrics is not None:
            await metrics.stop()
        if web is not None:
            await web.stop()
        self._save_state()
        self.close()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                await self.backend.close()
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
        server.registry.register(CatchmentCollector(
            lambda: None if self.view is None else self.catchment_table()))
        self.metrics = server
        return server

    async def _start_web(self) -> WebServer | None:
        """The catchment page, if configured (a listen error is logged, not fatal)."""
        ep = self.config.web
        if ep is None:
            return None
        server = WebServer(lambda only, everything: self.catchment_table(only, everything),
                           ep.host, ep.port, stamp=self._catchment_stamp)
        try:
            await server.start()
        except OSError as e:
            log.error("web: cannot listen on %s: %s; running without the catchment page",
                      ep, e)
            return None
        self.web = server
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
            # The serial survives restarts: an older roster file cannot roll us back.
            kept = load_roster_serial(self.config.state_file)
            if kept is not None and new.serial < kept:
                raise RosterError(f"roster: serial {new.serial} is older than the serial "
                                  f"{kept} accepted before (kept in "
                                  f"{roster_serial_path(self.config.state_file)})")
        except OSError as e:
            return f"roster: cannot read {path}: {e.strerror}"
        except RosterError as e:
            return str(e)
        old = self.policy.roster
        self.policy.roster = new
        if kept is None or new.serial > kept:
            save_roster_serial(self.config.state_file, new.serial)
        self._signing(new)
        if old is None or old.serial != new.serial:
            log.info("roster: serial %d in use (%d members)%s", new.serial, len(new.members),
                     "" if old is None else f", was serial {old.serial}")
        return None

    def _signing(self, roster: Roster | None) -> None:
        """Signing and verification on with a roster, off without; says once what is
        wrong with our own roster entry (the others would refuse or not check us)."""
        signer, policy = self.signer, self.policy
        if roster is None or signer is None:
            policy.verifier = None
            if signer is not None:
                signer.enabled = False
            return
        signer.enabled = True
        if policy.verifier is None:
            policy.verifier = Verifier()
        policy.own_sign_key = signer.public
        problem = own_sign_key_problem(roster, self.public_key, signer.public)
        if problem != self._sign_problem:
            self._sign_problem = problem
            if problem is not None:
                log.error("%s", problem)

    def _signing_status(self) -> dict[str, Any]:
        signer, v = self.signer, self.policy.verifier
        return {"on": signer is not None and signer.enabled,
                "signed": 0 if signer is None else signer.signed,
                "verified": 0 if v is None else v.verified,
                "verified_from_memory": 0 if v is None else v.hits,
                "problem": self._sign_problem}

    async def watch_roster(self, every: float = 2.0) -> None:
        """Pick up a new roster file without a restart (a changed file is re-read; an
        invalid or older one is refused with one log line, the current one stays).
        Routes the new roster refuses fade at their next refresh (within 3.5 update
        intervals); routes it newly allows come with the next periodic update."""
        while True:
            await asyncio.sleep(every)
            if not self.config.roster:
                continue
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

    # ------------------------------------------------------------ host checks

    def check_forwarding(self) -> list[str]:
        """Forwarding off in a family this node routes for others in: the node has two
        or more neighbours up and a route of that family via a peer, so packets
        between its neighbours cross it (the kernel would drop them: 100% loss while
        the routes look installed). Each new problem is one error line; its end one
        info line. Returns the problems, also shown by `wgcast status`."""
        view = self.view
        if view is None:
            return self.problems
        up = sum(1 for n in view.neighbours() if n.up)
        families = {s.prefix.version for s in view.selected()
                    if s.via is not None and s.via != LOCAL and not s.prefix.is_link_local}
        found = []
        for version, key in ((4, "net/ipv4/ip_forward"), (6, "net/ipv6/conf/all/forwarding")):
            if up >= 2 and version in families and self.read_sysctl(key) == "0":
                found.append(f"IPv{version} forwarding is off (sysctl {key.replace('/', '.')}"
                             f" = 0) but this node routes IPv{version} between its "
                             f"neighbours: their packets through it are dropped")
        for p in found:
            if p not in self.problems:
                log.error("%s: %s", self.config.interface, p)
        for p in self.problems:
            if p not in found:
                log.info("%s: resolved: %s", self.config.interface, p.split(" (")[0])
        self.problems = found
        return found

    # ------------------------------------------------------------ the interface

    #: Reads the ifindex of a link name, 0 when there is none (tests replace it).
    @staticmethod
    def ifindex(ifname: str) -> int:
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            return 0

    @staticmethod
    def link_up(ifname: str) -> bool:
        """Is the link administratively up (IFF_UP)? In our own network namespace."""
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                req = struct.pack("16sH", ifname.encode()[:15], 0)
                flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)[:18])[1]
        except OSError:
            return False
        return bool(flags & 0x1)

    async def watch_interface(self, every: float = 0.5, audit_every: float = 0.5) -> None:
        """Follow the WireGuard interface (an ifindex check every `every` seconds).

        Gone (wg-quick down, wireguard-go killed): one log line, the data plane pauses,
        the engine and every desired route are kept. Back, or a new ifindex (recreated,
        wireguard-go restarted and reconfigured): once the device has our private key,
        the link is set up, the control address added, the Babel socket bound again, the
        device and the kernel re-read and every owned AllowedIP and route put back (one
        log line with the time it took). While present, every `audit_every` seconds (less
        often when reading the device and the routes is slow: at most AUDIT_SHARE of the
        time, at least every AUDIT_MAX seconds) the
        device is compared with what wgcast installed; owned entries someone else
        changed are put back (`DataPlaneApplier.audit`)."""
        dp = self.dataplane
        assert dp is not None
        ifname = self.config.interface
        known = self.ifindex(ifname)
        gone_at: float | None = None
        back_at: float | None = None
        waiting_said = False
        next_audit = self.now() + audit_every
        while True:
            await asyncio.sleep(every)
            index = self.ifindex(ifname)
            now = self.now()
            if index == known and gone_at is None:
                if now >= next_audit:
                    next_audit = now + min(AUDIT_MAX, max(audit_every,
                                                          dp.check_cost / AUDIT_SHARE))
                    dp.audit()
                continue
            if index == 0:
                if gone_at is None:
                    gone_at = now
                    dp.pause()
                    log.warning("%s: the interface is gone; keeping the routes and waiting "
                                "for it to come back", ifname)
                back_at = None
                continue
            if gone_at is None:  # a new ifindex without seeing it gone
                gone_at = now
                dp.pause()
            if back_at is None:
                back_at = now
            if now - back_at < UP_GRACE and not self.link_up(ifname):
                continue  # being configured (wg-quick: addresses first, then up)
            why = await self._reattach()
            if why is not None:
                if not waiting_said and now - back_at > 10.0:
                    waiting_said = True
                    log.warning("%s: the interface is back but not usable yet: %s", ifname, why)
                continue
            t0 = self.now()
            done = dp.resync()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 5.0)
            log.info("%s: the interface is back (ifindex %d -> %d, gone %.1fs): socket "
                     "re-bound, control address and %d routes restored in %.0f ms%s",
                     ifname, known, index, back_at - gone_at, len(dp.desired_routes()),
                     (self.now() - t0) * 1000, "" if done.is_set() else " (still retrying)")
            known, gone_at, back_at, waiting_said = index, None, None, False
            next_audit = self.now() + audit_every

    async def _reattach(self) -> str | None:
        """Re-bind to the interface that came back; what is missing, or None once done."""
        if self.backend is None:
            return "no WireGuard interface"
        try:
            dev = await self.backend.get()
        except Exception as e:
            return f"cannot read it ({e})"
        if dev.public_key != self.public_key:
            return "it has no private key, or another one"
        if self.peers and not any(dev.peer(i.key) is not None for i in self.peers.values()):
            return "none of the configured peers is on it"
        try:
            await self.system.ensure_up()
            await self.system.add_address(ipaddress.IPv6Interface(f"{self.control}/64"))
            self.transport.reopen()
        except Exception as e:
            return f"cannot set it up ({e})"
        if self.node is not None:
            for name in self.peers:
                self.node.hello_now(name, self.now())
            self._pump()
        return None

    async def watch_peers(self, every: float = 2.0) -> None:
        """Why peers are down, and the operator's peers (`wg set`, wg-quick, syncconf):
        a configured peer removed from the device is reported, and picked up when it
        comes back (its control address and routes put back at once); a device peer
        not in the config is reported once."""
        while True:
            await asyncio.sleep(every)
            await self.check_peers()

    async def check_peers(self) -> None:
        """One look at the peers (see `watch_peers`)."""
        doctor, dp = self.doctor, self.dataplane
        if doctor is None or dp is None or dp.paused or self.backend is None:
            return  # the interface is gone: said once by watch_interface
        try:
            dev = await self.backend.get()
        except Exception as e:
            log.debug("peers: cannot read the device: %s", e)
            return
        self._feed_rx(dev)
        absent = {n for n, p in doctor.problems.items() if p.kind == NOT_ON_DEVICE}
        doctor.observe(dev)
        now_absent = {n for n, p in doctor.problems.items() if p.kind == NOT_ON_DEVICE}
        back = [n for n in absent if n in self.peers and n not in now_absent]
        if back:
            log.info("%s: peers back on the interface: %s; putting back their control "
                     "addresses and routes", self.config.interface, ", ".join(sorted(back)))
            dp.audit()
            if self.node is not None:
                for name in back:
                    self.node.hello_now(name, self.now())
                self._pump()

    def _feed_rx(self, dev: Device) -> None:
        """WireGuard's rx counters, read for the doctor anyway, as signs of life for the
        engine (rx_feed.py): a peer carrying traffic is not probed for a late Hello."""
        node = self.node
        if node is None:
            return
        on_device = {p.public_key: p.rx_bytes for p in dev.peers}
        rx = {name: on_device[info.key] for name, info in self.peers.items()
              if info.key in on_device}
        now = self.now()
        fed = False
        for name, since in self._rx_feed.observe(now, rx):
            if name in node.neighbours:
                node.heard(name, since, now=now)
                fed = True
        if fed:
            self._pump()  # re-arms the engine's timer (probing moved later)

    async def watch_host(self, every: float = 5.0) -> None:
        """Look at the host's settings now and then (forwarding)."""
        await asyncio.sleep(min(every, 2 * self.config.timers.hello + 1.0))
        while True:
            self.check_forwarding()
            sd_notify(f"STATUS={self.status_line()}")
            await asyncio.sleep(every)

    def status_line(self) -> str:
        """One line for `systemctl status` (sd_notify STATUS=)."""
        view = self.view
        if view is None:
            return "starting"
        nbs = view.neighbours()
        line = (f"{sum(1 for n in nbs if n.up)}/{len(nbs)} neighbours up, "
                f"{view.selected_count()} routes, serving {len(self._served)} groups")
        if self.problems:
            line += f"; {len(self.problems)} problems (wgcast status)"
        return line

    def close(self) -> None:
        if self.endpoints is not None:
            self.endpoints.close()
        if self.doctor is not None:
            self.doctor.close()
        if self.dataplane is not None:
            self.dataplane.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        if self._state_retry is not None:
            self._state_retry.cancel()
            self._state_retry = None
        self.transport.close()
        if self.lan is not None:
            self.lan.close()

    # ------------------------------------------------------------ views (ports.StatusSource)

    def status(self) -> dict[str, Any]:
        node, dp = self.node, self.dataplane
        assert node is not None and self.view is not None
        neighbours = self.view.neighbours()
        return {
            "interface": self.config.interface,
            "name": self.node_name(),
            "version": _version(),
            "config": self.config.path,
            "api_socket": self.config.api_socket,
            "metrics": None if self.config.metrics is None else str(self.config.metrics),
            "web": None if self.config.web is None else str(self.config.web),
            "backend": None if self.backend is None else self.backend.kind,
            "router_id": node.router_id.hex(),
            "control_address": None if self.backend is None else str(self.control),
            "seqno": node.seqno,
            "uptime_s": round(time.time() - self.stats.started, 3),
            "neighbours_up": sum(1 for n in neighbours if n.up),
            "neighbours": len(neighbours),
            "routes": self.view.selected_count(),
            "served": sorted(map(str, self._served)),
            "timers": {"hello": self.config.timers.hello, "dead": self.config.timers.dead,
                       "update": self.config.timers.update},
            "counters": dict(node.counters),
            "dataplane": None if dp is None else {
                **self._dataplane_status(dp), "acks_held": self.acks_held,
                "acks_gate_expired": self.acks_gate_expired},
            "announcements_dropped": self.policy.dropped,
            "announcements_refused": self.policy.dropped_table(),
            "roster": None if self.policy.roster is None else {
                "serial": self.policy.roster.serial,
                "members": len(self.policy.roster.members)},
            "signing": self._signing_status(),
            "endpoints": self.endpoints.status() if self.endpoints is not None else None,
            "problems": list(self.problems),
            "peer_problems": [] if self.doctor is None else [
                {"peer": n, "reason": p.kind, "detail": p.detail}
                for n, p in sorted(self.doctor.problems.items())],
            "unconfigured_peers": self.unconfigured_peers(),
            "state": {"file": self.config.state_file, "save_errors": self.state_errors,
                      "error": self.state_error},
            "reload": {"reloads": self.reloads, "refused": self.reload_errors,
                       "last": self.last_reload},
            "lan": [] if self.lan is None else self.lan.status(self._lan_neighbour_view),
        }

    @staticmethod
    def _dataplane_status(dp: DataPlaneApplier) -> dict[str, Any]:
        q = dp.move_hold
        return {"applies": dp.stats.applies,
                "ops": dp.stats.ops,
                "errors": dp.stats.errors,
                "last_apply_ms": round(dp.stats.last_apply_ms, 3),
                "held_moves": dp.stats.held_moves,
                "held_packets": dp.stats.held_packets,
                "unheld_withdrawals": dp.stats.unheld_withdrawals,
                "put_back": dp.stats.put_back,
                "split_applies": dp.stats.split,
                "resyncs": dp.stats.resyncs,
                "interface_present": not dp.paused,
                "holding": sorted(map(str, dp.holding())),
                "hold_device": q.ifname if q is not None else None,
                "hold": None if q is None else {
                    k: getattr(q.stats, k) for k in
                    ("holds", "held", "released", "dropped_full", "unmatched")}}

    def _lan_neighbour_view(self, name: str) -> dict[str, object]:
        view = self.view
        nb = view.neighbour(name) if view is not None else None
        if view is None or nb is None:
            return {"up": False}
        return {"up": nb.up, "rtt_ms": None if nb.rtt_ms is None else round(nb.rtt_ms, 3),
                "cost": view.neighbour_cost(name), "routes_via": view.routes_via(name)}

    def route_table(self) -> list[dict[str, Any]]:
        view, dp = self.view, self.dataplane
        assert view is not None
        out = []
        for sel in sorted(view.selected(), key=lambda s: str(s.prefix)):
            name = self.policy.origin_name
            trust = self.policy.trust
            alts = [{"neighbour": r.neighbour, "metric": r.metric,
                     "router_id": r.router_id.hex(), "origin": name(r.router_id),
                     "seqno": r.seqno, "verified": trust.get((r.neighbour, sel.prefix), "?")}
                    for r in view.routes_to(sel.prefix)]
            origin = "local" if sel.via == LOCAL else name(sel.router_id)
            out.append({
                "prefix": str(sel.prefix), "via": sel.via, "metric": sel.metric,
                "router_id": sel.router_id.hex(), "origin": origin, "seqno": sel.seqno,
                # How the route was checked: signed, roster, address, peer policy, local.
                "verified": "local" if sel.via == LOCAL else
                trust.get((sel.via, sel.prefix), "?"),
                "installed": (dp is not None and dp.installed(sel.prefix)) or sel.via == LOCAL
                or (self.lan is not None and self.lan.installed(sel.prefix)),
                "routes": alts,
            })
        return out

    def node_name(self) -> str:
        """This node's name: `name` in the config, the roster's, or the host's."""
        if self.config.name:
            return self.config.name
        if self.node is not None and self.policy.roster is not None:
            m = self.policy.roster.member_by_router_id(self.node.router_id)
            if m is not None:
                return m.name
        return socket.gethostname()

    def catchment_table(self, only: Sequence[Prefix] = (),
                        everything: bool = False) -> dict[str, Any]:
        """Own and neighbours' selected origin per anycast prefix (`catchments.py`)."""
        assert self.view is not None
        out = catchment_table(self.view, self.policy.origin_name, self.node_name(),
                              self.config.anycast, only, everything)
        out["interface"] = self.config.interface
        return out

    def _catchment_stamp(self) -> object:
        """What changes when a catchment may have: Updates heard, own route changes,
        neighbours up or down (the web page's change log samples only then)."""
        node = self.node
        if node is None:
            return None
        c = node.counters
        return (c["updates_in"], c["route_changes"],
                tuple(n.up for n in node.neighbours.values()))

    async def _api_catchments(self, req: dict[str, Any]) -> dict[str, Any]:
        raw = req.get("prefixes", [])
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise ApiError("bad_request", "prefixes: expected a list of IP prefixes")
        try:
            only = [ipaddress.ip_network(p, strict=False) for p in raw]
        except ValueError as e:
            raise ApiError("bad_prefix", f"prefixes: {e}") from None
        return {"catchments": self.catchment_table(only, bool(req.get("all")))}

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
                **(self.doctor.view(name) if self.doctor is not None else
                   {"reason": None, "reason_detail": None}),
                **(self.endpoints.peer_view(name) if self.endpoints is not None else {}),
            })
        return out

    def unconfigured_peers(self) -> list[dict[str, Any]]:
        """WireGuard peers of the interface that are not in the config (ignored)."""
        if self.doctor is None:
            return []
        return [{"public_key": k, "endpoint": e}
                for k, e in sorted(self.doctor.unconfigured.items())]

    async def _api_peers(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"peers": self.peer_table(), "unconfigured": self.unconfigured_peers()}

    def counters(self) -> DaemonCounters | None:
        node, dp = self.node, self.dataplane
        if node is None:
            return None
        if dp is None:  # a LAN-only node: no data plane of its own
            return DaemonCounters(
                interface=self.config.label, router_id=node.router_id, control_address="",
                seqno=node.seqno, routes=len(node.selected), served_groups=len(self._served),
                babel=dict(node.counters), dataplane_applies=0, dataplane_ops=0,
                dataplane_errors=0, last_apply_ms=0.0, held_moves=0, held_packets=0,
                move_hold_dropped=None, announcements_dropped=self.policy.dropped,
                announcements_refused=dict(self.policy.dropped_by), endpoints=None,
                state_save_errors=self.state_errors, dataplane_put_back=0,
                interface_resyncs=0,
                signatures={k: v for k, v in self._signing_status().items()
                            if k in ("signed", "verified", "verified_from_memory")})
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
            endpoints=self.endpoints.status() if self.endpoints is not None else None,
            state_save_errors=self.state_errors, dataplane_put_back=dp.stats.put_back,
            interface_resyncs=dp.stats.resyncs,
            signatures={k: v for k, v in self._signing_status().items()
                        if k in ("signed", "verified", "verified_from_memory")})


_EPERM = (errno.EPERM, errno.EACCES)


@contextlib.contextmanager
def _needs_root(what: str) -> Iterator[None]:
    """A permission error while doing `what` says what the daemon needs (not a bare
    `[Errno 13] Permission denied`)."""
    try:
        yield
    except Exception as e:
        # PermissionError, the back ends' PermissionDenied, NetConfigError (its errno),
        # pyroute2's NetlinkError (its code).
        if isinstance(e, PermissionError | PermissionDenied) or \
                getattr(e, "errno", None) in _EPERM or getattr(e, "code", None) in _EPERM:
            raise RuntimeError(f"needs root or CAP_NET_ADMIN for {what} ({e})") from e
        raise


class _NoTransport:
    """`ports.Transport` of a LAN-only node: no WireGuard interface, no peers to reach
    (its LANs have sockets of their own, lan.py)."""

    def open(self, control: ipaddress.IPv6Address,
             on_datagrams: Callable[[Datagrams], None]) -> None: ...

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None: ...

    def reopen(self) -> None: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...


def _named(gone: tuple[Prefix | None, ...]) -> tuple[Prefix, ...] | None:
    """The prefixes retracted, None for all of them (a wildcard retraction among them)."""
    return None if None in gone else tuple(p for p in gone if p is not None)


def _has_ack(data: bytes) -> bool:
    """Whether a Babel packet (ours: well formed) carries an Ack TLV."""
    end = min(len(data), 4 + int.from_bytes(data[2:4], "big")) if len(data) >= 4 else 0
    pos = 4
    while pos < end:
        t = data[pos]
        if t == _TLV_PAD1:
            pos += 1
            continue
        if t == _TLV_ACK:
            return True
        if pos + 1 >= end:
            return False
        pos += 2 + data[pos + 1]
    return False


def _read_sysctl(key: str) -> str | None:
    try:
        with open(f"/proc/sys/{key}") as f:
            return f.read().strip()
    except OSError:
        return None


def _open_move_hold(wg_ifname: str) -> MoveHoldDevice:
    return MoveHoldQueue(move_hold_ifname(wg_ifname))


def _host_interface(prefix: Prefix) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{prefix.network_address}/{prefix.max_prefixlen}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wgcast")
    except PackageNotFoundError:
        return "unknown"


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()

