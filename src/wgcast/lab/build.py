"""Bringing a lab up: the plan (names, keys, addresses, ports), the namespaces and their
underlay veths, the links (tc netem or the userspace relay), and the wgcast mesh's
WireGuard: one interface per node with every neighbour as a peer.

A router (lab/router.py) decides which of these WireGuard steps run; the babeld router
builds its own interfaces (lab/babeld.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from wgcast import keys
from wgcast.lab import netem as netem_mod
from wgcast.lab import relay as relay_mod
from wgcast.lab.handle import LabHandle
from wgcast.lab.naming import (
    RELAY,
    RELAY_PORT_BASE,
    WG_PORT_BASE,
    anycast_address,
    ns_name,
    underlay,
    unicast_address,
    wg_name,
)
from wgcast.lab.state import (
    GroupInfo,
    LabOptions,
    LabState,
    LinkInfo,
    NodeInfo,
    RelayInfo,
)
from wgcast.lab.system import (
    LabError,
    in_netns,
    ip_batch,
    netns_sysctl,
    run,
    tail,
    wait_for,
)

log = logging.getLogger("wgcast.lab")


def plan(lab: LabHandle, group_members: list[list[str]], options: LabOptions) -> LabState:
    """Names, keys, addresses and ports of everything (no side effect but the key files):
    fills ``lab.groups``, ``lab.nodes`` and ``lab.links`` and returns the state."""
    labid = lab.id
    lab.groups = []
    for k, members in enumerate(group_members):
        addr = anycast_address(labid, k)
        lab.groups.append(GroupInfo(prefix=f"{addr}/128", address=addr, members=list(members)))
    for name in lab.topology.nodes:
        i = lab.topology.index(name)
        priv = keys.generate_private()
        pub = keys.public_from_private(priv)
        relay_ip, node_ip = underlay(i)
        key_path = os.path.join(lab.dir, f"{name}.key")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys.b64(priv) + "\n")
        lab.nodes[name] = NodeInfo(
            name=name, index=i, ns=ns_name(labid, name), iface=wg_name(labid, i),
            private_key=keys.b64(priv), public_key=keys.b64(pub),
            listen_port=WG_PORT_BASE + i, underlay_ip=node_ip, relay_ip=relay_ip,
            relay_veth=f"r{i}", unicast=unicast_address(labid, i),
            control=str(keys.control_address(pub)), key_path=key_path,
            config_path=os.path.join(lab.dir, f"{name}.toml"),
            api_socket=os.path.join(lab.dir, f"{name}.sock"),
            state_file=os.path.join(lab.dir, f"{name}.state"),
            serves=[g.prefix for g in lab.groups if name in g.members],
        )
    for lk in lab.topology.links:
        pa, pb = RELAY_PORT_BASE + 2 * lk.id, RELAY_PORT_BASE + 2 * lk.id + 1
        if pb > 65535:
            raise LabError("too many links for the relay's port range")
        lab.links.append(LinkInfo(
            id=lk.id, a=lk.a, b=lk.b, delay_ms=lk.delay_ms, jitter_ms=lk.jitter_ms,
            loss=lk.loss, port_a=pa, port_b=pb,
            endpoint_a=f"{lab.nodes[lk.a].relay_ip}:{pa}",
            endpoint_b=f"{lab.nodes[lk.b].relay_ip}:{pb}",
        ))
    return LabState(
        id=labid, dir=lab.dir, created=time.time(), status="starting", pid=os.getpid(),
        options=options, topology=lab.topology,
        relay=RelayInfo(ns=ns_name(labid, RELAY), control=os.path.join(lab.dir, "relay.sock"),
                        config=os.path.join(lab.dir, "relay.json")),
        nodes=lab.nodes, links=lab.links, groups=lab.groups)


def build_namespaces(lab: LabHandle) -> None:
    """The relay's namespace and one per node, joined by a veth pair each (underlay)."""
    relay_ns = ns_name(lab.id, RELAY)
    ip_batch([f"netns add {relay_ns}"] + [f"netns add {n.ns}" for n in lab.nodes.values()])
    relay_lines = ["link set lo up"]
    for n in lab.nodes.values():
        relay_lines += [
            f"link add {n.relay_veth} type veth peer name ul netns {n.ns}",
            f"address add {n.relay_ip}/30 dev {n.relay_veth}",
            f"link set {n.relay_veth} up",
        ]
    ip_batch(relay_lines, netns=relay_ns)
    for n in lab.nodes.values():
        ip_batch(["link set lo up", f"address add {n.underlay_ip}/30 dev ul",
                  "link set ul up"], netns=n.ns)
        netns_sysctl(n.ns, {"net.ipv6.conf.all.forwarding": "1",
                            "net.ipv4.ip_forward": "1"})


