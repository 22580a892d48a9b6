"""The engine, h11-style: a few `Node`s pumped with explicit `now`, bytes between them.

No simulator and no sockets: `Pump` delivers each datagram after its link's one-way delay
and runs every node's timers in time order, so a test reads as a conversation.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.events import LOCAL, NeighbourDown, NeighbourUp, RouteSelected
from wgcast.babel.neighbour import link_tiebreak
from wgcast.babel.wire import INFINITY, Prefix


def rid(name: str) -> bytes:
    return (name.encode() * 8)[:8]


def net(i: int) -> Prefix:
    return ipaddress.ip_network(f"fd00::{i:x}/128")


class Pump:
    """Nodes joined by links with a one-way delay each way; virtual time."""

    def __init__(self, names: list[str], links: dict[tuple[str, str], float],
                 ties: bool = True, extra: dict[tuple[str, str], int] | None = None,
                 start: float = 100.0) -> None:
        self.now = start
        self.nodes = {n: Node(NodeConfig(rid(n)), start) for n in names}
        self.delay: dict[tuple[str, str], float] = {}
        self.cut: set[tuple[str, str]] = set()
        for (a, b), d in links.items():
            self.delay[(a, b)] = self.delay[(b, a)] = d
            tie = link_tiebreak(a.encode(), b.encode()) if ties else 0
            for x, y in ((a, b), (b, a)):
                self.nodes[x].add_neighbour(y, (extra or {}).get((x, y), 0), tie=tie)
        self.queue: list[tuple[float, int, str, str, bytes]] = []
        self.seq = itertools.count()
        self.events: dict[str, list[object]] = {n: [] for n in names}
        self.sent: list[tuple[float, str, str, bytes]] = []
        self.received: dict[str, list[float]] = {n: [] for n in names}

    def _drain(self) -> None:
        for name, node in self.nodes.items():
            for nid, data in node.datagrams_to_send():
                self.sent.append((self.now, name, nid, data))
                if (name, nid) not in self.cut:
                    heapq.heappush(self.queue, (self.now + self.delay[(name, nid)],
                                                next(self.seq), nid, name, data))
            while (ev := node.next_event()) is not None:
                self.events[name].append(ev)

    def run(self, seconds: float) -> None:
        """Advance virtual time by `seconds`, delivering and firing timers in order."""
        end = self.now + seconds
        self._drain()
        for _ in range(1_000_000):
            t_timer = min((d for n in self.nodes.values()
                           if (d := n.next_deadline()) is not None), default=end + 1)
            t_pkt = self.queue[0][0] if self.queue else end + 1
            t = min(t_timer, t_pkt)
            if t > end:
                break
            self.now = t
            if t_pkt <= t_timer:
                _, _, dst, src, data = heapq.heappop(self.queue)
                self.nodes[dst].receive(t, src, data)
                self.received[dst].append(t)
            else:
                for n in self.nodes.values():
                    d = n.next_deadline()
                    if d is not None and d <= t:
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


def test_neighbour_down_after_dead_intervals() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.005})
    p.run(2.0)
    p.cut.update({("a", "b"), ("b", "a")})
    t0 = p.now
    p.run(1.0)
    assert NeighbourDown("b") in p.events["a"]
    assert p.now - t0 >= 3 * 0.2 - 0.25


# ---------------------------------------------------------------- restart hold


def test_hold_is_not_cancelled_by_a_regular_hello() -> None:
    """After hold(), the node sends no regular Hello (which would promise 200 ms again):
    its neighbours keep it up for the held time even while its timers still run."""
    p = Pump(["a", "b"], {("a", "b"): 0.005})
    p.run(2.0)
    p.nodes["a"].hold(6.0, now=p.now)
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
