"""Quiet mode between wgcast nodes (babel/quiet.py), h11-style: `Pump`ed `Node`s.

Between two nodes that both say they do it: triggered updates are acknowledged and
resent, a digest replaces the periodic full update, a mismatch brings a full update, and
routes do not expire of silence. Toward a node that does not say it (babeld, BIRD, FRR):
RFC 8966 as before, periodic full updates included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from test_engine import Pump, net, rid

from wgcast.babel.wire import Digest, Hello, QuietCap, RouteRequest, Update, decode_packet
from wgcast.prefix import Prefix


def _tlvs(p: Pump, src: str, dst: str, since: int) -> list[object]:
    return [t for (_, s, d, data) in p.sent[since:] if s == src and d == dst
            for t in decode_packet(data)]


def _updates(p: Pump, src: str, dst: str, since: int) -> list[Update]:
    return [t for t in _tlvs(p, src, dst, since) if isinstance(t, Update)]


def _drop(p: Pump, src: str, dst: str, lose: Callable[[bytes], bool]) -> Callable[[], None]:
    """Lose the datagrams `src` sends `dst` for which `lose(data)`; returns the undo."""
    node = p.nodes[src]
    orig = node.datagrams_to_send

    def filtered() -> list[tuple[str, bytes]]:
        return [(nid, d) for nid, d in orig() if not (nid == dst and lose(d))]

    node.datagrams_to_send = filtered  # type: ignore[method-assign]

    def undo() -> None:
        node.datagrams_to_send = orig  # type: ignore[method-assign]
    return undo


def _has_update(data: bytes) -> bool:
    return any(isinstance(t, Update) for t in decode_packet(data))


def _pair(quiet: bool | set[str] = True) -> tuple[Pump, Prefix, Prefix]:
    pa, pb = net(0xA), net(0xB)
    p = Pump(["a", "b"], {("a", "b"): 0.005}, quiet=quiet)
    p.nodes["a"].originate(pa, now=p.now)
    p.nodes["b"].originate(pb, now=p.now)
    p.run(3.0)
    assert p.via("a", pb) == "b" and p.via("b", pa) == "a"
    return p, pa, pb


def test_quiet_neighbours_send_no_full_dumps_in_steady_state_only_digests() -> None:
    p, pa, pb = _pair()
    a, b = p.nodes["a"], p.nodes["b"]
    assert a.neighbours["b"].quiet and b.neighbours["a"].quiet
    since = len(p.sent)
    p.run(40.0)
    for src, dst in (("a", "b"), ("b", "a")):
        assert _updates(p, src, dst, since) == []
        digests = [t for t in _tlvs(p, src, dst, since) if isinstance(t, Digest)]
        assert len(digests) >= 8 and all(d.count == 1 for d in digests)
    assert a.counters["digest_mismatch"] == b.counters["digest_mismatch"] == 0
    assert a.counters["digests_in"] >= 8
    assert p.via("a", pb) == "b" and p.via("b", pa) == "a"


def test_a_lost_triggered_update_is_resent_and_acked() -> None:
    p, _, _ = _pair()
    a = p.nodes["a"]
    lost: list[bytes] = []

    def lose_first(data: bytes) -> bool:
        if not lost and _has_update(data):
            lost.append(data)
            return True
        return False

    undo = _drop(p, "a", "b", lose_first)
    pc = net(0xC)
    a.originate(pc, now=p.now)
    p.run(3.0)
    undo()
    assert lost, "the triggered update was not sent"
    assert p.via("b", pc) == "a"
    assert a.counters["deliveries_resent"] >= 1
    assert not a.requests.delivering("b")
    assert a.counters["deliveries_given_up"] == 0


def test_a_retraction_lost_until_the_sender_gives_up_is_swept_by_the_full_update() -> None:
    p, pa, _ = _pair()
    a, b = p.nodes["a"], p.nodes["b"]
    pc = net(0xC)
    a.originate(pc, now=p.now)
    p.run(2.0)
    assert p.via("b", pc) == "a"
    undo = _drop(p, "a", "b", _has_update)
    a.retract(pc, now=p.now)
    p.run(20.0)  # every resend lost: a gives up and sends a full update (lost too)
    undo()
    assert a.counters["deliveries_given_up"] >= 1
    assert p.via("b", pc) == "a"  # b still has the stale route
    p.run(20.0)
    assert p.via("b", pc) is None
    assert p.via("b", pa) == "a"
    assert b.counters["digest_mismatch"] + b.counters["digest_stale"] >= 1
    assert b.counters["routes_swept"] >= 1


def test_a_digest_mismatch_causes_a_resync_and_converges() -> None:
    p, pa, _ = _pair()
    a, b = p.nodes["a"], p.nodes["b"]
    # b loses its route from a behind the engine's back (a bug, a bit flip).
    b.routes.remove(pa, "a")
    b._select(pa)
    assert p.via("b", pa) is None
    p.run(10.0)
    assert b.counters["digest_mismatch"] >= 1
    assert b.counters["resyncs_requested"] >= 1
    assert p.via("b", pa) == "a"
    before = b.counters["digest_mismatch"]
    p.run(20.0)
    assert b.counters["digest_mismatch"] == before  # agreed again
    assert a.counters["digest_mismatch"] == 0


def test_a_generic_neighbour_still_gets_periodic_full_dumps() -> None:
    """a does quiet mode, b does not (as babeld, BIRD and FRR): RFC 8966 both ways."""
    p, pa, pb = _pair(quiet={"a"})
    a, b = p.nodes["a"], p.nodes["b"]
    hellos = [t for t in _tlvs(p, "a", "b", 0) if isinstance(t, Hello)]
    assert hellos and all(any(isinstance(s, QuietCap) for s in h.subtlvs) for h in hellos)
    assert not any(isinstance(s, QuietCap) for t in _tlvs(p, "b", "a", 0)
                   if isinstance(t, Hello) for s in t.subtlvs)
    assert not a.neighbours["b"].quiet and not b.neighbours["a"].quiet
    since = len(p.sent)
    p.run(20.0)
    for src, dst in (("a", "b"), ("b", "a")):
        ups = _updates(p, src, dst, since)
        assert len(ups) >= 4  # one full update every 4 s
        assert all(u.interval == 400 for u in ups)
        assert not any(isinstance(t, Digest) for t in _tlvs(p, src, dst, since))
    assert p.via("a", pb) == "b" and p.via("b", pa) == "a"


def test_routes_from_a_quiet_neighbour_do_not_expire_during_a_long_idle() -> None:
    """Updates carry the longest interval and a matching digest refreshes them: even
    with every digest lost for a minute, nothing expires; an hour idle neither."""
    p, pa, pb = _pair()
    a, b = p.nodes["a"], p.nodes["b"]
    route = b.routes.get(pa, "a")
    assert route is not None and route.interval > 600
    undo = _drop(p, "a", "b", lambda d: any(isinstance(t, Digest) for t in decode_packet(d)))
    p.run(60.0)
    undo()
    assert p.via("b", pa) == "a"
    p.run(3600.0)
    assert p.via("b", pa) == "a" and p.via("a", pb) == "b"
    assert a.counters["digest_mismatch"] == b.counters["digest_mismatch"] == 0


def test_a_restarted_quiet_neighbour_gets_a_full_update() -> None:
    """b restarts (a fresh engine, same router-id) before a notices: the new b asks for
    a full update and gets it."""
    p, pa, pb = _pair()
    old = p.nodes["b"]
    fresh = type(old)(old.config, p.now)
    fresh.add_neighbour("a", tie=old.neighbours["a"].tie)
    p.nodes["b"] = fresh
    fresh.originate(pb, now=p.now)
    p.run(5.0)
    assert p.via("b", pa) == "a" and p.via("a", pb) == "b"
    assert rid("b") == fresh.router_id


def test_an_update_the_filter_refused_is_asked_for_again() -> None:
    """b's accept policy refuses a's new prefix once (a rate limit, say): a sends no
    periodic full update, so b asks for that prefix at its next update tick."""
    p, _, _ = _pair()
    b = p.nodes["b"]
    pc = net(0xC)
    refused: list[Prefix] = []

    def accept(_nb: str, prefix: Prefix, _rid: bytes, _seqno: int, _sig: bytes) -> bool:
        if prefix == pc and not refused:
            refused.append(prefix)
            return False
        return True

    b.config = dataclasses.replace(b.config, accept=accept)
    p.nodes["a"].originate(pc, now=p.now)
    p.run(1.0)
    assert refused and p.via("b", pc) is None
    p.run(5.0)
    assert p.via("b", pc) == "a"
    assert b.counters["digest_mismatch"] == 0


def test_our_own_route_coming_back_is_not_asked_for_again() -> None:
    """a - b - c with a costly link a - c: c reaches a's prefix through b and announces
    it to a with a finite metric. a never takes a route with its own router-id, and
    asking c for it again would only bring the same Update back: a counts it in c's
    digest (no resync) but never asks for it (it did, every update interval)."""
    costly = {("a", "c"): 1000, ("c", "a"): 1000}
    p = Pump(["a", "b", "c"], {("a", "b"): 0.005, ("b", "c"): 0.005, ("a", "c"): 0.005},
             extra=costly)
    pa = net(0xA)
    a = p.nodes["a"]
    a.originate(pa, now=p.now)
    p.run(10.0)
    assert p.path("c", pa) == ["c", "b", "a"]
    since = len(p.sent)
    filtered = a.counters["updates_filtered"]
    p.run(20.0)
    assert filtered > 0  # it did come back (c announces it finite), and a refused it
    asked = [t for t in _tlvs(p, "a", "c", since) if isinstance(t, RouteRequest)]
    assert asked == []
    assert a.counters["digest_mismatch"] == 0
