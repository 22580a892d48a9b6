"""Idle control traffic per peer and CPU per daemon, in the lab, for each timer profile.

Brings up a mesh, lets it settle, then reads every daemon's byte counters twice over a
quiet window. Reports Babel payload bytes/s sent per peer and the same with IPv6+UDP
(48 B) and WireGuard (32 B + outer IPv4/UDP 28 B) overhead per packet, and CPU per daemon.
Writes bench/results/idle_traffic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from wgcast.client import request
from wgcast.lab.core import Lab

WIRE_OVERHEAD = 48 + 32 + 28


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(topology: str, timers: str, window: float) -> dict[str, object]:
    with Lab(topology, instances="n1", timers=timers, delay="5ms", seed=1) as lab:
        nodes = list(lab.topology.nodes)
        time.sleep(3.0)

        def snap() -> dict[str, tuple[int, int, int, float]]:
            out = {}
            for n in nodes:
                st = request(lab.nodes[n].api_socket, {"cmd": "status"})["status"]
                pid = lab.process(n, "daemon")["pid"]
                out[n] = (st["counters"]["bytes_out"], st["counters"]["packets_out"],
                          st["neighbours"], cpu_seconds(pid))
            return out

        a = snap()
        t0 = time.monotonic()
        time.sleep(window)
        b = snap()
        dt = time.monotonic() - t0
    per_peer_payload, per_peer_wire, cpu = [], [], []
    for n in nodes:
        dbytes, dpk = b[n][0] - a[n][0], b[n][1] - a[n][1]
        peers = max(1, a[n][2])
        per_peer_payload.append(dbytes / dt / peers)
        per_peer_wire.append((dbytes + dpk * WIRE_OVERHEAD) / dt / peers)
        cpu.append((b[n][3] - a[n][3]) / dt * 100)
    return {"topology": topology, "timers": timers, "window_s": round(dt, 1),
            "payload_bytes_per_s_per_peer": round(statistics.median(per_peer_payload), 1),
            "wire_bytes_per_s_per_peer": round(statistics.median(per_peer_wire), 1),
            "cpu_percent_per_daemon": round(statistics.median(cpu), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--topology", default="full:4")
    ap.add_argument("--window", type=float, default=10.0)
    args = ap.parse_args()
    res = [measure(args.topology, t, args.window) for t in ("default", "fast")]
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/idle_traffic.json", "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
