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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from wgcast.dataplane.types import PeerKey
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


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One configured peer as the daemon uses it."""

    name: str
    key: PeerKey
    control: ipaddress.IPv6Address
    router_id: bytes
    may_originate: tuple[Prefix, ...]
    endpoints: tuple[str, ...] = ()
    #: Not a wgcast node (babeld, BIRD, FRR...): its router-id is not the hash of its
    #: key, so what it sends is judged by address alone (see PeerPolicy.refusal).
    generic: bool = False


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
)


class PeerPolicy:
    """The accept filter of one daemon, with its refusals counted by reason and neighbour.

    With a roster (wgcast.roster), the roster decides for every route, transit ones
    included: the origin (the router-id in the Update) must be a member allowed to
    originate the prefix, and the prefix must lie in the mesh's space. Without one, a
    direct peer may originate its `may_originate`, and a transit route must not claim a
    direct peer's space. Either way nobody may announce our own addresses or reserved
    space, and a neighbour may give us at most `max_routes` routes (`routes_from` tells
    how many it has; `has_route` whether this one is a refresh).
    """

    def __init__(self, own: Sequence[Prefix], anycast: Sequence[Prefix],
                 own_router_id: bytes = b"", max_routes: int = 10000,
                 roster: Roster | None = None) -> None:
        self.own = tuple(own)
        self.anycast = tuple(anycast)
        self.own_router_id = own_router_id
        self.max_routes = max_routes
        self.roster = roster
        self.peers: dict[str, PeerInfo] = {}
        #: Neighbours heard on a plain LAN ([[lan]], daemon/lan.py): generic speakers.
        self.lan: dict[str, PeerInfo] = {}
        #: Refusals that may be attacks or mistakes (echoes of our own prefixes excluded).
        self.dropped = 0
        self.dropped_by: dict[tuple[str, str], int] = {}
        self.routes_from: Callable[[str], int] = lambda _nid: 0
        self.has_route: Callable[[str, Prefix], bool] = lambda _nid, _p: False

    def add(self, peer: PeerInfo) -> None:
        self.peers[peer.name] = peer

    def accept(self, neighbour: str, prefix: Prefix, rid: bytes) -> bool:
        """May `neighbour`'s announcement of `prefix` from origin `rid` be used?"""
        why = self.refusal(neighbour, prefix, rid)
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

    def refusal(self, neighbour: str, prefix: Prefix, rid: bytes) -> str | None:
        if overlaps(prefix, self.own):
            return "own prefix echoed" if rid == self.own_router_id else "claims our address"
        if overlaps(prefix, NEVER):
            return "reserved space"
        via = self.peers.get(neighbour) or self.lan.get(neighbour)
        if via is not None and via.generic:
            # A generic Babel speaker (babeld, BIRD, FRR): its router-ids prove nothing,
            # so the address decides: whatever the origin (the speaker or a router behind
            # it), the prefix must lie in what the peer may originate. Anything else it
            # redistributes (its underlay, its link's subnet) is refused.
            if not any(prefix.version == m.version and prefix.subnet_of(m)  # type: ignore[arg-type]
                       for m in via.may_originate):
                return "not allowed"
        elif self.roster is not None:
            why = self.roster.why_refused(rid, prefix)
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
        if self.routes_from(neighbour) >= self.max_routes and \
                not self.has_route(neighbour, prefix):
            return "over limit"
        return None

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
