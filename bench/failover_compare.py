#!/usr/bin/env python3
"""Failover outage seen by clients, wgcast vs babeld, on the same lab topology, in one run.

For each router configuration (wgcast with its default and fast timers; babeld as its
users must deploy it on WireGuard today, one interface per peer, with its default hello
interval and with a short one; see wgcast.lab.babeld) and each failure:

* ``service``: the instance's service dies. wgcast: SIGKILL of the ``wgcast join``
  process holding the membership (and its echo). babeld: the echo is killed and its
  address leaves ``lo`` at the same instant (babeld knows nothing of services; this is
  the best health script a babeld user can have);
* ``node``: the instance's node is cut off (its underlay link goes down);
* ``drain``: wgcast: ``drain`` through the daemon's API (metric 32768 until the
  neighbours moved, their moves held, then retract; then the service stops). babeld: the
  address leaves ``lo``.

the same node (``--target``, by default n5 of line:5 with instances n1 and n5) fails
while every other node probes the anycast address once per millisecond; the outage of a
client is the longest run of unanswered queries (wgcast.lab.prober). Summaries cover the
clients that were served by the failed instance. A client that has not recovered when
its prober stops counts with the whole window (``censored``).

Writes bench/results/failover_compare.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import machine, p50_max, write

from wgcast.lab.babeld import BABELD_DEFAULT_HELLO, BabeldRouter, babeld_binary, babeld_version
from wgcast.lab.core import Lab, LabError

CASES = ("service", "node", "drain")


@dataclass
class Config:
    name: str
    router: str  # "wgcast" | "babeld"
    timers: str = "default"  # wgcast
    hello: float | None = None  # babeld (None: its default, 4 s)
    #: wgcast with a signed roster: origin signatures on (docs/roster.md).
    sign: bool = False

    @property
    def hello_s(self) -> float:
        if self.router == "wgcast":
            return 0.2 if self.timers == "default" else 0.05
        return self.hello or BABELD_DEFAULT_HELLO

    def window(self, case: str) -> float:
        """Seconds the probers run after the failure: long enough to see recovery."""
        if self.router == "wgcast":
            return 3.0 if self.timers == "default" else 2.0
        # babeld: ~3 hellos to declare a neighbour dead. A removed address is not
        # retracted by babeld 1.12 (see the report): its neighbours wait for the route's
        # hold time, 0.06 s per centisecond of update interval (4 hellos), at least 15 s.
        if case == "node":
            return max(3.0, 6 * self.hello_s)
        return max(15.0, 24 * self.hello_s) + 15.0

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "router": self.router}
        if self.router == "wgcast":
            d["timers"] = self.timers
            d["signing"] = self.sign
        d["hello_s"] = self.hello_s
        return d


def default_babeld() -> str:
    """babeld 1.14 built into build/ (tests/interop builds it), else the system's."""
    built = Path(__file__).resolve().parent.parent / "build" / "babeld-1.14" / "babeld"
    return str(built) if built.exists() else babeld_binary()


def make_configs(fast_hello: float) -> list[Config]:
    return [Config("wgcast-default", "wgcast", timers="default"),
            Config("wgcast-signed", "wgcast", timers="default", sign=True),
            Config("wgcast-fast", "wgcast", timers="fast"),
            Config("babeld-default", "babeld", hello=None),
            Config("babeld-fast", "babeld", hello=fast_hello)]


