#!/usr/bin/env python3
"""Multi-endpoint peers in the lab (dual:2: n1 and n2 joined by two relay links, 5 ms and
10 ms one way). Writes bench/results/endpoints.json.

* first_dead: link 0 (each node's first configured endpoint of the other) is cut before
  the daemons start, no handshake yet: seconds until n1 reaches n2 (echo through the
  tunnel), from the start command and from the moment both daemons are up. One fresh
  lab per run. WireGuard alone would retry its handshake after 5 s, on the dead address;
  first_dead_without_restart: the same with endpoint_policy.restart_handshake = false.
* cut: the link in use is cut while a prober sends 1 query/ms n1 -> n2: the outage it
  sees and when each end's WireGuard moved (p50/max over --runs, per timer profile);
  the cut link is restored after each run and the next run cuts the other one.
* better: link 0 is made slower than link 1 (RTT ~32 vs ~20 ms) with the default policy
  (probes every 1 s, 3 s hold): seconds until both ends use link 1; then link 0 wobbles
  around link 1 (RTT 18/22 ms, every 0.5 s) for --wobble seconds: endpoint switches.
* roams: a NAT in front of n2 rebinds every 10 ms until n1's daemon learned 1000
  endpoints (K = 8): the largest candidate list, evictions, the prober's loss.

Other work may load the machine: medians are the figures to read; the load average is
recorded.

    python bench/endpoints.py [--runs 10] [--start-runs 5] [--timers default,fast]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, p50_max, write

from wgcast.lab import multipath as mp
from wgcast.lab.core import Lab


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def _policy(**kw: Any) -> Any:
    def hook(node: str, cfg: dict[str, Any]) -> None:
        cfg.setdefault("endpoint_policy", {}).update(kw)
    return hook


def first_dead(runs: int, restart: bool = True) -> dict[str, Any]:
    out = []
    hook = None if restart else _policy(restart_handshake=False)
    for i in range(runs):
        with Lab("dual:2", echo="all", delay="5ms", daemons=False, warm_handshakes=False,
                 services=False, seed=i, config_hook=hook) as lab:
            res = mp.first_dead_at_start(lab, dead_link=0, timeout=60)
            v = mp.peer_view(lab, "n1", "n2")
            res["n1_endpoint_stats"] = v["endpoint_stats"]
            res["handshake_restarts"] = {
                n: mp.daemon_status(lab, n)["endpoints"]["handshake_restarts"]
                for n in ("n1", "n2")}
        log("first_dead", "restart" if restart else "no restart", i, json.dumps(res))
        out.append(res)

    def col(key: str) -> list[float]:
        return [r[key] for r in out if r[key] is not None]

    return {"restart_handshake": restart, "runs": out,
            "n1_to_n2_after_ready_s": p50_max(col("n1_to_n2_after_ready_s")),
            "both_ways_after_ready_s": p50_max(col("both_ways_after_ready_s")),
            "n1_to_n2_from_start_s": p50_max(col("n1_to_n2_s")),
            "daemons_ready_s": p50_max(col("daemons_ready_s")),
            "failed_runs": sum(1 for r in out if r["n1_to_n2_s"] is None)}


def cut(runs: int, timers: str) -> dict[str, Any]:
    out = []
    with Lab("dual:2", echo="all", delay="5ms", timers=timers, daemon_ready_timeout=60,
             seed=1) as lab:
        mp.wait_for(lambda: mp.reaches(lab, "n1", "n2") and mp.reaches(lab, "n2", "n1"),
                    60, "n1 <-> n2")
        time.sleep(3)
        for i in range(runs):
            res = mp.cut_active(lab, cut_at=1.0, observe=2.5, settle=2.0)
            log("cut", timers, i, json.dumps(res))
            out.append(res)
        stats = {n: mp.peer_view(lab, n, p)["endpoint_stats"]
                 for n, p in (("n1", "n2"), ("n2", "n1"))}
    ok = [r for r in out if r["links_after"] == {"n1": 1 - r["cut_link"],
                                                 "n2": 1 - r["cut_link"]}]
    return {"timers": timers, "runs": out, "endpoint_stats": stats,
            "outage_ms": p50_max([r["outage_ms"] for r in out]),
            "n1_moved_ms": p50_max([1000 * r["n1_moved_s"] for r in out
                                    if r["n1_moved_s"] is not None]),
            "n2_moved_ms": p50_max([1000 * r["n2_moved_s"] for r in out
                                    if r["n2_moved_s"] is not None]),
            "both_on_the_other_link": f"{len(ok)}/{len(out)}"}


def better(wobble: float) -> dict[str, Any]:
    with Lab("dual:2", echo="all", delay="5ms", daemon_ready_timeout=60, seed=2) as lab:
        mp.wait_for(lambda: mp.reaches(lab, "n1", "n2"), 60, "n1 -> n2")
        time.sleep(2)
        t0 = time.monotonic()
        lab.set_link("n1", link_id=0, delay_ms=16.0)
        mp.wait_for(lambda: mp.active_link(lab, "n1", "n2") == 1
                    and mp.active_link(lab, "n2", "n1") == 1, 60, "both ends on link 1",
                    interval=0.05)
        moved = time.monotonic() - t0
        view = mp.peer_view(lab, "n1", "n2")
        time.sleep(2.5)  # both daemons noticed (a roam is read within roam_poll)
        before = {n: mp.peer_view(lab, n, p)["endpoint_stats"]["switches"]
                  + mp.peer_view(lab, n, p)["endpoint_stats"]["roams"]
                  for n, p in (("n1", "n2"), ("n2", "n1"))}
        t_end = time.monotonic() + wobble
        i = 0
        changes = 0
        last = 1
        while time.monotonic() < t_end:
            lab.set_link("n1", link_id=0, delay_ms=9.0 if i % 2 == 0 else 11.0)
            i += 1
            t_step = time.monotonic() + 0.5
            while time.monotonic() < t_step:
                cur = mp.active_link(lab, "n1", "n2")
                if cur != last:
                    changes += 1
                    last = cur
                time.sleep(0.02)
        after = {n: mp.peer_view(lab, n, p)["endpoint_stats"]["switches"]
                 + mp.peer_view(lab, n, p)["endpoint_stats"]["roams"]
                 for n, p in (("n1", "n2"), ("n2", "n1"))}
    res = {"to_lower_rtt_s": round(moved, 2),
           "candidates_then": [{k: c[k] for k in ("addr", "rtt_ms", "score", "state")}
                               for c in view["candidates"]],
           "wobble_s": wobble, "wobble_steps": i,
           "endpoint_changes_seen_during_wobble": changes,
           "switches_and_roams_during_wobble": {n: after[n] - before[n] for n in after}}
    log("better", json.dumps(res))
    return res


def roams(target: int = 1000, k: int = 8) -> dict[str, Any]:
    hook = _policy(learned_max=k, learned_ttl="4s", roam_poll="5ms")
    with Lab("dual:2", echo="all", delay="1ms", config_hook=hook, daemon_ready_timeout=60,
             seed=3) as lab:
        mp.wait_for(lambda: mp.reaches(lab, "n1", "n2"), 60, "n1 -> n2")
        link = mp.active_link(lab, "n1", "n2")
        prober = lab.start_prober("n1", lab.unicast("n2"), duration=120, interval_ms=2.0)
        t0 = time.monotonic()
        lab.relay_control({"op": "set", "links": [link], "dir": "ba", "rebind_ms": 10})
        worst = 0
        while True:
            v = mp.peer_view(lab, "n1", "n2")
            worst = max(worst, len(v["candidates"]))
            if v["endpoint_stats"]["learned_added"] >= target or time.monotonic() - t0 > 110:
                break
            time.sleep(0.2)
        took = time.monotonic() - t0
        lab.relay_control({"op": "set", "links": [link], "dir": "ba", "rebind_ms": 0})
        prober.stop()
        pr = prober.wait()
        t_exp = time.monotonic()
        mp.wait_for(lambda: len(mp.peer_view(lab, "n1", "n2")["candidates"]) <= 3, 30,
                    "expiry", interval=0.2)
        expired_after = time.monotonic() - t_exp
        v = mp.peer_view(lab, "n1", "n2")
    res = {"k": k, "configured": 2, "seconds": round(took, 1), "largest_list": worst,
           "endpoint_stats": v["endpoint_stats"], "prober_sent": pr["sent"],
           "prober_lost": pr["lost"], "learned_gone_after_s": round(expired_after, 1),
           "candidates_after": len(v["candidates"])}
    log("roams", json.dumps(res))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--start-runs", type=int, default=5)
    ap.add_argument("--timers", default="default,fast")
    ap.add_argument("--wobble", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="3 runs of each, short wobble")
    ap.add_argument("--only", default="", help="first_dead,cut,better,roams")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.start_runs, args.wobble = 3, 2, 8.0
    only = {s for s in args.only.split(",") if s}
    data: dict[str, Any] = {"machine": machine(), "topology": "dual:2, 5 ms and 10 ms"}
    t0 = time.monotonic()
    if not only or "first_dead" in only:
        data["first_dead"] = first_dead(args.start_runs)
        # Ablation: the same without restarting the handshake (WireGuard's own retry).
        data["first_dead_without_restart"] = first_dead(max(1, args.start_runs // 2),
                                                        restart=False)
    if not only or "cut" in only:
        data["cut"] = {t: cut(args.runs, t) for t in args.timers.split(",") if t}
    if not only or "better" in only:
        data["better"] = better(args.wobble)
    if not only or "roams" in only:
        data["roams"] = roams()
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    data["loadavg_at_end"] = os.getloadavg()
    path = write("endpoints", data)
    summary = {
        "first_dead_after_ready_s": data.get("first_dead", {}).get("n1_to_n2_after_ready_s"),
        "first_dead_without_restart_s": data.get("first_dead_without_restart", {}).get(
            "n1_to_n2_after_ready_s"),
        "cut_outage_ms": {t: c["outage_ms"] for t, c in data.get("cut", {}).items()},
        "better": {k: data["better"][k] for k in ("to_lower_rtt_s",
                                                 "switches_and_roams_during_wobble")}
        if "better" in data else None,
        "roams_largest_list": data.get("roams", {}).get("largest_list"),
    }
    print(json.dumps(summary, indent=1))
    log("wrote", path)


if __name__ == "__main__":
    main()
