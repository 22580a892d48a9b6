"""The source-filter walk (wgcast.sim.filter) on hand-built route tables.

The network's engines are built but never run (their queued actions are dropped); the
tests write the FIBs by hand, so every expectation is worked out from the tables alone.
"""

from __future__ import annotations

import pytest

from wgcast.babel.events import LOCAL
from wgcast.prefix import Prefix
from wgcast.sim.filter import BlackholeMeter, check_filter
from wgcast.sim.network import SimNetwork
from wgcast.sim.scenario import Scenario, anycast_prefix, node_config, unicast_prefix
from wgcast.topology import Link, Topology

RING4 = ["n1", "n2", "n3", "n4"]


def ring4() -> tuple[SimNetwork, dict[str, Prefix]]:
    """n1 - n2 - n3 - n4 - n1, frozen, each node originating its /64 (LOCAL in its FIB)."""
    links = [Link(a, b, 5.0, id=i) for i, (a, b) in
             enumerate([("n1", "n2"), ("n2", "n3"), ("n3", "n4"), ("n4", "n1")])]
    net = SimNetwork(Topology(list(RING4), links, spec="ring:4"), node_config)
    net._heap.clear()  # no engine runs: the FIBs below are the whole truth
    sources = {n: unicast_prefix(i + 1) for i, n in enumerate(RING4)}
    for n, p in sources.items():
        net.originated.setdefault(n, {})[p] = 0
        net.fib[n] = {p: LOCAL}
    return net, sources


def route(net: SimNetwork, node: str, prefix: Prefix, via: str | None) -> None:
    net._set_route(node, prefix, via)


def neighbours_direct(net: SimNetwork, sources: dict[str, Prefix]) -> None:
    """Adjacent nodes route each other directly."""
    for i, n in enumerate(RING4):
        for m in (RING4[i - 1], RING4[(i + 1) % 4]):
            route(net, n, sources[m], m)


def test_consistent_ring_has_no_blackholed_pair() -> None:
    net, src = ring4()
    neighbours_direct(net, src)
    # the two diagonals, each the exact reverse of the other
    route(net, "n1", src["n3"], "n2")
    route(net, "n2", src["n3"], "n3")
    route(net, "n3", src["n1"], "n2")
    route(net, "n2", src["n1"], "n1")
    route(net, "n2", src["n4"], "n1")
    route(net, "n1", src["n4"], "n4")
    route(net, "n4", src["n2"], "n1")
    route(net, "n1", src["n2"], "n2")
    res = check_filter(net, src, list(src.values()))
    assert res.pairs == 12 and res.unicast_pairs == 12 and res.anycast_pairs == 0
    assert res.blackholed == 0, [b.to_dict() for b in res.sample]


def test_ring_whose_directions_disagree_is_reported() -> None:
    """n1 -> n3 via n2 but n3 -> n1 via n4 (the issue's ring:4): n3 gets n1's packet from
    n2 while it routes n1 via n4, so n3 drops it; n3's packet reaches n1 from n4 while n1
    routes n3 via n2, so n1 drops it. Both directions of that one pair, nothing else."""
    net, src = ring4()
    neighbours_direct(net, src)
    route(net, "n1", src["n3"], "n2")
    route(net, "n2", src["n3"], "n3")
    route(net, "n4", src["n3"], "n3")
    route(net, "n3", src["n1"], "n4")
    route(net, "n4", src["n1"], "n1")
    route(net, "n2", src["n1"], "n1")
    # n2 <-> n4 consistent via n1
    route(net, "n2", src["n4"], "n1")
    route(net, "n1", src["n4"], "n4")
    route(net, "n4", src["n2"], "n1")
    route(net, "n1", src["n2"], "n2")
    res = check_filter(net, src, list(src.values()))
    assert res.blackholed == 2
    by_client = {b.client: b for b in res.sample}
    b1 = by_client["n1"]
    assert b1.prefix == src["n3"] and not b1.anycast
    assert b1.there == ("n1", "n2", "n3") and b1.back == ("n3", "n4", "n1")
    assert (b1.drop.direction, b1.drop.at, b1.drop.prev, b1.drop.why) == (
        "request", "n3", "n2", "filtered")
    b3 = by_client["n3"]
    assert b3.there == ("n3", "n4", "n1")
    assert (b3.drop.at, b3.drop.prev) == ("n1", "n4")


