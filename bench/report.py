#!/usr/bin/env python3
"""Render docs/performance.md and its PNG plots (docs/img/) from bench/results/*.json.

``python bench/report.py`` re-renders from whatever results exist (bench/run_all.py
calls it at the end of ``make bench``). Sections whose results are missing say so.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT

DOCS = ROOT / "docs"
IMG = DOCS / "img"
CASE_TITLES = {"service": "service kill", "node": "node cut", "drain": "drain"}
CONFIG_COLORS = {"wgcast-default": "#1f77b4", "wgcast-fast": "#6baed6",
                 "babeld-default": "#d62728", "babeld-fast": "#fc9272"}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3})
    return plt


def _save(fig: Any, name: str) -> str:
    IMG.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=100)
    _plt().close(fig)
    return f"img/{name}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10000:
        return f"{v / 1000:.1f} s"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    return f"{v:.0f} ms"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if r < 0.01:
        return f"{r:.4f}"
    return f"{r:.2f}" if r < 10 else f"{r:.0f}"


def _machine(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    for r in results:
        if r and "machine" in r:
            m: dict[str, Any] = r["machine"]
            return m
    return {}


# ----------------------------------------------------------------------------- failover
def failover_section(fc: dict[str, Any] | None, out: list[str]) -> dict[str, Any]:
    out.append("## 1. Failover outage seen by clients\n")
    if not fc:
        out.append("_No results: run `python bench/failover_compare.py`._\n")
        return {}
    s = fc["setup"]
    configs = [c["name"] for c in fc["configs"]]
    res = fc["results"]
    out.append(
        f"Topology `{s['topology']}` (link delays {s['delay']}, seed {s['seed']}), anycast "
        f"instances {s['instances']}; the instance on **{s['target']}** fails while every "
        f"other node probes the anycast address every {s['probe_interval_ms']:g} ms. The "
        "outage of a client is its longest run of unanswered queries; the figures cover "
        f"the clients that {s['target']} served before the failure, over "
        f"{s['runs']} runs per case ({s['runs_long']} where the window must be long). "
        "All four routers ran one after the other in the same invocation, on the same "
        "namespaces, relay and delays.\n")
    out.append("| router | hello | " + " | ".join(
        f"{CASE_TITLES[c]} p50 | max" for c in s["cases"]) + " | bystanders p50 / max |")
    out.append("|---|---|" + "---|---|" * len(s["cases"]) + "---|")
    for name in configs:
        r = res.get(name, {})
        hello = next((c["hello_s"] for c in fc["configs"] if c["name"] == name), None)
        cells = []
        for case in s["cases"]:
            cs = r.get("cases", {}).get(case)
            if not cs:
                cells += ["-", "-"]
                continue
            o = cs["outage_ms"]
            cens = f" ({cs['censored']} not recovered in window)" if cs["censored"] else ""
            cells += [fmt_ms(o["p50"]), fmt_ms(o["max"]) + f" (n={o['n']}){cens}"]
        by = [cs["bystander_outage_ms"] for cs in r.get("cases", {}).values()
              if cs.get("bystander_outage_ms", {}).get("n")]
        bcell = "-"
        if by:
            bcell = (f"{fmt_ms(max(b['p50'] for b in by))} / "
                     f"{fmt_ms(max(b['max'] for b in by))}")
        out.append(f"| {name} | {hello:g} s | " + " | ".join(cells) + f" | {bcell} |")
    out.append("\n_Bystanders_: the clients that did not have to move (they keep their "
               "instance); what they lose is collateral damage or the noise of the machine, "
               "the floor against which the outages should be read (worst case over the "
               "three failures).\n")
    ratios = fc.get("ratios_wgcast_over_babeld", {})
    if ratios:
        out.append("Ratio wgcast / babeld of the outage (below 1: wgcast recovers faster):\n")
        out.append("| failure | default timers p50 | max | fast timers p50 | max |")
        out.append("|---|---|---|---|---|")
        for case in s["cases"]:
            rr = ratios.get(case, {})
            d, f = rr.get("default", {}), rr.get("fast", {})
            out.append(f"| {CASE_TITLES[case]} | {fmt_ratio(d.get('p50'))} | "
                       f"{fmt_ratio(d.get('max'))} | {fmt_ratio(f.get('p50'))} | "
                       f"{fmt_ratio(f.get('max'))} |")
        out.append("")
    # plot
    plt = _plt()
    cases = s["cases"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(configs))
    for k, name in enumerate(configs):
        xs, p50s, maxs = [], [], []
        for i, case in enumerate(cases):
            cs = res.get(name, {}).get("cases", {}).get(case)
            if not cs or cs["outage_ms"]["p50"] is None:
                continue
            xs.append(i + (k - (len(configs) - 1) / 2) * width)
            p50s.append(max(cs["outage_ms"]["p50"], 1.0))
            maxs.append(max(cs["outage_ms"]["max"], 1.0))
        ax.bar(xs, p50s, width * 0.9, label=name, color=CONFIG_COLORS.get(name))
        ax.scatter(xs, maxs, marker="_", s=200, color="black", zorder=3)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)), [CASE_TITLES[c] for c in cases])
    ax.set_ylabel("outage per client (ms, log)")
    ax.set_title("Failover outage: bars p50, ticks max")
    ax.legend(fontsize=8, ncol=2)
    img = _save(fig, "failover.png")
    out.append(f"![failover outage]({img})\n")
    out.append(f"Reproduce: `{fc['command']}` (`make bench` runs it; `--quick` for 2 runs).\n")
    return res


# ----------------------------------------------------------------------------- idle
def idle_section(ic: dict[str, Any] | None, out: list[str]) -> list[dict[str, Any]]:
    out.append("## 2. Idle control traffic and CPU\n")
    if not ic:
        out.append("_No results: run `python bench/idle_compare.py`._\n")
        return []
    rows = [r for r in ic["rows"] if "error" not in r]
    configs = [c["name"] for c in ic["configs"]]
    out.append(
        "Settled meshes with 1 ms links and one anycast instance. Bytes are what each "
        "router hands to WireGuard (IPv6 + UDP + Babel, the tun devices' tx counters) and "
        "the UDP payload wireguard-go sends (encryption, keepalives and handshakes "
        "included), per peer; CPU is user + system time of the routing daemon over the "
        "window, in % of one core; medians over the nodes.\n")
    out.append("| nodes | router | hello | IP B/s per peer | WireGuard B/s per peer | "
               "daemon CPU % | daemon RSS MiB | wireguard-go procs/node | "
               "wireguard-go CPU %/node |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    hello = {c["name"]: c["hello_s"] for c in ic["configs"]}
    for r in sorted(rows, key=lambda r: (r["nodes"], configs.index(r["config"]))):
        out.append(f"| {r['nodes']} ({r['topology']}) | {r['config']} | "
                   f"{hello.get(r['config'], 0):g} s | {r['ip_bytes_per_s_per_peer']:.0f} | "
                   f"{r['wg_bytes_per_s_per_peer']:.0f} | {r['daemon_cpu_percent']:.2f} | "
                   f"{r['daemon_rss_mib']} | {r['wireguard_go_processes_per_node']:g} | "
                   f"{r['wireguard_go_cpu_percent_per_node']:.2f} |")
    for r in ic["rows"]:
        if "error" in r:
            out.append(f"\n_{r['config']} at {r['nodes']} nodes failed: {r['error']}_")
    out.append("")
    # ratios
    out.append("Ratio wgcast / babeld (same timer class):\n")
    out.append("| nodes | timers | IP bytes | daemon CPU |")
    out.append("|---|---|---|---|")
    by = {(r["config"], r["nodes"]): r for r in rows}
    for n in sorted({r["nodes"] for r in rows}):
        for pair in ("default", "fast"):
            w, b = by.get((f"wgcast-{pair}", n)), by.get((f"babeld-{pair}", n))
            if not w or not b:
                continue
            rb = (w["ip_bytes_per_s_per_peer"] / b["ip_bytes_per_s_per_peer"]
                  if b["ip_bytes_per_s_per_peer"] else None)
            rc = (w["daemon_cpu_percent"] / b["daemon_cpu_percent"]
                  if b["daemon_cpu_percent"] else None)
            out.append(f"| {n} | {pair} | {fmt_ratio(rb)} | "
                       f"{fmt_ratio(rc) if rc is not None else 'babeld ~0'} |")
    out.append("")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in configs:
        pts = sorted((r["nodes"], r) for r in rows if r["config"] == name)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1]["ip_bytes_per_s_per_peer"] for p in pts], "o-", label=name,
                     color=CONFIG_COLORS.get(name))
        axes[1].plot(xs, [max(p[1]["daemon_cpu_percent"], 0.01) for p in pts], "o-",
                     label=name, color=CONFIG_COLORS.get(name))
    axes[0].set_title("control bytes/s per peer (IP level)")
    axes[1].set_title("CPU per routing daemon (% of a core)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_xticks(sorted({r["nodes"] for r in rows}))
    axes[0].legend(fontsize=8)
    img = _save(fig, "idle.png")
    out.append(f"![idle traffic and CPU]({img})\n")
    out.append(f"Reproduce: `{ic['command']}`.\n")
    return rows


# ----------------------------------------------------------------------------- engine/sim
def _num(d: Any, *keys: str) -> Any:
    for k in keys:
        if isinstance(d, dict) and k in d:
            return d[k]
    return None


def engine_sim_section(eng: dict[str, Any] | None, sim: dict[str, Any] | None,
                       out: list[str]) -> None:
    out.append("## 3. Engine throughput and the simulator\n")
    if not eng:
        out.append("_No engine results (bench/bench_engine.py did not run or wrote "
                   "nothing)._\n")
    elif isinstance(eng.get("update_tlvs_per_s"), dict):
        rates = eng["update_tlvs_per_s"]
        alls = eng.get("update_tlvs_per_s_all", {})
        out.append(
            "Update TLVs one engine (`wgcast.babel.engine.Node`, sans-IO: bytes in, bytes "
            f"out, no sockets) processes per second on one core: rounds of "
            f"{eng.get('updates_per_round', '?'):,} Updates from one neighbour, median of "
            f"{eng.get('repeats', '?')} rounds (_new_: unseen prefixes, route creation and "
            "selection, triggered updates to 5 other neighbours; _changed_: the same "
            "prefixes with a better metric; _periodic_: a neighbour's identical full "
            "dump).\n")
        out.append("| workload | Update TLVs/s (median) | min | max |")
        out.append("|---|---|---|---|")
        for k, v in rates.items():
            a = alls.get(k) or [v]
            out.append(f"| {k} | {v:,.0f} | {min(a):,.0f} | {max(a):,.0f} |")
        out.append("")
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 2.8))
        ks = list(rates)
        ax.bar(ks, [rates[k] for k in ks], color="#1f77b4")
        for i, k in enumerate(ks):
            a = alls.get(k) or [rates[k]]
            ax.plot([i, i], [min(a), max(a)], color="black")
        ax.set_ylabel("Update TLVs/s, one core")
        ax.set_title("Engine throughput (bars median, lines min-max)")
        img = _save(fig, "engine.png")
        out.append(f"![engine throughput]({img})\n")
        cmd = eng.get("command") or step_command("engine")
        if cmd:
            out.append(f"Reproduce: `{cmd}`.\n")
    else:
        out.append("Engine (sans-IO Babel engine, one core, no I/O):\n")
        out.append(_generic_table(eng))
        cmd = eng.get("command") or step_command("engine")
        if cmd:
            out.append(f"Reproduce: `{cmd}`.\n")
    if not sim:
        out.append("_No simulator results (bench/bench_sim.py did not run or wrote "
                   "nothing)._\n")
        return
    rows = sorted(_rows(sim), key=lambda r: r.get("nodes") or r.get("size") or 0)
    if not rows or "convergence_ms" not in rows[0]:
        out.append("`wgcast sim` (virtual time):\n")
        out.append(_generic_table(sim))
        return
    out.append(
        f"`wgcast sim`: every node a real engine, in virtual time; topology "
        f"`{sim.get('topology', 'random:N:6')}` (random graph, average degree 6, link delays "
        f"2-20 ms), {sim.get('anycast', '10x3')} anycast prefixes (10 prefixes, 3 origins "
        "each) plus one unicast prefix per node; after convergence the anycast origin with "
        "the largest catchment is retracted. _Convergence_: virtual time from the start "
        "until no route changes any more (smoothing and hysteresis settling included); "
        "_failover_: the same after the retraction (the last route change anywhere, "
        "metric smoothing included); _repair_: until every node that lost its instance "
        "routes to a live one again (what clients see). A loop checker runs at every route "
        "change; after quiescence every route is compared with shortest paths computed "
        "by networkx. Wall and CPU time and peak memory are of the simulating process "
        "(one per size); other jobs shared the 2 cores (load average in the table).\n")
    out.append("| nodes | links | prefixes | converged | loops | wrong routes | "
               "convergence (virtual s) | failover (virtual ms) | repair (virtual ms) | "
               "messages / node / s | bytes / node / s | wall s | CPU s | peak RSS MiB | "
               "load |")
    out.append("|" + "---|" * 15)
    for r in rows:
        conv = r.get("convergence_ms")
        out.append("| " + " | ".join(_cell(x) for x in (
            r.get("nodes"), r.get("links"), r.get("prefixes"), str(r.get("converged")),
            r.get("loops"), r.get("wrong_routes"),
            None if conv is None else round(conv / 1000, 2), r.get("failover_ms"),
            r.get("repair_ms"), r.get("msgs_per_node_s"), r.get("bytes_per_node_s"),
            r.get("wall_s"), r.get("cpu_s"),
            r.get("peak_rss_mib", r.get("peak_rss_mb")), r.get("loadavg_1m_at_end"))) + " |")
    out.append("")
    plt = _plt()
    panels = [("convergence_ms", "convergence (virtual ms)"),
              ("failover_ms", "failover (virtual ms)"), ("wall_s", "wall time (s)"),
              ("peak_rss_mib", "peak RSS (MiB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3))
    for ax, (k, title) in zip(axes, panels, strict=True):
        pts = [(r["nodes"], r[k]) for r in rows if r.get(k) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("nodes")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    img = _save(fig, "sim.png")
    out.append(f"![simulator]({img})\n")
    cmd = sim.get("command") or step_command("sim")
    if cmd:
        out.append(f"Reproduce: `{cmd}` (sizes one at a time: `--sizes 2000`; rows of "
                   "other sizes are kept).\n")


def sim_scale_section(scale: dict[str, Any] | None, out: list[str]) -> None:
    """bench_sim.py --rows: issue 18's table, before/after labels side by side."""
    if not scale or not _rows(scale):
        return
    rows = _rows(scale)
    out.append(
        f"Full meshes and random graphs (`bench/bench_sim.py --rows`): anycast "
        f"{scale.get('anycast', '10x3')}, `--fail {scale.get('fail', 'origin')}`, "
        f"{scale.get('timers', 'default')} timers. _Idle_: bytes and messages (datagrams) "
        f"per node per second in a window of {_cell(scale.get('idle_s'))} virtual s after "
        "boot convergence with nothing failing; _boot_: everything sent until boot "
        "quiescence. A row killed at the wall cap says `> cap` (CPU seconds used by then). "
        "Wall and CPU are of one process on the shared 2-core machine (load average in "
        "the table: above 2 the wall time is mostly waiting).\n")
    out.append("| topology | label | converged | loops | idle B/node/s | idle msgs/node/s | "
               "boot B/node/s | boot msgs/node/s | failover (virtual ms) | wall s | CPU s | "
               "peak RSS MiB | load |")
    out.append("|" + "---|" * 13)
    for r in rows:
        out.append("| " + " | ".join(_cell(x) for x in (
            r.get("topology"), r.get("label"), str(r.get("converged", "-")), r.get("loops"),
            r.get("idle_bytes_per_node_s"), r.get("idle_msgs_per_node_s"),
            r.get("boot_bytes_per_node_s"), r.get("boot_msgs_per_node_s"),
            r.get("failover_ms"), r.get("wall_s"), r.get("cpu_s"), r.get("peak_rss_mib"),
            r.get("loadavg_1m_at_end"))) + " |")
    out.append("")
    for r in rows:
        if r.get("capped") and r.get("virtual_s_reached") is not None:
            out.append(f"- {r.get('topology')} {r.get('label')}: killed at the cap after "
                       f"{_cell(r.get('virtual_s_reached'))} virtual s (phases done: "
                       f"{', '.join(r.get('phases_done') or []) or 'none'}), "
                       f"{_cell(r.get('virtual_s_per_cpu_s'))} virtual s per CPU s.")
    ab = scale.get("ab_full50_idle5")
    if isinstance(ab, dict) and ab.get("runs"):
        runs = ab["runs"]
        cells = "; ".join(f"{r['code']} {r['cpu_s']} CPU s / {r['wall_s']} wall s"
                          for r in runs)
        out.append(f"- Side by side ({ab.get('note', '')}): {cells}.")
    eb = scale.get("engine_bench_update_tlvs_per_s_median_of_7_runs")
    if isinstance(eb, dict) and "before" in eb and "after" in eb:
        cells = "; ".join(f"{k} {_cell(eb['before'][k])} -> {_cell(eb['after'][k])}"
                          for k in eb["before"])
        out.append(f"- Engine, Update TLVs/s before -> after ({eb.get('note', '')}): {cells}.")
    if scale.get("note"):
        out.append(f"\n_{scale['note']}_\n")
    out.append("")
    out.append("Reproduce: `python bench/bench_sim.py --rows all --label after` (one row: "
               "`--rows full:300`; rows of other topologies and labels are kept).\n")


