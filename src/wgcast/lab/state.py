"""The lab's state: typed records, their JSON form in ``<lab dir>/lab.json``, and the
file lock under which processes driving the same lab change it.

The JSON form is the one labs have always written (a lab brought up by an older wgcast
can still be attached): `to_json`/`from_json` of each record map it field by field.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from wgcast.lab.naming import NS_PREFIX, STATE_FILE, base_dir
from wgcast.lab.system import LabError, list_netns
from wgcast.topology import Topology


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NodeInfo:
        return cls(**d)


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinkInfo:
        return cls(**d)


@dataclass
class GroupInfo:
    prefix: str  # "fd5a:...:ffff::53/128"
    address: str  # "fd5a:...:ffff::53"
    members: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GroupInfo:
        return cls(**d)


#: LabOptions fields and their defaults when a state file lacks them (older labs).
_OPTION_DEFAULTS: dict[str, Any] = {
    "daemon_cmd": None, "preassign_anycast": None, "services": False,
    "health_interval": "200ms", "health_fall": 2, "health_rise": 2, "relay_sched": "rt",
    "wireguard": "go", "links": "relay",
}


@dataclass(frozen=True, slots=True)
class LabOptions:
    """What `Lab.attach` needs to rebuild the Lab object of a lab that is up."""

    seed: int
    timers: str
    daemons: bool
    echo: str
    echo_port: int
    daemon_cmd: list[str] | None
    preassign_anycast: bool | None
    services: bool
    health_interval: str
    health_fall: int
    health_rise: int
    relay_sched: str
    wireguard: str
    links: str
    #: The router's name ("wgcast": wgcast daemons) and its own options (babeld_hello...).
    router: str = "wgcast"
    router_options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "seed": self.seed, "timers": self.timers, "daemons": self.daemons,
            "echo": self.echo, "echo_port": self.echo_port, "daemon_cmd": self.daemon_cmd,
            "preassign_anycast": self.preassign_anycast, "services": self.services,
            "health_interval": self.health_interval, "health_fall": self.health_fall,
            "health_rise": self.health_rise, "relay_sched": self.relay_sched,
            "wireguard": self.wireguard, "links": self.links}
        if self.router != "wgcast":
            d["router"] = self.router
        d.update(self.router_options)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabOptions:
        known = {**_OPTION_DEFAULTS, **{k: d[k] for k in d if k in _FIELDS}}
        extra = {k: v for k, v in d.items() if k not in _FIELDS and k != "router"}
        return cls(seed=known["seed"], timers=known["timers"], daemons=known["daemons"],
                   echo=known["echo"], echo_port=known["echo_port"],
                   daemon_cmd=known["daemon_cmd"],
                   preassign_anycast=known["preassign_anycast"],
                   services=known["services"], health_interval=known["health_interval"],
                   health_fall=known["health_fall"], health_rise=known["health_rise"],
                   relay_sched=known["relay_sched"], wireguard=known["wireguard"],
                   links=known["links"], router=d.get("router", "wgcast"),
                   router_options=extra)


_FIELDS = {"seed", "timers", "daemons", "echo", "echo_port", "daemon_cmd",
           "preassign_anycast", "services", "health_interval", "health_fall", "health_rise",
           "relay_sched", "wireguard", "links"}


@dataclass(frozen=True, slots=True)
class RelayInfo:
    """The relay's namespace, control socket and config file (relay link mode)."""

    ns: str
    control: str
    config: str

    def to_json(self) -> dict[str, Any]:
        return {"ns": self.ns, "control": self.control, "config": self.config}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RelayInfo:
        return cls(ns=d["ns"], control=d["control"], config=d["config"])


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A process the lab started: found again (and killed) from any process by pid and
    start time (a recycled pid does not match)."""

    pid: int
    starttime: int | None
    kind: str  # "wireguard-go", "relay", "daemon", "service", "echo", "prober", "user"
    node: str  # a node name or "relay"
    log: str
    cmd: list[str]
    started: float  # time.time()

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "starttime": self.starttime, "kind": self.kind,
                "node": self.node, "log": self.log, "cmd": list(self.cmd),
                "started": self.started}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProcessRecord:
        return cls(pid=int(d["pid"]), starttime=d.get("starttime"), kind=d["kind"],
                   node=d["node"], log=d.get("log", ""), cmd=list(d.get("cmd", [])),
                   started=float(d.get("started", 0.0)))


#: The kinds of failure a lab records; the last three appear once such a fault was made.
FAILURE_KINDS = ("links", "nodes", "daemons", "services", "health", "drains")


@dataclass
class Failures:
    """What is failed right now (`Lab.fail` adds, `Lab.restore` removes)."""

    links: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    daemons: list[str] = field(default_factory=list)
    services: list[str] | None = None
    health: list[str] | None = None
    drains: list[str] | None = None

    def _list(self, kind: str) -> list[str]:
        if kind not in FAILURE_KINDS or kind == "links":
            raise LabError(f"no failure kind {kind!r}")
        lst: list[str] | None = getattr(self, kind)
        if lst is None:
            lst = []
            setattr(self, kind, lst)
        return lst

    def add(self, kind: str, item: str) -> None:
        lst = self._list(kind)
        if item not in lst:
            lst.append(item)

    def discard(self, kind: str, item: str) -> None:
        lst = self._list(kind)
        if item in lst:
            lst.remove(item)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"links": list(self.links), "nodes": list(self.nodes),
                             "daemons": list(self.daemons)}
        for kind in ("services", "health", "drains"):
            if getattr(self, kind) is not None:
                d[kind] = list(getattr(self, kind))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Failures:
        return cls(links=[int(x) for x in d.get("links", [])], nodes=list(d.get("nodes", [])),
                   daemons=list(d.get("daemons", [])), services=d.get("services"),
                   health=d.get("health"), drains=d.get("drains"))


@dataclass
class LabState:
    """Everything about a lab that is up, shared through ``lab.json`` by every process
    that drives it (`Lab.attach`)."""

    id: str
    dir: str
    created: float
    status: str  # "starting", "up"
    pid: int  # the process that brought it up
    options: LabOptions
    topology: Topology
    relay: RelayInfo
    nodes: dict[str, NodeInfo]
    links: list[LinkInfo]
    groups: list[GroupInfo]
    processes: list[ProcessRecord] = field(default_factory=list)
    failures: Failures = field(default_factory=Failures)
    #: netem link mode: "<link id><ab|ba>" -> [delay ms, jitter ms, loss] once changed.
    netem: dict[str, list[float]] | None = None
    #: The router's own section (under the key of its name), None for wgcast.
    router_state: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "dir": self.dir, "created": self.created, "status": self.status,
            "pid": self.pid, "options": self.options.to_json(),
            "topology": self.topology.to_dict(), "relay": self.relay.to_json(),
            "nodes": {n: v.to_json() for n, v in self.nodes.items()},
            "links": [lk.to_json() for lk in self.links],
            "groups": [g.to_json() for g in self.groups],
            "processes": [p.to_json() for p in self.processes],
            "failures": self.failures.to_json()}
        if self.netem is not None:
            d["netem"] = self.netem
        if self.router_state is not None:
            d[self.options.router] = self.router_state
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabState:
        options = LabOptions.from_json(d["options"])
        return cls(
            id=d["id"], dir=d["dir"], created=float(d.get("created", 0.0)),
            status=d.get("status", "?"), pid=int(d.get("pid", 0)), options=options,
            topology=Topology.from_dict(d["topology"]), relay=RelayInfo.from_json(d["relay"]),
            nodes={n: NodeInfo.from_json(v) for n, v in d["nodes"].items()},
            links=[LinkInfo.from_json(x) for x in d["links"]],
            groups=[GroupInfo.from_json(x) for x in d["groups"]],
            processes=[ProcessRecord.from_json(p) for p in d.get("processes", [])],
            failures=Failures.from_json(d.get("failures", {})), netem=d.get("netem"),
            router_state=d.get(options.router) if options.router != "wgcast" else None)


# ---------------------------------------------------------------------- the file
def state_path(lab_dir: str) -> str:
    return os.path.join(lab_dir, STATE_FILE)


@contextlib.contextmanager
def locked(lab_dir: str) -> Iterator[None]:
    """The lab lock: held while a process reads, changes and writes the state."""
    with open(os.path.join(lab_dir, "lock"), "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def write_state(lab_dir: str, state: LabState) -> None:
    """Write atomically (a reader sees the old file or the new one)."""
    path = state_path(lab_dir)
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state.to_json(), f, indent=1)
    os.replace(tmp, path)


def read_json(lab_dir: str) -> dict[str, Any]:
    """The raw state (raises OSError or ValueError)."""
    with open(state_path(lab_dir)) as f:
        d: dict[str, Any] = json.load(f)
    return d


def read_state(lab_dir: str) -> LabState:
    """The state (raises OSError, ValueError, or KeyError/TypeError for a broken file)."""
    return LabState.from_json(read_json(lab_dir))


def recorded_processes(lab_dir: str) -> list[ProcessRecord]:
    """The processes recorded in a lab's state; [] when it is missing or unreadable
    (teardown works without it)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return [ProcessRecord.from_json(p) for p in read_json(lab_dir).get("processes", [])]
    return []


