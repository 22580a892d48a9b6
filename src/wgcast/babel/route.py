"""Route table.

Routes are indexed by (prefix, neighbour) as RFC 8966 3.2.6 asks: a neighbour has at most
one route per prefix, and a new router-id from it replaces the old one. Selection (in the
engine) takes the feasible route of least (metric, path tie-break, neighbour), with no
hysteresis: jitter is damped in the link costs instead (LinkCostParams), so that the two
directions of every path agree (WireGuard's source filter); `sticky` keeps the current
route until it is lost, for long TCP flows, at the price of that agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgcast.babel.wire import INFINITY, Prefix


@dataclass(frozen=True, slots=True)
class SelectionParams:
    """`shortest` (the default): the feasible route of least (metric, tie-break), which
    keeps the two directions of every path in agreement. `sticky`: keep the selected
    route while it is feasible and alive (for long flows; the two directions may then
    disagree, and WireGuard's source filter drops what crosses a disagreeing hop)."""

    mode: str = "shortest"  # or "sticky"


class Route:
    """A route learned from a neighbour."""

    __slots__ = ("expires", "feasible", "gen", "interval", "neighbour", "prefix", "refmetric",
                 "router_id", "seqno", "tie")

    def __init__(self, prefix: Prefix, neighbour: str, router_id: bytes, seqno: int,
                 refmetric: int, interval: float, expires: float, tie: int = 0) -> None:
        self.prefix = prefix
        self.neighbour = neighbour
        self.router_id = router_id
        self.seqno = seqno
        self.refmetric = refmetric
        self.interval = interval
        self.expires = expires
        #: The neighbour's path tie-break (its Tiebreak sub-TLV); ours adds the link's.
        self.tie = tie
        #: Bumped whenever the route changes; -1 once it left the table.
        self.gen = 0
        #: Was the last update of this route feasible when it arrived?
        self.feasible = False

    def metric(self, cost: int) -> int:
        if cost >= INFINITY or self.refmetric >= INFINITY:
            return INFINITY
        return min(INFINITY - 1, self.refmetric + cost)


class RouteTable:
    """Routes per prefix, per neighbour."""

    __slots__ = ("_by_neighbour", "_routes")

    def __init__(self) -> None:
        self._routes: dict[Prefix, dict[str, Route]] = {}
        self._by_neighbour: dict[str, set[Prefix]] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self._routes.values())

    def prefixes(self) -> list[Prefix]:
        return list(self._routes)

    def routes(self, prefix: Prefix) -> dict[str, Route]:
        return self._routes.get(prefix, {})

    def get(self, prefix: Prefix, neighbour: str) -> Route | None:
        r = self._routes.get(prefix)
        return None if r is None else r.get(neighbour)

    def put(self, route: Route) -> None:
        self._routes.setdefault(route.prefix, {})[route.neighbour] = route
        self._by_neighbour.setdefault(route.neighbour, set()).add(route.prefix)

    def remove(self, prefix: Prefix, neighbour: str) -> Route | None:
        per = self._routes.get(prefix)
        if per is None:
            return None
        route = per.pop(neighbour, None)
        if route is not None:
            route.gen = -1
        if not per:
            del self._routes[prefix]
        nb = self._by_neighbour.get(neighbour)
        if nb is not None:
            nb.discard(prefix)
        return route

    def via(self, neighbour: str) -> list[Prefix]:
        return list(self._by_neighbour.get(neighbour, ()))

    def all_routes(self) -> list[Route]:
        return [r for per in self._routes.values() for r in per.values()]