def _rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    for k in ("rows", "results", "runs", "sizes"):
        v = d.get(k)
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return v
    return []


def _generic_table(d: dict[str, Any]) -> str:
    """A Markdown table of a result file's rows (scalar columns), or its scalars."""
    rows = _rows(d)
    if not rows:
        skip = {"machine", "command", "bench", "written"}
        lines = ["| metric | value |", "|---|---|"]
        for k, v in d.items():
            if k not in skip and isinstance(v, int | float | str):
                lines.append(f"| {k} | {v} |")
        return "\n".join(lines) + "\n"
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and isinstance(v, int | float | str | None):
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# ----------------------------------------------------------------------------- data plane
def dataplane_section(ua: dict[str, Any] | None, out: list[str]) -> None:
    out.append("## 4. Data plane: prefix moves through the UAPI\n")
    if not ua:
        out.append("_No results: run `python bench/uapi_apply.py`._\n")
        return
    out.append(
        f"One wireguard-go ({ua.get('wireguard_go')}) with {ua.get('peers')} peers and a "
        "table of T prefixes; a batch of N moves (each prefix to another peer) is one "
        "`UapiDevice.apply()`: one UAPI set request. Medians of "
        f"{ua.get('repeats')} repeats, in ms.\n")
    tables = ua["tables"]
    batches = sorted({int(b) for t in tables for b in t["moves"]})
    out.append("| table size T | " + " | ".join(f"{b:,} moves" for b in batches)
               + " | µs per move (largest N) | read all (get) | plan N | remove 1 |")
    out.append("|---|" + "---|" * (len(batches) + 4))
    for t in tables:
        cells = [fmt_ms(t["moves"][str(b)]["median_ms"]) if str(b) in t["moves"]
                 and t["moves"][str(b)]["median_ms"] >= 1
                 else (f"{t['moves'][str(b)]['median_ms']:.2f} ms" if str(b) in t["moves"]
                       else "-") for b in batches]
        big = t["moves"][str(max(int(b) for b in t["moves"]))]
        out.append(f"| {t['table_size']:,} | " + " | ".join(cells)
                   + f" | {big['per_move_us']:.1f} | {fmt_ms(t['get']['median_ms'])} | "
                   f"{fmt_ms(t['plan']['median_ms'])} (N={t['plan']['batch']:,}) | "
                   f"{fmt_ms(t['remove_1']['median_ms'])} |")
    out.append("")
    if len(tables) >= 2:
        lo, hi = tables[0], tables[-1]
        k = str(max(int(b) for b in lo["moves"] if b in hi["moves"]))
        grow = hi["table_size"] / lo["table_size"]
        out.append(
            f"How it grows: a move costs about the same whatever the table size (N={int(k):,}:"
            f" {lo['moves'][k]['per_move_us']:.1f} µs per move at T={lo['table_size']:,}, "
            f"{hi['moves'][k]['per_move_us']:.1f} µs at T={hi['table_size']:,}): "
            "wireguard-go inserts into its trie and wgcast sends only the moves. What grows "
            f"with T is what touches the whole table: reading it (`get`, x"
            f"{hi['get']['median_ms'] / lo['get']['median_ms']:.0f} for x{grow:.0f} "
            "prefixes), planning against it, and removing one prefix, which on "
            "wireguard-go (no `allowed_ip=-P`) re-sends the peer's whole remaining list "
            f"(x{hi['remove_1']['median_ms'] / lo['remove_1']['median_ms']:.0f}). Moves "
            "are what failover needs; removals only happen when a prefix leaves the mesh.\n")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for t in tables:
        pts = sorted((int(b), v["median_ms"]) for b, v in t["moves"].items())
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                     label=f"T={t['table_size']:,}")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("moves per apply (N)")
    axes[0].set_ylabel("ms")
    axes[0].set_title("apply N moves")
    axes[0].legend(fontsize=8)
    sizes = [t["table_size"] for t in tables]
    for key, label in (("get", "read all (get)"), ("remove_1", "remove 1 prefix"),
                       ("plan", "plan (pure)")):
        axes[1].plot(sizes, [t[key]["median_ms"] for t in tables], "o-", label=label)
    one = [t["moves"].get("1", {}).get("median_ms") for t in tables]
    axes[1].plot(sizes, one, "o-", label="move 1 prefix")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("table size T")
    axes[1].set_title("growth with the table")
    axes[1].legend(fontsize=8)
    img = _save(fig, "dataplane.png")
    out.append(f"![data plane]({img})\n")
    cmd = ua.get("command") or step_command("dataplane") or "python bench/uapi_apply.py"
    out.append(f"Reproduce: `{cmd}`.\n")


