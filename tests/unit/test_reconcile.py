"""reconcile.plan: examples and properties (move semantics, ownership, minimality, order)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcast.dataplane.reconcile import holders, plan, simulate
from wgcast.dataplane.types import (
    AddAllowedIP,
    PeerKey,
    Prefix,
    RemoveAllowedIP,
    ReplaceAllowedIPs,
)
from wgcast.prefix import prefix_key

N = ipaddress.ip_network
A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


def test_nothing_to_do() -> None:
    actual = {A: {N("10.0.0.0/24")}, B: set()}
    assert plan({N("10.0.0.0/24"): A}, actual, {N("10.0.0.0/24")}) == []
    assert plan({}, {}, set()) == []


def test_move_is_one_add_without_removal() -> None:
    actual = {A: {N("10.0.0.0/24")}, B: set()}
    ops = plan({N("10.0.0.0/24"): B}, actual, {N("10.0.0.0/24")})
    assert ops == [AddAllowedIP(B, N("10.0.0.0/24"))]


def test_withdrawn_prefix_is_removed_last() -> None:
    p, q = N("10.0.0.0/24"), N("fd00::/64")
    actual = {A: {p}, B: {q}}
    ops = plan({q: A}, actual, {p, q})
    assert ops == [AddAllowedIP(A, q), RemoveAllowedIP(A, p)]


def test_unowned_prefixes_are_never_touched() -> None:
    static, ctl = N("172.16.0.0/12"), N("fe80::1/128")
    p = N("10.0.0.0/24")
    actual = {A: {static, ctl, p}, B: set()}
    # wgcast does not own static/ctl: they stay even though desired does not list them
    assert plan({}, actual, {p}) == [RemoveAllowedIP(A, p)]
    assert plan({p: B}, actual, {p}) == [AddAllowedIP(B, p)]


def test_owned_prefix_absent_everywhere_and_not_desired() -> None:
    p = N("10.0.0.0/24")
    assert plan({}, {A: set()}, {p}) == []


def test_order_adds_then_removals_sorted_per_peer() -> None:
    ps = [N(f"10.0.{i}.0/24") for i in range(6)] + [N("2001:db8::/32"), N("0.0.0.0/0")]
    actual = {A: set(ps[:4]), B: {ps[4], ps[5]}, C: set()}
    desired = {ps[0]: C, ps[1]: B, ps[6]: B, ps[7]: C, ps[2]: A, ps[4]: A}
    ops = plan(desired, actual, set(ps))
    assert ops == [
        AddAllowedIP(A, ps[4]),
        AddAllowedIP(B, ps[1]),
        AddAllowedIP(B, ps[6]),
        AddAllowedIP(C, ps[7]),  # 0.0.0.0/0 sorts before 10.0.0.0/24
        AddAllowedIP(C, ps[0]),
        RemoveAllowedIP(A, ps[3]),
        RemoveAllowedIP(B, ps[5]),
    ]


def test_rejects_impossible_inputs() -> None:
    p = N("10.0.0.0/24")
    with pytest.raises(ValueError, match="not in managed"):
        plan({p: A}, {A: set()}, set())
    with pytest.raises(ValueError, match="two peers"):
        plan({}, {A: {p}, B: {p}}, {p})


def test_simulate_models_move_semantics() -> None:
    p, q = N("10.0.0.0/24"), N("10.0.1.0/24")
    state = simulate(
        {A: {p}, B: {q}},
        [
            AddAllowedIP(B, p),  # moves
            RemoveAllowedIP(A, q),  # A does not hold q: no-op
            ReplaceAllowedIPs(C, (q,)),  # takes q from B, creates C
        ],
    )
    assert state == {A: set(), B: {p}, C: {q}}


def test_prefix_key_orders_v4_before_v6() -> None:
    ps = [N("::/0"), N("10.0.0.0/8"), N("10.0.0.0/16"), N("0.0.0.0/0"), N("fd00::/8")]
    assert sorted(ps, key=prefix_key) == [ps[3], ps[1], ps[2], ps[0], ps[4]]


# --------------------------------------------------------------------------- properties

PEERS = [bytes([i]) * 32 for i in range(4)]
POOL: list[Prefix] = [N(f"10.{i}.0.0/16") for i in range(12)] + [
    N(f"fd00:{i:x}::/32") for i in range(8)
]


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[dict[Prefix, PeerKey], dict[PeerKey, set[Prefix]], set[Prefix]]:
    peers = draw(st.lists(st.sampled_from(PEERS), min_size=1, max_size=4, unique=True))
    managed = set(draw(st.lists(st.sampled_from(POOL), unique=True)))
    # actual: each prefix of the pool held by at most one peer (any prefix, owned or not)
    actual: dict[PeerKey, set[Prefix]] = {k: set() for k in peers}
    for p in POOL:
        holder = draw(st.sampled_from([None, *peers]))
        if holder is not None:
            actual[holder].add(p)
    desired: dict[Prefix, PeerKey] = {}
    for p in sorted(managed, key=prefix_key):
        dest = draw(st.sampled_from([None, *peers]))
        if dest is not None:
            desired[p] = dest
    return desired, actual, managed


@settings(max_examples=300)
@given(scenarios())
def test_applying_plan_yields_desired_and_keeps_unowned(
    case: tuple[dict[Prefix, PeerKey], dict[PeerKey, set[Prefix]], set[Prefix]],
) -> None:
    desired, actual, managed = case
    ops = plan(desired, actual, managed)
    after = simulate(actual, ops)
    owner_after = holders(after)
    # owned prefixes: exactly desired
    assert {p: k for p, k in owner_after.items() if p in managed} == desired
    # unowned prefixes: untouched
    before = holders(actual)
    assert {p: k for p, k in owner_after.items() if p not in managed} == {
        p: k for p, k in before.items() if p not in managed
    }
    # no op names an unowned prefix
    assert all(op.prefix in managed for op in ops if not isinstance(op, ReplaceAllowedIPs))


@settings(max_examples=300)
@given(scenarios())
def test_plan_is_minimal_ordered_and_idempotent(
    case: tuple[dict[Prefix, PeerKey], dict[PeerKey, set[Prefix]], set[Prefix]],
) -> None:
    desired, actual, managed = case
    ops = plan(desired, actual, managed)
    before = holders(actual)
    differ = sum(1 for p, k in desired.items() if before.get(p) != k)
    removals = sum(1 for p in managed if p not in desired and p in before)
    assert len(ops) == differ + removals
    # adds/moves first, removals last; each group sorted by (peer, prefix)
    kinds = [isinstance(op, RemoveAllowedIP) for op in ops]
    assert kinds == sorted(kinds)
    adds = [op for op in ops if isinstance(op, AddAllowedIP)]
    rems = [op for op in ops if isinstance(op, RemoveAllowedIP)]
    for group in (adds, rems):
        keys = [(op.peer, prefix_key(op.prefix)) for op in group]
        assert keys == sorted(keys)
    # every removal names the current holder, so it is never a no-op
    assert all(before[op.prefix] == op.peer for op in rems)
    # once applied, there is nothing left to do
    assert plan(desired, simulate(actual, ops), managed) == []


@settings(max_examples=200)
@given(scenarios(), st.data())
def test_no_intermediate_state_blackholes_a_routed_prefix(
    case: tuple[dict[Prefix, PeerKey], dict[PeerKey, set[Prefix]], set[Prefix]],
    data: st.DataObject,
) -> None:
    """Cut the batch anywhere (a set is not atomic): a prefix that is routed before and
    after is routed in between, by its old or its new peer."""
    desired, actual, managed = case
    ops = plan(desired, actual, managed)
    cut = data.draw(st.integers(0, len(ops)))
    mid = holders(simulate(actual, ops[:cut]))
    before = holders(actual)
    for p, dest in desired.items():
        if p in before:
            assert mid.get(p) in (before[p], dest)


def test_reconcile_stays_pure() -> None:
    """DESIGN: reconcile.py imports no socket, asyncio, subprocess or pyroute2."""
    import subprocess
    import sys

    code = (
        "import sys, wgcast.dataplane.reconcile\n"
        "bad = {'asyncio', 'socket', 'subprocess', 'pyroute2', 'selectors'} & set(sys.modules)\n"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
