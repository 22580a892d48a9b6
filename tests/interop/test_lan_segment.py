"""Two wgcast nodes and one babeld on a single LAN segment (a bridge).

    X (wgcast, LAN-only) --+
    Y (wgcast, LAN-only) --+-- bridge (namespace S)
    L (babeld 1.14)      --+

No neighbour is configured anywhere: each finds the others by their multicast Hellos on
ff02::1:6 (wgcast sends one Hello stream per LAN with an IHU for every neighbour heard).
Neither wgcast node has a WireGuard interface (`[[lan]]` alone). All three become
adjacent, every node's prefixes reach the two others (kernel routes through a link-local
address on the segment: the origin's, or the third node's when the measured RTTs make
that cheaper), an echo crosses the segment, and a retraction on one side removes
the route everywhere (X leaving a group; L's address leaving `lo`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from interop_lab import ROOT, babeld_114, kernel_route, local_query, record, wait_until

from netns.conftest import Netns, make_netns, skip_reason, unique_ifname

pytestmark = pytest.mark.netns

#: Own prefixes (on `lo`, originated) of each node, and X's anycast group.
OWN = {"x": ("fd00:31::1/128", "10.0.31.1/32"), "y": ("fd00:32::1/128", "10.0.32.1/32"),
       "l": ("fd00:1a::1/128", "10.0.20.1/32")}
GROUP = "fd00:aa::1/128"
PORT_L = 33133
ECHO_PORT = 7


def _link_local(ns_name: str, ifname: str) -> str:
    out = subprocess.run(["ip", "-n", ns_name, "-6", "addr", "show", "dev", ifname,
                          "scope", "link"], capture_output=True, text=True, timeout=5).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["inet6"] and "tentative" not in parts:
            return parts[1].split("/")[0]
    return ""


@dataclass
class Segment:
    tmp: Path
    bridge: Netns
    ns: dict[str, Netns] = field(default_factory=dict)
    ifs: dict[str, str] = field(default_factory=dict)
    lls: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, node: str, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "ab")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[node].name, *cmd],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(p)
        return p

    def sock(self, node: str) -> str:
        return str(self.tmp / f"{node}.sock")

    def api(self, node: str, cmd: str) -> dict[str, Any]:
        from wgcast.client import Client
        with Client(self.sock(node)) as c:
            return c.request({"cmd": cmd})

    def answers(self, node: str) -> bool:
        from wgcast.client import WgcastError
        if not os.path.exists(self.sock(node)):
            return False
        try:
            self.api(node, "status")
        except (WgcastError, OSError):
            return False
        return True

    def start_wgcast(self, node: str) -> None:
        conf = self.tmp / f"{node}.toml"
        v6, v4 = OWN[node]
        conf.write_text(f"""
api_socket = "{self.sock(node)}"
state_file = "{self.tmp}/{node}.state"
probe_port = 0
addresses = ["{v6}", "{v4}"]
anycast = ["fd00:aa::/48"]

[[groups]]
prefix = "{GROUP}"

