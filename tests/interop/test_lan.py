"""wgcast on a plain LAN ([[lan]]): a mesh edge meets a babeld router on a veth.

    L (babeld 1.14 on a veth) --LAN-- A (wgcast: WireGuard + [[lan]]) ==WG== B (babeld 1.14)

A speaks Babel on the veth by multicast discovery (ff02::1:6) and routes through L by
L's link-local address (kernel routes with a gateway, no AllowedIPs); it redistributes
between its WireGuard peer and the LAN: L's prefixes reach B and B's reach L, A's own
reach both, and a ping crosses A from L to B. What L announces outside the [[lan]]'s
`may_originate` is refused. L's retraction reaches B through A.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from interop_lab import (
    A_V4,
    A_V6,
    B_V4,
    B_V6,
    Link,
    babeld_114,
    kernel_route,
    local_query,
    wait_until,
)

from netns.conftest import Netns, make_netns, unique_ifname

pytestmark = pytest.mark.netns

L_V6, L_V4, L_BAD = "fd00:1a::1/128", "10.0.20.1/32", "fd00:bad::1/128"
PORT_B, PORT_L = 33131, 33132
ECHO_PORT = 7


def _babeld(link: Link, ns: object, name: str, binary: str, iface: str, kind: str,
            port: int, allow: tuple[str, ...]) -> None:
    conf = link.tmp / f"{name}.conf"
    conf.write_text(f"interface {iface} type {kind} hello-interval 0.5\n"
                    + "".join(f"redistribute local ip {p} le 128 allow\n" if ":" in p else
                              f"redistribute local ip {p} le 32 allow\n" for p in allow)
                    + "redistribute local deny\nredistribute deny\n")
    link.spawn(ns, [binary, "-c", str(conf), "-I", str(link.tmp / f"{name}.pid"),  # type: ignore[arg-type]
                    "-S", str(link.tmp / f"{name}.state"), "-g", str(port), "-d", "1"],
               f"{name}.log")


def _link_local(ns_name: str, ifname: str) -> str:
    """The interface's link-local address once DAD is over ('' before)."""
    out = subprocess.run(["ip", "-n", ns_name, "-6", "addr", "show", "dev", ifname,
                          "scope", "link"], capture_output=True, text=True, timeout=5).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["inet6"] and "tentative" not in parts:
            return parts[1].split("/")[0]
    return ""


def _echo(ns: str, src: str, dst: str) -> bool:
    """A UDP query from `src` in `ns` to the lab echo service at `dst` is answered."""
    s, d = src.split("/")[0], dst.split("/")[0]
    fam = "AF_INET6" if ":" in d else "AF_INET"
    code = (f"import socket;s=socket.socket(socket.{fam},socket.SOCK_DGRAM);"
            f"s.bind(('{s}',0));s.settimeout(1);s.sendto(b'q',('{d}',{ECHO_PORT}));"
            "print(s.recv(100))")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=10)
    return r.returncode == 0


@dataclass
class Lan:
    """Namespace L on a veth with A: the interfaces and their link-local addresses."""

    ns: Netns
    a_if: str
    l_if: str
    a_ll: str
    l_ll: str


def make_lan(link: Link) -> Lan:
    lan = make_netns()
    link.cleanup.append(lan.close)
    la, ll = unique_ifname("lA"), unique_ifname("lL")
    subprocess.run(["ip", "link", "add", la, "netns", link.a.name, "type", "veth", "peer",
                    "name", ll, "netns", lan.name], check=True, capture_output=True)
    link.a.run("ip", "link", "set", la, "up")
    lan.run("ip", "link", "set", ll, "up")
    for p in (L_V6, L_V4, L_BAD):
        lan.run("ip", "addr", "add", p, "dev", "lo")
    wait_until(lambda: _link_local(link.a.name, la), 10, "A's LAN link-local address")
    wait_until(lambda: _link_local(lan.name, ll), 10, "L's LAN link-local address")
    return Lan(lan, la, ll, _link_local(link.a.name, la), _link_local(lan.name, ll))


