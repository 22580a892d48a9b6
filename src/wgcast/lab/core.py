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
import fcntl
import functools
import ipaddress
import json
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from wgcast import keys
from wgcast.lab import config as lab_config
from wgcast.lab import netem as netem_mod
from wgcast.lab import relay as relay_mod
from wgcast.lab.echo import parse_reply
from wgcast.lab.system import (
    LabError,
    alive,
    default_wireguard,
    in_netns,
    ip_batch,
    list_netns,
    netns_exists,
    netns_sysctl,
    pids_in_netns,
    remove_wg_sockets,
    require_tools,
    run,
    signal_pid,
    spawn,
    tail,
    terminate,
    timeout_scale,
    uapi_get,
    wait_for,
    wait_gone,
    wg_dump,
)
from wgcast.topology import Topology, parse_node_list, parse_topology

log = logging.getLogger("wgcast.lab")

DEFAULT_BASE = "/run/wgcast-lab"
NS_PREFIX = "wgl-"
RELAY = "relay"
MAX_LAB_NODES = 1000
#: Where every lab daemon serves its Prometheus metrics, inside its namespace.
LAB_METRICS = "127.0.0.1:9586"
WG_PORT_BASE = 20000
RELAY_PORT_BASE = 30000
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/15")
STATE_FILE = "lab.json"
HOWS = ("daemon", "node", "link", "service", "health", "drain")
WIREGUARDS = ("kernel", "go")
LINK_MODES = ("netem", "relay")


def base_dir(base: str | None = None) -> str:
    return base or os.environ.get("WGCAST_LAB_DIR") or DEFAULT_BASE


def ns_name(labid: str, node: str) -> str:
    return f"{NS_PREFIX}{labid}-{node}"


def wg_name(labid: str, index: int) -> str:
    return f"wg{labid}{index}"


def unicast_address(labid: str, index: int) -> str:
    """fd5a:<labid>:<index>::1 in canonical form (the index digits read as hex)."""
    return str(ipaddress.IPv6Address(f"fd5a:{labid}:{index}::1"))


def anycast_address(labid: str, k: int) -> str:
    return str(ipaddress.IPv6Address(f"fd5a:{labid}:ffff::{0x53 + k:x}"))


def underlay(index: int) -> tuple[str, str]:
    """(relay side, node side) addresses of node ``index``'s /30."""
    base = int(UNDERLAY.network_address) + 4 * index
    return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))


@dataclass
class NodeInfo:
    name: str
    index: int
    ns: str
    iface: str
    private_key: str  # base64
    public_key: str  # base64
    listen_port: int
    underlay_ip: str  # the node's veth address
    relay_ip: str  # the relay's address on the node's veth
    relay_veth: str  # name of the veth end in the relay namespace
    unicast: str  # fd5a:<labid>:<index>::1
    control: str  # keys.control_address(public key)
    key_path: str
    config_path: str
    api_socket: str
    state_file: str
    serves: list[str] = field(default_factory=list)  # group prefixes served here


@dataclass
class LinkInfo:
    id: int
    a: str
    b: str
    delay_ms: float
    jitter_ms: float
    loss: float
    port_a: int  # relay port node a sends to (a's endpoint for b)
    port_b: int
    endpoint_a: str  # "ip:port" a uses for b
    endpoint_b: str  # "ip:port" b uses for a

    def endpoint_of(self, node: str) -> str:
        """The endpoint ``node`` uses to reach the other end of this link."""
        if node == self.a:
            return self.endpoint_a
        if node == self.b:
            return self.endpoint_b
        raise LabError(f"{node} is not an end of link {self.id}")


@dataclass
class GroupInfo:
    prefix: str  # "fd5a:...:ffff::53/128"
    address: str  # "fd5a:...:ffff::53"
    members: list[str]


class ProberRun:
    """A prober running in a node's namespace; ``wait()`` returns its JSON result."""

    def __init__(self, lab: Lab, node: str, pid: int, starttime: int | None,
                 popen: subprocess.Popen[bytes] | None, out_path: str, log_path: str,
                 duration: float, linger: float) -> None:
        self.lab, self.node, self.pid, self.starttime = lab, node, pid, starttime
        self.popen, self.out_path, self.log_path = popen, out_path, log_path
        self.duration, self.linger = duration, linger
        self.started = time.monotonic()

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return alive(self.pid, self.starttime)

    def wait_started(self, timeout: float = 10.0) -> bool:
        """Wait until the prober is sending: a realtime one switches to SCHED_FIFO, any
        one opens its socket, right before its first query. False at the deadline."""
        deadline = time.monotonic() + timeout
        fds = f"/proc/{self.pid}/fd"
        while time.monotonic() < deadline and self.running():
            with contextlib.suppress(OSError):
                if os.sched_getscheduler(self.pid) == os.SCHED_FIFO:
                    return True
                if any(os.readlink(os.path.join(fds, fd)).startswith("socket:")
                       for fd in os.listdir(fds)):
                    return True
            time.sleep(0.005)
        return False

    def stop(self) -> None:
        """Ask the prober to finish now (it still writes its results)."""
        signal_pid(self.pid, signal.SIGTERM, self.starttime)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        if timeout is None:
            timeout = self.duration + self.linger + 15.0
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                self.stop()
                wait_gone([self.pid], 3.0)
                break
            time.sleep(0.02)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(1)
        try:
            with open(self.out_path) as f:
                result: dict[str, Any] = json.load(f)
        except (OSError, ValueError) as e:
            raise LabError(f"prober on {self.node} left no result ({e}); log:\n"
                           f"{tail(self.log_path)}") from None
        if "error" in result:
            raise LabError(f"prober on {self.node}: {result['error']}")
        result["node"] = self.node
        return result


