"""`wgcast lab ...`: bring a real mesh up in network namespaces, poke it, take it down.

The group is registered in cli/main.py by the lead (``main.add_command(lab)``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import click

from wgcast.lab import Lab, LabError, teardown, teardown_all
from wgcast.topology import parse_loss, parse_ms, parse_ms_range


def _fail(e: Exception) -> None:
    raise click.ClickException(str(e))


def _attach(labid: str | None) -> Lab:
    try:
        return Lab.attach(labid)
    except LabError as e:
        _fail(e)
        raise  # unreachable


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=1))


lab_id_option = click.option("--lab", "labid", default=None, metavar="ID",
                             help="lab id (default: the only / most recent lab)")



#: The lab's two worlds, shared by `lab up` and `lab demo`.
WIREGUARD_OPTION = click.option(
    "--wireguard", type=click.Choice(["kernel", "go"]), default=None,
    help="kernel WireGuard or wireguard-go (default: kernel where the module loads, "
         "else go)")
LINKS_OPTION = click.option(
    "--links", "link_mode", type=click.Choice(["netem", "relay"]), default=None,
    help="link emulation: tc netem in the kernel or the userspace relay (default: netem "
         "where the kernel has it, else relay)")

@click.group("lab")
def lab() -> None:
    """A real wgcast mesh in network namespaces (kernel WireGuard or wireguard-go)."""


@lab.command("up")
@click.option("--topology", "-t", default="line:3", show_default=True,
              help="line:N, ring:N, full:N, grid:WxH, grid:N, random:N:D, dual:N")
@click.option("--instances", "-i", default="", help="nodes serving the anycast group, e.g. n1,n5")
@click.option("--group", "groups", multiple=True, metavar="NODES",
              help="an extra anycast group served by these nodes (repeatable)")
@click.option("--delay", default="5ms", show_default=True, help="per link: '5ms' or '2-20ms'")
@click.option("--jitter", default="0", show_default=True)
@click.option("--loss", default="0", show_default=True, help="0.01 or 1%")
@click.option("--seed", type=int, default=None, help="seed of delays and random graphs")
@click.option("--timers", type=click.Choice(["default", "fast"]), default="default",
              show_default=True)
@click.option("--daemons/--no-daemons", default=True, show_default=True,
              help="start `wgcast run` on every node")
@click.option("--echo", type=click.Choice(["instances", "all", "none"]), default="instances",
              show_default=True, help="where to start the UDP echo service")
@click.option("--echo-port", type=int, default=7, show_default=True)
@click.option("--services/--static", default=True, show_default=True,
              help="instances are services held by `wgcast join` (with a health check), "
                   "or static groups with a bare echo")
@click.option("--health-interval", default="200ms", show_default=True,
              help="interval of the instances' health check (services)")
@click.option("--health-fall", type=click.IntRange(1, 100), default=2, show_default=True)
@click.option("--id", "labid", default=None, help="use this lab id (4 hex digits)")
@WIREGUARD_OPTION
@LINKS_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the lab description as JSON")
def up(topology: str, instances: str, groups: tuple[str, ...], delay: str, jitter: str,
       loss: str, seed: int | None, timers: str, daemons: bool, echo: str, echo_port: int,
       services: bool, health_interval: str, health_fall: int, labid: str | None,
       wireguard: str | None, link_mode: str | None, as_json: bool) -> None:
    """Bring a lab up and leave it running (take it down with `wgcast lab down`)."""
    try:
        parse_ms_range(delay, "delay")
        parse_ms_range(jitter, "jitter")
        parse_loss(loss)
        group_list = None
        if groups:
            group_list = ([instances.split(",")] if instances else []) + \
                [g.split(",") for g in groups]
        the_lab = Lab(topology, instances=instances, groups=group_list, delay=delay,
                      jitter=jitter, loss=loss, seed=seed, timers=timers, daemons=daemons,
                      echo=echo, echo_port=echo_port, labid=labid,
                      services=services and daemons and echo != "none",
                      health_interval=health_interval, health_fall=health_fall,
                      wireguard=wireguard, links=link_mode)
    except (ValueError, LabError) as e:
        _fail(e)
        return

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        the_lab.up()  # tears down on any error or Ctrl-C
    except LabError as e:
        _fail(e)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    st = the_lab.status()
    if as_json:
        _print(st, True)
        return
    click.echo(f"lab {the_lab.id} up: {topology}, {len(the_lab.nodes)} nodes, "
               f"{len(the_lab.links)} links, state in {the_lab.dir}")
    _print_status(st)


def _print_status(st: dict[str, Any]) -> None:
    for g in st["groups"]:
        click.echo(f"  anycast {g['address']} served by {', '.join(g['members'])}")
    for name, n in st["nodes"].items():
        procs = " ".join(f"{k}:{v['pid']}{'' if v['alive'] else '(dead)'}"
                         for k, v in n["processes"].items())
        flag = "" if n["ns_exists"] else " (namespace missing)"
        click.echo(f"  {name:<5} {n['ns']:<16} {n['iface']:<12} {n['unicast']:<22} "
                   f"{procs}{flag}")
    r = st["relay"]
    click.echo(f"  {st.get('wireguard', 'go')} WireGuard, {r.get('mode', 'relay')} links")
    click.echo(f"  relay {r['ns']} {'alive' if r['alive'] else 'DEAD'}"
               + (f", forwarded {r['stats']['totals']['tx']} packets" if "stats" in r else ""))
    f = st.get("failures") or {}
    if any(f.get(k) for k in f):
        click.echo("  failures: " + " ".join(f"{k} {v}" for k, v in f.items() if v))


@lab.command("status")
@lab_id_option
@click.option("--json", "as_json", is_flag=True)
def status(labid: str | None, as_json: bool) -> None:
    """Nodes, namespaces, processes alive, relay and failures."""
    if labid is None and not as_json:
        for x in Lab.list_labs():
            if x["status"] in ("orphan", "broken"):
                click.echo(f"lab {x['id']}: {x['status']} (remove with `wgcast lab down "
                           f"--lab {x['id']}`)", err=True)
    the_lab = _attach(labid)
    st = the_lab.status()
    if as_json:
        _print(st, True)
        return
    click.echo(f"lab {st['id']} ({st['status']}): {st['topology']}, timers {st['timers']}, "
               f"{st['dir']}")
    _print_status(st)


@lab.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Labs on this machine."""
    labs = Lab.list_labs()
    if as_json:
        _print(labs, True)
        return
    for x in labs:
        click.echo(f"{x['id']}  {x['status']:<8} {x['nodes']} nodes  {x['dir'] or ''}")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@lab_id_option
