"""The engine, h11-style: a few `Node`s pumped with explicit `now`, bytes between them.

No simulator and no sockets: `Pump` delivers each datagram after its link's one-way delay
and runs every node's timers in time order, so a test reads as a conversation.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.events import (
    LOCAL,
    NeighbourDown,
    NeighbourUp,
    RetractionAcked,
    RouteSelected,
    SeqnoChanged,
)
from wgcast.babel.liveness import LivenessParams
from wgcast.babel.neighbour import link_tiebreak
from wgcast.babel.wire import INFINITY, Ack, AckReq, PacketWriter, decode_packet
from wgcast.prefix import Prefix


def rid(name: str) -> bytes:
    return (name.encode() * 8)[:8]


def net(i: int) -> Prefix:
    return ipaddress.ip_network(f"fd00::{i:x}/128")


class Pump:
    """Nodes joined by links with a one-way delay each way; virtual time."""

    def __init__(self, names: list[str], links: dict[tuple[str, str], float],
                 ties: bool = True, extra: dict[tuple[str, str], int] | None = None,
                 start: float = 100.0, quiet: bool | set[str] = True,
                 live: LivenessParams | None = None, hello: float = 0.2,
                 late: dict[str, float] | None = None, stamped: bool = True) -> None:
        """`quiet`: which nodes do quiet mode (all, none, or those named). `late`: a node
        busy elsewhere, that processes each datagram that long after it arrived (told the
        arrival time, as a socket timestamp tells it, unless `stamped` is False)."""
        self.late = late or {}
        self.stamped = stamped
        self.now = start
        # By default every neighbour gets Hellos at the Hello interval (no idle ones):
        # the tests of costs and selection count in Hello intervals; test_liveness.py
        # covers Hellos on demand.
        live = live or LivenessParams(idle_hello_interval=0.0)
        self.nodes = {n: Node(NodeConfig(rid(n), hello_interval=hello, liveness=live,
                                         quiet=quiet if isinstance(quiet, bool)
                                         else n in quiet), start) for n in names}
        self.delay: dict[tuple[str, str], float] = {}
        self.cut: set[tuple[str, str]] = set()
        #: Loses the datagrams (src, dst, bytes) for which it returns True.
        self.drop: Callable[[str, str, bytes], bool] | None = None
        #: Stalled nodes (a starved process): nothing runs before the time given; then
        #: what arrived meanwhile is read first, as the runtime drains before its timer.
        self.stalled: dict[str, float] = {}
        for (a, b), d in links.items():
            self.delay[(a, b)] = self.delay[(b, a)] = d
            tie = link_tiebreak(a.encode(), b.encode()) if ties else 0
            for x, y in ((a, b), (b, a)):
                self.nodes[x].add_neighbour(y, (extra or {}).get((x, y), 0), tie=tie)
        self.queue: list[tuple[float, int, str, str, bytes, float]] = []
        self.seq = itertools.count()
        self.events: dict[str, list[object]] = {n: [] for n in names}
        self.sent: list[tuple[float, str, str, bytes]] = []
        self.received: dict[str, list[float]] = {n: [] for n in names}

    def _drain(self) -> None:
        for name, node in self.nodes.items():
            for nid, data in node.datagrams_to_send():
                self.sent.append((self.now, name, nid, data))
                if (name, nid) not in self.cut and \
                        (self.drop is None or not self.drop(name, nid, data)):
                    at = self.now + self.delay[(name, nid)]
                    heapq.heappush(self.queue, (at + self.late.get(nid, 0.0),
                                                next(self.seq), nid, name, data, at))
            while (ev := node.next_event()) is not None:
                self.events[name].append(ev)

    def run(self, seconds: float) -> None:
        """Advance virtual time by `seconds`, delivering and firing timers in order."""
        end = self.now + seconds
        self._drain()
        for _ in range(1_000_000):
            # A deadline already past fires now (as the runtime's call_at does).
            stalled = self.stalled
            t_timer = max(self.now, min((max(d, stalled.get(name, d))
                                         for name, n in self.nodes.items()
                                         if (d := n.next_deadline()) is not None),
                                        default=end + 1))
            t_pkt = self.queue[0][0] if self.queue else end + 1
            t = min(t_timer, t_pkt)
            if t > end:
                break
            self.now = t
            if t_pkt <= t_timer:
                _, _, dst, src, data, at = heapq.heappop(self.queue)
                if stalled.get(dst, t) > t:
                    heapq.heappush(self.queue, (stalled[dst], next(self.seq), dst, src,
                                                data, at))
                    continue
                self.nodes[dst].receive(t, src, data, at if self.stamped else None)
                self.received[dst].append(t)
            else:
                for name, n in self.nodes.items():
                    d = n.next_deadline()
                    if d is not None and d <= t and stalled.get(name, t) <= t:
                        n.handle_timer(t)
            self._drain()
        else:
            raise AssertionError("pump did not reach the end time")
        self.now = end

    def via(self, name: str, prefix: Prefix) -> str | None:
        sel = self.nodes[name].selected.get(prefix)
        return None if sel is None else sel.via

    def path(self, start: str, prefix: Prefix) -> list[str]:
        out = [start]
        for _ in range(len(self.nodes) + 1):
            v = self.via(out[-1], prefix)
            if v is None or v == LOCAL:
                return out
            out.append(v)
        raise AssertionError(f"loop: {out}")


def ring(n: int, delay: float = 0.005) -> dict[tuple[str, str], float]:
    return {(f"n{i}", f"n{i % n + 1}"): delay for i in range(1, n + 1)}


# ---------------------------------------------------------------- neighbours, costs


def test_hello_ihu_bring_both_up_with_rtt() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.010})
    p.run(2.0)
    for x, y in (("a", "b"), ("b", "a")):
        assert NeighbourUp(y) in p.events[x]
        nb = p.nodes[x].neighbours[y]
        assert nb.up and nb.rtt_ms == pytest.approx(20.0, abs=0.5)


@pytest.mark.parametrize("stamped", [True, False])
def test_time_a_datagram_waits_for_a_busy_node_is_not_rtt(stamped: bool) -> None:
    """b works through something else and reads each datagram 300 ms after it arrived.
    Dated by their arrival (the socket's timestamp), b's echoes and samples still say
    20 ms at both ends; dated by when they were read, the link looks 15 times slower and
    its cost would take routes away from it."""
    p = Pump(["a", "b"], {("a", "b"): 0.010}, late={"b": 0.300}, stamped=stamped)
    p.run(3.0)
    for x, y in (("a", "b"), ("b", "a")):
        nb = p.nodes[x].neighbours[y]
        assert nb.up
        assert nb.rtt_ms is not None
        if stamped:
            assert nb.rtt_ms == pytest.approx(20.0, abs=0.5)
        else:
            assert nb.rtt_ms > 300.0


def test_agreed_cost_is_the_larger_view_at_both_ends() -> None:
    """One end adds a configured cost to the link: both ends use the same, larger cost
    (the IHU carries each end's view), so a path costs the same in both directions."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, extra={("a", "b"): 100})
    p.run(3.0)
    a, b = p.nodes["a"], p.nodes["b"]
    own_b = b.neighbours["a"].own_cost(b.config.link)
    assert a.neighbour_cost("b") == b.neighbour_cost("a")
    assert a.neighbour_cost("b") >= own_b + 100


def test_agreed_cost_follows_a_view_that_moves_down() -> None:
    """Each end sends its own view, not the agreed value, so a cost can come down."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, extra={("a", "b"): 500})
    p.run(2.0)
    high = p.nodes["b"].neighbour_cost("a")
    p.nodes["a"].neighbours["b"].extra_cost = 0
    p.run(2.0)
    low = p.nodes["b"].neighbour_cost("a")
    assert low < high - 400
    assert low == p.nodes["a"].neighbour_cost("b")


def test_a_cost_step_reaches_the_other_end_in_one_way_delay() -> None:
    """When an end's view moves it sends its IHU at once (not at its next Hello), so the
    two ends disagree for a one-way delay only."""
    p = Pump(["a", "b"], {("a", "b"): 0.005})
    p.run(3.0)
    a, b = p.nodes["a"], p.nodes["b"]
    before = b.neighbour_cost("a")
    a.neighbours["b"].extra_cost = 300  # a's view moves; a's engine sees it on its next input
    heard = len(p.received["a"])
    for _ in range(400):
        p.run(0.001)
        if b.neighbour_cost("a") != before:
            break
    t_seen = p.received["a"][heard]  # the first packet a processed after the change
    assert b.neighbour_cost("a") == a.neighbour_cost("b") > before
    assert p.now - t_seen <= 0.005 + 0.0015


# ---------------------------------------------------------------- selection


def test_selection_takes_any_better_route_at_once() -> None:
    """No hysteresis in selection: a route better by one unit wins as soon as it is known
    (jitter is damped in the link costs instead)."""
    links = {("s", "x"): 0.005, ("s", "y"): 0.005, ("x", "d"): 0.005, ("y", "d"): 0.005}
    p = Pump(["s", "x", "y", "d"], links)
    p.nodes["d"].originate(net(1), now=p.now)
    p.run(3.0)
    first = p.via("s", net(1))
    assert first in ("x", "y")
    other = "y" if first == "x" else "x"
    p.nodes[first].neighbours["d"].extra_cost = 1
    p.nodes["d"].neighbours[first].extra_cost = 1
    p.run(1.0)
    assert p.via("s", net(1)) == other


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("size", [4, 6])
def test_equal_cost_paths_agree_in_both_directions(size: int, seed: int) -> None:
    """Rings with equal links: opposite nodes have two equal paths. With link tie-breaks
    both ends pick the same one, and every hop routes the reply back the way it came.
    (Ordering by neighbour name alone breaks on ring:6: n2 and n5 pick opposite sides.)"""
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(1, size + 1)]
    rng.shuffle(names)  # vary which names (so which tie-break values) sit where
    links = {(names[i], names[(i + 1) % size]): 0.005 for i in range(size)}
    p = Pump(names, links)
    for i, n in enumerate(names):
        p.nodes[n].originate(net(i + 1), now=p.now)
    p.run(4.0)
    prefix = {n: net(i + 1) for i, n in enumerate(names)}
    for a in names:
        for b in names:
            if a != b:
                there = p.path(a, prefix[b])
                back = p.path(b, prefix[a])
                assert there == back[::-1], (a, b, there, back)


def test_ties_follow_the_smaller_tie_sum() -> None:
    """Of two paths of equal metric, the one whose links' tie-break values sum lower."""
    links = ring(4)
    p = Pump(["n1", "n2", "n3", "n4"], links)
    p.nodes["n3"].originate(net(3), now=p.now)
    p.run(4.0)
    via_n2 = link_tiebreak(b"n1", b"n2") + link_tiebreak(b"n2", b"n3")
    via_n4 = link_tiebreak(b"n1", b"n4") + link_tiebreak(b"n4", b"n3")
    m1 = p.nodes["n1"].selected[net(3)].metric
    alt = {"n2": "n4", "n4": "n2"}[p.via("n1", net(3)) or ""]
    alt_route = p.nodes["n1"].routes.get(net(3), alt)
    assert alt_route is not None
    if p.nodes["n1"].neighbour_cost(alt) + alt_route.refmetric == m1:
        assert p.via("n1", net(3)) == ("n2" if via_n2 < via_n4 else "n4")


def test_update_carries_the_path_tie_break() -> None:
    p = Pump(["a", "b", "c"], {("a", "b"): 0.005, ("b", "c"): 0.005})
    p.nodes["c"].originate(net(9), now=p.now)
    p.run(3.0)
    sel = p.nodes["a"].selected[net(9)]
    assert sel.tie == link_tiebreak(b"a", b"b") + link_tiebreak(b"b", b"c")
    assert p.nodes["c"].selected[net(9)].tie == 0


# ---------------------------------------------------------------- updates, feasibility


def test_retraction_is_acknowledged_and_removes_the_route() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.005})
    p.nodes["a"].originate(net(1), now=p.now)
    p.run(2.0)
    assert p.via("b", net(1)) == "a"
    p.nodes["a"].retract(net(1), now=p.now)
    p.run(0.1)
    assert p.via("b", net(1)) is None
    assert RouteSelected(net(1), None, INFINITY, None) in p.events["b"]
    assert any(type(e).__name__ == "RetractionAcked" for e in p.events["a"])


