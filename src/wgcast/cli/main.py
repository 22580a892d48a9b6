"""`wgcast`: the command line (click)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import click

from wgcast.cli.check import check


def _load(config: str) -> Any:
    from wgcast.daemon.config import ConfigError, load

    try:
        return load(config)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wgcast")
def main() -> None:
    """Anycast over WireGuard: a Babel control plane for AllowedIPs."""


@main.command()
@click.option("-c", "--config", "config", required=True, type=click.Path(dir_okay=False),
              help="TOML file of the interface to manage.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: every route change).")
def run(config: str, verbose: int) -> None:
    """Run the daemon for one WireGuard interface (SIGTERM stops it cleanly)."""
    from wgcast.daemon.runtime import Daemon

    cfg = _load(config)
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    try:
        code = asyncio.run(Daemon(cfg).run())
    except KeyboardInterrupt:
        code = 0
    except Exception as e:  # one clear line for the operator
        logging.getLogger("wgcast").error("%s: %s", cfg.interface, e,
                                          exc_info=verbose > 1)
        code = 1
    sys.exit(code)


def _api(config: str | None, socket_path: str | None, cmd: str) -> dict[str, Any]:
    from wgcast.daemon.api import request

    path = socket_path or (_load(config).api_socket if config else None)
    if path is None:
        raise click.UsageError("give -c CONFIG or --socket PATH")
    try:
        reply = request(path, {"cmd": cmd})
    except (OSError, ValueError) as e:
        click.echo(f"cannot reach the daemon at {path}: {e}", err=True)
        sys.exit(1)
    if not reply.get("ok"):
        click.echo(f"{reply.get('error')}: {reply.get('message')}", err=True)
        sys.exit(1)
    return reply


_api_opts = [
    click.option("-c", "--config", "config", type=click.Path(dir_okay=False)),
    click.option("--socket", "socket_path", type=click.Path()),
    click.option("--json", "as_json", is_flag=True, help="JSON for scripts."),
]


def _with_api_opts(f: Any) -> Any:
    for opt in reversed(_api_opts):
        f = opt(f)
    return f


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


@main.command()
@_with_api_opts
def status(config: str | None, socket_path: str | None, as_json: bool) -> None:
    """The daemon's state: identity, neighbours, routes, counters."""
    st = _api(config, socket_path, "status")["status"]
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"interface {st['interface']}  router-id {st['router_id']}  seqno {st['seqno']}")
    click.echo(f"control {st['control_address']}  up {st['uptime_s']}s")
    click.echo(f"neighbours {st['neighbours_up']}/{st['neighbours']} up, {st['routes']} routes,"
               f" serving {', '.join(st['served']) or 'nothing'}")
    dp = st["dataplane"]
    click.echo(f"data plane: {dp['applies']} applies, {dp['ops']} ops, {dp['errors']} errors,"
               f" last {dp['last_apply_ms']} ms")


@main.command()
@_with_api_opts
def routes(config: str | None, socket_path: str | None, as_json: bool) -> None:
    """Selected route of every prefix."""
    rs = _api(config, socket_path, "routes")["routes"]
    if as_json:
        click.echo(json.dumps(rs, indent=2))
        return
    rows = [[r["prefix"], r["via"], str(r["metric"]), r["router_id"], str(r["seqno"]),
             "yes" if r["installed"] else "no", str(len(r["routes"]))] for r in rs]
    click.echo(_table(rows, ["PREFIX", "VIA", "METRIC", "ORIGIN", "SEQNO", "INSTALLED",
                             "ROUTES"]))


@main.command()
@_with_api_opts
def peers(config: str | None, socket_path: str | None, as_json: bool) -> None:
    """Neighbours: liveness, RTT, link cost."""
    ps = _api(config, socket_path, "peers")["peers"]
    if as_json:
        click.echo(json.dumps(ps, indent=2))
        return
    rows = [[p["name"], "up" if p["up"] else "down",
             "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.2f}", str(p["cost"]),
             str(p["routes_via"]), ",".join(p["endpoints"]) or "-"] for p in ps]
    click.echo(_table(rows, ["PEER", "STATE", "RTT_MS", "COST", "ROUTES", "ENDPOINTS"]))


main.add_command(check)


def _optional(module: str, name: str) -> None:
    import importlib

    try:
        cmd = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return
    main.add_command(cmd)


_optional("wgcast.cli.sim", "sim")
_optional("wgcast.cli.lab", "lab")
