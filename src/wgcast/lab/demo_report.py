"""What `wgcast lab demo` concludes from its probes, kept free of the lab (pure, tested on
recorded prober output): who had to move and who is a bystander (the run's noise floor),
each moved client's physical floor from the lab's link delays, timelines on the failure's
clock, and a plot of who answered each client over time.

The clock: t = 0 is the moment the lab injected the failure, on CLOCK_MONOTONIC, which
every prober shares; a prober's own offsets (its ``t0_monotonic_ns``) are shifted onto it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import networkx as nx

from wgcast.topology import Topology

#: Failures the daemon handles gracefully (it moves traffic before the instance stops):
#: no packet has to be lost, so their floor is 0 and the ratio is not defined.
GRACEFUL = frozenset({"drain", "daemon"})

#: Unanswered runs shorter than this (ms) between answers from the same instance are
#: isolated losses, folded into that instance's segment and counted, not drawn as gaps.
ISOLATED_MS = 5.0


@dataclass(frozen=True, slots=True)
class Floor:
    """The least outage physics allows one client, from the link delays (one-way, ms).

    The prober's outage runs from the send of the last query answered before the failure
    to the send of the first answered after it. So it holds the queries already on their
    way to the failed element (``in_flight_ms``: client to it, plus back over a cut link),
    and those sent before the news of the failure reached ``turn_at``, the last node the
    old and new paths share, where the client's traffic can first turn (``signal_ms``
    from ``detected_at``, less the client's own ``client_to_turn_ms``). Detection timers
    (hellos, health checks) are not physics and are not in it.

    ``dv_floor_ms``: the least outage a distance-vector protocol allows (Babel tells each
    neighbour one route per prefix, its selected one, and poisons it to its next hop): a
    node of the client's new path that the failed instance served (the client itself
    included) learns its new route only once the news reached it and its new
    announcement came back down the new path. On line:5, n4 (next to a killed n5) turns
    only when n3's route to n1 came back: a round trip to n3 on top of the physics.
    """

    detected_at: str
    turn_at: str
    one_way_ms: float
    in_flight_ms: float
    signal_ms: float
    client_to_turn_ms: float
    floor_ms: float
    dv_floor_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"detected_at": self.detected_at, "turn_at": self.turn_at,
                "one_way_ms": self.one_way_ms, "in_flight_ms": self.in_flight_ms,
                "signal_ms": self.signal_ms, "client_to_turn_ms": self.client_to_turn_ms,
                "floor_ms": self.floor_ms, "dv_floor_ms": self.dv_floor_ms}


def _dist(g: nx.Graph, a: str, b: str) -> float:
    return float(nx.shortest_path_length(g, a, b, weight="delay_ms"))


def detection_points(topo: Topology, target: str, how: str,
                     peer: str | None = None) -> list[str]:
    """Where a failure of `how` is first known: the instance's own daemon (service,
    health, drain, daemon), the target's neighbours (node cut), both ends (link cut)."""
    if how == "node":
        return topo.neighbours(target)
    if how == "link" and peer is not None:
        return [target, peer]
    return [target]


def physical_floor(topo: Topology, target: str, client: str, new_instance: str | None,
                   how: str, peer: str | None = None) -> Floor | None:
    """The floor of `client`'s outage when `target` fails by `how` and the client moves
    to `new_instance` (None when it cannot be placed: no new instance, no path)."""
    if new_instance is None or new_instance == target:
        return None
    g = topo.simple_graph()
    try:
        old = nx.shortest_path(g, client, target, weight="delay_ms")
        new = nx.shortest_path(g, client, new_instance, weight="delay_ms")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return None
    turn = client
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        turn = a
    points = [p for p in detection_points(topo, target, how, peer) if p in g]
    if not points:
        return None
    det = min(points, key=lambda p: (_dist(g, p, turn), p))
    one_way = _dist(g, det, client)
    c_turn = _dist(g, client, turn)
    signal = _dist(g, det, turn)
    in_flight = _dist(g, client, target)
    if how == "link" and peer is not None and peer in old:
        in_flight += _dist(g, target, peer)  # the answer must cross the link back
    floor = 0.0 if how in GRACEFUL else max(0.0, in_flight + signal - c_turn)
    # Distance vector: the nodes of the new path the target served (closer to it than to
    # the new instance) each need the news, then their new route must come back to us.
    ready = 0.0
    for x in new[:-1]:
        if _dist(g, x, target) < _dist(g, x, new_instance):
            ready = max(ready, min(_dist(g, p, x) for p in points) + _dist(g, x, client))
    dv = 0.0 if how in GRACEFUL else max(floor, in_flight + ready)

    def r(x: float) -> float:
        return round(x, 3)

    return Floor(det, turn, r(one_way), r(in_flight), r(signal), r(c_turn), r(floor), r(dv))


