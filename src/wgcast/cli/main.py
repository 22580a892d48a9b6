"""`wgcast`: the command line (click)."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
from typing import Any

import click

from wgcast.cli.catchments import catchments
from wgcast.cli.keys import control_address
from wgcast.cli.membership import _socket_path, _with_socket, drain, join, leave
from wgcast.cli.service import install_systemd

#: Subcommands imported only when used (name -> module, attribute): `wgcast run` and
#: the API commands must not pay for networkx (sim) and the lab. Where a Python process
#: starts slowly (the emulated guest of `make test-kernel`), that import was most of a
#: daemon's start. A module that fails to import (a missing extra) hides its command.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("wgcast.cli.check", "check"),
    "roster": ("wgcast.cli.roster", "roster"),
    "sim": ("wgcast.cli.sim", "sim"),
    "lab": ("wgcast.cli.lab", "lab"),
}


class LazyGroup(click.Group):
    """A click group that imports the modules of LAZY_COMMANDS on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in LAZY_COMMANDS:
            return cmd
        module, attr = LAZY_COMMANDS[cmd_name]
        try:
            cmd = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
        assert isinstance(cmd, click.Command)
        if cmd_name == "lab" and isinstance(cmd, click.Group):
            _register_demo(cmd)
        self.add_command(cmd, cmd_name)
        return cmd


def _load(config: str) -> Any:
    from wgcast.daemon.config import ConfigError, load

    try:
        return load(config)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wgcast")
def main() -> None:
    """Anycast over WireGuard: a Babel control plane for AllowedIPs."""


@main.command()
@click.option("-c", "--config", "config", required=True, type=click.Path(dir_okay=False),
              help="TOML file of the interface to manage.")
@click.option("-v", "--verbose", count=True,
              help="-v: debug logging, every route change; -vv: also the traceback of a "
                   "fatal error. Default: info (neighbours, groups, reloads, problems).")
@click.option("--log-format", "log_format", type=click.Choice(["text", "json"]),
              default="text", show_default=True,
              help="json: one object per line. Under journald no own timestamp is written.")
def run(config: str, verbose: int, log_format: str) -> None:
    """Run the daemon for one WireGuard interface (SIGTERM stops it cleanly).

    Under systemd (Type=notify) it sends READY=1 once it serves its API and routes."""
    from wgcast.daemon.runtime import Daemon
    from wgcast.logsetup import configure

    cfg = _load(config)
    configure(logging.DEBUG if verbose else logging.INFO, log_format)
    try:
        code = asyncio.run(Daemon(cfg).run())
    except KeyboardInterrupt:
        code = 0
    except Exception as e:  # one clear line for the operator
        logging.getLogger("wgcast").error("%s: %s", cfg.label, e,
                                          exc_info=verbose > 1)
        code = 1
    sys.exit(code)


def _api(config: str | None, socket_path: str | None, cmd: str) -> dict[str, Any]:
    """One request; the socket from --socket, -c, -i, $WGCAST_SOCKET or the only one in
    /run/wgcast (the same order on every command: `_socket_path`)."""
    from wgcast.client import request

    ctx = click.get_current_context(silent=True)
    interface = ctx.meta.get("wgcast_interface") if ctx is not None else None
    path = _socket_path(config, socket_path, interface)
    try:
        reply = request(path, {"cmd": cmd})
    except (OSError, ValueError) as e:
        click.echo(f"cannot reach the daemon at {path}: {e}", err=True)
        sys.exit(1)
    if not reply.get("ok"):
        click.echo(f"{reply.get('error')}: {reply.get('message')}", err=True)
        sys.exit(1)
    return reply


def _remember_interface(ctx: click.Context, param: click.Parameter,
                        value: str | None) -> str | None:
    ctx.meta["wgcast_interface"] = value
    return value


