"""Neighbour liveness in the simulator (issue 16 item 3, issue 18 item 2): how fast a
node cut is detected, and what Hellos cost on an idle full mesh.

    python bench/liveness_sim.py detect --topology line:5 --timers default --seeds 10
    python bench/liveness_sim.py idle --topology full:40 --seconds 60
    python bench/liveness_sim.py false --jitter 20% --loss 0.05 --seconds 600 --seeds 3

`detect`: after boot, crash the node with most neighbours at a time spread over a Hello
interval by the seed; per neighbour, virtual ms until it declares the node down.
`idle`: boot a full mesh with anycast 10x3 to quiescence, then count the bytes of Hello
and IHU TLVs (a packet's header too when it holds nothing else) and all bytes, per node
per second, over `--seconds` more. `false`: neighbours declared down with nothing
failing, under `--jitter` and `--loss`, on a mesh that routes. Runs against any
checkout (PYTHONPATH) for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

from false_alarms_sim import count_downs  # type: ignore[import-not-found,unused-ignore]

from wgcast.sim.scenario import TIMERS, Scenario


def detect(topology: str, timers: str, seed: int, jitter: str,
           loss: str) -> list[tuple[float, bool]]:
    sc = Scenario(topology=topology, anycast=(5, 3), fail="none", seed=seed, timers=timers,
                  jitter=jitter, loss=loss)
    net = sc.net
    sc.originate_all()
    hello = TIMERS[timers]["hello_interval"]
    # Spread the cut over a Hello interval (and its phase to the Hellos) by the seed.
    t_cut = 10.0 + hello * ((seed * 0.618034) % 1.0)
    net.run_until(t_cut)
    victim = max(net.neighbours, key=lambda n: (len(net.neighbours[n]), n))
    watchers = [n for n in net.neighbours[victim] if net.nodes[n].neighbours[victim].up]
    down: dict[str, float] = {}

    def hook() -> None:
        for n in watchers:
            if n not in down and not net.nodes[n].neighbours[victim].up:
                down[n] = net.now

    # Those that asked the victim for fast Hellos (all of them before Hellos on demand).
    need = {n for n in watchers if victim in getattr(net.nodes[n], "_fast", {victim})}
    net.crash(victim)
    net.step_hooks.append(hook)
    net.run_until(t_cut + 30.0)
    return [((down.get(n, float("inf")) - t_cut) * 1000.0, n in need) for n in watchers]


def false_downs(topology: str, timers: str, seed: int, jitter: str, loss: str,
                seconds: float) -> int:
    """Neighbours declared down (each direction counts) with nothing failing, on a mesh
    that routes (unicast + anycast 5x3 at seeded origins); bench/false_alarms_sim.py
    measures line:5 with the instances at both ends, split by cause."""
    sc = Scenario(topology=topology, anycast=(5, 3), fail="none", seed=seed, timers=timers,
                  jitter=jitter, loss=loss)
    sc.originate_all()
    return count_downs(sc.net, seconds)


def _hello_bytes(pkt: bytes) -> int:
    pos, n, other = 4, 0, 0
    while pos < len(pkt):
        t = pkt[pos]
        if t == 0:
            pos += 1
            continue
        size = pkt[pos + 1] + 2
        if t in (4, 5):
            n += size
        else:
            other += size
        pos += size
    return n + (4 if not other else 0)


def idle(topology: str, timers: str, seconds: float, seed: int) -> dict[str, float]:
    sc = Scenario(topology=topology, anycast=(10, 3), fail="none", seed=seed, timers=timers)
    net = sc.net
    sc.originate_all()
    sc.run_phase("boot")
    counts = {"hello": 0, "all": 0, "packets": 0}

    def wrap(f: Callable[[], list[tuple[str, bytes]]]) -> Callable[[], list[tuple[str, bytes]]]:
        def g() -> list[tuple[str, bytes]]:
            out = f()
            for _, pkt in out:
                counts["hello"] += _hello_bytes(pkt)
                counts["all"] += len(pkt)
                counts["packets"] += 1
            return out
        return g

    for node in net.nodes.values():
        node.datagrams_to_send = wrap(node.datagrams_to_send)  # type: ignore[method-assign]
    t0 = net.now
    net.run_until(t0 + seconds)
    n = len(net.nodes)
    return {"hello_bytes_node_s": round(counts["hello"] / n / seconds, 1),
            "bytes_node_s": round(counts["all"] / n / seconds, 1),
            "packets_node_s": round(counts["packets"] / n / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("detect", "idle", "false"))
    ap.add_argument("--topology", default="line:5")
    ap.add_argument("--timers", default="default")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--jitter", default="0")
    ap.add_argument("--loss", default="0")
    a = ap.parse_args()
    if a.what == "detect":
        samples = [d for s in range(1, a.seeds + 1)
                   for d in detect(a.topology, a.timers, s, a.jitter, a.loss)]
        fast = [d for d, need in samples if need]
        every = [d for d, _ in samples]
        print(json.dumps({"topology": a.topology, "timers": a.timers, "n": len(every),
                          "detect_p50_ms": round(statistics.median(every), 1),
                          "detect_max_ms": round(max(every), 1), "n_routing": len(fast),
                          "routing_p50_ms": round(statistics.median(fast), 1) if fast else None,
                          "routing_max_ms": round(max(fast), 1) if fast else None}))
    elif a.what == "false":
        counts = [false_downs(a.topology, a.timers, s, a.jitter, a.loss, a.seconds)
                  for s in range(1, a.seeds + 1)]
        print(json.dumps({"topology": a.topology, "timers": a.timers, "jitter": a.jitter,
                          "loss": a.loss, "seconds": a.seconds, "false_downs": counts}))
    else:
        print(json.dumps({"topology": a.topology, "timers": a.timers,
                          **idle(a.topology, a.timers, a.seconds, 1)}))


if __name__ == "__main__":
    main()
