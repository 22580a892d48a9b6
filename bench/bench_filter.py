"""Blackholed pairs under WireGuard's source filter (issue 10), before/after figures.

Runs `wgcast sim` scenarios (wgcast.sim.scenario.Scenario, the source filter modelled,
see wgcast.sim.filter) and reports, per scenario: pairs checked, pairs blackholed after
each quiescence (boot / after the fault / after the recovery), `blackhole_pair_s` of each
fault event (pair-seconds without two-way delivery, event -> quiescence, nothing
subtracted; the count before the event is in the table so the reader can tell), loops,
failover / repair / recovery times, and, for the jitter topologies, the route changes in
`--steady` virtual seconds after boot with nothing failing.

    .venv/bin/python bench/bench_filter.py --label before [--only ring] [--jobs 1]

Writes bench/results/filter_<label>.json (rows of scenarios not run this time are kept,
so slow ones can run separately) and prints a Markdown table. Each scenario runs in its
own process. The scenarios are the sim tests' (tests/sim/test_filter_scenarios.py):
the issue's list, plus the equal-delay topologies with +-5% jitter (a real lab's RTT
noise, which is what picks among equal paths there), plus random:50:4 and random:100:6
without jitter and without a fault.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from common import machine, write  # type: ignore[import-not-found]

from wgcast.sim.scenario import Scenario

EQUAL = {"delay": "5ms", "jitter": "0", "anycast": (2, 2)}
#: Equal delays plus +-5% jitter: the RTT noise of a real lab (which picks among the ties).
NOISY = {"delay": "5ms", "jitter": "5%", "anycast": (2, 2)}
JITTER = {"delay": "2-20ms", "jitter": "20%", "anycast": (5, 3)}
PLAIN = {"delay": "2-20ms", "jitter": "0", "anycast": (5, 3)}
FAULTS = ("origin", "node", "link")


def cases(steady: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for topo in ("ring:4", "ring:6", "grid:4x4", "full:6"):
        out += [{"topology": topo, "fail": f, **EQUAL} for f in FAULTS]
    for topo in ("ring:4", "ring:6", "grid:4x4", "full:6"):
        out += [{"topology": topo, "fail": f, **NOISY} for f in FAULTS]
    for topo in ("random:100:6", "random:300:6"):
        out.append({"topology": topo, "fail": "none", "steady": steady, **JITTER})
        out += [{"topology": topo, "fail": f, **JITTER} for f in FAULTS]
    for topo in ("random:50:4", "random:100:6"):
        out.append({"topology": topo, "fail": "none", **PLAIN})
    return out


def key(c: dict[str, Any]) -> str:
    return f"{c['topology']} {c['delay']} j{c['jitter']} {c['fail']}"


def one(case: dict[str, Any], seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    kw = dict(case)
    res = Scenario(seed=seed, **kw).run()
    phases = {p["name"]: p for p in res["phases"]}  # type: ignore[union-attr]
    events = [p for p in res["phases"] if "blackhole_pair_s" in p]  # type: ignore[union-attr]
    row: dict[str, Any] = {
        "key": key(case), "topology": case["topology"], "delay": case["delay"],
        "jitter": case["jitter"], "anycast": f"{case['anycast'][0]}x{case['anycast'][1]}",
        "fail": case["fail"], "seed": seed,
        "pairs_checked": res.get("pairs_checked"),
        "blackholed_pairs": res.get("blackholed_pairs"),
        "blackholed_by_phase": res.get("blackholed_by_phase"),
        "blackholed_unicast_boot": phases["boot"].get("blackholed_unicast"),
        "blackholed_anycast_boot": phases["boot"].get("blackholed_anycast"),
        "unicast_pairs": phases["boot"].get("unicast_pairs"),
        "anycast_pairs": phases["boot"].get("anycast_pairs"),
        "events": [{k: p.get(k) for k in ("name", "blackholed_before", "blackholed_peak",
                                           "blackholed_after", "blackhole_pair_s",
                                           "blackhole_settled_ms", "samples", "rewalks")}
                   for p in events],
        "blackholed_sample": res.get("blackholed_sample"),
    }
    for k in ("loops", "wrong_routes", "converged", "convergence_ms", "failover_ms",
              "repair_ms", "recovery_ms", "recovery_repair_ms", "route_changes",
              "steady_route_changes", "steady_s", "fail_target", "wall_s", "virtual_s"):
        row[k] = res.get(k)
    row["total_wall_s"] = round(time.perf_counter() - t0, 3)
    row["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)  # other jobs inflate wall_s
    return row


def _worker(args: tuple[dict[str, Any], int]) -> dict[str, Any]:
    return one(*args)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| topology | delays | anycast | fault | pairs checked | blackholed after "
            "quiescence (boot/fault/recovery) | before event | blackhole_pair_s (fault; "
            "recovery) | peak | loops | failover ms | repair ms | recovery ms | route "
            "changes when steady | wall s |")
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        by = r.get("blackholed_by_phase") or {}
        ev = r.get("events") or []
        delays = r["delay"] + ("" if r["jitter"] in ("0", 0) else f" +-{r['jitter']}")
        steady = r.get("steady_route_changes")
        lines.append("| " + " | ".join([
            r["topology"], delays, r["anycast"], r["fail"], _fmt(r.get("pairs_checked")),
            "/".join(_fmt(v) for v in by.values()),
            _fmt(ev[0]["blackholed_before"]) if ev else "-",
            "; ".join(_fmt(e["blackhole_pair_s"]) for e in ev) or "-",
            "; ".join(_fmt(e["blackholed_peak"]) for e in ev) or "-",
            _fmt(r.get("loops")), _fmt(r.get("failover_ms")), _fmt(r.get("repair_ms")),
            _fmt(r.get("recovery_ms")),
            "-" if steady is None else f"{steady} in {_fmt(r.get('steady_s'))} s",
            _fmt(r.get("total_wall_s")),
        ]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="before")
    ap.add_argument("--only", default=None,
                    help="comma-separated substrings of the scenario key "
                         "('<topology> <delay> j<jitter> <fault>')")
    ap.add_argument("--skip", default=None, help="like --only, scenarios to leave out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steady", type=float, default=30.0,
                    help="virtual seconds after boot counting route changes (jitter rows)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", action="store_true",
                    help="only print the table of the existing result file")
    args = ap.parse_args()
    out_path = Path(args.out) if args.out else (
        Path(__file__).parent / "results" / f"filter_{args.label}.json")
    old: list[dict[str, Any]] = []
    if out_path.exists():
        try:
            old = json.loads(out_path.read_text()).get("results", [])
        except (OSError, ValueError):
            old = []
    if args.table:
        print(table(old))
        return
    todo = cases(args.steady)
    if args.only:
        want = args.only.split(",")
        todo = [c for c in todo if any(w in key(c) for w in want)]
    if args.skip:
        skip = args.skip.split(",")
        todo = [c for c in todo if not any(w in key(c) for w in skip)]
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
        for row in pool.imap(_worker, [(c, args.seed) for c in todo]):
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("key", "pairs_checked", "blackholed_by_phase",
                                                  "loops", "total_wall_s")}), flush=True)
    done = {r["key"] for r in rows}
    order = [key(c) for c in cases(args.steady)]
    merged = rows + [r for r in old if isinstance(r, dict) and r.get("key") not in done]
    merged.sort(key=lambda r: order.index(r["key"]) if r["key"] in order else len(order))
    doc = {"machine": machine(), "label": args.label, "timers": "default",
           "seed": args.seed, "filter_sample_period_ms": 5.0, "results": merged}
    write(f"filter_{args.label}", doc, out_path)
    print(table(merged))


if __name__ == "__main__":
    main()
