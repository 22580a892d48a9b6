"""Why a peer is down: what the daemon can see of WireGuard, turned into a reason.

A configured peer whose Babel neighbour stays down gets one of these reasons (in
`wgcast peers`, `wgcast status --json` and one log line when it appears) once it has
been down for `DIAGNOSE_AFTER` seconds:

* ``not on the interface``: no WireGuard peer with its key on the device (the operator
  removed it, or never added it). Said at once, and picked up when it comes back.
* ``no handshake``: no WireGuard session, and the daemon knows why or cannot tell: no
  endpoint to send to, nothing listens there (ICMP port unreachable), the endpoint is
  unreachable, or no answer yet to a reachability check.
* ``wrong key suspected``: our handshake initiations went out (tx bytes grow), nothing
  came back (rx 0), yet the endpoint is reachable (a datagram to it drew no ICMP error);
  or the key is not in the roster. A peer with another key (or without ours) drops an
  initiation silently: this is what a wrong key looks like from here.
* ``no Babel``: the WireGuard session works (a handshake within 180 s) but no Babel
  Hello comes from the peer's control address: no wgcast/babeld there, or its AllowedIPs
  for us lack our control address.

Device peers that are not in the config are reported too (`unconfigured`): wgcast does
not route through them and says so once.

`diagnose` is pure (facts in, reason out); `PeerDoctor` gathers the facts.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from wgcast.daemon.ports import NeighbourSnapshot, PeerInfo
from wgcast.dataplane.types import Device, endpoint_parts
from wgcast.roster import Roster

log = logging.getLogger("wgcast")

#: A peer down this long gets a reason (WireGuard retries an initiation every 5 s: by
#: then three went out; a reachable peer with the right keys is up in about 1 s).
DIAGNOSE_AFTER = 15.0
#: WireGuard's REJECT_AFTER_TIME: an older handshake means no session.
SESSION_LIFETIME = 180.0
#: How long the reachability datagram waits for an ICMP error before it counts as
#: answered; how long a verdict stays valid.
REACH_WAIT = 1.0
REACH_TTL = 30.0

NOT_ON_DEVICE = "not on the interface"
NO_HANDSHAKE = "no handshake"
WRONG_KEY = "wrong key suspected"
NO_BABEL = "no Babel"
NOT_CONFIGURED = "not in the config"


@dataclass(frozen=True, slots=True)
class PeerFacts:
    """What the daemon sees of one configured peer."""

    name: str
    up: bool
    #: Seconds since the neighbour was last up (or since the peer was added).
    down_for: float
    on_device: bool = True
    endpoint: str | None = None
    #: Seconds since the last WireGuard handshake; None: never.
    handshake_age: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    #: Seconds since the last Babel Hello from it; None: never.
    hello_age: float | None = None
    #: A datagram to the endpoint: "answers" (no ICMP error), "refused" (port
    #: unreachable), "unreachable: <why>", or None (not checked yet).
    reach: str | None = None
    #: False when a roster is in use and the key is not a member; None: no roster.
    in_roster: bool | None = None
    #: The peer's control address and ours (for the hints).
    control: str = ""
    our_control: str = ""
    our_key: str = ""
    key: str = ""


@dataclass(frozen=True, slots=True)
class PeerProblem:
    """A reason (one of the kinds above, stable: logged when it changes) and details."""

    kind: str
    detail: str


def _age(s: float | None) -> str:
    return "never" if s is None else f"{s:.0f}s ago"


def diagnose(f: PeerFacts, after: float = DIAGNOSE_AFTER) -> PeerProblem | None:
    """The reason a peer is down, or None (up, or not down long enough to tell)."""
    if not f.on_device:  # said even while Babel still counts it up (it will not be long)
        return PeerProblem(NOT_ON_DEVICE, "no WireGuard peer with its key on the interface: "
                                          "add it (wg set / wg-quick), wgcast picks it up")
    if f.up:
        return None
    if f.down_for < after:
        return None
    if f.in_roster is False:
        return PeerProblem(WRONG_KEY, f"its key {f.key} is not in the roster: check the "
                                      "public key in the config")
    session = f.handshake_age is not None and f.handshake_age < SESSION_LIFETIME
    if session:
        heard = "never" if f.hello_age is None else f"not for {f.hello_age:.0f}s"
        return PeerProblem(NO_BABEL, f"WireGuard works (handshake {_age(f.handshake_age)}, "
                                     f"rx {f.rx_bytes} bytes) but no Babel Hello from "
                                     f"{f.control} ({heard}): is wgcast (or babeld) "
                                     "running there, and do its AllowedIPs for us hold our "
                                     f"control address {f.our_control}/128?")
    last = "" if f.handshake_age is None else f"last handshake {_age(f.handshake_age)}; "
    if f.endpoint is None:
        return PeerProblem(NO_HANDSHAKE, f"{last}no endpoint: WireGuard does not know where "
                                         "to send (the peer has to connect first, or "
                                         "configure its endpoint)")
    if f.reach == "refused":
        return PeerProblem(NO_HANDSHAKE, f"{last}nothing listens at {f.endpoint} (ICMP port "
                                         "unreachable): is WireGuard up there, on that port?")
    if f.reach is not None and f.reach.startswith("unreachable"):
        return PeerProblem(NO_HANDSHAKE, f"{last}{f.endpoint} is {f.reach}")
    if f.tx_bytes == 0:
        return PeerProblem(NO_HANDSHAKE, f"{last}nothing sent to {f.endpoint} yet")
    if f.rx_bytes > 0 and f.handshake_age is None:
        return PeerProblem(NO_HANDSHAKE, f"{f.endpoint} sends ({f.rx_bytes} bytes) but the "
                                         "handshake does not complete")
    if f.reach == "answers":
        return PeerProblem(WRONG_KEY, f"{last}{f.tx_bytes} bytes of handshake initiations "
                                      f"to {f.endpoint}, nothing came back, though it is "
                                      f"reachable (no ICMP error): check its public key "
                                      f"here ({f.key}) and ours there ({f.our_key}), or a "
                                      "firewall dropping UDP")
    return PeerProblem(NO_HANDSHAKE, f"{last}no answer from {f.endpoint} "
                                     f"({f.tx_bytes} bytes sent, rx {f.rx_bytes})")


class _Reach:
    """One reachability datagram in flight: a connected UDP socket collects the ICMP
    error (ECONNREFUSED: port unreachable; EHOSTUNREACH, ENETUNREACH)."""

    def __init__(self, endpoint: str, now: float) -> None:
        self.endpoint = endpoint
        self.sent = now
        self.verdict: str | None = None
        self.sock: socket.socket | None = None
        try:
            host, port = endpoint_parts(endpoint)
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(fam, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
            self.sock.connect((host, port))
            # Zero bytes: WireGuard drops a datagram shorter than any message.
            self.sock.send(b"")
        except OSError as e:
            self.verdict = _verdict(e.errno)
            self.close()

    def result(self, now: float) -> str | None:
        """The verdict once known (an error came, or REACH_WAIT passed without one)."""
        if self.verdict is not None or self.sock is None:
            return self.verdict
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.verdict = _verdict(err)
        elif now - self.sent >= REACH_WAIT:
            self.verdict = "answers"
        if self.verdict is not None:
            self.close()
        return self.verdict

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _verdict(err: int | None) -> str:
    if err == errno.ECONNREFUSED:
        return "refused"
    return f"unreachable ({os.strerror(err) if err else 'cannot send'})"


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


class NeighbourView(Protocol):
    """What the doctor reads of the engine: is a neighbour up (the narrowest view)."""

    def neighbour(self, name: str) -> NeighbourSnapshot | None: ...


class PeerDoctor:
    """Gathers the facts of every configured peer (`observe`, with a fresh device read)
    and keeps the current reasons; logs one line when a peer's reason kind appears or
    changes, and one per device peer that is not in the config."""

    def __init__(self, ifname: str, peers: Mapping[str, PeerInfo], engine: NeighbourView,
                 clock: Callable[[], float], *, our_key: bytes, our_control: str,
                 roster: Callable[[], Roster | None] = lambda: None,
                 after: float = DIAGNOSE_AFTER, wall: Callable[[], float] = time.time) -> None:
        self.ifname = ifname
        self.peers = peers
        self.engine = engine
        self.clock = clock
        self.wall = wall
        self.roster = roster
        self.after = after
        self.our_key = _b64(our_key)
        self.our_control = our_control
        self.problems: dict[str, PeerProblem] = {}
        #: Device peers not in the config: key (base64) -> endpoint.
        self.unconfigured: dict[str, str | None] = {}
        self._last_up: dict[str, float] = {}
        self._reach: dict[str, _Reach] = {}
        self._absent: dict[str, bool] = {}

    def observe(self, dev: Device) -> dict[str, PeerProblem]:
        """Look at every peer again; returns the current problems by peer name."""
        now, wall = self.clock(), self.wall()
        roster = self.roster()
        on_device = {p.public_key: p for p in dev.peers}  # one pass, not one per peer
        found: dict[str, PeerProblem] = {}
        for name, info in self.peers.items():
            nb = self.engine.neighbour(name)
            up = nb is not None and nb.up
            since = self._last_up.setdefault(name, now)
            if up:
                self._last_up[name] = now
            wg = on_device.get(info.key)
            if wg is None or self._absent.get(name):
                # Not on the device, or just back (wg set): its time starts again.
                since = self._last_up[name] = now
            self._absent[name] = wg is None
            hs = None if wg is None or not wg.last_handshake else \
                max(0.0, wall - wg.last_handshake)
            facts = PeerFacts(
                name=name, up=up, down_for=now - since, on_device=wg is not None,
                endpoint=None if wg is None else wg.endpoint or None, handshake_age=hs,
                rx_bytes=0 if wg is None else wg.rx_bytes,
                tx_bytes=0 if wg is None else wg.tx_bytes,
                hello_age=None if nb is None or nb.last_hello is None
                else max(0.0, now - nb.last_hello),
                in_roster=None if roster is None else roster.member(info.key) is not None,
                control=str(info.control), our_control=self.our_control,
                our_key=self.our_key, key=_b64(info.key))
            facts = self._with_reach(facts, now)
            problem = diagnose(facts, self.after)
            if problem is not None:
                found[name] = problem
        for name in list(self._last_up):
            if name not in self.peers:
                del self._last_up[name]
                self._absent.pop(name, None)
                r = self._reach.pop(name, None)
                if r is not None:
                    r.close()
        for name, p in found.items():
            old = self.problems.get(name)
            if old is None or old.kind != p.kind:
                log.warning("%s: peer %s is down: %s: %s", self.ifname, name, p.kind, p.detail)
        for name in self.problems:
            if name not in found and name in self.peers:
                log.info("%s: peer %s: resolved (was %s)", self.ifname, name,
                         self.problems[name].kind)
        self.problems = found
        self._observe_unconfigured(dev)
        return found

    def _with_reach(self, f: PeerFacts, now: float) -> PeerFacts:
        """Adds the reachability of the endpoint of a peer without a session that is
        about to get a reason (one datagram per REACH_TTL at most)."""
        session = f.handshake_age is not None and f.handshake_age < SESSION_LIFETIME
        r = self._reach.get(f.name)
        if f.up or session or f.endpoint is None or not f.on_device or \
                f.down_for < self.after / 2:
            if r is not None:
                r.close()
                del self._reach[f.name]
            return f
        if r is None or r.endpoint != f.endpoint or \
                (r.verdict is not None and now - r.sent > REACH_TTL):
            if r is not None:
                r.close()
            r = self._reach[f.name] = _Reach(f.endpoint, now)
        verdict = r.result(now)
        if verdict is None:
            return f
        return dataclasses.replace(f, reach=verdict)

    def _observe_unconfigured(self, dev: Device) -> None:
        known = {i.key for i in self.peers.values()}
        now: dict[str, str | None] = {}
        for p in dev.peers:
            if p.public_key in known:
                continue
            key = _b64(p.public_key)
            now[key] = p.endpoint or None
            if key not in self.unconfigured:
                log.warning("%s: peer %s (endpoint %s) is on the interface but not in the "
                            "config: wgcast neither speaks Babel with it nor routes through "
                            "it (add a [[peers]] entry and `wgcast reload`)", self.ifname,
                            key, p.endpoint or "none")
        for key in self.unconfigured:
            if key not in now:
                log.info("%s: peer %s (not in the config) left the interface", self.ifname,
                         key)
        self.unconfigured = now

    def close(self) -> None:
        for r in self._reach.values():
            r.close()
        self._reach.clear()

    def view(self, name: str) -> dict[str, str | None]:
        """The `reason` fields of one peer in `wgcast peers`."""
        p = self.problems.get(name)
        return {"reason": None if p is None else p.kind,
                "reason_detail": None if p is None else p.detail}