[[lan]]
interface = "{self.ifs[node]}"
may_originate = ["fd00::/8", "10.0.0.0/8"]
""")
        self.spawn(node, [str(ROOT / ".venv/bin/wgcast"), "run", "-v", "-c", str(conf)],
                   f"wgcast-{node}.log")
        wait_until(lambda: self.answers(node), 60, f"wgcast {node}'s API socket")

    def log(self, name: str) -> str:
        p = self.tmp / name
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        for ns in (*self.ns.values(), self.bridge):
            ns.close()


def make_segment(tmp: Path, nodes: tuple[str, ...]) -> Segment:
    """Namespace S holds a bridge; each node's namespace a veth into it."""
    seg = Segment(tmp, make_netns())
    try:
        br = unique_ifname("br")
        seg.bridge.run("ip", "link", "add", br, "type", "bridge")
        seg.bridge.run("ip", "link", "set", br, "up")
        for n in nodes:
            ns = seg.ns[n] = make_netns()
            inner, outer = unique_ifname(f"l{n}"), unique_ifname(f"s{n}")
            subprocess.run(["ip", "link", "add", inner, "netns", ns.name, "type", "veth",
                            "peer", "name", outer, "netns", seg.bridge.name],
                           check=True, capture_output=True)
            seg.bridge.run("ip", "link", "set", outer, "master", br)
            seg.bridge.run("ip", "link", "set", outer, "up")
            ns.run("ip", "link", "set", inner, "up")
            for p in OWN[n]:
                ns.run("ip", "addr", "add", p, "dev", "lo")
            ns.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            seg.ifs[n] = inner
        for n in nodes:
            wait_until(lambda n=n: _link_local(seg.ns[n].name, seg.ifs[n]), 15,  # type: ignore[misc]
                       f"{n}'s link-local address")
            seg.lls[n] = _link_local(seg.ns[n].name, seg.ifs[n])
    except BaseException:
        seg.close()
        raise
    return seg


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if babeld_114() is None:
        pytest.skip("babeld 1.14 cannot be built (/work/shared/anchors/build-babeld.sh)")
    seg = make_segment(tmp_path, ("x", "y", "l"))
    try:
        yield seg
    finally:
        seg.close()