def test_unfeasible_better_route_gets_a_seqno_request() -> None:
    """A line s - x - d with a slow detour s - y - d: when x's link gets costly the route
    through y is better but not feasible (s announced a lower metric before); s asks d
    for a new seqno and then takes it."""
    links = {("s", "x"): 0.002, ("x", "d"): 0.002, ("s", "y"): 0.010, ("y", "d"): 0.010}
    p = Pump(["s", "x", "y", "d"], links)
    p.nodes["d"].originate(net(1), now=p.now)
    p.run(4.0)
    assert p.via("s", net(1)) == "x"
    seq0 = p.nodes["d"].seqno
    for x, y in (("s", "x"), ("x", "s")):
        p.nodes[x].neighbours[y].extra_cost = 400
    p.run(2.0)
    assert p.via("s", net(1)) == "y"
    assert p.nodes["d"].seqno != seq0 or p.nodes["s"].counters["seqno_requests_sent"] == 0


def test_seqno_request_travels_to_the_source_through_three_nodes() -> None:
    """Triangle a, b, c; c originates. a routes direct; then a's link to c gets costly:
    the route through b is better but not feasible at a (a announced a smaller metric),
    so a keeps its route (same source, still loop-free), asks b for a newer seqno of c,
    b forwards the request to c, c bumps its seqno, and a takes the path through b."""
    p = Pump(["a", "b", "c"], {("a", "b"): 0.005, ("b", "c"): 0.005, ("a", "c"): 0.005})
    p.nodes["c"].originate(net(1), now=p.now)
    p.run(3.0)
    a, b, c = p.nodes["a"], p.nodes["b"], p.nodes["c"]
    assert p.via("a", net(1)) == "c" and c.seqno == 0
    a.neighbours["c"].extra_cost = 400
    vias = []
    for _ in range(200):
        p.run(0.001)
        vias.append((p.via("a", net(1)), a.selected[net(1)].seqno))
        p.path("a", net(1))  # no loop at any time
    assert a.counters["updates_unfeasible"] >= 1
    assert a.counters["seqno_requests_sent"] >= 1
    assert b.counters["seqno_requests_forwarded"] >= 1
    assert c.counters["seqno_requests_in"] >= 1
    assert SeqnoChanged(1) in p.events["c"] and c.seqno == 1
    # Never without a route, never the unfeasible one: c until the new seqno (which
    # reaches a first on the direct link).
    first_b = vias.index(("b", 1))
    assert {v for v, _ in vias[:first_b]} == {"c"} and vias[0] == ("c", 0)
    assert set(vias[first_b:]) == {("b", 1)}
    assert a.selected[net(1)].metric == a.neighbour_cost("b") + b.neighbour_cost("c")


