"""Liveness between wgcast neighbours (babel/liveness.py), h11-style: `Node`s pumped with
explicit `now` (test_engine.Pump), bytes between them: late-Hello probing, restart holds,
generic neighbours, Hellos on demand, the driver's signs of life."""

from __future__ import annotations

import itertools

import pytest
from test_engine import Pump, net, rid

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.errors import LocalProtocolError
from wgcast.babel.events import NeighbourDown
from wgcast.babel.liveness import (
    F_ANSWERS,
    F_PROBE,
    Liveness,
    LivenessParams,
    liveness_subtlv,
    parse_liveness,
)
from wgcast.babel.wire import HELLO_UNICAST, Hello, decode_packet, encode_packet

HELLO = 0.2
ALL_FAST = LivenessParams(idle_hello_interval=0.0)


def hellos(p: Pump, src: str, dst: str, since: float = 0.0) -> list[tuple[float, Hello]]:
    return [(t, tlv) for (t, s, d, data) in p.sent if s == src and d == dst and t >= since
            for tlv in decode_packet(data) if isinstance(tlv, Hello)]


def probes(p: Pump, src: str, dst: str, since: float = 0.0) -> int:
    return sum(1 for _, h in hellos(p, src, dst, since)
               if (lv := parse_liveness(h.subtlvs)) is not None and lv[0] & F_PROBE)


def down_at(p: Pump, name: str, nid: str, seconds: float, step: float = 0.001) -> float | None:
    """Run up to `seconds` in steps; the time `name` declared `nid` down, or None."""
    for _ in range(round(seconds / step)):
        p.run(step)
        if NeighbourDown(nid) in p.events[name]:
            return p.now
    return None


def test_a_dead_wgcast_neighbour_is_found_after_about_one_interval() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    p.cut.update({("a", "b"), ("b", "a")})
    t0 = p.now
    last = max(t for t, _ in hellos(p, "b", "a"))
    t_down = down_at(p, "a", "b", 1.0)
    assert t_down is not None
    assert probes(p, "a", "b", t0) >= 1
    # Down one interval after the last Hello sent, plus the probes (a few RTTs): well
    # before RFC 8966's `dead` (3) intervals of silence.
    assert t_down - last < 1.5 * HELLO < 3 * HELLO


def test_the_verdict_comes_one_timeout_after_the_first_probe() -> None:
    """All probes go within the first half of the slack (the timeout is the RTT plus a
    slack), and the verdict one timeout after the first: a later probe needs no whole
    timeout of its own, it still has an RTT and half the slack to be answered."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    rtt = p.nodes["a"].neighbours["b"].rtt_ms
    assert rtt is not None and abs(rtt - 10.0) < 1.0
    p.cut.update({("a", "b"), ("b", "a")})
    t0 = p.now
    t_down = down_at(p, "a", "b", 1.0, step=0.0002)
    assert t_down is not None
    sent = [t for t, h in hellos(p, "a", "b", t0)
            if (lv := parse_liveness(h.subtlvs)) and lv[0] & F_PROBE]
    assert len(sent) == LivenessParams().probes
    slack = 0.25 * rtt / 1000 + HELLO / 10  # no jitter in the pump
    assert sent[-1] - sent[0] <= slack / 2 + 1e-6
    assert t_down - sent[0] <= rtt / 1000 + slack + 0.0003


def test_every_probe_of_a_bunched_round_is_answered_within_a_budget() -> None:
    """Link jitter bunches a round's probes up (six within a millisecond): each gets its
    answer (one answer per ms made a false alarm of two lost answers). A flood of probes
    gets at most twice a round's worth of answers per Hello interval."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    b = p.nodes["b"]
    hello_seqno = 40000

    def probe(at: float) -> None:
        nonlocal hello_seqno
        hello_seqno += 1
        b.receive(at, "a", encode_packet([Hello(HELLO_UNICAST, hello_seqno, 5, (
            liveness_subtlv(F_ANSWERS | F_PROBE, HELLO),))]))

    def answers() -> int:
        return sum(1 for _, d in b.datagrams_to_send() for t in decode_packet(d)
                   if isinstance(t, Hello))

    b.datagrams_to_send()  # whatever was due before
    t0 = p.now
    for i in range(6):
        probe(t0 + i * 0.0001)
    assert answers() == 6
    k = LivenessParams().probes
    for i in range(100):  # a flood, within the same Hello interval
        probe(t0 + 0.001 + i * 0.0001)
    assert answers() == 2 * k - 6
    # A round that waited in our socket (we were stalled) gets one answer: we are alive
    # now, once is enough; six answers per neighbour would only slow our recovery.
    t1 = t0 + 1.0
    for i in range(6):
        hello_seqno += 1
        b.receive(t1 + i * 0.00005, "a", encode_packet([Hello(HELLO_UNICAST, hello_seqno, 5, (
            liveness_subtlv(F_ANSWERS | F_PROBE, HELLO),))]), arrived=t1 - 0.1 + i * 0.002)
    assert answers() == 1


