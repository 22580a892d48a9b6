"""`wgcast sim` at scale: 100, 500, 1000 and 2000 nodes.

Random graphs of average degree 6, 10 anycast prefixes with 3 origins each, one unicast
prefix per node, the anycast instance with the largest catchment retracted after
convergence. For each size: convergence and failover (virtual ms), the repair time of the
retracted prefix (virtual ms until every node has a working route again), wall and CPU
seconds, peak memory (resident set, and the Python heap peak when --tracemalloc is given:
slower), and the invariant results. Each size runs in its own process, so the peak memory
is that run's.

    .venv/bin/python bench/bench_sim.py [--sizes 100,500,1000,2000] [--seed 1] [--quick]

--quick: sizes 100 and 300. Prints the JSON and writes bench/results/sim.json, keeping the
rows of sizes not run this time (so the big sizes can run one at a time, in parallel).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
import tracemalloc
from pathlib import Path

from common import machine, write  # type: ignore[import-not-found]

from wgcast.sim.scenario import Scenario

KEYS = ("nodes", "links", "prefixes", "converged", "loops", "wrong_routes", "convergence_ms",
        "failover_ms", "repair_ms", "msgs_per_node_s", "bytes_per_node_s", "wall_s", "cpu_s",
        "virtual_s", "route_changes", "packets", "fail_target")


def one(size: int, seed: int, trace: bool, out: mp.Queue) -> None:  # type: ignore[type-arg]
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    res = Scenario(topology=f"random:{size}:6", anycast=(10, 3), fail="origin",
                   seed=seed).run()
    row = {k: res.get(k) for k in KEYS}
    row["total_wall_s"] = round(time.perf_counter() - t0, 3)
    row["date"] = time.strftime("%Y-%m-%d %H:%M")
    row["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)  # other jobs inflate wall_s
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if trace:
        row["peak_heap_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    out.put(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=None, help="default 100,500,1000,2000")
    ap.add_argument("--quick", action="store_true", help="sizes 100,300")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim.json"))
    args = ap.parse_args()
    sizes = args.sizes or ("100,300" if args.quick else "100,500,1000,2000")
    run = [int(s) for s in sizes.split(",")]
    results = []
    ctx = mp.get_context("fork")
    for size in run:
        q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        p = ctx.Process(target=one, args=(size, args.seed, args.tracemalloc, q))
        p.start()
        row = q.get()
        p.join()
        row["size"] = size
        results.append(row)
        print(json.dumps(row), flush=True)
    out_path = Path(args.out)
    if out_path.exists():  # keep the other sizes' rows (re-read: a parallel run may have written)
        try:
            old = json.loads(out_path.read_text()).get("results", [])
        except (OSError, ValueError):
            old = []
        results += [r for r in old if isinstance(r, dict) and r.get("size") not in run]
    results.sort(key=lambda r: r["size"])
    doc = {"machine": machine(), "topology": "random:N:6", "anycast": "10x3",
           "fail": "origin", "timers": "default", "seed": args.seed, "results": results}
    path = write("sim", doc, args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()