def moved_clients(per_client: dict[str, dict[str, Any]], target: str) -> list[str]:
    """Clients whose instance changed (or that were served by the failed one)."""
    return [c for c, v in per_client.items()
            if v.get("before") == target or v.get("after") != v.get("before")]


def lost_before(tl: list[dict[str, Any]], before_ms: float) -> int:
    """Queries of a timeline (on the failure's clock) lost when sent before `before_ms`."""
    n = 0
    for s in tl:
        if s["node"] is None and s["from_ms"] < before_ms and s["to_ms"] > s["from_ms"]:
            part = (min(s["to_ms"], before_ms) - s["from_ms"]) / (s["to_ms"] - s["from_ms"])
            n += round(s["lost"] * part)
    return n


def noise_floor(runs: list[dict[str, Any]], target: str) -> dict[str, Any]:
    """The bystanders (instance never changed) and what they lost: with the failure
    elsewhere, their loss is the lab's own noise (CPU load, emulation). So is what a
    moved client lost before the failure could reach it (sent earlier than its queries
    in flight to the failed instance): a stalled process on the old path. Not 0 = noisy."""
    lost = 0
    worst = 0.0
    who: set[str] = set()
    by_client: dict[str, int] = {}
    early: dict[str, int] = {}
    late: dict[str, int] = {}
    for r in runs:
        pc = r["per_client"]
        moved = set(moved_clients(pc, target))
        for c, v in pc.items():
            if c in moved:
                margin = float((v.get("floor") or {}).get("in_flight_ms") or 0.0) + 1.0
                n = lost_before(v.get("timeline") or [], -margin)
                if n:
                    early[c] = early.get(c, 0) + n
                n = lost_after_move(v.get("timeline") or [], v.get("after"))
                if n:
                    late[c] = late.get(c, 0) + n
                continue
            who.add(c)
            n = int(v.get("lost") or 0)
            lost += n
            by_client[c] = by_client.get(c, 0) + n
            worst = max(worst, float(v.get("outage_ms") or 0.0))
    signs = {k + 1: r["noise_signs"] for k, r in enumerate(runs) if r.get("noise_signs")}
    return {"bystanders": sorted(who), "lost": lost, "lost_by_client": by_client,
            "max_outage_ms": round(worst, 3), "moved_lost_before_failure": early,
            "moved_lost_after_moving": late, "trace_signs": signs,
            "noisy": lost > 0 or bool(early) or bool(late) or bool(signs)}


def lost_after_move(tl: list[dict[str, Any]], after: str | None) -> int:
    """Queries a moved client lost once the instance it moved to had answered it: the
    failure is behind it, the loss is the lab's (a stalled hop on the new path)."""
    n = 0
    seen = False
    for s in tl:
        if after is not None and s["node"] == after and s["from_ms"] >= 0.0:
            seen = True
        if seen:
            n += int(s["lost"])
    return n


#: An apply that waited longer than this (ms) for its turn means a starved daemon.
STARVED_MS = 100.0


def _waited_ms(note: str) -> float:
    """The wait of an "applied" event's note ("waited 845.4 ms, device ..."), or 0."""
    if not note.startswith("waited "):
        return 0.0
    try:
        return float(note.split()[1])
    except (IndexError, ValueError):
        return 0.0


#: The withdrawal reason each failure should cause on the failed node.
_WITHDRAWAL_REASON = {"service": "no members", "health": "unhealthy", "drain": "draining"}