def forged(prefix: Prefix, router_id: bytes, interval: float = 4.0) -> bytes:
    """One Update of `prefix` from `router_id`, metric 0, seqno 1, as a liar sends it."""
    w = PacketWriter()
    w.add_update(prefix, router_id, 1, 0, round(interval * 100))
    (pkt,) = w.take()
    return pkt


def test_a_route_looping_round_a_ring_counts_to_infinity_and_dies() -> None:
    """Ring n1..n4. n1 hears, seemingly from n2, a route from a source nobody has (a
    forged packet); n1 announces it on, it comes back to n1 from the real n2 with a
    larger metric on the same source, and n1 keeps it (its current route): a loop. Each
    lap adds the ring's cost until the metric reaches INFINITY, which is unreachable,
    so the route dies everywhere. (Capped just below INFINITY, it went round for ever.)"""
    p = Pump([f"n{i}" for i in range(1, 5)], ring(4))
    p.run(3.0)
    p.nodes["n1"].receive(p.now, "n2", forged(net(7), b"ghost!!!"))
    p.run(1.0)
    assert any(net(7) in n.selected for n in p.nodes.values())
    p.run(60.0)
    assert [name for name, n in p.nodes.items() if net(7) in n.selected] == []
    # and the ring is quiet again: no Update about it any more
    before = sum(n.counters["updates_in"] for n in p.nodes.values())
    p.run(10.0)
    after = sum(n.counters["updates_in"] for n in p.nodes.values())
    assert after - before < 50


