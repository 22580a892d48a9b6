"""Multicast Hello streams (babel/hellostream.py): several nodes on one LAN, the way the
daemon's [[lan]] drives the engine: one stream per node sent to everybody, neighbours
created from the source address of what is heard, everything else by unicast."""

from __future__ import annotations

import heapq
import ipaddress
import itertools

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.wire import AE_LL, IHU, Hello, decode_packet

LL = {n: ipaddress.IPv6Address(f"fe80::{i + 1}") for i, n in enumerate("abcd")}
P = ipaddress.ip_network("fd00:a::/64")


def rid(name: str) -> bytes:
    return (name.encode() * 8)[:8]


class Lan:
    """Nodes on one broadcast segment: a stream's packet reaches every other node."""

    def __init__(self, names: list[str], delay: float = 0.002,
                 extra: dict[tuple[str, str], int] | None = None) -> None:
        self.now = 10.0
        self.delay = delay
        self.extra = extra or {}
        self.nodes = {n: Node(NodeConfig(rid(n)), self.now) for n in names}
        for n, node in self.nodes.items():
            node.add_hello_stream("ff02::1:6%lan", LL[n].packed, now=self.now)
        self.queue: list[tuple[float, int, str, str, bytes]] = []
        self.seq = itertools.count()
        #: (sender, destination: "*" for the group or a node name, packet)
        self.sent: list[tuple[str, str, bytes]] = []

    def name_of(self, addr: ipaddress.IPv6Address) -> str:
        return f"{addr}%lan"

    def _flush(self, n: str) -> None:
        for dest, data in self.nodes[n].datagrams_to_send():
            if dest == "ff02::1:6%lan":
                self.sent.append((n, "*", data))
                for m in self.nodes:
                    if m != n:
                        heapq.heappush(self.queue, (self.now + self.delay, next(self.seq),
                                                    n, m, data))
            else:
                to = next(m for m, a in LL.items() if self.name_of(a) == dest)
                self.sent.append((n, to, data))
                heapq.heappush(self.queue, (self.now + self.delay, next(self.seq), n, to,
                                            data))

    def _deliver(self, src: str, dst: str, data: bytes) -> None:
        node = self.nodes[dst]
        nid = self.name_of(LL[src])
        if nid not in node.neighbours:  # the daemon's _on_lan_datagrams
            node.add_neighbour(nid, self.extra.get((dst, src), 0), multicast=True)
            node.join_hello_stream(nid, "ff02::1:6%lan", LL[src].packed)
        node.receive(self.now, nid, data)
        self._flush(dst)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        for _ in range(1_000_000):
            timers = [(d, n) for n, node in self.nodes.items()
                      if (d := node.next_deadline()) is not None]
            t_timer, n_timer = min(timers) if timers else (float("inf"), "")
            t_msg = self.queue[0][0] if self.queue else float("inf")
            t = min(t_timer, t_msg)
            if t > end:
                break
            self.now = max(self.now, t)
            if t_msg <= t_timer:
                _, _, src, dst, data = heapq.heappop(self.queue)
                self._deliver(src, dst, data)
            else:
                self.nodes[n_timer].handle_timer(self.now)
                self._flush(n_timer)
        self.now = end

    def nb(self, at: str, of: str) -> str:
        return self.name_of(LL[of])


def test_three_nodes_meet_by_multicast_hellos_alone() -> None:
    """No neighbour is configured: each node's stream of multicast Hellos makes it known
    to the others, which answer in their own stream; all three end up adjacent."""
    lan = Lan(["a", "b", "c"])
    lan.run(2.0)
    for x in "abc":
        for y in "abc":
            if x != y:
                nb = lan.nodes[x].neighbours[lan.nb(x, y)]
                assert nb.up, (x, y)
                assert nb.rtt_ms is not None  # the IHU echo in the same packet as the Hello


def test_one_hello_sequence_per_source_and_ihus_addressed() -> None:
    """Every Hello a node sends goes to the group, with the unicast flag clear, in one
    sequence of consecutive seqnos; its IHUs name the neighbour they are for (AE 3);
    unicast packets carry no Hello (babeld tracks one Hello seqno per source address)."""
    lan = Lan(["a", "b", "c"])
    lan.run(3.0)
    for x in "abc":
        seqnos = []
        for _, dest, data in (s for s in lan.sent if s[0] == x):
            tlvs = decode_packet(data)
            hellos = [t for t in tlvs if isinstance(t, Hello)]
            if dest != "*":
                assert not hellos and not any(isinstance(t, IHU) for t in tlvs)
                continue
            assert len(hellos) == 1 and hellos[0].flags == 0
            seqnos.append(hellos[0].seqno)
            for ihu in (t for t in tlvs if isinstance(t, IHU)):
                assert ihu.ae == AE_LL
                assert ihu.address in {LL[y].packed[8:] for y in "abc" if y != x}
        assert len(seqnos) > 5
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqnos))


def test_an_ihu_for_another_neighbour_does_not_count() -> None:
    """c sees its link to a as expensive (a cost of its own): its IHUs to a say so. b
    hears those IHUs too (they share c's multicast packet with the one for b) but keeps
    its own cost to c, while a takes c's view."""
    lan = Lan(["a", "b", "c"], extra={("c", "a"): 500})
    lan.run(3.0)
    base = lan.nodes["a"].neighbour_cost(lan.nb("a", "b"))
    assert lan.nodes["a"].neighbour_cost(lan.nb("a", "c")) >= 500
    assert lan.nodes["b"].neighbour_cost(lan.nb("b", "c")) < 500
    assert abs(lan.nodes["b"].neighbour_cost(lan.nb("b", "c")) - base) < 64


def test_routes_and_retractions_flow_among_all() -> None:
    lan = Lan(["a", "b", "c"])
    lan.nodes["a"].originate(P, now=lan.now)
    lan.run(2.0)
    for x in "bc":
        sel = lan.nodes[x].selected.get(P)
        assert sel is not None and sel.via == lan.nb(x, "a")
    lan.nodes["a"].retract(P, now=lan.now)
    lan.run(1.0)
    assert P not in lan.nodes["b"].selected and P not in lan.nodes["c"].selected


def test_restart_hold_goes_to_the_stream_and_a_member_leaving_is_forgotten() -> None:
    lan = Lan(["a", "b"])
    lan.run(1.0)
    t = lan.now
    n = len(lan.sent)
    lan.nodes["a"].restart_hold(6.0, now=t)
    lan._flush("a")
    held = [(dest, tl) for s, dest, d in lan.sent[n:] if s == "a"
            for tl in decode_packet(d) if isinstance(tl, Hello)]
    assert held == [("*", held[0][1])] and held[0][1].interval == 200
    lan.run(1.0)
    assert not any(s == "a" for s, _, _ in lan.sent[n + 1:])  # no Hello after the hold
    b = lan.nodes["b"]
    b.remove_neighbour(lan.nb("b", "a"))
    b.handle_timer(lan.now)  # the stream goes on without it
    assert all(not isinstance(t, IHU) for _, d in b.datagrams_to_send()
               for t in decode_packet(d))
