#!/usr/bin/env python3
"""The catchment page's data endpoint with many prefixes: real daemons (in-memory back
ends, the real engine and web server), a hub with 4 neighbours, N anycast prefixes
served at two of them. Times the table build and GET /catchments.json over loopback.

    python bench/catchments_web.py [--prefixes 100] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from daemon_fakes import Mesh, config_text, running, until  # noqa: E402

from wgcast import keys  # noqa: E402
from wgcast.daemon.web import WebServer  # noqa: E402


def _stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 3),
            "p95_ms": round(ms[max(0, int(0.95 * len(ms)) - 1)], 3),
            "max_ms": round(ms[-1], 3)}


async def main(n_prefixes: int, requests: int) -> dict[str, object]:
    names = ["hub", "a", "b", "c", "d"]
    priv = {n: keys.generate_private() for n in names}
    pub = {n: keys.public_from_private(k) for n, k in priv.items()}
    prefixes = [ipaddress.ip_network(f"10.9.{i // 250}.{i % 250 + 1}/32")
                for i in range(n_prefixes)]
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh()
        for n in names:
            peers = {p: pub[p] for p in names if p != n}
            mesh.add(n, priv[n], config_text(n, tmp, peers,
                                             f'name = "{n}"\nanycast = ["10.9.0.0/16"]'))
        hub = mesh.nodes["hub"].daemon
        async with running(mesh):
            for n in ("a", "d"):
                for p in prefixes:
                    await mesh.nodes[n].daemon.serve(p)
            await until(lambda: len(hub.catchment_table()["prefixes"]) == n_prefixes
                        and all(nb["origin"] for r in hub.catchment_table()["prefixes"]
                                for nb in r["neighbours"]), timeout=60, what="converged")
            build = []
            for _ in range(requests):
                t = time.perf_counter()
                hub.catchment_table()
                build.append((time.perf_counter() - t) * 1000)
            web = WebServer(lambda only, every: hub.catchment_table(only, every),
                            "127.0.0.1", 0)
            await web.start()
            get, size = [], 0
            try:
                for _ in range(requests):
                    t = time.perf_counter()
                    r, w = await asyncio.open_connection("127.0.0.1", web.bound_port)
                    w.write(b"GET /catchments.json HTTP/1.1\r\nHost: x\r\n\r\n")
                    body = await r.read()
                    w.close()
                    get.append((time.perf_counter() - t) * 1000)
                    size = len(body)
            finally:
                await web.stop()
    return {"prefixes": n_prefixes, "neighbours": 4, "requests": requests,
            "table_build": _stats(build), "http_get": _stats(get), "bytes": size,
            "load": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefixes", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.prefixes, a.requests)), indent=2))
