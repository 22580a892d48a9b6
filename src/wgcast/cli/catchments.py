"""`wgcast catchments`: which instance (origin) of each anycast prefix this node and each
of its neighbours selected, from the running daemon (`daemon/catchments.py`)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import click

from wgcast.cli.membership import _socket_path, _with_socket

_HOW = {"announced": "announced", "via_us": "via {node} (split horizon)",
        "down": "neighbour down", "none": "no route"}


def render(t: dict[str, Any]) -> str:
    """The table `wgcast catchments` prints."""
    rtt = {n["name"]: n["rtt_ms"] for n in t["neighbours"]}
    node = t["node"]
    lines = [f"node {node} (interface {t.get('interface', '?')}, router-id {t['router_id']})"]
    if not t["prefixes"]:
        lines.append("no anycast prefix with a route (give a PREFIX, or --all)")
        return "\n".join(lines)
    rows: list[list[str]] = []
    for p in t["prefixes"]:
        via = p["via"]
        how = "no route" if p["origin"] is None else \
            "originated here" if via == "local" else f"selected via {via}"
        rows.append([p["prefix"], node, p["origin"] or "-", how,
                     "-" if p["metric"] is None else str(p["metric"]), "-"])
        for nb in p["neighbours"]:
            r = rtt.get(nb["name"])
            rows.append(["", nb["name"], nb["origin"] or "-",
                         _HOW[nb["seen"]].format(node=node),
                         "-" if nb["metric"] is None else str(nb["metric"]),
                         "-" if r is None else f"{r:.2f}"])
        count = Counter(x for x in [p["origin"], *(n["origin"] for n in p["neighbours"])]
                        if x is not None)
        rows.append(["", "", ", ".join(f"{o}: {n}" for o, n in count.most_common())
                     or "-", "(nodes per origin)", "", ""])
    headers = ["PREFIX", "NODE", "ORIGIN", "HOW", "METRIC", "RTT_MS"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


@click.command("catchments")
@click.argument("prefixes", nargs=-1)
@_with_socket
@click.option("--all", "everything", is_flag=True,
              help="every prefix with a route, not only the anycast ones")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def catchments(prefixes: tuple[str, ...], config: str | None, socket_path: str | None,
               interface: str | None, everything: bool, as_json: bool) -> None:
    """Which instance serves whom: the origin this node selected for each anycast
    PREFIX (all of them by default), and the one each neighbour selected (from the
    neighbours' Updates). In a full mesh this is the whole mesh's catchment."""
    from wgcast.client import request

    path = _socket_path(config, socket_path, interface)
    try:
        reply = request(path, {"cmd": "catchments", "prefixes": list(prefixes),
                               "all": everything})
    except (OSError, ValueError) as e:
        click.echo(f"cannot reach the daemon at {path}: {e}", err=True)
        sys.exit(1)
    if not reply.get("ok"):
        click.echo(f"{reply.get('error')}: {reply.get('message')}", err=True)
        sys.exit(1)
    t = reply["catchments"]
    click.echo(json.dumps(t, indent=2) if as_json else render(t))
