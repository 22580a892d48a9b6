"""Events the engine hands to its driver: frozen, small, in the order they happened."""

from __future__ import annotations

from dataclasses import dataclass, field

from wgcast.prefix import Prefix

#: `RouteSelected.via` for a prefix this node originates itself.
LOCAL = "<local>"


@dataclass(frozen=True, slots=True)
class RouteSelected:
    """The best route of `prefix` changed: `via` is a neighbour, LOCAL, or None (no route)."""

    prefix: Prefix
    via: str | None
    metric: int
    router_id: bytes | None


@dataclass(frozen=True, slots=True)
class NeighbourUp:
    neighbour: str


@dataclass(frozen=True, slots=True)
class NeighbourDown:
    neighbour: str
    #: How it was found dead, with the timings that made the detection (for traces:
    #: where the milliseconds of a node cut went); not part of equality.
    note: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class RetractionAcked:
    """Every neighbour that was up has acknowledged the retraction of `prefix` (or died)."""

    prefix: Prefix


@dataclass(frozen=True, slots=True)
class SeqnoChanged:
    """Our own seqno moved: a driver persists it so a restart is not rejected."""

    seqno: int


Event = RouteSelected | NeighbourUp | NeighbourDown | RetractionAcked | SeqnoChanged
