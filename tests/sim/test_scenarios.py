"""Simulated meshes: loops never, right routes after quiescence (issue acceptance)."""

from __future__ import annotations

import pytest

from wgcast.sim.scenario import Scenario

CASES = [
    ("line:10", "origin"),
    ("ring:20", "origin"),
    ("grid:6x5", "node"),
    ("random:60:4", "origin"),
    ("random:40:4", "partition"),
    ("ring:16", "link"),
]


@pytest.mark.parametrize(("topology", "fail"), CASES)
def test_no_loops_and_nearest_routes(topology: str, fail: str) -> None:
    res = Scenario(topology=topology, anycast=(2, 3), fail=fail, seed=3).run()
    assert res["loops"] == 0, res.get("loop_sample")
    assert res["wrong_routes"] == 0, res["phases"]
    assert res["converged"], res["phases"]


def test_retraction_moves_every_node_within_twice_the_largest_path_delay() -> None:
    import networkx as nx

    sc = Scenario(topology="random:100:6", anycast=(1, 3), fail="none", seed=2)
    sc.originate_all()
    sc.run_phase("boot")
    net = sc.net
    prefix = sc.anycast_prefixes[0]
    owners = {net.nodes[n].router_id: n for n in net.nodes}

    def origin(n: str) -> str | None:
        sel = net.nodes[n].selected.get(prefix)
        return None if sel is None else owners.get(sel.router_id)

    counts: dict[str, int] = {}
    for n in net.nodes:
        o = origin(n)
        if o is not None:
            counts[o] = counts.get(o, 0) + 1
    target = max(counts, key=lambda o: counts[o])
    served = {n for n in net.nodes if n != target and origin(n) == target}
    assert len(served) > 10
    t0 = net.now
    moved: dict[str, float] = {}

    def observe(t: float, name: str, p: object, via: object) -> None:
        if p == prefix and name in served and name not in moved and origin(name) not in (
                None, target):
            moved[name] = t - t0

    net.observers.append(observe)
    net.retract(target, prefix)
    net.run_until(t0 + 10.0)
    assert set(moved) == served, sorted(served - set(moved))
    g = sc.topo.simple_graph() if sc.topo else nx.Graph()
    largest = max(max(d.values()) for _, d in nx.all_pairs_dijkstra_path_length(
        g, weight="delay_ms")) / 1000
    assert max(moved.values()) <= 2 * largest + 0.01, (max(moved.values()), largest)


def test_jitter_after_convergence_changes_no_route() -> None:
    sc = Scenario(topology="random:20:4", anycast=(2, 3), fail="none", jitter="20%", seed=4)
    sc.originate_all()
    sc.run_phase("boot")
    net = sc.net
    changes: list[tuple[float, str]] = []
    net.observers.append(lambda t, name, p, via: changes.append((t, name)))
    net.run_until(net.now + 600.0)
    assert changes == []
