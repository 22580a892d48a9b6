"""Origin signatures: signing and checking (wgcast.origin), the policy that refuses what
fails, the engine that carries a signature hop by hop unchanged, and the roster fields."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from click.testing import CliRunner

from wgcast.babel.engine import Node, NodeConfig
from wgcast.cli.main import main
from wgcast.daemon.peer_policy import (
    SIGNED,
    PeerPolicy,
    load_roster_serial,
    own_sign_key_problem,
    save_roster_serial,
)
from wgcast.keys import b64, generate_private, public_from_private, router_id
from wgcast.origin import BAD, EXPIRED, UNSIGNED, VALIDITY, Signer, Verifier, signing_public
from wgcast.prefix import Prefix
from wgcast.roster import RosterError, parse

NOW = 1_800_000_000.0
P = ipaddress.ip_network("fd5a:1::1/128")


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def member(wg_private: bytes) -> tuple[bytes, bytes, bytes]:
    """(WireGuard public key, router-id, sign key) of a node."""
    pub = public_from_private(wg_private)
    return pub, router_id(pub), signing_public(wg_private)


def test_sign_and_verify_with_memo_and_failures() -> None:
    w1, w2 = generate_private(), generate_private()
    _, rid1, sk1 = member(w1)
    _, rid2, _ = member(w2)
    clock = Clock()
    s1 = Signer(w1, rid1, clock)
    assert s1.public == sk1
    body = s1.sign(P, 7)
    assert len(body) == 68 and s1.sign(P, 7) is body  # one signature per epoch
    v = Verifier()
    assert v.check(sk1, P, rid1, 7, body, NOW) is None
    assert v.check(sk1, P, rid1, 7, body, NOW + 1) is None
    assert (v.verified, v.hits) == (1, 1)  # the repeat costs no verification
    assert v.check(sk1, P, rid1, 8, body, NOW) == BAD  # a forged seqno
    assert v.check(sk1, ipaddress.ip_network("fd5a:1::2/128"), rid1, 7, body, NOW) == BAD
    # A member forging another's router-id signs with its own key: fails under the
    # victim's key.
    s2 = Signer(w2, rid1, clock)
    assert v.check(sk1, P, rid1, 7, s2.sign(P, 7), NOW) == BAD
    assert v.check(sk1, P, rid2, 7, body, NOW) == BAD
    assert v.check(sk1, P, rid1, 7, b"", NOW) == UNSIGNED
    assert v.check(sk1, P, rid1, 7, body[:-1], NOW) == BAD
    assert v.check(sk1, P, rid1, 7, body, NOW + 2 * VALIDITY) == EXPIRED
    # A valid-until far ahead (a signer whose clock runs ahead) is refused.
    ahead = Signer(w1, rid1, Clock(NOW + 10 * VALIDITY))
    assert v.check(sk1, P, rid1, 7, ahead.sign(P, 7), NOW) == BAD


def test_signatures_are_renewed_every_half_validity() -> None:
    w = generate_private()
    _, rid, sk = member(w)
    clock = Clock()
    s = Signer(w, rid, clock)
    e0, first = s.epoch(), s.sign(P, 1)
    clock.t += VALIDITY / 2
    assert s.epoch() == e0 + 1
    second = s.sign(P, 1)
    assert second != first
    v = Verifier()
    # Either is valid now; the first one no longer once its validity (+ skew) is over.
    assert v.check(sk, P, rid, 1, first, clock.t) is None
    assert v.check(sk, P, rid, 1, second, clock.t) is None
    assert v.check(sk, P, rid, 1, first, clock.t + VALIDITY) == EXPIRED
    # Whenever it is signed, a signature is valid for at least half the validity.
    for k in range(50):
        clock.t = NOW + k * 37.3
        until = int.from_bytes(s.sign(P, 1)[:4], "big")
        assert VALIDITY / 2 - 1 <= until - clock.t <= VALIDITY
    s.enabled = False
    assert s.sign(P, 1) == b"" and s.epoch() == -1


def roster_text(members: list[tuple[str, bytes, list[str], bytes | None]],
                serial: int = 1) -> str:
    out = [f"serial = {serial}", 'mesh_prefixes = ["fd5a::/16"]']
    for name, pub, prefixes, sk in members:
        out += ["[[members]]", f'name = "{name}"', f'public_key = "{b64(pub)}"',
                "prefixes = [" + ", ".join(f'"{p}"' for p in prefixes) + "]"]
        if sk is not None:
            out.append(f'sign_key = "{b64(sk)}"')
    return "\n".join(out) + "\n"


def test_roster_sign_key_round_trip_and_errors() -> None:
    w1, w2 = generate_private(), generate_private()
    k1, _, sk1 = member(w1)
    k2, _, _ = member(w2)
    r = parse(roster_text([("n1", k1, ["fd5a:1::/48"], sk1), ("n2", k2, ["fd5a:2::/48"], None)]))
    assert r.members[0].sign_key == sk1 and r.members[1].sign_key is None
    again = parse(r.to_toml())
    assert again.canonical() == r.canonical() and again.members[0].sign_key == sk1
    with pytest.raises(RosterError, match=r"members\[1\].sign_key: also the sign_key of 'n1'"):
        parse(roster_text([("n1", k1, [], sk1), ("n2", k2, [], sk1)]))
    with pytest.raises(RosterError, match="sign_key: expected 32 bytes"):
        parse(roster_text([("n1", k1, [], b"short")]))
    # What a node says about its own entry.
    assert own_sign_key_problem(r, k1, sk1) is None
    assert "has no sign_key" in (own_sign_key_problem(r, k2, signing_public(w2)) or "")
    assert "every route it originates will be refused" in \
        (own_sign_key_problem(r, k1, signing_public(w2)) or "")
    assert "not a member" in (own_sign_key_problem(r, b"\x05" * 32, sk1) or "")


def test_cli_sign_key_prints_what_the_roster_needs(tmp_path: object) -> None:
    w = generate_private()
    res = CliRunner().invoke(main, ["roster", "sign-key", "-"], input=b64(w) + "\n")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == b64(signing_public(w))
    res = CliRunner().invoke(main, ["roster", "sign-key", "-"], input="nonsense\n")
    assert res.exit_code != 0 and "WireGuard key" in res.output


def signed_policy(max_routes: int = 100, max_rate: float = 1000.0) -> tuple[
        PeerPolicy, Signer, Signer, Signer, Clock]:
    """A policy of n0 with a roster of n0, n1 and n2 (the attacker, whose signer here
    forges n1's router-id); returns (policy, n1, forger, n0's own signer, clock)."""
    w0, w1, w2 = generate_private(), generate_private(), generate_private()
    k0, rid0, sk0 = member(w0)
    k1, rid1, sk1 = member(w1)
    k2, _, sk2 = member(w2)
    r = parse(roster_text([("n0", k0, ["fd5a:0::/48"], sk0), ("n1", k1, ["fd5a:1::/48"], sk1),
                           ("n2", k2, ["fd5a:2::/48"], sk2)]))
    clock = Clock()
    p = PeerPolicy([ipaddress.ip_network("fd5a:0::/48")], [], own_router_id=rid0,
                   max_routes=max_routes, roster=r, max_rate=max_rate)
    p.verifier = Verifier()
    p.own_sign_key = sk0
    p.wall = clock
    p.clock = clock
    # The routes a neighbour gave us: those the policy accepted (as the engine keeps them).
    p.routes_from = lambda nb: sum(1 for n, _ in p.trust if n == nb)
    p.has_route = lambda nb, prefix: (nb, prefix) in p.trust
    own = Signer(w0, rid0, clock)
    return p, Signer(w1, rid1, clock), Signer(w2, rid1, clock), own, clock


def test_policy_refuses_forged_origins() -> None:
    p, n1, forger, _rid2, _ = signed_policy()
    rid1 = n1.router_id
    assert p.accept("n2", P, rid1, 5, n1.sign(P, 5))  # n1's route passed on by n2
    assert p.trust[("n2", P)] == SIGNED
    assert not p.accept("n2", P, rid1, 6, forger.sign(P, 6))  # n2 forges n1's router-id
    assert not p.accept("n2", P, rid1, 30006, n1.sign(P, 5))  # a forged seqno
    assert not p.accept("n2", P, rid1, 7, b"")  # no signature at all
    more = ipaddress.ip_network("fd5a:1:0:1::/64")
    assert not p.accept("n2", more, rid1, 5, forger.sign(more, 5))  # a more-specific
    assert p.dropped_table() == {"bad signature": {"n2": 3}, "unsigned": {"n2": 1}}


def test_policy_tells_echoes_of_our_prefix_from_forgeries() -> None:
    p, _n1, forger, own, _ = signed_policy()
    ours = ipaddress.ip_network("fd5a:0::/48")
    # An echo carries our own signature: harmless, counted apart.
    assert not p.accept("n1", ours, p.own_router_id, 3, own.sign(ours, 3))
    # Our router-id without our signature: someone forges us.
    assert not p.accept("n1", ours, p.own_router_id, 3, forger.sign(ours, 3))
    assert not p.accept("n1", ours, p.own_router_id, 3, b"")
    # A more-specific of ours with our router-id: we never originate it.
    more = ipaddress.ip_network("fd5a:0:0:1::/64")
    assert not p.accept("n1", more, p.own_router_id, 3, own.sign(more, 3))
    assert p.dropped_table() == {"own prefix echoed": {"n1": 1},
                                 "claims our address": {"n1": 3}}
    assert p.dropped == 3


def test_policy_rate_limits_new_work_per_neighbour() -> None:
    p, n1, _forger, _, clock = signed_policy(max_routes=4, max_rate=1.0)
    rid1 = n1.router_id
    nets = [ipaddress.ip_network(f"fd5a:1::{i}/128") for i in range(1, 9)]
    got = [p.accept("n2", q, rid1, 1, n1.sign(q, 1)) for q in nets]
    # max_routes new routes, then the cap on routes (before any work on the signature).
    assert got == [True] * 4 + [False] * 4
    assert p.dropped_table() == {"over limit": {"n2": 4}}
    # New signatures of known routes cost a verification each: one token left, then
    # the rate (one a second).
    p.has_route = lambda _nb, _prefix: True
    got = [p.accept("n2", q, rid1, 2, n1.sign(q, 2)) for q in nets[:4]]
    assert got == [True, False, False, False]
    clock.t += 2.0  # two tokens back
    assert [p.accept("n2", q, rid1, 2, n1.sign(q, 2)) for q in nets[1:4]] == \
        [True, True, False]
    assert p.dropped_table()["over rate"] == {"n2": 4}
    # A signature verified before costs nothing; another neighbour has its own bucket.
    assert p.accept("n2", nets[0], rid1, 2, n1.sign(nets[0], 2))
    assert p.accept("n3", nets[5], rid1, 3, n1.sign(nets[5], 3))


def test_roster_serial_is_kept(tmp_path: object) -> None:
    state = f"{tmp_path}/wg0.state"
    assert load_roster_serial(state) is None
    save_roster_serial(state, 7)
    assert load_roster_serial(state) == 7
    with open(state + ".roster", "w") as f:
        f.write("{nonsense")
    assert load_roster_serial(state) is None  # logged, not raised


class _Signs:
    """A stand-in signer: the engine only moves the bytes it returns."""

    def __init__(self) -> None:
        self.calls = 0

    def sign(self, prefix: Prefix, seqno: int) -> bytes:
        self.calls += 1
        return b"sig:" + str(prefix).encode() + seqno.to_bytes(2, "big")

    def epoch(self) -> int:
        return 0


def test_engine_carries_the_origin_signature_hop_by_hop() -> None:
    """a - b - c: c signs, b passes c's signature on unchanged, a sees it in accept."""
    seen: list[tuple[str, bytes, int, bytes]] = []

    def accept(nb: str, prefix: Prefix, rid: bytes, seqno: int, sig: bytes) -> bool:
        seen.append((nb, rid, seqno, sig))
        return True

    rids = {n: (n.encode() * 8)[:8] for n in "abc"}
    signer = _Signs()
    nodes = {"a": Node(NodeConfig(rids["a"], accept=accept), 0.0),
             "b": Node(NodeConfig(rids["b"]), 0.0),
             "c": Node(NodeConfig(rids["c"], signer=signer), 0.0)}
    for x, y in (("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")):
        nodes[x].add_neighbour(y)
    nodes["c"].originate(P, now=0.0)
    t = 0.0
    for _ in range(400):  # 4 s in 10 ms steps, datagrams delivered at once
        t += 0.01
        for name, node in nodes.items():
            node.handle_timer(t)
            for nid, data in node.datagrams_to_send():
                nodes[nid].receive(t, name, data)
    assert nodes["a"].selected[P].router_id == rids["c"]
    want = signer.sign(P, nodes["c"].seqno)
    assert ("b", rids["c"], nodes["c"].seqno, want) in seen
    assert nodes["b"].route_signature("c", P) == want
    assert nodes["a"].route_signature("b", P) == want
    assert dataclasses.is_dataclass(nodes["a"].config)
