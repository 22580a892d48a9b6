"""`wgcast sim` at scale: full meshes and random graphs, boot and steady-state idle cost.

Two modes, each run (row) in its own process so the peak memory is that run's:

--rows (the issue 18 table): topologies such as full:20,full:40,full:100,full:200,
full:300,random:200:6,random:1000:6,random:2000:6 (`--rows all` for those), anycast 10x3,
`--fail origin`, default timers. After boot convergence the network runs `--idle`
virtual seconds with nothing failing; the bytes and messages (datagrams) sent in that
window, per node per second, are the steady-state idle cost, reported apart from the
boot burst (boot figures: everything sent until boot quiescence). Also wall, CPU, peak
RSS, convergence/failover and the invariants. A row that exceeds `--cap` seconds wall
is killed and recorded as such ("capped": true), with the peak RSS, CPU seconds and
virtual seconds it had reached (virtual_s_per_cpu_s compares capped runs).
Rows go to bench/results/sim_scale.json under `--label` (e.g. before/after), keeping
the other labels' and topologies' rows.

--sizes (the older table): random:N:6, 10 anycast prefixes with 3 origins each, the
anycast instance with the largest catchment retracted after convergence; convergence and
failover (virtual ms), repair time, wall and CPU, peak memory (and the Python heap peak
with --tracemalloc: slower), invariants. Writes bench/results/sim.json.

    .venv/bin/python bench/bench_sim.py --rows full:20,full:40,random:200:6 --label after
    .venv/bin/python bench/bench_sim.py [--sizes 100,500,1000,2000] [--seed 1] [--quick]

--quick: sizes 100 and 300 (or, with --rows quick, full:20,full:40,random:200:6).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import resource
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Any

from common import machine, write  # type: ignore[import-not-found]

from wgcast.sim.scenario import Scenario

KEYS = ("nodes", "links", "prefixes", "converged", "loops", "wrong_routes", "convergence_ms",
        "failover_ms", "repair_ms", "msgs_per_node_s", "bytes_per_node_s", "wall_s", "cpu_s",
        "virtual_s", "route_changes", "packets", "fail_target")
SCALE_KEYS = ("topology", "nodes", "links", "prefixes", "converged", "quiet", "loops",
              "wrong_routes", "blackholed_pairs", "convergence_ms", "failover_ms", "repair_ms",
              "idle_s", "idle_msgs_per_node_s", "idle_bytes_per_node_s", "idle_route_changes",
              "boot_s", "boot_msgs_per_node_s", "boot_bytes_per_node_s", "msgs_per_node_s",
              "bytes_per_node_s", "wall_s", "cpu_s", "virtual_s", "route_changes", "packets")
ALL_ROWS = ("full:20,full:40,full:100,full:200,full:300,"
            "random:200:6,random:1000:6,random:2000:6")
QUICK_ROWS = "full:20,full:40,random:200:6"


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


def one_row(topology: str, seed: int, idle: float,
            out: mp.Queue) -> None:  # type: ignore[type-arg]
    """One issue-18 row: boot, idle window, origin failover; the figures to `out`."""
    t0 = time.perf_counter()
    c0 = time.process_time()
    sc = Scenario(topology=topology, anycast=(10, 3), fail="origin", seed=seed, idle=idle)

    def progress(_sig: int, _frame: object) -> None:
        # The parent's cap: how far the run got (virtual s, phase), then it kills us.
        # Virtual time hardly moves in a boot burst (every capped full mesh stops near
        # 0.21 s): the packets sent and delivered so far say how far it got.
        st = sc.net.stats
        out.put({"virtual_s_reached": round(sc.net.now, 3),
                 "packets_at_cap": st.packets, "delivered_at_cap": st.delivered,
                 "route_changes_at_cap": st.route_changes,
                 "phases_done": [p.name for p in sc.phases],
                 "cpu_s_at_cap": round(time.process_time() - c0, 1),
                 "virtual_s_per_cpu_s": round(sc.net.now / max(time.process_time() - c0,
                                                               1e-9), 4),
                 "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1024, 1)})

    signal.signal(signal.SIGUSR1, progress)
    res = sc.run()
    row: dict[str, Any] = {k: res.get(k) for k in SCALE_KEYS}
    row["total_wall_s"] = round(time.perf_counter() - t0, 3)
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out.put(row)


def _vm_hwm_mib(pid: int | None) -> float | None:
    """A live process's peak RSS (VmHWM), for a row killed at the cap."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def _cpu_s(pid: int | None) -> float | None:
    """A live process's CPU seconds so far (user + system), for a row killed at the cap."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, ValueError, IndexError):
        return None


def run_rows(args: argparse.Namespace) -> None:
    spec = {"all": ALL_ROWS, "quick": QUICK_ROWS}.get(args.rows, args.rows)
    rows = [r.strip() for r in spec.split(",") if r.strip()]
    ctx = mp.get_context("fork")
    results = []
    for topo in rows:
        q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        load0 = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        p = ctx.Process(target=one_row, args=(topo, args.seed, args.idle, q))
        p.start()
        try:
            row = q.get(timeout=args.cap)
        except queue.Empty:
            hwm, cpu = _vm_hwm_mib(p.pid), _cpu_s(p.pid)
            row = {"topology": topo, "capped": True, "wall_s": f"> {args.cap:g}",
                   "cpu_s": None if cpu is None else f"> {cpu:g}", "peak_rss_mib": hwm}
            if p.pid is not None:
                os.kill(p.pid, signal.SIGUSR1)  # ask how far it got
                with contextlib.suppress(queue.Empty):
                    row.update(q.get(timeout=60))
            p.kill()
        p.join()
        row.setdefault("capped", False)
        row.update(label=args.label, seed=args.seed, date=time.strftime("%Y-%m-%d %H:%M"),
                   loadavg_1m_at_start=load0,
                   loadavg_1m_at_end=round(os.getloadavg()[0], 2),  # others inflate wall_s
                   process_wall_s=round(time.perf_counter() - t0, 3))
        results.append(row)
        print(json.dumps(row), flush=True)
    out_path = Path(args.out or Path(__file__).parent / "results" / "sim_scale.json")
    old: list[Any] = []
    if out_path.exists():  # keep the other rows (re-read: a parallel run may have written)
        try:
            old = json.loads(out_path.read_text()).get("results", [])
        except (OSError, ValueError):
            old = []
    done = {(r["label"], r["topology"]) for r in results}
    results += [r for r in old if isinstance(r, dict)
                and (r.get("label"), r.get("topology")) not in done]
    order = [r.strip() for r in ALL_ROWS.split(",")]
    results.sort(key=lambda r: (order.index(r["topology"]) if r["topology"] in order
                                else len(order), r["topology"], r["label"]))
    doc = {"machine": machine(), "anycast": "10x3", "fail": "origin", "timers": "default",
           "idle_s": args.idle, "cap_s": args.cap, "results": results}
    path = write("sim_scale", doc, str(out_path))
    print(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=None,
                    help=f"topologies, comma-separated; 'all' ({ALL_ROWS}) or 'quick'")
    ap.add_argument("--label", default="after", help="--rows: the label of this run's rows")
    ap.add_argument("--idle", type=float, default=20.0,
                    help="--rows: idle window after boot, virtual seconds")
    ap.add_argument("--cap", type=float, default=900.0,
                    help="--rows: wall seconds after which a row is killed")
    ap.add_argument("--sizes", default=None, help="default 100,500,1000,2000")
    ap.add_argument("--quick", action="store_true", help="sizes 100,300")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.rows:
        run_rows(args)
        return
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
    out_path = Path(args.out or Path(__file__).parent / "results" / "sim.json")
    if out_path.exists():  # keep the other sizes' rows (re-read: a parallel run may have written)
        try:
            old = json.loads(out_path.read_text()).get("results", [])
        except (OSError, ValueError):
            old = []
        results += [r for r in old if isinstance(r, dict) and r.get("size") not in run]
    results.sort(key=lambda r: r["size"])
    doc = {"machine": machine(), "topology": "random:N:6", "anycast": "10x3",
           "fail": "origin", "timers": "default", "seed": args.seed, "results": results}
    path = write("sim", doc, str(out_path))
    print(path.read_text())


if __name__ == "__main__":
    main()
