"""Routes and route selection.

Routes are indexed by (prefix, neighbour) as RFC 8966 3.2.6 asks: a neighbour has at most
one route per prefix, and a new router-id from it replaces the old one. Selection
(`select`, a pure function; the engine keeps the bookkeeping around it) takes the feasible
route of least (metric, path tie-break, neighbour), with no hysteresis: jitter is damped
in the link costs instead (LinkCostParams), so that the two directions of every path
agree (WireGuard's source filter); `sticky` keeps the current route until it is lost,
for long TCP flows, at the price of that agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from wgcast.babel.wire import INFINITY
from wgcast.prefix import Prefix


@dataclass(frozen=True, slots=True)
class SelectionParams:
    """`shortest` (the default): the feasible route of least (metric, tie-break), which
    keeps the two directions of every path in agreement. `sticky`: keep the selected
    route while it is feasible and alive (for long flows; the two directions may then
    disagree, and WireGuard's source filter drops what crosses a disagreeing hop)."""

    mode: str = "shortest"  # or "sticky"


@dataclass(slots=True)
class Selected:
    """The route we use and announce for one prefix (`via` LOCAL: we originate it)."""

    via: str
    router_id: bytes
    seqno: int
    metric: int
    #: Path tie-break (sum of the links' values along the path; 0 at the origin).
    tie: int = 0


class Route:
    """A route learned from a neighbour."""

    __slots__ = ("dgen", "dhash", "expires", "feasible", "gen", "interval", "mark", "neighbour",
                 "prefix", "refmetric", "router_id", "seqno", "sig", "tie")

    def __init__(self, prefix: Prefix, neighbour: str, router_id: bytes, seqno: int,
                 refmetric: int, interval: float, expires: float, tie: int = 0,
                 sig: bytes = b"") -> None:
        self.prefix = prefix
        self.neighbour = neighbour
        self.router_id = router_id
        self.seqno = seqno
        self.refmetric = refmetric
        self.interval = interval
        self.expires = expires
        #: The neighbour's path tie-break (its Tiebreak sub-TLV); ours adds the link's.
        self.tie = tie
        #: The origin's signature as received (passed on unchanged when we announce it).
        self.sig = sig
        #: Bumped whenever the route changes; -1 once it left the table.
        self.gen = 0
        #: Was the last update of this route feasible when it arrived?
        self.feasible = False
        #: Quiet mode (quiet.py): the full-update round of its neighbour in which it was
        #: last heard, and its entry hash as of generation `dgen` (a cache).
        self.mark = 0
        self.dhash = 0
        self.dgen = -2

    def metric(self, cost: int) -> int:
        if cost >= INFINITY or self.refmetric >= INFINITY:
            return INFINITY
        return min(INFINITY, self.refmetric + cost)


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

    def count_via(self, neighbour: str) -> int:
        nb = self._by_neighbour.get(neighbour)
        return 0 if nb is None else len(nb)

    def via(self, neighbour: str) -> list[Prefix]:
        return list(self._by_neighbour.get(neighbour, ()))

    def routes_via(self, neighbour: str) -> list[Route]:
        """Every route learned from `neighbour`."""
        routes = self._routes
        return [routes[p][neighbour] for p in self._by_neighbour.get(neighbour, ())]

    def all_routes(self) -> list[Route]:
        return [r for per in self._routes.values() for r in per.values()]


#: feasible(prefix, router_id, seqno, refmetric): the feasibility condition (SourceTable).
Feasible = Callable[[Prefix, bytes, int, int], bool]


class Choice(NamedTuple):
    """What selection found for one prefix (see `select`)."""

    #: The route to use, or None: no usable route.
    best: Route | None
    #: Its (metric, path tie-break, neighbour); (INFINITY, 0, "") without one.
    key: tuple[int, int, str]
    #: A route better than `best` that is not feasible yet: ask its source for a new
    #: seqno. None when there is none, or no `best` at all (starvation is the caller's).
    blocked: Route | None
    #: The current route's metric, INFINITY if it is gone or no longer usable.
    current_metric: int


def select(prefix: Prefix, routes: Iterable[Route], costs: Mapping[str, int],
           ties: Mapping[str, int], current: Route | None, current_rid: bytes | None,
           feasible: Feasible, mode: str = "shortest") -> Choice:
    """Route selection for one prefix: a pure function of what we know now.

    The source filter: WireGuard drops a packet whose source is not routed back to the
    peer it came from, so the path back must be the exact reverse of the path there.
    Selection therefore has no history and no hysteresis: the feasible route of least
    (metric, path tie-break, neighbour). Link costs (`costs`, per neighbour) are agreed
    by both ends (Neighbour.cost) and damped there, and the tie-break sums per-link values
    (`ties`, per neighbour) that both ends share, so every pair of nodes has one shortest
    path, the same in both directions, and every node on it routes along it
    (docs/source-filter.md). A better route that is not feasible is returned as `blocked`
    (with no feasible route at all, the best unfeasible one): its source's next seqno
    makes it feasible.

    `current` is the route selected now (learned from a neighbour), `current_rid` the
    router-id selected now: the current route stays usable when it got worse than our
    feasibility distance (still loop-free), but a new source from the same neighbour must
    be feasible. `mode` "sticky" keeps the current route while it is usable, breaking the
    rule above (SelectionParams).
    """
    cur_m = INFINITY
    if current is not None:
        cost = costs.get(current.neighbour, INFINITY)
        ref = current.refmetric
        if cost < INFINITY and ref < INFINITY:
            cur_m = min(INFINITY, ref + cost)
        if current.router_id != current_rid and not feasible(
                prefix, current.router_id, current.seqno, ref):
            cur_m = INFINITY
    best: Route | None = None
    best_m, best_t, best_n = INFINITY, 0, ""
    # The best route that is better than `best` but not feasible.
    blocked: Route | None = None
    blocked_k: tuple[int, int, str] = (INFINITY, 0, "")
    for route in routes:
        nid = route.neighbour
        cost = costs.get(nid, INFINITY)
        if cost >= INFINITY or route.refmetric >= INFINITY:
            continue
        m = route.refmetric + cost  # Route.metric
        if m >= INFINITY:
            # Unreachable: the metric saturates at INFINITY, never just below it. Addition
            # must stay strictly monotonic (RFC 8966 3.5.2), or a route going round a loop
            # would settle at INFINITY - 1 and circulate for ever instead of dying out.
            continue
        if m > best_m:
            continue
        t = route.tie + ties[nid]
        if m == best_m and (t > best_t or (t == best_t and nid >= best_n)):
            continue
        if route is current:
            ok = cur_m < INFINITY
        else:
            ok = feasible(prefix, route.router_id, route.seqno, route.refmetric)
        if ok:
            best, best_m, best_t, best_n = route, m, t, nid
        elif (m, t, nid) < blocked_k:
            blocked, blocked_k = route, (m, t, nid)
    key = (best_m, best_t, best_n)
    chosen = best
    if mode == "sticky" and current is not None and cur_m < INFINITY and best is not None \
            and best is not current:
        chosen = current
        key = (cur_m, current.tie + ties[current.neighbour], current.neighbour)
    if blocked is not None and best is not None and blocked_k >= key:
        blocked = None
    return Choice(chosen, key, blocked, cur_m)
