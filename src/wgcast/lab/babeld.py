"""The same lab with babeld as the router: the mesh a babeld user builds today.

babeld (Debian's ``/usr/sbin/babeld``) cannot drive WireGuard's AllowedIPs, so its users
build a WireGuard mesh the way babeld needs it: **one WireGuard interface per peer**, each
with a link-local address and that single peer at ``AllowedIPs = ::/0, 0.0.0.0/0``, so
that WireGuard accepts and sends anything (Babel's multicast hellos included) and the
kernel routing table, which babeld fills, picks the interface. Anycast is a local address
on ``lo`` that babeld redistributes from the serving nodes.

:class:`BabeldRouter` is the router strategy a :class:`~wgcast.lab.core.Lab` is given
(same namespaces, same relay with the same per-link delay/jitter/loss, same echo
services, probers, ``fail``/``restore``, ``catchment``): it differs only in what runs on
each node::

    namespace wgl-XXXX-n<i>   veth "ul" (underlay, as in the wgcast lab)
                              per link L to a peer: wireguard-go interface wgXXXXl<L>a
                              (or ...b at the link's b end), fe80::<i>/64, listen port
                              20000 + 2L (+1 at the b end), one peer, AllowedIPs ::/0 and
                              0.0.0.0/0, endpoint = the relay's port of that link
                              lo: fd5a:XXXX:<i>::1/128 (the node's own address) and, on
                              serving nodes, the anycast address (preferred_lft 0)
                              babeld -c n<i>.babeld.conf on all those interfaces

babeld announces exactly the node's unicast /128 and the anycast /128 (when the address
is on ``lo``) and installs kernel routes ``via fe80::<peer> dev wgXXXXl<L>a``.

Failures (``fail(node, how)``), side by side with the wgcast lab:

* ``node``: the node's underlay goes down (same as the wgcast lab);
* ``daemon``: babeld is signalled (SIGTERM: it retracts its routes; SIGKILL: it does not);
* ``service``: the service dies. babeld does not know about services: it keeps
  announcing the address as long as it is on ``lo``. A babeld user removes it with a
  health script; the lab models the best such script, one that reacts at once: the echo
  service is killed (SIGKILL) and the anycast address leaves ``lo`` at the same instant;
* ``drain``: the anycast address leaves ``lo`` (babeld sees the address go through
  netlink and retracts the route); the echo service keeps running.

``restore`` undoes each of them (the address comes back, the service is restarted).

Use::

    with Lab("line:5", instances="n1,n5", delay="2-20ms",
             router=BabeldRouter(hello=0.05)) as lab:
        run = lab.start_prober("n3")
        lab.fail("n5", "drain")
        print(run.wait()["outage_ms"])

babeld's own tables: ``lab.router.dump(node)``, ``lab.router.routes(node)``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from wgcast.lab import processes
from wgcast.lab.naming import WG_PORT_BASE
from wgcast.lab.router import BoundRouter, ConfigHook, RouterNeeds
from wgcast.lab.state import LinkInfo, failure_added, failure_removed
from wgcast.lab.system import (
    LabError,
    in_netns,
    ip_batch,
    run,
    signal_pid,
    tail,
    uapi_get,
    wait_for,
)

log = logging.getLogger("wgcast.lab")

BABELD = "/usr/sbin/babeld"
#: babeld's own default hello interval on wired and tunnel interfaces (seconds).
BABELD_DEFAULT_HELLO = 4.0
#: Babel carries intervals in centiseconds: the protocol's floor.
MIN_HELLO = 0.01
FAIL_HOWS = ("daemon", "node", "link", "service", "drain")


def babeld_binary() -> str:
    return shutil.which("babeld") or BABELD


def babeld_version(binary: str | None = None) -> str:
    """``babeld -V`` (e.g. "babeld-1.12.1"), or "?" when it cannot run."""
    try:
        cp = subprocess.run([binary or babeld_binary(), "-V"], capture_output=True,
                            text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (cp.stdout + cp.stderr).strip().splitlines()[0] if (cp.stdout + cp.stderr) else "?"


def iface_name(labid: str, link_id: int, end: str) -> str:
    """Interface of link ``link_id`` at its ``end`` ("a" or "b"): unique across the lab's
    namespaces (UAPI sockets are shared) and under the ``wg<labid>`` prefix teardown
    cleans up."""
    name = f"wg{labid}l{link_id}{end}"
    if len(name) > 15:
        raise LabError(f"interface name {name!r} is longer than 15 characters")
    return name


def link_local(index: int) -> str:
    """The link-local address of node ``index`` (the same on all its interfaces)."""
    return str(ipaddress.IPv6Address((0xFE80 << 112) | index))


def router_id(labid: str, index: int) -> str:
    """A modified EUI-64 router-id, unique in the lab (locally administered bit set)."""
    b = bytes([0x02, 0x5A, 0x00, 0x00]) + bytes.fromhex(labid) + index.to_bytes(2, "big")
    return ":".join(f"{x:02x}" for x in b)


def _interval(seconds: float) -> str:
    """babeld's config takes seconds with up to 3 decimals."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def babeld_config(*, router_id: str, interfaces: Sequence[str], announce: Sequence[str],
                  hello: float | None = None, kind: str = "tunnel",
                  comment: str = "") -> str:
    """A babeld.conf for one node.

    ``interfaces``: the node's per-peer WireGuard interfaces; ``announce``: the /128s it
    may redistribute from its local addresses (its own address, the anycast addresses it
    may serve: announced while present on ``lo``); ``hello``: the hello interval in
    seconds (None: babeld's default, 4 s). Everything else is babeld's default.
    """
    if kind not in ("tunnel", "wired"):
        raise ValueError(f"interface type must be 'tunnel' or 'wired', got {kind!r}")
    if not interfaces:
        raise ValueError("babeld needs at least one interface")
    default = [f"type {kind}"]
    if hello is not None:
        if not MIN_HELLO <= hello <= 655.35:
            raise ValueError(f"hello interval must be in [0.01, 655.35] s, got {hello}")
        default.append(f"hello-interval {_interval(hello)}")
    lines = []
    if comment:
        lines += [f"# {c}" for c in comment.splitlines()]
    lines += [f"router-id {router_id}", f"default {' '.join(default)}"]
    for name in interfaces:
        if not name or len(name) > 15 or any(c.isspace() for c in name):
            raise ValueError(f"bad interface name {name!r}")
        lines.append(f"interface {name}")
    for p in announce:
        net = ipaddress.ip_network(p, strict=True)
        lines.append(f"redistribute local ip {net} allow")
    # Nothing else: not the underlay, not the link-local addresses, no kernel routes.
    lines.append("redistribute local deny")
    lines.append("redistribute deny")
    return "\n".join(lines) + "\n"


