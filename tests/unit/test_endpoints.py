"""endpoints.EndpointSet and the probe codec: pure, driven with a float clock."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast import keys
from wgcast.endpoints import EndpointParams, EndpointSet, SetEndpoint, canonical, endpoint_parts
from wgcast.probe import (
    REPLY,
    REQUEST,
    SIZE,
    Probe,
    ProbeKeys,
    ReplayWindow,
    decode,
    encode,
    is_probe,
    peek,
)

A, B, C = "198.51.100.1:51820", "198.51.100.2:51820", "[2001:db8::3]:51820"
_tokens = itertools.count()


def token() -> bytes:
    return next(_tokens).to_bytes(8, "big")


class World:
    """Drives one EndpointSet: probes answered after each address's RTT (None: dead),
    Hellos heard through the tunnel while the in-use address is alive."""

    def __init__(self, es: EndpointSet, rtt_ms: dict[str, float | None], t: float = 0.0,
                 hello: float = 0.2) -> None:
        self.es, self.rtt, self.t, self.hello = es, rtt_ms, t, hello
        self.pending: list[tuple[float, bytes]] = []
        self.decisions: list[tuple[float, SetEndpoint]] = []
        self.next_hello = t
        self.responder = True  # the peer answers probes

    def step(self, dt: float = 0.01) -> None:
        self.t += dt
        es, t = self.es, self.t
        for due, tok in [p for p in self.pending if p[0] <= t]:
            self.pending.remove((due, tok))
            es.probe_answered(due, tok)
        for addr in es.probe_due(t):
            tok = token()
            es.probe_sent(addr, t, tok)
            r = self.rtt.get(addr)
            if r is not None and self.responder:
                self.pending.append((t + r / 1000, tok))
        head = es.head()
        if t >= self.next_hello:
            self.next_hello = t + self.hello
            r = self.rtt.get(head) if head else None
            if r is not None:
                es.heard(t + r / 2000, self.hello, r)
        d = es.decide(t)
        if d is not None:
            self.decisions.append((t, d))

    def run(self, seconds: float, dt: float = 0.01) -> None:
        for _ in range(round(seconds / dt)):
            self.step(dt)


def params(**kw: float) -> EndpointParams:
    return EndpointParams(**kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- basics


def test_starts_with_the_first_configured() -> None:
    es = EndpointSet([A, B], 0.0)
    assert es.head() is None
    assert es.decide(0.0) == SetEndpoint(A, "start")
    assert es.head() == A and es.addresses() == [A, B]


def test_adopts_what_wireguard_uses_at_start() -> None:
    es = EndpointSet([A, B], 0.0, current=B)
    assert es.head() == B and not es.confirmed
    assert es.decide(0.0) is None


def test_no_configured_waits_for_the_peer() -> None:
    es = EndpointSet([], 0.0)
    assert es.decide(1.0) is None
    assert es.observe_endpoint(A, 2.0) is None
    assert es.head() == A and es.learned() == [A]


def test_first_configured_dead_switches_to_the_answering_one() -> None:
    es = EndpointSet([A, B], 0.0)
    w = World(es, {A: None, B: 20.0})
    w.run(1.0)
    starts = [d for _, d in w.decisions]
    assert starts[0] == SetEndpoint(A, "start")
    assert starts[1] == SetEndpoint(B, "unreachable")
    t_switch = w.decisions[1][0]
    assert t_switch <= 0.25  # 4 x the answering RTT, at least probe_timeout_min
    assert es.head() == B
    w.run(1.0)
    assert es.confirmed and len(w.decisions) == 2
    # Not blamed: the first one never worked, it is not a failure of a working path.
    assert es.snapshot(w.t)[1].failures == 0


def test_all_dead_rotates_with_backoff_in_configured_order() -> None:
    es = EndpointSet([A, B, C], 0.0, params(confirm_timeout=1.0, backoff_max=4.0))
    w = World(es, {A: None, B: None, C: None})
    w.run(20.0, dt=0.05)
    addrs = [d.addr for _, d in w.decisions]
    assert addrs[:5] == [A, B, C, A, B]
    gaps = [round(b[0] - a[0], 1) for a, b in itertools.pairwise(w.decisions)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 4.0]  # confirm_timeout, doubling, capped


def test_silence_fails_over_to_the_best_alive() -> None:
    es = EndpointSet([A, B, C], 0.0)
    rtt: dict[str, float | None] = {A: 10.0, B: 30.0, C: 20.0}
    w = World(es, rtt)
    w.run(5.0)
    assert es.head() == A and es.confirmed
    rtt[A] = None  # cut
    cut = w.t
    w.run(2.0)
    t, d = w.decisions[-1]
    assert d == SetEndpoint(C, "failover")
    # silence = 2.25 hello intervals after the last Hello, which came before the cut
    assert t - cut <= 2.25 * 0.2 + 0.02
    w.run(1.0)
    assert es.head() == C and es.confirmed
    view = {v.addr: v for v in es.snapshot(w.t)}
    assert view[A].failures == 1 and view[A].state in ("failed", "dead")


def test_silence_on_a_path_that_answers_probes_is_not_a_failure() -> None:
    """Hellos stop (a stalled WireGuard) but the path answers a probe sent after the
    last Hello: no failover, for up to confirm_timeout of silence."""
    es = EndpointSet([A, B], 0.0)
    rtt: dict[str, float | None] = {A: 10.0, B: 30.0}
    w = World(es, rtt)
    w.run(5.0)
    w.next_hello = w.t + 1.0  # no Hello for 1 s, the probes still answered
    w.run(2.0)
    assert [d.reason for _, d in w.decisions] == ["start"] and es.head() == A
    assert es.stats["deferred"] >= 1
    w.next_hello = w.t + 3.0  # longer than confirm_timeout: the tunnel is broken
    w.run(3.0)
    assert es.head() == B and w.decisions[-1][1].reason == "failover"


def test_silence_on_a_working_path_is_a_false_alarm() -> None:
    """Hellos and probe answers stop for a moment (a stalled machine): failover, but the
    old path answers the next probe, so the blame is taken back and the better path is
    used again after the hold time."""
    es = EndpointSet([A, B], 0.0)
    rtt: dict[str, float | None] = {A: 10.0, B: 30.0}
    w = World(es, rtt)
    w.run(5.0)
    w.next_hello = w.t + 0.7
    w.responder = False
    w.run(0.4)
    w.responder = True
    w.run(1.1)
    assert es.head() == B and w.decisions[-1][1].reason == "failover"
    w.run(2.0)
    view = {v.addr: v for v in es.snapshot(w.t)}
    assert view[A].failures == 0 and es.stats["false_alarms"] == 1
    w.run(15.0)
    assert es.head() == A and w.decisions[-1][1].reason == "better"


def test_no_flip_back_to_an_endpoint_that_just_failed() -> None:
    """A is cut, the set moves to B; a moment later B looks silent too (a stall): A has
    not answered since it failed, so the set stays on B rather than flip back."""
    es = EndpointSet([A, B], 0.0)
    rtt: dict[str, float | None] = {A: 10.0, B: 20.0}
    w = World(es, rtt)
    w.run(5.0)
    rtt[A] = None
    w.run(0.6)
    assert es.head() == B
    t = w.t
    assert es.path_failed(t, "neighbour down") is None  # A is not alive: stay
    assert es.head() == B and not es.confirmed
    w.run(1.0)
    assert es.head() == B and es.confirmed
    assert [d.addr for _, d in w.decisions] == [A, B]


def test_a_path_the_peer_left_is_not_a_failover_target() -> None:
    """A is cut; the peer notices first and WireGuard roams to B. B then looks silent
    for a moment: A (not answering since) is not chosen."""
    es = EndpointSet([A, B], 0.0)
    rtt: dict[str, float | None] = {A: 10.0, B: 20.0}
    w = World(es, rtt)
    w.run(5.0)
    rtt[A] = None
    w.run(0.2)
    assert es.observe_endpoint(B, w.t) is None and es.head() == B  # the roam, adopted
    w.run(0.3)
    assert es.path_failed(w.t) is None and es.head() == B


def test_peer_down_rotates_without_blame() -> None:
    es = EndpointSet([A, B], 0.0)
    rtt: dict[str, float | None] = {A: 10.0, B: 30.0}
    w = World(es, rtt)
    w.run(3.0)
    rtt[A] = rtt[B] = None
    w.responder = False
    w.run(10.0)
    assert w.decisions[1][1].reason == "failover"
    assert all(v.failures <= 1 for v in es.snapshot(w.t))


def test_silence_follows_the_peers_hello_interval() -> None:
    es = EndpointSet([A, B], 0.0)
    es.decide(0.0)
    es.heard(0.1, hello_interval=4.0)  # the peer promised its next Hello within 4s
    assert es.decide(5.0) is None
    assert es.decide(9.2) == SetEndpoint(B, "failover")


def test_handshake_too_old_fails() -> None:
    es = EndpointSet([A, B], 0.0, params(handshake_max_age=10.0))
    es.decide(0.0)
    es.heard(0.5, 100.0)  # long hello interval: silence does not trigger
    assert es.observe_handshake(5.0, 4.0) is None
    assert es.observe_handshake(12.0, 11.0) == SetEndpoint(B, "failover")


# ---------------------------------------------------------------------- hysteresis


def test_lower_rtt_wins_after_hold() -> None:
    es = EndpointSet([A, B], 0.0, params(switch_dwell=0.0))
    w = World(es, {A: 20.0, B: 10.0})
    w.run(20.0)
    better = [(t, d) for t, d in w.decisions if d.reason == "better"]
    assert [d.addr for _, d in better] == [B]
    # min_samples probes, then the hold time
    assert 3.0 <= better[0][0] <= 3.0 + 3 * 1.0 + 0.5


def test_small_difference_and_wobble_do_not_switch() -> None:
    es = EndpointSet([A, B], 0.0)
    rtt: dict[str, float | None] = {A: 22.0, B: 20.0}  # 10% better: within the margin
    w = World(es, rtt)
    w.run(30.0)
    assert [d.reason for _, d in w.decisions] == ["start"]
    for i in range(60):  # A wobbles around B
        rtt[A] = 16.0 if i % 2 else 26.0
        w.run(0.5)
    assert [d.reason for _, d in w.decisions] == ["start"]
    rtt[A] = 60.0  # a real change
    w.run(15.0)
    assert [d.reason for _, d in w.decisions] == ["start", "better"]
    assert es.head() == B


def test_challenger_must_stay_better_for_the_hold_time() -> None:
    es = EndpointSet([A, B], 0.0, params(switch_dwell=0.0, switch_hold=3.0))
    rtt: dict[str, float | None] = {A: 50.0, B: 10.0}
    w = World(es, rtt)
    for _ in range(20):  # better for 2 s, then not, again and again
        rtt[B] = 10.0
        w.run(2.0)
        rtt[B] = 200.0
        w.run(2.0)
    assert [d.reason for _, d in w.decisions] == ["start"]


def test_failed_endpoint_is_penalised_then_trusted_again() -> None:
    es = EndpointSet([A, B], 0.0)
    rtt: dict[str, float | None] = {A: 10.0, B: 20.0}
    w = World(es, rtt)
    w.run(5.0)
    rtt[A] = None
    w.run(3.0)
    assert es.head() == B
    rtt[A] = 10.0  # back, but it failed a moment ago
    w.run(20.0)
    assert es.head() == B
    w.run(200.0, dt=0.05)
    assert es.head() == A and w.decisions[-1][1].reason == "better"


# --------------------------------------------------------------------------- roaming


def test_roam_to_unknown_is_learned_and_adopted() -> None:
    es = EndpointSet([A, B], 0.0)
    es.decide(0.0)
    assert es.observe_endpoint("203.0.113.9:4000", 5.0) is None
    assert es.head() == "203.0.113.9:4000" and es.confirmed
    assert es.learned() == ["203.0.113.9:4000"]
    assert es.stats["roams"] == 1


def test_stale_roam_right_after_our_switch_is_reasserted() -> None:
    es = EndpointSet([A, B], 0.0, params(settle=2.0))
    es.observe_endpoint(A, 0.0)
    es.heard(0.1)
    d = es.path_failed(1.0)
    assert d == SetEndpoint(B, "failover")
    assert es.settling(1.5)
    assert es.observe_endpoint(A, 1.5) == SetEndpoint(B, "reassert")
    assert es.head() == B
    # After the settle time a move is the peer's choice.
    assert not es.settling(3.5)
    assert es.observe_endpoint(A, 3.5) is None and es.head() == A


def test_wireguard_without_endpoint_gets_the_head_again() -> None:
    es = EndpointSet([A], 0.0)
    es.decide(0.0)
    assert es.observe_endpoint(None, 1.0) == SetEndpoint(A, "reassert")


def test_learned_bounded_and_expiring() -> None:
    p = params(learned_max=4, learned_ttl=10.0)
    es = EndpointSet([A, B], 0.0, p)
    es.decide(0.0)
    assert es.observe_endpoint("203.0.113.250:1", 1.0) is not None  # settling: reassert
    for i in range(100):
        es.observe_endpoint(f"203.0.113.{i}:{1000 + i}", 3.0 + i * 0.01)
        assert len(es) <= 2 + 4
    assert es.learned() == [f"203.0.113.{i}:{1000 + i}" for i in range(96, 100)]
    es.observe_endpoint(A, 5.0)  # back on a configured one
    es.heard(14.0)
    assert es.decide(14.0) is None
    assert es.learned() == []
    assert es.stats["learned_expired"] == 4 and es.stats["learned_evicted"] == 96


def test_in_use_learned_is_not_expired() -> None:
    es = EndpointSet([A], 0.0, params(learned_ttl=5.0))
    es.observe_endpoint("203.0.113.1:1", 1.0)
    for t in range(2, 30):
        es.heard(float(t))
        es.decide(float(t) + 0.1)
    assert es.head() == "203.0.113.1:1" and "203.0.113.1:1" in es


def test_set_configured_keeps_measurements_and_demotes_in_use() -> None:
    es = EndpointSet([A, B], 0.0)
    w = World(es, {A: 10.0, B: 20.0})
    w.run(3.0)
    es.set_configured([B, C], w.t)
    assert es.head() == A and es.learned() == [A]
    assert es.addresses() == [B, C, A]
    view = {v.addr: v for v in es.snapshot(w.t)}
    assert view[B].rtt_ms is not None and view[B].kind == "configured"
    assert view[A].kind == "learned"


def _random_addr(rnd: random.Random) -> str:
    if rnd.random() < 0.3:
        return f"[2001:db8::{rnd.getrandbits(16):x}]:{rnd.randrange(1, 65536)}"
    return f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}:" \
        f"{rnd.randrange(1, 65536)}"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**64), n=st.integers(1000, 1500), k=st.integers(1, 16),
       n_configured=st.integers(0, 4))
def test_memory_is_bounded_whatever_the_peer_does(seed: int, n: int, k: int,
                                                  n_configured: int) -> None:
    """1000+ roams from random addresses (some repeated), probes, answers, Hellos."""
    rnd = random.Random(seed)
    p = params(learned_max=k, learned_ttl=30.0)
    configured = list(dict.fromkeys(_random_addr(rnd) for _ in range(n_configured)))
    es = EndpointSet(configured, 0.0, p)
    bound = len(configured) + k
    t = 0.0
    seen: set[str] = set()
    while len(seen) < n:
        t += rnd.uniform(0.0, 2.0)
        addr = _random_addr(rnd) if rnd.random() < 0.9 or not seen else rnd.choice(sorted(seen))
        seen.add(addr)
        es.observe_endpoint(addr, t)
        if rnd.random() < 0.3:
            es.heard(t)
        if rnd.random() < 0.5:
            for a in es.probe_due(t):
                es.probe_sent(a, t, rnd.randbytes(8))
        if rnd.random() < 0.2 and es.outstanding():
            es.probe_answered(t, rnd.randbytes(8))
        es.decide(t)
        assert len(es) <= bound
        assert es.outstanding() <= bound * p.max_outstanding
    assert es.stats["max_candidates"] <= bound
    # Old entries expire: long after the last roam only the configured and in-use remain.
    es.decide(t + p.learned_ttl + 1)
    assert len(es.learned()) <= 1 and set(configured) <= set(es.addresses())


# ---------------------------------------------------------------------------- probes


def test_probe_answer_matching() -> None:
    es = EndpointSet([A, B], 0.0)
    es.probe_sent(A, 1.0, b"t1")
    got = es.probe_answered(1.02, b"t1")
    assert got is not None and got[0] == A and got[1] == pytest.approx(20.0)
    assert es.probe_answered(1.03, b"t1") is None  # replayed
    assert es.probe_answered(1.03, b"zz") is None  # unknown
    es.probe_sent(B, 2.0, b"t2")
    es.decide(5.0)  # lost
    assert es.probe_answered(5.1, b"t2") is None
    v = {x.addr: x for x in es.snapshot(5.1)}
    assert v[B].loss == 1.0 and v[A].loss == 0.0


def test_outstanding_probes_are_bounded() -> None:
    es = EndpointSet([A], 0.0, params(max_outstanding=3))
    for i in range(50):
        es.probe_sent(A, 0.001 * i, i.to_bytes(8, "big"))
    assert es.outstanding() == 3


def test_canonical_addresses() -> None:
    assert canonical("198.51.100.1", 1) == "198.51.100.1:1"
    assert canonical("2001:DB8::1", 2) == "[2001:db8::1]:2"
    assert canonical("::ffff:198.51.100.1", 3) == "198.51.100.1:3"
    assert endpoint_parts("[2001:db8::1]:2") == ("2001:db8::1", 2)
    assert endpoint_parts("198.51.100.1:1") == ("198.51.100.1", 1)


def _pair() -> tuple[bytes, bytes, bytes, bytes]:
    a, b = keys.generate_private(), keys.generate_private()
    return a, keys.public_from_private(a), b, keys.public_from_private(b)


def test_probe_codec_roundtrip_and_keys_agree() -> None:
    a, pa, b, pb = _pair()
    ka = ProbeKeys.derive(keys.shared_secret(a, pb), pa, pb)
    kb = ProbeKeys.derive(keys.shared_secret(b, pa), pb, pa)
    assert ka == kb
    req = Probe(REQUEST, keys.router_id(pa), 7, b"12345678")
    data = encode(req, ka)
    assert len(data) == SIZE and is_probe(data) and peek(data) == (REQUEST, req.sender)
    assert decode(data, kb) == req
    rep = Probe(REPLY, keys.router_id(pb), 7, b"12345678", 15)
    assert decode(encode(rep, kb), ka) == rep


def test_probe_forgeries_are_rejected() -> None:
    a, pa, _b, pb = _pair()
    c, pc, _, _ = _pair()
    k = ProbeKeys.derive(keys.shared_secret(a, pb), pa, pb)
    other = ProbeKeys.derive(keys.shared_secret(c, pb), pc, pb)
    req = encode(Probe(REQUEST, keys.router_id(pa), 1, b"abcdefgh"), k)
    assert decode(req, other) is None  # a third party cannot produce it
    # a request reflected as a reply does not check
    reflected = req[:5] + bytes([REPLY]) + req[6:]
    assert decode(reflected, k) is None
    for i in range(SIZE):  # any flipped bit
        bad = bytearray(req)
        bad[i] ^= 0x40
        assert decode(bytes(bad), k) is None
    assert decode(req[:-1], k) is None and peek(b"") is None


@given(st.binary(max_size=80))
def test_decode_never_raises(data: bytes) -> None:
    k = ProbeKeys(b"k" * 32, b"r" * 32)
    assert decode(data, k) is None or is_probe(data)


def test_replay_window() -> None:
    w = ReplayWindow(window=1000, capacity=4)
    assert w.accept(10_000) and not w.accept(10_000)
    assert w.accept(9_500) and not w.accept(9_500)  # out of order, within the window
    assert not w.accept(8_999)  # below the window
    assert w.accept(20_000) and not w.accept(18_999) and w.accept(19_001)
    for c in (19_002, 19_003, 19_004):
        assert w.accept(c)
    assert len(w.seen) <= 4 and not w.accept(19_001)
    assert w.accept(11**9)


def test_replay_window_multipath_order() -> None:
    """Probes sent a few us apart to candidates with different delays arrive reversed."""
    w = ReplayWindow()
    t = 1_700_000_000_000_000
    for i in range(100):
        sent = [t + i * 250_000 + k for k in range(3)]
        assert all(w.accept(c) for c in reversed(sent))
        assert not any(w.accept(c) for c in sent)