def test_our_own_router_id_on_a_route_from_a_neighbour_is_not_used() -> None:
    """A route carrying our router-id that we do not originate can only lead back to
    us (our old announcement, or a copy of our key elsewhere): it is dropped, counted as
    filtered, and never selected nor announced on."""
    p = Pump(["a", "b", "c"], {("a", "b"): 0.005, ("b", "c"): 0.005})
    p.run(2.0)
    a = p.nodes["a"]
    before = a.counters["updates_filtered"]
    a.receive(p.now, "b", forged(net(8), rid("a")))
    p.run(2.0)
    assert a.counters["updates_filtered"] == before + 1
    assert all(net(8) not in n.selected for n in p.nodes.values())


def test_a_source_that_restarted_without_its_seqno_is_asked_for_a_newer_one() -> None:
    """Line a - b - c; c restarts with seqno 0 after it had moved to 2: its Updates are
    not feasible at b (older seqno), b starves and asks c for a newer seqno than its
    feasibility distance's; c jumps past it and the route comes back along the line."""
    p = Pump(["a", "b", "c"], {("a", "b"): 0.005, ("b", "c"): 0.005})
    c = p.nodes["c"]
    c.originate(net(2), now=p.now)
    p.run(2.0)
    for _ in range(2):
        c.xroutes.bump(c.seqno + 1)  # as if answering two requests
        c.retract(net(2), now=p.now)
        c.originate(net(2), now=p.now)
        p.run(1.0)
    assert p.nodes["a"].selected[net(2)].seqno == 2
    # c restarts: a new Node, seqno 0, same router-id; the old links go down.
    p.cut.update({("b", "c"), ("c", "b")})
    p.run(2.0)
    assert p.via("b", net(2)) is None
    new_c = Node(NodeConfig(rid("c")), p.now)
    new_c.add_neighbour("b", tie=link_tiebreak(b"b", b"c"))
    p.nodes["c"] = new_c
    p.events["c"] = []
    new_c.originate(net(2), now=p.now)
    p.cut.clear()
    p.run(3.0)
    assert p.path("a", net(2)) == ["a", "b", "c"]
    assert p.nodes["b"].counters["seqno_requests_sent"] >= 1
    assert new_c.seqno != 0 and p.nodes["a"].selected[net(2)].seqno == new_c.seqno


