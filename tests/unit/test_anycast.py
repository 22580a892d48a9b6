"""anycast/: membership refcounts, join policy, health rise/fall + damping, group state."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast.anycast.group import Group
from wgcast.anycast.health import CheckParams, CheckState, Damping
from wgcast.anycast.member import Limits, MemberError, Registry
from wgcast.anycast.policy import Peer, Policy, refusal

N = ipaddress.ip_network
P1, P2, P3 = N("fd00:a::53/128"), N("fd00:a::54/128"), N("10.9.9.9/32")


# ------------------------------------------------------------------ member


def test_refcount_follows_connections() -> None:
    r = Registry()
    r.connect(1, 1000)
    r.connect(2, 1000)
    assert r.join(1, P1) == 1
    assert r.join(2, P1) == 2
    assert r.join(2, P2) == 1
    assert r.count(P1) == 2
    assert r.disconnect(2) == [P1, P2]
    assert r.count(P1) == 1 and r.count(P2) == 0
    assert r.leave(1, P1) == 0
    assert r.memberships(1) == frozenset()
    r.check()


def test_member_errors_have_stable_codes() -> None:
    r = Registry(Limits(connections_per_uid=2, memberships_per_connection=2, connections=3))
    r.connect(1, 7)
    r.connect(2, 7)
    with pytest.raises(MemberError) as e:
        r.connect(3, 7)
    assert e.value.code == "too_many_connections"
    r.connect(3, 0)  # root is bound by the total only
    with pytest.raises(MemberError) as e:
        r.connect(4, 0)
    assert e.value.code == "too_many_connections"
    r.join(1, P1)
    with pytest.raises(MemberError) as e:
        r.join(1, P1)
    assert e.value.code == "already_member"
    r.join(1, P2)
    with pytest.raises(MemberError) as e:
        r.join(1, P3)
    assert e.value.code == "too_many_memberships"
    with pytest.raises(MemberError) as e:
        r.leave(2, P1)
    assert e.value.code == "not_member"
    assert r.disconnect(99) == []
    r.disconnect(1)
    r.connect(5, 7)  # a slot of uid 7 is free again
    r.check()


ops = st.lists(st.tuples(st.sampled_from(["connect", "join", "leave", "disconnect"]),
                         st.integers(0, 5), st.sampled_from([P1, P2, P3]),
                         st.sampled_from([0, 1000, 1001])), max_size=80)


def _predict(model: dict[int, tuple[int, set[ipaddress.IPv6Network | ipaddress.IPv4Network]]],
             op: str, conn: int, prefix: ipaddress.IPv6Network | ipaddress.IPv4Network,
             uid: int) -> str | None:
    """The model's verdict: the MemberError code the registry must raise, or None."""
    if op == "connect":
        if conn in model:
            return "internal"
        if len(model) >= 5:
            return "too_many_connections"
        if uid != 0 and sum(1 for u, _ in model.values() if u == uid) >= 3:
            return "too_many_connections"
    elif op == "join":
        if conn not in model:
            return "internal"
        if prefix in model[conn][1]:
            return "already_member"
        if len(model[conn][1]) >= 2:
            return "too_many_memberships"
    elif op == "leave" and (conn not in model or prefix not in model[conn][1]):
        return "not_member"
    return None


@settings(max_examples=300, deadline=None)
@given(ops)
def test_registry_model(seq: list[tuple[str, int, ipaddress.IPv6Network, int]]) -> None:
    """Against a trivial model: counts = how many open connections hold each group, and
    the model predicts every refusal (its code) as well as every success."""
    r = Registry(Limits(connections_per_uid=3, memberships_per_connection=2, connections=5))
    model: dict[int, tuple[int, set[ipaddress.IPv6Network | ipaddress.IPv4Network]]] = {}
    for op, conn, prefix, uid in seq:
        want = _predict(model, op, conn, prefix, uid)
        got: str | None = None
        try:
            if op == "connect":
                r.connect(conn, uid)
            elif op == "join":
                r.join(conn, prefix)
            elif op == "leave":
                r.leave(conn, prefix)
            else:
                released = r.disconnect(conn)
                assert set(released) == model.get(conn, (0, set()))[1]
        except MemberError as e:
            got = e.code
        assert got == want, (op, conn, prefix, uid)
        if want is None:  # the model follows only what succeeded
            if op == "connect":
                model[conn] = (uid, set())
            elif op == "join":
                model[conn][1].add(prefix)
            elif op == "leave":
                model[conn][1].discard(prefix)
            else:
                model.pop(conn, None)
        r.check()
        for p in (P1, P2, P3):
            assert r.count(p) == sum(1 for _, h in model.values() if p in h)
        assert r.connections() == len(model) <= 5
        for u in (1000, 1001):
            assert r.connections(u) == sum(1 for v, _ in model.values() if v == u) <= 3
        for _, h in model.values():
            assert len(h) <= 2


def test_registry_model_sees_refusals() -> None:
    """The model above is not vacuous: these sequences are refused, with these codes."""
    m: dict[int, tuple[int, set[ipaddress.IPv6Network | ipaddress.IPv4Network]]] = {
        1: (1000, {P1, P2}), 2: (1000, set()), 3: (1000, set())}
    assert _predict(m, "connect", 4, P1, 1000) == "too_many_connections"
    assert _predict(m, "connect", 4, P1, 0) is None
    assert _predict(m, "join", 1, P3, 0) == "too_many_memberships"
    assert _predict(m, "join", 1, P1, 0) == "already_member"
    assert _predict(m, "leave", 2, P1, 0) == "not_member"
    assert _predict(m, "join", 9, P1, 0) == "internal"