def test_anycast_reply_must_come_back_the_way_the_request_went() -> None:
    """Instance of A on n3. The reply's source is A, so every node on the way back must
    route A via the hop the reply came from, the client included."""
    net, src = ring4()
    neighbours_direct(net, src)
    a = anycast_prefix(0)
    net.originated["n3"][a] = 0
    route(net, "n3", a, LOCAL)
    for n, via in {"n1": "n2", "n2": "n3", "n4": "n3"}.items():
        route(net, n, a, via)
    route(net, "n1", src["n3"], "n2")
    route(net, "n3", src["n1"], "n2")
    route(net, "n2", src["n1"], "n1")
    res = check_filter(net, src, [a])
    assert (res.pairs, res.anycast_pairs, res.blackholed) == (3, 3, 0)
    # n1 turns to n4 for A while n3 still answers n1 through n2: the request now
    # arrives at n3 from n4, which routes n1 via n2: dropped.
    route(net, "n1", a, "n4")
    route(net, "n4", src["n1"], "n1")
    res = check_filter(net, src, [a])
    assert res.blackholed == 1
    (b,) = res.sample
    assert b.anycast and b.client == "n1" and b.there == ("n1", "n4", "n3")
    assert (b.drop.direction, b.drop.at, b.drop.prev) == ("request", "n3", "n4")
    # n3 now answers n1 via n4: the request passes, and the reply (source A) reaches n4
    # from n3 and n1 from n4, both of which route A that way
    route(net, "n3", src["n1"], "n4")
    assert check_filter(net, src, [a]).blackholed == 0
    # ... unless n4 itself moves A to n1's side: the reply is dropped at n4
    route(net, "n4", a, "n1")
    res = check_filter(net, src, [a])
    assert res.blackholed == 2  # n1 and n4 forward A to each other
    b = next(x for x in res.sample if x.client == "n1")
    assert b.there == ("n1", "n4", "n1") and b.drop.why == "loop"


def test_missing_route_dead_hop_and_unreachable_pairs() -> None:
    net, src = ring4()
    neighbours_direct(net, src)
    # n2 and n4 reach their neighbour n3 directly; n1 has no route to n3's prefix
    res = check_filter(net, src, [src["n3"]])
    assert (res.pairs, res.blackholed) == (3, 1)
    assert (res.sample[0].client, res.sample[0].drop.why) == ("n1", "no route")
    # the link n1-n2 cut: n1's route via n2 is dead
    route(net, "n1", src["n3"], "n2")
    route(net, "n2", src["n3"], "n3")
    route(net, "n3", src["n1"], "n2")
    route(net, "n2", src["n1"], "n1")
    net.set_link("n1", "n2", False)
    b = next(x for x in check_filter(net, src, [src["n3"]]).sample if x.client == "n1")
    assert b.drop.why == "dead next hop" and b.drop.at == "n1"
    # partitioned away (n1 cut from both neighbours): its pairs are not checked at all
    net.set_link("n1", "n4", False)
    res = check_filter(net, src, list(src.values()))
    assert res.pairs == 6  # n2, n3, n4 among themselves


def test_meter_integrates_on_the_grid_and_matches_the_full_walk() -> None:
    net, src = ring4()
    neighbours_direct(net, src)
    route(net, "n1", src["n3"], "n2")
    route(net, "n2", src["n3"], "n3")
    route(net, "n3", src["n1"], "n2")
    route(net, "n2", src["n1"], "n1")
    route(net, "n2", src["n4"], "n1")
    route(net, "n1", src["n4"], "n4")
    route(net, "n4", src["n2"], "n1")
    route(net, "n1", src["n2"], "n2")
    meter = BlackholeMeter(net, src, list(src.values()), period=0.005)
    assert meter.begin() == 0
    net.run_until(0.1)
    route(net, "n3", src["n1"], "n4")  # at t = 0.1: n1 <-> n3 blackholed both ways
    route(net, "n4", src["n1"], "n1")
    net.run_until(0.3)
    assert meter.count == 2
    route(net, "n3", src["n1"], "n2")  # at t = 0.3: repaired
    net.run_until(0.5)
    ev = meter.end(0.5)
    assert (ev.before, ev.after, ev.peak) == (0, 0, 2)
    # 2 pairs from the first grid point after 0.1 to the first after 0.3: 0.2 s each
    assert ev.pair_s == pytest.approx(0.4, abs=2 * 0.005 + 1e-9)
    assert ev.samples == pytest.approx(0.5 / 0.005 + 1, abs=1)
    assert ev.rewalks < 12  # only the pairs that read a changed entry are walked again
    assert check_filter(net, src, list(src.values())).blackholed == 0


@pytest.mark.parametrize("fail", ["origin", "node", "link"])
def test_meter_agrees_with_the_full_walk_after_each_event(fail: str) -> None:
    sc = Scenario(topology="random:30:4", anycast=(2, 3), fail=fail, seed=5)
    r = sc.run()
    for ph in sc.phases:
        if ph.event is not None:
            assert ph.filter is not None
            assert ph.event.after == ph.filter.blackholed, (ph.name, r["phases"])
            assert ph.event.pair_s >= 0
    assert r["pairs_checked"] and r["filter"]