def step_command(name: str) -> str | None:
    """The command run_all used for a step (for results that do not record theirs)."""
    run = load("run_all") or {}
    for st in run.get("steps", []):
        if st.get("name") == name and st.get("argv"):
            return " ".join(st["argv"])
    return None


# ----------------------------------------------------------------------------- profile
def profile_section(pr: dict[str, Any] | None, out: list[str]) -> None:
    out.append("## 5. Profile of a daemon under load\n")
    if not pr:
        out.append("_No results: run `python bench/profile_daemon.py` (needs py-spy)._\n")
        return
    out.append(
        f"py-spy at {pr.get('samples')} samples on the daemon of {pr['node']} "
        f"({pr['peers']} peers) in `{pr['topology']}` with {pr['timers']} timers while the "
        f"link {'-'.join(pr['flapping_link'])} flapped every {pr['flap_period_s']:g} s "
        f"({pr.get('flaps')} flaps in {pr['duration_s']:g} s); the daemon used "
        f"{pr['daemon_cpu_percent']}% of a core. Idle time (waiting in epoll) is not "
        "sampled.\n")
    out.append("Most self time:\n")
    out.append("| function | % of samples |")
    out.append("|---|---|")
    for r in pr["self"][:10]:
        out.append(f"| `{r['function']}` | {r['percent']} |")
    out.append("\nMost inclusive time in wgcast's code:\n")
    out.append("| function | % of samples |")
    out.append("|---|---|")
    for r in pr["inclusive_wgcast"][:12]:
        out.append(f"| `{r['function']}` | {r['percent']} |")
    out.append(f"\nReproduce: `{pr['command']}` (collapsed stacks for a flame graph in "
               f"`{pr['collapsed_stacks']}`, not committed).\n")