def test_one_lost_hello_is_probed_and_the_neighbour_stays_up() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    last = max(t for t, _ in hellos(p, "b", "a"))
    p.run(last + HELLO / 2 - p.now)
    # Lose exactly b's next Hello: the direction b -> a is cut while it is sent.
    p.cut.add(("b", "a"))
    p.run(last + HELLO + 0.002 - p.now)
    p.cut.clear()
    t_lost = p.now
    p.run(2.0)
    assert NeighbourDown("b") not in p.events["a"]
    assert p.nodes["a"].neighbours["b"].up
    assert probes(p, "a", "b", t_lost) >= 1
    # b answered a probe at once: a Hello off its schedule, right after a probe arrived.
    probe_times = [t for t, h in hellos(p, "a", "b", t_lost)
                   if (lv := parse_liveness(h.subtlvs)) and lv[0] & F_PROBE]
    answers = [t for t, _ in hellos(p, "b", "a", t_lost)
               if any(abs(t - (pt + 0.005)) < 1e-6 for pt in probe_times)]
    assert answers


def test_a_restart_hold_is_not_probed_to_death() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    p.nodes["b"].restart_hold(6.0, now=p.now)
    p.run(0.02)
    p.cut.update({("a", "b"), ("b", "a")})  # b is gone, restarting
    t0 = p.now
    assert down_at(p, "a", "b", 5.0, step=0.01) is None
    assert probes(p, "a", "b", t0) == 0
    assert down_at(p, "a", "b", 2.0, step=0.01) is not None  # the hold ran out


def test_a_generic_neighbour_is_never_probed_and_keeps_rfc_detection() -> None:
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    b = p.nodes["b"]
    b.remove_neighbour("a")
    b.add_neighbour("a", multicast=True)  # RFC 8966 Hellos only, like babeld
    p.run(3.0)
    assert p.nodes["a"].neighbours["b"].up
    p.cut.update({("a", "b"), ("b", "a")})
    t0 = p.now
    last = max(t for t, _ in hellos(p, "b", "a"))
    t_down = down_at(p, "a", "b", 2.0)
    assert t_down is not None and t_down - last >= 3 * HELLO - 1e-9
    assert probes(p, "a", "b", t0) == 0


def test_fast_hellos_only_to_the_neighbour_that_routes_through_us() -> None:
    """x - b - y; y originates a prefix: x routes it through b (transit for x), so x asks
    b for fast Hellos; y routes nothing through b and gets idle ones."""
    live = LivenessParams(idle_hello_interval=2.0)
    p = Pump(["x", "b", "y"], {("x", "b"): 0.005, ("b", "y"): 0.005}, live=live)
    p.nodes["y"].originate(net(1), now=p.now)
    p.run(6.0)
    assert p.via("x", net(1)) == "b"
    since = p.now
    p.run(4.0)
    to_x = hellos(p, "b", "x", since)
    to_y = hellos(p, "b", "y", since)
    assert len(to_x) >= 4.0 / HELLO - 2
    assert len(to_y) <= 4.0 / 2.0 + 1
    assert all(h.interval == 20 for _, h in to_x)  # centiseconds
    assert all(h.interval == 200 for _, h in to_y)


def test_a_new_route_asks_for_fast_hellos_at_once() -> None:
    """Nothing routed: idle Hellos both ways. When y starts originating, x asks b for fast
    Hellos in its next packet, not at its next idle Hello."""
    live = LivenessParams(idle_hello_interval=2.0)
    p = Pump(["x", "b", "y"], {("x", "b"): 0.005, ("b", "y"): 0.005}, live=live)
    p.run(6.0)
    assert hellos(p, "b", "x", p.now - 2.5)[-1][1].interval == 200
    p.nodes["y"].originate(net(1), now=p.now)
    t0 = p.now
    p.run(0.1)
    fast = [t for t, h in hellos(p, "b", "x", t0) if h.interval == 20]
    assert fast and fast[0] - t0 < 0.05