def test_neighbour_down_after_dead_intervals() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.005})
    p.run(2.0)
    p.cut.update({("a", "b"), ("b", "a")})
    t0 = p.now
    p.run(1.0)
    assert NeighbourDown("b") in p.events["a"]
    assert p.now - t0 >= 3 * 0.2 - 0.25


# ---------------------------------------------------------------- source release


def _tlvs_sent(p: Pump, src: str, since: int) -> list[tuple[str, object]]:
    return [(dst, t) for (_, s, dst, data) in p.sent[since:] if s == src
            for t in decode_packet(data)]


@pytest.mark.parametrize("quiet", [False, True])
def test_anycast_source_change_waits_for_every_ack(quiet: bool) -> None:
    """o1 - a - b - o2, and c behind a; both origins announce one prefix. When a's link
    to o1 gets costly, a's best route is through b to o2: a does not switch source at
    once. It retracts the prefix with an AckReq to c, which routes through a to o1, keeps
    forwarding towards o1 meanwhile, and takes o2 only when c acknowledged. Neither o1 (its
    next hop towards the source it releases) nor b (which announces o2, the other source,
    so does not route through a) is asked. No loop at any time. The same in quiet mode,
    where every packet of triggered Updates carries an AckReq of its own besides."""
    prefix = net(7)
    p = Pump(["o1", "a", "b", "o2", "c"], {("o1", "a"): 0.005, ("a", "b"): 0.005,
                                           ("b", "o2"): 0.005, ("a", "c"): 0.005},
             quiet=quiet)
    for o in ("o1", "o2"):
        p.nodes[o].originate(prefix, now=p.now)
    p.run(3.0)
    a = p.nodes["a"]
    assert p.via("a", prefix) == "o1" and p.via("b", prefix) == "o2"
    assert p.via("c", prefix) == "a"
    assert not a.settling()
    since = len(p.sent)
    released: dict[int, set[str]] = {}  # each release's opaque: whom it waited for
    a.neighbours["o1"].extra_cost = 1000
    trace = []
    for _ in range(100):
        p.run(0.001)
        sel = a.selected.get(prefix)
        trace.append((p.now, None if sel is None else (sel.via, sel.router_id), a.settling()))
        for op, pending in a.requests.acks.items():
            released.setdefault(op, set()).update(pending.waiting)
        for n in p.nodes:
            p.path(n, prefix)  # raises on a loop
    # While settling, a keeps the old source (never none, never the new one yet).
    settling = [t for t in trace if t[2]]
    assert settling and {t[1] for t in settling} == {("o1", rid("o1"))}
    assert trace[-1][1:] == (("b", rid("o2")), False)
    # The retraction went to c with an AckReq, c acked before the switch.
    ops = set(released)
    assert released and all(waiting == {"c"} for waiting in released.values())
    release = [dst for (_, s, dst, data) in p.sent[since:] if s == "a"
               for t in decode_packet(data) if isinstance(t, AckReq) and t.opaque in ops]
    assert set(release) == {"c"}
    switch = next(t for t, sel, _ in trace if sel == ("b", rid("o2")))
    acks = [(t, s) for (t, s, dst, data) in p.sent[since:] if dst == "a"
            and any(isinstance(x, Ack) and x.opaque in ops for x in decode_packet(data))]
    assert {s for _, s in acks} == {"c"}
    assert all(t + 0.005 <= switch + 1e-9 for t, _ in acks)
    assert RouteSelected(prefix, "b", a.selected[prefix].metric, rid("o2")) in p.events["a"]
    assert not any(isinstance(e, RetractionAcked) for e in p.events["a"])  # no drain


