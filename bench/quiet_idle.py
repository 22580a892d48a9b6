"""Idle control traffic after convergence, in the simulator (issue 18, "quiet").

Boots a scenario to quiescence, lets it settle a little more, then counts every datagram
the engines send over a window of virtual time, split by what it carries: Hello/IHU
(liveness) against Updates, digests, acks and requests. Runs with whatever `wgcast` is
on PYTHONPATH, so the same script measures a checkout before and after a change.

    PYTHONPATH=src python bench/quiet_idle.py full:20 full:40 --window 60 --out x.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

from wgcast.babel import engine as engine_mod
from wgcast.sim.scenario import Scenario

#: Each TLV type's class, for the split (anything unknown counts as "other").
_KIND = {4: "hello_ihu", 5: "hello_ihu", 6: "update", 7: "update", 8: "update"}


class Meter:
    """Counts what every Node sends while `on`, by kind (bytes per TLV type)."""

    def __init__(self) -> None:
        self.on = False
        self.bytes: Counter[str] = Counter()
        self.packets: Counter[str] = Counter()
        orig = engine_mod.Node.datagrams_to_send
        meter = self

        def wrapped(node: engine_mod.Node) -> list[tuple[str, bytes]]:
            out = orig(node)
            if meter.on:
                for _nid, pkt in out:
                    meter.count(pkt)
            return out

        engine_mod.Node.datagrams_to_send = wrapped  # type: ignore[method-assign]

    def count(self, pkt: bytes) -> None:
        kinds: Counter[str] = Counter()
        pos, end = 4, len(pkt)
        while pos < end:  # TLV walk: type and length only
            t = pkt[pos]
            if t == 0:
                kinds["other"] += 1
                pos += 1
                continue
            n = 2 + pkt[pos + 1]
            kinds[_KIND.get(t, "other")] += n
            pos += n
        main = max(kinds, key=lambda k: kinds[k]) if kinds else "other"
        kinds[main] += 4  # the header goes with what dominates the packet
        self.bytes.update(kinds)
        self.packets[main] += 1
        self.bytes["total"] += len(pkt)
        self.packets["total"] += 1


def run(topology: str, window: float, settle: float, seed: int, meter: Meter,
        anycast: tuple[int, int]) -> dict[str, object]:
    t0 = time.perf_counter()
    c0 = time.process_time()
    sc = Scenario(topology=topology, anycast=anycast, fail="none", seed=seed,
                  check=False, filter=False)
    sc.originate_all()
    boot = sc.run_phase("boot")
    boot_cpu = time.process_time() - c0
    net = sc.net
    net.run_until(net.now + settle)
    n = len(net.nodes)
    before = (net.stats.packets, net.stats.bytes, net.stats.route_changes)
    meter.bytes.clear()
    meter.packets.clear()
    meter.on = True
    c1 = time.process_time()
    net.run_until(net.now + window)
    window_cpu = time.process_time() - c1
    meter.on = False
    pk = net.stats.packets - before[0]
    by = net.stats.bytes - before[1]
    changes = net.stats.route_changes - before[2]
    counters: Counter[str] = Counter()
    for node in net.nodes.values():
        counters.update({k: v for k, v in node.counters.items()
                         if k.startswith(("digest", "resync", "deliver"))})
    per = n * window
    return {
        "topology": topology, "nodes": n, "anycast": f"{anycast[0]}x{anycast[1]}",
        "boot_quiet": boot.quiet, "boot_ms": round(boot.duration_ms, 1),
        "window_s": window, "settle_s": settle,
        "idle_bytes_node_s": round(by / per, 1),
        "idle_msgs_node_s": round(pk / per, 2),
        "bytes_node_s_by_kind": {k: round(v / per, 1) for k, v in meter.bytes.items()
                                 if k != "total"},
        "msgs_node_s_by_kind": {k: round(v / per, 2) for k, v in meter.packets.items()
                                if k != "total"},
        "route_changes_in_window": changes,
        "counters": dict(counters),
        "boot_cpu_s": round(boot_cpu, 1),
        "window_cpu_s": round(window_cpu, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("topologies", nargs="+")
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--anycast", default="10x3")
    ap.add_argument("--out")
    args = ap.parse_args()
    a, b = (int(x) for x in args.anycast.split("x"))
    meter = Meter()
    rows = []
    for topo in args.topologies:
        row = run(topo, args.window, args.settle, args.seed, meter, (a, b))
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