def test_the_drivers_sign_of_life_postpones_probing() -> None:
    """Traffic WireGuard counted (`Node.heard`) postpones probing by an interval (not
    more: probing must begin before the RFC expiry, which then waits for its verdict)."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    last = max(t for t, _ in hellos(p, "b", "a"))
    p.run(last + 0.006 - p.now)  # b's last Hello has arrived
    p.cut.add(("b", "a"))  # b's packets no longer reach a, but WireGuard says b sends
    t0 = p.now
    a = p.nodes["a"]
    for _ in range(35):  # until 0.35 s after b's last Hello: due at 0.2, postponed to 0.4
        a.heard("b", p.now)
        p.run(0.01)
    assert probes(p, "a", "b", t0) == 0
    assert NeighbourDown("b") not in p.events["a"]
    # Without it, the probes take b down.
    assert down_at(p, "a", "b", 1.0) is not None
    assert probes(p, "a", "b", t0) >= 1


def test_liveness_params_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        LivenessParams(idle_hello_interval=-1)
    with pytest.raises(ValueError):
        LivenessParams(probes=0)
    node = Node(NodeConfig(rid("a"), liveness=ALL_FAST), 0.0)
    with pytest.raises(LocalProtocolError):
        node.heard("nobody", 0.0)


def test_a_next_hop_of_someone_with_an_alternative_is_watched_fast_too() -> None:
    """o1 - n2 - n3 - n4 - o5, o1 and o5 originate one anycast prefix (the lab's line:5).
    n4 sees only o5's instance (n3 routes through n4, so it poisons it to n4), but n3 has
    the other instance and asked n4 for fast Hellos: n4 asks o5 for fast Hellos too, and
    notices o5's death after about one Hello interval, not after `idle_hello`."""
    live = LivenessParams(idle_hello_interval=2.0)
    names = ["o1", "n2", "n3", "n4", "o5"]
    links = {(a, b): 0.005 for a, b in itertools.pairwise(names)}
    p = Pump(names, links, live=live)
    for o in ("o1", "o5"):
        p.nodes[o].originate(net(9), now=p.now)
    p.run(8.0)
    assert p.path("n3", net(9)) == ["n3", "n4", "o5"]
    since = p.now
    p.run(2.0)
    assert {h.interval for _, h in hellos(p, "o5", "n4", since)} == {20}
    p.cut.update({("n4", "o5"), ("o5", "n4")})
    last = max(t for t, _ in hellos(p, "o5", "n4"))
    t_down = down_at(p, "n4", "o5", 3.0)
    assert t_down is not None and t_down - last < 1.5 * HELLO
    p.run(1.0)
    assert p.path("n3", net(9)) == ["n3", "n2", "o1"]


def test_a_watched_neighbour_sends_fast_hellos_until_unwatched() -> None:
    """`Node.watch` (a peer with several endpoints, judged by the Hellos on each path):
    a and b route nothing through each other, so b sends idle Hellos; once a watches b,
    b's Hellos come at the Hello interval, and go idle again after a stops watching."""
    live = LivenessParams(idle_hello_interval=2.0)
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=live)
    p.run(6.0)
    assert hellos(p, "b", "a", p.now - 2.5)[-1][1].interval == 200
    p.nodes["a"].watch("b", now=p.now)
    t0 = p.now
    p.run(2.0)
    fast = [t for t, h in hellos(p, "b", "a", t0) if h.interval == 20]
    assert fast and fast[0] - t0 < 0.05 and len(fast) >= 2.0 / HELLO - 2
    p.nodes["a"].watch("b", on=False, now=p.now)
    p.run(4.0)
    assert hellos(p, "b", "a", p.now - 2.5)[-1][1].interval == 200
    with pytest.raises(LocalProtocolError):
        p.nodes["a"].watch("nobody", now=p.now)