class Lab:
    """A lab: create with options then ``up()`` (or use as a context manager), or
    ``Lab.attach(labid)`` to drive a lab another process brought up."""

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
    ) -> None:
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
        self.state: dict[str, Any] = {}
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        #: time.monotonic() of the last kill_service signal (precise failure timing).
        self.killed_at: float | None = None
        self._is_up = False
        self._saved_signals: dict[int, Any] = {}

    # ------------------------------------------------------------------ discovery
    @staticmethod
    def list_labs(base: str | None = None) -> list[dict[str, Any]]:
        """Labs known on this machine, oldest first: {id, dir, created, status, nodes}.

        A lab whose state is gone but whose namespaces remain shows with status "orphan".
        """
        b = base_dir(base)
        out: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError):
            for labid in os.listdir(b):
                path = os.path.join(b, labid, STATE_FILE)
                try:
                    with open(path) as f:
                        st = json.load(f)
                    out[labid] = {"id": labid, "dir": os.path.join(b, labid),
                                  "created": st.get("created", 0.0),
                                  "status": st.get("status", "?"),
                                  "nodes": len(st.get("nodes", {}))}
                except (OSError, ValueError):
                    d = os.path.join(b, labid)
                    if os.path.isdir(d):
                        out[labid] = {"id": labid, "dir": d, "created": os.path.getmtime(d),
                                      "status": "broken", "nodes": 0}
        for ns in list_netns():
            if ns.startswith(NS_PREFIX):
                labid = ns[len(NS_PREFIX):].partition("-")[0]
                if labid not in out:
                    out[labid] = {"id": labid, "dir": None, "created": 0.0,
                                  "status": "orphan", "nodes": 0}
        return sorted(out.values(), key=lambda x: x["created"])

    @staticmethod
    def resolve_id(labid: str | None = None, base: str | None = None) -> str:
        """The given id, or the only / most recent lab's id."""
        labs = Lab.list_labs(base)
        if labid:
            if not any(x["id"] == labid for x in labs):
                known = ", ".join(x["id"] for x in labs) or "none"
                raise LabError(f"no lab {labid!r} (labs: {known})")
            return labid
        if not labs:
            raise LabError("no lab is running")
        return str(labs[-1]["id"])

    @classmethod
    def attach(cls, labid: str | None = None, base: str | None = None) -> Lab:
        """A Lab object for a lab that is up (maybe brought up by another process)."""
        labid = cls.resolve_id(labid, base)
        path = os.path.join(base_dir(base), labid, STATE_FILE)
        try:
            with open(path) as f:
                st = json.load(f)
        except (OSError, ValueError) as e:
            raise LabError(f"lab {labid}: cannot read {path}: {e}") from None
        opts = st["options"]
        if opts.get("router") == "babeld" and cls is Lab:
            from wgcast.lab.babeld import BabeldLab  # the same lab, babeld as the router

            cls = BabeldLab
        lab = cls(Topology.from_dict(st["topology"]), groups=[g["members"] for g in st["groups"]],
                  seed=opts["seed"], timers=opts["timers"], daemons=opts["daemons"],
                  echo=opts["echo"], echo_port=opts["echo_port"], labid=labid, base=base,
                  daemon_cmd=opts.get("daemon_cmd"),
                  preassign_anycast=opts.get("preassign_anycast"),
                  relay_sched=opts.get("relay_sched", "rt"),
                  services=opts.get("services", False),
                  health_interval=opts.get("health_interval", "200ms"),
                  health_fall=opts.get("health_fall", 2),
                  health_rise=opts.get("health_rise", 2),
                  wireguard=opts.get("wireguard", "go"), links=opts.get("links", "relay"))
        lab._load_state(st)
        lab._is_up = True
        return lab

    def _load_state(self, st: dict[str, Any]) -> None:
        self.state = st
        self.id = st["id"]
        self.dir = st["dir"]
        self.nodes = {n: NodeInfo(**d) for n, d in st["nodes"].items()}
        self.links = [LinkInfo(**d) for d in st["links"]]
        self.groups = [GroupInfo(**d) for d in st["groups"]]

    # ------------------------------------------------------------------ state file
    @property
    def state_path(self) -> str:
        return os.path.join(self.dir, STATE_FILE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(os.path.join(self.dir, "lock"), "a") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def _write_state(self) -> None:
        tmp = self.state_path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self.state_path)

    def _mutate(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Change the shared state under the lab lock (other processes may too)."""
        if not self.dir or not os.path.isdir(self.dir):
            raise LabError("the lab is not up")
        with self._locked():
            with contextlib.suppress(OSError, ValueError), open(self.state_path) as f:
                disk = json.load(f)
                self.state["processes"] = disk.get("processes", [])
                self.state["failures"] = disk.get("failures", {})
                self.state["status"] = disk.get("status", self.state.get("status"))
            fn(self.state)
            self._write_state()

    def _reload(self) -> None:
        with contextlib.suppress(OSError, ValueError), open(self.state_path) as f:
            self.state = json.load(f)

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
        used = {x["id"] for x in Lab.list_labs(self.base)}
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
        elif any(x["id"] == self.id for x in Lab.list_labs(self.base)):
            raise LabError(f"lab {self.id} already exists")
        self.dir = os.path.join(self.base, self.id)
        os.makedirs(self.base, exist_ok=True)
        os.makedirs(self.dir, mode=0o700)
        self._is_up = True
        try:
            self._plan()
            self._write_state()
            self._build_namespaces()
            self._start_wireguard()
            self._configure_wireguard()
            self._start_relay()
            self._write_configs()
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
            self._mutate(lambda st: st.update(status="up"))
        except BaseException:
            log.warning("lab %s: bring-up failed, tearing down", self.id)
            with _signals_blocked():
                self.down()
            raise
        return self

    def _serving_nodes(self) -> list[str]:
        return [n for n in self.nodes if self.nodes[n].serves]

    def _plan(self) -> None:
        """Names, keys, addresses and ports of everything (no side effect but files)."""
        labid = self.id
        self.groups = []
        for k, members in enumerate(self.group_members):
            addr = anycast_address(labid, k)
            self.groups.append(GroupInfo(prefix=f"{addr}/128", address=addr,
                                         members=list(members)))
        for name in self.topology.nodes:
            i = self.topology.index(name)
            priv = keys.generate_private()
            pub = keys.public_from_private(priv)
            relay_ip, node_ip = underlay(i)
            key_path = os.path.join(self.dir, f"{name}.key")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(keys.b64(priv) + "\n")
            self.nodes[name] = NodeInfo(
                name=name, index=i, ns=ns_name(labid, name), iface=wg_name(labid, i),
                private_key=keys.b64(priv), public_key=keys.b64(pub),
                listen_port=WG_PORT_BASE + i, underlay_ip=node_ip, relay_ip=relay_ip,
                relay_veth=f"r{i}", unicast=unicast_address(labid, i),
                control=str(keys.control_address(pub)), key_path=key_path,
                config_path=os.path.join(self.dir, f"{name}.toml"),
                api_socket=os.path.join(self.dir, f"{name}.sock"),
                state_file=os.path.join(self.dir, f"{name}.state"),
                serves=[g.prefix for g in self.groups if name in g.members],
            )
        for lk in self.topology.links:
            pa, pb = RELAY_PORT_BASE + 2 * lk.id, RELAY_PORT_BASE + 2 * lk.id + 1
            if pb > 65535:
                raise LabError("too many links for the relay's port range")
            self.links.append(LinkInfo(
                id=lk.id, a=lk.a, b=lk.b, delay_ms=lk.delay_ms, jitter_ms=lk.jitter_ms,
                loss=lk.loss, port_a=pa, port_b=pb,
                endpoint_a=f"{self.nodes[lk.a].relay_ip}:{pa}",
                endpoint_b=f"{self.nodes[lk.b].relay_ip}:{pb}",
            ))
        self.state = {
            "id": labid, "dir": self.dir, "created": time.time(), "status": "starting",
            "pid": os.getpid(),
            "options": {"seed": self.seed, "timers": self.timers, "daemons": self.daemons,
                        "echo": self.echo, "echo_port": self.echo_port,
                        "daemon_cmd": self.daemon_cmd,
                        "preassign_anycast": self.preassign_anycast,
                        "services": self.services, "health_interval": self.health_interval,
                        "health_fall": self.health_fall, "health_rise": self.health_rise,
                        "relay_sched": self.relay_sched, "wireguard": self.wireguard,
                        "links": self.link_mode},
            "topology": self.topology.to_dict(),
            "relay": {"ns": ns_name(labid, RELAY),
                      "control": os.path.join(self.dir, "relay.sock"),
                      "config": os.path.join(self.dir, "relay.json")},
            "nodes": {n: asdict(v) for n, v in self.nodes.items()},
            "links": [asdict(lk) for lk in self.links],
            "groups": [asdict(g) for g in self.groups],
            "processes": [],
            # + "services", "health", "drains" once such a fault was injected
            "failures": {"links": [], "nodes": [], "daemons": []},
        }

    def _build_namespaces(self) -> None:
        relay_ns = ns_name(self.id, RELAY)
        ip_batch([f"netns add {relay_ns}"] + [f"netns add {n.ns}" for n in self.nodes.values()])
        relay_lines = ["link set lo up"]
        for n in self.nodes.values():
            relay_lines += [
                f"link add {n.relay_veth} type veth peer name ul netns {n.ns}",
                f"address add {n.relay_ip}/30 dev {n.relay_veth}",
                f"link set {n.relay_veth} up",
            ]
        ip_batch(relay_lines, netns=relay_ns)
        for n in self.nodes.values():
            ip_batch(["link set lo up", f"address add {n.underlay_ip}/30 dev ul",
                      "link set ul up"], netns=n.ns)
            netns_sysctl(n.ns, {"net.ipv6.conf.all.forwarding": "1",
                                "net.ipv4.ip_forward": "1"})

    def _spawn(self, node: str, cmd: Sequence[str], kind: str, log_name: str,
               env: dict[str, str] | None = None) -> tuple[int, int | None]:
        """Start a detached process in a node's (or the relay's) namespace; recorded."""
        log_path = os.path.join(self.dir, log_name)
        sp = spawn(self.ns(node), cmd, log_path, env)
        self._popens[sp.pid] = sp.popen
        rec = {"pid": sp.pid, "starttime": sp.starttime, "kind": kind, "node": node,
               "log": log_path, "cmd": list(cmd), "started": time.time()}
        self._mutate(lambda st: st["processes"].append(rec))
        return sp.pid, sp.starttime

    def _start_wireguard(self) -> None:
        if self.wireguard == "kernel":
            for n in self.nodes.values():
                ip_batch([f"link add {n.iface} type wireguard"], netns=n.ns)
            return
        for n in self.nodes.values():
            self._spawn(n.name, ["wireguard-go", "-f", n.iface], "wireguard-go",
                        f"{n.name}.wireguard.log", env={"LOG_LEVEL": "error"})

        def ready() -> bool:
            for n in self.nodes.values():
                if not os.path.exists(f"/var/run/wireguard/{n.iface}.sock"):
                    p = self.process(n.name, "wireguard-go")
                    if p is None:
                        raise LabError(f"wireguard-go of {n.name} exited: "
                                       f"{tail(os.path.join(self.dir, n.name + '.wireguard.log'))}")
                    return False
            return True

        wait_for(ready, 10.0 + 0.05 * len(self.nodes), what="wireguard-go interfaces")

    def _configure_wireguard(self) -> None:
        for n in self.nodes.values():
            self._configure_node(n)

    def _configure_node(self, n: NodeInfo, lo: bool = True) -> None:
        """Keys, peers, addresses and link up of one node's interface (as wg-quick)."""
        cmd = ["wg", "set", n.iface, "listen-port", str(n.listen_port),
               "private-key", n.key_path]
        for peer in self.topology.neighbours(n.name):
            p = self.nodes[peer]
            first = self.links_between(n.name, peer)[0]
            cmd += ["peer", p.public_key, "endpoint", first.endpoint_of(n.name),
                    "allowed-ips", f"{p.control}/128"]
        # Kernel WireGuard is set through netlink, in the interface's namespace.
        run(["ip", "netns", "exec", n.ns, *cmd] if self.wireguard == "kernel" else cmd)
        lines = [
            f"link set dev {n.iface} addrgenmode none",
            f"address add {n.control}/128 dev {n.iface} nodad",
            f"address add {n.unicast}/128 dev {n.iface} nodad",
            f"link set dev {n.iface} up",
            # On-link route to the peers' control addresses (the kernel would add it
            # with an auto link-local address, which addrgenmode none suppresses).
            f"route replace fe80::/64 dev {n.iface}",
        ]
        if self.preassign_anycast and lo:
            for g in self.groups:
                if n.name in g.members:
                    lines.append(f"address add {g.address}/128 dev lo preferred_lft 0 nodad")
        ip_batch(lines, netns=n.ns)

    def recreate_wireguard(self, node: str, how: str = "delete") -> float:
        """Take a node's WireGuard interface away and bring it back configured as
        before (same key, peers and addresses), as `wg-quick down; wg-quick up` does.

        how="delete": `ip link del` (wireguard-go exits with its TUN), then create it
        again; how="kill": SIGKILL wireguard-go (go labs only), then start it again.
        Returns the time.monotonic() at which the interface was back and configured."""
        n = self.nodes[node]
        if how not in ("delete", "kill"):
            raise LabError(f"how must be delete or kill, got {how!r}")
        old = self.process(node, "wireguard-go") if self.wireguard == "go" else None
        if how == "kill":
            if old is None:
                raise LabError(f"{node}: no wireguard-go to kill")
            os.kill(int(old["pid"]), signal.SIGKILL)
        else:
            run(["ip", "-n", n.ns, "link", "del", n.iface])

        def gone() -> bool:
            if old is not None and self.process(node, "wireguard-go") is not None:
                return False
            cp = run(["ip", "-n", n.ns, "link", "show", n.iface], check=False)
            return cp.returncode != 0

        wait_for(gone, 5.0, what=f"{n.iface} gone")
        if self.wireguard == "kernel":
            ip_batch([f"link add {n.iface} type wireguard"], netns=n.ns)
        else:
            sock = f"/var/run/wireguard/{n.iface}.sock"
            if os.path.exists(sock):  # stale after a SIGKILL (the lab's own interface)
                os.unlink(sock)
            self._spawn(n.name, ["wireguard-go", "-f", n.iface], "wireguard-go",
                        f"{n.name}.wireguard.log", env={"LOG_LEVEL": "error"})
            wait_for(lambda: os.path.exists(sock), 10.0, what=f"{n.iface} UAPI socket")
        self._configure_node(n, lo=False)
        return time.monotonic()

    def warm_up(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """Complete the WireGuard handshake of every neighbour pair, initiated from one
        end only (the lower index), before anything else talks.

        Daemons starting together make both ends initiate at once; the initiations cross
        on the delayed links, each end drops the response to its own, and WireGuard only
        retries after 5 s. Returns the pairs still without a handshake at the deadline.
        """
        pairs = [(a, b) for a in self.nodes for b in self.topology.neighbours(a)
                 if self.nodes[a].index < self.nodes[b].index]
        if not pairs:
            return []
        max_delay = max((lk.delay_ms + lk.jitter_ms for lk in self.links), default=0.0)
        if timeout is None:
            timeout = 3.0 + 4 * max_delay / 1000
        socks: dict[str, tuple[socket.socket, int]] = {}
        try:
            for a in {a for a, _ in pairs}:
                with in_netns(self.ns(a)):
                    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                    socks[a] = (s, socket.if_nametoindex(self.nodes[a].iface))
            deadline = time.monotonic() + timeout
            pending = list(pairs)
            next_kick = 0.0
            while pending and time.monotonic() < deadline:
                if time.monotonic() >= next_kick:  # one packet starts a handshake
                    for a, b in pending:
                        s, ifindex = socks[a]
                        with contextlib.suppress(OSError):
                            s.sendto(b"wgcast-lab warm-up", (self.nodes[b].control, 9, 0, ifindex))
                    next_kick = time.monotonic() + 1.0 + 2 * max_delay / 1000
                time.sleep(0.01)
                done = set()
                for a in {a for a, _ in pending}:
                    for peer, info in self.wg_show(a)["peers"].items():
                        if info["latest_handshake"]:
                            done.add((a, peer))
                pending = [p for p in pending if p not in done]
        finally:
            for s, _ in socks.values():
                s.close()
        if pending:
            log.warning("lab %s: no WireGuard handshake yet between %s", self.id,
                        ", ".join(f"{a}-{b}" for a, b in pending))
        return pending

    def _start_relay(self) -> None:
        if self.link_mode == "netem":
            ports = {(name, lk.id): self._listen_port(name, lk) for lk in self.links
                     for name in (lk.a, lk.b)}
            netem_mod.setup(self.ns(RELAY), self.nodes, self.links, ports)
            return
        r = self.state["relay"]
        cfg = {"links": [], "seed": self.seed, "bind": "0.0.0.0"}
        for lk in self.links:
            a, b = self.nodes[lk.a], self.nodes[lk.b]
            cfg["links"].append({  # type: ignore[attr-defined]
                "id": lk.id, "a": lk.a, "b": lk.b,
                "a_addr": [a.underlay_ip, self._listen_port(lk.a, lk)],
                "b_addr": [b.underlay_ip, self._listen_port(lk.b, lk)],
                "port_a": lk.port_a, "port_b": lk.port_b, "delay_ms": lk.delay_ms,
                "jitter_ms": lk.jitter_ms, "loss": lk.loss,
            })
        with open(r["config"], "w") as f:
            json.dump(cfg, f)
        self._spawn(RELAY, [sys.executable, "-m", "wgcast.lab.relay", "run", "--config",
                            r["config"], "--control", r["control"], "--sched",
                            self.relay_sched], "relay", "relay.log",
                    env={"PYTHONUNBUFFERED": "1"})

        def ready() -> bool:
            try:
                relay_mod.control(r["control"], {"op": "ping"}, timeout=0.5)
                return True
            except (OSError, ConnectionError, TimeoutError, RuntimeError):
                if self.process(RELAY, "relay") is None:
                    raise LabError("relay exited: "
                                   + tail(os.path.join(self.dir, "relay.log"))) from None
                return False

        wait_for(ready, 15.0, what="the relay")

    def _listen_port(self, node: str, link: LinkInfo) -> int:
        """Where ``node``'s WireGuard listens for traffic of ``link`` (the relay sends
        there). One interface per node here; the babeld lab has one per link."""
        return self.nodes[node].listen_port

    def node_config(self, node: str) -> dict[str, Any]:
        """The daemon config dict of a node (before the hook)."""
        cfg = self._node_config(node)
        slow = timeout_scale() / 4
        if slow > 1:
            # An emulated machine (WGCAST_LAB_SLOW): stalls of seconds would make the
            # protocol's 200 ms Hellos and health checks flap. Everything slower alike.
            from wgcast.daemon.config import PROFILES, parse_duration

            # A health check forks a process: its timeout needs the whole factor.
            health = parse_duration(self.health_interval) * timeout_scale()
            cfg["timers"]["hello"] = f"{PROFILES[self.timers][0] * slow:g}s"
            cfg["timers"]["update"] = f"{PROFILES[self.timers][2] * slow:g}s"
            cfg["timers"]["move_hold"] = f"{0.2 * slow:g}s"  # the daemon's defaults x slow
            cfg["timers"]["retract_grace"] = f"{0.5 * slow:g}s"
            for g in cfg.get("groups", []):
                for h in g.get("health", []):
                    h["interval"] = h["timeout"] = f"{health:g}s"
        return cfg

    def _node_config(self, node: str) -> dict[str, Any]:
        n = self.node(node)
        peers = []
        for peer in self.topology.neighbours(node):
            p = self.nodes[peer]
            peers.append({"name": peer, "public_key": p.public_key,
                          "endpoints": [lk.endpoint_of(node)
                                        for lk in self.links_between(node, peer)],
                          # The daemon's default (the AllowedIPs found at start) would be
                          # the control address only: let the peer originate its unicast.
                          "may_originate": [f"{p.unicast}/128"],
                          # Endpoint probes to the relay port of each link: the relay
                          # sends them through that link to the peer's responder.
                          "probe_port": "endpoint"})
        return lab_config.node_config(
            interface=n.iface, addresses=[f"{n.unicast}/128"],
            anycast=[g.prefix for g in self.groups], api_socket=n.api_socket,
            state_file=n.state_file, timers=self.timers, peers=peers, groups=n.serves,
            static=not self.services,
            health=[self.health_check(node)] if self.services else None,
            metrics=LAB_METRICS,  # each namespace has its own loopback
        )

    def unhealthy_flag(self, node: str) -> str:
        """The file whose existence fails ``node``'s health check (services mode)."""
        return os.path.join(self.dir, f"{node}.unhealthy")

    def health_check(self, node: str) -> dict[str, Any]:
        """The exec check of every group of ``node``: passes while no flag file exists."""
        test = shutil.which("test") or "/usr/bin/test"
        return {"type": "exec", "command": [test, "!", "-e", self.unhealthy_flag(node)],
                "interval": self.health_interval, "timeout": self.health_interval,
                "rise": self.health_rise, "fall": self.health_fall}

    def _write_configs(self) -> None:
        for n in self.nodes.values():
            cfg = self.node_config(n.name)
            if self.config_hook is not None:
                self.config_hook(n.name, cfg)
            with open(n.config_path, "w") as f:
                f.write(f"# wgcast lab {self.id}: node {n.name} (generated)\n")
                f.write(lab_config.dumps(cfg))

    # ------------------------------------------------------------------ processes
    def processes(self, node: str | None = None, kind: str | None = None,
                  alive_only: bool = True) -> list[dict[str, Any]]:
        """Recorded processes (pid, kind, node, log, cmd), filtered; ``alive`` added."""
        self._reload()
        out = []
        for p in self.state.get("processes", []):
            if node is not None and p["node"] != node:
                continue
            if kind is not None and p["kind"] != kind:
                continue
            po = self._popens.get(p["pid"])
            if po is not None:
                po.poll()
            a = alive(p["pid"], p["starttime"])
            if alive_only and not a:
                continue
            out.append({**p, "alive": a})
        return out

    def process(self, node: str, kind: str) -> dict[str, Any] | None:
        """The most recent live process of that kind on that node."""
        ps = self.processes(node, kind)
        return ps[-1] if ps else None

    def spawn(self, node: str, cmd: Sequence[str], kind: str = "user",
              log_name: str | None = None) -> int:
        """Run a background command in a node's namespace; killed by ``down()``."""
        pid, _ = self._spawn(node, cmd, kind, log_name or f"{node}.{kind}.log")
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
        exe = os.path.join(os.path.dirname(sys.executable), "wgcast")
        if not os.path.exists(exe):
            exe = shutil.which("wgcast") or exe
        return exe

    def service_command(self, node: str, port: int | None = None) -> list[str]:
        """``wgcast join <the node's groups> -- python -m wgcast.lab.echo ...``"""
        n = self.node(node)
        port = self.echo_port if port is None else port
        return [self.wgcast_exe(), "join", "--socket", n.api_socket, "--wait", "20",
                *n.serves, "--", sys.executable, "-m", "wgcast.lab.echo", "--name", node,
                "--port", str(port), "--rt"]

    def start_services(self, nodes: Sequence[str] | None = None, wait: bool = True,
                       timeout: float | None = None) -> None:
        """Start the instances of ``nodes`` (default: every serving node) as services held
        by ``wgcast join``, then wait until their daemons serve them (default deadline:
        15 s, or ``daemon_ready_timeout`` if longer: a slow guest kernel)."""
        timeout = max(15.0, self.daemon_ready_timeout) if timeout is None else timeout
        names = list(nodes) if nodes is not None else self._serving_nodes()
        for name in names:
            if not self.nodes[name].serves:
                raise LabError(f"{name} serves no anycast group")
            if self.process(name, "service") is not None:
                raise LabError(f"the service of {name} is already running")
            self._spawn(name, self.service_command(name), "service", f"{name}.service.log",
                        env={"PYTHONUNBUFFERED": "1"})
        if wait:
            self.wait_served(names, timeout)

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
        deadline = time.monotonic() + timeout
        pending = set(nodes)
        last: dict[str, Any] = {}
        while pending:
            for name in sorted(pending):
                try:
                    gs = self.groups_of(name)
                except LabError as e:
                    last[name] = str(e)
                    continue
                last[name] = {p: g["state"] for p, g in gs.items()}
                if all(gs.get(p, {}).get("served") == served for p in self.nodes[name].serves):
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(
                    f"{n}: services {[(p['pid'], p['alive']) for p in self.processes(n, 'service', alive_only=False)][-3:]}\n"  # noqa: E501
                    f"{tail(os.path.join(self.dir, n + '.service.log'), 5)}\n"
                    f"daemon: {tail(os.path.join(self.dir, n + '.daemon.log'), 8)}"
                    for n in sorted(pending))
                raise LabError(f"groups not {'served' if served else 'withdrawn'} after "
                               f"{timeout:g}s on {', '.join(sorted(pending))} "
                               f"(states: {last}); service logs:\n{logs}")
            time.sleep(0.02 * timeout_scale())  # as in wait_daemons

    def kill_service(self, node: str, sig: int = signal.SIGKILL, wait: float = 5.0) -> bool:
        """Signal the service of ``node``: its whole process group (``wgcast join`` and the
        echo it runs). SIGKILL = the service crashes."""
        p = self.process(node, "service")
        if p is None:
            return False
        if alive(p["pid"], p["starttime"]):
            self.killed_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p["pid"], sig)
        if wait:
            po = self._popens.get(p["pid"])
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and alive(p["pid"], p["starttime"]):
                if po is not None:
                    po.poll()
                time.sleep(0.005)
            if sig != signal.SIGKILL and alive(p["pid"], p["starttime"]):
                log.warning("lab %s: the service of %s ignored signal %d for %.0fs; "
                            "SIGKILL", self.id, node, sig, wait)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p["pid"], signal.SIGKILL)
                wait_gone([p["pid"]], 2.0)
        return True

    def drain(self, node: str, **params: float) -> list[dict[str, Any]]:
        """Drain every group ``node`` serves (returns once drained); the drain replies."""
        out = []
        for prefix in self.node(node).serves:
            out.append(self.api(node, {"cmd": "drain", "prefix": prefix, **params},
                                timeout=60.0))
        return out

    def start_echo(self, node: str, port: int | None = None) -> int:
        """Start the echo service on ``node`` (UDP [::]:port); returns its pid."""
        port = self.echo_port if port is None else port
        pid, _ = self._spawn(node, [sys.executable, "-m", "wgcast.lab.echo", "--name", node,
                                    "--port", str(port), "--rt"], "echo", f"{node}.echo.log")
        return pid

    def daemon_command(self, node: str) -> list[str]:
        n = self.node(node)
        if self.daemon_cmd:
            return [a.format(config=n.config_path, node=node, lab=self.id)
                    for a in self.daemon_cmd]
        exe = os.path.join(os.path.dirname(sys.executable), "wgcast")
        if not os.path.exists(exe):
            exe = shutil.which("wgcast") or exe
        return [exe, "run", "-c", n.config_path]

    def start_daemons(self, nodes: Sequence[str] | None = None, wait: bool = True) -> None:
        """Start the wgcast daemon on these nodes (all by default), then wait until each
        one's API socket exists (a daemon that exits is an error, with its log tail)."""
        names = list(nodes) if nodes is not None else list(self.nodes)
        for name in names:
            if self.process(name, "daemon") is not None:
                raise LabError(f"the daemon of {name} is already running")
            self._spawn(name, self.daemon_command(name), "daemon", f"{name}.daemon.log",
                        env={"PYTHONUNBUFFERED": "1"})
            self._mutate(functools.partial(_discard, "daemons", name))
        if wait:
            self.wait_daemons(names, self.daemon_ready_timeout)

    def start_daemon(self, node: str, wait: bool = True) -> None:
        self.start_daemons([node], wait)

    def wait_daemons(self, nodes: Sequence[str] | None = None, timeout: float = 10.0) -> None:
        names = list(nodes) if nodes is not None else list(self.nodes)
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                if self.process(name, "daemon") is None:
                    raise LabError(f"the daemon of {name} exited; log "
                                   f"{self.dir}/{name}.daemon.log:\n"
                                   f"{tail(os.path.join(self.dir, name + '.daemon.log'))}")
                if os.path.exists(self.nodes[name].api_socket):
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() >= deadline:
                log.warning("lab %s: daemons still without an API socket after %.1fs: %s",
                            self.id, timeout, ", ".join(sorted(pending)))
                return
            # Each poll reads the state file and /proc: in a slow guest, polling at the
            # host's pace took CPU from the daemons it waits for.
            time.sleep(0.05 * timeout_scale())

    def stop_daemon(self, node: str, sig: int = signal.SIGTERM, wait: float = 5.0) -> bool:
        """Signal the daemon of ``node`` (SIGTERM: clean stop; SIGKILL: crash)."""
        p = self.process(node, "daemon")
        if p is None:
            return False
        signal_pid(p["pid"], sig, p["starttime"])
        if wait:
            po = self._popens.get(p["pid"])
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and alive(p["pid"], p["starttime"]):
                if po is not None:
                    po.poll()
                time.sleep(0.01)
        return True

    # ------------------------------------------------------------------ faults
    def relay_control(self, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        try:
            return relay_mod.control(self.state["relay"]["control"], request, timeout)
        except (OSError, ConnectionError, TimeoutError) as e:
            raise LabError(f"relay not reachable: {e}") from None
        except RuntimeError as e:
            raise LabError(str(e)) from None

    def _link_ids(self, a: str, b: str | None, link_id: int | None) -> list[int]:
        if link_id is not None:
            if not any(lk.id == link_id for lk in self.links):
                raise LabError(f"no link with id {link_id}")
            return [link_id]
        if b is None:
            raise LabError("a link is named by its two ends (peer) or its id")
        ids = [lk.id for lk in self.links_between(a, b)]
        if not ids:
            raise LabError(f"no link between {a} and {b}")
        return ids

    def set_link(self, a: str, b: str | None = None, *, link_id: int | None = None,
                 delay_ms: float | None = None, jitter_ms: float | None = None,
                 loss: float | None = None, up: bool | None = None,
                 direction: str = "both") -> list[int]:
        """Change links between a and b (or one by id) at run time, both directions by
        default (direction 'ab'/'ba' = from the link's a / b end). Returns the link ids."""
        ids = self._link_ids(a, b, link_id)
        if self.link_mode == "netem":
            self._set_netem_links(ids, direction, delay_ms, jitter_ms, loss, up)
        else:
            self.relay_control({"op": "set", "links": ids, "dir": direction,
                                "delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss": loss,
                                "up": up})
        if up is not None:
            def upd(st: dict[str, Any]) -> None:
                cut = set(st["failures"]["links"])
                cut = cut - set(ids) if up else cut | set(ids)
                st["failures"]["links"] = sorted(cut)
            self._mutate(upd)
        return ids

    def _set_netem_links(self, ids: list[int], direction: str, delay_ms: float | None,
                         jitter_ms: float | None, loss: float | None, up: bool | None) -> None:
        if direction not in ("both", "ab", "ba"):
            raise LabError(f"direction must be 'both', 'ab' or 'ba', got {direction!r}")
        dirs = ("ab", "ba") if direction == "both" else (direction,)
        current = self.state.get("netem", {})
        changed: dict[str, list[float]] = {}
        for lk in (lk for lk in self.links if lk.id in ids):
            for d in dirs:
                if delay_ms is None and jitter_ms is None and loss is None:
                    break
                was = current.get(f"{lk.id}{d}", [lk.delay_ms, lk.jitter_ms, lk.loss])
                now = [was[0] if delay_ms is None else delay_ms,
                       was[1] if jitter_ms is None else jitter_ms,
                       was[2] if loss is None else loss]
                netem_mod.set_direction(self.ns(RELAY), self.nodes, lk, d, delay_ms=now[0],
                                        jitter_ms=now[1], loss=now[2])
                changed[f"{lk.id}{d}"] = now
        if changed:
            self._mutate(lambda st: st.setdefault("netem", {}).update(changed))
        if up is not None:
            netem_mod.cut(self.ns(RELAY), [netem_mod.mark(i, d) for i in ids for d in dirs],
                          up)

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
        """
        self.node(node)
        if how in ("service", "health", "drain") and not self.services:
            raise LabError(f"--how {how} needs a lab whose instances are services")
        if how == "service":
            if not self.kill_service(node, signal.SIGKILL):
                raise LabError(f"no service running on {node}")
            self._mutate(functools.partial(_add, "services", node))
            return {"killed_at": self.killed_at}
        elif how == "health":
            with open(self.unhealthy_flag(node), "w") as f:
                f.write("failed by the lab\n")
            self._mutate(functools.partial(_add, "health", node))
        elif how == "drain":
            replies = self.drain(node)
            self.kill_service(node, signal.SIGTERM)
            self._mutate(functools.partial(_add, "drains", node))
            return replies
        elif how == "daemon":
            if not self.stop_daemon(node, sig):
                raise LabError(f"no daemon running on {node}")
            self._mutate(functools.partial(_add, "daemons", node))
        elif how == "node":
            run(["ip", "-n", self.ns(node), "link", "set", "ul", "down"])
            self._mutate(functools.partial(_add, "nodes", node))
        elif how == "link":
            self.set_link(node, peer, link_id=link_id, up=False)
        else:
            raise LabError(f"how must be one of {', '.join(HOWS)}, got {how!r}")

    def restore(self, node: str, how: str = "daemon", peer: str | None = None, *,
                link_id: int | None = None, wait: bool = True) -> None:
        """Undo ``fail``: restart the daemon or the service, bring the veth up, restore the
        link(s) or the health check."""
        self.node(node)
        if how in ("service", "drain"):
            if self.process(node, "service") is None:
                self.start_services([node], wait=wait)
            self._mutate(functools.partial(_discard, "services" if how == "service"
                                           else "drains", node))
        elif how == "health":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unhealthy_flag(node))
            if wait:
                self.wait_served([node])
            self._mutate(functools.partial(_discard, "health", node))
        elif how == "daemon":
            if self.process(node, "daemon") is None:
                self.start_daemon(node, wait=wait)
            self._mutate(functools.partial(_discard, "daemons", node))
        elif how == "node":
            run(["ip", "-n", self.ns(node), "link", "set", "ul", "up"])
            self._mutate(functools.partial(_discard, "nodes", node))
        elif how == "link":
            self.set_link(node, peer, link_id=link_id, up=True)
        else:
            raise LabError(f"how must be one of {', '.join(HOWS)}, got {how!r}")

    # ------------------------------------------------------------------ probing
    def start_prober(self, node: str, addr: str | None = None, port: int | None = None,
                     duration: float = 5.0, interval_ms: float = 1.0,
                     timeout_ms: float = 1000.0, source: str | None = None,
                     linger: float | None = None, realtime: bool = True) -> ProberRun:
        """Start a prober in ``node``'s namespace (one query per ``interval_ms`` to
        addr:port, default: anycast group 0, echo port). ``.wait()`` returns its result
        (see wgcast.lab.prober). ``realtime``: SCHED_FIFO for precise pacing."""
        addr = addr or self.anycast(0)
        port = self.echo_port if port is None else port
        linger = min(timeout_ms / 1000, 2.0) if linger is None else linger
        tag = f"{node}.prober.{time.time_ns()}"
        out = os.path.join(self.dir, tag + ".json")
        cmd = [sys.executable, "-m", "wgcast.lab.prober", "--addr", addr, "--port", str(port),
               "--duration", str(duration), "--interval-ms", str(interval_ms),
               "--timeout-ms", str(timeout_ms), "--linger", str(linger), "--out", out]
        if source:
            cmd += ["--source", source]
        if realtime:
            cmd.append("--rt")
        pid, st = self._spawn(node, cmd, "prober", tag + ".log")
        return ProberRun(self, node, pid, st, self._popens.get(pid), out,
                         os.path.join(self.dir, tag + ".log"), duration, linger)

    def run_prober(self, node: str, addr: str | None = None, port: int | None = None,
                   duration: float = 5.0, **kw: Any) -> dict[str, Any]:
        """start_prober(...).wait()"""
        return self.start_prober(node, addr, port, duration, **kw).wait()

    def query_many(self, nodes: Sequence[str], addr: str, port: int | None = None,
                   timeout: float = 1.0, tries: int = 3,
                   payload: bytes = b"q") -> dict[str, tuple[str, float] | None]:
        """From each node, ask the echo service at addr:port who answers.

        Runs in this process (sockets created inside each namespace): returns
        {node: (answering node, rtt ms) or None}. ``tries`` queries per node, spread
        over ``timeout``; the first answer counts.
        """
        port = self.echo_port if port is None else port
        socks: dict[socket.socket, str] = {}
        result: dict[str, tuple[str, float] | None] = {n: None for n in nodes}
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            for n in nodes:
                with in_netns(self.ns(n)):
                    s = socket.socket(fam, socket.SOCK_DGRAM)
                s.setblocking(False)
                socks[s] = n
            sent_at: dict[str, float] = {}
            deadline = time.monotonic() + timeout
            next_try = 0.0
            k = 0
            while time.monotonic() < deadline and any(v is None for v in result.values()):
                now = time.monotonic()
                if k < tries and now >= next_try:
                    for s, n in socks.items():
                        if result[n] is None:
                            with contextlib.suppress(OSError):
                                s.sendto(payload, (addr, port))
                                sent_at.setdefault(n, now)
                                sent_at[n + "#last"] = now
                    k += 1
                    next_try = now + timeout / max(tries, 1)
                wait = max(0.0, min(deadline, next_try if k < tries else deadline) - now)
                r, _, _ = select.select(list(socks), [], [], wait)
                for s in r:
                    n = socks[s]
                    for _ in range(16):
                        try:
                            data = s.recv(65535)
                        except OSError:
                            break
                        try:
                            name, _ = parse_reply(data)
                        except ValueError:
                            continue
                        if result[n] is None:
                            t = time.monotonic() - sent_at.get(n + "#last", now)
                            result[n] = (name, round(t * 1000, 3))
        finally:
            for s in socks:
                s.close()
        return result

    def query(self, node: str, addr: str, port: int | None = None,
              timeout: float = 1.0) -> tuple[str, float] | None:
        """(answering node, rtt ms) of one echo query from ``node``, None if no answer."""
        return self.query_many([node], addr, port, timeout)[node]

    def catchment(self, addr: str | None = None, port: int | None = None,
                  nodes: Sequence[str] | None = None,
                  timeout: float = 1.0) -> dict[str, str | None]:
        """{node: instance answering its queries to the anycast address (None: none)}."""
        addr = addr or self.anycast(0)
        res = self.query_many(list(nodes) if nodes is not None else list(self.nodes),
                              addr, port, timeout)
        return {n: (v[0] if v else None) for n, v in res.items()}

    def catchments(self, addr: str | None = None, **kw: Any) -> dict[str | None, list[str]]:
        """{instance: [nodes it catches]} (key None: nodes without an answer)."""
        out: dict[str | None, list[str]] = {}
        for n, inst in self.catchment(addr, **kw).items():
            out.setdefault(inst, []).append(n)
        return out

    # ------------------------------------------------------------------ inspection
    def wg_show(self, node: str) -> dict[str, Any]:
        """WireGuard state of a node, read through the UAPI socket:
        {interface, listen_port, peers: {peer name: {public_key, endpoint, allowed_ips,
        latest_handshake, rx, tx}}}."""
        n = self.node(node)
        st = wg_dump(n.ns, n.iface) if self.wireguard == "kernel" else uapi_get(n.iface)
        by_key = {v.public_key: k for k, v in self.nodes.items()}
        return {"interface": n.iface, "listen_port": st["listen_port"],
                "peers": {by_key.get(k, k): v for k, v in st["peers"].items()}}

    def status(self) -> dict[str, Any]:
        """Everything about the lab, with liveness of namespaces and processes."""
        self._reload()
        procs = self.processes(alive_only=False)
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
            relay["netem"] = self.state.get("netem", {})
        elif relay["alive"]:
            with contextlib.suppress(LabError):
                relay["stats"] = self.relay_control({"op": "stats"})
                relay["links"] = self.relay_control({"op": "get"})["links"]
        return {"id": self.id, "dir": self.dir, "status": self.state.get("status"),
                "created": self.state.get("created"), "topology": self.topology.spec,
                "timers": self.timers, "wireguard": self.wireguard, "links_mode": self.link_mode,
                "groups": [asdict(g) for g in self.groups],
                "failures": self.state.get("failures"), "nodes": nodes, "relay": relay,
                "links": [asdict(lk) for lk in self.links]}

    # ------------------------------------------------------------------ down
    def down(self) -> dict[str, Any]:
        """Kill every process of the lab, delete its namespaces, UAPI sockets and state
        directory. Idempotent; works on a half-built lab."""
        if not self.id:
            return {}
        with _signals_blocked():
            res = teardown(self.id, self.base, popens=self._popens)
        self._is_up = False
        return res


def _discard(kind: str, item: str, st: dict[str, Any]) -> None:
    """Remove ``item`` from the failures of ``kind`` in a state dict."""
    lst = st["failures"].setdefault(kind, [])
    if item in lst:
        lst.remove(item)


def _add(kind: str, item: str, st: dict[str, Any]) -> None:
    lst = st["failures"].setdefault(kind, [])
    if item not in lst:
        lst.append(item)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP during teardown (delivered right after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def teardown(labid: str, base: str | None = None,
             popens: dict[int, subprocess.Popen[bytes]] | None = None) -> dict[str, Any]:
    """Remove every trace of lab ``labid``: processes, namespaces, UAPI sockets, state.

    Finds processes both from the state file and by scanning for processes living in the
    lab's namespaces, so it also works when the state is gone. Idempotent.
    """
    d = os.path.join(base_dir(base), labid)
    recorded: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError), open(os.path.join(d, STATE_FILE)) as f:
        recorded = json.load(f).get("processes", [])
    namespaces = [n for n in list_netns() if n.startswith(f"{NS_PREFIX}{labid}-")]
    pids = {p["pid"] for p in recorded if alive(p["pid"], p.get("starttime"))}
    pids |= set(pids_in_netns(namespaces))
    pids.discard(os.getpid())
    # Daemons first (they may clean up through WireGuard), then the rest.
    daemons = [p["pid"] for p in recorded if p["kind"] == "daemon" and p["pid"] in pids]
    survivors = terminate(daemons, 3.0) if daemons else []
    survivors += terminate(sorted(pids - set(daemons)), 3.0)
    for po in (popens or {}).values():
        with contextlib.suppress(Exception):
            po.poll()
    deleted = []
    for ns in namespaces:
        cp = run(["ip", "netns", "del", ns], check=False, timeout=10)
        if cp.returncode == 0 or not netns_exists(ns):
            deleted.append(ns)
    socks = remove_wg_sockets(f"wg{labid}")
    shutil.rmtree(d, ignore_errors=True)
    return {"id": labid, "killed": len(pids), "survivors": survivors, "namespaces": deleted,
            "sockets_removed": socks}


def teardown_all(base: str | None = None) -> list[dict[str, Any]]:
    return [teardown(x["id"], base) for x in Lab.list_labs(base)]