# ---------------------------------------------------------------------- discovery
def list_labs(base: str | None = None) -> list[dict[str, Any]]:
    """Labs known on this machine, oldest first: {id, dir, created, status, nodes}.

    A lab whose state is gone but whose namespaces remain shows with status "orphan".
    """
    b = base_dir(base)
    out: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError):
        for labid in os.listdir(b):
            d = os.path.join(b, labid)
            try:
                st = read_json(d)
                out[labid] = {"id": labid, "dir": d, "created": st.get("created", 0.0),
                              "status": st.get("status", "?"),
                              "nodes": len(st.get("nodes", {}))}
            except (OSError, ValueError):
                if os.path.isdir(d):
                    out[labid] = {"id": labid, "dir": d, "created": os.path.getmtime(d),
                                  "status": "broken", "nodes": 0}
    for ns in list_netns():
        if ns.startswith(NS_PREFIX):
            labid = ns[len(NS_PREFIX):].partition("-")[0]
            if labid not in out:
                out[labid] = {"id": labid, "dir": None, "created": 0.0, "status": "orphan",
                              "nodes": 0}
    return sorted(out.values(), key=lambda x: x["created"])


def resolve_id(labid: str | None = None, base: str | None = None) -> str:
    """The given id, or the only / most recent lab's id."""
    labs = list_labs(base)
    if labid:
        if not any(x["id"] == labid for x in labs):
            known = ", ".join(x["id"] for x in labs) or "none"
            raise LabError(f"no lab {labid!r} (labs: {known})")
        return labid
    if not labs:
        raise LabError("no lab is running")
    return str(labs[-1]["id"])


# ---------------------------------------------------------------------- changes
def failure_added(kind: str, item: str) -> Callable[[LabState], None]:
    """A change (for `Lab.mutate`) recording ``item`` as failed in ``kind``."""
    return lambda st: st.failures.add(kind, item)


def failure_removed(kind: str, item: str) -> Callable[[LabState], None]:
    """A change (for `Lab.mutate`) removing ``item`` from the failures of ``kind``."""
    return lambda st: st.failures.discard(kind, item)