def _babeld_neighbours(seg: Segment) -> dict[str, tuple[str, int]]:
    """babeld's neighbours: address -> (reach, txcost)."""
    out = {}
    for line in local_query(seg.ns["l"].name, PORT_L, "dump").splitlines():
        m = re.search(r"neighbour .*address (\S+) .* reach ([0-9a-f]{4}) .* txcost (\d+)",
                      line)
        if m:
            out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def _echo(seg: Segment, node: str, src: str, dst: str) -> bool:
    """A UDP query from `src` in `node` to the lab echo service at `dst` is answered."""
    s, d = src.split("/")[0], dst.split("/")[0]
    fam = "AF_INET6" if ":" in d else "AF_INET"
    code = (f"import socket;s=socket.socket(socket.{fam},socket.SOCK_DGRAM);"
            f"s.bind(('{s}',0));s.settimeout(1);s.sendto(b'q',('{d}',{ECHO_PORT}));"
            "print(s.recv(100))")
    r = subprocess.run(["ip", "netns", "exec", seg.ns[node].name, sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=10)
    return r.returncode == 0


def test_two_wgcast_nodes_and_babeld_on_one_segment(segment: Segment) -> None:
    seg = segment
    binary = babeld_114()
    assert binary is not None
    conf = seg.tmp / "babeld-l.conf"
    conf.write_text(f"interface {seg.ifs['l']} type wired hello-interval 0.5 "
                    "enable-timestamps true\n"
                    "redistribute local ip fd00:1a::/48 le 128 allow\n"
                    "redistribute local ip 10.0.20.0/24 le 32 allow\n"
                    "redistribute local deny\nredistribute deny\n")
    seg.spawn("l", [binary, "-c", str(conf), "-I", str(seg.tmp / "babeld-l.pid"),
                    "-S", str(seg.tmp / "babeld-l.state"), "-g", str(PORT_L), "-d", "1"],
              "babeld-l.log")
    seg.start_wgcast("x")
    seg.start_wgcast("y")
    try:
        # Adjacency, all three pairs: X and Y see each other and L up ...
        for me, others in (("x", ("y", "l")), ("y", ("x", "l"))):
            def up(me: str = me, others: tuple[str, ...] = others) -> bool:
                (lan,) = seg.api(me, "status")["status"]["lan"]
                seen = {n["address"]: n["up"] for n in lan["neighbours"]}
                return all(seen.get(seg.lls[o]) for o in others)
            wait_until(up, 45, f"{me}: neighbours {others} up")
        # ... and L sees X and Y (hears their Hellos, reads its own IHU: a finite txcost).
        wait_until(lambda: all(
            (nb := _babeld_neighbours(seg).get(seg.lls[w])) is not None
            and nb[0] != "0000" and nb[1] < 0xFFFF for w in ("x", "y")),
            45, "babeld: X and Y as neighbours with a cost")
        # Every node's prefixes in both others' kernels, through the segment (directly
        # from the origin, or through the third node when the measured RTTs make that
        # cheaper: with timestamps on, a loaded machine moves the costs).
        lls = set(seg.lls.values())

        def on_segment(at: str, p: str) -> bool:
            r = kernel_route(seg.ns[at].name, p)
            return f"dev {seg.ifs[at]}" in r and any(f"{ll} dev" in r for ll in lls)

        for origin in ("x", "y", "l"):
            for at in ("x", "y", "l"):
                if at == origin:
                    continue
                for p in OWN[origin]:
                    wait_until(lambda p=p, at=at: on_segment(at, p), 45,  # type: ignore[misc]
                               f"{at}: a route to {p} (from {origin}) on the segment")
        # Traffic: X to L and Y to X, both families (answered by the lab's echo service).
        for n in ("l", "x"):
            seg.spawn(n, [sys.executable, "-m", "wgcast.lab.echo", "--name", n,
                          "--port", str(ECHO_PORT)], f"echo-{n}.log")
        for node, src, dst in (("x", OWN["x"][0], OWN["l"][0]), ("x", OWN["x"][1], OWN["l"][1]),
                               ("y", OWN["y"][0], OWN["x"][0])):
            wait_until(lambda n=node, s=src, d=dst: _echo(seg, n, s, d), 30,  # type: ignore[misc]
                       f"an echo from {node} ({src}) to {dst}")
        # X serves a group: Y and L route to it through X; X leaves: gone in both.
        from wgcast.client import Client
        with Client(seg.sock("x")) as member:
            member.join(GROUP)
            for at in ("y", "l"):
                wait_until(lambda at=at: on_segment(at, GROUP), 30,  # type: ignore[misc]
                           f"{at}: a route to {GROUP} (X's)")
            t0 = time.monotonic()
            member.leave(GROUP, all=True)
        figures: dict[str, float] = {}
        for at in ("y", "l"):
            # (babeld keeps a retracted route as an unreachable one on lo until it expires.)
            wait_until(lambda at=at: not on_segment(at, GROUP), 30,  # type: ignore[misc]
                       f"{at}: {GROUP} gone")
            figures[f"x_retraction_to_{at}"] = round(time.monotonic() - t0, 4)
        # L retracts its IPv6 prefix: gone in X and Y; its IPv4 one stays.
        seg.ns["l"].run("ip", "addr", "del", OWN["l"][0], "dev", "lo")
        t0 = time.monotonic()
        for at in ("x", "y"):
            wait_until(lambda at=at: kernel_route(seg.ns[at].name, OWN["l"][0]) == "",  # type: ignore[misc]
                       30, f"{at}: {OWN['l'][0]} gone")
            figures[f"l_retraction_to_{at}"] = round(time.monotonic() - t0, 4)
            assert on_segment(at, OWN["l"][1])
        # LAN-only: no WireGuard interface, no data plane; the status says so.
        st = seg.api("x", "status")["status"]
        assert st["interface"] == "" and st["dataplane"] is None and st["backend"] is None
        assert seg.api("x", "peers")["peers"] == []
        # A reload applies on a LAN-only node too: a new own address reaches Y.
        conf_x = seg.tmp / "x.toml"
        conf_x.write_text(conf_x.read_text().replace(
            f'addresses = ["{OWN["x"][0]}"', f'addresses = ["fd00:31::2/128", "{OWN["x"][0]}"'))
        assert "addresses" in seg.api("x", "reload")["changed"]
        wait_until(lambda: on_segment("y", "fd00:31::2/128"), 30, "y: X's new address")
        record("lan-segment", **figures)
        print("figures", figures)
    except BaseException:
        for n in ("x", "y", "l"):
            for cmd in (["ip", "-6", "route"], ["ip", "-4", "route"]):
                print(f"---- {n}: {' '.join(cmd)}\n" +
                      seg.ns[n].run(*cmd, check=False).stdout)
        print("---- babeld dump\n" + local_query(seg.ns["l"].name, PORT_L, "dump"))
        for log in ("wgcast-x.log", "wgcast-y.log", "babeld-l.log"):
            print(f"---- {log}\n" + seg.log(log))
        raise