# ----------------------------------------------------------------------------- findings
REASONS = {
    ("failover", "node"): (
        "a node cut is detected by missing hellos on both sides; at equal hello intervals "
        "babeld declares the neighbour dead a little sooner (2 of its last 3 hellos "
        "missing: about 2.7 intervals, 135 ms at 50 ms) than wgcast (`dead` = 3 missed "
        "hellos: 150 ms, checked against the last one heard), and the Python daemon is "
        "scheduled later than babeld on a loaded machine, so it sees the missing hellos "
        "later. Lowering `dead` to 2 would trade that for more false alarms"),
    ("failover", "service"): (
        "the membership is held by a connection: the daemon retracts when the member's "
        "socket closes, then the neighbours switch; any delay is the daemon noticing the "
        "close and its retraction travelling hop by hop"),
    ("failover", "drain"): (
        "a wgcast drain first announces the instance at a very bad metric and waits "
        "until the neighbours have moved, each holding its move until the replies in "
        "flight through the old peer are in; only then does it retract and stop the "
        "service, so nothing should be lost"),
    ("idle", "bytes"): (
        "control traffic is proportional to the hello rate: wgcast's default hello is "
        "200 ms (a dead neighbour is noticed in 0.6 s), babeld's is 4 s (noticed in "
        "8-12 s); each wgcast hello is a Hello+IHU with RTT timestamps to each peer"),
    ("idle", "bytes", "fast"): (
        "at the same 50 ms hello wgcast sends less than babeld on small meshes (babeld "
        "dumps its whole table every 4 hellos), but its per-peer traffic jumps where its "
        "daemons saturate this 2-core machine (16 Python daemons at ~10% of a core each, "
        "on 2 vCPUs shared with other jobs): hellos leave late, neighbours flap, and "
        "the triggered updates, seqno requests and acknowledgements that follow add up; "
        "babeld's C daemons stay under 1% of a core and keep to their schedule"),
    ("idle", "cpu"): (
        "wgcast is a Python asyncio daemon: every packet is parsed and serialised in "
        "Python, routes are keyed by `ipaddress` objects, timers go through the event "
        "loop (see the profile below); babeld is a small C program"),
}