def test_a_watched_neighbour_is_not_probed_but_expires_as_rfc_8966_says() -> None:
    """The driver fails a watched peer's path over before Babel's dead interval: a probe's
    verdict must not come first (it would take the neighbour down on a path about to be
    replaced); the RFC expiry still applies."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.nodes["a"].watch("b", now=p.now)
    p.run(3.0)
    p.cut.update({("a", "b"), ("b", "a")})
    t0 = p.now
    last = max(t for t, _ in hellos(p, "b", "a"))
    t_down = down_at(p, "a", "b", 2.0)
    assert t_down is not None and probes(p, "a", "b", t0) == 0
    assert t_down - last > 2.5 * HELLO


def test_a_verdict_looked_at_long_after_it_was_due_probes_once_more() -> None:
    """We were stalled (a burst to parse, a starved host) past the probes' verdict: the
    answers may sit unread in our socket, so the neighbour is probed once more, not
    buried; a verdict looked at on time still buries it."""
    lv = Liveness(LivenessParams())
    lv.add("b")
    hello = (liveness_subtlv(F_ANSWERS, HELLO),)
    lv.on_hello("b", 0.0, HELLO, hello)

    def rtt(_: str) -> float:
        return 0.01

    now = 0.0
    probed: list[str] = []
    for _ in range(1000):  # until the first probe (the Hello due at 0.2 s is late)
        now += 0.001
        probed, _dead = lv.due(now, ["b"], rtt)
        if probed:
            break
    assert probed == ["b"]
    deadline = lv.peers["b"].probe_deadline
    probed, dead = lv.due(deadline + 1.0, ["b"], rtt)  # stalled for a second
    assert (probed, dead) == (["b"], [])
    again = lv.peers["b"].probe_deadline
    assert again > deadline + 1.0
    assert lv.due(again, ["b"], rtt) == ([], ["b"])


def test_a_neighbour_silent_while_we_were_stalled_is_probed_before_burial() -> None:
    """Stalled past both the probing and the RFC expiry (a starved host: a burst to
    parse, no CPU), with the neighbour's Hellos lost meanwhile: one round of probes
    decides, the neighbour answers and stays up. This was the 16-node lab's storm:
    neighbours buried unasked, their routes retracted, seqnos bumped, more load."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    a = p.nodes["a"]
    last = max(t for t, _ in hellos(p, "b", "a"))
    p.run(last + 0.01 - p.now)
    p.cut.add(("b", "a"))  # b's Hellos are lost while a is stalled
    p.stalled["a"] = last + 4 * HELLO
    p.run(p.stalled["a"] - p.now)
    p.cut.clear()
    p.run(1.0)
    assert NeighbourDown("b") not in p.events["a"]
    assert a.neighbours["b"].up
    assert a.counters["expiry_probes"] == 1
    assert a.counters["neighbours_down_expiry"] == 0


def test_a_neighbour_whose_hellos_are_lost_but_updates_come_stays_up() -> None:
    """Full buffers on a starved host lose Hellos (all of them, answers to probes too)
    while the same neighbour's Updates get through: any Babel packet counts as a Hello
    for a wgcast neighbour's expiry; when they stop as well, it goes down."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    a, b = p.nodes["a"], p.nodes["b"]
    p.drop = lambda src, dst, data: src == "b" and any(isinstance(t, Hello)
                                                      for t in decode_packet(data))
    last = max(t for t, _ in hellos(p, "b", "a"))
    prefix = net(77)
    for i in range(50):  # 1 s, five Hello intervals: b announces a new metric every 20 ms
        b.originate(prefix, metric=i + 1, now=p.now)
        p.run(0.02)
    assert p.now - last > 3 * HELLO
    assert NeighbourDown("b") not in p.events["a"]
    assert a.counters["kept_by_packets"] >= 1
    t_quiet = p.now  # b says nothing more
    t_down = down_at(p, "a", "b", 2.0)
    assert t_down is not None and t_down - t_quiet < 3 * HELLO + 0.1


def test_wireguard_traffic_alone_does_not_keep_a_silent_neighbour_up() -> None:
    """WireGuard's counters move for a node whose daemon died (its data traffic): they
    postpone probing and end a round of probes, but do not keep the neighbour past the
    RFC expiry, and rounds come once an interval at most, not at every sign."""
    p = Pump(["a", "b"], {("a", "b"): 0.005}, live=ALL_FAST)
    p.run(3.0)
    a = p.nodes["a"]
    last = max(t for t, _ in hellos(p, "b", "a"))
    p.cut.update({("a", "b"), ("b", "a")})
    t_down = None
    for _ in range(100):
        a.heard("b", p.now)
        p.run(0.01)
        if NeighbourDown("b") in p.events["a"]:
            t_down = p.now
            break
    # The RFC expiry (from the Hello's arrival, 5 ms after it was sent), one last round
    # of probes (a few RTTs) and this loop's 10 ms step.
    assert t_down is not None and t_down - last <= 3 * HELLO + 0.07
    assert a.counters["probe_rounds"] <= 3