def start_links(lab: LabHandle, listen_port: Callable[[str, LinkInfo], int]) -> None:
    """The links between the nodes: tc netem in the relay namespace, or the userspace
    relay process. ``listen_port(node, link)``: where the node's WireGuard listens for
    that link's traffic (the router's choice)."""
    if lab.link_mode == "netem":
        ports = {(name, lk.id): listen_port(name, lk) for lk in lab.links
                 for name in (lk.a, lk.b)}
        netem_mod.setup(lab.ns(RELAY), lab.nodes, lab.links, ports)
        return
    r = lab.state.relay
    links = []
    for lk in lab.links:
        a, b = lab.nodes[lk.a], lab.nodes[lk.b]
        links.append({
            "id": lk.id, "a": lk.a, "b": lk.b,
            "a_addr": [a.underlay_ip, listen_port(lk.a, lk)],
            "b_addr": [b.underlay_ip, listen_port(lk.b, lk)],
            "port_a": lk.port_a, "port_b": lk.port_b, "delay_ms": lk.delay_ms,
            "jitter_ms": lk.jitter_ms, "loss": lk.loss,
        })
    cfg = {"links": links, "seed": lab.seed, "bind": "0.0.0.0"}
    with open(r.config, "w") as f:
        json.dump(cfg, f)
    lab.launch(RELAY, [sys.executable, "-m", "wgcast.lab.relay", "run", "--config",
                       r.config, "--control", r.control, "--sched", lab.relay_sched],
               "relay", "relay.log", env={"PYTHONUNBUFFERED": "1"})

    def ready() -> bool:
        try:
            relay_mod.control(r.control, {"op": "ping"}, timeout=0.5)
            return True
        except (OSError, ConnectionError, TimeoutError, RuntimeError):
            if lab.process(RELAY, "relay") is None:
                raise LabError("relay exited: "
                               + tail(os.path.join(lab.dir, "relay.log"))) from None
            return False

    wait_for(ready, 15.0, what="the relay")


# ---------------------------------------------------------------------- WireGuard
def start_wireguard(lab: LabHandle) -> None:
    """One WireGuard interface per node: a kernel one, or a wireguard-go process."""
    if lab.wireguard == "kernel":
        for n in lab.nodes.values():
            ip_batch([f"link add {n.iface} type wireguard"], netns=n.ns)
        return
    for n in lab.nodes.values():
        lab.launch(n.name, ["wireguard-go", "-f", n.iface], "wireguard-go",
                   f"{n.name}.wireguard.log", env={"LOG_LEVEL": "error"})

    def ready() -> bool:
        for n in lab.nodes.values():
            if not os.path.exists(f"/var/run/wireguard/{n.iface}.sock"):
                p = lab.process(n.name, "wireguard-go")
                if p is None:
                    raise LabError(f"wireguard-go of {n.name} exited: "
                                   f"{tail(os.path.join(lab.dir, n.name + '.wireguard.log'))}")
                return False
        return True

    wait_for(ready, 10.0 + 0.05 * len(lab.nodes), what="wireguard-go interfaces")


def configure_wireguard(lab: LabHandle) -> None:
    for n in lab.nodes.values():
        configure_node(lab, n)


def configure_node(lab: LabHandle, n: NodeInfo, lo: bool = True) -> None:
    """Keys, peers, addresses and link up of one node's interface (as wg-quick)."""
    cmd = ["wg", "set", n.iface, "listen-port", str(n.listen_port),
           "private-key", n.key_path]
    for peer in lab.topology.neighbours(n.name):
        p = lab.nodes[peer]
        first = lab.links_between(n.name, peer)[0]
        cmd += ["peer", p.public_key, "endpoint", first.endpoint_of(n.name),
                "allowed-ips", f"{p.control}/128"]
    # Kernel WireGuard is set through netlink, in the interface's namespace.
    run(["ip", "netns", "exec", n.ns, *cmd] if lab.wireguard == "kernel" else cmd)
    lines = [
        f"link set dev {n.iface} addrgenmode none",
        f"address add {n.control}/128 dev {n.iface} nodad",
        f"address add {n.unicast}/128 dev {n.iface} nodad",
        f"link set dev {n.iface} up",
        # On-link route to the peers' control addresses (the kernel would add it
        # with an auto link-local address, which addrgenmode none suppresses).
        f"route replace fe80::/64 dev {n.iface}",
    ]
    if lab.preassign_anycast and lo:
        for g in lab.groups:
            if n.name in g.members:
                lines.append(f"address add {g.address}/128 dev lo preferred_lft 0 nodad")
    ip_batch(lines, netns=n.ns)


