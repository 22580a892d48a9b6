#!/usr/bin/env python3
"""Where does a wgcast daemon spend its CPU under load? py-spy on a live daemon.

Brings up a lab (default random:16:4, fast timers, 1 ms links, anycast instances on n1
and n16), picks the node with the most peers, and while a link elsewhere in the mesh
flaps (down/up every ``--flap`` seconds: routes are withdrawn and re-announced across
the mesh), samples that node's daemon with py-spy for ``--duration`` seconds (idle time
in select/epoll excluded). Aggregates the samples into the functions with the most self
time and the most inclusive time, and writes bench/results/profile_daemon.json (plus the
collapsed stacks, for a flame graph, in bench/results/profile_daemon.collapsed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import RESULTS, cpu_seconds, machine, write

from wgcast.lab.core import Lab

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    if exe.exists():
        return str(exe)
    found = shutil.which("py-spy")
    if not found:
        sys.exit("py-spy is missing: pip install py-spy (it is in the dev extras)")
    return found


def short(frame: str) -> str:
    """'func (path/to/wgcast/babel/route.py:123)' -> 'babel/route.py:func'."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    if path.startswith("wgcast/") and path != "wgcast":
        return f"{path[len('wgcast/'):]}:{m.group('func')}"
    for marker in ("/wgcast/", "/lib/python3", "site-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib/python3"):
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{path}:{m.group('func')}"


def aggregate(collapsed: str, top: int = 15) -> dict[str, Any]:
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f.strip()]
        # py-spy puts the thread name first ("process 123:..."/thread): drop non-frames
        frames = [f for f in frames if ":" in f and not f.startswith("process ")]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n

    def rows(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "samples": s, "percent": round(100 * s / total, 1)}
                for f, s in c.most_common(top)] if total else []

    ours = Counter({f: s for f, s in incl.items()
                    if f.split(":", 1)[0].split("/")[0] in
                    ("babel", "daemon", "dataplane", "anycast", "sim", "endpoints.py",
                     "keys.py", "client.py", "probe.py")})
    return {"samples": total, "self": rows(self_t), "inclusive": rows(incl),
            "inclusive_wgcast": rows(ours)}


def flapper(lab: Lab, a: str, b: str, period: float, stop: threading.Event) -> int:
    flaps = 0
    up = True
    while not stop.wait(period):
        up = not up
        try:
            lab.set_link(a, b, up=up)
        except Exception as e:  # keep flapping; reported
            print(f"flap: {e}", file=sys.stderr)
            continue
        flaps += 1
    if not up:
        lab.set_link(a, b, up=True)
    return flaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topology", default="random:16:4")
    ap.add_argument("--timers", default="fast", choices=["default", "fast"])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--flap", type=float, default=0.5,
                    help="seconds between link flaps (0: none, an idle profile)")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    spy = py_spy()
    n_nodes = int(args.topology.split(":")[1])
    with Lab(args.topology, instances=f"n1,n{n_nodes}", timers=args.timers, delay="1ms",
             seed=3) as lab:
        nodes = list(lab.topology.nodes)
        node = max(nodes, key=lambda n: (len(lab.topology.neighbours(n)), -nodes.index(n)))
        # flap a link that does not touch the profiled node: routes change everywhere
        flap = next(lk for lk in lab.links if node not in (lk.a, lk.b))
        time.sleep(3.0)
        pid = lab.process(node, "daemon")["pid"]
        stop = threading.Event()
        box: dict[str, int] = {}
        th = threading.Thread(target=lambda: box.update(
            flaps=flapper(lab, flap.a, flap.b, args.flap, stop) if args.flap > 0 else 0),
            daemon=True)
        raw = RESULTS / ("profile_daemon.collapsed" if args.flap > 0
                         else "profile_daemon_idle.collapsed")
        RESULTS.mkdir(parents=True, exist_ok=True)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        th.start()
        cp = subprocess.run([spy, "record", "--pid", str(pid), "--duration",
                             str(int(args.duration)), "--rate", str(args.rate), "--format",
                             "raw", "--output", str(raw), "--nonblocking"],
                            capture_output=True, text=True, timeout=args.duration + 60)
        stop.set()
        th.join(10)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        if cp.returncode != 0 or not raw.exists():
            sys.exit(f"py-spy failed: {cp.stderr[-2000:]}")
        prof = aggregate(raw.read_text())
        peers = len(lab.topology.neighbours(node))
    data = {"machine": machine(),
            "command": "python bench/profile_daemon.py " + " ".join(sys.argv[1:]),
            "topology": args.topology, "timers": args.timers, "node": node, "peers": peers,
            "flapping_link": [flap.a, flap.b], "flap_period_s": args.flap,
            "flaps": box.get("flaps"), "duration_s": args.duration,
            "daemon_cpu_percent": round(cpu, 1), "py_spy": os.path.basename(spy),
            "collapsed_stacks": str(raw.relative_to(RESULTS.parent.parent)), **prof}
    print(write("profile_daemon", data, args.out))


if __name__ == "__main__":
    main()
