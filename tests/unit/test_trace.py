"""The route-change trace (`daemon/trace.py`, `wgcast trace`): bounded rings of
timestamped events per anycast prefix, and what a real `Daemon` records in them on the
in-memory back ends (tests/unit/daemon_fakes.py) when an instance moves."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from daemon_fakes import Mesh, Node, config_text, running, until

from wgcast import keys
from wgcast.babel.wire import INFINITY
from wgcast.cli.trace import render
from wgcast.daemon.api import ApiError
from wgcast.daemon.trace import TraceEvent, TraceRing

ANY = ipaddress.ip_network("10.99.0.53/32")
OTHER = ipaddress.ip_network("10.98.0.1/32")
RID = bytes(range(1, 9))


def _ring(**kw: Any) -> TraceRing:
    return TraceRing([ipaddress.ip_network("10.99.0.0/16")], **kw)


def test_only_anycast_prefixes_are_traced() -> None:
    r = _ring()
    r.event(ANY, 1.0, "selected", neighbour="b", metric=96)
    r.event(OTHER, 1.0, "selected", neighbour="b", metric=96)
    r.event(ipaddress.ip_network("fd00::1/128"), 1.0, "selected")
    assert r.prefixes() == [ANY]
    assert r.view(OTHER) == {"prefix": "10.98.0.1/32", "traced": False, "events": []}
    r.set_anycast([ipaddress.ip_network("10.98.0.0/16")])
    r.event(OTHER, 2.0, "selected")
    assert r.prefixes() == [ANY, OTHER]


def test_a_refresh_is_not_recorded_a_change_is() -> None:
    r = _ring()
    r.heard(1.0, "b", ANY, RID, 5, 96)
    r.heard(2.0, "b", ANY, RID, 5, 96)  # the periodic refresh
    r.heard(2.5, "c", ANY, RID, 5, 192)  # another neighbour: its own memory
    r.heard(3.0, "b", ANY, RID, 5, INFINITY)  # the retraction
    evs = r.events(ANY)
    assert [(e.t, e.neighbour, e.metric) for e in evs] == [
        (1.0, "b", 96), (2.5, "c", 192), (3.0, "b", INFINITY)]
    r.forget_neighbour("b")
    r.heard(4.0, "b", ANY, RID, 5, INFINITY)  # after a down, heard again: recorded
    assert r.events(ANY)[-1].t == 4.0
    assert r.events(ANY, since=2.6) == r.events(ANY)[-2:]


def test_bounds_per_prefix_and_prefixes() -> None:
    r = _ring(per_prefix=3, max_prefixes=2)
    for k in range(5):
        r.event(ANY, float(k), "selected", metric=k)
    assert [e.metric for e in r.events(ANY)] == [2, 3, 4]
    p2, p3 = (ipaddress.ip_network(f"10.99.0.{i}/32") for i in (2, 3))
    r.event(p2, 6.0, "selected")
    r.event(ANY, 7.0, "selected")  # ANY is the most recent again
    r.event(p3, 8.0, "selected")  # p2, least recently changed, goes
    assert r.prefixes() == [ANY, p3]
    s = r.summary()
    assert s["recorded"] == 8 and s["dropped"] == 3 + 1
    with pytest.raises(ValueError):
        TraceRing([], per_prefix=0)


def test_hot_window_follows_the_last_event() -> None:
    r = _ring()
    assert not r.hot(0.0)
    r.event(ANY, 10.0, "detected", note="leave")
    assert r.hot(10.5) and not r.hot(13.0)


def _trio(tmp: Path) -> tuple[Mesh, Node, Node, Node]:
    """a with peers b and c; b and c may serve ANY."""
    pa, pb, pc = (keys.generate_private() for _ in range(3))
    ka, kb, kc = (keys.public_from_private(k) for k in (pa, pb, pc))
    mesh = Mesh()
    anycast = 'anycast = ["10.99.0.0/16"]'
    a = mesh.add("a", pa, config_text("a", str(tmp), {"b": kb, "c": kc}, anycast))
    b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka}, anycast))
    c = mesh.add("c", pc, config_text("c", str(tmp), {"a": ka}, anycast))
    return mesh, a, b, c


def _kinds(node: Node, since: float) -> list[tuple[str, str | None]]:
    return [(e.kind, e.neighbour) for e in node.daemon.trace.events(ANY, since)]


def test_a_withdrawal_is_traced_in_causal_order_across_daemons(tmp_path: Path) -> None:
    """b retracts its instance: b records the retraction and the Update it sent; a
    records the Update heard from b, its new selection (c) and the data plane applied,
    each later than the step before it (one clock for all daemons of the host)."""
    async def main() -> None:
        mesh, a, b, c = _trio(tmp_path)
        async with running(mesh):
            await until(lambda: a.daemon.status()["neighbours_up"] == 2, what="neighbours")
            await b.daemon.serve(ANY)
            await c.daemon.serve(ANY, metric=200)
            await until(lambda: a.device.holder(ANY) == b.public, what="ANY on b")
            await until(lambda: any(k == "update_received" and n == "c"
                                    for k, n in _kinds(a, 0.0)), what="c's Update")
            t0 = b.daemon.now()
            await b.daemon.unserve(ANY, wait=1.0)
            await until(lambda: a.device.holder(ANY) == c.public, what="ANY moved to c")
            await until(lambda: ("applied", "c") in _kinds(a, t0), what="a applied")
            # The first event of each kind (a retraction is sent a few times).
            tb: dict[str, TraceEvent] = {}
            for e in b.daemon.trace.events(ANY, t0):
                tb.setdefault(e.kind, e)
            assert {"retracted", "update_sent", "acked", "address_down"} <= tb.keys()
            assert tb["update_sent"].metric == INFINITY and "a" in tb["update_sent"].note
            ev = a.daemon.trace.events(ANY, t0)
            heard = next(e for e in ev if e.kind == "update_received" and e.neighbour == "b")
            sel = next(e for e in ev if e.kind == "selected" and e.neighbour == "c")
            applied = next(e for e in ev if e.kind == "applied" and e.neighbour == "c")
            assert heard.metric == INFINITY
            assert tb["retracted"].t <= tb["update_sent"].t <= heard.t <= sel.t <= applied.t
            # The API (`wgcast trace`) and its rendering.
            reply = await a.daemon._api_trace({"prefix": str(ANY), "since": t0})
            assert [e["kind"] for e in reply["events"]] == [e.kind for e in ev]
            assert "update_received" in render(reply) and "retraction" in render(reply)
            summary = await a.daemon._api_trace({})
            assert summary["prefixes"][0]["prefix"] == str(ANY)
            assert "1 prefixes traced" in render(summary)
            for bad in ({"prefix": "nonsense"}, {"prefix": 5}, {"prefix": str(ANY),
                                                                   "since": "x"}):
                with pytest.raises(ApiError):
                    await a.daemon._api_trace(bad)

    asyncio.run(main())
