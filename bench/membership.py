"""Service membership figures on a real mesh (needs root and wireguard-go).

n1 - n2 - n3 with link delays 2 ms and 8 ms; instances on n1 and n3, each a real service
(``wgcast join <group> -- echo``) with an exec health check. A prober on n2 (which the
n1 instance serves) sends one query per millisecond; per run, n1's instance is failed:

* ``service``: SIGKILL of the member (``wgcast join`` and its echo) -> the outage n2 sees;
* ``drain``:   ``drain`` of the group, then SIGTERM of the service -> queries lost;
* ``health``:  the health check starts failing (interval and fall below) -> the time from
  the failure to the daemon's retraction, and to the first answer of the other instance.

Then everything is restored and the next run starts. Prints and writes
bench/results/membership.json (medians: other jobs may load the machine meanwhile).

    .venv/bin/python bench/membership.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from wgcast.lab.core import Lab, LabError
from wgcast.topology import Link, Topology

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "membership.json")
LEAD = 0.5  # seconds of probing before the failure
TAIL = 1.5  # and after


def pct(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    return {"n": len(v), "min": round(v[0], 1), "p50": round(statistics.median(v), 1),
            "p90": round(v[min(len(v) - 1, int(0.9 * (len(v) - 1) + 0.5))], 1),
            "max": round(v[-1], 1), "mean": round(statistics.fmean(v), 1)}


def wait_back(lab: Lab, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n1":
            return
        time.sleep(0.1)
    raise LabError("n2 did not come back to n1")


def one_run(lab: Lab, how: str) -> dict[str, Any]:
    prober = lab.start_prober("n2", duration=LEAD + TAIL + 1.0)
    if not prober.wait_started(10.0):
        raise LabError("the prober did not start")
    time.sleep(LEAD)
    t_fail = time.monotonic()
    fault = lab.fail("n1", how)
    t_done = time.monotonic()
    if how == "service" and isinstance(fault, dict) and fault.get("killed_at"):
        t_fail = fault["killed_at"]  # the SIGKILL itself, not the lab's bookkeeping
    res = prober.wait()
    fail_ms = (t_fail * 1e9 - res["t0_monotonic_ns"]) / 1e6
    moved = next((sw for sw in res["switches"] if sw["from"] == "n1" and sw["to"] == "n3"),
                 None)
    lw = lab.groups_of("n1")[lab.groups[0].prefix].get("last_withdrawal") or {}
    out: dict[str, Any] = {
        "lost": res["lost"], "outage_ms": res["outage_ms"], "sent": res["sent"],
        "fail_at_ms": round(fail_ms, 1),
        "moved_ms": None if moved is None else round(moved["at_ms"] - fail_ms, 1),
        "after": res["timeline"][-1]["node"],
        "fail_call_ms": round((t_done - t_fail) * 1000, 1),
        "withdrawal": {k: lw.get(k) for k in ("reason", "graceful", "moved", "acked",
                                              "move_ms", "total_ms")},
        "withdrawal_start_ms": (round((lw["started_monotonic"] - t_fail) * 1000, 1)
                                if "started_monotonic" in lw else None),
        "withdrawal_done_ms": (round((lw["done_monotonic"] - t_fail) * 1000, 1)
                               if "done_monotonic" in lw else None),
    }
    rtt = res.get("rtt_ms") or {}
    out["rtt_p50_ms"], out["rtt_max_ms"] = rtt.get("p50"), rtt.get("max")
    out["held_moves_n2"] = lab.api("n2", {"cmd": "status"})["status"]["dataplane"].get(
        "held_moves")
    if how == "drain" and isinstance(fault, list):
        out["drain_reply"] = fault[0]
    lab.restore("n1", how)
    wait_back(lab)
    return out


def summarize(how: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    s: dict[str, Any] = {
        "runs": len(runs), "failed_runs": len(runs) - len(ok),
        "outage_ms": pct([r["outage_ms"] for r in ok]),
        "lost": pct([float(r["lost"]) for r in ok]),
        "lost_total": sum(r["lost"] for r in ok),
        "runs_with_loss": sum(1 for r in ok if r["lost"]),
        # Held moves delay the queries sent during the hold: the largest RTT of a run
        # against its median shows what the hold costs.
        "rtt_p50_ms": pct([r["rtt_p50_ms"] for r in ok if r.get("rtt_p50_ms") is not None]),
        "rtt_max_ms": pct([r["rtt_max_ms"] for r in ok if r.get("rtt_max_ms") is not None]),
        "moved_ms": pct([r["moved_ms"] for r in ok if r["moved_ms"] is not None]),
        "withdrawal_start_ms": pct([r["withdrawal_start_ms"] for r in ok
                                    if r["withdrawal_start_ms"] is not None]),
        "withdrawal_done_ms": pct([r["withdrawal_done_ms"] for r in ok
                                   if r["withdrawal_done_ms"] is not None]),
    }
    if how == "drain":
        s["drain_all_moved_and_acked"] = all(
            r["withdrawal"].get("moved") and r["withdrawal"].get("acked") for r in ok)
    return s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--hows", default="service,drain,health")
    ap.add_argument("--health-interval", default="100ms")
    ap.add_argument("--health-fall", type=int, default=2)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    topo = Topology(["n1", "n2", "n3"],
                    [Link("n1", "n2", 2.0, id=0), Link("n2", "n3", 8.0, id=1)], spec="line:3")
    result: dict[str, Any] = {
        "topology": "n1 -2ms- n2 -8ms- n3, instances n1 and n3, client n2, 1 query/ms",
        "timers": "default", "health": {"type": "exec", "interval": args.health_interval,
                                        "fall": args.health_fall, "rise": 2},
        "runs_per_failure": args.runs, "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "results": {}, "runs": {}}
    t0 = time.monotonic()
    with Lab(topo, instances="n1,n3", health_interval=args.health_interval,
             health_fall=args.health_fall) as lab:
        wait_back(lab, 30.0)
        for how in args.hows.split(","):
            runs: list[dict[str, Any]] = []
            for k in range(args.runs):
                try:
                    r = one_run(lab, how)
                except LabError as e:
                    r = {"error": str(e)}
                    # put the instance back for the next run
                    try:
                        lab.restore("n1", how)
                        wait_back(lab)
                    except LabError:
                        pass
                runs.append(r)
                print(f"{how} {k + 1}/{args.runs}: " + (
                    r["error"] if "error" in r else
                    f"lost {r['lost']} outage {r['outage_ms']} ms moved {r['moved_ms']} ms "
                    f"withdrawal +{r['withdrawal_start_ms']}..{r['withdrawal_done_ms']} ms"),
                    flush=True)
            result["runs"][how] = runs
            result["results"][how] = summarize(how, runs)
            print(f"{how}: {json.dumps(result['results'][how])}", flush=True)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