def test_lan_edge_meets_babeld(link: Link, tmp_path: Path) -> None:
    binary = babeld_114()
    if binary is None:
        pytest.skip("babeld 1.14 cannot be built (/work/shared/anchors/build-babeld.sh)")
    lan_ = make_lan(link)
    lan, la, ll, a_ll_addr, l_ll_addr = lan_.ns, lan_.a_if, lan_.l_if, lan_.a_ll, lan_.l_ll
    _babeld(link, link.b, "babeld-b", binary, link.b_if, "tunnel", PORT_B,
            ("fd00:b::/48", "10.0.2.0/24"))
    _babeld(link, lan, "babeld-l", binary, ll, "wired", PORT_L,
            ("fd00:1a::/48", "10.0.20.0/24", "fd00:bad::/48"))
    link.start_wgcast(extra=f"""
[[lan]]
interface = "{la}"
may_originate = ["fd00:1a::/48", "10.0.20.0/24"]
""")
    try:
        # L's prefixes: in A's kernel through L's link-local address on the veth ...
        for p in (L_V6, L_V4):
            via = f"via {'inet6 ' if '.' in p else ''}{l_ll_addr} dev {la}"
            wait_until(lambda p=p, via=via: via in kernel_route(link.a.name, p),  # type: ignore[misc]
                       45, f"A: a route to {p} via L")
            assert "proto 152" in kernel_route(link.a.name, p)
        # ... and in B's, through A (LAN -> WireGuard).
        for p in (L_V6, L_V4):
            wait_until(lambda p=p: f"dev {link.b_if}" in kernel_route(link.b.name, p),  # type: ignore[misc]
                       45, f"B: a route to {p} through A")
        # A's own and B's prefixes in L's kernel, through A's link-local address.
        for p in (A_V6, A_V4, B_V6, B_V4):
            wait_until(lambda p=p: f"{a_ll_addr} dev {ll}" in kernel_route(lan.name, p),  # type: ignore[misc]
                       45, f"L: a route to {p} through A")
        # Traffic crosses A both ways, IPv6 and IPv4: L -> B's echo service and back.
        link.spawn(link.b, [sys.executable, "-m", "wgcast.lab.echo", "--name", "b",
                            "--port", str(ECHO_PORT)], "echo.log")
        for src, dst in ((L_V6, B_V6), (L_V4, B_V4)):
            wait_until(lambda s=src, d=dst: _echo(lan.name, s, d), 30,  # type: ignore[misc]
                       f"an echo from L ({src}) to B ({dst}) through A")
        # Outside the [[lan]]'s may_originate: refused, never installed, not passed on.
        def refused() -> bool:
            by_reason = link.api("status")["status"]["announcements_refused"]
            assert isinstance(by_reason, dict)
            return f"{l_ll_addr}%{la}" in by_reason.get("not allowed", {})

        wait_until(refused, 30, f"A: {L_BAD} refused")
        assert kernel_route(link.b.name, L_BAD) == ""
        assert kernel_route(link.a.name, L_BAD) == ""
        st = link.api("status")["status"]["lan"]
        assert isinstance(st, list) and st[0]["interface"] == la
        assert [n["address"] for n in st[0]["neighbours"]] == [l_ll_addr]
        assert st[0]["neighbours"][0]["up"]
        # L retracts its prefix: gone in A and, through A, in B.
        lan.run("ip", "addr", "del", L_V6, "dev", "lo")
        ta = wait_until(lambda: kernel_route(link.a.name, L_V6) == "", 30, f"A: {L_V6} gone")
        # (babeld keeps a retracted route as an unreachable one until it expires.)
        tb = wait_until(lambda: f"dev {link.b_if}" not in kernel_route(link.b.name, L_V6), 30,
                        f"B: {L_V6} gone")
        print(f"babeld on the LAN: {L_V6} gone from A {ta:.3f} s, from B {ta + tb:.3f} s "
              "after it left L's lo")
        assert f"dev {la}" in kernel_route(link.a.name, L_V4)
    except BaseException:
        for ns in (link.a, lan, link.b):
            for cmd in (["ip", "-6", "route"], ["ip", "-4", "route"], ["ip", "-6", "neigh"]):
                print(f"---- {ns.name}: {' '.join(cmd)}\n" + ns.run(*cmd, check=False).stdout)
        for ns, port in ((link.b, PORT_B), (lan, PORT_L)):
            print(f"---- babeld dump in {ns.name}\n" + local_query(ns.name, port, "dump"))
        print("---- wgcast routes\n" + str(link.api("routes")))
        for log in ("wgcast.log", "babeld-l.log", "babeld-b.log"):
            print(f"---- {log}\n" + link.log(log))
        raise


