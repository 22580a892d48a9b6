"""`wgcast lab demo`: the main job, a measured anycast failover on a real mesh.

Up a mesh, print which instance every node reaches (and check it is the nearest by the
emulated link delays), fail the instance that serves most nodes while every other node
probes the anycast address once per millisecond, and report the outage each client saw:
counted for the clients that had to move, beside their physical floor from the link
delays; the others are bystanders whose loss is the run's noise floor (demo_report.py).
Everything is torn down at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from wgcast.lab import demo_report as report
from wgcast.lab.core import Lab
from wgcast.lab.system import LabError, timeout_scale

#: How long probers run before the failure, and after it, per timer profile (seconds).
_LEAD = 1.0
_TAIL = {"default": 2.5, "fast": 1.5}


@dataclass
class DemoOptions:
    topology: str = "line:5"
    instances: str = "n1,n5"
    fail: str = "node"
    runs: int = 1
    timers: str = "default"
    delay: str = "2-20ms"
    jitter: str = "0"
    loss: str = "0"
    seed: int = 7
    #: Health check of the instances (services mode): interval and fall.
    health_interval: str = "200ms"
    health_fall: int = 2
    out: Callable[[str], None] = print
    quiet: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)
    #: "kernel" / "go" (None: kernel where the module loads); "netem" / "relay" links.
    wireguard: str | None = None
    links: str | None = None
    #: Write a plot of who answered each client over time here (PNG, or SVG by suffix).
    plot: str | None = None


def nearest_instances(lab: Lab, instances: list[str]) -> dict[str, set[str]]:
    """Per node, the instances at the lowest summed link delay (several on a tie)."""
    g = nx.Graph()
    for lk in lab.topology.links:
        w = lk.delay_ms
        if g.has_edge(lk.a, lk.b):
            w = min(w, g[lk.a][lk.b]["w"])
        g.add_edge(lk.a, lk.b, w=w)
    out: dict[str, set[str]] = {}
    for n in lab.topology.nodes:
        dist = nx.single_source_dijkstra_path_length(g, n, weight="w")
        best = min(dist.get(i, float("inf")) for i in instances)
        out[n] = {i for i in instances if abs(dist.get(i, float("inf")) - best) < 0.5}
    return out


def wait_catchment(lab: Lab, nodes: list[str], timeout: float,
                   want: Callable[[dict[str, str | None]], bool]) -> dict[str, str | None]:
    """Poll the catchment until `want` holds (or the deadline passes: return the last)."""
    deadline = time.monotonic() + timeout
    while True:
        c = lab.catchment(nodes=nodes, timeout=0.5)
        if want(c) or time.monotonic() >= deadline:
            return c
        time.sleep(0.2)


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(values), 1), "max": round(max(values), 1)}


def run_demo(opt: DemoOptions) -> dict[str, Any]:
    say = (lambda s: None) if opt.quiet else opt.out
    lab = Lab(opt.topology, instances=opt.instances, timers=opt.timers, delay=opt.delay,
              jitter=opt.jitter, loss=opt.loss, seed=opt.seed,
              health_interval=opt.health_interval, health_fall=opt.health_fall,
              wireguard=opt.wireguard, links=opt.links)
    result: dict[str, Any] = {"cleaned_up": False, "wireguard": lab.wireguard,
                              "links": lab.link_mode}
    try:
        t0 = time.monotonic()
        with lab:
            nodes = list(lab.topology.nodes)
            instances = list(lab.groups[0].members) if lab.groups else []
            if not instances:
                raise LabError("the demo needs at least one anycast instance (--instances)")
            say(f"lab {lab.id}: {len(nodes)} nodes ({opt.topology}, delays {opt.delay}, "
                f"{lab.wireguard} WireGuard, {lab.link_mode} links), "
                f"instances {', '.join(instances)}, timers {opt.timers}; up in "
                f"{time.monotonic() - t0:.1f}s")
            nearest = nearest_instances(lab, instances)
            catch = wait_catchment(
                lab, nodes, 20.0 * timeout_scale(),
                lambda c: all(c[n] in nearest[n] for n in nodes))
            rtts = lab.query_many(nodes, lab.anycast(0))
            nearest_ok = all(catch[n] in nearest[n] for n in nodes)
            say("\ncatchment (node -> instance, RTT):")
            for n in nodes:
                r = rtts.get(n)
                mark = "" if catch[n] in nearest[n] else f"   (nearest: {sorted(nearest[n])})"
                say(f"  {n:>4} -> {catch[n] or '-':>4}  "
                    f"{'' if r is None else f'{r[1]:.1f} ms'}{mark}")
            counts = {i: sum(1 for n in nodes if catch[n] == i) for i in instances}
            target = max(instances, key=lambda i: (counts[i], -nodes.index(i)))
            clients = [n for n in nodes if n != target]
            say(f"\nfailing {target} (serves {counts[target]} nodes) by '{opt.fail}', "
                f"{opt.runs} run(s), probing from {', '.join(clients)} at 1 query per "
                f"{timeout_scale():g} ms")
            runs: list[dict[str, Any]] = []
            for k in range(opt.runs):
                runs.append(_one_run(lab, opt, target, clients, catch, k, say))
            per_client: dict[str, Any] = {}
            all_outages: list[float] = []
            all_moved: list[float] = []
            ratios: list[float] = []
            lost = 0
            for c in clients:
                rs = [r["per_client"][c] for r in runs]
                mv = [v for v in rs if v["moved"]]
                all_outages += [v["outage_ms"] for v in mv]  # bystanders: noise, not outage
                all_moved += [v["moved_ms"] for v in mv if v["moved_ms"] is not None]
                ratios += [v["outage_over_floor"] for v in mv
                           if v.get("outage_over_floor") is not None]
                lost += sum(v["lost"] for v in rs)
                floors = [v["floor"] for v in mv if v.get("floor")]
                per_client[c] = {
                    "role": "moved" if mv else "bystander",
                    **_pct([v["outage_ms"] for v in rs]),
                    "lost": sum(v["lost"] for v in rs),
                    "before": catch.get(c), "moved_to": rs[-1]["after"],
                    "floor": floors[-1] if floors else None,
                    "outage_over_floor": _pct([v["outage_over_floor"] for v in mv
                                               if v.get("outage_over_floor") is not None]),
                    "over_dv_floor_ms": _pct([v["over_dv_floor_ms"] for v in mv
                                              if v.get("over_dv_floor_ms") is not None]),
                }
            noise = report.noise_floor(runs, target)
            stages = _stage_medians(runs, clients)
            worst = [max((v["outage_ms"] for v in r["per_client"].values() if v["moved"]),
                         default=0.0) for r in runs]
            wd = [r["withdrawal"] for r in runs if r.get("withdrawal")]
            result.update({
                "lab": lab.id, "topology": opt.topology, "timers": opt.timers,
                "nodes": nodes, "instances": instances, "catchments": catch,
                "rtt_ms": {n: (None if (q := rtts.get(n)) is None else q[1]) for n in nodes},
                "nearest_ok": nearest_ok,
                "failure": {"node": target, "how": opt.fail, "runs": opt.runs},
                "clock": "ms since the failure was injected (CLOCK_MONOTONIC, all probers)",
                "outage_ms": _pct(all_outages),
                "outage_over_floor": _pct(ratios),
                "moved_ms": _pct(all_moved),
                "withdrawal_start_ms": _pct([w["start_ms"] for w in wd]),
                "withdrawal_done_ms": _pct([w["done_ms"] for w in wd]),
                "worst_client_outage_ms": _pct(worst),
                "moved_clients": [c for c in clients if per_client[c]["role"] == "moved"],
                "noise_floor": noise, "noisy": noise["noisy"],
                "per_client": per_client, "lost": lost, "breakdown_ms": stages,
                "lost_moved": lost - noise["lost"], "runs": runs,
            })
            if opt.plot:
                try:
                    result["plot"] = report.write_plot(
                        opt.plot, runs, f"lab {lab.id}: {opt.topology}, {target} failed "
                        f"by '{opt.fail}', timers {opt.timers}")
                except OSError as e:
                    result["plot_error"] = f"cannot write the plot {opt.plot}: {e}"
                    say(result["plot_error"])
        down = lab.down()
        result["cleaned_up"] = _clean(lab, down)
    finally:
        if not result["cleaned_up"]:
            result["cleaned_up"] = _clean(lab, lab.down())
    moved = result.get("moved_ms") or {}
    ratio = result.get("outage_over_floor") or {}
    noise = result.get("noise_floor") or {}
    say(f"\nsummary: outage p50 {result.get('outage_ms', {}).get('p50')} ms, max "
        f"{result.get('outage_ms', {}).get('max')} ms over the moved clients "
        f"({', '.join(result.get('moved_clients', [])) or 'none'}) and runs; outage/floor "
        f"p50 {ratio.get('p50')}, max {ratio.get('max')}; failure to traffic moved p50 "
        f"{moved.get('p50')} ms, max {moved.get('max')} ms; "
        f"{result.get('lost_moved')} queries lost by moved clients; "
        f"nearest_ok={result.get('nearest_ok')}; cleaned_up={result['cleaned_up']}")
    if noise:
        by = ", ".join(noise["bystanders"]) or "none"
        early = noise.get("moved_lost_before_failure") or {}
        say(f"noise floor: bystanders ({by}) lost {noise['lost']} queries"
            + (f" (longest gap {noise['max_outage_ms']} ms)" if noise["lost"] else "")
            + ("; moved clients lost before the failure could reach them: " + ", ".join(
                f"{c} {n}" for c, n in early.items()) if early else "")
            + ("; moved clients lost after the new instance answered: " + ", ".join(
                f"{c} {n}" for c, n in noise["moved_lost_after_moving"].items())
               if noise.get("moved_lost_after_moving") else "")
            + ("; traces of runs " + ", ".join(map(str, noise["trace_signs"]))
               + " show a starved daemon" if noise.get("trace_signs") else "")
            + (f": NOISY RUN (the lab itself lost packets; load average {_loadavg()}), "
               "read the outages with care" if noise["noisy"] else ": 0, a clean run"))
    for c, row in (result.get("breakdown_ms") or {}).items():
        say(f"breakdown {c} (median ms since the failure over {row['runs']} runs): "
            + ", ".join(f"{k} {v}" for k, v in row.items() if k != "runs"))
    if result.get("plot"):
        say(f"plot: {result['plot']}")
    return result


def _stage_medians(runs: list[dict[str, Any]], clients: list[str]) -> dict[str, Any]:
    """Per moved client, the median over the runs of each step of its breakdown (ms
    since the failure): detected, first Update sent, every hop ready, first answer."""
    out: dict[str, Any] = {}
    for c in clients:
        bs = [r["per_client"][c]["breakdown"] for r in runs
              if r["per_client"][c].get("breakdown") and
              "error" not in r["per_client"][c]["breakdown"]]
        if not bs:
            continue

        def med(xs: list[float | None]) -> float | None:
            vals = [x for x in xs if x is not None]
            return round(statistics.median(vals), 1) if vals else None
        row: dict[str, Any] = {
            "runs": len(bs), "detected": med([b["detected_ms"] for b in bs]),
            "first_update_sent": med([b["first_update_sent_ms"] for b in bs]),
            "ready": med([b["ready_ms"] for b in bs]),
            "first_answer": med([b["first_answer_ms"] for b in bs])}
        for h in bs[-1]["hops"]:
            n = h["node"]
            hs: list[dict[str, Any]] = [next((x for x in b["hops"] if x["node"] == n), {})
                                        for b in bs]
            row[f"{n}_heard"] = med([x.get("update_received_ms") for x in hs])
            row[f"{n}_selected"] = med([x.get("selected_ms") for x in hs])
            row[f"{n}_applied"] = med([x.get("applied_ms") for x in hs])
        out[c] = row
    return out


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def _clean(lab: Lab, down: dict[str, Any]) -> bool:
    from wgcast.lab.system import list_netns

    return not any(lab.id in ns for ns in list_netns()) if lab.id else True


def _one_run(lab: Lab, opt: DemoOptions, target: str, clients: list[str],
             before: dict[str, str | None], k: int,
             say: Callable[[str], None]) -> dict[str, Any]:
    slow = timeout_scale()  # a slow (emulated) machine: longer runs, same measurement
    duration = (_LEAD + _TAIL[opt.timers]) * slow
    # 1 query/ms per client; an emulated guest's echo services cannot answer 1,000 per
    # second each, so there the rate and the reply timeout follow the slowness too.
    probers = [lab.start_prober(c, duration=duration, interval_ms=1.0 * slow,
                                timeout_ms=1000.0 * min(slow, 5.0), realtime=slow <= 1)
               for c in clients]
    for p in probers:  # on a loaded machine a prober may take a while to start
        p.wait_started(5.0 * slow)
    time.sleep(_LEAD * 0.7 * slow)
    t_fail = time.monotonic()
    peer = None
    if opt.fail == "link":
        # The link of the target that carries most clients: its first hop towards them.
        peer = max(lab.topology.neighbours(target),
                   key=lambda p: sum(_behind(lab, target, p, c) for c in clients))
    fault = lab.fail(target, opt.fail, peer)
    res = {p.node: p.wait() for p in probers}
    withdrawal = _withdrawal(lab, target, t_fail) if opt.fail in ("service", "health",
                                                                  "drain") else None
    traces = _traces(lab, t_fail - report.TRACE_SLACK)
    per_client: dict[str, Any] = {}
    starts: list[float] = []
    for c, r in res.items():
        segs = r.get("segments") or r.get("timeline") or []
        after = segs[-1]["node"] if segs else None
        # The failure on the prober's own clock (CLOCK_MONOTONIC is shared); without the
        # prober's t0, its launch time stands in.
        c_fail = (t_fail - probers[0].started) * 1000 if "t0_monotonic_ns" not in r else \
            (t_fail * 1e9 - r["t0_monotonic_ns"]) / 1e6
        starts.append(-c_fail)
        moved = next((sw["at_ms"] - c_fail for sw in r.get("switches", [])
                      if sw.get("from") == target and sw["at_ms"] >= c_fail), None)
        v: dict[str, Any] = {"outage_ms": float(r.get("outage_ms") or 0.0),
                             "lost": int(r.get("lost") or 0), "before": before.get(c),
                             "after": after, "fail_at_ms": round(c_fail, 3),
                             "moved_ms": None if moved is None else round(moved, 3),
                             "segments": segs}
        v["moved"] = bool(report.moved_clients({c: v}, target))
        v["timeline"] = report.timeline(segs, c_fail, float(r.get("interval_ms") or 1.0))
        if v["moved"]:
            fl = report.physical_floor(lab.topology, target, c, after, opt.fail, peer)
            v["floor"] = None if fl is None else fl.as_dict()
            v["outage_over_floor"] = (round(v["outage_ms"] / fl.floor_ms, 2)
                                      if fl is not None and fl.floor_ms > 0 else None)
            # What distance vector allows (Floor.dv_floor_ms), in ms above it.
            v["over_dv_floor_ms"] = (round(v["outage_ms"] - fl.dv_floor_ms, 1)
                                     if fl is not None and fl.dv_floor_ms > 0 else None)
            if traces:
                v["breakdown"] = report.breakdown(traces, lab.topology, target, c, after,
                                                  opt.fail, t_fail, moved, peer)
        per_client[c] = v
    moved_c = {c: v for c, v in per_client.items() if v["moved"]}
    by = [c for c in per_client if c not in moved_c]
    say(f"run {k + 1} (t=0: the failure; probes from {min(starts, default=0):+.0f} ms): "
        "outage per moved client: " + (", ".join(
            f"{c} {v['outage_ms']:.1f} ms ({v['before']}->{v['after']}"
            + (f"; floor {v['floor']['floor_ms']:.1f} ms, x{v['outage_over_floor']}"
               if v.get("floor") and v.get("outage_over_floor") else "") + ")"
            for c, v in moved_c.items()) or "none")
        + ("; bystanders: " + ", ".join(f"{c} lost {per_client[c]['lost']}" for c in by)
           if by else ""))
    if k == 0:
        say("  timeline (ms since the failure: answering instance; short losses between "
            f"answers of one instance folded in, < {report.ISOLATED_MS:g} ms):")
        for c, v in per_client.items():
            say(f"    {c}: {report.format_timeline(v['timeline'])}")
        for c, v in moved_c.items():
            f = v.get("floor")
            if f:
                say(f"  floor {c}: {f['in_flight_ms']:.1f} ms of queries in flight to "
                    f"{target} + {f['signal_ms']:.1f} ms for the news from "
                    f"{f['detected_at']} to reach {f['turn_at']}"
                    + (f" - {f['client_to_turn_ms']:.1f} ms {c} to {f['turn_at']}"
                       if f["client_to_turn_ms"] else "")
                    + f" = {f['floor_ms']:.1f} ms (one-way {f['detected_at']}->{c}: "
                    f"{f['one_way_ms']:.1f} ms)")
    for v in moved_c.values():
        if v.get("breakdown"):
            say("  trace " + report.format_breakdown(v["breakdown"]))
    lab.restore(target, opt.fail, peer)
    back = wait_catchment(lab, clients, 20.0 * slow,
                          lambda c: all(c[n] == before.get(n) for n in clients))
    if any(back[n] != before.get(n) for n in clients):
        say(f"  (after restore the catchment differs: {back})")
    out: dict[str, Any] = {"per_client": per_client}
    if opt.fail == "drain" and isinstance(fault, list):
        out["drain"] = fault
    if withdrawal is not None:
        out["withdrawal"] = withdrawal
    signs = report.trace_noise(traces, opt.fail, withdrawal)
    if signs:
        out["noise_signs"] = signs
        say("  lab noise seen in the traces: " + "; ".join(signs))
    return out


def _traces(lab: Lab, since: float) -> dict[str, list[dict[str, Any]]]:
    """Every daemon's trace of group 0 since `since` (CLOCK_MONOTONIC): {} when the
    routers keep none (babeld) or cannot be asked (a stopped daemon is left out)."""
    if not lab.groups:
        return {}
    prefix = str(lab.groups[0].prefix)
    out: dict[str, list[dict[str, Any]]] = {}
    for n in lab.topology.nodes:
        try:
            out[n] = lab.api(n, {"cmd": "trace", "prefix": prefix, "since": since},
                             timeout=2.0).get("events", [])
        except (LabError, OSError):
            continue
    return out


def _withdrawal(lab: Lab, target: str, t_fail: float) -> dict[str, Any] | None:
    """The target daemon's last withdrawal of group 0, timed from the failure: when it
    started (the retraction, or the drain's first step) and ended (address down)."""
    try:
        g = lab.groups_of(target).get(lab.groups[0].prefix, {})
    except LabError:
        return None
    lw = g.get("last_withdrawal")
    if not lw or "started_monotonic" not in lw or lw["started_monotonic"] < t_fail - 1.0:
        return None
    return {"reason": lw["reason"], "graceful": lw["graceful"], "moved": lw["moved"],
            "acked": lw["acked"],
            "start_ms": round((lw["started_monotonic"] - t_fail) * 1000, 1),
            "done_ms": round((lw["done_monotonic"] - t_fail) * 1000, 1)}


def _behind(lab: Lab, target: str, first_hop: str, client: str) -> bool:
    """Does `client` reach `target` through the link target-first_hop?"""
    g = lab.topology.simple_graph()
    try:
        path = nx.shortest_path(g, client, target, weight="delay_ms")
    except nx.NetworkXNoPath:
        return False
    return len(path) >= 2 and path[-2] == first_hop