def _two_origins_line(prefix: Prefix) -> Pump:
    """o1 - a - b - o2, 5 ms links, both origins announcing `prefix`, converged."""
    p = Pump(["o1", "a", "b", "o2"], {("o1", "a"): 0.005, ("a", "b"): 0.005,
                                      ("b", "o2"): 0.005})
    for o in ("o1", "o2"):
        p.nodes[o].originate(prefix, now=p.now)
    p.run(3.0)
    return p


def test_anycast_source_change_with_nobody_behind_is_at_once() -> None:
    """o1 - a - b - o2: a moves from o1 to o2 through b without waiting for any ack. o1
    is its next hop towards the source it leaves, and b announces the other source, so
    neither routes through a (engine._start_release); no loop on the way."""
    prefix = net(7)
    p = _two_origins_line(prefix)
    a = p.nodes["a"]
    assert p.via("a", prefix) == "o1" and p.via("b", prefix) == "o2"
    a.neighbours["o1"].extra_cost = 1000
    moved: float | None = None
    for _ in range(100):
        p.run(0.001)
        assert not a.settling()  # no release: nobody to wait for
        for n in p.nodes:
            p.path(n, prefix)  # raises on a loop
        if moved is None and p.via("a", prefix) == "b":
            moved = p.now
    assert moved is not None and p.path("a", prefix) == ["a", "b", "o2"]


def test_a_drained_origin_hands_over_to_the_other_one() -> None:
    """o1 retracts its instance: RetractionAcked once every neighbour knows, and every
    node ends on o2, with no loop on the way."""
    prefix = net(8)
    p = _two_origins_line(prefix)
    p.nodes["o1"].retract(prefix, now=p.now)
    for _ in range(100):
        p.run(0.001)
        for n in p.nodes:
            p.path(n, prefix)
    assert RetractionAcked(prefix) in p.events["o1"]
    assert p.path("o1", prefix) == ["o1", "a", "b", "o2"]
    assert not any(n.settling() for n in p.nodes.values())


def test_a_killed_origin_costs_its_neighbour_one_round_trip_to_the_other_side() -> None:
    """o1 - a - b - o2 with a slow link o2 - b: o2 retracts (its service died). b, on
    o2 until then, must not wait for o2's ack (o2 is the source it releases, and its
    next hop): b takes o1 after one round trip to a, not after one to o2 as well."""
    prefix = net(9)
    slow, fast = 0.020, 0.004
    costly = {("a", "b"): 100, ("b", "a"): 100}  # b stays on o2 despite the slow link
    p = Pump(["o1", "a", "b", "o2"], {("o1", "a"): fast, ("a", "b"): fast,
                                      ("b", "o2"): slow}, extra=costly)
    for o in ("o1", "o2"):
        p.nodes[o].originate(prefix, now=p.now)
    p.run(3.0)
    assert p.path("b", prefix) == ["b", "o2"] and p.path("a", prefix) == ["a", "o1"]
    t0 = p.now
    p.nodes["o2"].retract(prefix, now=p.now)
    switched: float | None = None
    for _ in range(200):
        p.run(0.0005)
        for n in p.nodes:
            p.path(n, prefix)  # raises on a loop
        if switched is None and p.via("b", prefix) == "a":
            switched = p.now
    assert switched is not None and p.path("b", prefix) == ["b", "a", "o1"]
    # One way from o2, one round trip to a: well before o2's ack could come back.
    assert switched - t0 < 2 * slow
    assert not any(n.settling() for n in p.nodes.values())


# ---------------------------------------------------------------- restart hold


