"""Who may join a group: root always; others when their uid or one of their gids is
allowed by the group's policy (`allow_uids`, `allow_gids` of its config)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Peer", "Policy", "refusal"]


@dataclass(frozen=True, slots=True)
class Peer:
    """The credentials of an API client (SO_PEERCRED, plus supplementary groups)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @property
    def gids(self) -> frozenset[int]:
        return self.groups | {self.gid}


@dataclass(frozen=True, slots=True)
class Policy:
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, uids: Iterable[int] = (), gids: Iterable[int] = ()) -> Policy:
        return cls(frozenset(uids), frozenset(gids))

    def allows(self, peer: Peer) -> bool:
        return refusal(self, peer) is None


def refusal(policy: Policy, peer: Peer) -> str | None:
    """None if `peer` may join a group of this policy, else the reason in words."""
    if peer.uid == 0:
        return None
    if peer.uid in policy.allow_uids:
        return None
    if peer.gids & policy.allow_gids:
        return None
    if not policy.allow_uids and not policy.allow_gids:
        return f"uid {peer.uid} is not root and the group allows nobody else"
    return (f"uid {peer.uid} (gids {', '.join(map(str, sorted(peer.gids)))}) is neither in "
            "the group's allow_uids nor in its allow_gids")
