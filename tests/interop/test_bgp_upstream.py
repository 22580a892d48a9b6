"""Upstream by BGP: an edge node's BIRD announces the mesh's anycast prefixes.

    B (babeld 1.14, an anycast instance) ==WG== A (wgcast + BIRD "edge") --veth-- U (BIRD "up")

The mesh's routes are in A's kernel with protocol 152 (wgcast's). A's BIRD learns them
from the kernel (`protocol kernel` with `learn`, filtered on `krt_source = 152` and the
anycast space) and the groups A serves itself from `lo` (`protocol direct`), and
announces both by eBGP to U. When the mesh withdraws a prefix (B's instance goes, A
leaves its group) U loses it. The time from the withdrawal in the mesh to U's route
gone is recorded (results file, impl "bird-bgp-upstream").
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from interop_lab import (
    A_ANY4,
    A_ANY6,
    C_V4,
    C_V6,
    Link,
    babeld_114,
    kernel_route,
    record,
    wait_until,
)

from netns.conftest import make_netns, unique_ifname

pytestmark = pytest.mark.netns

BABELD_PORT = 33141
E4, U4, E6, U6 = "10.77.0.1", "10.77.0.2", "fd00:77::1", "fd00:77::2"

#: The edge's BIRD: the mesh's anycast space, as the edge's `anycast` (interop_lab).
EDGE_CONF = """
router id {e4};
define MESH_ANYCAST4 = [ 10.0.11.0/24+, 10.0.12.0/24+ ];
define MESH_ANYCAST6 = [ fd00:aa::/48+, fd00:cc::/48+ ];

protocol device {{ scan time 1; }}

# Routes wgcast installed (kernel protocol 152) inside the anycast space. `learn`: take
# routes other daemons put in the kernel; BIRD installs nothing (export none).
protocol kernel mesh4 {{
  scan time 1;
  learn;
  ipv4 {{ import where krt_source = 152 && net ~ MESH_ANYCAST4; export none; }};
}}
protocol kernel mesh6 {{
  scan time 1;
  learn;
  ipv6 {{ import where krt_source = 152 && net ~ MESH_ANYCAST6; export none; }};
}}
# Groups this node serves itself: wgcast puts their address on lo while it serves them.
protocol direct served {{
  interface "lo";
  ipv4 {{ import where net ~ MESH_ANYCAST4; }};
  ipv6 {{ import where net ~ MESH_ANYCAST6; }};
}}