def roster_hook() -> Callable[[str, dict[str, Any]], None]:
    """A config hook giving every node a signed roster (written at the first call, when
    the lab knows its keys): each node may originate its /48, serve its groups, and
    signs what it originates. `hook.lab` must be set before the lab comes up."""
    from wgcast.keys import b64, decode_key
    from wgcast.origin import signing_public
    from wgcast.roster import generate_mesh_key, parse

    mesh_priv, mesh_pub = generate_mesh_key()
    holder: dict[str, Lab] = {}

    def hook(node: str, cfg: dict[str, Any]) -> None:
        lab = holder["lab"]
        path = os.path.join(lab.dir, "roster.toml")
        if not os.path.exists(path):
            lines = ["serial = 1", f'mesh_prefixes = ["fd5a:{lab.id}::/32"]']
            for n in lab.nodes.values():
                space = ipaddress.ip_network(f"{n.unicast}/48", strict=False)
                lines += ["[[members]]", f'name = "{n.name}"',
                          f'public_key = "{n.public_key}"', f'prefixes = ["{space}"]',
                          "groups = [" + ", ".join(f'"{g}"' for g in n.serves) + "]",
                          f'sign_key = "{b64(signing_public(decode_key(n.private_key)))}"']
            with open(path, "w") as f:
                f.write(parse("\n".join(lines) + "\n").signed(mesh_priv).to_toml())
        cfg["roster"] = path
        cfg["mesh_key"] = b64(mesh_pub)

    hook.holder = holder  # type: ignore[attr-defined]
    return hook


def build(cfg: Config, args: argparse.Namespace) -> Lab:
    common = {"instances": args.instances, "delay": args.delay, "seed": args.seed}
    if cfg.router == "babeld":
        return Lab(args.topology, router=BabeldRouter(hello=cfg.hello, binary=args.babeld),
                   **common)
    if cfg.sign:
        hook = roster_hook()
        lab = Lab(args.topology, timers=cfg.timers, config_hook=hook, **common)
        hook.holder["lab"] = lab  # type: ignore[attr-defined]
        return lab
    return Lab(args.topology, timers=cfg.timers, **common)