_api_opts = [
    click.option("-c", "--config", "config", type=click.Path(dir_okay=False),
                 help="the daemon's config file (for its api_socket)"),
    click.option("--socket", "socket_path", type=click.Path(),
                 help="API socket path (else -c, -i, $WGCAST_SOCKET, the only socket in "
                      "/run/wgcast)"),
    # Read by _api (not a parameter of each command).
    click.option("-i", "--interface", expose_value=False, callback=_remember_interface,
                 help="use /run/wgcast/IFACE.sock"),
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
    reply = _api(config, socket_path, "status")
    # The membership service answers groups (with their health checks) next to the
    # daemon's status: one object for the operator.
    st = {**reply["status"], **{k: reply[k] for k in ("groups", "memberships", "connections")
                                if k in reply}}
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    where = f"interface {st['interface']}  backend {st.get('backend', '?')}" \
        if st["interface"] else "LAN-only (no WireGuard)"
    click.echo(f"{where}  router-id {st['router_id']}  seqno {st['seqno']}"
               f"{'  name ' + st['name'] if st.get('name') else ''}")
    click.echo(f"control {st['control_address'] or '-'}  up {st['uptime_s']}s")
    click.echo(f"neighbours {st['neighbours_up']}/{st['neighbours']} up, {st['routes']} routes,"
               f" serving {', '.join(st['served']) or 'nothing'}")
    dp = st["dataplane"]
    if dp is not None:
        click.echo(f"data plane: {dp['applies']} applies, {dp['ops']} ops, {dp['errors']} "
                   f"errors, last {dp['last_apply_ms']} ms")
    for lan in st.get("lan") or []:
        nbs = ", ".join(f"{n['address']} {'up' if n.get('up') else 'down'}"
                        f" cost {n.get('cost', '-')} routes {n.get('routes_via', 0)}"
                        for n in lan["neighbours"]) or "no neighbour heard"
        click.echo(f"lan {lan['interface']} ({lan['address']}): {nbs}; "
                   f"{lan['routes']} routes installed")
    for g in st.get("groups") or []:
        checks = ", ".join(f"{c.get('check', c.get('type', '?'))} "
                           f"{'up' if c.get('up') else 'DOWN'}"
                           for c in g.get("checks") or []) or "no checks"
        served = "served" if g["served"] else "not served"
        click.echo(f"group {g['prefix']}: {g['state']}, {served}, {g['members']} members"
                   f"{' (static)' if g.get('static') else ''}, "
                   f"{'healthy' if g['healthy'] else 'UNHEALTHY'} ({checks})"
                   f"{', draining' if g.get('draining') else ''}")
    if st.get("roster"):
        click.echo(f"roster serial {st['roster']['serial']}, {st['roster']['members']} members")
    sg = st.get("signing") or {}
    if sg.get("on"):
        click.echo(f"signing: {sg['signed']} signed, {sg['verified']} verified, "
                   f"{sg['verified_from_memory']} from memory")
    if sg.get("problem"):
        click.echo(f"ERROR {sg['problem']}")
    for why, by in sorted((st.get("announcements_refused") or {}).items()):
        click.echo(f"refused ({why}): " + ", ".join(f"{nb} {n}" for nb, n in sorted(by.items())))
    for problem in st.get("problems") or []:
        click.echo(f"ERROR {problem}")
    for pp in st.get("peer_problems") or []:
        click.echo(f"WARNING peer {pp['peer']}: {pp['reason']}: {pp['detail']}")
    for u in st.get("unconfigured_peers") or []:
        click.echo(f"WARNING peer {u['public_key']} is on the interface but not in the "
                   "config (ignored)")
    state = st.get("state") or {}
    if state.get("error"):
        click.echo(f"WARNING state: {state['error']} ({state['save_errors']} failed saves, "
                   "retrying)")


@main.command()
@_with_api_opts
def routes(config: str | None, socket_path: str | None, as_json: bool) -> None:
    """Selected route of every prefix."""
    rs = _api(config, socket_path, "routes")["routes"]
    if as_json:
        click.echo(json.dumps(rs, indent=2))
        return
    rows = [[r["prefix"], r["via"], str(r["metric"]), r.get("origin", r["router_id"]),
             str(r["seqno"]), r.get("verified", "?"),
             "yes" if r["installed"] else "no", str(len(r["routes"]))] for r in rs]
    click.echo(_table(rows, ["PREFIX", "VIA", "METRIC", "ORIGIN", "SEQNO", "VERIFIED",
                             "INSTALLED", "ROUTES"]))


@main.command()
@_with_api_opts
def peers(config: str | None, socket_path: str | None, as_json: bool) -> None:
    """Neighbours: liveness, RTT, link cost, endpoint candidates (* = in use)."""
    reply = _api(config, socket_path, "peers")
    ps, others = reply["peers"], reply.get("unconfigured") or []
    if as_json:
        click.echo(json.dumps(ps, indent=2))
        return
    rows = [[p["name"], ("up" if p["up"] else "down") +
             (f" ({p['reason']})" if p.get("reason") else ""),
             "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.2f}", str(p["cost"]),
             str(p["routes_via"]), p.get("endpoint") or ",".join(p["endpoints"]) or "-"]
            for p in ps]
    click.echo(_table(rows, ["PEER", "STATE", "RTT_MS", "COST", "ROUTES", "ENDPOINT"]))
    if not ps:
        click.echo("  no WireGuard peers (LAN neighbours: wgcast status)")
    for p in ps:
        if p.get("reason"):
            click.echo(f"  {p['name']}: {p['reason']}: {p['reason_detail']}")
    for u in others:
        click.echo(f"  not in the config (ignored): {u['public_key']} endpoint "
                   f"{u['endpoint'] or '-'}: add a [[peers]] entry and `wgcast reload`")
    cands = [[p["name"], "*" if c["in_use"] else "", c["addr"], c["kind"], c["state"],
              _num(c["rtt_ms"]), _num(None if c["loss"] is None else 100 * c["loss"], "%"),
              _num(c["score"]), str(c["failures"]),
              "-" if c["expires_s"] is None else f"{c['expires_s']:.0f}s"]
             for p in ps for c in p.get("candidates", [])]
    if cands:
        click.echo("")
        click.echo(_table(cands, ["PEER", "", "CANDIDATE", "KIND", "STATE", "RTT_MS", "LOSS",
                                  "SCORE", "FAILURES", "EXPIRES"]))


def _reload_socket(config: str | None, socket_path: str | None,
                   interface: str | None) -> str:
    """The API socket for `reload`: from the file even when it has errors (the daemon
    is the one to refuse it, with the messages of `wgcast check`)."""
    if socket_path or not config:
        return _socket_path(config, socket_path, interface)
    import tomllib

    from wgcast.daemon.config import ConfigError, load

    try:
        return load(config).api_socket
    except ConfigError as e:
        try:
            with open(config, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            data = {}
        sock, iface = data.get("api_socket"), data.get("interface")
        if isinstance(sock, str) and sock:
            return sock
        if isinstance(iface, str) and iface:
            return _socket_path(None, None, iface)
        click.echo(str(e), err=True)
        sys.exit(2)


@main.command()
@_with_socket
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def reload(config: str | None, socket_path: str | None, interface: str | None,
           as_json: bool) -> None:
    """Make the running daemon read its config file again (as SIGHUP does).

    Prints what changed; a file with errors, or a change that needs a restart, is
    refused (exit 1) and the daemon keeps its running config."""
    from wgcast.client import request

    path = _reload_socket(config, socket_path, interface)
    try:
        reply = request(path, {"cmd": "reload"}, timeout=30.0)
    except (OSError, ValueError) as e:
        click.echo(f"cannot reach the daemon at {path}: {e}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        sys.exit(0 if reply.get("ok") else 1)
    if not reply.get("ok"):
        click.echo(f"reload refused ({reply.get('error')}); the daemon keeps its running "
                   "config:", err=True)
        click.echo(str(reply.get("message")), err=True)
        sys.exit(1)
    click.echo(f"reloaded: {reply.get('changed')}")


def _num(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}" if not unit else f"{v:.0f}{unit}"


main.add_command(join)
main.add_command(leave)
main.add_command(drain)
main.add_command(install_systemd)
main.add_command(catchments)
main.add_command(control_address)


def _register_demo(lab_group: click.Group) -> None:
    """`wgcast lab demo` (defined here: it reports through click like the CLI)."""
    if "demo" in lab_group.commands:
        return
    from wgcast.cli.lab import LINKS_OPTION, WIREGUARD_OPTION

    @lab_group.command("demo")
    @click.option("--topology", "-t", default="line:5", show_default=True)
    @click.option("--instances", "-i", default="n1,n5", show_default=True)
    @click.option("--fail", "fail", type=click.Choice(["daemon", "node", "link", "service",
                                                       "health", "drain"]),
                  default="node", show_default=True,
                  help="service: SIGKILL the instance; health: its check fails; drain: "
                       "drain it, then stop it")
    @click.option("--runs", type=click.IntRange(1, 1000), default=1, show_default=True)
    @click.option("--timers", type=click.Choice(["default", "fast"]), default="default",
                  show_default=True)
    @click.option("--delay", default="2-20ms", show_default=True)
    @click.option("--jitter", default="0", show_default=True)
    @click.option("--loss", default="0", show_default=True)
    @click.option("--seed", type=int, default=7, show_default=True)
    @click.option("--health-interval", default="200ms", show_default=True,
                  help="interval of the instances' health check")
    @click.option("--health-fall", type=click.IntRange(1, 100), default=2, show_default=True)
    @WIREGUARD_OPTION
    @LINKS_OPTION
    @click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
    @click.option("--plot", "plot", default=None, metavar="PATH",
                  help="Plot who answered each client over time to PATH (PNG; SVG when "
                       "PATH ends in .svg or matplotlib is missing).")
    def demo(topology: str, instances: str, fail: str, runs: int, timers: str, delay: str,
             jitter: str, loss: str, seed: int, health_interval: str, health_fall: int,
             wireguard: str | None, link_mode: str | None, as_json: bool,
             plot: str | None) -> None:
        """Up a mesh, fail the busiest anycast instance, measure each client's outage."""
        from wgcast.lab.demo import DemoOptions, run_demo
        from wgcast.lab.system import LabError

        opt = DemoOptions(topology, instances, fail, runs, timers, delay, jitter, loss, seed,
                          health_interval, health_fall,
                          out=lambda s: click.echo(s, err=as_json), quiet=False,
                          wireguard=wireguard, links=link_mode, plot=plot)
        try:
            res = run_demo(opt)
        except (LabError, ValueError) as e:
            click.echo(f"lab demo: {e}", err=True)
            sys.exit(1)
        if as_json:
            for r in res.get("runs", []):
                for v in r["per_client"].values():
                    v.pop("segments", None)
            click.echo(json.dumps(res, indent=2))
        if not res.get("cleaned_up"):
            sys.exit(1)


if __name__ == "__main__":
    main()