def findings(fc: dict[str, Any] | None, ic: dict[str, Any] | None, out: list[str]) -> None:
    """Where wgcast is slower or costlier than babeld, from the data, with the reason."""
    slower: list[str] = []
    faster: list[str] = []
    if fc:
        loads = [float(r[k][0]) for r in fc["results"].values()
                 for k in ("loadavg_before", "loadavg_after") if r.get(k)]
        if loads and max(loads) > 3:
            out.append(f"**The failover figures were measured at load average "
                       f"{min(loads):.1f}-{max(loads):.1f} on {fc['machine'].get('cpus')} "
                       "CPUs: noisy** (see the bystanders' loss in section 1); the "
                       "slower/faster lines below inherit that noise.\n")
        res = fc["results"]
        for case in fc["setup"]["cases"]:
            for pair in ("default", "fast"):
                w = res.get(f"wgcast-{pair}", {}).get("cases", {}).get(case)
                b = res.get(f"babeld-{pair}", {}).get("cases", {}).get(case)
                if not w or not b or w["outage_ms"]["p50"] is None \
                        or b["outage_ms"]["p50"] is None:
                    continue
                wp, bp = w["outage_ms"]["p50"], b["outage_ms"]["p50"]
                line = (f"{CASE_TITLES[case]}, {pair} timers: outage p50 wgcast "
                        f"{fmt_ms(wp)} vs babeld {fmt_ms(bp)}")
                wm, bm = w["outage_ms"]["max"], b["outage_ms"]["max"]
                if wp > bp:
                    slower.append(f"- **{line}.** Why: {REASONS[('failover', case)]}.")
                else:
                    faster.append(f"- {line} ({fmt_ratio(wp / bp if bp else None)}x).")
                    if wm > bm:
                        slower.append(
                            f"- **{CASE_TITLES[case]}, {pair} timers: the worst outage** "
                            f"(max wgcast {fmt_ms(wm)} vs babeld {fmt_ms(bm)}, although the "
                            f"median is better). Why: the tail is the Python daemon "
                            "scheduled late on this loaded machine (hellos sent or "
                            "processed late, a neighbour declared dead or alive late); "
                            f"the bystanders lost up to "
                            f"{fmt_ms(w.get('bystander_outage_ms', {}).get('max'))} in the "
                            "same runs.")
    if ic:
        rows = [r for r in ic["rows"] if "error" not in r]
        by = {(r["config"], r["nodes"]): r for r in rows}
        for pair in ("default", "fast"):
            bytes_worse, cpu_worse, ns = [], [], []
            for n in sorted({r["nodes"] for r in rows}):
                w, b = by.get((f"wgcast-{pair}", n)), by.get((f"babeld-{pair}", n))
                if not w or not b:
                    continue
                ns.append(n)
                if w["ip_bytes_per_s_per_peer"] > b["ip_bytes_per_s_per_peer"]:
                    bytes_worse.append(f"{n} nodes: {w['ip_bytes_per_s_per_peer']:.0f} vs "
                                       f"{b['ip_bytes_per_s_per_peer']:.0f} B/s")
                if w["daemon_cpu_percent"] > b["daemon_cpu_percent"]:
                    cpu_worse.append(f"{n} nodes: {w['daemon_cpu_percent']:.2f}% vs "
                                     f"{b['daemon_cpu_percent']:.2f}%")
            if bytes_worse:
                why = REASONS.get(("idle", "bytes", pair), REASONS[("idle", "bytes")])
                slower.append(f"- **Idle control bytes per peer, {pair} timers** ("
                              + "; ".join(bytes_worse) + f"). Why: {why}.")
            if ns and len(bytes_worse) < len(ns):
                faster.append(f"- Idle control bytes per peer, {pair} timers: wgcast sends "
                              f"less than babeld at {len(ns) - len(bytes_worse)} of "
                              f"{len(ns)} mesh sizes.")
            if cpu_worse:
                slower.append(f"- **Daemon CPU at idle, {pair} timers** ("
                              + "; ".join(cpu_worse) + f"). Why: {REASONS[('idle', 'cpu')]}.")
            mem = [(by[(f"wgcast-{pair}", n)].get("daemon_rss_mib"),
                    by[(f"babeld-{pair}", n)].get("daemon_rss_mib")) for n in ns]
            if mem and all(a and b and a > b for a, b in mem):
                slower.append(f"- **Daemon memory, {pair} timers**: RSS "
                              f"{mem[-1][0]} MiB vs {mem[-1][1]} MiB. Why: a Python "
                              "interpreter with its libraries (click, pyroute2, asyncio, "
                              "cryptography) against a C daemon.")
    out.append("## Where wgcast is slower or costlier than babeld, and why\n")
    out.append("\n".join(slower) if slower else "Nowhere in this run.")
    out.append("")
    if faster:
        out.append("Where wgcast is faster (ratio wgcast / babeld):\n")
        out.append("\n".join(faster))
        out.append("")