def test_hold_is_not_cancelled_by_a_regular_hello() -> None:
    """After hold(), the node sends no regular Hello (which would promise 200 ms again):
    its neighbours keep it up for the held time even while its timers still run."""
    p = Pump(["a", "b"], {("a", "b"): 0.005})
    p.run(2.0)
    p.nodes["a"].restart_hold(6.0, now=p.now)
    t_hold = p.now
    p.run(1.5)  # a's timers keep firing (the daemon is still waiting on its last apply)
    hellos_after = [d for (t, src, _, d) in p.sent if src == "a" and t > t_hold + 1e-9
                    and d[4] == 4]
    assert hellos_after == []
    assert p.nodes["b"].neighbours["a"].up
    assert NeighbourDown("a") not in p.events["b"]


# ---------------------------------------------------------------- robustness


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_receive_accepts_any_bytes(data: bytes) -> None:
    node = Node(NodeConfig(rid("a")), 0.0)
    node.add_neighbour("b", tie=7)
    node.receive(0.0, "b", data)
    node.receive(0.1, "b", b"\x2a\x02" + len(data).to_bytes(2, "big") + data)
    node.handle_timer(0.2)
    node.datagrams_to_send()


# ---------------------------------------------------------------- RFC 8966 neighbours


def _hellos(p: Pump, src: str, after: float = 0.0) -> list[object]:
    from wgcast.babel.wire import Hello
    return [t for (at, s, _, d) in p.sent if s == src and at >= after
            for t in decode_packet(d) if isinstance(t, Hello)]


def test_multicast_neighbour_gets_multicast_hellos_hold_included() -> None:
    """babeld keeps a neighbour only while it hears its multicast Hellos: a neighbour
    added with multicast=True gets Hellos with the unicast flag clear, the restart-hold
    Hello too; the others keep the unicast flag."""
    from wgcast.babel.wire import HELLO_UNICAST, Hello
    p = Pump(["a", "b"], {})
    p.nodes["a"].add_neighbour("b", multicast=True)
    p.nodes["b"].add_neighbour("a")
    p.delay[("a", "b")] = p.delay[("b", "a")] = 0.005
    p.run(2.0)
    assert p.nodes["a"].neighbours["b"].up and p.nodes["b"].neighbours["a"].up
    a_hellos = _hellos(p, "a")
    assert a_hellos and all(isinstance(h, Hello) and not h.flags & HELLO_UNICAST
                            for h in a_hellos)
    b_hellos = _hellos(p, "b")
    assert b_hellos and all(isinstance(h, Hello) and h.flags & HELLO_UNICAST
                            for h in b_hellos)
    t = p.now
    p.nodes["a"].restart_hold(6.0, now=t)
    p.run(0.1)
    held = _hellos(p, "a", after=t)
    assert len(held) == 1 and isinstance(held[0], Hello)
    assert not held[0].flags & HELLO_UNICAST and held[0].interval == 200


def test_ipv4_updates_go_as_v4_via_v6_and_all_three_forms_are_accepted() -> None:
    """IPv4 routes leave as AE 4 (RFC 9229: the next hop is the IPv6 link-local
    address); from others AE 1 (with or without a Next Hop TLV) and AE 4 are taken."""
    from wgcast.babel.wire import (
        AE_IPV4,
        AE_V4V6,
        IHU,
        TLV,
        Hello,
        NextHop,
        RouterId,
        Timestamp,
        Update,
        encode_packet,
    )
    v4 = ipaddress.ip_network("10.9.8.0/24")
    p = Pump(["a", "b"], {("a", "b"): 0.005})
    p.nodes["a"].originate(v4, now=p.now)
    p.run(2.0)
    assert p.via("b", v4) == "a"
    ups = [t for (_, s, _, d) in p.sent if s == "a" for t in decode_packet(d)
           if isinstance(t, Update) and t.plen == 24]
    assert ups and all(u.ae == AE_V4V6 for u in ups)
    # A generic speaker "x" (babeld-like) sends the three forms to a fresh node.
    n = Node(NodeConfig(rid("n")), 0.0)
    n.add_neighbour("x", multicast=True)
    hello: list[TLV] = [Hello(0, 1, 400, (Timestamp((1,)),)), IHU(0, 96, 1200, b"")]
    n.receive(0.0, "x", encode_packet(hello))
    n.handle_timer(0.01)
    n.datagrams_to_send()
    xr = b"\x02\x00\x00\x00\x00\x00\x00\x01"
    forms: dict[Prefix, list[TLV]] = {
        ipaddress.ip_network("10.1.0.0/16"): [Update(AE_IPV4, 0, 16, 0, 400, 5, 96,
                                                      bytes((10, 1)))],
        ipaddress.ip_network("10.2.0.0/16"): [NextHop(AE_IPV4, bytes((10, 0, 0, 2))),
                                              Update(AE_IPV4, 0, 16, 0, 400, 5, 96,
                                                     bytes((10, 2)))],
        ipaddress.ip_network("10.3.0.0/16"): [Update(AE_V4V6, 0, 16, 0, 400, 5, 96,
                                                      bytes((10, 3)))],
    }
    for tlvs in forms.values():
        n.receive(0.02, "x", encode_packet([hello[0], hello[1], RouterId(xr), *tlvs]))
    for prefix in forms:
        assert n.selected[prefix].via == "x", prefix
    assert n.counters["packets_bad"] == 0