BIRD_L = """
router id 10.88.0.2;
protocol device {{ scan time 1; }}
protocol static s6 {{ ipv6; route {l6} blackhole; route {bad} blackhole; }}
protocol static s4 {{ ipv4; route {l4} blackhole; }}
protocol babel b1 {{
  interface "{ifname}" {{ type wired; hello interval 500 ms; }};
  ipv4 {{ import all; export where source = RTS_STATIC; }};
  ipv6 {{ import all; export where source = RTS_STATIC; }};
}}
"""


def test_lan_edge_meets_bird(link: Link, tmp_path: Path) -> None:
    """The same edge with BIRD 2.0 on the LAN: it keeps A as a neighbour on A's multicast
    Hellos (one stream to ff02::1:6), takes IPv4 as AE 1 + Next Hop (`ipv4_next_hop`), and
    learns A's own and B's prefixes; A installs L's through L's link-local address."""
    import shutil

    if shutil.which("bird") is None or shutil.which("birdc") is None:
        pytest.skip("BIRD 2 is not installed (apt-get install bird2)")
    binary = babeld_114()
    if binary is None:
        pytest.skip("babeld 1.14 cannot be built (/work/shared/anchors/build-babeld.sh)")
    lan = make_lan(link)
    link.a.run("ip", "addr", "add", "10.88.0.1/24", "dev", lan.a_if)
    lan.ns.run("ip", "addr", "add", "10.88.0.2/24", "dev", lan.l_if)
    _babeld(link, link.b, "babeld-b", binary, link.b_if, "tunnel", PORT_B,
            ("fd00:b::/48", "10.0.2.0/24"))
    conf, ctl = link.tmp / "bird-l.conf", link.tmp / "bird-l.ctl"
    conf.write_text(BIRD_L.format(l6=L_V6, l4=L_V4, bad=L_BAD, ifname=lan.l_if))
    link.spawn(lan.ns, ["bird", "-f", "-c", str(conf), "-s", str(ctl),
                        "-P", str(link.tmp / "bird-l.pid")], "bird-l.log")
    link.start_wgcast(extra=f"""
[[lan]]
interface = "{lan.a_if}"
may_originate = ["fd00:1a::/48", "10.0.20.0/24"]
ipv4_next_hop = "10.88.0.1"
""")

    def bird_has(prefix: str) -> bool:
        out = subprocess.run(["birdc", "-s", str(ctl), "show", "route", prefix, "primary"],
                             capture_output=True, text=True, timeout=10).stdout
        return any(line.split()[:1] == [prefix] and "[b1 " in line
                   for line in out.splitlines())

    try:
        for p in (L_V6, L_V4):
            wait_until(lambda p=p: f"via {'inet6 ' if '.' in p else ''}{lan.l_ll} dev "  # type: ignore[misc]
                       f"{lan.a_if}" in kernel_route(link.a.name, p), 45,
                       f"A: a route to {p} via L")
        for p in (A_V6, A_V4, B_V6, B_V4):
            wait_until(lambda p=p: bird_has(p), 45, f"L's BIRD: a route to {p}")  # type: ignore[misc]
        for p in (L_V6, L_V4):
            wait_until(lambda p=p: f"dev {link.b_if}" in kernel_route(link.b.name, p),  # type: ignore[misc]
                       45, f"B: a route to {p} through A")
        assert kernel_route(link.a.name, L_BAD) == ""
        subprocess.run(["birdc", "-s", str(ctl), "disable", "s6"], capture_output=True,
                       timeout=10)
        t = wait_until(lambda: kernel_route(link.a.name, L_V6) == "", 30, f"A: {L_V6} gone")
        print(f"BIRD on the LAN: {L_V6} gone from A {t:.3f} s after birdc disable")
        assert f"dev {lan.a_if}" in kernel_route(link.a.name, L_V4)
    except BaseException:
        for log in ("wgcast.log", "bird-l.log"):
            print(f"---- {log}\n" + link.log(log))
        print(subprocess.run(["birdc", "-s", str(ctl), "show", "babel", "neighbors"],
                             capture_output=True, text=True).stdout)
        raise


