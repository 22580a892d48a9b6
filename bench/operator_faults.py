#!/usr/bin/env python3
"""Recovery from the operator's hands: the transit node's WireGuard changed under wgcast.

A 3-node wireguard-go line (n1 - n2 - n3, the lab's default timers); n2, the transit node,
suffers each fault RUNS times:

* ``delete``: `ip link del` of n2's interface, then created and configured again (as
  `wg-quick down; wg-quick up`);
* ``kill``: wireguard-go of n2 killed with SIGKILL, started and configured again;
* ``syncconf``: `wg syncconf IFACE <(wg-quick strip FILE)` with n2's wg-quick file whose
  peers have no AllowedIPs (every peer's AllowedIPs emptied);
* ``syncconf_recipe``: the same with the documented file (the peers' control /128s);
* ``wg_set``: `wg set IFACE peer n1 allowed-ips 10.99.0.1/32` (n1's owned prefixes
  replaced by one of the operator's).

Recovery: from the moment the interface is back and configured (delete, kill) or the
command returned (the others) until n2 has both neighbours up, its owned AllowedIPs are
back and n1 and n3 reach each other through it (echo queries both ways). Outage: from
the fault's start to the same point. Log lines: what n2's daemon wrote from the fault's
start to one second after the recovery (a flood shows here). Manual steps: the runs
that did not recover within --cap seconds and needed a daemon restart. Runs are spaced by
a random 0.5-2.5 s pause (not in phase with the daemon's periodic checks).

--daemon-src DIR runs the daemons from another source tree (e.g. `git archive` of an
older commit: the "before" column). Writes bench/results/operator_faults[_LABEL].json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any

from common import machine, write

from wgcast.lab.core import Lab
from wgcast.topology import Link, Topology

FAULTS = ("delete", "kill", "syncconf", "syncconf_recipe", "wg_set")


def log_size(lab: Lab, node: str) -> int:
    return os.path.getsize(os.path.join(lab.dir, f"{node}.daemon.log"))


def log_since(lab: Lab, node: str, offset: int) -> list[str]:
    with open(os.path.join(lab.dir, f"{node}.daemon.log"), encoding="utf-8",
              errors="replace") as f:
        f.seek(offset)
        return [ln for ln in f.read().splitlines() if ln.strip()]


def through(lab: Lab) -> bool:
    return lab.query("n1", lab.unicast("n3"), timeout=0.2) is not None and \
        lab.query("n3", lab.unicast("n1"), timeout=0.2) is not None


def owned_back(lab: Lab) -> bool:
    peers = lab.wg_show("n2")["peers"]
    for name in ("n1", "n3"):
        n = lab.node(name)
        want = {f"{n.control}/128", f"{lab.unicast(name)}/128"}
        if name not in peers or not want <= set(map(str, peers[name]["allowed_ips"])):
            return False
    return True


def recovered(lab: Lab) -> bool:
    try:
        st = lab.api("n2", {"cmd": "status"}, timeout=1.0)["status"]
    except Exception:
        return False
    return bool(st["neighbours_up"] == 2 and owned_back(lab) and through(lab))


def wg_quick_file(lab: Lab, path: str, controls: bool) -> None:
    n = lab.node("n2")
    with open(n.key_path) as f:
        private = f.read().strip()
    lines = ["[Interface]", f"PrivateKey = {private}", f"ListenPort = {n.listen_port}",
             f"Address = {n.control}/128", "Table = off", "SaveConfig = false", ""]
    for peer in lab.topology.neighbours("n2"):
        p = lab.node(peer)
        lines += ["[Peer]", f"PublicKey = {p.public_key}",
                  f"Endpoint = {lab.links_between('n2', peer)[0].endpoint_of('n2')}"]
        if controls:
            lines.append(f"AllowedIPs = {p.control}/128")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o600)


def fault(lab: Lab, kind: str) -> float:
    """Do it; returns the time.monotonic() recovery is counted from."""
    n2 = lab.node("n2")
    if kind in ("delete", "kill"):
        return lab.recreate_wireguard("n2", kind)
    if kind.startswith("syncconf"):
        path = os.path.join(lab.dir, f"{n2.iface}.conf")
        wg_quick_file(lab, path, controls=kind == "syncconf_recipe")
        lab.exec("n2", ["bash", "-c", f"wg syncconf {n2.iface} <(wg-quick strip {path})"])
        return time.monotonic()
    lab.exec("n2", ["wg", "set", n2.iface, "peer", lab.node("n1").public_key,
                    "allowed-ips", "10.99.0.1/32"])
    return time.monotonic()


def one_run(lab: Lab, kind: str, cap: float) -> dict[str, Any]:
    offset = log_size(lab, "n2")
    t0 = time.monotonic()
    back = fault(lab, kind)
    deadline = back + cap
    ok = False
    while time.monotonic() < deadline:  # bounded by the cap
        if recovered(lab):
            ok = True
            break
        time.sleep(0.02)
    done = time.monotonic()
    row: dict[str, Any] = {"recovered": ok}
    if ok:
        row["recovery_s"] = round(done - back, 3)
        row["outage_s"] = round(done - t0, 3)
        time.sleep(1.0)  # the lines written just after the recovery count too
    logged = log_since(lab, "n2", offset)
    row["log_lines"] = len(logged)
    row["log_lines_per_s"] = round(len(logged) / max(0.001, time.monotonic() - t0), 1)
    if not ok:
        # The manual step: restart n2's daemon (what an operator had to do).
        row["sample"] = logged if len(logged) <= 5 else logged[:3] + logged[-2:]
        lab.stop_daemon("n2")
        lab.start_daemon("n2")
        t1 = time.monotonic()
        while time.monotonic() < t1 + 30 and not recovered(lab):
            time.sleep(0.05)
        row["after_restart_s"] = round(time.monotonic() - t1, 3)
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rec = [r["recovery_s"] for r in rows if r["recovered"]]
    out = [r["outage_s"] for r in rows if r["recovered"]]
    lines = [r["log_lines"] for r in rows]
    return {"runs": len(rows), "recovered": len(rec), "manual_steps": len(rows) - len(rec),
            "recovery_p50_s": round(statistics.median(rec), 3) if rec else None,
            "recovery_max_s": round(max(rec), 3) if rec else None,
            "outage_p50_s": round(statistics.median(out), 3) if out else None,
            "outage_max_s": round(max(out), 3) if out else None,
            "log_lines_p50": statistics.median(lines) if lines else None,
            "log_lines_max": max(lines) if lines else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cap", type=float, default=10.0,
                    help="seconds to wait for a recovery before restarting the daemon")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--daemon-src", help="run the daemons from this source tree")
    ap.add_argument("--label", default="", help="suffix of the result file")
    ap.add_argument("--seed", type=int, default=1, help="of the pauses between runs")
    args = ap.parse_args()
    topo = Topology(["n1", "n2", "n3"],
                    [Link("n1", "n2", 2.0, id=0), Link("n2", "n3", 2.0, id=1)], spec="line:3")
    daemon_cmd = None
    if args.daemon_src:
        daemon_cmd = ["env", f"PYTHONPATH={os.path.abspath(args.daemon_src)}",
                      sys.executable, "-m", "wgcast.cli.main", "run", "-c", "{config}"]
    result: dict[str, Any] = {"machine": machine(), "runs": args.runs, "cap_s": args.cap,
                              "daemon_src": args.daemon_src or "this tree",
                              "topology": "line:3 (n2 transit), wireguard-go, 2 ms links",
                              "faults": {}}
    rng = random.Random(args.seed)
    with Lab(topo, instances="n1,n3", wireguard="go", daemon_cmd=daemon_cmd) as lab:
        result["timers"] = lab.timers
        t = time.monotonic()
        while not recovered(lab):
            if time.monotonic() > t + 30:
                raise SystemExit("the lab never came up")
            time.sleep(0.1)
        for kind in args.faults.split(","):
            rows = []
            for i in range(args.runs):
                row = one_run(lab, kind, args.cap)
                rows.append(row)
                print(f"{kind} run {i}: {row}", flush=True)
                # A random pause: a fixed one would lock the runs' phase to the daemon's
                # periodic checks (0.5 s interface, 2 s audit) and bias the figures.
                time.sleep(rng.uniform(0.5, 2.5))
            result["faults"][kind] = {**summary(rows), "rows": rows}
    result["loadavg_at_end"] = os.getloadavg()
    name = "operator_faults" + (f"_{args.label}" if args.label else "")
    path = write(name, result)
    print(f"\n{'fault':16} {'runs':>4} {'manual':>6} {'rec p50':>8} {'rec max':>8} "
          f"{'outage p50':>10} {'lines p50/max':>13}")
    for kind, s in result["faults"].items():
        print(f"{kind:16} {s['runs']:>4} {s['manual_steps']:>6} {s['recovery_p50_s']!s:>8} "
              f"{s['recovery_max_s']!s:>8} {s['outage_p50_s']!s:>10} "
              f"{s['log_lines_p50']!s:>6}/{s['log_lines_max']!s}")
    print(f"written {path}; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
