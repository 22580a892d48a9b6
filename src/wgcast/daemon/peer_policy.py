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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from wgcast.dataplane.types import PeerKey
from wgcast.prefix import Prefix

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


class PeerPolicy:
    """The accept filter of one daemon; `dropped` counts the refused announcements."""

    def __init__(self, own: Sequence[Prefix], anycast: Sequence[Prefix]) -> None:
        self.own = tuple(own)
        self.anycast = tuple(anycast)
        self.peers: dict[str, PeerInfo] = {}
        self.dropped = 0

    def add(self, peer: PeerInfo) -> None:
        self.peers[peer.name] = peer

    def accept(self, neighbour: str, prefix: Prefix, rid: bytes) -> bool:
        """A peer may originate what the config allows it; nobody may take ours."""
        ok = True
        if overlaps(prefix, NEVER) or overlaps(prefix, self.own):
            ok = False
        else:
            origin = next((p for p in self.peers.values() if p.router_id == rid), None)
            if origin is not None:
                ok = any(prefix.version == m.version and prefix.subnet_of(m)  # type: ignore[arg-type]
                         for m in origin.may_originate)
            else:
                # Transit route from a non-peer: it must not claim a direct peer's space.
                for p in self.peers.values():
                    own = tuple(m for m in p.may_originate if m not in self.anycast)
                    if overlaps(prefix, own):
                        ok = False
                        break
        if not ok:
            self.dropped += 1
        return ok


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