def settle(lab: Lab, clients: list[str], stable_s: float, timeout: float,
           want: dict[str, Any] | None = None) -> dict[str, Any]:
    """Poll the catchment until every client is answered and nothing changed for
    ``stable_s`` seconds (and, with ``want``, it is that one); returns it (or the last
    one at the deadline)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    since = time.monotonic()
    while True:
        c = lab.catchment(nodes=clients, timeout=0.5)
        now = time.monotonic()
        if c != last or not all(c.values()) or (want is not None and c != want):
            last, since = c, now
        elif now - since >= stable_s:
            return c
        if now >= deadline:
            return c
        time.sleep(0.25)


def one_run(lab: Lab, cfg: Config, case: str, target: str, clients: list[str],
            before: dict[str, Any], lead: float) -> dict[str, Any]:
    window = cfg.window(case)
    probers = [lab.start_prober(c, duration=lead + window) for c in clients]
    time.sleep(lead)
    t_fail = time.monotonic()
    lab.fail(target, case)
    fail_call_ms = (time.monotonic() - t_fail) * 1000
    res = {p.node: p.wait() for p in probers}
    per_client: dict[str, Any] = {}
    for c, r in res.items():
        segs = r.get("timeline") or []
        after = segs[-1]["node"] if segs else None
        answered_by = {k: v for k, v in (r.get("nodes") or {}).items() if v}
        per_client[c] = {"outage_ms": float(r.get("outage_ms") or 0.0),
                         "lost": int(r.get("lost") or 0), "before": before.get(c),
                         "after": after, "answered_by": answered_by,
                         "recovered": recovered(before.get(c), target, answered_by, segs),
                         "timeline": [(s.get("from_ms"), s.get("to_ms"), s.get("node"))
                                      for s in segs[:8]]}
    return {"fail_call_ms": round(fail_call_ms, 1), "window_s": window,
            "failure_at_ms": round((t_fail - probers[0].started) * 1000, 1),
            "per_client": per_client}


def recovered(before: str | None, target: str, answered_by: dict[str, int],
              segments: list[Any]) -> bool:
    """Did a client of the failed instance get answers from another one afterwards?
    (A client that stayed put recovered if its last answers came from someone.)"""
    if before != target:
        return bool(segments) and _seg_node(segments[-1]) is not None
    if answered_by:
        return any(n != target for n in answered_by)
    return any(_seg_node(s) not in (None, target) for s in segments)


def _seg_node(seg: Any) -> Any:
    return seg.get("node") if isinstance(seg, dict) else seg[2]


def run_config(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"config": cfg.describe(), "cases": {}}
    t0 = time.monotonic()
    lab = build(cfg, args)
    try:
        with lab:
            out["lab_up_s"] = round(time.monotonic() - t0, 1)
            nodes = list(lab.topology.nodes)
            instances = {m for g in lab.groups for m in g.members}
            # Instances answer their own queries locally: they are not clients.
            clients = [n for n in nodes if n != args.target and n not in instances]
            out["loadavg_before"] = os.getloadavg()
            stable = max(2.0, 2.5 * cfg.hello_s)
            # The catchment every run starts from: settled for longer than babeld's metric
            # smoothing (half-life 4 s) lets a better route take over.
            baseline = settle(lab, clients, max(8.0, 3 * cfg.hello_s), 60 + 10 * cfg.hello_s)
            out["baseline"] = baseline
            print(f"  baseline catchment: {baseline}", file=sys.stderr, flush=True)
            for case in args.cases:
                runs = []
                n_runs = args.runs if cfg.window(case) <= 10 else args.runs_long
                for k in range(n_runs):
                    before = settle(lab, clients, stable, 20 + 10 * cfg.hello_s, baseline)
                    if before != baseline:
                        print(f"  {cfg.name} {case}: catchment {before} is not the "
                              f"baseline yet", file=sys.stderr)
                    if sum(1 for v in before.values() if v == args.target) == 0:
                        print(f"  {cfg.name} {case}: nobody reaches {args.target} "
                              f"({before})", file=sys.stderr)
                    try:
                        r = one_run(lab, cfg, case, args.target, clients, before, args.lead)
                    except LabError as e:
                        print(f"  {cfg.name} {case} run {k}: {e}", file=sys.stderr)
                        runs.append({"error": str(e)})
                        _restore(lab, args.target, case)
                        continue
                    r["before"] = before
                    _restore(lab, args.target, case)
                    runs.append(r)
                    moved = {c: v["outage_ms"] for c, v in r["per_client"].items()
                             if v["before"] == args.target}
                    print(f"  {cfg.name:15} {case:8} run {k + 1}/{n_runs}: outage "
                          + ", ".join(f"{c} {ms:.0f}ms" for c, ms in moved.items()),
                          file=sys.stderr, flush=True)
                out["cases"][case] = summarize(runs, args.target)
    finally:
        lab.down()
    out["total_s"] = round(time.monotonic() - t0, 1)
    out["loadavg_after"] = os.getloadavg()
    return out


def _restore(lab: Lab, target: str, case: str) -> None:
    try:
        lab.restore(target, case)
    except LabError as e:
        print(f"  restore {case} on {target}: {e}", file=sys.stderr)


def summarize(runs: list[dict[str, Any]], target: str) -> dict[str, Any]:
    outages: list[float] = []
    bystanders: list[float] = []
    censored = 0
    worst: list[float] = []
    for r in runs:
        if "error" in r:
            continue
        moved = [v for v in r["per_client"].values() if v["before"] == target]
        bystanders += [v["outage_ms"] for v in r["per_client"].values()
                       if v["before"] != target]
        outages += [v["outage_ms"] for v in moved]
        censored += sum(1 for v in moved if not v["recovered"])
        if moved:
            worst.append(max(v["outage_ms"] for v in moved))
    # Clients that did not have to move: what they lose is collateral (or the noise of
    # a loaded machine), the floor against which the outages above should be read.
    return {"outage_ms": p50_max(outages), "worst_client_ms": p50_max(worst),
            "bystander_outage_ms": p50_max(bystanders),
            "censored": censored, "errors": sum(1 for r in runs if "error" in r),
            "runs": runs}


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """wgcast / babeld of p50 and max outage, per case, default vs default, fast vs fast."""
    out: dict[str, Any] = {}
    for case in CASES:
        for pair in ("default", "fast"):
            w = results.get(f"wgcast-{pair}", {}).get("cases", {}).get(case)
            b = results.get(f"babeld-{pair}", {}).get("cases", {}).get(case)
            if not w or not b:
                continue
            row = {}
            for k in ("p50", "max"):
                wv, bv = w["outage_ms"][k], b["outage_ms"][k]
                row[k] = round(wv / bv, 3) if wv is not None and bv else None
            out.setdefault(case, {})[pair] = row
        w = results.get("wgcast-signed", {}).get("cases", {}).get(case)
        b = results.get("wgcast-default", {}).get("cases", {}).get(case)
        if w and b:  # the cost of origin signatures: signed / unsigned
            out.setdefault(case, {})["signed_over_unsigned"] = {
                k: (round(w["outage_ms"][k] / b["outage_ms"][k], 3)
                    if w["outage_ms"][k] is not None and b["outage_ms"][k] else None)
                for k in ("p50", "max")}
    return out


def resummarize(path: str) -> None:
    import json
    from pathlib import Path

    data = json.loads(Path(path).read_text())
    target = data["setup"]["target"]
    for res in data["results"].values():
        for case, cs in res.get("cases", {}).items():
            for r in cs["runs"]:
                for v in r.get("per_client", {}).values():
                    v["recovered"] = recovered(v["before"], target,
                                               v.get("answered_by") or {}, v["timeline"])
            res["cases"][case] = summarize(cs["runs"], target)
    data["ratios_wgcast_over_babeld"] = ratios(data["results"])
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    print(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topology", default="line:5")
    ap.add_argument("--instances", default="n1,n5")
    ap.add_argument("--target", default="n5")
    ap.add_argument("--delay", default="2-20ms")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--runs", type=int, default=6, help="runs per case with a short window")
    ap.add_argument("--runs-long", type=int, default=3,
                    help="runs per case whose window is long (babeld retractions)")
    ap.add_argument("--lead", type=float, default=1.0, help="probing before the failure (s)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--configs", default="wgcast-default,wgcast-fast,babeld-default,babeld-fast")
    ap.add_argument("--babeld-fast-hello", type=float, default=0.05,
                    help="babeld's short hello interval (s); the same as wgcast's fast timers")
    ap.add_argument("--babeld", default=default_babeld(),
                    help="the babeld binary (default: 1.14 built into build/ when there, "
                         "else the system's)")
    ap.add_argument("--quick", action="store_true", help="2 runs (1 long) per case")
    ap.add_argument("--out", default=None)
    ap.add_argument("--resummarize", metavar="JSON", default=None,
                    help="recompute the summaries of an existing result file and exit")
    args = ap.parse_args()
    if args.resummarize:
        resummarize(args.resummarize)
        return
    args.cases = [c for c in args.cases.split(",") if c]
    if args.quick:
        args.runs, args.runs_long = 2, 1
    wanted = args.configs.split(",")
    configs = [c for c in make_configs(args.babeld_fast_hello) if c.name in wanted]
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    for cfg in configs:
        print(f"{cfg.name}:", file=sys.stderr, flush=True)
        try:
            results[cfg.name] = run_config(cfg, args)
        except LabError as e:
            print(f"{cfg.name}: {e}", file=sys.stderr)
            results[cfg.name] = {"config": cfg.describe(), "error": str(e), "cases": {}}
    mach = machine()
    mach["babeld"] = babeld_version(args.babeld)  # the one compared, not the system's
    data = {"machine": mach,
            "setup": {"topology": args.topology, "instances": args.instances,
                      "target": args.target, "delay": args.delay, "seed": args.seed,
                      "probe_interval_ms": 1.0, "runs": args.runs,
                      "runs_long": args.runs_long, "cases": args.cases,
                      "quick": args.quick, "babeld": args.babeld,
                      "babeld_version": babeld_version(args.babeld)},
            "command": " ".join(["python bench/failover_compare.py", *sys.argv[1:]]),
            "configs": [c.describe() for c in configs], "results": results,
            "ratios_wgcast_over_babeld": ratios(results),
            "elapsed_s": round(time.monotonic() - t0, 1)}
    path = write("failover_compare", data, args.out)
    print(path)


if __name__ == "__main__":
    main()
