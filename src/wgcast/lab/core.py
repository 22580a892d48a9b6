"""The lab: a real wgcast mesh in network namespaces, with userspace link emulation.

Layout of a lab with id ``XXXX`` (4 hex digits, in every name so labs never collide)::

    namespace wgl-XXXX-relay   the relay (lab/relay.py); veth r<i> to every node
    namespace wgl-XXXX-n<i>    node n<i>: veth "ul" 198.18.x.y/30 (underlay),
                               wireguard-go interface wgXXXX<i> with the control
                               address fe80::.../128 and fd5a:XXXX:<i>::1/128
    /run/wgcast-lab/XXXX/      lab.json (everything below), keys, configs, logs, sockets

Node n<i>'s WireGuard listens on 20000+i; its endpoint for a peer over link L is the
relay's address on n<i>'s veth, port 30000+2L (end a of L) or 30001+2L (end b). Peers
start with AllowedIPs = the peer's control address /128 only: the daemon adds the rest.

Use::

    with Lab("line:5", instances=["n1", "n5"], delay="2-20ms", timers="fast") as lab:
        run = lab.start_prober("n3", lab.anycast(), 7, duration=5)
        lab.fail("n1", how="daemon")
        print(run.wait()["outage_ms"])

or from another process: ``Lab.attach()`` (the only / most recent lab) or
``Lab.attach("XXXX")``; ``teardown("XXXX")`` removes a lab even with its state file lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from wgcast.lab import build, faults, probing, processes
from wgcast.lab import netem as netem_mod
from wgcast.lab.babeld import BabeldRouter
from wgcast.lab.cleanup import signals_blocked, teardown, teardown_all
from wgcast.lab.naming import (
    DEFAULT_BASE,
    HOWS,
    LAB_METRICS,
    LINK_MODES,
    MAX_LAB_NODES,
    NS_PREFIX,
    RELAY,
    RELAY_PORT_BASE,
    STATE_FILE,
    UNDERLAY,
    WG_PORT_BASE,
    WIREGUARDS,
    anycast_address,
    base_dir,
    ns_name,
    underlay,
    unicast_address,
    wg_name,
)
from wgcast.lab.probing import ProberRun
from wgcast.lab.router import Router, WgcastRouter
from wgcast.lab.state import (
    GroupInfo,
    LabOptions,
    LabState,
    LinkInfo,
    NodeInfo,
    list_labs,
    locked,
    read_json,
    read_state,
    resolve_id,
    state_path,
    write_state,
)
from wgcast.lab.system import (
    LabError,
    default_wireguard,
    netns_exists,
    require_tools,
    run,
    timeout_scale,
)
from wgcast.topology import Topology, parse_node_list, parse_topology

__all__ = [
    "DEFAULT_BASE", "HOWS", "LAB_METRICS", "LINK_MODES", "MAX_LAB_NODES", "NS_PREFIX",
    "RELAY", "RELAY_PORT_BASE", "STATE_FILE", "UNDERLAY", "WG_PORT_BASE", "WIREGUARDS",
    "GroupInfo", "Lab", "LabError", "LinkInfo", "NodeInfo", "ProberRun", "anycast_address",
    "base_dir", "ns_name", "teardown", "teardown_all", "underlay", "unicast_address",
    "wg_name",
]

log = logging.getLogger("wgcast.lab")


def router_from_state(options: LabOptions, section: dict[str, Any] | None) -> Router:
    """The router of a lab that is up, from the name and section its state records."""
    if options.router == "wgcast":
        return WgcastRouter()
    if options.router == "babeld":
        return BabeldRouter.from_json(section)
    raise LabError(f"the lab's router {options.router!r} is unknown to this wgcast")


class Lab:
    """A lab: create with options then ``up()`` (or use as a context manager), or
    ``Lab.attach(labid)`` to drive a lab another process brought up.

    ``router``: what runs on the nodes (default: `WgcastRouter`, wgcast daemons;
    `wgcast.lab.babeld.BabeldRouter`: babeld over one interface per peer)."""

    def __init__(
        self,
        topology: str | Topology = "line:3",
        *,
        instances: Sequence[str] | str = (),
        groups: Sequence[Sequence[str]] | None = None,
        delay: str | float = "5ms",
        jitter: str | float = 0,
        loss: str | float = 0.0,
        seed: int | None = None,
        timers: str = "default",
        daemons: bool = True,
        echo: str = "instances",
        echo_port: int = 7,
        labid: str | None = None,
        base: str | None = None,
        daemon_cmd: Sequence[str] | None = None,
        config_hook: Callable[[str, dict[str, Any]], None] | None = None,
        preassign_anycast: bool | None = None,
        daemon_ready_timeout: float = 10.0,
        relay_sched: str = "rt",
        warm_handshakes: bool = True,
        services: bool | None = None,
        health_interval: str = "200ms",
        health_fall: int = 2,
        health_rise: int = 2,
        wireguard: str | None = None,
        links: str | None = None,
        router: Router | None = None,
    ) -> None:
        self.router: Router = router if router is not None else WgcastRouter()
        needs = self.router.needs
        services = needs.services if needs.services is not None else services
        wireguard = needs.wireguard or wireguard
        links = needs.links or links
        # WireGuard: the kernel's where its module loads, else wireguard-go. Links: tc
        # netem in the kernel where it has netem, else the userspace relay.
        wireguard = wireguard or default_wireguard()
        if wireguard not in WIREGUARDS:
            raise LabError(f"wireguard must be 'kernel' or 'go', got {wireguard!r}")
        links = links or ("netem" if netem_mod.available() else "relay")
        if links not in LINK_MODES:
            raise LabError(f"links must be 'netem' or 'relay', got {links!r}")
        self.wireguard = wireguard
        self.link_mode = links
        if seed is None:
            seed = secrets.randbelow(2**31)
        self.seed = seed
        if isinstance(topology, Topology):
            self.topology = topology
        else:
            self.topology = parse_topology(topology, delay=delay, jitter=jitter, loss=loss,
                                           seed=seed)
        if len(self.topology.nodes) > MAX_LAB_NODES:
            raise LabError(f"a lab holds at most {MAX_LAB_NODES} nodes")
        if timers not in ("default", "fast"):
            raise LabError(f"timers must be 'default' or 'fast', got {timers!r}")
        if echo not in ("instances", "all", "none"):
            raise LabError(f"echo must be 'instances', 'all' or 'none', got {echo!r}")
        if labid is not None and not (len(labid) == 4 and all(c in "0123456789abcdef"
                                                               for c in labid)):
            raise LabError(f"lab id must be 4 lowercase hex digits, got {labid!r}")
        if groups is None:
            inst = parse_node_list(instances, self.topology) if instances else []
            groups = [inst] if inst else []
        self.group_members = [parse_node_list(g, self.topology) for g in groups]
        self.timers = timers
        self.daemons = daemons
        self.echo = echo
        self.echo_port = echo_port
        self.base = base_dir(base)
        self.daemon_cmd = list(daemon_cmd) if daemon_cmd else None
        self.config_hook = config_hook
        self.preassign_anycast = (not daemons) if preassign_anycast is None else preassign_anycast
        self.daemon_ready_timeout = daemon_ready_timeout * timeout_scale()
        if relay_sched not in ("rt", "nice", "none"):
            raise LabError(f"relay_sched must be 'rt', 'nice' or 'none', got {relay_sched!r}")
        self.relay_sched = relay_sched
        self.warm_handshakes = warm_handshakes
        # Instances are real services: `wgcast join <groups> -- echo`, in non-static groups
        # with a health check (see `service_command`). False: the old static groups + echo.
        self.services = (daemons and echo != "none") if services is None else services
        if self.services and not daemons:
            raise LabError("services (wgcast join) need the daemons")
        self.health_interval = health_interval
        self.health_fall = health_fall
        self.health_rise = health_rise
        self.id: str = labid or ""
        self.dir: str = ""
        self.nodes: dict[str, NodeInfo] = {}
        self.links: list[LinkInfo] = []
        self.groups: list[GroupInfo] = []
        self._state: LabState | None = None
        self.popens: dict[int, subprocess.Popen[bytes]] = {}
        #: time.monotonic() of the last kill_service signal (precise failure timing).
        self.killed_at: float | None = None
        self._is_up = False
        self._saved_signals: dict[int, Any] = {}
        self.router.bind(self)

    # ------------------------------------------------------------------ discovery
    @staticmethod
    def list_labs(base: str | None = None) -> list[dict[str, Any]]:
        """Labs known on this machine, oldest first: {id, dir, created, status, nodes}.

        A lab whose state is gone but whose namespaces remain shows with status "orphan".
        """
        return list_labs(base)

    @staticmethod
    def resolve_id(labid: str | None = None, base: str | None = None) -> str:
        """The given id, or the only / most recent lab's id."""
        return resolve_id(labid, base)

    @classmethod
    def attach(cls, labid: str | None = None, base: str | None = None) -> Lab:
        """A Lab object for a lab that is up (maybe brought up by another process), with
        the router its state records."""
        labid = resolve_id(labid, base)
        d = os.path.join(base_dir(base), labid)
        try:
            st = read_state(d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LabError(f"lab {labid}: cannot read {state_path(d)}: {e}") from None
        o = st.options
        lab = cls(st.topology, groups=[g.members for g in st.groups], seed=o.seed,
                  timers=o.timers, daemons=o.daemons, echo=o.echo, echo_port=o.echo_port,
                  labid=labid, base=base, daemon_cmd=o.daemon_cmd,
                  preassign_anycast=o.preassign_anycast, relay_sched=o.relay_sched,
                  services=o.services, health_interval=o.health_interval,
                  health_fall=o.health_fall, health_rise=o.health_rise,
                  wireguard=o.wireguard, links=o.links,
                  router=router_from_state(o, st.router_state))
        lab._load_state(st)
        lab._is_up = True
        return lab

    def _load_state(self, st: LabState) -> None:
        self._state = st
        self.id = st.id
        self.dir = st.dir
        self.nodes = st.nodes
        self.links = st.links
        self.groups = st.groups

    # ------------------------------------------------------------------ state file
    @property
    def state(self) -> LabState:
        """The lab's state (as this process last read or wrote it)."""
        if self._state is None:
            raise LabError("the lab is not up")
        return self._state

    @property
    def state_path(self) -> str:
        return state_path(self.dir)

    def options(self) -> LabOptions:
        """What `attach` needs to rebuild this Lab object (recorded in the state)."""
        return LabOptions(
            seed=self.seed, timers=self.timers, daemons=self.daemons, echo=self.echo,
            echo_port=self.echo_port, daemon_cmd=self.daemon_cmd,
            preassign_anycast=self.preassign_anycast, services=self.services,
            health_interval=self.health_interval, health_fall=self.health_fall,
            health_rise=self.health_rise, relay_sched=self.relay_sched,
            wireguard=self.wireguard, links=self.link_mode, router=self.router.name,
            router_options=self.router.options_json())

    def _write_state(self) -> None:
        write_state(self.dir, self.state)

    def mutate(self, fn: Callable[[LabState], None]) -> None:
        """Change the shared state under the lab lock (other processes may too): what
        they change (processes, failures, status) is read first."""
        if not self.dir or not os.path.isdir(self.dir):
            raise LabError("the lab is not up")
        st = self.state
        with locked(self.dir):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                disk = LabState.from_json(read_json(self.dir))
                st.processes = disk.processes
                st.failures = disk.failures
                st.status = disk.status
            fn(st)
            self._write_state()

    def _reload(self) -> None:
        """Read the state again (another process may have changed it)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            self._state = read_state(self.dir)

    # ------------------------------------------------------------------ names
    def node(self, name: str) -> NodeInfo:
        try:
            return self.nodes[name]
        except KeyError:
            raise LabError(f"unknown node {name!r} (nodes: {', '.join(self.nodes)})") from None

    def ns(self, node: str) -> str:
        """Namespace of a node, or of the relay for node == 'relay'."""
        if node == RELAY:
            return ns_name(self.id, RELAY)
        return self.node(node).ns

    def unicast(self, node: str) -> str:
        return self.node(node).unicast

    def anycast(self, group: int = 0) -> str:
        """Address of anycast group ``group`` (0 = the one of ``instances``)."""
        if not 0 <= group < len(self.groups):
            raise LabError(f"no anycast group {group} (the lab has {len(self.groups)})")
        return self.groups[group].address

    def links_between(self, a: str, b: str) -> list[LinkInfo]:
        return [lk for lk in self.links if {lk.a, lk.b} == {a, b}]

    # ------------------------------------------------------------------ up
    def __enter__(self) -> Lab:
        self._install_signals()
        try:
            if not self._is_up:
                self.up()
        except BaseException:
            self._restore_signals()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.down()
        finally:
            self._restore_signals()

    def _install_signals(self) -> None:
        """SIGTERM/SIGHUP raise SystemExit in the main thread, so `with` cleans up."""
        if threading.current_thread() is not threading.main_thread():
            return

        def _raise(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):
                self._saved_signals[sig] = signal.signal(sig, _raise)

    def _restore_signals(self) -> None:
        for sig, handler in self._saved_signals.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)
        self._saved_signals.clear()

    def _new_id(self) -> str:
        used = {x["id"] for x in list_labs(self.base)}
        for _ in range(100):
            labid = secrets.token_hex(2)
            if labid not in used and not any(
                n.startswith(f"wg{labid}") for n in _listdir("/var/run/wireguard")
            ):
                return labid
        raise LabError("could not find a free lab id")

    def up(self) -> Lab:
        """Build everything; on any error (or Ctrl-C) tear down what was built, re-raise."""
        if self._is_up:
            raise LabError(f"lab {self.id} is already up")
        require_tools(self.wireguard)
        if not self.id:
            self.id = self._new_id()
        elif any(x["id"] == self.id for x in list_labs(self.base)):
            raise LabError(f"lab {self.id} already exists")
        self.dir = os.path.join(self.base, self.id)
        os.makedirs(self.base, exist_ok=True)
        os.makedirs(self.dir, mode=0o700)
        self._is_up = True
        try:
            self._state = build.plan(self, self.group_members, self.options())
            self.router.plan()
            self._state.router_state = self.router.state_json()
            self._write_state()
            build.build_namespaces(self)
            self.router.start_wireguard()
            self.router.configure_wireguard()
            build.start_links(self, self.router.listen_port)
            self.router.write_configs(self.config_hook)
            if self.warm_handshakes:
                self.warm_up()
            if self.echo != "none":
                for n in (self.nodes if self.echo == "all" else self._serving_nodes()):
                    if not (self.services and self.nodes[n].serves):
                        self.start_echo(n, self.echo_port)
            if self.daemons:
                self.start_daemons()
            if self.services:
                self.start_services()
            self.mutate(_set_status_up)
        except BaseException:
            log.warning("lab %s: bring-up failed, tearing down", self.id)
            with signals_blocked():
                self.down()
            raise
        return self

    def _serving_nodes(self) -> list[str]:
        return [n for n in self.nodes if self.nodes[n].serves]

    def recreate_wireguard(self, node: str, how: str = "delete") -> float:
        """Take a node's WireGuard interface away and bring it back configured as
        before (same key, peers and addresses), as `wg-quick down; wg-quick up` does.

        how="delete": `ip link del` (wireguard-go exits with its TUN), then create it
        again; how="kill": SIGKILL wireguard-go (go labs only), then start it again.
        Returns the time.monotonic() at which the interface was back and configured."""
        return build.recreate_wireguard(self, node, how)

    def warm_up(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """Complete the WireGuard handshake of every neighbour pair from one end only
        before anything else talks (the router's way; see lab/build.py). Returns the
        pairs still without a handshake at the deadline."""
        return self.router.warm_up(timeout)

    def node_config(self, node: str) -> dict[str, Any]:
        """The daemon config dict of a node (before the hook)."""
        return self.router.node_config(node)

    def unhealthy_flag(self, node: str) -> str:
        """The file whose existence fails ``node``'s health check (services mode)."""
        return os.path.join(self.dir, f"{node}.unhealthy")

    def health_check(self, node: str) -> dict[str, Any]:
        """The exec check of every group of ``node``: passes while no flag file exists."""
        test = shutil.which("test") or "/usr/bin/test"
        return {"type": "exec", "command": [test, "!", "-e", self.unhealthy_flag(node)],
                "interval": self.health_interval, "timeout": self.health_interval,
                "rise": self.health_rise, "fall": self.health_fall}

    # ------------------------------------------------------------------ processes
    def launch(self, node: str, cmd: Sequence[str], kind: str, log_name: str,
               env: dict[str, str] | None = None) -> tuple[int, int | None]:
        """Start a detached process in a node's (or the relay's) namespace; recorded.
        Returns (pid, start time)."""
        return processes.launch(self, node, cmd, kind, log_name, env)

    def processes(self, node: str | None = None, kind: str | None = None,
                  alive_only: bool = True) -> list[dict[str, Any]]:
        """Recorded processes (pid, kind, node, log, cmd), filtered; ``alive`` added."""
        self._reload()
        return processes.select(self.state.processes if self._state else [], self.popens,
                                node, kind, alive_only)

    def process(self, node: str, kind: str) -> dict[str, Any] | None:
        """The most recent live process of that kind on that node."""
        ps = self.processes(node, kind)
        return ps[-1] if ps else None

    def spawn(self, node: str, cmd: Sequence[str], kind: str = "user",
              log_name: str | None = None) -> int:
        """Run a background command in a node's namespace; killed by ``down()``."""
        pid, _ = self.launch(node, cmd, kind, log_name or f"{node}.{kind}.log")
        return pid

    def metrics(self, node: str, path: str = "/metrics", timeout: float = 5.0) -> str:
        """GET a path of ``node``'s metrics endpoint (raises LabError unless 200)."""
        script = ("import sys, urllib.request\n"
                  "try:\n"
                  f"    r = urllib.request.urlopen('http://{LAB_METRICS}' + sys.argv[1], "
                  f"timeout={timeout})\n"
                  "    sys.stdout.write(r.read().decode())\n"
                  "except Exception as e:\n"
                  "    sys.exit(f'{type(e).__name__}: {e}')\n")
        r = self.exec(node, [sys.executable, "-c", script, path], check=False,
                      timeout=timeout + 10)
        if r.returncode != 0:
            raise LabError(f"{node} metrics {path}: {r.stderr.strip()}")
        return r.stdout

    def exec(self, node: str, cmd: Sequence[str] | str, *, check: bool = True,
             timeout: float = 60.0, input: str | None = None,
             capture: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in a node's (or 'relay') namespace and wait for it."""
        argv = cmd.split() if isinstance(cmd, str) else list(cmd)
        return run(["ip", "netns", "exec", self.ns(node), *argv], check=check,
                   timeout=timeout, input=input, capture=capture)

    # ------------------------------------------------------------------ services
    def wgcast_exe(self) -> str:
        return processes.wgcast_exe()

    def service_command(self, node: str, port: int | None = None) -> list[str]:
        """``wgcast join <the node's groups> -- python -m wgcast.lab.echo ...``"""
        return processes.service_command(self, node, port)

    def start_services(self, nodes: Sequence[str] | None = None, wait: bool = True,
                       timeout: float | None = None) -> None:
        """Start the instances of ``nodes`` (default: every serving node) as services held
        by ``wgcast join``, then wait until their daemons serve them (default deadline:
        15 s, or ``daemon_ready_timeout`` if longer: a slow guest kernel)."""
        timeout = max(15.0, self.daemon_ready_timeout) if timeout is None else timeout
        names = list(nodes) if nodes is not None else self._serving_nodes()
        processes.start_services(self, names, wait, timeout)

    def api(self, node: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """One request to ``node``'s daemon (raises LabError on an error reply)."""
        from wgcast.client import Client, WgcastError

        try:
            with Client(self.node(node).api_socket, timeout=timeout) as c:
                return c.request(request)
        except WgcastError as e:
            raise LabError(f"{node}: {e}") from None

    def groups_of(self, node: str) -> dict[str, dict[str, Any]]:
        """{prefix: group status} from ``node``'s daemon."""
        return {g["prefix"]: g for g in self.api(node, {"cmd": "status"}).get("groups", [])}

    def wait_served(self, nodes: Sequence[str], timeout: float = 15.0,
                    served: bool = True) -> None:
        """Wait until every group of each node is served (or, served=False, is not)."""
        processes.wait_served(self, nodes, timeout, served)

    def kill_service(self, node: str, sig: int = signal.SIGKILL, wait: float = 5.0) -> bool:
        """Signal the service of ``node``: its whole process group (``wgcast join`` and the
        echo it runs). SIGKILL = the service crashes."""
        return processes.kill_service(self, node, sig, wait)

    def drain(self, node: str, **params: float) -> list[dict[str, Any]]:
        """Drain every group ``node`` serves (returns once drained); the drain replies."""
        return processes.drain(self, node, **params)

    def start_echo(self, node: str, port: int | None = None) -> int:
        """Start the echo service on ``node`` (UDP [::]:port); returns its pid."""
        return processes.start_echo(self, node, port)

    def daemon_command(self, node: str) -> list[str]:
        """The command of ``node``'s daemon (the router's)."""
        return self.router.daemon_command(node)

    def start_daemons(self, nodes: Sequence[str] | None = None, wait: bool = True) -> None:
        """Start the daemon on these nodes (all by default), then wait until each one is
        ready (a daemon that exits is an error, with its log tail)."""
        names = list(nodes) if nodes is not None else list(self.nodes)
        self.router.start_daemons(names, wait)

    def start_daemon(self, node: str, wait: bool = True) -> None:
        self.start_daemons([node], wait)

    def wait_daemons(self, nodes: Sequence[str] | None = None, timeout: float = 10.0) -> None:
        """Wait until each daemon is ready (wgcast: its API socket exists)."""
        names = list(nodes) if nodes is not None else list(self.nodes)
        self.router.wait_daemons(names, timeout)

    def stop_daemon(self, node: str, sig: int = signal.SIGTERM, wait: float = 5.0) -> bool:
        """Signal the daemon of ``node`` (SIGTERM: clean stop; SIGKILL: crash)."""
        return processes.stop_daemon(self, node, sig, wait)

    # ------------------------------------------------------------------ faults
    def relay_control(self, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        return faults.relay_control(self, request, timeout)

    def set_link(self, a: str, b: str | None = None, *, link_id: int | None = None,
                 delay_ms: float | None = None, jitter_ms: float | None = None,
                 loss: float | None = None, up: bool | None = None,
                 direction: str = "both") -> list[int]:
        """Change links between a and b (or one by id) at run time, both directions by
        default (direction 'ab'/'ba' = from the link's a / b end). Returns the link ids."""
        return faults.set_link(self, a, b, link_id=link_id, delay_ms=delay_ms,
                               jitter_ms=jitter_ms, loss=loss, up=up, direction=direction)

    def fail(self, node: str, how: str = "daemon", peer: str | None = None, *,
             link_id: int | None = None, sig: int = signal.SIGTERM) -> Any:
        """Inject a fault.

        how="daemon":  signal the node's daemon (SIGTERM by default; sig=SIGKILL = crash).
        how="node":    the node's underlay veth goes down (cut off from everything).
        how="link":    the relay drops both directions of the link(s) node-peer (or link_id).
        how="service": SIGKILL the node's instance (``wgcast join`` and its echo): a crash.
        how="health":  the node's health check starts failing (its flag file appears).
        how="drain":   drain the node's groups (returns once drained: the drain replies),
                       then stop its service with SIGTERM.

        The router may handle a kind its own way (babeld: service and drain).
        """
        self.node(node)
        if self.router.fail(node, how):
            return None
        return faults.fail(self, node, how, peer, link_id=link_id, sig=sig)

    def restore(self, node: str, how: str = "daemon", peer: str | None = None, *,
                link_id: int | None = None, wait: bool = True) -> None:
        """Undo ``fail``: restart the daemon or the service, bring the veth up, restore the
        link(s) or the health check."""
        self.node(node)
        if self.router.restore(node, how):
            return
        faults.restore(self, node, how, peer, link_id=link_id, wait=wait)

    # ------------------------------------------------------------------ probing
    def start_prober(self, node: str, addr: str | None = None, port: int | None = None,
                     duration: float = 5.0, interval_ms: float = 1.0,
                     timeout_ms: float = 1000.0, source: str | None = None,
                     linger: float | None = None, realtime: bool = True) -> ProberRun:
        """Start a prober in ``node``'s namespace (one query per ``interval_ms`` to
        addr:port, default: anycast group 0, echo port). ``.wait()`` returns its result
        (see wgcast.lab.prober). ``realtime``: SCHED_FIFO for precise pacing."""
        return probing.start_prober(self, node, addr, port, duration, interval_ms,
                                    timeout_ms, source, linger, realtime)

    def run_prober(self, node: str, addr: str | None = None, port: int | None = None,
                   duration: float = 5.0, **kw: Any) -> dict[str, Any]:
        """start_prober(...).wait()"""
        return self.start_prober(node, addr, port, duration, **kw).wait()

    def query_many(self, nodes: Sequence[str], addr: str, port: int | None = None,
                   timeout: float = 1.0, tries: int = 3,
                   payload: bytes = b"q") -> dict[str, tuple[str, float] | None]:
        """From each node, ask the echo service at addr:port who answers: {node:
        (answering node, rtt ms) or None} (see lab/probing.py)."""
        return probing.query_many(self, nodes, addr, port, timeout, tries, payload)

    def query(self, node: str, addr: str, port: int | None = None,
              timeout: float = 1.0) -> tuple[str, float] | None:
        """(answering node, rtt ms) of one echo query from ``node``, None if no answer."""
        return self.query_many([node], addr, port, timeout)[node]

    def catchment(self, addr: str | None = None, port: int | None = None,
                  nodes: Sequence[str] | None = None,
                  timeout: float = 1.0) -> dict[str, str | None]:
        """{node: instance answering its queries to the anycast address (None: none)}."""
        return probing.catchment(self, addr, port, nodes, timeout)

    def catchments(self, addr: str | None = None, **kw: Any) -> dict[str | None, list[str]]:
        """{instance: [nodes it catches]} (key None: nodes without an answer)."""
        return probing.catchments(self, addr, **kw)

    # ------------------------------------------------------------------ inspection
    def wg_show(self, node: str) -> dict[str, Any]:
        """WireGuard state of a node, read through the UAPI socket:
        {interface, listen_port, peers: {peer name: {public_key, endpoint, allowed_ips,
        latest_handshake, rx, tx}}}."""
        return self.router.wg_show(node)

    def status(self) -> dict[str, Any]:
        """Everything about the lab, with liveness of namespaces and processes."""
        self._reload()
        procs = self.processes(alive_only=False)
        st = self.state
        nodes = {}
        for name, n in self.nodes.items():
            mine = [p for p in procs if p["node"] == name]
            kinds: dict[str, Any] = {}
            for p in mine:
                if p["kind"] in ("wireguard-go", "daemon", "echo", "service"):
                    kinds[p["kind"]] = {"pid": p["pid"], "alive": p["alive"]}
            nodes[name] = {"ns": n.ns, "ns_exists": netns_exists(n.ns), "iface": n.iface,
                           "unicast": n.unicast, "control": n.control,
                           "public_key": n.public_key, "underlay": n.underlay_ip,
                           "serves": n.serves, "processes": kinds,
                           "probers": sum(1 for p in mine if p["kind"] == "prober"
                                          and p["alive"])}
        relay: dict[str, Any] = {"ns": self.ns(RELAY), "ns_exists": netns_exists(self.ns(RELAY)),
                                 "mode": self.link_mode}
        rp = [p for p in procs if p["kind"] == "relay"]
        relay["alive"] = bool(rp and rp[-1]["alive"]) or (
            self.link_mode == "netem" and relay["ns_exists"])
        if self.link_mode == "netem":
            relay["netem"] = st.netem or {}
        elif relay["alive"]:
            with contextlib.suppress(LabError):
                relay["stats"] = self.relay_control({"op": "stats"})
                relay["links"] = self.relay_control({"op": "get"})["links"]
        return {"id": self.id, "dir": self.dir, "status": st.status,
                "created": st.created, "topology": self.topology.spec,
                "timers": self.timers, "wireguard": self.wireguard, "links_mode": self.link_mode,
                "groups": [asdict(g) for g in self.groups],
                "failures": st.failures.to_json(), "nodes": nodes, "relay": relay,
                "links": [asdict(lk) for lk in self.links]}

    # ------------------------------------------------------------------ down
    def down(self) -> dict[str, Any]:
        """Kill every process of the lab, delete its namespaces, UAPI sockets and state
        directory. Idempotent; works on a half-built lab."""
        if not self.id:
            return {}
        with signals_blocked():
            res = teardown(self.id, self.base, popens=self.popens)
        self._is_up = False
        return res


def _set_status_up(st: LabState) -> None:
    st.status = "up"


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