FRR_DIR = Path("/usr/lib/frr")


def test_lan_edge_meets_frr(link: Link, tmp_path: Path) -> None:
    """The same edge with FRR's babeld on the LAN (`babel wired`, timestamps on): FRR
    keeps A as a neighbour on A's multicast Hellos (with RTT from both ends), takes IPv4
    as AE 1 + Next Hop (`ipv4_next_hop`) and installs A's and B's prefixes through A;
    A installs L's through L's link-local address and passes them to B; what FRR
    redistributes outside `may_originate` is refused; L's prefix going away removes
    A's route (FRR 8.4 sends no retraction: the route expires, 3.5 update intervals)."""
    import pwd
    import re
    import shutil
    import tempfile
    import time

    if not (FRR_DIR / "babeld").exists() or shutil.which("vtysh") is None:
        pytest.skip("FRR is not installed (apt-get install frr)")
    try:
        pwd.getpwnam("frr")
    except KeyError:
        pytest.skip("FRR's user frr does not exist (apt-get install frr creates it)")
    binary = babeld_114()
    if binary is None:
        pytest.skip("babeld 1.14 cannot be built (/work/shared/anchors/build-babeld.sh)")
    lan = make_lan(link)
    link.a.run("ip", "addr", "add", "10.88.0.1/24", "dev", lan.a_if)
    lan.ns.run("ip", "addr", "add", "10.88.0.2/24", "dev", lan.l_if)
    _babeld(link, link.b, "babeld-b", binary, link.b_if, "tunnel", PORT_B,
            ("fd00:b::/48", "10.0.2.0/24"))
    # FRR drops to its own user (root is not in its vty group): a directory it can use.
    run = Path(tempfile.mkdtemp(prefix="wgcast-frr-"))
    link.cleanup.append(lambda: shutil.rmtree(run, ignore_errors=True))
    (run / "zebra.conf").write_text("hostname l\n")
    (run / "babeld.conf").write_text(f"""hostname l
debug babel all
interface {lan.l_if}
 babel wired
 babel hello-interval 500
 babel update-interval 2000
 babel enable-timestamps
!
router babel
 network {lan.l_if}
 redistribute ipv4 connected
 redistribute ipv6 connected
!
""")
    shutil.chown(run, "frr", "frr")
    for f in run.iterdir():
        shutil.chown(f, "frr", "frr")
    common = ["-u", "frr", "-g", "frr", "-P", "0", "--vty_socket", str(run),
              "-z", str(run / "zserv.api"), "--log", f"file:{run}/frr.log",
              "--log-level", "debug"]
    link.spawn(lan.ns, [str(FRR_DIR / "zebra"), "-f", str(run / "zebra.conf"),
                        "-i", str(run / "zebra.pid"), *common], "frr.log")
    wait_until(lambda: (run / "zserv.api").exists(), 60, "zebra's socket")
    link.spawn(lan.ns, [str(FRR_DIR / "babeld"), "-f", str(run / "babeld.conf"),
                        "-i", str(run / "babeld.pid"), *common], "frr.log")

    def vtysh(cmd: str) -> str:
        args = [a for line in cmd.split("\n") for a in ("-c", line)]
        return subprocess.run(["ip", "netns", "exec", lan.ns.name, "vtysh", "--vty_socket",
                               str(run), "-d", "babeld", *args],
                              capture_output=True, text=True, timeout=10).stdout

    def kick() -> None:
        # FRR 8.4's babeld takes the interface down for good when its re-join of
        # ff02::1:6 fails during zebra's start-up dump (see docs/interop.md): once the
        # dump is over, re-enable it.
        vtysh(f"configure terminal\nrouter babel\nno network {lan.l_if}\n"
              f"network {lan.l_if}\nend")


    def frr_neighbour() -> tuple[str, float] | None:
        for line in vtysh("show babel neighbor").splitlines():
            m = re.search(r"Neighbour (\S+) dev \S+ reach ([0-9a-f]{4}).* rtt ([0-9.]+)", line)
            if m and m.group(1) == lan.a_ll:
                return m.group(2), float(m.group(3))
        return None

    frr_log = run / "frr.log"
    try:
        # (The veth is up before FRR starts: zebra's dump says "interface add", and
        # babeld says its ID once the dump is over.)
        wait_until(lambda: frr_log.exists() and "My ID is" in
                   frr_log.read_text(errors="replace"), 60,
                   "FRR's babeld to be done with zebra's interface dump")
        kick()
        link.start_wgcast(extra=f"""
[[lan]]
interface = "{lan.a_if}"
may_originate = ["fd00:1a::/48", "10.0.20.0/24"]
ipv4_next_hop = "10.88.0.1"
""")
        deadline = time.monotonic() + 60
        while True:  # adjacency from FRR's side; kicked every 5 s (bounded: 60 s)
            try:
                wait_until(lambda: (nb := frr_neighbour()) is not None and nb[0] != "0000",
                           5, "FRR: A as a neighbour")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                kick()
        for p in (L_V6, L_V4):
            wait_until(lambda p=p: f"via {'inet6 ' if '.' in p else ''}{lan.l_ll} dev "  # type: ignore[misc]
                       f"{lan.a_if}" in kernel_route(link.a.name, p), 45,
                       f"A: a route to {p} via L")
        for p in (A_V6, A_V4, B_V6, B_V4):
            want = "via 10.88.0.1" if "." in p else f"via {lan.a_ll}"
            wait_until(lambda p=p, want=want: want in  # type: ignore[misc]
                       kernel_route(lan.ns.name, p), 45, f"L (FRR): a route to {p} via A")
        for p in (L_V6, L_V4):
            wait_until(lambda p=p: f"dev {link.b_if}" in kernel_route(link.b.name, p),  # type: ignore[misc]
                       45, f"B: a route to {p} through A")
        # RTT both ends: FRR from our Hello timestamps and IHU echoes, A from FRR's.
        wait_until(lambda: (nb := frr_neighbour()) is not None and nb[1] > 0, 30,
                   "FRR: an RTT to A")
        wait_until(lambda: link.api("status")["status"]["lan"][0]["neighbours"][0]
                   .get("rtt_ms") is not None, 30, "A: an RTT to L")
        assert kernel_route(link.a.name, L_BAD) == ""
        assert kernel_route(link.b.name, L_BAD) == ""
        lan.ns.run("ip", "addr", "del", L_V6, "dev", "lo")
        t = wait_until(lambda: kernel_route(link.a.name, L_V6) == "", 30, f"A: {L_V6} gone")
        print(f"FRR on the LAN: {L_V6} gone from A {t:.2f} s after it left L's lo")
        assert f"dev {lan.a_if}" in kernel_route(link.a.name, L_V4)
    except BaseException:
        for log in ("wgcast.log", "frr.log"):
            print(f"---- {log}\n" + link.log(log))
        print(frr_log.read_text(errors="replace")[-3000:] if frr_log.exists() else "")
        print(vtysh("show babel neighbor"))
        print(vtysh("show babel route"))
        raise