protocol bgp up4 {{
  local {e4} as 65001;
  neighbor {u4} as 65002;
  ipv4 {{ import none; export where net ~ MESH_ANYCAST4; }};
}}
protocol bgp up6 {{
  local {e6} as 65001;
  neighbor {u6} as 65002;
  ipv6 {{ import none; export where net ~ MESH_ANYCAST6; }};
}}
"""

UP_CONF = """
router id {u4};
protocol device {{ scan time 1; }}
protocol bgp edge4 {{
  local {u4} as 65002;
  neighbor {e4} as 65001;
  ipv4 {{ import all; export none; }};
}}
protocol bgp edge6 {{
  local {u6} as 65002;
  neighbor {e6} as 65001;
  ipv6 {{ import all; export none; }};
}}
"""


def _birdc(sock: Path, *cmd: str) -> str:
    r = subprocess.run(["birdc", "-s", str(sock), *cmd], capture_output=True, text=True,
                       timeout=10)
    return r.stdout


def _has(sock: Path, prefix: str, proto: str) -> bool:
    """BIRD (socket `sock`) has a route to `prefix` from protocol `proto`."""
    out = _birdc(sock, "show", "route", prefix)
    return any(line.split()[:1] == [prefix] and f"[{proto} " in line
               for line in out.splitlines())


def test_edge_bird_announces_the_mesh_by_bgp(link: Link, tmp_path: Path) -> None:
    import shutil

    if shutil.which("bird") is None or shutil.which("birdc") is None:
        pytest.skip("BIRD 2 is not installed (apt-get install bird2)")
    binary = babeld_114()
    if binary is None:
        pytest.skip("babeld 1.14 cannot be built (/work/shared/anchors/build-babeld.sh)")
    up = make_netns()
    link.cleanup.append(up.close)
    ea, eu = unique_ifname("eA"), unique_ifname("eU")
    subprocess.run(["ip", "link", "add", ea, "netns", link.a.name, "type", "veth", "peer",
                    "name", eu, "netns", up.name], check=True, capture_output=True)
    for ns, ifname, a4, a6 in ((link.a, ea, E4, E6), (up, eu, U4, U6)):
        ns.run("ip", "addr", "add", f"{a4}/24", "dev", ifname)
        ns.run("ip", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
        ns.run("ip", "link", "set", ifname, "up")
    # B: one instance of the anycast prefixes (on its lo, see interop_lab), announced.
    conf = link.tmp / "babeld-b.conf"
    conf.write_text(f"interface {link.b_if} type tunnel hello-interval 0.5\n"
                    "redistribute local ip fd00:cc::/48 le 128 allow\n"
                    "redistribute local ip 10.0.12.0/24 le 32 allow\n"
                    "redistribute local deny\nredistribute deny\n")
    link.spawn(link.b, [binary, "-c", str(conf), "-I", str(link.tmp / "babeld-b.pid"),
                        "-S", str(link.tmp / "babeld-b.state"), "-g", str(BABELD_PORT)],
               "babeld-b.log")
    link.start_wgcast()
    # wgcast serves C_V6 / C_V4 too when joined; here only B does: A routes to B's.
    socks = {}
    for ns, name, text in ((link.a, "edge", EDGE_CONF), (up, "up", UP_CONF)):
        (link.tmp / f"{name}.conf").write_text(text.format(e4=E4, u4=U4, e6=E6, u6=U6))
        socks[name] = link.tmp / f"{name}.ctl"
        link.spawn(ns, ["bird", "-f", "-c", str(link.tmp / f"{name}.conf"),
                        "-s", str(socks[name]), "-P", str(link.tmp / f"{name}.pid")],
                   f"bird-{name}.log")
    try:
        from wgcast.client import Client

        # The mesh's route (B's instance) in A's kernel, protocol 152 ...
        for c in (C_V6, C_V4):
            wait_until(lambda c=c: "proto 152" in kernel_route(link.a.name, c)  # type: ignore[misc]
                       and f"dev {link.a_if}" in kernel_route(link.a.name, c), 45,
                       f"A: wgcast's route to {c}")
        # ... learned by the edge's BIRD from the kernel and announced to U by BGP.
        for c in (C_V6, C_V4):
            wait_until(lambda c=c: _has(socks["edge"], c,  # type: ignore[misc]
                                        "mesh6" if ":" in c else "mesh4"),
                       30, f"edge BIRD: {c} from the kernel")
            wait_until(lambda c=c: _has(socks["up"], c, "edge6" if ":" in c else "edge4"),  # type: ignore[misc]
                       60, f"U: {c} by BGP")
        # A group A serves itself: its address on lo, announced too.
        with Client(link.a_sock) as member:
            member.join(A_ANY6, A_ANY4)
            for c in (A_ANY6, A_ANY4):
                wait_until(lambda c=c: _has(socks["up"], c,  # type: ignore[misc]
                                            "edge6" if ":" in c else "edge4"),
                           60, f"U: A's own group {c} by BGP")
            t0 = time.monotonic()
            member.leave(A_ANY6, all=True)
            wait_until(lambda: not _has(socks["up"], A_ANY6, "edge6"), 30,
                       f"U: {A_ANY6} withdrawn")
            left = time.monotonic() - t0
        # Nothing else leaks: A's own unicast address, B's, the underlay.
        assert "10.0.2.1" not in _birdc(socks["up"], "show", "route")
        assert "fd00:a::1" not in _birdc(socks["up"], "show", "route")
        # The mesh withdraws B's instance (babeld retracts it): gone at U.
        figures: dict[str, float] = {"leave_to_upstream_withdrawn_v6_s": round(left, 3)}
        for c in (C_V6, C_V4):
            fam = "v6" if ":" in c else "v4"
            t0 = time.monotonic()
            link.b.run("ip", "addr", "del", c, "dev", "lo")
            wait_until(lambda c=c: f"dev {link.a_if}" not in kernel_route(link.a.name, c),  # type: ignore[misc]
                       30, f"A: {c} gone from the kernel")
            t_kernel = time.monotonic() - t0
            wait_until(lambda c=c: not _has(socks["up"], c,  # type: ignore[misc]
                                            "edge6" if ":" in c else "edge4"),
                       30, f"U: {c} withdrawn")
            figures[f"mesh_retraction_to_kernel_{fam}_s"] = round(t_kernel, 3)
            figures[f"mesh_retraction_to_upstream_withdrawn_{fam}_s"] = \
                round(time.monotonic() - t0, 3)
        record("bird-bgp-upstream", **figures)
        print(figures)
    except BaseException:
        for name in ("edge", "up"):
            print(f"---- {name}: show route\n" + _birdc(socks[name], "show", "route"))
            print(f"---- {name}: show protocols\n" + _birdc(socks[name], "show", "protocols"))
        for log in ("wgcast.log", "bird-edge.log", "bird-up.log", "babeld-b.log"):
            print(f"---- {log}\n" + link.log(log))
        print(subprocess.run(["ip", "-n", link.a.name, "route"], capture_output=True,
                             text=True).stdout)
        raise
