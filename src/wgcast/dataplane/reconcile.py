"""Pure planning of AllowedIPs changes: desired {prefix: peer} vs what the device holds.

Rules (see DESIGN.md, "Data plane rules"):

- A prefix that should go to another peer is one `AddAllowedIP`: WireGuard's move
  semantics take it from the old peer in the same step, so it is never unrouted.
- Only prefixes wgcast owns (`managed`) are ever touched; a peer's static AllowedIPs
  and control addresses are outside `managed` and stay as they are.
- An owned prefix that should go nowhere is one `RemoveAllowedIP` from its holder.
- Adds/moves come first, removals last, each group sorted by (peer, prefix), so a
  half-applied batch never drops a prefix that still has a destination and equal inputs
  give equal requests.

No I/O, no clock: the daemon, the simulator and the tests call the same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from wgcast.dataplane.types import (
    AddAllowedIP,
    Op,
    PeerKey,
    Prefix,
    RemoveAllowedIP,
    ReplaceAllowedIPs,
)
from wgcast.prefix import prefix_key


def holders(actual: Mapping[PeerKey, AbstractSet[Prefix]]) -> dict[Prefix, PeerKey]:
    """prefix -> the peer holding it; a prefix under two peers is impossible on a device."""
    owner: dict[Prefix, PeerKey] = {}
    for peer, prefixes in actual.items():
        for p in prefixes:
            other = owner.setdefault(p, peer)
            if other != peer:
                raise ValueError(f"{p} is listed under two peers; WireGuard cannot hold that")
    return owner


def plan(
    desired: Mapping[Prefix, PeerKey],
    actual: Mapping[PeerKey, AbstractSet[Prefix]],
    managed: AbstractSet[Prefix],
    owner: Mapping[Prefix, PeerKey] | None = None,
) -> list[Op]:
    """The minimal ordered operations that make the owned part of `actual` equal `desired`.

    `desired` maps owned prefixes to the peer that should hold them; an owned prefix
    missing from `desired` should go nowhere. `actual` is what the device reports
    (`Device.allowed_ips_by_peer()`). The result has exactly one operation per owned
    prefix whose holder differs from its destination (a move or a first add) plus one
    per owned prefix held somewhere that should be nowhere.
    """
    stray = [p for p in desired if p not in managed]
    if stray:
        raise ValueError(f"desired prefixes not in managed: {sorted(map(str, stray))[:5]}")
    if owner is None:  # `holders(actual)`, when the caller has it already
        owner = holders(actual)
    adds = [AddAllowedIP(peer, p) for p, peer in desired.items() if owner.get(p) != peer]
    removes = [
        RemoveAllowedIP(owner[p], p) for p in managed if p not in desired and p in owner
    ]
    adds.sort(key=lambda op: (op.peer, prefix_key(op.prefix)))
    removes.sort(key=lambda op: (op.peer, prefix_key(op.prefix)))
    return [*adds, *removes]


def simulate(
    actual: Mapping[PeerKey, AbstractSet[Prefix]], ops: Iterable[Op]
) -> dict[PeerKey, set[Prefix]]:
    """Model of WireGuard applying `ops` (move semantics), for tests and dry runs.

    An add takes the prefix from any other peer; a removal only acts on the holder;
    ops naming an unknown peer create it, as `actual` lists every peer of the device.
    """
    state = {peer: set(prefixes) for peer, prefixes in actual.items()}
    owner = holders(state)
    for op in ops:
        if isinstance(op, AddAllowedIP):
            _insert(state, owner, op.peer, op.prefix)
        elif isinstance(op, RemoveAllowedIP):
            if owner.get(op.prefix) == op.peer:
                state[op.peer].discard(op.prefix)
                del owner[op.prefix]
        else:
            _replace(state, owner, op)
    return state


def _insert(
    state: dict[PeerKey, set[Prefix]], owner: dict[Prefix, PeerKey], peer: PeerKey, p: Prefix
) -> None:
    old = owner.get(p)
    if old is not None:
        state[old].discard(p)
    state.setdefault(peer, set()).add(p)
    owner[p] = peer


def _replace(
    state: dict[PeerKey, set[Prefix]], owner: dict[Prefix, PeerKey], op: ReplaceAllowedIPs
) -> None:
    for p in state.get(op.peer, set()):
        del owner[p]
    state[op.peer] = set()
    for p in op.prefixes:
        _insert(state, owner, op.peer, p)