@dataclass
class PeerIface:
    """One WireGuard interface of a node in the babeld mesh (one per link)."""

    name: str
    link: int
    peer: str
    listen_port: int
    endpoint: str  # the relay's address:port for this link, from this node
    address: str  # this node's link-local address
    peer_address: str  # the peer's link-local address


class BabeldRouter(BoundRouter):
    """babeld over one WireGuard interface per peer, as the router of a :class:`Lab`.

    ``hello``: the hello interval in seconds (None: babeld's default, 4 s); ``kind``:
    "tunnel" (default: RTT in the metric, as for WireGuard) or "wired". The lab's
    ``timers``, ``daemon_cmd`` and ``config_hook`` do not apply; its instances are the
    echo service plus its address on lo (babeld has no notion of a service holding a
    group), on wireguard-go and the relay.
    """

    name = "babeld"
    needs = RouterNeeds(services=False, wireguard="go", links="relay")

    def __init__(self, hello: float | None = None, kind: str = "tunnel",
                 binary: str | None = None) -> None:
        if hello is not None and not MIN_HELLO <= hello <= 655.35:
            raise LabError(f"babeld_hello must be in [0.01, 655.35] s, got {hello}")
        if kind not in ("tunnel", "wired"):
            raise LabError(f"babeld_type must be 'tunnel' or 'wired', got {kind!r}")
        self.hello = hello
        self.kind = kind
        self.binary = binary or babeld_binary()
        self.ifaces: dict[str, list[PeerIface]] = {}

    # ------------------------------------------------------------------ state
    def options_json(self) -> dict[str, Any]:
        return {"babeld_hello": self.hello, "babeld_type": self.kind}

    def state_json(self) -> dict[str, Any] | None:
        return {"binary": self.binary, "hello": self.hello, "type": self.kind,
                "ifaces": {n: [asdict(i) for i in v] for n, v in self.ifaces.items()}}

    @classmethod
    def from_json(cls, section: dict[str, Any] | None) -> BabeldRouter:
        """The router of a lab that is up, from its section of the state."""
        b = section or {}
        r = cls(hello=b.get("hello"), kind=b.get("type", "tunnel"), binary=b.get("binary"))
        r.ifaces = {n: [PeerIface(**i) for i in v] for n, v in b.get("ifaces", {}).items()}
        return r

    # ------------------------------------------------------------------ plan
    def plan(self) -> None:
        lab = self.lab
        self.ifaces = {n: [] for n in lab.nodes}
        for lk in lab.links:
            for end, me, other in (("a", lk.a, lk.b), ("b", lk.b, lk.a)):
                self.ifaces[me].append(PeerIface(
                    name=iface_name(lab.id, lk.id, end), link=lk.id, peer=other,
                    listen_port=WG_PORT_BASE + 2 * lk.id + (end == "b"),
                    endpoint=lk.endpoint_of(me),
                    address=link_local(lab.nodes[me].index),
                    peer_address=link_local(lab.nodes[other].index)))
        for name, n in lab.nodes.items():
            mine = self.ifaces[name]
            if mine:  # the node's "interface" in status(): its first one
                n.iface, n.listen_port = mine[0].name, mine[0].listen_port
            n.control = link_local(n.index)
            n.config_path = os.path.join(lab.dir, f"{name}.babeld.conf")
            n.api_socket = os.path.join(lab.dir, f"{name}.babeld.ctl")
            n.state_file = os.path.join(lab.dir, f"{name}.babeld.state")

    def listen_port(self, node: str, link: LinkInfo) -> int:
        for i in self.ifaces[node]:
            if i.link == link.id:
                return i.listen_port
        raise LabError(f"{node} has no interface for link {link.id}")

    def all_ifaces(self) -> list[str]:
        return [i.name for v in self.ifaces.values() for i in v]

    # ------------------------------------------------------------------ WireGuard
    def start_wireguard(self) -> None:
        lab = self.lab
        for node, ifs in self.ifaces.items():
            for i in ifs:
                lab.launch(node, ["wireguard-go", "-f", i.name], "wireguard-go",
                           f"{node}.{i.name}.wireguard.log", env={"LOG_LEVEL": "error"})
        pending = set(self.all_ifaces())

        def ready() -> bool:
            for name in sorted(pending):
                if os.path.exists(f"/var/run/wireguard/{name}.sock"):
                    pending.discard(name)
            return not pending

        wait_for(ready, 10.0 + 0.05 * len(pending), what="wireguard-go interfaces")

    def configure_wireguard(self) -> None:
        lab = self.lab
        # Interfaces up (with multicast: Babel's hellos) before they get their peer: the
        # kernel's packets at link-up (MLD reports, router solicitations) would otherwise
        # start handshakes from both ends at once, which cross and stall for 5 s.
        for node, n in lab.nodes.items():
            # MLD reports and router solicitations sent at random times after link-up
            # would start handshakes from the b ends too (see warm_up): drop them.
            run(["ip", "netns", "exec", n.ns, "nft", "-f", "-"], input=_NFT_QUIET)
            lines = [f"address add {n.unicast}/128 dev lo"]
            for i in self.ifaces[node]:
                lines += [
                    f"link set dev {i.name} addrgenmode none",
                    f"link set dev {i.name} multicast on",
                    f"address add {i.address}/64 dev {i.name} nodad",
                    f"link set dev {i.name} up",
                ]
            for g in lab.groups:
                if node in g.members:
                    lines.append(f"address add {g.address}/128 dev lo preferred_lft 0 nodad")
            ip_batch(lines, netns=n.ns)
        for node, n in lab.nodes.items():
            for i in self.ifaces[node]:
                p = lab.nodes[i.peer]
                run(["wg", "set", i.name, "listen-port", str(i.listen_port), "private-key",
                     n.key_path, "peer", p.public_key, "endpoint", i.endpoint,
                     "allowed-ips", "::/0,0.0.0.0/0"])

    def warm_up(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """Complete every link's handshake, initiated from its a end only (see
        lab/build.py's warm_up). Returns the (a, b) pairs still without one at the
        deadline."""
        lab = self.lab
        todo: dict[str, tuple[str, PeerIface]] = {}  # iface -> (node, iface)
        for node, ifs in self.ifaces.items():
            for i in ifs:
                if i.name.endswith("a"):
                    todo[i.name] = (node, i)
        if not todo:
            return []
        max_delay = max((lk.delay_ms + lk.jitter_ms for lk in lab.links), default=0.0)
        if timeout is None:
            timeout = 3.0 + 4 * max_delay / 1000 + 0.01 * len(todo)
        socks: dict[str, socket.socket] = {}
        try:
            for node in {node for node, _ in todo.values()}:
                with in_netns(lab.ns(node)):
                    socks[node] = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            deadline = time.monotonic() + timeout
            next_kick = 0.0
            while todo and time.monotonic() < deadline:
                if time.monotonic() >= next_kick:
                    for node, i in todo.values():
                        with contextlib.suppress(OSError):
                            ifindex = _ifindex(lab.ns(node), i.name)
                            socks[node].sendto(b"wgcast-lab warm-up",
                                               (i.peer_address, 9, 0, ifindex))
                    next_kick = time.monotonic() + 1.0 + 2 * max_delay / 1000
                time.sleep(0.02)
                for name in list(todo):
                    with contextlib.suppress(LabError, OSError):
                        peers = uapi_get(name)["peers"]
                        if any(v["latest_handshake"] for v in peers.values()):
                            del todo[name]
        finally:
            for s in socks.values():
                s.close()
        return [(node, i.peer) for node, i in todo.values()]

    def wg_show(self, node: str) -> dict[str, Any]:
        """WireGuard state of every interface of a node: {interface: [names], peers:
        {peer name: {..., interface}}} (two links to one peer: the last one wins)."""
        lab = self.lab
        n = lab.node(node)
        by_key = {v.public_key: k for k, v in lab.nodes.items()}
        peers: dict[str, Any] = {}
        for i in self.ifaces[node]:
            st = uapi_get(i.name)
            for k, v in st["peers"].items():
                peers[by_key.get(k, k)] = {**v, "interface": i.name}
        return {"interface": [i.name for i in self.ifaces[node]],
                "listen_port": n.listen_port, "peers": peers}

    # ------------------------------------------------------------------ babeld
    def node_config(self, node: str) -> dict[str, Any]:
        lab = self.lab
        n = lab.node(node)
        announce = [f"{n.unicast}/128"] + [g.prefix for g in lab.groups if node in g.members]
        return {"router_id": router_id(lab.id, n.index),
                "interfaces": [i.name for i in self.ifaces[node]],
                "announce": announce, "hello": self.hello, "kind": self.kind}

    def write_configs(self, hook: ConfigHook | None) -> None:
        lab = self.lab
        for name, n in lab.nodes.items():
            text = babeld_config(**self.node_config(name),
                                 comment=f"wgcast lab {lab.id}: node {name}, babeld mesh "
                                         "(generated)")
            with open(n.config_path, "w") as f:
                f.write(text)

    def pid_file(self, node: str) -> str:
        return os.path.join(self.lab.dir, f"{node}.babeld.pid")

    def daemon_command(self, node: str) -> list[str]:
        n = self.lab.node(node)
        return [self.binary, "-c", n.config_path, "-I", self.pid_file(node),
                "-S", n.state_file, "-G", n.api_socket]

    def start_daemons(self, nodes: Sequence[str], wait: bool) -> None:
        lab = self.lab
        for name in nodes:
            # A babeld killed by a signal leaves its pid file and socket: it refuses to
            # start (O_EXCL) while they exist.
            for path in (self.pid_file(name), lab.nodes[name].api_socket):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        processes.start_daemons(lab, nodes, wait)
        if wait:
            missing = self.wait_adjacencies()
            if missing:
                log.warning("lab %s: babeld without a neighbour on %s", lab.id,
                            ", ".join(missing))

    def wait_daemons(self, nodes: Sequence[str], timeout: float) -> None:
        """Wait until each babeld has its local socket (a babeld that exits is an error)."""
        lab = self.lab
        pending = set(nodes)

        def ready() -> bool:
            for name in sorted(pending):
                if lab.process(name, "daemon") is None:
                    raise LabError(f"babeld of {name} exited; log "
                                   f"{lab.dir}/{name}.daemon.log:\n"
                                   f"{tail(os.path.join(lab.dir, name + '.daemon.log'))}")
                if os.path.exists(lab.nodes[name].api_socket):
                    pending.discard(name)
            return not pending

        wait_for(ready, timeout, what="babeld local sockets")

    def adjacencies(self) -> dict[str, str | None]:
        """{interface: reach of babeld's neighbour on it (hex) or None} over the lab."""
        out: dict[str, str | None] = dict.fromkeys(self.all_ifaces())
        for n in self.lab.nodes:
            if self.lab.process(n, "daemon") is None:
                continue
            with contextlib.suppress(OSError, LabError):
                for line in self.dump(n).get("neighbour", []):
                    p = line.split()
                    if "if" in p and "reach" in p:
                        out[p[p.index("if") + 1]] = p[p.index("reach") + 1]
        return out

    def wait_adjacencies(self, timeout: float | None = None) -> list[str]:
        """Wait until babeld has a neighbour with a full recent hello history on every
        interface of the lab (a neighbour whose last 4 hellos all arrived). Returns the
        interfaces still without one at the deadline."""
        hello = self.hello or BABELD_DEFAULT_HELLO
        if timeout is None:
            timeout = 15.0 + 6 * hello
        deadline = time.monotonic() + timeout
        while True:
            adj = self.adjacencies()
            missing = [i for i, r in adj.items() if r is None or int(r, 16) & 0xF000 != 0xF000]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(min(0.2, hello))

    def babeld_request(self, node: str, line: str, timeout: float = 2.0) -> str:
        """Send one line to the node's babeld local interface; the reply up to ok/no/bad."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.lab.nodes[node].api_socket)
            buf = b""
            while b"\nok\n" not in buf and not buf.endswith(b"ok\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            s.sendall(line.encode() + b"\n")
            out = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                last = out.rstrip(b"\n").rsplit(b"\n", 1)[-1]
                if last in (b"ok", b"no", b"bad"):
                    break
            with contextlib.suppress(OSError):
                s.sendall(b"quit\n")
        return out.decode(errors="replace")

    def dump(self, node: str) -> dict[str, list[str]]:
        """babeld's tables ("dump" on its local socket), grouped by kind."""
        out: dict[str, list[str]] = {}
        for line in self.babeld_request(node, "dump").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "add":
                out.setdefault(parts[1], []).append(line)
        return out

    def routes(self, node: str) -> list[str]:
        """The kernel's IPv6 routes installed by babeld on a node."""
        cp = run(["ip", "-n", self.lab.ns(node), "-6", "route", "show", "proto", "babel"],
                 check=False)
        return [x for x in cp.stdout.splitlines() if x.strip()]

    # ------------------------------------------------------------------ faults
    def _serving_groups(self, node: str) -> list[str]:
        return [g.address for g in self.lab.groups if node in g.members]

    def withdraw(self, node: str) -> None:
        """Take the node's anycast addresses off lo (babeld retracts them)."""
        lines = [f"address del {a}/128 dev lo" for a in self._serving_groups(node)]
        if lines:
            ip_batch(lines, netns=self.lab.ns(node))

    def announce(self, node: str) -> None:
        lines = [f"address replace {a}/128 dev lo preferred_lft 0 nodad"
                 for a in self._serving_groups(node)]
        if lines:
            ip_batch(lines, netns=self.lab.ns(node))

    def fail(self, node: str, how: str) -> bool:
        """how="service": the echo service is killed and its address leaves lo at once
        (the best health script a babeld user can write); how="drain": the address
        leaves lo, the service keeps running. Other faults: the lab's."""
        lab = self.lab
        if how == "service":
            for p in lab.processes(node, "echo"):
                signal_pid(p["pid"], signal.SIGKILL, p["starttime"])
            self.withdraw(node)
            lab.mutate(failure_added("services", node))
        elif how == "drain":
            self.withdraw(node)
            lab.mutate(failure_added("drains", node))
        else:
            return False
        return True

    def restore(self, node: str, how: str) -> bool:
        lab = self.lab
        if how == "service":
            if not lab.processes(node, "echo"):
                lab.start_echo(node)
            self.announce(node)
            lab.mutate(failure_removed("services", node))
        elif how == "drain":
            self.announce(node)
            lab.mutate(failure_removed("drains", node))
        else:
            return False
        return True


_NFT_QUIET = """table inet wgcast_lab_quiet {
  chain out {
    type filter hook output priority 0; policy accept;
    oifname "wg*" icmpv6 type { mld-listener-report, mld-listener-done,
                                mld2-listener-report, nd-router-solicit } drop
  }
}
"""


def _ifindex(ns: str, name: str) -> int:
    with in_netns(ns):
        return socket.if_nametoindex(name)
