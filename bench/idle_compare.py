#!/usr/bin/env python3
"""Idle control traffic per peer and CPU per daemon, wgcast vs babeld, 4 to 32 nodes.

Each configuration (wgcast default/fast timers, babeld default/short hello: the same as
bench/failover_compare.py) runs on the same topologies (full:4, random:8:4, random:16:4,
random:32:4, 1 ms links, one anycast instance on n1). After the mesh has settled, the script reads,
twice over a quiet window:

* the bytes sent on every WireGuard interface of every node (the kernel's tx counters of
  the tun devices: IPv6 + UDP + Babel, i.e. what the router hands to WireGuard), and the
  UDP payload wireguard-go sent for every peer (its UAPI tx_bytes: encryption overhead,
  keepalives and handshakes included);
* the CPU time (user + system) and RSS of every node's routing daemon, and the CPU time
  of its wireguard-go processes (one per node for wgcast, one per peer for babeld).

Per node, bytes are divided by the node's number of peers; the figures are medians over
the nodes. Writes bench/results/idle_compare.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from common import cpu_seconds, machine, rss_kib, write
from failover_compare import Config, default_babeld, make_configs

from wgcast.lab.babeld import BabeldRouter, babeld_version
from wgcast.lab.core import Lab, LabError
from wgcast.lab.system import run, uapi_get

TOPOLOGIES = {4: "full:4", 8: "random:8:4", 16: "random:16:4", 32: "random:32:4"}


def update_interval(cfg: Config) -> float:
    if cfg.router == "wgcast":
        return 4.0 if cfg.timers == "default" else 2.0
    return 4 * cfg.hello_s


def ifaces_of(lab: Lab, node: str) -> list[str]:
    if isinstance(lab.router, BabeldRouter):
        return [i.name for i in lab.router.ifaces[node]]
    return [lab.nodes[node].iface]


def tun_tx(lab: Lab, node: str, names: list[str]) -> int:
    cp = run(["ip", "-n", lab.ns(node), "-j", "-s", "link", "show"])
    total = 0
    for link in json.loads(cp.stdout):
        if link.get("ifname") in names:
            total += int(link["stats64"]["tx"]["bytes"])
    return total


def snapshot(lab: Lab) -> dict[str, Any]:
    snap: dict[str, Any] = {"t": time.monotonic()}
    for n in lab.nodes:
        names = ifaces_of(lab, n)
        wg_tx = 0
        for name in names:
            for peer in uapi_get(name)["peers"].values():
                wg_tx += int(peer.get("tx") or 0)
        d = lab.process(n, "daemon")
        wgs = lab.processes(n, "wireguard-go")
        snap[n] = {"tun_tx": tun_tx(lab, n, names), "wg_tx": wg_tx,
                   "daemon_cpu": cpu_seconds(d["pid"]) if d else 0.0,
                   "daemon_rss_kib": rss_kib(d["pid"]) if d else None,
                   "wg_cpu": sum(cpu_seconds(p["pid"]) for p in wgs),
                   "wg_procs": len(wgs),
                   "peers": len(lab.topology.neighbours(n))}
    return snap


def measure(cfg: Config, nodes: int, settle_s: float, window_s: float | None,
            babeld: str) -> dict[str, Any]:
    topo = TOPOLOGIES[nodes]
    # 32 Python daemons importing at once on 2 cores take more than the default 10 s.
    kw = {"instances": "n1", "delay": "1ms", "seed": 1,
          "daemon_ready_timeout": max(10.0, 0.75 * nodes),
          # The instance's health check (an exec) at 1 s: its 200 ms default times out on
          # a 2-core host running 32 daemons, and idle cost is what is measured here.
          "health_interval": "1s"}
    t0 = time.monotonic()
    lab = (Lab(topo, router=BabeldRouter(hello=cfg.hello, binary=babeld), **kw)
           if cfg.router == "babeld" else Lab(topo, timers=cfg.timers, **kw))
    with lab:
        up_s = time.monotonic() - t0
        window = window_s or max(12.0, 2 * update_interval(cfg))
        time.sleep(max(settle_s, 2 * cfg.hello_s))
        answered = sum(1 for v in lab.catchment().values() if v)
        a = snapshot(lab)
        time.sleep(window)
        b = snapshot(lab)
    dt = b["t"] - a["t"]
    per_peer_tun, per_peer_wg, cpu, rss, wg_cpu, wg_procs = [], [], [], [], [], []
    for n in lab.topology.nodes:
        x, y = a[n], b[n]
        peers = max(1, x["peers"])
        per_peer_tun.append((y["tun_tx"] - x["tun_tx"]) / dt / peers)
        per_peer_wg.append((y["wg_tx"] - x["wg_tx"]) / dt / peers)
        cpu.append((y["daemon_cpu"] - x["daemon_cpu"]) / dt * 100)
        wg_cpu.append((y["wg_cpu"] - x["wg_cpu"]) / dt * 100)
        wg_procs.append(y["wg_procs"])
        if y["daemon_rss_kib"]:
            rss.append(y["daemon_rss_kib"])
    med = statistics.median
    return {
        "config": cfg.name, "nodes": nodes, "topology": topo,
        "links": len(lab.topology.links), "lab_up_s": round(up_s, 1),
        "window_s": round(dt, 1), "catchment_answered": answered,
        "ip_bytes_per_s_per_peer": round(med(per_peer_tun), 1),
        "wg_bytes_per_s_per_peer": round(med(per_peer_wg), 1),
        "daemon_cpu_percent": round(med(cpu), 3),
        "daemon_cpu_percent_max": round(max(cpu), 3),
        "daemon_rss_mib": round(med(rss) / 1024, 1) if rss else None,
        "wireguard_go_cpu_percent_per_node": round(med(wg_cpu), 3),
        "wireguard_go_processes_per_node": med(wg_procs),
    }


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """wgcast / babeld per size, default vs default and fast vs fast (same run)."""
    out: dict[str, dict[str, float | None]] = {}
    by = {(r["config"], r["nodes"]): r for r in rows if "error" not in r}
    keys = ("daemon_cpu_percent", "daemon_rss_mib", "ip_bytes_per_s_per_peer")
    for (name, n), w in by.items():
        if not name.startswith("wgcast-"):
            continue
        b = by.get((name.replace("wgcast-", "babeld-"), n))
        if b is None:
            continue
        out[f"{name[7:]}@{n}"] = {
            k: (round(w[k] / b[k], 2) if w.get(k) and b.get(k) else None) for k in keys}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="4,8,16")
    ap.add_argument("--configs", default="wgcast-default,wgcast-fast,babeld-default,babeld-fast")
    ap.add_argument("--babeld-fast-hello", type=float, default=0.05)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    ap.add_argument("--window", type=float, default=None,
                    help="measuring window (s); default max(12, 2 update intervals)")
    ap.add_argument("--quick", action="store_true", help="4 and 8 nodes, 8 s windows")
    ap.add_argument("--babeld", default=default_babeld(),
                    help="babeld binary (default: 1.14 built into build/, else the system's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 8]
        args.window = args.window or 8.0
        args.settle = min(args.settle, 3.0)
    wanted = args.configs.split(",")
    configs = [c for c in make_configs(args.babeld_fast_hello) if c.name in wanted]
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for n in sizes:
        for cfg in configs:
            try:
                row = measure(cfg, n, args.settle, args.window, args.babeld)
            except LabError as e:
                row = {"config": cfg.name, "nodes": n, "error": str(e)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    data = {"machine": machine(),
            "command": " ".join(["python bench/idle_compare.py", *sys.argv[1:]]),
            "configs": [c.describe() for c in configs],
            "babeld": babeld_version(args.babeld),
            "rows": rows, "ratios_wgcast_over_babeld": ratios(rows),
            "elapsed_s": round(time.monotonic() - t0, 1)}
    print(write("idle_compare", data, args.out))


if __name__ == "__main__":
    main()
