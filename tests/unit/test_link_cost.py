"""How RTT samples become a link cost (Neighbour, LinkCostParams): the cost follows the
path's latency, not the queueing and scheduling delay a busy host adds to samples."""

from __future__ import annotations

import dataclasses
import random

from wgcast.babel.neighbour import LinkCostParams, Neighbour, stamp

PARAMS = LinkCostParams()


def feed(nb: Neighbour, now: float, rtt_ms: float, params: LinkCostParams) -> None:
    """One sample: our Hello stamped rtt_ms before `now`, answered at once."""
    nb.on_rtt_sample(now, (stamp(now) - round(rtt_ms * 1000)) % (1 << 32), 0, 0,
                     params.rtt_alpha, params)


def noisy(rng: random.Random, floor_ms: float) -> float:
    """A busy host: a third of the samples delayed by up to 110 ms."""
    return floor_ms + (rng.uniform(0, 110) if rng.random() < 0.33 else rng.uniform(0, 1))


def run(params: LinkCostParams, seconds: float, floor_ms: float, nb: Neighbour | None = None,
        start: float = 100.0, seed: int = 1) -> tuple[Neighbour, list[int]]:
    """Samples every 0.6 s (an IHU every third Hello); the costs after each one."""
    nb = nb or Neighbour("x")
    rng = random.Random(seed)
    costs = []
    for i in range(round(seconds / 0.6)):
        feed(nb, start + i * 0.6, noisy(rng, floor_ms), params)
        costs.append(nb.own_cost(params))
    return nb, costs


def test_a_busy_hosts_delays_leave_the_cost_at_the_paths_latency() -> None:
    """6 ms of path, samples up to 117 ms: the cost stays within its hysteresis band of
    the 6 ms cost for two minutes. Averaging the raw samples (no window) puts it far
    higher and keeps moving it, which is what moved shortest paths and seqnos."""
    lo, hi = PARAMS.cost(6.0), PARAMS.cost(6.0 * 1.1 + 1.0)
    _, costs = run(PARAMS, 120.0, 6.0)
    assert all(lo <= c <= hi for c in costs[20:]), (lo, hi, sorted(set(costs[20:])))
    raw = dataclasses.replace(PARAMS, rtt_window=0)
    _, raw_costs = run(raw, 120.0, 6.0)
    assert min(raw_costs[20:]) > hi + 40
    assert len(set(raw_costs[20:])) > len(set(costs[20:]))


def test_a_real_change_of_latency_still_shows() -> None:
    """The path gets slower (6 -> 40 ms), then faster again (-> 6 ms), through the same
    noise: the cost follows both within two minutes (the slow average's pace)."""
    nb, _ = run(PARAMS, 60.0, 6.0)
    before = nb.own_cost(PARAMS)
    nb, costs = run(PARAMS, 120.0, 40.0, nb, start=160.0, seed=2)
    assert costs[0] == before  # one slow sample moves nothing
    assert nb.own_cost(PARAMS) >= PARAMS.cost(40.0 * 0.85)
    nb, costs = run(PARAMS, 120.0, 6.0, nb, start=280.0, seed=3)
    assert nb.own_cost(PARAMS) <= PARAMS.cost(10.0)