def test_ihu_answers_hellos_without_timestamps() -> None:
    """BIRD 2.0 sends Hellos without a timestamp: it still gets IHUs (without the echo),
    so it can use the link; the cost is then the base cost, without an RTT term."""
    from wgcast.babel.wire import IHU, Hello, Timestamp, encode_packet
    n = Node(NodeConfig(rid("n")), 0.0)
    n.add_neighbour("bird", multicast=True)
    n.receive(0.0, "bird", encode_packet([Hello(0, 1, 50)]))
    n.handle_timer(0.3)
    ihus = [t for _, d in n.datagrams_to_send() for t in decode_packet(d)
            if isinstance(t, IHU)]
    assert ihus and ihus[-1].rxcost == 32
    assert not any(isinstance(s, Timestamp) for s in ihus[-1].subtlvs)
    n.receive(0.4, "bird", encode_packet([Hello(0, 2, 50), IHU(0, 96, 150, b"")]))
    assert n.neighbours["bird"].up and n.neighbour_cost("bird") == 96


def test_ipv4_next_hop_neighbour_gets_ae1_after_a_next_hop() -> None:
    """A neighbour configured with an IPv4 next hop (BIRD 2.0, FRR) gets IPv4 routes as
    AE 1 Updates after a Next Hop TLV; the routes read the same; IPv6 ones unchanged."""
    from wgcast.babel.wire import AE_IPV4, AE_IPV6, NextHop, Update, resolve
    v4, v6 = ipaddress.ip_network("10.9.8.0/24"), net(5)
    p = Pump(["a", "b"], {})
    p.nodes["a"].add_neighbour("b", ipv4_next_hop=bytes((10, 99, 0, 1)))
    p.nodes["b"].add_neighbour("a")
    p.delay[("a", "b")] = p.delay[("b", "a")] = 0.005
    p.nodes["a"].originate(v4, now=p.now)
    p.nodes["a"].originate(v6, now=p.now)
    p.run(2.0)
    assert p.via("b", v4) == "a" and p.via("b", v6) == "a"
    pkts = [decode_packet(d) for (_, s, _, d) in p.sent if s == "a"]
    with_v4 = [t for t in pkts if any(isinstance(x, Update) and x.plen == 24 for x in t)]
    assert with_v4
    for tlvs in with_v4:
        ups = [x for x in tlvs if isinstance(x, Update) and x.ae != 0]
        assert {u.ae for u in ups} <= {AE_IPV4, AE_IPV6}
        first_v4 = next(i for i, x in enumerate(tlvs) if isinstance(x, Update)
                        and x.ae == AE_IPV4)
        assert any(isinstance(x, NextHop) and x.address == bytes((10, 99, 0, 1))
                   for x in tlvs[:first_v4])
        assert any(getattr(m, "prefix", None) == v4 for m in resolve(tlvs))


def test_deadlines_earliest_and_due_match_a_scan() -> None:
    """_Deadlines (the per-neighbour timers with a heap beside them) answers as a scan of
    the dict would, through any mix of sets, re-sets and removals."""
    from wgcast.babel.engine import _Deadlines

    rng = random.Random(7)
    d = _Deadlines()
    keys = [f"n{i}" for i in range(12)]
    now = 0.0
    for _ in range(5000):
        op = rng.random()
        k = rng.choice(keys)
        if op < 0.6:
            d[k] = now + rng.choice([0.0, rng.random(), 5.0, float("inf")])
        elif op < 0.75:
            d.pop(k, None)
        elif op < 0.85:
            due = d.due(now)
            assert sorted(due) == sorted(k2 for k2, t in d.items() if t <= now)
            for k2 in due:
                d[k2] = now + 1.0  # the caller moves them on
        else:
            now += rng.random() / 2
        assert d.earliest() == min(d.values(), default=float("inf"))