def recreate_wireguard(lab: LabHandle, node: str, how: str = "delete") -> float:
    """Take a node's WireGuard interface away and bring it back configured as before
    (same key, peers and addresses), as `wg-quick down; wg-quick up` does.

    how="delete": `ip link del` (wireguard-go exits with its TUN), then create it
    again; how="kill": SIGKILL wireguard-go (go labs only), then start it again.
    Returns the time.monotonic() at which the interface was back and configured."""
    n = lab.nodes[node]
    if how not in ("delete", "kill"):
        raise LabError(f"how must be delete or kill, got {how!r}")
    old = lab.process(node, "wireguard-go") if lab.wireguard == "go" else None
    if how == "kill":
        if old is None:
            raise LabError(f"{node}: no wireguard-go to kill")
        os.kill(int(old["pid"]), signal.SIGKILL)
    else:
        run(["ip", "-n", n.ns, "link", "del", n.iface])

    def gone() -> bool:
        if old is not None and lab.process(node, "wireguard-go") is not None:
            return False
        cp = run(["ip", "-n", n.ns, "link", "show", n.iface], check=False)
        return cp.returncode != 0

    wait_for(gone, 5.0, what=f"{n.iface} gone")
    if lab.wireguard == "kernel":
        ip_batch([f"link add {n.iface} type wireguard"], netns=n.ns)
    else:
        sock = f"/var/run/wireguard/{n.iface}.sock"
        if os.path.exists(sock):  # stale after a SIGKILL (the lab's own interface)
            os.unlink(sock)
        lab.launch(n.name, ["wireguard-go", "-f", n.iface], "wireguard-go",
                   f"{n.name}.wireguard.log", env={"LOG_LEVEL": "error"})
        wait_for(lambda: os.path.exists(sock), 10.0, what=f"{n.iface} UAPI socket")
    configure_node(lab, n, lo=False)
    return time.monotonic()


def warm_up(lab: LabHandle, timeout: float | None = None) -> list[tuple[str, str]]:
    """Complete the WireGuard handshake of every neighbour pair, initiated from one
    end only (the lower index), before anything else talks.

    Daemons starting together make both ends initiate at once; the initiations cross
    on the delayed links, each end drops the response to its own, and WireGuard only
    retries after 5 s. Returns the pairs still without a handshake at the deadline.
    """
    pairs = [(a, b) for a in lab.nodes for b in lab.topology.neighbours(a)
             if lab.nodes[a].index < lab.nodes[b].index]
    if not pairs:
        return []
    max_delay = max((lk.delay_ms + lk.jitter_ms for lk in lab.links), default=0.0)
    if timeout is None:
        timeout = 3.0 + 4 * max_delay / 1000
    socks: dict[str, tuple[socket.socket, int]] = {}
    try:
        for a in {a for a, _ in pairs}:
            with in_netns(lab.ns(a)):
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                socks[a] = (s, socket.if_nametoindex(lab.nodes[a].iface))
        deadline = time.monotonic() + timeout
        pending = list(pairs)
        next_kick = 0.0
        while pending and time.monotonic() < deadline:
            if time.monotonic() >= next_kick:  # one packet starts a handshake
                for a, b in pending:
                    s, ifindex = socks[a]
                    with contextlib.suppress(OSError):
                        s.sendto(b"wgcast-lab warm-up", (lab.nodes[b].control, 9, 0, ifindex))
                next_kick = time.monotonic() + 1.0 + 2 * max_delay / 1000
            time.sleep(0.01)
            done = set()
            for a in {a for a, _ in pending}:
                for peer, info in lab.wg_show(a)["peers"].items():
                    if info["latest_handshake"]:
                        done.add((a, peer))
            pending = [p for p in pending if p not in done]
    finally:
        for s, _ in socks.values():
            s.close()
    if pending:
        log.warning("lab %s: no WireGuard handshake yet between %s", lab.id,
                    ", ".join(f"{a}-{b}" for a, b in pending))
    return pending