def trace_noise(traces: dict[str, list[dict[str, Any]]], how: str,
                withdrawal: dict[str, Any] | None) -> list[str]:
    """Signs in the daemons' traces that the lab itself misbehaved during a run whose
    failure cuts nothing: a neighbour declared dead (a daemon starved of CPU missed its
    Hellos), or the instance withdrawn for another reason than the failure (a health
    check timing out on a loaded host) or before it."""
    out: list[str] = []
    if how not in _WITHDRAWAL_REASON:
        return out
    for node, evs in sorted(traces.items()):
        downs = sorted({e.get("neighbour") or "?" for e in evs if e["kind"] == "neighbour_down"})
        if downs:
            out.append(f"{node} declared {', '.join(downs)} dead")
        waited = max((_waited_ms(e.get("note") or "") for e in evs if e["kind"] == "applied"),
                     default=0.0)
        if waited > STARVED_MS:
            out.append(f"{node}'s data plane waited {waited:.0f} ms to apply (starved)")
    if withdrawal is not None and (withdrawal.get("reason") != _WITHDRAWAL_REASON[how] or
                                   float(withdrawal.get("start_ms") or 0.0) < -1.0):
        out.append(f"withdrawn for '{withdrawal.get('reason')}' at "
                   f"{withdrawal.get('start_ms')} ms, not by the failure")
    return out


def timeline(segments: list[dict[str, Any]], fail_at_ms: float,
             interval_ms: float = 1.0) -> list[dict[str, Any]]:
    """A prober's segments on the failure's clock (t = 0: the failure), without gaps:
    every query is in one segment; short unanswered runs between answers from the same
    instance are folded into it and counted in its ``lost``."""
    out: list[dict[str, Any]] = []
    for s in segments:
        a = round(float(s.get("from_ms", 0.0)) - fail_at_ms, 3)
        b = round(float(s.get("to_ms", 0.0)) - fail_at_ms, 3)
        node = s.get("node")
        n_lost = round((b - a) / interval_ms) if node is None else 0
        out.append({"from_ms": a, "to_ms": b, "node": node, "lost": n_lost})
    merged: list[dict[str, Any]] = []
    k = 0
    while k < len(out):
        s = dict(out[k])
        if (s["node"] is None and merged and k + 1 < len(out)
                and out[k + 1]["node"] == merged[-1]["node"]
                and s["to_ms"] - s["from_ms"] < ISOLATED_MS):
            prev = merged[-1]
            prev["to_ms"] = out[k + 1]["to_ms"]
            prev["lost"] += s["lost"] + out[k + 1]["lost"]
            k += 2
            continue
        if merged and merged[-1]["node"] == s["node"] and s["node"] is not None:
            merged[-1]["to_ms"] = s["to_ms"]
            merged[-1]["lost"] += s["lost"]
        else:
            merged.append(s)
        k += 1
    return merged


def format_timeline(tl: list[dict[str, Any]], limit: int = 8) -> str:
    """One line: 'n5 -700.0..+0.4 | none +0.4..+104.6 (104 lost) | n1 ...'."""
    parts = []
    for s in tl[:limit]:
        lost = f" ({s['lost']} lost)" if s["lost"] else ""
        parts.append(f"{s['node'] or 'none'} {s['from_ms']:+.1f}..{s['to_ms']:+.1f}{lost}")
    if len(tl) > limit:
        parts.append(f"... {len(tl) - limit} more")
    return " | ".join(parts)


# -- plot -----------------------------------------------------------------------------

_COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22"]
_NONE = "#d62728"


def _rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]], Any]]:
    rows = []
    for k, r in enumerate(runs):
        for c, v in r["per_client"].items():
            label = f"{c}" if len(runs) == 1 else f"run {k + 1} {c}"
            role = "moved" if v.get("moved") else "bystander"
            floor = (v.get("floor") or {}).get("floor_ms")
            rows.append((f"{label} ({role})", v.get("timeline") or [], floor))
    return rows


