"""The service membership API: join, leave, drain, undrain, status over the daemon's socket.

Model: Linux's IPV6_JOIN_ANYCAST. A membership is held by an open connection; the daemon
counts members per group (`wgcast.anycast.member.Registry`) and serves a group (address up,
then originate) while it is wanted: (static or members) and healthy and not draining
(`wgcast.anycast.group.Group`). When the last member's connection closes, for whatever
reason (a crash included), the group is withdrawn at once: retract, wait for the
neighbours' acks (bounded), address down.

Drain is the lossless way out. The instance is first announced with a very high metric
(`DRAIN_METRIC`), so every node that has another instance moves to it while still
forwarding to us (Babel keeps a finite route while it switches sources); once every
neighbour announces another instance (or `move_timeout` passed) the prefix is retracted,
the neighbours' acks are awaited, a short `settle` lets in-flight packets arrive, and only
then does the address go down. The address answers throughout.

One reconciling task per group runs at a time, so serve/unserve of a group never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from wgcast.anycast.group import DRAIN_METRIC, Group
from wgcast.anycast.member import Limits, MemberError, Registry
from wgcast.anycast.policy import Peer, Policy, refusal
from wgcast.daemon.api_context import ApiError, Connection, current_connection, prefix_arg
from wgcast.daemon.config import Config, GroupConf, Prefix
from wgcast.daemon.health import HealthMonitor
from wgcast.daemon.ports import (
    CommandRegistry,
    EngineView,
    GroupServing,
    GroupSnapshot,
)
from wgcast.daemon.trace import TraceRing

log = logging.getLogger("wgcast.membership")

#: Babel's infinity.
_INFINITY = 0xFFFF
#: How often a drain looks whether the neighbours have moved.
_POLL = 0.01
#: Retry delay after a failed serve/unserve (e.g. the address interface is missing).
_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class DrainParams:
    """Bounds of a graceful withdrawal (seconds)."""

    #: Longest wait for the neighbours to announce another instance.
    move_timeout: float
    #: Longest wait for the neighbours' acks of the retraction.
    ack_timeout: float
    #: Pause between the acks and the address going down (in-flight packets).
    settle: float


class MembershipService:
    """Membership, health and drain of the configured groups of one daemon."""

    def __init__(self, config: Config, api: CommandRegistry, serving: GroupServing,
                 engine: EngineView, limits: Limits | None = None,
                 trace: TraceRing | None = None) -> None:
        self.config = config
        #: Route-change trace (`wgcast trace`): the detections are recorded here.
        self.trace = trace
        self.api = api
        self.serving = serving
        self.engine = engine
        self.registry = Registry(limits)
        self.groups: dict[Prefix, Group] = {}
        self.policies: dict[Prefix, Policy] = {}
        self.health = HealthMonitor(self._kick)
        self.connections: dict[int, Connection] = {}
        self.last_withdrawal: dict[Prefix, dict[str, Any]] = {}
        self._tasks: dict[Prefix, asyncio.Task[None]] = {}
        self._idle: dict[Prefix, asyncio.Event] = {}
        self._drain_params: dict[Prefix, DrainParams] = {}
        self._errors: dict[Prefix, str] = {}
        self._stopping = False
        #: Groups a reload removed: withdrawn, then forgotten.
        self._retired: set[Prefix] = set()
        #: Served groups a reload changed (metric): announced again.
        self._reannounce: set[Prefix] = set()
        self._base_status = api.handlers.get("status")
        t = config.timers
        self.default_drain = DrainParams(move_timeout=max(1.0, 10 * t.hello),
                                         ack_timeout=max(t.retract_grace, 5 * t.hello),
                                         settle=0.25)

    # ------------------------------------------------------------------ life

    def _add_group(self, gc: GroupConf) -> None:
        checks = self.health.add(gc.prefix, gc.health, self._now())
        self.groups[gc.prefix] = Group(gc.prefix, static=gc.static,
                                       checks=[c.state for c in checks])
        self.policies[gc.prefix] = Policy.of(gc.allow_uids, gc.allow_gids)
        ev = asyncio.Event()
        ev.set()
        self._idle[gc.prefix] = ev

    async def start(self) -> None:
        """Register the API commands and start the health checks (before the API opens)."""
        for gc in self.config.groups:
            self._add_group(gc)
        self.api.handlers.update({
            "join": self._join, "leave": self._leave, "drain": self._drain,
            "undrain": self._undrain, "status": self._status,
        })
        self.api.connect_hooks.append(self._on_connect)
        self.health.start()
        for prefix in self.groups:
            self._kick(prefix)

    def reload(self, config: Config) -> None:
        """A reloaded config: new groups are added (and served once wanted), removed
        ones withdrawn gracefully (as a drain) then forgotten, changed ones take their
        new checks, policy and static flag; a served group whose metric changed is
        announced again with the new one."""
        old = {g.prefix: g for g in self.config.groups}
        self.config = config
        new = {g.prefix: g for g in config.groups}
        for prefix in old.keys() - new.keys():
            self.health.remove(prefix)
            g = self.groups[prefix]
            g.checks = []
            self._retired.add(prefix)
            self._kick(prefix)
        for prefix, gc in new.items():
            was = old.get(prefix)
            if was is None:
                self._retired.discard(prefix)
                if prefix in self.groups:  # removed, still withdrawing, and back
                    g = self.groups[prefix]
                    g.static = gc.static
                    g.checks = [c.state for c in self.health.add(prefix, gc.health,
                                                                 self._now())]
                    self.policies[prefix] = Policy.of(gc.allow_uids, gc.allow_gids)
                else:
                    self._add_group(gc)
            elif was != gc:
                g = self.groups[prefix]
                if was.health != gc.health:
                    self.health.remove(prefix)
                    g.checks = [c.state for c in self.health.add(prefix, gc.health,
                                                                 self._now())]
                g.static = gc.static
                self.policies[prefix] = Policy.of(gc.allow_uids, gc.allow_gids)
                if (was.metric, was.address_interface) != (gc.metric, gc.address_interface):
                    self._reannounce.add(prefix)
            else:
                continue
            self._kick(prefix)
        self.health.start()

    def _wanted(self, g: Group) -> bool:
        return g.wanted and g.prefix not in self._retired

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop reconciling (the daemon withdraws what is served) and stop the checks."""
        self._stopping = True
        await self.health.stop()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ connections

    def _on_connect(self, conn: Connection) -> None:
        uid = conn.peer.uid if conn.peer is not None else -1
        try:
            self.registry.connect(conn.id, uid)
        except MemberError as e:
            raise ApiError(e.code, str(e)) from None
        self.connections[conn.id] = conn
        conn.on_close(self._on_close)

    def _on_close(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        for prefix in self.registry.disconnect(conn.id):
            g = self.groups.get(prefix)
            if g is None:  # removed by a reload
                continue
            g.set_members(self.registry.count(prefix))
            if g.members == 0:
                log.info("group %s: last member gone (connection %d closed)", prefix, conn.id)
                self._detected(prefix, "last member gone (connection closed)")
            self._kick(prefix)

    def _peer(self, conn: Connection) -> Peer:
        cached = conn.data.get("peer")
        if isinstance(cached, Peer):
            return cached
        if conn.peer is None:
            peer = Peer(0, -1, -1)
        else:
            peer = Peer(conn.peer.pid, conn.peer.uid, conn.peer.gid,
                        _supplementary_groups(conn.peer.pid, conn.peer.uid))
        conn.data["peer"] = peer
        return peer

    # ------------------------------------------------------------------ reconcile

    def _kick(self, prefix: Prefix) -> None:
        """Make the group's served state follow its wanted state (one task per group)."""
        if self._stopping or prefix not in self.groups or prefix in self._tasks:
            return
        self._idle[prefix].clear()
        self._tasks[prefix] = asyncio.create_task(self._reconcile(prefix),
                                                  name=f"group {prefix}")

    async def _reconcile(self, prefix: Prefix) -> None:
        g = self.groups[prefix]
        try:
            while not self._stopping:
                try:
                    wanted = self._wanted(g)
                    if wanted and not g.served:
                        await self.serving.serve(prefix)
                        g.served = True
                        self._reannounce.discard(prefix)
                        log.info("group %s: serving (%d members%s)", prefix, g.members,
                                 ", static" if g.static else "")
                    elif wanted and prefix in self._reannounce:
                        self._reannounce.discard(prefix)
                        await self.serving.serve(prefix)
                    elif not wanted and g.served:
                        await self._withdraw(g)
                    else:
                        break
                    self._errors.pop(prefix, None)
                except Exception as e:
                    msg = f"{type(e).__name__}: {e}"
                    if self._errors.get(prefix) != msg:
                        log.warning("group %s: %s; retrying", prefix, msg)
                    self._errors[prefix] = msg
                    await asyncio.sleep(_RETRY)
        finally:
            del self._tasks[prefix]
            self._idle[prefix].set()
            if prefix in self._retired and not g.served:
                self._retired.discard(prefix)
                self.groups.pop(prefix, None)
                self.policies.pop(prefix, None)
                self._idle.pop(prefix, None)
                self._drain_params.pop(prefix, None)
                self._errors.pop(prefix, None)
                log.info("group %s: removed from the config, forgotten", prefix)

    async def _withdraw(self, g: Group) -> None:
        prefix = g.prefix
        loop = asyncio.get_running_loop()
        # Drained, or held but unhealthy: move the mesh first (a failing check often
        # means degraded, not dead: the instance keeps answering while others take
        # over). Lost members (a crash, leave) are withdrawn at once.
        retired = prefix in self._retired
        graceful = g.draining or (g.held and not g.healthy) or retired
        params = self._drain_params.get(prefix, self.default_drain) if g.draining \
            else self.default_drain
        t0 = loop.time()
        why = "removed from the config" if retired else "draining" if g.draining else \
            ("unhealthy" if not g.healthy else "no members")
        if why != "no members":  # a lost member was recorded when its connection closed
            self._detected(prefix, why)
        log.info("group %s: withdrawing (%s)", prefix, why)
        moved: bool | None = None
        if graceful:
            # Phase 1: announce the instance as a very bad one; neighbours with another
            # instance move to it while still forwarding to us.
            await self.serving.serve(prefix, metric=DRAIN_METRIC)
            moved = False
            # The neighbours up now: one that goes down meanwhile may be a starved
            # daemon whose data plane still sends us traffic (see neighbours_moved).
            up_at_start = {nb.name for nb in self.engine.neighbours() if nb.up}
            # From the announcement on: a slow start (a loaded host) does not eat it.
            deadline = loop.time() + params.move_timeout
            while loop.time() < deadline:
                if self._wanted(g):  # undrained, healthy again: back to the real metric
                    await self.serving.serve(prefix)
                    log.info("group %s: withdrawal cancelled", prefix)
                    return
                if not g.held and not retired:
                    break  # the last member is gone: no reason to wait any more
                if self.neighbours_moved(prefix, up_at_start):
                    moved = True
                    break
                # A check failing meanwhile does not cut the drain short: a flaky check
                # must not turn a lossless drain into a retraction (it is bounded anyway).
                await asyncio.sleep(_POLL)
        t_moved = loop.time()
        # Phase 2: retract, wait for the acks (bounded), settle, address down.
        acked = await self.serving.unserve(prefix, wait=params.ack_timeout if graceful else None,
                                          settle=params.settle if graceful else 0.0)
        g.served = False
        t1 = loop.time()
        self.last_withdrawal[prefix] = {
            "reason": why, "graceful": graceful, "moved": moved, "acked": acked,
            "move_ms": round((t_moved - t0) * 1000, 1), "total_ms": round((t1 - t0) * 1000, 1),
            "at": time.time(),
            # The loop clock is CLOCK_MONOTONIC, shared with other processes (benchmarks).
            "started_monotonic": t0, "done_monotonic": t1,
        }
        log.info("group %s: withdrawn in %.0f ms (acked=%s%s)", prefix, (t1 - t0) * 1000,
                 acked, f", moved={moved}" if graceful else "")

    def _detected(self, prefix: Prefix, why: str) -> None:
        if self.trace is not None:
            self.trace.event(prefix, self._now(), "detected", note=why)

    def neighbours_moved(self, prefix: Prefix, up_at_start: Collection[str] = ()) -> bool:
        """Every neighbour that is up announces another instance of `prefix` to us.

        A neighbour that routes through us poisons the route back (split horizon), so no
        route from it, or a route of our own origin, means it still sends traffic here.
        A neighbour of `up_at_start` (up when the drain began) that is down now has not
        moved either: a daemon starved of CPU is declared dead by its silence while its
        data plane (the kernel, WireGuard) keeps sending us its clients' queries; taking
        the address down then lost them all (the drain is bounded by move_timeout).
        """
        engine = self.engine
        routes = {r.neighbour: r for r in engine.routes_to(prefix)}
        for nb in engine.neighbours():
            if not nb.up:
                if nb.name in up_at_start:
                    return False
                continue
            r = routes.get(nb.name)
            if r is None or r.router_id == engine.router_id or r.refmetric >= _INFINITY:
                return False
        return True

    def group_snapshots(self) -> tuple[GroupSnapshot, ...]:
        """`ports.GroupSource`: every configured group, for the metrics."""
        return tuple(GroupSnapshot(g.prefix, g.served, g.members, g.healthy, g.draining)
                     for g in self.groups.values())

    async def _settled(self, prefix: Prefix, timeout: float) -> bool:
        """Wait until no reconcile task runs for `prefix` (bounded)."""
        ev = self._idle[prefix]
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ requests

    def _group(self, req: dict[str, Any]) -> tuple[Prefix, Group]:
        prefix = prefix_arg(req.get("prefix"), "an anycast prefix")
        g = self.groups.get(prefix)
        if g is None:
            known = ", ".join(str(p) for p in self.groups) or "none"
            raise ApiError("unknown_group", f"{prefix} is not a configured group of "
                                            f"{self.config.interface} (groups: {known})")
        return prefix, g

    def _authorize(self, conn: Connection, prefix: Prefix) -> Peer:
        peer = self._peer(conn)
        why = refusal(self.policies[prefix], peer)
        if why is not None:
            raise ApiError("not_allowed", f"{prefix}: {why}")
        return peer

    def _timeout(self, req: dict[str, Any], key: str, default: float, hi: float) -> float:
        v = req.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= hi:
            raise ApiError("bad_request", f'expected "{key}": seconds from 0 to {hi:g}')
        return float(v)

    def _view(self, g: Group) -> dict[str, Any]:
        now = self._now()
        gc = self.config.group(g.prefix)
        out: dict[str, Any] = {
            "prefix": str(g.prefix), "state": g.state, "members": g.members,
            "static": g.static, "healthy": g.healthy, "draining": g.draining,
            "served": g.served,
            "address_interface": gc.address_interface if gc else "lo",
            "metric": gc.metric if gc else 0,
            "checks": [c.view(now) for c in self.health.checks.get(g.prefix, [])],
        }
        if g.prefix in self._errors:
            out["error"] = self._errors[g.prefix]
        if g.prefix in self.last_withdrawal:
            out["last_withdrawal"] = self.last_withdrawal[g.prefix]
        return out

    async def _join(self, req: dict[str, Any]) -> dict[str, Any]:
        conn = current_connection()
        prefix, g = self._group(req)
        self._authorize(conn, prefix)
        wait = self._timeout(req, "wait", 5.0, 60.0)
        try:
            n = self.registry.join(conn.id, prefix)
        except MemberError as e:
            raise ApiError(e.code, str(e)) from None
        g.set_members(n)
        self._kick(prefix)
        if g.wanted and not g.served:
            # Reply once the address is up and the prefix originated (bounded).
            await self._settled(prefix, wait)
        out: dict[str, Any] = {"prefix": str(prefix), "members": g.members,
                               "state": g.state, "served": g.served, "healthy": g.healthy,
                               "draining": g.draining}
        if prefix in self._errors:
            out["error_detail"] = self._errors[prefix]  # serving fails; retried every second
        return out

    async def _leave(self, req: dict[str, Any]) -> dict[str, Any]:
        """Release memberships: this connection's own, or (with "pid" or "all") those
        of other connections of the caller's uid (root: of anyone)."""
        conn = current_connection()
        prefix, g = self._group(req)
        pid = req.get("pid")
        everyone = req.get("all") is True
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 1):
            raise ApiError("bad_request", 'expected "pid": a process id')
        wait = self._timeout(req, "wait", self.default_drain.ack_timeout + 2.0, 60.0)
        if pid is None and not everyone:
            targets = [conn.id]
            if prefix not in self.registry.memberships(conn.id):
                raise ApiError("not_member", f"this connection does not hold {prefix} (to "
                                             'release the memberships of other processes, '
                                             'give "pid" or "all")')
        else:
            peer = self._peer(conn)
            targets = []
            for cid in self.registry.holders(prefix):
                other = self.connections.get(cid)
                if other is None or other.peer is None:
                    continue
                if pid is not None and other.peer.pid != pid:
                    continue
                if peer.uid != 0 and other.peer.uid != peer.uid:
                    continue
                targets.append(cid)
            if not targets:
                raise ApiError("not_member", f"no membership of {prefix} to release"
                               + (f" held by pid {pid}" if pid is not None else "")
                               + ("" if peer.uid == 0 else f" under uid {peer.uid}"))
        was_served = g.served
        for cid in targets:
            self.registry.leave(cid, prefix)
        g.set_members(self.registry.count(prefix))
        if g.members == 0 and was_served:
            self._detected(prefix, "leave")
        self._kick(prefix)
        out: dict[str, Any] = {"prefix": str(prefix), "released": len(targets),
                               "members": g.members}
        if was_served and not g.wanted:
            # The last member left: answer once the group is withdrawn (bounded).
            out["withdrawn"] = await self._settled(prefix, wait) and not g.served
            lw = self.last_withdrawal.get(prefix)
            if lw is not None:
                out["acked"] = lw["acked"]
        out["state"] = g.state
        return out

    async def _drain(self, req: dict[str, Any]) -> dict[str, Any]:
        conn = current_connection()
        prefix, g = self._group(req)
        self._authorize(conn, prefix)
        d = self.default_drain
        params = DrainParams(self._timeout(req, "move_timeout", d.move_timeout, 600.0),
                             self._timeout(req, "ack_timeout", d.ack_timeout, 600.0),
                             self._timeout(req, "settle", d.settle, 60.0))
        t0 = self._now()
        was_served = g.served
        self._drain_params[prefix] = params
        g.drain()
        self._kick(prefix)
        bound = params.move_timeout + params.ack_timeout + params.settle + 5.0
        done = await self._settled(prefix, bound)
        out: dict[str, Any] = {"prefix": str(prefix), "drained": done and not g.served,
                               "was_served": was_served, "members": g.members,
                               "state": g.state,
                               "elapsed_ms": round((self._now() - t0) * 1000, 1)}
        lw = self.last_withdrawal.get(prefix)
        if was_served and lw is not None and lw.get("graceful"):
            out.update(moved=lw["moved"], acked=lw["acked"], move_ms=lw["move_ms"])
        if not g.held:
            out["note"] = "the group was idle: nothing to drain; the next join is served"
        elif g.static or g.members:
            out["note"] = ("the group stays drained until `undrain`" if g.static else
                           "the group stays drained until its last member leaves or "
                           "`undrain`")
        return out

    async def _undrain(self, req: dict[str, Any]) -> dict[str, Any]:
        conn = current_connection()
        prefix, g = self._group(req)
        self._authorize(conn, prefix)
        wait = self._timeout(req, "wait", 5.0, 60.0)
        was = g.draining
        g.undrain()
        self._kick(prefix)
        if g.wanted and not g.served:
            await self._settled(prefix, wait)
        return {"prefix": str(prefix), "was_draining": was, "state": g.state,
                "served": g.served}

    async def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._base_status is not None:
            out.update(await self._base_status(req))
        conn = current_connection()
        out["groups"] = [self._view(g) for g in self.groups.values()]
        out["memberships"] = sorted(str(p) for p in self.registry.memberships(conn.id))
        out["connections"] = self.registry.connections()
        return out


def _supplementary_groups(pid: int, uid: int) -> frozenset[int]:
    """The client's supplementary groups from /proc (empty when unreadable or when the
    pid no longer belongs to that uid)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read(8192)
    except OSError:
        return frozenset()
    uids: list[str] = []
    groups: list[str] = []
    for line in text.splitlines():
        if line.startswith("Uid:"):
            uids = line.split()[1:]
        elif line.startswith("Groups:"):
            groups = line.split()[1:]
    if not uids or uids[0] != str(uid):
        return frozenset()
    with contextlib.suppress(ValueError):
        return frozenset(int(g) for g in groups)
    return frozenset()
