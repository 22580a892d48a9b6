"""Which announcements a node accepts: the origination policy of its peers.

A WireGuard peer may originate what the config allows it (`may_originate`, or what its
AllowedIPs held at the first start) plus the anycast space; nobody may announce our own
addresses or link-local, multicast and loopback space; a transit route (from a router
that is not a direct peer) must not claim a direct peer's own space. The engine asks
`accept` for every finite update (`NodeConfig.accept`); refusals are counted.

The per-peer prefixes found at the first start are remembered next to the state file
(`<state_file>.policy`): later starts find routes we installed ourselves in AllowedIPs,
which prove nothing about the peer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from wgcast.daemon.ports import PeerInfo
from wgcast.origin import BAD, EXPIRED, UNSIGNED, Verifier
from wgcast.prefix import Prefix
from wgcast.roster import Roster

log = logging.getLogger("wgcast")

#: Prefixes nobody may announce to us: link-local, multicast, loopback.
NEVER: tuple[Prefix, ...] = tuple(
    ipaddress.ip_network(p) for p in ("fe80::/10", "ff00::/8", "::1/128", "127.0.0.0/8",
                                      "224.0.0.0/4"))


def overlaps(p: Prefix, nets: Iterable[Prefix]) -> bool:
    """`p` overlaps one of `nets` (of its own IP version)."""
    return any(p.version == n.version and p.overlaps(n) for n in nets)


#: Why an announcement was refused (the label of the counters and metrics).
REASONS: tuple[str, ...] = (
    "own prefix echoed",    # our own prefix, with our router-id, came back: harmless
    "claims our address",   # our own prefix with another router-id
    "reserved space",       # link-local, multicast, loopback
    "outside mesh space",   # roster: not inside mesh_prefixes
    "not in roster",        # roster: the origin's router-id is no member's
    "not allowed",          # the origin may not originate this prefix
    "claims a peer's space",  # no roster: a transit route inside a direct peer's space
    "over limit",           # the neighbour already gave us max_routes_per_peer routes
    UNSIGNED,               # the origin has a sign_key in the roster, the route no signature
    BAD,                    # "bad signature": not the origin's (forged router-id or seqno)
    EXPIRED,                # "signature expired": a replay of an old announcement
    "over rate",            # the neighbour sent more new Updates than max_update_rate
)

#: How each accepted route was checked (`wgcast routes`: "verified").
SIGNED = "signed"             # the origin's signature checked (roster member with sign_key)
ROSTER = "roster"             # the roster allows it; the origin has no sign_key: unsigned
ADDRESS = "address"           # a generic Babel speaker: judged by address alone
PEER_POLICY = "peer policy"   # no roster: the per-peer policy


class _Bucket:
    """Tokens of one neighbour (see PeerPolicy._take_token)."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class PeerPolicy:
    """The accept filter of one daemon, with its refusals counted by reason and neighbour.

    With a roster (wgcast.roster), the roster decides for every route, transit ones
    included: the origin (the router-id in the Update) must be a member allowed to
    originate the prefix, and the prefix must lie in the mesh's space; if that member has
    a `sign_key`, the route must carry its valid signature (wgcast.origin), which a
    transit member cannot forge. Without one, a direct peer may originate its
    `may_originate`, and a transit route must not claim a direct peer's space. Either way
    nobody may announce our own addresses or reserved space, a neighbour may give us at
    most `max_routes` routes (`routes_from` tells how many it has; `has_route` whether
    this one is a refresh), and new Updates (new routes, or signatures not yet verified)
    at most `max_rate` per second (bursts up to `max_routes + max_rate`: a whole table),
    so a flood costs bounded work.
    """

    def __init__(self, own: Sequence[Prefix], anycast: Sequence[Prefix],
                 own_router_id: bytes = b"", max_routes: int = 10000,
                 roster: Roster | None = None, max_rate: float = 1000.0) -> None:
        self.own = tuple(own)
        self.anycast = tuple(anycast)
        self.own_router_id = own_router_id
        self.max_routes = max_routes
        self.max_rate = max_rate
        self.roster = roster
        self.peers: dict[str, PeerInfo] = {}
        #: Neighbours heard on a plain LAN ([[lan]], daemon/lan.py): generic speakers.
        self.lan: dict[str, PeerInfo] = {}
        #: Refusals that may be attacks or mistakes (echoes of our own prefixes excluded).
        self.dropped = 0
        self.dropped_by: dict[tuple[str, str], int] = {}
        self.routes_from: Callable[[str], int] = lambda _nid: 0
        self.has_route: Callable[[str, Prefix], bool] = lambda _nid, _p: False
        #: Checks origin signatures (set when signing is on: a roster and our key).
        self.verifier: Verifier | None = None
        #: Our own signing key: an echo of our prefix must carry our signature.
        self.own_sign_key: bytes | None = None
        #: Wall clock (signature validity) and a monotonic one (rate), Unix seconds.
        self.wall: Callable[[], float] = time.time
        self.clock: Callable[[], float] = time.monotonic
        #: How each accepted route (neighbour, prefix) was checked (SIGNED, ROSTER...).
        self.trust: dict[tuple[str, Prefix], str] = {}
        self._buckets: dict[str, _Bucket] = {}

    def add(self, peer: PeerInfo) -> None:
        self.peers[peer.name] = peer

    def accept(self, neighbour: str, prefix: Prefix, rid: bytes, seqno: int = 0,
               sig: bytes = b"") -> bool:
        """May `neighbour`'s announcement of `prefix` from origin `rid` be used?"""
        why = self.refusal(neighbour, prefix, rid, seqno, sig)
        if why is None:
            return True
        key = (neighbour, why)
        n = self.dropped_by.get(key, 0) + 1
        self.dropped_by[key] = n
        if why != "own prefix echoed":
            self.dropped += 1
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th... of each kind: no log flood
                log.warning("refused %s from %s (origin %s): %s (%d so far)", prefix,
                            neighbour, self.origin_name(rid), why, n)
        return False

    def refusal(self, neighbour: str, prefix: Prefix, rid: bytes, seqno: int = 0,
                sig: bytes = b"") -> str | None:
        if overlaps(prefix, self.own):
            if rid != self.own_router_id:
                return "claims our address"
            # Our router-id: an echo, or someone forging it? Only we can sign.
            v, key = self.verifier, self.own_sign_key
            if v is not None and key is not None and (
                    prefix not in self.own  # we originate exactly these
                    or (not v.known(key, prefix, rid, seqno, sig)
                        and not self._take_token(neighbour))
                    or v.check(key, prefix, rid, seqno, sig, self.wall()) is not None):
                return "claims our address"
            return "own prefix echoed"
        if overlaps(prefix, NEVER):
            return "reserved space"
        via = self.peers.get(neighbour) or self.lan.get(neighbour)
        trust = PEER_POLICY
        sign_key: bytes | None = None
        if via is not None and via.generic:
            # A generic Babel speaker (babeld, BIRD, FRR; a LAN neighbour): its router-ids
            # prove nothing, so the address decides: whatever the origin (the speaker or
            # a router behind it), a prefix inside what the peer may originate is taken.
            # Outside it, only a route the roster vouches for (a member's, with its
            # signature: another wgcast edge on the LAN passing the mesh's routes on);
            # anything else it redistributes (its underlay, its link's subnet) is refused.
            if any(prefix.version == m.version and prefix.subnet_of(m)  # type: ignore[arg-type]
                   for m in via.may_originate):
                trust = ADDRESS
            elif self.roster is not None and \
                    self.roster.member_by_router_id(rid) is not None:
                why, trust, sign_key = self._by_roster(rid, prefix)
                if why is not None:
                    return why
            else:
                return "not allowed"
        elif self.roster is not None:
            why, trust, sign_key = self._by_roster(rid, prefix)
            if why is not None:
                return why
        else:
            origin = next((p for p in self.peers.values() if p.router_id == rid), None)
            if origin is not None:
                if not any(prefix.version == m.version and prefix.subnet_of(m)  # type: ignore[arg-type]
                           for m in origin.may_originate):
                    return "not allowed"
            else:
                # Transit route from a non-peer: it must not claim a direct peer's space.
                for p in self.peers.values():
                    own = tuple(m for m in p.may_originate if m not in self.anycast)
                    if overlaps(prefix, own):
                        return "claims a peer's space"
        known = self.has_route(neighbour, prefix)
        if not known and self.routes_from(neighbour) >= self.max_routes:
            return "over limit"
        verifier = self.verifier if trust == SIGNED else None
        costly = not known or (verifier is not None and sign_key is not None and
                               not verifier.known(sign_key, prefix, rid, seqno, sig))
        if costly and not self._take_token(neighbour):
            return "over rate"
        if verifier is not None and sign_key is not None:
            why = verifier.check(sign_key, prefix, rid, seqno, sig, self.wall())
            if why is not None:
                return why
        if len(self.trust) >= 4 * self.max_routes * max(1, len(self.peers)):
            self.trust.clear()  # bounded: refilled by the next periodic updates
        self.trust[(neighbour, prefix)] = trust
        return None

    def _by_roster(self, rid: bytes, prefix: Prefix) -> tuple[str | None, str, bytes | None]:
        """The roster's word on origin `rid` announcing `prefix`: (refusal or None, the
        trust a route taken gets, the origin's signing key if it has one)."""
        assert self.roster is not None
        member = self.roster.member_by_router_id(rid)
        sign_key = member.sign_key if member is not None else None
        trust = ROSTER if sign_key is None or self.verifier is None else SIGNED
        return self.roster.why_refused(rid, prefix), trust, sign_key

    def _take_token(self, neighbour: str) -> bool:
        """One unit of work for `neighbour`, if its bucket has one (see the class)."""
        now = self.clock()
        # A whole table at once (a neighbour coming up) plus a second's worth.
        cap = float(self.max_routes) + self.max_rate
        b = self._buckets.get(neighbour)
        if b is None:
            b = self._buckets[neighbour] = _Bucket(cap, now)
        b.tokens = min(cap, b.tokens + (now - b.at) * self.max_rate)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def origin_name(self, rid: bytes) -> str:
        """A router-id as a name: the roster member's, a peer's, or hex."""
        if self.roster is not None:
            m = self.roster.member_by_router_id(rid)
            if m is not None:
                return m.name
        p = next((p for p in self.peers.values() if p.router_id == rid), None)
        return p.name if p is not None else rid.hex()

    def dropped_table(self) -> dict[str, dict[str, int]]:
        """{reason: {neighbour: count}} for status and metrics."""
        out: dict[str, dict[str, int]] = {}
        for (nb, why), n in sorted(self.dropped_by.items()):
            out.setdefault(why, {})[nb] = n
        return out


