"""`wgcast trace`: the recent route changes of an anycast prefix on this node, step by
step with their times (`daemon/trace.py`): where the milliseconds of a failover go."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from wgcast.cli.membership import _socket_path, _with_socket


def render(t: dict[str, Any]) -> str:
    """The lines `wgcast trace` prints: one event per line, ms since the first shown."""
    head = f"node {t.get('node', '?')} (interface {t.get('interface', '?')})"
    if "events" not in t:
        ps = t.get("prefixes") or []
        if not ps:
            return head + ": no traced route change yet (anycast prefixes only)"
        now = float(t.get("now") or 0.0)
        lines = [head + f": {len(ps)} prefixes traced, {t['recorded']} events "
                 f"({t['dropped']} dropped by the bounds); give a PREFIX"]
        lines += [f"  {p['prefix']}  {p['events']} events, last "
                  f"{now - p['last']:.1f} s ago" for p in ps if p["last"] is not None]
        return "\n".join(lines)
    evs = t["events"]
    if not t.get("traced", True):
        return head + f": {t['prefix']} is not in an anycast range: not traced"
    if not evs:
        return head + f": no event of {t['prefix']}"
    t0 = evs[0]["t"]
    lines = [head + f": {t['prefix']}, ms since {t0:.6f} (CLOCK_MONOTONIC)"]
    for e in evs:
        what = []
        if "neighbour" in e:
            what.append(f"{'from' if e['kind'] == 'update_received' else 'via'} "
                        f"{e['neighbour']}")
        if e["kind"] == "selected" and "neighbour" not in e:
            what.append("no route")
        elif "metric" in e:
            what.append("retraction" if e["metric"] >= 0xFFFF else f"metric {e['metric']}")
        if "router_id" in e and e["kind"] in ("update_received", "update_sent", "selected"):
            what.append(f"origin {e['router_id']}")
        if e.get("note"):
            what.append(e["note"])
        lines.append(f"  {1000 * (e['t'] - t0):+10.3f}  {e['kind']:<16} {', '.join(what)}")
    return "\n".join(lines)


@click.command("trace")
@click.argument("prefix", required=False)
@_with_socket
@click.option("--since", type=float, default=None,
              help="only events at or after this CLOCK_MONOTONIC time (seconds)")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def trace(prefix: str | None, config: str | None, socket_path: str | None,
          interface: str | None, since: float | None, as_json: bool) -> None:
    """How the last route changes of an anycast PREFIX went on this node: detection,
    Updates sent and heard (per neighbour), selection, data plane applied, holds, acks,
    each with its time (CLOCK_MONOTONIC, comparable across the daemons of one host).
    Without PREFIX: which prefixes have events."""
    from wgcast.client import request

    path = _socket_path(config, socket_path, interface)
    req: dict[str, Any] = {"cmd": "trace"}
    if prefix is not None:
        req["prefix"] = prefix
    if since is not None:
        req["since"] = since
    try:
        reply = request(path, req)
    except (OSError, ValueError) as e:
        click.echo(f"cannot reach the daemon at {path}: {e}", err=True)
        sys.exit(1)
    if not reply.get("ok"):
        click.echo(f"{reply.get('error')}: {reply.get('message')}", err=True)
        sys.exit(1)
    reply.pop("ok", None)
    click.echo(json.dumps(reply, indent=2) if as_json else render(reply))