def write_plot(path: str, runs: list[dict[str, Any]], title: str) -> str:
    """Who answered each client over time, on the failure's clock: a PNG (matplotlib)
    or, when the path ends in .svg or matplotlib is missing, an SVG. Returns the path."""
    rows = _rows(runs)
    names = sorted({s["node"] for _, tl, _ in rows for s in tl if s["node"]})
    colour = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(names)}
    if not path.endswith(".svg"):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.patches import Patch
        except ImportError:
            path = path.rsplit(".", 1)[0] + ".svg"
        else:
            fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * max(len(rows), 1)))
            for y, (_, tl, floor) in enumerate(rows):
                for s in tl:
                    ax.broken_barh([(s["from_ms"], s["to_ms"] - s["from_ms"])],
                                   (y - 0.35, 0.7),
                                   color=colour.get(s["node"], _NONE) if s["node"] else _NONE)
                if floor:
                    ax.plot([floor, floor], [y - 0.45, y + 0.45], color="black", lw=1)
            ax.axvline(0, color="black", ls="--", lw=1)
            ax.set_yticks(range(len(rows)), [r[0] for r in rows])
            ax.invert_yaxis()
            ax.set_xlabel("ms since the failure (dashed); tick: the client's physical floor")
            ax.set_title(title, fontsize=9)
            ax.legend(handles=[Patch(color=colour[n], label=n) for n in names]
                      + [Patch(color=_NONE, label="no answer")], loc="upper left",
                      bbox_to_anchor=(1.0, 1.0), fontsize=8)
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            return path
    _write_svg(path, rows, colour, title)
    return path


