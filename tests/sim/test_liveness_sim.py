"""Hellos on demand in the simulator: which neighbours ask each other for fast Hellos on
line:5 (the case of bench/false_alarms_sim.py). Late-Hello probing starts on a late
Hello, so a benchmark of false neighbour-downs needs links on fast Hellos."""

from __future__ import annotations

import pytest

from wgcast.sim.scenario import TIMERS, Scenario, anycast_prefix


def announced_intervals(sc: Scenario) -> dict[tuple[str, str], float]:
    """(watcher, neighbour) -> the Hello interval the neighbour's Hellos announce."""
    out: dict[tuple[str, str], float] = {}
    for a, node in sc.net.nodes.items():
        for b in sc.net.neighbours[a]:
            st = node.neighbour_state(b)
            assert st is not None and st[0], (a, b)  # up
            out[(a, b)] = st[3]
    return out


@pytest.mark.parametrize("timers", ["default", "fast"])
def test_line_with_instances_at_both_ends_runs_every_link_on_fast_hellos(timers: str) -> None:
    sc = Scenario(topology="line:5", anycast=(0, 0), fail="none", seed=1, timers=timers)
    sc.originate_all()  # every node's unicast prefix: the inner nodes are transit
    for name in ("n1", "n5"):
        sc.net.originate(name, anycast_prefix(0))  # as `wgcast lab demo`
    sc.net.run_until(10.0)
    fast = TIMERS[timers]["hello_interval"]
    assert set(announced_intervals(sc).values()) == {fast}


def test_line_without_prefixes_idles_every_link() -> None:
    """Nothing routed, nothing to notice fast: every neighbour is on idle Hellos, where a
    lost Hello is rare and so are probe rounds (the old bench/false_alarms_sim.py)."""
    sc = Scenario(topology="line:5", anycast=(0, 0), fail="none", seed=1, unicast=False)
    sc.net.run_until(10.0)
    idle = next(iter(sc.net.nodes.values())).config.liveness.idle_hello_interval
    assert set(announced_intervals(sc).values()) == {idle}
