"""Route selection as a pure function (`route.select`): routes, costs and ties in, a
`Choice` out; no engine, no time."""

from __future__ import annotations

import ipaddress

from wgcast.babel.route import Choice, Feasible, Route, select
from wgcast.babel.wire import INFINITY
from wgcast.prefix import Prefix

P: Prefix = ipaddress.ip_network("fd00::1/128")
A, B = b"AAAAAAAA", b"BBBBBBBB"


def route(nid: str, refmetric: int, rid: bytes = A, seqno: int = 1, tie: int = 0) -> Route:
    return Route(P, nid, rid, seqno, refmetric, 4.0, 100.0, tie)


def every(prefix: Prefix, rid: bytes, seqno: int, metric: int) -> bool:
    return True


def below(limit: int) -> Feasible:
    """Feasible when the advertised metric is below `limit` (a feasibility distance)."""
    def feasible(prefix: Prefix, rid: bytes, seqno: int, metric: int) -> bool:
        return metric < limit
    return feasible


def source_is(want: bytes) -> Feasible:
    """Feasible for one source only (the others' seqnos are too old)."""
    def feasible(prefix: Prefix, rid: bytes, seqno: int, metric: int) -> bool:
        return rid == want
    return feasible


def run(routes: list[Route], costs: dict[str, int], ties: dict[str, int] | None = None,
        current: Route | None = None, current_rid: bytes | None = None,
        feasible: Feasible = every, mode: str = "shortest") -> Choice:
    return select(P, routes, costs, ties or dict.fromkeys(costs, 0), current, current_rid,
                  feasible, mode)


def test_least_metric_then_tie_then_neighbour() -> None:
    x, y, z = route("x", 100), route("y", 50), route("z", 60)
    got = run([x, y, z], {"x": 96, "y": 96, "z": 96})
    assert got.best is y and got.key == (146, 0, "y")
    # Equal metrics: the smaller path tie-break (route's + link's) wins...
    x, y = route("x", 100, tie=5), route("y", 100, tie=1)
    assert run([x, y], {"x": 96, "y": 96}, {"x": 0, "y": 10}).best is x
    # ...then the neighbour name, whatever the order of the routes.
    x, y = route("x", 100), route("y", 100)
    assert run([y, x], {"x": 96, "y": 96}).best is x
    assert run([x, y], {"x": 96, "y": 96}).best is x


def test_no_usable_route() -> None:
    got = run([route("x", INFINITY), route("y", 10)], {"x": 96, "y": INFINITY})
    assert got == Choice(None, (INFINITY, 0, ""), None, INFINITY)
    assert run([], {}).best is None


def test_a_metric_that_reaches_infinity_is_unreachable() -> None:
    """Metrics add up to INFINITY, not to just below it (strictly monotonic, RFC 8966
    3.5.2): a route whose metric reaches it is not used, the nearer one is."""
    far, near = route("x", INFINITY - 10), route("y", INFINITY - 200)
    assert run([far], {"x": 96}).best is None
    got = run([far, near], {"x": 96, "y": 96})
    assert got.best is near and got.key == (INFINITY - 104, 0, "y")


def test_a_better_unfeasible_route_is_blocked() -> None:
    """The better route is not feasible: take the feasible one and name the other, so
    the engine asks its source for a new seqno."""
    good, bad = route("x", 300), route("y", 100, rid=B)
    got = run([good, bad], {"x": 96, "y": 96}, feasible=source_is(A))
    assert got.best is good and got.blocked is bad
    # Sticky: blocked only if it beats the route kept.
    got = run([good, bad], {"x": 96, "y": 96}, current=good, current_rid=A,
              feasible=source_is(A), mode="sticky")
    assert got.best is good and got.blocked is bad


def test_a_worse_unfeasible_route_is_not_blocked() -> None:
    good, bad = route("x", 100), route("y", 300)
    got = run([good, bad], {"x": 96, "y": 96}, feasible=below(200))
    assert got.best is good and got.blocked is None


def test_starvation_gives_the_best_unfeasible_route_as_blocked() -> None:
    r = route("x", 300)
    got = run([r], {"x": 96}, feasible=below(200))
    assert got.best is None and got.blocked is r


def test_the_current_route_stays_usable_when_it_got_worse() -> None:
    """Same source, metric beyond the feasibility distance: still loop-free, still ours."""
    cur = route("x", 300)
    got = run([cur], {"x": 96}, current=cur, current_rid=A, feasible=below(200))
    assert got.best is cur and got.current_metric == 396


def test_a_new_source_from_the_current_neighbour_must_be_feasible() -> None:
    cur = route("x", 300, rid=B)
    got = run([cur], {"x": 96}, current=cur, current_rid=A, feasible=below(200))
    assert got.best is None and got.current_metric == INFINITY


def test_sticky_keeps_the_current_route_and_shortest_does_not() -> None:
    cur, better = route("x", 200), route("y", 100)
    costs = {"x": 96, "y": 96}
    assert run([cur, better], costs, current=cur, current_rid=A).best is better
    got = run([cur, better], costs, current=cur, current_rid=A, mode="sticky")
    assert got.best is cur and got.key == (296, 0, "x")


def test_selection_is_pure() -> None:
    routes = [route("x", 100, tie=3), route("y", 100, tie=2), route("z", 90)]
    before = [(r.refmetric, r.seqno, r.tie, r.gen, r.feasible) for r in routes]
    costs = {"x": 96, "y": 96, "z": 200}
    first = run(routes, costs)
    assert run(list(reversed(routes)), costs) == first
    assert [(r.refmetric, r.seqno, r.tie, r.gen, r.feasible) for r in routes] == before