def policy_path(state_file: str) -> str:
    return state_file + ".policy"


def load_remembered(state_file: str) -> dict[str, list[Prefix]]:
    """Per-peer prefixes remembered from the first start (public key -> prefixes)."""
    try:
        with open(policy_path(state_file)) as f:
            raw = json.load(f)
        return {k: [ipaddress.ip_network(p) for p in v] for k, v in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        log.warning("ignoring %s: %s", policy_path(state_file), e)
        return {}


def save_remembered(state_file: str, policy: Mapping[str, Sequence[object]]) -> None:
    """Write atomically; an error is logged, not raised (routing goes on without it)."""
    path = policy_path(state_file)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({k: [str(p) for p in v] for k, v in policy.items()}, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot save %s: %s", path, e)


def roster_serial_path(state_file: str) -> str:
    return state_file + ".roster"


def load_roster_serial(state_file: str) -> int | None:
    """The highest roster serial this node accepted before (None: none recorded), so
    that a restart cannot roll the node back to an older roster."""
    try:
        with open(roster_serial_path(state_file)) as f:
            raw = json.load(f)
        serial = raw["serial"]
        if isinstance(serial, int) and not isinstance(serial, bool) and serial >= 0:
            return serial
        raise ValueError("serial: expected an integer >= 0")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring %s: %s", roster_serial_path(state_file), e)
        return None


def save_roster_serial(state_file: str, serial: int) -> None:
    """Write atomically; an error is logged, not raised."""
    path = roster_serial_path(state_file)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"serial": serial}, f)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot save %s: %s", path, e)


def own_sign_key_problem(roster: Roster, public_key: bytes, sign_public: bytes) -> str | None:
    """What is wrong with our own roster entry for signing, or None.

    Our signing key is derived from our WireGuard private key (wgcast.origin); the
    roster must list its public half as our `sign_key`, or the others cannot check what
    we originate (and refuse it, if the entry names another key)."""
    from wgcast.keys import b64

    me = roster.member(public_key)
    if me is None:
        return (f"roster: this node (public key {b64(public_key)}) is not a member: every "
                "route it originates will be refused")
    if me.sign_key is None:
        return (f"roster: member {me.name!r} has no sign_key: its routes go unsigned "
                f"(add sign_key = \"{b64(sign_public)}\")")
    if me.sign_key != sign_public:
        return (f"roster: member {me.name!r} has sign_key {b64(me.sign_key)}, but this "
                f"node's signing key is {b64(sign_public)} (from its WireGuard private "
                "key; wgcast roster sign-key): every route it originates will be refused")
    return None
