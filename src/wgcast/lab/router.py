"""The router a lab runs on its nodes, as a strategy the `Lab` is given.

A router decides what differs between a wgcast mesh and, say, a babeld mesh on the same
namespaces, links and services: the WireGuard interfaces and their peers, the daemon's
config and command, when a daemon is ready, and the faults it handles its own way. The
lab (lab/core.py) does the rest. `WgcastRouter` is the default; `BabeldRouter`
(lab/babeld.py) is babeld as its users run it.

A router object serves one lab: `Lab.__init__` binds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wgcast.lab import build, processes
from wgcast.lab import config as lab_config
from wgcast.lab.handle import LabHandle
from wgcast.lab.naming import LAB_METRICS
from wgcast.lab.state import LinkInfo
from wgcast.lab.system import LabError, timeout_scale, uapi_get, wg_dump

#: Called with (node, config dict) before a node's daemon config is written.
ConfigHook = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class RouterNeeds:
    """Lab options a router fixes whatever the caller asked (None: the lab's choice)."""

    services: bool | None = None
    wireguard: str | None = None
    links: str | None = None


class Router(Protocol):
    """What a lab asks of its router (see the module docstring)."""

    #: Recorded in the state (options.router) so that `Lab.attach` rebuilds the router.
    name: str
    needs: RouterNeeds

    def bind(self, lab: LabHandle) -> None: ...

    def options_json(self) -> dict[str, Any]:
        """The router's options, recorded among the lab's."""
        ...

    def plan(self) -> None:
        """After the lab's plan: the router's own names (it may change the nodes')."""
        ...

    def state_json(self) -> dict[str, Any] | None:
        """The router's own section of the state (None: none)."""
        ...

    def listen_port(self, node: str, link: LinkInfo) -> int:
        """Where ``node``'s WireGuard listens for traffic of ``link``."""
        ...

    def start_wireguard(self) -> None: ...

    def configure_wireguard(self) -> None: ...

    def warm_up(self, timeout: float | None = None) -> list[tuple[str, str]]: ...

    def wg_show(self, node: str) -> dict[str, Any]: ...

    def node_config(self, node: str) -> dict[str, Any]: ...

    def write_configs(self, hook: ConfigHook | None) -> None: ...

    def daemon_command(self, node: str) -> list[str]: ...

    def start_daemons(self, nodes: Sequence[str], wait: bool) -> None: ...

    def wait_daemons(self, nodes: Sequence[str], timeout: float) -> None: ...

    def fail(self, node: str, how: str) -> bool:
        """Inject fault ``how`` the router's own way; False: the lab's way."""
        ...

    def restore(self, node: str, how: str) -> bool:
        """Undo fault ``how`` the router's own way; False: the lab's way."""
        ...


class BoundRouter:
    """The binding every router shares: the lab it serves."""

    _lab: LabHandle | None = None

    def bind(self, lab: LabHandle) -> None:
        if self._lab is not None and self._lab is not lab:
            raise LabError("a router object serves one lab (give each Lab its own)")
        self._lab = lab

    @property
    def lab(self) -> LabHandle:
        if self._lab is None:
            raise LabError("the router is not given to a Lab")
        return self._lab


class WgcastRouter(BoundRouter):
    """wgcast daemons: one WireGuard interface per node with every neighbour as a peer,
    AllowedIPs driven by the daemon (lab/build.py builds it)."""

    name = "wgcast"
    needs = RouterNeeds()

    def options_json(self) -> dict[str, Any]:
        return {}

    def plan(self) -> None:
        pass

    def state_json(self) -> dict[str, Any] | None:
        return None

    def listen_port(self, node: str, link: LinkInfo) -> int:
        """One interface per node here: its one listen port for every link."""
        return self.lab.nodes[node].listen_port

    def start_wireguard(self) -> None:
        build.start_wireguard(self.lab)

    def configure_wireguard(self) -> None:
        build.configure_wireguard(self.lab)

    def warm_up(self, timeout: float | None = None) -> list[tuple[str, str]]:
        return build.warm_up(self.lab, timeout)

    def wg_show(self, node: str) -> dict[str, Any]:
        """WireGuard state of a node, read through the UAPI socket (netlink for kernel
        WireGuard)."""
        lab = self.lab
        n = lab.node(node)
        st = wg_dump(n.ns, n.iface) if lab.wireguard == "kernel" else uapi_get(n.iface)
        by_key = {v.public_key: k for k, v in lab.nodes.items()}
        return {"interface": n.iface, "listen_port": st["listen_port"],
                "peers": {by_key.get(k, k): v for k, v in st["peers"].items()}}

    def node_config(self, node: str) -> dict[str, Any]:
        """The daemon config dict of a node (before the hook)."""
        lab = self.lab
        cfg = self._node_config(node)
        slow = timeout_scale() / 4
        if slow > 1:
            # An emulated machine (WGCAST_LAB_SLOW): stalls of seconds would make the
            # protocol's 200 ms Hellos and health checks flap. Everything slower alike.
            from wgcast.daemon.config import PROFILES, parse_duration

            # A health check forks a process: its timeout needs the whole factor.
            health = parse_duration(lab.health_interval) * timeout_scale()
            cfg["timers"]["hello"] = f"{PROFILES[lab.timers][0] * slow:g}s"
            cfg["timers"]["update"] = f"{PROFILES[lab.timers][2] * slow:g}s"
            cfg["timers"]["move_hold"] = f"{0.2 * slow:g}s"  # the daemon's defaults x slow
            cfg["timers"]["retract_grace"] = f"{0.5 * slow:g}s"
            for g in cfg.get("groups", []):
                for h in g.get("health", []):
                    h["interval"] = h["timeout"] = f"{health:g}s"
        return cfg

    def _node_config(self, node: str) -> dict[str, Any]:
        lab = self.lab
        n = lab.node(node)
        peers = []
        for peer in lab.topology.neighbours(node):
            p = lab.nodes[peer]
            peers.append({"name": peer, "public_key": p.public_key,
                          "endpoints": [lk.endpoint_of(node)
                                        for lk in lab.links_between(node, peer)],
                          # The daemon's default (the AllowedIPs found at start) would be
                          # the control address only: let the peer originate its unicast.
                          "may_originate": [f"{p.unicast}/128"],
                          # Endpoint probes to the relay port of each link: the relay
                          # sends them through that link to the peer's responder.
                          "probe_port": "endpoint"})
        return lab_config.node_config(
            interface=n.iface, addresses=[f"{n.unicast}/128"],
            anycast=[g.prefix for g in lab.groups], api_socket=n.api_socket,
            state_file=n.state_file, timers=lab.timers, peers=peers, groups=n.serves,
            static=not lab.services,
            health=[lab.health_check(node)] if lab.services else None,
            metrics=LAB_METRICS,  # each namespace has its own loopback
        )

    def write_configs(self, hook: ConfigHook | None) -> None:
        lab = self.lab
        for n in lab.nodes.values():
            cfg = self.node_config(n.name)
            if hook is not None:
                hook(n.name, cfg)
            with open(n.config_path, "w") as f:
                f.write(f"# wgcast lab {lab.id}: node {n.name} (generated)\n")
                f.write(lab_config.dumps(cfg))

    def daemon_command(self, node: str) -> list[str]:
        lab = self.lab
        n = lab.node(node)
        if lab.daemon_cmd:
            return [a.format(config=n.config_path, node=node, lab=lab.id)
                    for a in lab.daemon_cmd]
        return [processes.wgcast_exe(), "run", "-c", n.config_path]

    def start_daemons(self, nodes: Sequence[str], wait: bool) -> None:
        processes.start_daemons(self.lab, nodes, wait)

    def wait_daemons(self, nodes: Sequence[str], timeout: float) -> None:
        processes.wait_api_sockets(self.lab, nodes, timeout)

    def fail(self, node: str, how: str) -> bool:
        return False

    def restore(self, node: str, how: str) -> bool:
        return False


