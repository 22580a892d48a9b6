"""The data-plane applier: selected routes become AllowedIPs and kernel routes.

The runtime tells it each route the engine selects (`route_selected`); a task (`run`)
applies the changes, coalescing bursts: one `reconcile.plan` against what the device
holds, one batch to the device, then the kernel routes. Only prefixes the engine ever
selected are managed; a peer's static AllowedIPs are left alone. Routes a previous run
installed that nobody announces any more are removed after a grace period.

Move holds (make-before-break, `timers.move_hold > 0`, dataplane/move_hold.py): when a
prefix moves away from a peer that is still up, its kernel route first points at the
move-hold device, whose queue keeps its packets while the replies already sent through
the old peer come back (AllowedIPs still names that peer: they pass the source filter);
after about one round trip the AllowedIPs entry moves, the route goes back to WireGuard
and the queued packets are sent on, to the new peer. A move away from a dead peer is not
held: nothing comes back through a dead link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from wgcast.anycast.group import DRAIN_METRIC
from wgcast.babel.wire import INFINITY
from wgcast.daemon.config import Config
from wgcast.daemon.ports import EngineView, HostNetwork, MoveHoldDevice, Scheduler
from wgcast.daemon.trace import TraceRing
from wgcast.dataplane.reconcile import holders, plan, simulate
from wgcast.dataplane.system import NetConfigError
from wgcast.dataplane.types import (
    AddAllowedIP,
    Device,
    Op,
    PeerKey,
    RemoveAllowedIP,
    WireGuardBackend,
)
from wgcast.keys import router_id
from wgcast.prefix import Prefix

log = logging.getLogger("wgcast")

#: After a put-back warning, further ones for this long are at debug level.
PUT_BACK_QUIET = 30.0

#: Added to 3 round trips to the old peer when holding a move (service time, scheduling).
MOVE_HOLD_MARGIN = 0.01
#: Prefixes changed in one apply at most: a flood of routes (thousands at once) is
#: applied in rounds, the event loop (Hellos, the API) running between them, and the
#: routes already installed go first, so that a flood of new ones cannot delay a move.
MAX_PREFIXES_PER_APPLY = 256
#: A kernel route whose prefix lost its last route stays this long (seconds) before it
#: is removed; its AllowedIPs entry goes at once (nothing is sent to the old peer). A
#: failover often passes through "no route" for a round trip (a hop waits for the next
#: one's news): the route back then costs only the AllowedIPs change, not two netlink
#: round trips on the critical path (tens of ms on a loaded host).
ROUTE_LINGER = 1.0


@dataclass(slots=True)
class DataPlaneStats:
    """Counters of the applier (status and metrics read them)."""

    applies: int = 0
    ops: int = 0
    errors: int = 0
    last_apply_ms: float = 0.0
    held_moves: int = 0
    held_packets: int = 0
    #: Owned AllowedIPs / kernel routes found changed under wgcast and put back.
    put_back: int = 0
    #: Full resyncs after the interface came back (deleted and recreated, restarted).
    resyncs: int = 0
    #: Applies that left work for the next round (more than MAX_PREFIXES_PER_APPLY).
    split: int = 0
    #: Moves not held because the old peer, the origin, withdrew its instance.
    unheld_withdrawals: int = 0


class DataPlaneApplier:
    """AllowedIPs and kernel routes of one interface, following the selected routes."""

    def __init__(self, config: Config, device: WireGuardBackend, host: HostNetwork,
                 clock: Scheduler, engine: Callable[[], EngineView | None],
                 peer_name: Mapping[PeerKey, str],
                 open_move_hold: Callable[[str], MoveHoldDevice]) -> None:
        self.config = config
        self.device = device
        self.host = host
        self.clock = clock
        #: The engine view once the engine runs (move holds read the old peer's RTT).
        self._engine = engine
        self._peer_name = peer_name
        self._open_move_hold = open_move_hold
        self.stats = DataPlaneStats()
        self._desired: dict[Prefix, PeerKey | None] = {}
        self._actual: dict[PeerKey, set[Prefix]] = {}
        self._kroutes: set[Prefix] = set()
        self._inherited: set[Prefix] = set()
        #: The move-hold device, None when off or when it could not be created.
        self.move_hold: MoveHoldDevice | None = None
        #: prefix -> end of its move hold.
        self._holding: dict[Prefix, float] = {}
        #: Last metric of a real path per prefix: bounds the round trip of a held move.
        self._path_metric: dict[Prefix, int] = {}
        #: The source (router-id) of the last paths per prefix through each of the last
        #: two peers: a move away from an origin that withdrew its instance is not held.
        self._path_origin: dict[Prefix, dict[PeerKey, bytes | None]] = {}
        #: (prefix, neighbour name) whose last announcement was a draining instance
        #: (DRAIN_METRIC): its retraction ends a drain, and the move away stays held.
        self._drained: set[tuple[Prefix, str]] = set()
        self._move_holds_off = False
        self._dirty = asyncio.Event()
        #: The interface is gone: nothing is applied (desired state kept) until resync().
        self._paused = False
        #: Read the device and the kernel before the next apply: "audit" (compare, put
        #: back, count) or "resync" (the interface came back: everything is new).
        self._check: str | None = None
        #: Set once the apply after a check succeeded.
        self._checked: asyncio.Event | None = None
        #: The peers' control /128s: kept on the peers the device has (audit, resync).
        self.controls: Callable[[], list[tuple[PeerKey, Prefix]]] = list
        #: Failed applies in a row (back-off, one log line per streak).
        self._fails = 0
        #: Bound of one apply (see MAX_PREFIXES_PER_APPLY; tests lower it).
        self.max_prefixes = MAX_PREFIXES_PER_APPLY
        #: CPU seconds of the last read back (device + kernel routes): paces the audits.
        self.check_cost = 0.0
        self._put_back_quiet = float("-inf")
        #: Route-change trace: "applied" / "held" events of the traced prefixes.
        self.trace: TraceRing | None = None
        #: When the first route change not yet applied came (the trace's wait time).
        self._changed_at: float | None = None
        #: prefix -> when it lost its last route while its kernel route stays (linger).
        self._unrouted: dict[Prefix, float] = {}
        self.route_linger = ROUTE_LINGER
        #: Route changes not applied yet (`moving_away`).
        self._unapplied: set[Prefix] = set()
        #: Called after every apply (the runtime sends the Acks it held back).
        self.on_applied: Callable[[], None] | None = None

    # ------------------------------------------------------------ start

    async def load(self, dev: Device) -> None:
        """What the device and the kernel hold now (routes found are 'inherited')."""
        self._actual = dev.allowed_ips_by_peer()
        self._kroutes = await self.host.list_routes()
        self._inherited = set(self._kroutes)

    def allowed_ips(self, key: PeerKey) -> set[Prefix]:
        """The AllowedIPs of a peer as last read or applied (a copy)."""
        return set(self._actual.get(key, set()))

    def inherited(self) -> frozenset[Prefix]:
        return frozenset(self._inherited)

    async def ensure(self, entries: list[tuple[PeerKey, Prefix]]) -> None:
        """Add AllowedIPs outside the managed set (the peers' control addresses)."""
        if not entries:
            return
        await self.device.apply([AddAllowedIP(k, p) for k, p in entries])
        for k, p in entries:
            self._actual.setdefault(k, set()).add(p)

    async def open_move_hold(self) -> None:
        """Create the move-hold device; without it moves are immediate (logged)."""
        ifname = self.config.interface
        q = self._open_move_hold(ifname)
        try:
            q.open()
            await self.host.match_mtu(q.ifname)
            await self.host.ensure_up(q.ifname)
        except (OSError, NetConfigError) as e:
            q.close()
            log.warning("%s: cannot create the hold device %s (%s): moves away from a live "
                        "peer will lose the replies in flight", ifname, q.ifname, e)
            return
        self.move_hold = q
        if 6 not in q.families:
            log.warning("%s: IPv6 forwarding is off (net.ipv6.conf.all.forwarding): IPv6 "
                        "moves are not held, replies in flight may be lost on a move", ifname)

    def close(self) -> None:
        if self.move_hold is not None:
            self.move_hold.close()
            self.move_hold = None

    # ------------------------------------------------------------ input

    def route_selected(self, prefix: Prefix, peer: PeerKey | None, metric: int,
                       origin: bytes | None = None) -> None:
        """The engine selected a route: through `peer`, or none (own or unreachable);
        `origin`: the router-id of its source."""
        if peer is None:
            self._path_metric.pop(prefix, None)
        else:
            if metric < DRAIN_METRIC:  # a real path, not a draining instance
                self._path_metric[prefix] = metric
            # Per peer, the last two: the move that follows reads the old peer's.
            seen = self._path_origin.setdefault(prefix, {})
            seen.pop(peer, None)
            seen[peer] = origin
            while len(seen) > 2:
                del seen[next(iter(seen))]
        self._desired[prefix] = peer
        self._unapplied.add(prefix)
        if self._changed_at is None:
            self._changed_at = self.clock.now()
        self._dirty.set()

    def heard(self, neighbour: str, prefix: Prefix, metric: int) -> None:
        """An Update heard from `neighbour` (the engine's observer, before it applies
        it). A drain's retraction can reach us before our move away from the draining
        instance is applied (a slow host): that move is still a drain's, held."""
        if DRAIN_METRIC <= metric < INFINITY:
            self._drained.add((prefix, neighbour))
        elif metric < DRAIN_METRIC and self._drained:
            self._drained.discard((prefix, neighbour))

    def kick(self) -> None:
        """Apply now (the first apply after start)."""
        self._dirty.set()

    def pause(self) -> None:
        """The interface is gone: apply nothing, keep the desired state."""
        self._paused = True

    @property
    def paused(self) -> bool:
        return self._paused

    def audit(self) -> asyncio.Event:
        """Compare the device and the kernel with what wgcast installed before the next
        apply; owned entries changed by someone else are put back (counted). The event
        is set once that apply succeeded."""
        return self._want_check("audit")

    def resync(self) -> asyncio.Event:
        """The interface is back (new ifindex): read everything again, put back the
        control /128s, AllowedIPs and kernel routes; unpauses."""
        self._paused = False
        return self._want_check("resync")

    def _want_check(self, kind: str) -> asyncio.Event:
        order = ("reread", "audit", "resync")
        if self._check is None or order.index(kind) > order.index(self._check):
            self._check = kind
        if self._checked is None:
            self._checked = asyncio.Event()
        self._dirty.set()
        return self._checked

    def desired_routes(self) -> list[Prefix]:
        """Prefixes that should route to the interface (through a peer)."""
        return [p for p, k in self._desired.items() if k is not None]

    def installed(self, prefix: Prefix) -> bool:
        """Whether the kernel route of `prefix` points at the WireGuard interface."""
        return prefix in self._kroutes

    def holding(self) -> list[Prefix]:
        """Prefixes whose move is being held."""
        return list(self._holding)

    def moving_away(self, peer: PeerKey, prefixes: Collection[Prefix] | None = None) -> bool:
        """Whether a route change not applied yet takes a prefix (of `prefixes`, or any)
        away from `peer`, which still gets its packets (AllowedIPs, no hold started):
        until it is applied, an Ack to that peer would claim more than the data plane
        does (see the runtime)."""
        if not self._unapplied:
            return False
        have = self._actual.get(peer)
        if not have:
            return False
        among = self._unapplied if prefixes is None else \
            [p for p in prefixes if p in self._unapplied]
        return any(p in have and self._desired.get(p) != peer and p not in self._holding
                   for p in among)

    def _settle_unapplied(self) -> None:
        """Forget the changes the last apply carried out (a split apply leaves some)."""
        done = []
        for p in self._unapplied:
            key = self._desired.get(p)
            if p in self._holding or (key is not None and p in self._actual.get(key, ())) \
                    or (key is None and not any(p in v for v in self._actual.values())) \
                    or (key is not None and key not in self._actual):
                done.append(p)
        self._unapplied.difference_update(done)

    # ------------------------------------------------------------ apply

    async def run(self, stop: asyncio.Event) -> None:
        """Apply route changes to AllowedIPs and kernel routes, coalescing bursts."""
        timers = self.config.timers
        grace_until = self.clock.now() + 2 * timers.update + timers.dead_interval
        inherited_done = not self._inherited
        while not stop.is_set():
            timeout = None if inherited_done else max(0.0, grace_until - self.clock.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout)
            self._dirty.clear()
            if not inherited_done and self.clock.now() >= grace_until:
                # Routes a previous run installed that nobody announces any more.
                for p in self._inherited:
                    self._desired.setdefault(p, None)
                inherited_done = True
            if self._paused:
                continue  # the interface is gone: resync() wakes us
            try:
                if self._check is not None:
                    await self._read_back(self._check)
                await self.apply_once()
            except Exception as e:  # keep forwarding; re-read and retry, backing off
                self.stats.errors += 1
                self._fails += 1
                if self._fails == 1:
                    log.warning("data plane update failed (%s); re-reading the device and "
                                "retrying (backing off)", e)
                else:
                    log.debug("data plane update failed again (%d): %s", self._fails, e)
                self._check = self._check or "reread"
                await asyncio.sleep(min(2.0, 0.05 * 2 ** (self._fails - 1)))
                self._dirty.set()
                continue
            self._settle_unapplied()
            if self.on_applied is not None:
                self.on_applied()
            if self._dirty.is_set():
                await asyncio.sleep(0)  # a split apply: let the loop run between rounds
            if self._fails > 1:
                log.info("data plane updates work again after %d failures", self._fails)
            self._fails = 0
            if self._checked is not None:
                self._checked.set()
                self._checked = None

    async def _read_back(self, kind: str) -> None:
        """Read the device and the kernel; owned entries that differ from what was
        installed are put back by the apply that follows (an audit counts and logs
        them); missing control /128s are added to the peers the device has."""
        c0 = time.process_time()  # CPU, not wall: a loaded machine does not make it costlier
        dev = await self.device.get()
        found = dev.allowed_ips_by_peer()
        # Held prefixes route to the move-hold device, not the interface: not lost.
        kroutes = await self.host.list_routes() | (self._kroutes & set(self._holding))
        self.check_cost = time.process_time() - c0
        self._check = None
        managed = set(self._desired)
        was, now_ = holders(self._actual), holders(found)
        # A prefix whose peer left the device (`wg set ... remove`, syncconf) cannot be
        # put back: not counted (the peer is reported as not on the interface).
        changed = sorted((p for p in managed if was.get(p) != now_.get(p) and
                          (self._desired.get(p) is None or self._desired[p] in found)),
                         key=str)
        lost_routes = sorted((p for p in self._kroutes - kroutes), key=str)
        ctrl = [(k, p) for k, p in self.controls() if k in found and now_.get(p) != k]
        self._actual = found
        self._kroutes = kroutes
        if ctrl:
            await self.device.apply([AddAllowedIP(k, p) for k, p in ctrl])
            for k, p in ctrl:
                self._actual[k].add(p)
        if kind == "resync":
            self.stats.resyncs += 1
            return
        if kind != "audit":
            return
        n = len(changed) + len(lost_routes) + len(ctrl)
        if n:
            self.stats.put_back += n
            what = [str(p) for p in changed] + [f"route {p}" for p in lost_routes] + \
                [f"{p} (control)" for _, p in ctrl]
            # Someone fighting us (a tool re-applying its own AllowedIPs in a loop): one
            # warning per PUT_BACK_QUIET seconds, the rest at debug level (all counted).
            now = self.clock.now()
            level = logging.WARNING if now >= self._put_back_quiet else logging.DEBUG
            if level == logging.WARNING:
                self._put_back_quiet = now + PUT_BACK_QUIET
            log.log(level, "%s: %d owned entries changed under wgcast, putting them back: "
                    "%s%s", self.config.interface, n, ", ".join(what[:8]),
                    " ..." if len(what) > 8 else "")

    async def final_apply(self, timeout: float) -> None:
        """On stop: the last moves, at once (no more move holds), bounded; errors ignored."""
        self._move_holds_off = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.apply_once(), timeout)

    async def apply_once(self) -> None:
        t0 = time.perf_counter()
        # Never through a peer the device does not have (removed by the operator: an
        # update-only add would be a silent no-op, and the audit would count it forever).
        desired = {p: k for p, k in self._desired.items()
                   if k is not None and k in self._actual}
        managed = set(self._desired)
        done: list[Prefix] = []
        owner = holders(self._actual)  # computed once: the holds and plan() both need it
        if self.move_hold is not None:
            done = await self._start_move_holds(desired, owner)
        try:
            await self._apply_plan(desired, managed, t0, owner)
        finally:
            if done:
                await self._end_move_holds(done, desired)

    def _bounded(self, desired: dict[Prefix, PeerKey], managed: set[Prefix],
                 owner: dict[Prefix, PeerKey]) -> tuple[dict[Prefix, PeerKey], set[Prefix]]:
        """At most `max_prefixes` prefixes to change in this apply (the rest next round,
        `_dirty` set): first those installed now (moves, removals), then new ones."""
        kroutes = self._kroutes
        pending = [p for p in managed
                   if desired.get(p) != owner.get(p) or (p in desired) != (p in kroutes)]
        if len(pending) <= self.max_prefixes:
            return desired, managed
        pending.sort(key=lambda p: p not in owner and p not in kroutes)
        chunk = set(pending[:self.max_prefixes])
        self.stats.split += 1
        self._dirty.set()
        return {p: k for p, k in desired.items() if p in chunk}, chunk

    async def _apply_plan(self, desired: dict[Prefix, PeerKey], managed: set[Prefix],
                          t0: float, owner: dict[Prefix, PeerKey]) -> None:
        desired, managed = self._bounded(desired, managed, owner)
        changed_at, self._changed_at = self._changed_at, None
        ops = plan(desired, self._actual, managed, owner)
        t_dev = time.perf_counter()
        if ops:
            await self.device.apply(ops)
            self._actual = simulate(self._actual, ops)
        t_routes = time.perf_counter()
        want_routes = set(desired)
        add = want_routes - self._kroutes
        drop = self._linger({p for p in managed if p not in want_routes} & self._kroutes,
                            want_routes)
        if add:
            await self.host.add_routes(add)
            self._kroutes |= add
        if drop:
            await self.host.remove_routes(drop)
            self._kroutes -= drop
        if ops or add or drop:
            self.stats.applies += 1
            self.stats.ops += len(ops)
            self.stats.last_apply_ms = (time.perf_counter() - t0) * 1000
            if self.trace is not None:
                t1 = time.perf_counter()
                wait = "" if changed_at is None else \
                    f"waited {(self.clock.now() - changed_at - (t1 - t0)) * 1000:.1f} ms, "
                self._trace_applied(ops, add, drop, desired,
                                    f"{wait}device {(t_routes - t_dev) * 1000:.1f} ms, "
                                    f"routes {(t1 - t_routes) * 1000:.1f} ms")

    def _linger(self, drop: set[Prefix], routed: set[Prefix]) -> set[Prefix]:
        """The kernel routes to remove now: those unrouted for `route_linger` (see
        ROUTE_LINGER); the others are kept and looked at again when theirs is over."""
        unrouted = self._unrouted
        for p in [p for p in unrouted if p in routed or p not in self._kroutes]:
            del unrouted[p]
        if not drop or self.route_linger <= 0 or self._move_holds_off:
            return drop
        now = self.clock.now()
        out: set[Prefix] = set()
        for p in drop:
            since = unrouted.get(p)
            if since is None:
                unrouted[p] = now
                self.clock.call_at(now + self.route_linger, self._dirty.set)
            elif now >= since + self.route_linger:
                out.add(p)
                del unrouted[p]
        return out

    def _trace_applied(self, ops: list[Op], add: set[Prefix], drop: set[Prefix],
                       desired: dict[Prefix, PeerKey], note: str) -> None:
        """One "applied" event per traced prefix this apply changed (device and kernel
        done), naming the peer it now goes to."""
        trace = self.trace
        assert trace is not None
        changed = set(add) | set(drop)
        for op in ops:
            if isinstance(op, AddAllowedIP | RemoveAllowedIP):
                changed.add(op.prefix)
            else:
                changed.update(op.prefixes)
        now = self.clock.now()
        for p in changed:
            if not trace.watched(p):
                continue
            key = desired.get(p)
            trace.event(p, now, "applied",
                        neighbour=None if key is None else self._peer_name.get(key),
                        note=note + ("" if key is not None else ", route removed"))

    # ------------------------------------------------------------ move holds

    def _move_hold_time(self, p: Prefix, old: PeerKey) -> float:
        """How long to hold a move of `p` away from peer `old`: 0 when that peer is down
        (nothing comes back through a dead link). Its route may already be gone: when a
        node further down the old path moved first, it poisons the route back to us, yet
        the replies it forwarded are still on their way through it.

        The replies in flight come from as far as the old instance: a link's cost is
        base + rtt_cost_per_ms x its RTT, so the last real path metric / rtt_cost_per_ms
        bounds the path's round trip from above. Plus a margin, at most `move_hold`.

        Not held either when the old peer is the origin itself and has retracted its
        instance (a service killed, a leave): nothing of the instance comes back, and a
        hold would only add its length to the outage. A drain keeps its holds: the
        draining origin still announces (DRAIN_METRIC) while the mesh moves away."""
        engine = self._engine()
        name = self._peer_name.get(old)
        if engine is None or name is None or self.move_hold is None or \
                p.version not in self.move_hold.families:
            return 0.0
        nb = engine.neighbour(name)
        if nb is None or not nb.up:
            return 0.0
        if self._path_origin.get(p, {}).get(old) == router_id(old) and not any(
                r.neighbour == name and r.metric < INFINITY for r in engine.routes_to(p)):
            if (p, name) in self._drained:
                self._drained.discard((p, name))  # a drain's end: held below
            else:
                self.stats.unheld_withdrawals += 1
                return 0.0
        rtt = 3 * (nb.rtt_ms or 0.0)
        metric = self._path_metric.get(p)
        per_ms = self.config.link.rtt_cost_per_ms
        if metric is not None and per_ms > 0:
            rtt = max(rtt, metric / per_ms)
        return min(self.config.timers.move_hold, rtt / 1000.0 + MOVE_HOLD_MARGIN)

    async def _start_move_holds(self, desired: dict[Prefix, PeerKey],
                                owner: dict[Prefix, PeerKey]) -> list[Prefix]:
        """Start the holds of new graceful moves and pin every held prefix to its old
        peer in `desired`; returns the prefixes whose hold is over (released after the
        apply, once their route points back at WireGuard)."""
        q = self.move_hold
        assert q is not None
        now = self.clock.now()
        start: dict[Prefix, float] = {}
        if not self._move_holds_off:
            for p, key in desired.items():
                old = owner.get(p)
                if old is None or old == key or p in self._holding:
                    continue
                wait = self._move_hold_time(p, old)
                if wait > 0:
                    start[p] = wait  # in _holding once the route points at the queue
        if start:
            for p in start:
                q.hold(p)  # queue first, then route here: no packet slips through
            try:
                await self.host.route_via(list(start), q.ifname)
            except NetConfigError as e:
                log.warning("hold: cannot route %d prefixes to %s (%s); moving at once",
                            len(start), q.ifname, e)
                for p in start:
                    q.release(p)
                start = {}
            # The hold runs from the moment the route points at the hold device: a slow
            # netlink call (a loaded host) must not eat the time the replies need.
            now = self.clock.now()
            for p, wait in start.items():
                self._holding[p] = now + wait
                self.clock.call_at(now + wait, self._dirty.set)
                if self.trace is not None:
                    old = owner.get(p)
                    self.trace.event(p, now, "held", neighbour=None if old is None
                                     else self._peer_name.get(old),
                                     note=f"move held {wait * 1000:.1f} ms")
        done: list[Prefix] = []
        for p, until in list(self._holding.items()):
            old = owner.get(p)
            if self._move_holds_off or until <= now or desired.get(p) in (None, old):
                done.append(p)
                del self._holding[p]
            elif old is not None:
                desired[p] = old
        return done

    async def _end_move_holds(self, done: list[Prefix], desired: dict[Prefix, PeerKey]) -> None:
        """Routes of released prefixes back to WireGuard, then their packets out."""
        q = self.move_hold
        assert q is not None
        back = [p for p in done if p in desired]
        gone = [p for p in done if p not in desired]
        try:
            if back:
                await self.host.add_routes(back)
                self._kroutes |= set(back)
            if gone:
                await self.host.remove_routes_via(gone, q.ifname)
        finally:
            n = sum(q.release(p) for p in done)
            self.stats.held_moves += len(done)
            self.stats.held_packets += n
