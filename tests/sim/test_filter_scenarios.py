"""Every packet delivered under WireGuard's source filter (issue 10), after quiescence.

Each scenario converges, fails (origin: the largest anycast catchment retracted; node:
the busiest transit node crashed, then restarted; link: the busiest link cut, then
restored), and after every quiescence every (node, prefix) pair must exchange a request
and its reply with strict reverse-path filtering at every hop (wgcast.sim.filter): 0
blackholed pairs, 0 loops, nearest routes. Equal delays make every path length tie
(alone, and with +-5% jitter: the RTT noise that picks among the ties in a real lab); the
random meshes get 2-20 ms delays with +-20% jitter.

On wgcast 0.1's engine (main at 2f4f40d) 12 of these failed on blackholed pairs, and
every random mesh too (bench/results/filter_before.json); selection by agreed costs and
symmetric tie-breaks (docs/source-filter.md) passes them all. random:300:6 takes
minutes per scenario: `slow`, run with WGCAST_SLOW=1. The
bench (bench/bench_filter.py) runs the same scenarios and keeps the figures.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from wgcast.sim.scenario import Scenario

#: Minutes per scenario: run only with WGCAST_SLOW=1 (no conftest: tests/netns imports its
#: own `conftest` module by name, and a second one under tests/ would shadow it).
SLOW_ONLY_IF_ASKED = pytest.mark.skipif(os.environ.get("WGCAST_SLOW") != "1",
                                        reason="slow: set WGCAST_SLOW=1 to run")
EQUAL: dict[str, Any] = {"delay": "5ms", "jitter": "0", "anycast": (2, 2)}
JITTER: dict[str, Any] = {"delay": "2-20ms", "jitter": "20%", "anycast": (5, 3)}
#: Equal delays with +-5% jitter: a real lab's RTT noise (it picks among the ties there).
NOISY: dict[str, Any] = {"delay": "5ms", "jitter": "5%", "anycast": (2, 2)}

def cases() -> list[Any]:
    out = []
    for topo, kw, tag in [("ring:4", EQUAL, ""), ("ring:6", EQUAL, ""),
                          ("grid:4x4", EQUAL, ""), ("full:6", EQUAL, ""),
                          ("ring:4", NOISY, "noisy"), ("ring:6", NOISY, "noisy"),
                          ("grid:4x4", NOISY, "noisy"), ("full:6", NOISY, "noisy"),
                          ("random:40:4", JITTER, ""), ("random:100:6", JITTER, ""),
                          ("random:300:6", JITTER, "")]:
        for fail in ("origin", "node", "link"):
            marks = []
            # random:100:6 takes 40 s (origin) to a minute or more (node, link) each: with
            # WGCAST_SLOW=1 only (make test's host stages must stay under 10 minutes);
            # random:40:4 covers the three faults on a random mesh in every run.
            if topo in ("random:300:6", "random:100:6"):
                marks += [pytest.mark.slow, SLOW_ONLY_IF_ASKED]
            name = f"{topo}-{tag}-{fail}" if tag else f"{topo}-{fail}"
            out.append(pytest.param(topo, fail, kw, marks=marks, id=name))
    return out


@pytest.mark.parametrize(("topology", "fail", "kw"), cases())
def test_no_blackholed_pair_after_quiescence(topology: str, fail: str,
                                             kw: dict[str, Any]) -> None:
    r = Scenario(topology=topology, fail=fail, seed=1, filter_strict=True, **kw).run()
    assert r["loops"] == 0, r.get("loop_sample")
    assert r["wrong_routes"] == 0, r["phases"]
    assert r["quiet"], r["phases"]
    assert r["pairs_checked"]
    assert not r["blackholed_pairs"], (f"{r['blackholed_by_phase']} of "
                                       f"{r['pairs_checked']}: {r['blackholed_sample']}")
    assert r["converged"]
