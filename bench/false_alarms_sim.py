"""False neighbour-down alarms in the simulator: line:5, nothing failing, links with
jitter and loss; counts every neighbour declared down (each direction counts).

    python bench/false_alarms_sim.py --timers default --seconds 600

The baseline for issue 16 item 3 (detect a dead neighbour sooner without more false
alarms): faster detection must not raise these counts."""

from __future__ import annotations

import argparse

from wgcast.sim.network import SimNetwork
from wgcast.sim.scenario import build_topology, node_config


def false_downs(seed: int, jitter: str, loss: str, timers: str, seconds: float) -> int:
    topo = build_topology("line:5", delay="2-20ms", jitter=jitter, loss=loss, seed=seed)
    net = SimNetwork(topo, lambda n: node_config(n, timers), seed=seed)
    return count_downs(net, seconds)


def count_downs(net: SimNetwork, seconds: float) -> int:
    """Neighbours declared down (each direction counts) from 5 s on, for `seconds`."""
    net.run_until(5.0)
    up = {(a, b): nb.up for a, node in net.nodes.items() for b, nb in node.neighbours.items()}
    downs = 0

    def hook() -> None:
        nonlocal downs
        for a, node in net.nodes.items():
            for b, nb in node.neighbours.items():
                if up[(a, b)] and not nb.up:
                    downs += 1
                up[(a, b)] = nb.up

    net.step_hooks.append(hook)
    net.run_until(5.0 + seconds)
    return downs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timers", default="default")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    for jitter, loss in (("20%", "0.05"), ("20%", "0"), ("0", "0.05")):
        counts = [false_downs(s, jitter, loss, a.timers, a.seconds)
                  for s in range(1, a.seeds + 1)]
        print(f"{a.timers}: jitter {jitter} loss {loss}: false downs in {a.seconds:.0f} s "
              f"per seed {counts}")


if __name__ == "__main__":
    main()
