"""The daemon side of multi-endpoint peers: drives one `EndpointSet` per peer.

* Candidates: the configured endpoints (host names resolved at start and every
  `endpoint_policy.resolve_interval`, in a thread) plus what WireGuard roamed to.
* WireGuard uses the head: `set_endpoint` on every decision; right after a switch the
  engine sends the peer a Hello at once (so it hears us on the new path before it would
  declare us dead), and for a peer without a session the handshake is restarted (only
  from the end with the lower public key first, so initiations do not cross).
* Failure: the peer's Hellos stop coming through the tunnel (`Neighbour.last_hello`),
  the handshake gets too old, or the neighbour goes down.
* Roaming and handshakes: WireGuard's endpoint and last handshake are read through the
  UAPI every `endpoint_policy.roam_poll` (and at every tick while a switch settles).
* Probes: authenticated UDP datagrams (wgcast.probe) from this node's underlay to every
  candidate, outside the tunnel, so candidates not in use are measured without moving
  traffic; one UDP socket on `probe_port` sends requests and answers the peers' probes.
  A candidate's probe target is its host and the peer's probe port (or the endpoint's
  own port with `probe_port = "endpoint"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from wgcast import probe
from wgcast.babel.events import NeighbourDown, NeighbourUp
from wgcast.daemon.config import Config, Endpoint, PeerConf
from wgcast.daemon.ports import EngineControl, EngineView, Scheduler
from wgcast.dataplane.types import Device, WireGuardBackend
from wgcast.endpoints import EndpointParams, EndpointSet, SetEndpoint, canonical, endpoint_parts
from wgcast.keys import router_id, shared_secret

log = logging.getLogger("wgcast.endpoints")

#: Addresses kept per configured host name.
MAX_ADDRESSES_PER_NAME = 4
#: WireGuard's REJECT_AFTER_TIME: an older handshake means no usable session.
SESSION_LIFETIME = 180.0
#: WireGuard's REKEY_TIMEOUT: at most one initiation per peer this often.
REKEY_TIMEOUT = 5.0
#: The end with the higher public key restarts a handshake only after this long.
KICK_DELAY = 1.5
#: Probe requests answered per peer and second, at most.
REPLY_RATE = 50.0


@dataclass
class _Peer:
    conf: PeerConf
    key: bytes
    rid: bytes
    es: EndpointSet
    probe_keys: probe.ProbeKeys | None = None
    replay: probe.ReplayWindow = field(default_factory=probe.ReplayWindow)
    resolved: dict[str, list[str]] = field(default_factory=dict)  # host name -> addresses
    last_hello: float | None = None
    hs_age: float | None = None
    kick_at: float | None = None
    last_kick: float = -1e9
    pending: SetEndpoint | None = None
    bucket: float = REPLY_RATE
    bucket_time: float = 0.0


class EndpointManager:
    """Endpoint candidates of every peer of one daemon."""

    def __init__(self, config: Config, device: WireGuardBackend, public_key: bytes,
                 clock: Scheduler, engine: EngineView, control: EngineControl) -> None:
        self.config = config
        self.device = device
        self.clock = clock
        self.engine = engine
        self.control = control
        self.peers: dict[str, _Peer] = {}
        self._by_rid: dict[bytes, str] = {}
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._resolver: asyncio.Task[None] | None = None
        self._counter = 0
        self._public = public_key
        self._rid = router_id(public_key)
        self.counters: dict[str, int] = dict.fromkeys(
            ("probes_sent", "probes_answered", "requests_answered", "probe_send_errors",
             "probes_bad", "probes_unknown_sender", "probes_replayed", "probes_rate_limited",
             "endpoint_sets", "endpoint_set_errors", "handshake_restarts",
             "resolve_errors", "errors"), 0)
        self._quiet_until = -1e9
        timers = self.config.timers
        pol = self.config.endpoint_policy
        self.params = EndpointParams(
            learned_max=pol.learned_max, learned_ttl=pol.learned_ttl,
            probe_interval=pol.probe_interval,
            probe_interval_searching=min(pol.probe_interval, 0.25),
            switch_hold=pol.switch_hold,
            # Fail over after (dead - 0.75) missed Hellos: before Babel's dead interval,
            # so the neighbour (and every route through it) survives the switch.
            silence_hellos=max(1.25, timers.dead - 0.75), hello_interval=timers.hello,
            confirm_timeout=max(2.0, 2 * timers.dead_interval),
        )
        self.tick = min(0.05, timers.hello / 4)

    # ------------------------------------------------------------------ life

    def _now(self) -> float:
        return self.clock.now()

    async def start(self) -> None:
        dev = await self.device.get()
        for pc in self.config.peers:
            await self._add(pc, dev)
        if self.config.probe_port:
            try:
                self._open_socket(self.config.probe_port)
            except OSError as e:
                log.warning("endpoint probes off: cannot bind UDP port %d: %s",
                            self.config.probe_port, e)
        self._task = asyncio.create_task(self._run(), name="wgcast-endpoints")
        if any(_names(ps.conf) for ps in self.peers.values()):
            self._resolver = asyncio.create_task(self._refresh_names(), name="wgcast-resolve")

    async def _add(self, pc: PeerConf, dev: Device) -> None:
        now = self._now()
        key = pc.key
        wg = dev.peer(key)
        current = _canonical_endpoint(wg.endpoint) if wg is not None else None
        ps = _Peer(pc, key, router_id(key), EndpointSet([], now, self.params))
        if dev.private_key is not None:
            ps.probe_keys = probe.ProbeKeys.derive(shared_secret(dev.private_key, key),
                                                   self._public, key)
        ps.bucket_time = now
        self.peers[pc.name] = ps
        self._by_rid[ps.rid] = pc.name
        await self._resolve(ps, first=True)
        if current is not None:
            ps.es.observe_endpoint(current, now)
        if wg is not None and wg.last_handshake:
            ps.hs_age = max(0.0, time.time() - wg.last_handshake)

    async def reload(self, config: Config, removed: list[str],
                     added: list[PeerConf]) -> None:
        """A reloaded config: forget the removed peers (and changed ones, which come
        back in `added` with their new endpoints), take the added ones."""
        self.config = config
        for name in removed:
            ps = self.peers.pop(name, None)
            if ps is not None:
                self._by_rid.pop(ps.rid, None)
        if added:
            dev = await self.device.get()
            for pc in added:
                await self._add(pc, dev)
        if self._resolver is None and any(_names(ps.conf) for ps in self.peers.values()):
            self._resolver = asyncio.create_task(self._refresh_names(), name="wgcast-resolve")

    def close(self) -> None:
        for t in (self._task, self._resolver):
            if t is not None:
                t.cancel()
        self._task = self._resolver = None
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self.clock.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _open_socket(self, port: int) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", port))
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
        self._sock = sock
        self.clock.add_reader(sock.fileno(), self._on_readable)

    # ------------------------------------------------------------------ names

    async def _resolve(self, ps: _Peer, first: bool = False) -> None:
        """Configured endpoints -> addresses (names through getaddrinfo in a thread)."""
        loop = asyncio.get_running_loop()
        addrs: list[str] = []
        for ep in ps.conf.endpoints:
            if ep.ip is not None:
                addrs.append(canonical(ep.host, ep.port))
                continue
            try:
                async with asyncio.timeout(5.0):
                    infos = await loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM)
                found = list(dict.fromkeys(canonical(str(i[4][0]), ep.port) for i in infos))
                ps.resolved[ep.host] = found[:MAX_ADDRESSES_PER_NAME]
            except (OSError, TimeoutError, ValueError) as e:
                self.counters["resolve_errors"] += 1
                if first or ep.host not in ps.resolved:
                    log.warning("%s: cannot resolve endpoint %s: %s", ps.conf.name, ep, e)
            addrs.extend(ps.resolved.get(ep.host, []))
        ps.es.set_configured(addrs, self._now())

    async def _refresh_names(self) -> None:
        while True:
            await asyncio.sleep(self.config.endpoint_policy.resolve_interval)
            for ps in list(self.peers.values()):
                if _names(ps.conf):
                    await self._resolve(ps)

    # ------------------------------------------------------------------ loop

    async def _run(self) -> None:
        poll = self.config.endpoint_policy.roam_poll
        next_poll = next_tick = 0.0
        while True:
            try:
                now = self._now()
                if now >= next_poll:
                    await self._poll()
                    settling = any(ps.es.settling(now) for ps in self.peers.values())
                    next_poll = now + (min(poll, self.tick) if settling else poll)
                if now >= next_tick:
                    next_tick = now + self.tick
                    for ps in list(self.peers.values()):
                        await self._tick_peer(ps)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep managing; the next tick retries
                self.counters["errors"] += 1
                now = self._now()
                if now >= self._quiet_until:  # at most one line a minute
                    self._quiet_until = now + 60.0
                    log.warning("endpoint manager: %s (%d errors so far)", e,
                                self.counters["errors"],
                                exc_info=log.isEnabledFor(logging.DEBUG))
                next_poll = next_tick = now + self.tick
            await asyncio.sleep(max(0.0, min(next_poll, next_tick) - self._now()))

    async def _poll(self) -> None:
        """WireGuard's endpoints (roams) and handshake ages."""
        dev = await self.device.get()
        now, wall = self._now(), time.time()
        for ps in list(self.peers.values()):
            wg = dev.peer(ps.key)
            if wg is None:
                continue
            decision = ps.es.observe_endpoint(_canonical_endpoint(wg.endpoint), now)
            if decision is not None:
                await self._apply(ps, decision)
            ps.hs_age = None if not wg.last_handshake else max(0.0, wall - wg.last_handshake)
            decision = ps.es.observe_handshake(now, ps.hs_age)
            if decision is not None:
                await self._apply(ps, decision)

    async def _tick_peer(self, ps: _Peer) -> None:
        now = self._now()
        es = ps.es
        self._check_heard(ps)
        if self._sock is not None and ps.probe_keys is not None:
            for addr in es.probe_due(now):
                self._send_probe(ps, addr, now)
        decision, ps.pending = ps.pending, None
        if decision is None:
            decision = es.decide(now)
        if decision is not None:
            await self._apply(ps, decision)
        if ps.kick_at is not None and now >= ps.kick_at:
            ps.kick_at = None
            if not self._has_session(ps):
                await self._kick(ps)

    def _check_heard(self, ps: _Peer) -> bool:
        """Feed a new Hello of the peer to its set; True if it came after a silence."""
        nb = self.engine.neighbour(ps.conf.name)
        if nb is None or nb.last_hello is None or nb.last_hello == ps.last_hello:
            return False
        previous, ps.last_hello = ps.last_hello, nb.last_hello
        ps.es.heard(nb.last_hello, nb.hello_interval or None, nb.rtt_ms)
        interval = nb.hello_interval or self.config.timers.hello
        return previous is not None and nb.last_hello - previous > 1.5 * interval

    def received(self, name: str) -> None:
        """The daemon fed a packet of `name` to the engine (called for every one)."""
        ps = self.peers.get(name)
        if ps is not None and self._check_heard(ps):
            # The peer speaks again after a silence: it probably just moved to another
            # path. Answer at once, so it hears us before it declares us dead (the
            # runtime flushes after the burst it is reading).
            with contextlib.suppress(Exception):
                self.control.hello_now(name)

    def on_neighbour(self, ev: NeighbourUp | NeighbourDown) -> None:
        ps = self.peers.get(ev.neighbour)
        if ps is not None and isinstance(ev, NeighbourDown) and ps.es.confirmed:
            # Babel's dead interval ran out before our own silence check (which fires
            # earlier by default): the in-use endpoint failed. After a switch of ours
            # (unconfirmed yet) the down is the old path's.
            ps.pending = ps.es.path_failed(self._now(), "neighbour down")

    # ------------------------------------------------------------------ actions

    def _has_session(self, ps: _Peer) -> bool:
        return ps.hs_age is not None and ps.hs_age < SESSION_LIFETIME

    async def _apply(self, ps: _Peer, decision: SetEndpoint) -> None:
        name = ps.conf.name
        try:
            await self.device.set_endpoint(ps.key, decision.addr)
        except Exception as e:
            self.counters["endpoint_set_errors"] += 1
            log.warning("%s: cannot set endpoint %s: %s", name, decision.addr, e)
            return
        self.counters["endpoint_sets"] += 1
        log.log(logging.DEBUG if decision.reason == "reassert" else logging.INFO,
                "%s: endpoint %s (%s)", name, decision.addr, decision.reason)
        if decision.reason == "reassert":
            return
        self._hello(ps)
        if not self._has_session(ps) and self.config.endpoint_policy.restart_handshake:
            # No session: WireGuard would wait up to 5 s before its next initiation.
            if self._public < ps.key:
                await self._kick(ps)
            else:
                ps.kick_at = self._now() + KICK_DELAY

    def _hello(self, ps: _Peer) -> None:
        with contextlib.suppress(Exception):
            self.control.hello_now(ps.conf.name)
            self.control.flush()

    async def _kick(self, ps: _Peer) -> None:
        now = self._now()
        if now - ps.last_kick < REKEY_TIMEOUT:
            return
        ps.last_kick = now
        try:
            done = await self.device.restart_handshake(ps.key)
        except Exception as e:
            log.warning("%s: cannot restart the handshake: %s", ps.conf.name, e)
            return
        if done:
            self.counters["handshake_restarts"] += 1
            log.info("%s: handshake restarted towards %s", ps.conf.name, ps.es.head())
            self._hello(ps)  # a packet to send starts the initiation

    # ------------------------------------------------------------------ probes

    def _probe_target(self, ps: _Peer, addr: str) -> tuple[str, int]:
        host, port = endpoint_parts(addr)
        mode = ps.conf.probe_port if ps.conf.probe_port is not None else self.config.probe_port
        if mode != "endpoint":
            port = int(mode)
        return _sockaddr(self._sock, host, port)

    def _next_counter(self) -> int:
        self._counter = max(self._counter + 1, time.time_ns() // 1000)
        return self._counter

    def _send_probe(self, ps: _Peer, addr: str, now: float) -> None:
        assert self._sock is not None and ps.probe_keys is not None
        token = os.urandom(8)
        data = probe.encode(probe.Probe(probe.REQUEST, self._rid, self._next_counter(), token),
                            ps.probe_keys)
        ps.es.probe_sent(addr, now, token)
        try:
            self._sock.sendto(data, self._probe_target(ps, addr))
            self.counters["probes_sent"] += 1
        except OSError:
            self.counters["probe_send_errors"] += 1  # lost: the set times it out

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(64):
            try:
                data, src = sock.recvfrom(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._on_datagram(data, src)

    def _on_datagram(self, data: bytes, src: Any) -> None:
        head = probe.peek(data)
        if head is None:
            self.counters["probes_bad"] += 1
            return
        kind, sender = head
        name = self._by_rid.get(sender)
        ps = self.peers.get(name) if name is not None else None
        if ps is None or ps.probe_keys is None:
            self.counters["probes_unknown_sender"] += 1
            return
        msg = probe.decode(data, ps.probe_keys)
        if msg is None:
            self.counters["probes_bad"] += 1
            return
        now = self._now()
        if kind == probe.REPLY:
            if ps.es.probe_answered(now, msg.token) is not None:
                self.counters["probes_answered"] += 1
            return
        if not ps.replay.accept(msg.counter):
            self.counters["probes_replayed"] += 1
            return
        ps.bucket = min(REPLY_RATE, ps.bucket + (now - ps.bucket_time) * REPLY_RATE)
        ps.bucket_time = now
        if ps.bucket < 1.0:
            self.counters["probes_rate_limited"] += 1
            return
        ps.bucket -= 1.0
        reply = probe.encode(probe.Probe(probe.REPLY, self._rid, msg.counter, msg.token),
                             ps.probe_keys)
        assert self._sock is not None
        try:
            self._sock.sendto(reply, src)
            self.counters["requests_answered"] += 1
        except OSError:
            self.counters["probe_send_errors"] += 1

    # ------------------------------------------------------------------ views

    def peer_view(self, name: str) -> dict[str, Any]:
        ps = self.peers.get(name)
        if ps is None:
            return {}
        now = self._now()
        return {"endpoint": ps.es.head(), "confirmed": ps.es.confirmed,
                "handshake_age_s": None if ps.hs_age is None else round(ps.hs_age, 1),
                "candidates": [asdict(v) for v in ps.es.snapshot(now)],
                "endpoint_stats": dict(ps.es.stats)}

    def status(self) -> dict[str, Any]:
        return {"probe_port": self.config.probe_port if self._sock is not None else None,
                **self.counters}


def _names(pc: PeerConf) -> list[Endpoint]:
    return [ep for ep in pc.endpoints if ep.ip is None]


def _canonical_endpoint(text: str | None) -> str | None:
    if not text:
        return None
    try:
        host, port = endpoint_parts(text)
        return canonical(host, port)
    except ValueError:
        return None


def _sockaddr(sock: socket.socket | None, host: str, port: int) -> tuple[str, int]:
    """An address `sock` can send to (IPv4 through a dual-stack IPv6 socket: mapped)."""
    if sock is not None and sock.family == socket.AF_INET6 and \
            isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address):
        return f"::ffff:{host}", port
    return host, port
