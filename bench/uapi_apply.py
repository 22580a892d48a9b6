#!/usr/bin/env python3
"""How long does moving N prefixes between peers take through the UAPI of wireguard-go?

Starts one wireguard-go in a throwaway network namespace (root needed), gives it 4 peers
and a table of T owned prefixes (half IPv4 /32, half IPv6 /64) spread over two of them,
then times `UapiDevice.apply()` of batches of N moves (each prefix to the other peer:
one AddAllowedIP per prefix, one set request per batch) for every N <= T, at several T.
Also times `get()` (the read every reconcile starts from), `plan()` (pure) and a single
removal (on wireguard-go without `allowed_ip=-P`, the fallback re-sends the peer's whole
remaining list, so it grows with the table).

Prints one JSON object and writes bench/results/uapi_apply.json. Medians of --repeats.

`--backend netlink` runs the same on a kernel WireGuard link (`NetlinkDevice`), `both`
runs UAPI then netlink in the same process and adds the ratios netlink/UAPI per table
and batch (`make test-kernel`'s guest has both; this machine's kernel has no WireGuard).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from wgcast.dataplane.netlink import NetlinkDevice
from wgcast.dataplane.reconcile import plan
from wgcast.dataplane.types import AddAllowedIP, Prefix, RemoveAllowedIP, WireGuardBackend
from wgcast.dataplane.uapi import UapiDevice
from wgcast.keys import generate_private, public_from_private

RESULTS = Path(__file__).resolve().parent / "results" / "uapi_apply.json"


def prefixes(n: int) -> list[Prefix]:
    out: list[Prefix] = []
    for i in range(n):
        j = i // 2
        if i % 2 == 0:
            out.append(ipaddress.IPv4Network((0x0A000000 + j, 32)))
        else:
            out.append(ipaddress.IPv6Network(((0xFD00 << 112) | (j << 64), 64)))
    return out


class WireguardGo:
    """wireguard-go in its own namespace; killed and the namespace deleted on exit."""

    def __init__(self) -> None:
        self.ns = f"wgcast-bench-{os.getpid()}"
        self.ifname = f"wgbench{os.getpid() % 100000}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WireguardGo:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        try:
            env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "wireguard-go", self.ifname],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            sock = f"/var/run/wireguard/{self.ifname}.sock"
            deadline = time.monotonic() + 5
            while not os.path.exists(sock):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("wireguard-go did not start")
                time.sleep(0.01)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def version(self) -> str:
        out = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0] if out.stdout else "?"

    def device(self) -> WireGuardBackend:
        return UapiDevice(self.ifname, timeout=120)

    def run(self, coro_fn):  # type: ignore[no-untyped-def]
        return asyncio.run(coro_fn())


class KernelWireGuard:
    """A kernel WireGuard link in its own namespace; the namespace deleted on exit."""

    def __init__(self) -> None:
        self.ns = f"wgcast-benchk-{os.getpid()}"
        self.ifname = f"wgbenchk{os.getpid() % 10000}"

    def __enter__(self) -> KernelWireGuard:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        try:
            subprocess.run(["ip", "-n", self.ns, "link", "add", self.ifname, "type",
                            "wireguard"], check=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def version(self) -> str:
        return f"linux {platform.release()}"

    def device(self) -> WireGuardBackend:
        return NetlinkDevice(self.ifname)

    def run(self, coro_fn):  # type: ignore[no-untyped-def]
        from wgcast.lab.system import in_netns

        with in_netns(self.ns):  # the loop and the netlink worker thread live there
            return asyncio.run(coro_fn())


async def timed(coro_fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await coro_fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples), 3),
        "min_ms": round(min(samples), 3),
        "max_ms": round(max(samples), 3),
    }


async def bench_table(
    dev: WireGuardBackend, peers: list[bytes], size: int, batches: list[int], repeats: int
) -> dict[str, object]:
    a, b = peers[0], peers[1]
    table = prefixes(size)
    # reset: every owned prefix of the previous table goes; then load this one
    for k in peers:
        await dev.set_peer(k, allowed_ips=[], replace_allowed_ips=True)
    where = {p: (a if i % 2 == 0 else b) for i, p in enumerate(table)}
    t0 = time.perf_counter()
    await dev.apply([AddAllowedIP(k, p) for p, k in where.items()])
    load_ms = (time.perf_counter() - t0) * 1000

    result: dict[str, object] = {"table_size": size, "load_ms": round(load_ms, 3)}
    result["get"] = summary(await timed(dev.get, repeats))
    actual = (await dev.get()).allowed_ips_by_peer()
    managed = set(table)

    moves: dict[str, object] = {}
    for n in batches:
        if n > size:
            continue
        samples = []
        for r in range(repeats):
            chosen = table[(r * n) % size :][:n] or table[:n]
            ops = [AddAllowedIP(b if where[p] == a else a, p) for p in chosen]
            t0 = time.perf_counter()
            await dev.apply(ops)
            samples.append((time.perf_counter() - t0) * 1000)
            for op in ops:
                where[op.prefix] = op.peer
        moves[str(n)] = summary(samples) | {
            "per_move_us": round(statistics.median(samples) * 1000 / n, 3)
        }
    result["moves"] = moves

    # the pure planning step for the largest batch, from a fresh read
    actual = (await dev.get()).allowed_ips_by_peer()
    n = min(max(batches), size)
    desired = dict(where)
    for p in table[:n]:
        desired[p] = b if desired[p] == a else a
    plan_samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ops = plan(desired, actual, managed)
        plan_samples.append((time.perf_counter() - t0) * 1000)
    assert len(ops) == n
    result["plan"] = summary(plan_samples) | {"batch": n}

    # one removal (and its re-add, untimed) per repeat
    rm = []
    for r in range(repeats):
        p = table[r % size]
        t0 = time.perf_counter()
        await dev.apply([RemoveAllowedIP(where[p], p)])
        rm.append((time.perf_counter() - t0) * 1000)
        await dev.apply([AddAllowedIP(where[p], p)])
    result["remove_1"] = summary(rm)

    check = (await dev.get()).allowed_ips_by_peer()
    assert all(p in check[k] for p, k in where.items()), "device differs from the model"
    return result


async def run(
    sizes: list[int], batches: list[int], repeats: int, wg: WireguardGo | KernelWireGuard
) -> dict[str, object]:
    dev = wg.device()
    await dev.configure(private_key=generate_private())
    peers = [public_from_private(generate_private()) for _ in range(4)]
    for i, k in enumerate(peers):
        await dev.set_peer(k, endpoint=f"192.0.2.{i + 1}:51820")
    removal = await dev.supports_removal()
    tables = []
    for size in sizes:
        tables.append(await bench_table(dev, peers, size, batches, repeats))
        print(f"{dev.kind} table {size}: done", file=sys.stderr)
    await dev.close()
    return {
        "bench": "uapi_apply",
        "backend": dev.kind,
        "wireguard_go" if dev.kind == "uapi" else "kernel": wg.version(),
        "allowed_ip_removal_supported": removal,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": repeats,
        "peers": len(peers),
        "unit": "ms per apply(): one UAPI set request (connect, write, read errno, close)"
        if dev.kind == "uapi" else "ms per apply(): netlink SET_DEVICE message(s), acked",
        "tables": tables,
    }


def ratios(reports: dict[str, dict[str, object]]) -> dict[str, object]:
    """Median netlink / median UAPI, per table size and batch (moves, get, remove_1)."""
    out: dict[str, object] = {}
    for tu, tn in zip(reports["uapi"]["tables"], reports["netlink"]["tables"], strict=True):  # type: ignore[call-overload]
        row: dict[str, float] = {}
        for n, m in tu["moves"].items():
            row[f"moves_{n}"] = round(tn["moves"][n]["median_ms"] / m["median_ms"], 3)
        for k in ("get", "remove_1"):
            row[k] = round(tn[k]["median_ms"] / tu[k]["median_ms"], 3)
        out[str(tu["table_size"])] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,10000,100000", help="table sizes (owned prefixes)")
    ap.add_argument("--batches", default="1,100,1000,10000", help="moves per apply()")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--backend", choices=("uapi", "netlink", "both"), default="uapi")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    if args.backend != "netlink" and shutil.which("wireguard-go") is None:
        sys.exit("needs wireguard-go")
    sizes = [int(x) for x in args.sizes.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    reports: dict[str, dict[str, object]] = {}
    kinds = ("uapi", "netlink") if args.backend == "both" else (args.backend,)
    for kind in kinds:
        ctx = WireguardGo() if kind == "uapi" else KernelWireGuard()
        with ctx as wg:
            reports[kind] = wg.run(lambda wg=wg: run(sizes, batches, args.repeats, wg))
    report = reports[kinds[0]] if len(kinds) == 1 else {
        "bench": "uapi_apply", "backends": reports, "ratio_netlink_over_uapi": ratios(reports)}
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