@click.argument("node")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(labid: str | None, node: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in NODE's namespace (NODE may be 'relay'): wgcast lab exec n1 -- ip a"""
    the_lab = _attach(labid)
    try:
        ns = the_lab.ns(node)
    except LabError as e:
        _fail(e)
        return
    try:
        rc = subprocess.call(["ip", "netns", "exec", ns, *cmd])
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc)


def _fault(labid: str | None, node: str, how: str, peer: str | None, link_id: int | None,
           restore: bool, kill: bool) -> None:
    the_lab = _attach(labid)
    try:
        if how == "link" and peer is None and link_id is None:
            raise LabError("--how link needs --peer NODE2 (or --link-id)")
        if restore:
            the_lab.restore(node, how, peer, link_id=link_id)
        else:
            the_lab.fail(node, how, peer, link_id=link_id,
                         sig=signal.SIGKILL if kill else signal.SIGTERM)
    except (LabError, ValueError) as e:
        _fail(e)
    what = f"link {node}-{peer}" if how == "link" and peer else \
        f"link {link_id}" if how == "link" else f"{how} {node}"
    click.echo(f"{'restored' if restore else 'failed'} {what}")


_how = click.option("--how", type=click.Choice(["daemon", "node", "link", "service", "health",
                                                "drain"]), default="daemon",
                    show_default=True,
                    help="service: SIGKILL the instance (wgcast join + echo); health: its "
                         "health check fails; drain: drain it, then stop it")
_peer = click.option("--peer", default=None, help="other end of the link (--how link)")
_link_id = click.option("--link-id", type=int, default=None, help="one link by id")


@lab.command("fail")
@lab_id_option
@click.argument("node")
@_how
@_peer
@_link_id
@click.option("--kill", is_flag=True, help="daemon: SIGKILL (crash) instead of SIGTERM")
def fail(labid: str | None, node: str, how: str, peer: str | None, link_id: int | None,
         kill: bool) -> None:
    """Inject a fault: stop NODE's daemon, cut NODE off, cut the link NODE-PEER, kill
    NODE's instance, fail its health check or drain it."""
    _fault(labid, node, how, peer, link_id, False, kill)