# ----------------------------------------------------------------------------- main
def _loadavg(data: dict[str, Any] | None) -> str:
    """The 1-minute load average when a result file started, if it recorded one."""
    if not data:
        return "-"
    machine = data.get("machine")
    for src in (machine if isinstance(machine, dict) else {}, data):
        for k in ("loadavg_at_start", "loadavg_start"):
            v = src.get(k)
            if isinstance(v, list | tuple) and v:
                return f"{float(v[0]):.1f}"
    return "-"


def render(notes: str = "") -> Path:
    fc = load("failover_compare")
    ic = load("idle_compare")
    eng = load("engine") or load("bench_engine")
    sim = load("sim") or load("bench_sim")
    ua = load("uapi_apply")
    pr = load("profile_daemon")
    run = load("run_all") or {}
    m = dict(_machine([run, fc, ic, pr]))
    # Each comparison names the babeld it ran against (they can differ).
    used = {name: d["machine"].get("babeld") for name, d in (("failover", fc), ("idle", ic))
            if d and isinstance(d.get("machine"), dict) and d["machine"].get("babeld")}
    if len(set(used.values())) > 1:
        m["babeld"] = "; ".join(f"{v} ({k})" for k, v in used.items())
    elif used:
        m["babeld"] = next(iter(used.values()))
    out: list[str] = ["# wgcast performance\n"]
    out.append(
        f"Generated by `make bench` (`python bench/run_all.py"
        f"{' --quick' if run.get('quick') else ''}`), rendered on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the results listed "
        "below (a step can be re-run alone; each file says when it was written). "
        "Every figure says the command that reproduces it; raw results are in "
        "`bench/results/*.json`. Nothing here is a timed test: these are measurements on "
        "a shared, noisy machine (medians, every comparison side by side in one run).\n")
    out.append("## Machine\n")
    out.append("| | |\n|---|---|")
    for k, label in (("cpu", "CPU"), ("cpus", "logical CPUs"), ("hypervisor", "hypervisor"),
                     ("memory_gib", "memory (GiB)"), ("kernel", "kernel"), ("os", "OS"),
                     ("python", "Python"), ("wireguard_go", "wireguard-go"),
                     ("babeld", "babeld")):
        if m.get(k) is not None:
            out.append(f"| {label} | {m[k]} |")
    out.append("\nWireGuard is wireguard-go (no kernel WireGuard here); links are emulated "
               "by a userspace relay (no netem), so every packet crosses two extra "
               "user-space hops.\n")
    files = {"failover": fc, "idle": ic, "engine": eng, "sim": sim, "dataplane": ua,
             "profile": pr}
    steps = {st["name"]: st for st in run.get("steps", [])}
    out.append("Results in this report:\n")
    out.append("| step | written | load average at its start | seconds in the last "
               "`make bench` |\n|---|---|---|---|")
    for name, data in files.items():
        st = steps.get(name, {})
        written = "not run" if not data else data.get("written", "(no date recorded)")
        load1 = _loadavg(data)
        out.append(f"| {name} | {written} | {load1} | "
                   f"{st.get('seconds', '-')} ({st.get('status', 'not in that run')}) |")
    out.append("")
    findings(fc, ic, out)
    if notes:
        out.append(notes)
    failover_section(fc, out)
    idle_section(ic, out)
    engine_sim_section(eng, sim, out)
    sim_scale_section(load("sim_scale"), out)
    dataplane_section(ua, out)
    profile_section(pr, out)
    closing = ROOT / "bench" / "closing.md"
    if closing.exists():
        out.append(closing.read_text())
    text = "\n".join(out).rstrip() + "\n"
    DOCS.mkdir(exist_ok=True)
    path = DOCS / "performance.md"
    path.write_text(text)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--notes", default=None, help="a Markdown file inserted after the "
                    "machine section (the analysis)")
    args = ap.parse_args()
    notes = ""
    default_notes = ROOT / "bench" / "notes.md"
    if args.notes:
        notes = Path(args.notes).read_text()
    elif default_notes.exists():
        notes = default_notes.read_text()
    print(render(notes))


if __name__ == "__main__":
    main()
