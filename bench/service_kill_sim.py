"""Service kill on line:5 in the simulator (virtual time, no load effects): per moved
node, the outage beside its physical floor, over many seeds of link delays.

    python bench/service_kill_sim.py --seeds 50            # one line of figures
    python bench/service_kill_sim.py --seeds 1 --seed0 7   # the lab's delays, with trace
    python bench/service_kill_sim.py --fail node --timers fast   # n5 cut off instead

`--fail node` cuts n5's link at a time that moves through the Hello interval from seed
to seed (detection depends on where in it the cut falls); its outage has no floor here
(detection is most of it), only the outage is printed.

Instances n1 and n5; n5 retracts its instance (the origin's retraction, as after a
SIGKILL of the service). `path` is the time until the node's forwarding path ends at n1
again; the lab's outage adds the queries in flight to n5 (one way n->n5), so
`--lab` reports path + one way against the lab's floor, 2 x one way n5->n.
Run it against two source trees (PYTHONPATH=...) for a side-by-side."""

from __future__ import annotations

import argparse

from wgcast.sim.network import SimNetwork
from wgcast.sim.scenario import anycast_prefix, build_topology, node_config


def run(seed: int, timers: str, trace: bool,
        fail: str = "service") -> dict[str, tuple[float, float]]:
    """node -> (ms until its path ends at n1 again, one-way ms from n5)."""
    topo = build_topology("line:5", delay="2-20ms", seed=seed)
    net = SimNetwork(topo, lambda n: node_config(n, timers), seed=seed)
    p = anycast_prefix(0)
    net.originate("n1", p)
    net.originate("n5", p)
    # A node cut's detection depends on where in the Hello interval it falls.
    net.run_until(10.0 + (seed * 0.0137) % 0.2 if fail == "node" else 10.0)
    delay = {frozenset((lk.a, lk.b)): lk.delay_ms for lk in topo.links}
    t0 = net.now
    moved = [n for n in ("n2", "n3", "n4") if net.path(n, p)[0][-1] == "n5"]
    broken: dict[str, float] = {}
    fixed: dict[str, float] = {}
    changes: list[tuple[float, str, str | None]] = []

    def hook() -> None:
        for n in moved:
            seen, kind = net.path(n, p)
            if kind != "local" or seen[-1] != "n1":
                broken.setdefault(n, net.now)
                fixed.pop(n, None)
            elif n in broken and n not in fixed:
                fixed[n] = net.now

    net.step_hooks.append(hook)
    net.observers.append(lambda now, node, prefix, via: changes.append(
        (round((now - t0) * 1000, 2), node, via)) if prefix == p else None)
    if fail == "node":
        net.set_link("n4", "n5", False)
    else:
        net.retract("n5", p)
    hook()
    net.run_until(t0 + 5.0)
    if trace:
        print("delays ms", {"-".join(sorted(k)): v for k, v in delay.items()})
        print("route changes (ms, node, via)", changes)
    out = {}
    for n in moved:
        i = int(n[1:])
        one_way = sum(delay[frozenset((f"n{j}", f"n{j + 1}"))] for j in range(i, 5))
        out[n] = ((fixed.get(n, t0) - t0) * 1000, one_way)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--seed0", type=int, default=1)
    ap.add_argument("--timers", default="default")
    ap.add_argument("--lab", action="store_true", help="the lab's outage and floor")
    ap.add_argument("--fail", choices=("service", "node"), default="service")
    a = ap.parse_args()
    outs: list[float] = []
    excess: list[float] = []
    for s in range(a.seed0, a.seed0 + a.seeds):
        for n, (path, one_way) in run(s, a.timers, a.seeds == 1, a.fail).items():
            outage, floor = (path + one_way, 2 * one_way) if a.lab else (path, one_way)
            if a.seeds == 1:
                print(f"{n}: outage {outage:.1f} ms, floor {floor:.1f} ms")
            outs.append(outage)
            excess.append(outage - floor)

    def q(xs: list[float], f: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(f * len(xs)))]

    if a.fail == "node":
        print(f"{a.timers} node cut: outage ms p50 {q(outs, .5):.1f} p90 {q(outs, .9):.1f} "
              f"max {max(outs):.1f} | n {len(outs)}")
        return
    print(f"outage ms p50 {q(outs, .5):.1f} p90 {q(outs, .9):.1f} max {max(outs):.1f} | "
          f"over floor p50 {q(excess, .5):.1f} p90 {q(excess, .9):.1f} "
          f"max {max(excess):.1f} | n {len(outs)}")


if __name__ == "__main__":
    main()