# ------------------------------------------------------------------ policy


def test_policy() -> None:
    pol = Policy.of(uids=[1000], gids=[50])
    assert refusal(pol, Peer(1, 0, 0)) is None  # root always
    assert pol.allows(Peer(1, 1000, 1000))
    assert pol.allows(Peer(1, 1001, 50))
    assert pol.allows(Peer(1, 1002, 1002, frozenset({7, 50})))  # a supplementary group
    why = refusal(pol, Peer(1, 1003, 1003, frozenset({7})))
    assert why is not None and "1003" in why
    nobody = refusal(Policy(), Peer(1, 1000, 1000))
    assert nobody is not None and "allows nobody" in nobody


@given(st.integers(0, 70000), st.integers(0, 70000), st.frozensets(st.integers(0, 200)),
       st.frozensets(st.integers(0, 70000)), st.frozensets(st.integers(0, 200)))
def test_policy_property(uid: int, gid: int, groups: frozenset[int],
                         allow_u: frozenset[int], allow_g: frozenset[int]) -> None:
    peer = Peer(1, uid, gid, groups)
    ok = uid == 0 or uid in allow_u or bool(({gid} | groups) & allow_g)
    assert Policy(allow_u, allow_g).allows(peer) == ok


# ------------------------------------------------------------------ health


def run(state: CheckState, results: str, t: float = 0.0, dt: float = 1.0) -> float:
    for ch in results:
        t += dt
        state.record(ch == "1", t)
    return t


def test_rise_and_fall() -> None:
    s = CheckState(CheckParams(rise=2, fall=3, damping=None), 0.0)
    assert not s.passing  # a check starts failing
    assert not s.record(True, 1.0)
    assert s.record(True, 2.0) and s.passing
    run(s, "00", 2.0)
    assert s.passing  # two failures < fall
    assert s.record(True, 5.0) is False
    run(s, "000", 5.0)
    assert not s.passing
    assert s.since == 8.0


def test_single_failure_is_never_damped() -> None:
    s = CheckState(CheckParams(1, 1, Damping(half_life=10.0)), 0.0)
    t = run(s, "1")
    t = run(s, "0", t)
    assert not s.passing and not s.suppressed
    run(s, "1", t)
    assert s.passing


def test_flapping_is_suppressed_then_reused() -> None:
    d = Damping(penalty=1000, suppress=2500, reuse=750, half_life=10.0)
    s = CheckState(CheckParams(1, 1, d), 0.0)
    t = run(s, "101010")
    assert s.suppressed and not s.passing
    t = run(s, "1", t)
    assert not s.passing  # passes its probes, still damped
    until = s.reuse_at(t)
    assert until is not None and until > t
    assert until - t <= d.max_suppression
    assert not s.tick(until - 0.5)
    assert s.tick(until + 0.01) and s.passing


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), max_size=200), st.integers(1, 4), st.integers(1, 4))
def test_health_invariants(results: list[bool], rise: int, fall: int) -> None:
    """Without damping passing follows rise/fall exactly; damping only ever withholds."""
    d = Damping(half_life=5.0)
    plain = CheckState(CheckParams(rise, fall, None), 0.0)
    damped = CheckState(CheckParams(rise, fall, d), 0.0)
    streak_ok = streak_bad = 0
    expect = False
    for i, ok in enumerate(results):
        t = float(i + 1)
        plain.record(ok, t)
        damped.record(ok, t)
        streak_ok = streak_ok + 1 if ok else 0
        streak_bad = 0 if ok else streak_bad + 1
        if not expect and streak_ok >= rise:
            expect = True
        if expect and streak_bad >= fall:
            expect = False
        assert plain.passing == expect
        assert damped.up == expect
        assert not damped.passing or plain.passing
        assert damped.penalty(t) <= d.ceiling


# ------------------------------------------------------------------ group


def test_group_wanted() -> None:
    chk = CheckState(CheckParams(1, 1, None), 0.0)
    g = Group(P1, checks=[chk])
    assert not g.wanted and g.state == "idle"
    g.set_members(1)
    assert not g.wanted and g.state == "unhealthy"
    chk.record(True, 1.0)
    assert g.wanted and g.state == "starting"
    g.served = True
    assert g.state == "serving"
    g.drain()
    assert not g.wanted and g.state == "draining"
    g.served = False
    assert g.state == "drained"
    g.set_members(0)  # the last member left: the drain is over
    assert not g.draining and g.state == "idle"
    g.set_members(1)
    assert g.wanted


def test_static_group() -> None:
    g = Group(P1, static=True)
    assert g.wanted
    g.drain()
    g.set_members(0)
    assert g.draining  # a static group stays drained until undrain
    g.undrain()
    assert g.wanted
    with pytest.raises(ValueError):
        g.set_members(-1)


def test_a_drain_of_an_idle_group_does_not_stick() -> None:
    g = Group(P1)
    g.drain()  # nobody holds it: nothing to drain, and no last leave would end a drain
    assert not g.draining and g.state == "idle"
    g.set_members(1)
    assert g.wanted
