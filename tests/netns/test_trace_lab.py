"""`wgcast trace` on a real mesh: a service killed on n1, and the traces of n1's and
n2's daemons (one host: one CLOCK_MONOTONIC) show the failover in causal order.

The lab randomises its id (namespace and interface names); it tears itself down."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.netns

if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
    pytest.skip("needs root and wireguard-go", allow_module_level=True)

from wgcast.lab.core import Lab  # noqa: E402
from wgcast.lab.system import wait_for  # noqa: E402


@pytest.fixture
def line3() -> Iterator[Lab]:
    """n1 - n2 - n3, instances (services) on n1 and n3; n2 is nearer to n1."""
    from wgcast.topology import Link, Topology

    topo = Topology(["n1", "n2", "n3"], [Link("n1", "n2", 2.0, id=0), Link("n2", "n3", 8.0, id=1)],
                    spec="line:3")
    with Lab(topo, instances="n1,n3") as lab:
        yield lab


def _first(events: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any]:
    for e in events:
        if e["kind"] == kind and all(e.get(k) == v for k, v in match.items()):
            return e
    raise AssertionError(f"no {kind} {match} in {[e['kind'] for e in events]}")


def test_a_service_kill_is_traced_in_causal_order_across_daemons(line3: Lab) -> None:
    lab = line3
    prefix = str(lab.groups[0].prefix)
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n1", 20, "n2 -> n1")
    since = lab.api("n2", {"cmd": "trace"})["now"]
    lab.fail("n1", "service")  # SIGKILL: the member's connection closes
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n3", 20, "n2 -> n3")

    def trace(node: str) -> list[dict[str, Any]]:
        return list(lab.api(node, {"cmd": "trace", "prefix": prefix,
                                   "since": since})["events"])

    wait_for(lambda: any(e["kind"] == "applied" and e.get("neighbour") == "n3"
                         for e in trace("n2")), 10, "n2's data plane applied")
    n1, n2 = trace("n1"), trace("n2")
    detected = _first(n1, "detected")
    retracted = _first(n1, "retracted")
    sent = _first(n1, "update_sent", metric=0xFFFF)
    heard = _first(n2, "update_received", neighbour="n1", metric=0xFFFF)
    selected = _first(n2, "selected", neighbour="n3")
    applied = _first(n2, "applied", neighbour="n3")
    assert "member" in detected["note"]
    assert detected["t"] <= retracted["t"] <= sent["t"] <= heard["t"] <= selected["t"] \
        <= applied["t"], (n1, n2)
    # Times are on the one host clock: the Update took at least the link's delay.
    assert heard["t"] - sent["t"] >= 0.002 * 0.9
    lab.restore("n1", "service")