@lab.command("restore")
@lab_id_option
@click.argument("node")
@_how
@_peer
@_link_id
def restore(labid: str | None, node: str, how: str, peer: str | None,
            link_id: int | None) -> None:
    """Undo a fault: restart the daemon, reconnect NODE, or restore the link."""
    _fault(labid, node, how, peer, link_id, True, False)


@lab.command("link")
@lab_id_option
@click.argument("a")
@click.argument("b", required=False)
@_link_id
@click.option("--delay", default=None, help="new delay, e.g. 30ms")
@click.option("--jitter", default=None)
@click.option("--loss", default=None)
@click.option("--dir", "direction", type=click.Choice(["both", "ab", "ba"]), default="both")
def link_cmd(labid: str | None, a: str, b: str | None, link_id: int | None, delay: str | None,
             jitter: str | None, loss: str | None, direction: str) -> None:
    """Change the delay / jitter / loss of the link(s) A-B at run time."""
    the_lab = _attach(labid)
    try:
        ids = the_lab.set_link(
            a, b, link_id=link_id, direction=direction,
            delay_ms=parse_ms(delay, "delay") if delay is not None else None,
            jitter_ms=parse_ms(jitter, "jitter") if jitter is not None else None,
            loss=parse_loss(loss) if loss is not None else None)
    except (LabError, ValueError) as e:
        _fail(e)
        return
    click.echo(f"changed link(s) {', '.join(map(str, ids))}")


@lab.command("probe")
@lab_id_option
@click.argument("node")
@click.option("--addr", default=None, help="default: the anycast address of group 0")
@click.option("--port", type=int, default=None)
@click.option("--duration", type=float, default=5.0, show_default=True)
@click.option("--interval-ms", type=float, default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the whole result")
def probe(labid: str | None, node: str, addr: str | None, port: int | None, duration: float,
          interval_ms: float, as_json: bool) -> None:
    """Probe ADDR from NODE once per interval and summarise who answered."""
    the_lab = _attach(labid)
    try:
        res = the_lab.run_prober(node, addr, port, duration, interval_ms=interval_ms)
    except LabError as e:
        _fail(e)
        return
    if as_json:
        _print(res, True)
        return
    click.echo(f"sent {res['sent']} answered {res['answered']} lost {res['lost']} "
               f"outage {res['outage_ms']} ms, nodes {res['nodes']}")
    for seg in res["timeline"][:50]:
        click.echo(f"  {seg['from_ms']:>10.1f} - {seg['to_ms']:>10.1f} ms  {seg['node']}")


@lab.command("catchment")
@lab_id_option
@click.option("--addr", default=None)
@click.option("--json", "as_json", is_flag=True)
def catchment(labid: str | None, addr: str | None, as_json: bool) -> None:
    """Which instance answers each node's query to the anycast address."""
    the_lab = _attach(labid)
    try:
        c = the_lab.catchment(addr)
    except LabError as e:
        _fail(e)
        return
    if as_json:
        _print(c, True)
        return
    for n, inst in c.items():
        click.echo(f"  {n:<6} -> {inst or '(no answer)'}")


@lab.command("down")
@lab_id_option
@click.option("--all", "all_labs", is_flag=True, help="every lab on this machine")
@click.option("--json", "as_json", is_flag=True)
def down(labid: str | None, all_labs: bool, as_json: bool) -> None:
    """Kill every process of the lab, delete its namespaces, sockets and state."""
    if os.geteuid() != 0:
        _fail(LabError("the lab needs root"))
    if all_labs:
        res = teardown_all()
    else:
        try:
            target = Lab.resolve_id(labid)  # also finds labs left as bare namespaces
        except LabError as e:
            click.echo(f"{e}: nothing to take down")  # down is idempotent
            return
        res = [teardown(target)]
    if as_json:
        _print(res, True)
        return
    for r in res:
        extra = f", {len(r['survivors'])} processes survived" if r["survivors"] else ""
        click.echo(f"lab {r['id']} down: {r['killed']} processes, "
                   f"{len(r['namespaces'])} namespaces{extra}")