def _write_svg(path: str, rows: list[tuple[str, list[dict[str, Any]], Any]],
               colour: dict[str, str], title: str) -> None:
    lo = min((s["from_ms"] for _, tl, _ in rows for s in tl), default=0.0)
    hi = max((s["to_ms"] for _, tl, _ in rows for s in tl), default=1.0)
    left, width, rh = 170, 760, 22
    h = 50 + rh * len(rows) + 40

    def x(t: float) -> float:
        return left + (t - lo) / max(hi - lo, 1e-9) * width

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
           f'height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="10" y="18">{html.escape(title)}</text>']
    for i, (label, tl, floor) in enumerate(rows):
        y = 35 + i * rh
        out.append(f'<text x="10" y="{y + 14}">{html.escape(label)}</text>')
        for s in tl:
            c = colour.get(s["node"], _NONE) if s["node"] else _NONE
            w = max(x(s["to_ms"]) - x(s["from_ms"]), 0.5)
            out.append(f'<rect x="{x(s["from_ms"]):.1f}" y="{y}" width="{w:.1f}" '
                       f'height="{rh - 6}" fill="{c}"><title>{html.escape(str(s["node"]))} '
                       f'{s["from_ms"]:+.1f}..{s["to_ms"]:+.1f} ms</title></rect>')
        if floor:
            out.append(f'<line x1="{x(floor):.1f}" x2="{x(floor):.1f}" y1="{y - 2}" '
                       f'y2="{y + rh - 4}" stroke="black"/>')
    y0, y1 = 30, 35 + rh * len(rows)
    out.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{y0}" y2="{y1}" '
               'stroke="black" stroke-dasharray="4 3"/>')
    legend = " ".join(f'<tspan fill="{c}">&#9632; {html.escape(n)}</tspan>'
                      for n, c in colour.items())
    out.append(f'<text x="{left}" y="{y1 + 20}">{legend} <tspan fill="{_NONE}">&#9632; '
               f'no answer</tspan>; ms {lo:+.0f}..{hi:+.0f} since the failure (dashed); '
               'tick: physical floor</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# -- where the milliseconds go (daemon traces) -----------------------------------------

#: Trace events before the failure by less than this (s) still belong to it (a drain's
#: first step is taken before `fail` returns the time it was injected).
TRACE_SLACK = 0.05


def _first(events: list[dict[str, Any]], kind: str, t_from: float,
           neighbour: str | None = None, routed: bool = False) -> dict[str, Any] | None:
    """The first `kind` event at or after `t_from` (from/via `neighbour`; `routed`: one
    that names a neighbour, i.e. a route, not its loss)."""
    for e in events:
        if e["kind"] == kind and e["t"] >= t_from and \
                (neighbour is None or e.get("neighbour") == neighbour) and \
                (not routed or e.get("neighbour") not in (None, "<local>")):
            return e
    return None


def breakdown(traces: dict[str, list[dict[str, Any]]], topo: Topology, target: str,
              client: str, new_instance: str | None, how: str, t_fail: float,
              first_answer_ms: float | None, peer: str | None = None) -> dict[str, Any]:
    """Where one moved client's outage went, from the daemons' traces (`wgcast trace`,
    CLOCK_MONOTONIC seconds, shared by every daemon of the host), in ms since the
    failure: the detection, the first Update the detecting node sent, then per hop on
    the way of the news (the old path from the detecting node to the client, and the
    nodes of the client's new path that changed their selection): the first Update heard
    from the previous hop, the selection change, the data plane applied; and the first
    answer from the new instance. `ready_ms`: the last hop applied."""
    g = topo.simple_graph()
    t0 = t_fail - TRACE_SLACK

    def ms(e: dict[str, Any] | None) -> float | None:
        return None if e is None else round((e["t"] - t_fail) * 1000, 3)

    points = [p for p in detection_points(topo, target, how, peer) if p in g]
    try:
        det = min(points, key=lambda p: (_dist(g, p, client), p))
        old = nx.shortest_path(g, det, client, weight="delay_ms")
        new = nx.shortest_path(g, client, new_instance, weight="delay_ms") \
            if new_instance is not None else [client]
    except (ValueError, nx.NetworkXNoPath, nx.NodeNotFound):
        return {"client": client, "error": "no path"}
    dev = traces.get(det, [])
    detected = _first(dev, "neighbour_down" if how == "node" else "detected", t0) or \
        _first(dev, "retracted", t0) or _first(dev, "selected", t0)
    hops: list[dict[str, Any]] = []
    order = list(old[1:]) + [n for n in new[1:] if n not in old]
    for n in order:
        ev = traces.get(n, [])
        sel = _first(ev, "selected", t0, routed=True)
        if n not in old and sel is None:
            continue  # on the new path but nothing changed there
        prev = old[old.index(n) - 1] if n in old else None
        heard = _first(ev, "update_received", t0, prev) if prev is not None else \
            _first(ev, "update_received", t0)
        lost = _first(ev, "selected", t0)
        lost = lost if lost is not None and lost.get("neighbour") is None else None
        t_sel = t0 if sel is None else sel["t"]
        applied = _first(ev, "applied", t_sel, routed=True)
        sent = _first(ev, "update_sent", t_sel)
        hops.append({"node": n, "from": None if heard is None else heard.get("neighbour"),
                     "update_received_ms": ms(heard), "no_route_ms": ms(lost),
                     "selected_ms": ms(sel),
                     "selected_via": None if sel is None else sel.get("neighbour"),
                     "update_sent_ms": ms(sent),
                     "held_ms": ms(_first(ev, "held", t0)), "applied_ms": ms(applied),
                     "apply_note": None if applied is None else applied.get("note")})
    applied_all = [h["applied_ms"] for h in hops if h["applied_ms"] is not None]
    return {"client": client, "detected_at": det,
            "detected_ms": ms(detected),
            "detected_how": None if detected is None else
            (detected.get("note") or detected["kind"]),
            "first_update_sent_ms": ms(_first(dev, "update_sent", t0)),
            "retracted_ms": ms(_first(dev, "retracted", t0)),
            "address_down_ms": ms(_first(dev, "address_down", t0)),
            "hops": hops, "ready_ms": max(applied_all) if applied_all else None,
            "first_answer_ms": None if first_answer_ms is None else round(first_answer_ms, 3)}


def format_breakdown(b: dict[str, Any]) -> str:
    """One line: 'n4: detected n5 +0.3 (...) sent +0.6 | n4 heard +9.9 sel +10.0 ...'."""
    if "error" in b:
        return f"{b['client']}: {b['error']}"

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:+.1f}"

    parts = [f"{b['client']}: detected at {b['detected_at']} {f(b['detected_ms'])}"
             f" ({b['detected_how'] or '?'}), Update sent {f(b['first_update_sent_ms'])}"]
    for h in b["hops"]:
        held = f" held {f(h['held_ms'])}" if h["held_ms"] is not None else ""
        lost = f" no route {f(h['no_route_ms'])}" if h.get("no_route_ms") is not None else ""
        parts.append(f"{h['node']} heard {f(h['update_received_ms'])}"
                     + (f" from {h['from']}" if h["from"] else "") + lost
                     + f" selected {f(h['selected_ms'])}"
                     + (f" via {h['selected_via']}" if h.get("selected_via") else "")
                     + f" sent {f(h.get('update_sent_ms'))}{held}"
                     f" applied {f(h['applied_ms'])}")
    parts.append(f"first answer {f(b['first_answer_ms'])} ms")
    return " | ".join(parts)
