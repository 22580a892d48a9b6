"""wgcast <-> babeld 1.14, Debian's babeld 1.12.1, BIRD 2 (Babel) and FRR (babeld).

One test per implementation, over a real WireGuard link (see conftest.py): adjacency both
ways, IPv6 and IPv4 prefixes both ways (IPv4 from wgcast as v4-via-v6), RTT where the
peer supports timestamps, anycast (one instance on each side: each side prefers its own,
and when one goes the other side moves to the remaining one), retraction both ways with
the time from the retraction to the route gone on the other side. The figures and the
phases passed (or the one that failed) are appended to the results file
(bench/interop_retraction.py builds its table from them). A binary that cannot be
installed or built skips its test with the reason.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from interop_lab import (
    A_ANY4,
    A_ANY6,
    A_LINK4,
    A_V4,
    A_V6,
    B_V4,
    B_V6,
    C_V4,
    C_V6,
    Link,
    a_control,
    add_ipv4_link,
    babeld_114,
    kernel_route,
    local_query,
    record,
    wait_until,
)

pytestmark = pytest.mark.netns

BABELD_PORT = 33123


@dataclass
class Peer:
    """How to run one implementation in namespace B and observe it."""

    name: str
    start: Callable[[Link], None]
    #: Does B have a route to `prefix` learned from A?
    has_route: Callable[[Link, str], bool]
    #: Withdraw B's own `prefix` the implementation's own way.
    retract: Callable[[Link, str], None]
    #: B's RTT to A in ms, None when the implementation does not measure it.
    rtt: Callable[[Link], float | None] | None
    #: B sees A as a neighbour.
    adjacent: Callable[[Link], bool]
    #: The peer needs IPv4 next hops (no v4-via-v6): both ends get an IPv4 address on
    #: the link and wgcast is configured with `ipv4_next_hop`.
    ipv4_link: bool = False
    #: Called every few seconds while the adjacency is not up (FRR's start-up race).
    kick: Callable[[Link], None] | None = None


# ---------------------------------------------------------------- babeld


def _babeld_start(binary: str) -> Callable[[Link], None]:
    def start(link: Link) -> None:
        conf = link.tmp / "babeld.conf"
        conf.write_text(f"""
interface {link.b_if} type tunnel hello-interval 0.5 enable-timestamps true
redistribute local ip fd00:b::/48 le 128 allow
redistribute local ip 10.0.2.0/24 le 32 allow
redistribute local ip fd00:cc::/48 le 128 allow
redistribute local ip 10.0.12.0/24 le 32 allow
redistribute local deny
redistribute deny
""")
        link.spawn(link.b, [binary, "-c", str(conf), "-I", str(link.tmp / "babeld.pid"),
                            "-S", str(link.tmp / "babeld.state"), "-g", str(BABELD_PORT),
                            "-d", "1"], "babeld.log")
    return start


def _kernel_has(link: Link, prefix: str) -> bool:
    return "dev " + link.b_if in kernel_route(link.b.name, prefix)


def _addr_del(link: Link, prefix: str) -> None:
    link.b.run("ip", "addr", "del", prefix, "dev", "lo")


def _babeld_dump(link: Link) -> str:
    return local_query(link.b.name, BABELD_PORT, "dump")


def _babeld_rtt(link: Link) -> float | None:
    m = re.search(r"neighbour .* rtt ([0-9.]+)", _babeld_dump(link))
    return float(m.group(1)) if m else None


def _babeld_adjacent(link: Link) -> bool:
    ctrl = a_control(link)
    for line in _babeld_dump(link).splitlines():
        m = re.search(r"neighbour .*address (\S+) .* reach ([0-9a-f]{4}) ", line)
        if m and m.group(1) == ctrl and m.group(2) != "0000":
            return True
    return False


def babeld_peer(name: str, binary: str) -> Peer:
    return Peer(name, _babeld_start(binary), _kernel_has, _addr_del, _babeld_rtt,
                _babeld_adjacent)


# ---------------------------------------------------------------- BIRD 2


def _bird_start(link: Link) -> None:
    conf = link.tmp / "bird.conf"
    conf.write_text(f"""
router id 10.0.2.1;
protocol device {{ scan time 1; }}
protocol static s6 {{ ipv6; route {B_V6} blackhole; }}
protocol static s4 {{ ipv4; route {B_V4} blackhole; }}
protocol static sc6 {{ ipv6; route {C_V6} blackhole; }}
protocol static sc4 {{ ipv4; route {C_V4} blackhole; }}
protocol babel b1 {{
  interface "{link.b_if}" {{ type wired; hello interval 500 ms; }};
  ipv4 {{ import all; export where source = RTS_STATIC; }};
  ipv6 {{ import all; export where source = RTS_STATIC; }};
}}
""")
    link.spawn(link.b, ["bird", "-f", "-c", str(conf), "-s", str(link.tmp / "bird.ctl"),
                        "-P", str(link.tmp / "bird.pid")], "bird.log")


def _birdc(link: Link, *cmd: str) -> str:
    r = subprocess.run(["birdc", "-s", str(link.tmp / "bird.ctl"), *cmd],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


def _bird_has(link: Link, prefix: str) -> bool:
    """BIRD's best route to `prefix` is the one learned by Babel (b1): a static route of
    its own (its anycast instance) wins while it is there (preference 200 > 130)."""
    out = _birdc(link, "show", "route", prefix, "primary")
    return any(line.split()[:1] == [prefix] and "[b1 " in line for line in out.splitlines())


_BIRD_STATIC = {B_V6: "s6", B_V4: "s4", C_V6: "sc6", C_V4: "sc4"}


def _bird_retract(link: Link, prefix: str) -> None:
    _birdc(link, "disable", _BIRD_STATIC[prefix])


def _bird_adjacent(link: Link) -> bool:
    return a_control(link) in _birdc(link, "show", "babel", "neighbors", "b1")


BIRD = Peer("bird-2.0.12", _bird_start, _bird_has, _bird_retract, None, _bird_adjacent,
            ipv4_link=True)


# ---------------------------------------------------------------- FRR

FRR_DIR = Path("/usr/lib/frr")


def _frr_start(link: Link) -> None:
    # FRR drops to its own user (root is not in its vty group): a directory it can use.
    run = Path(tempfile.mkdtemp(prefix="wgcast-frr-"))
    link.cleanup.append(lambda: shutil.rmtree(run, ignore_errors=True))
    link.frr_dir = run
    (run / "zebra.conf").write_text("hostname b\n")
    (run / "babeld.conf").write_text(f"""hostname b
debug babel all
interface {link.b_if}
 babel wired
 babel hello-interval 500
 babel update-interval 2000
 babel enable-timestamps
!
router babel
 network {link.b_if}
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
    link.spawn(link.b, [str(FRR_DIR / "zebra"), "-f", str(run / "zebra.conf"),
                        "-i", str(run / "zebra.pid"), *common], "frr.log")
    wait_until(lambda: (run / "zserv.api").exists(), 60, "zebra's socket")
    link.spawn(link.b, [str(FRR_DIR / "babeld"), "-f", str(run / "babeld.conf"),
                        "-i", str(run / "babeld.pid"), *common], "frr.log")
    # FRR 8.4's babeld re-joins ff02::1:6 on every interface event; the join fails with
    # EADDRINUSE when the group is already joined, and it then takes the interface down
    # for good (no Hello is ever sent) if that was the last event of zebra's start-up
    # dump (the "interface up"). Once that dump is over, re-enable the interface.
    log = run / "frr.log"
    wait_until(lambda: log.exists() and "receive a 'interface up'" in log.read_text(), 60,
               "FRR's babeld to hear zebra's interface dump")
    time.sleep(0.5)  # the rest of the dump, if any (bounded; the test kicks again)
    _frr_kick(link)


def _frr_kick(link: Link) -> None:
    _vtysh(link, f"configure terminal\nrouter babel\nno network {link.b_if}\n"
                 f"network {link.b_if}\nend")


def _vtysh(link: Link, cmd: str) -> str:
    args = [a for line in cmd.split("\n") for a in ("-c", line)]
    r = subprocess.run(["ip", "netns", "exec", link.b.name, "vtysh", "--vty_socket",
                        str(link.frr_dir), "-d", "babeld", *args],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


def _frr_adjacent(link: Link) -> bool:
    ctrl = a_control(link)
    for line in _vtysh(link, "show babel neighbor").splitlines():
        m = re.search(r"Neighbour (\S+) dev \S+ reach ([0-9a-f]{4})", line)
        if m and m.group(1) == ctrl and m.group(2) != "0000":
            return True
    return False


def _frr_rtt(link: Link) -> float | None:
    m = re.search(r"rtt ([0-9.]+)", _vtysh(link, "show babel neighbor"))
    return float(m.group(1)) if m and float(m.group(1)) > 0 else None


FRR = Peer("frr-babeld", _frr_start, _kernel_has, _addr_del, _frr_rtt, _frr_adjacent,
           ipv4_link=True, kick=_frr_kick)


# ---------------------------------------------------------------- the tests


class Phases:
    """Which phases of a run passed, and the one that failed (recorded either way)."""

    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: str | None = None

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.failed = name
            raise
        self.passed.append(name)


def _a_via_b(link: Link, prefix: str) -> bool:
    """wgcast's kernel route to `prefix` goes through the tunnel (to B)."""
    return "dev " + link.a_if in kernel_route(link.a.name, prefix)


def _wgcast_route(link: Link, prefix: str) -> dict[str, Any]:
    """wgcast's selected route to `prefix` (`wgcast routes`), {} if none."""
    routes = link.api("routes")["routes"]
    assert isinstance(routes, list)
    return next((dict(r) for r in routes if r["prefix"] == prefix), {"routes": []})


def run_interop(link: Link, peer: Peer) -> dict[str, object]:
    from wgcast.client import Client

    figures: dict[str, object] = {}
    phase = Phases()
    try:
        with phase("start"):
            if peer.ipv4_link:
                add_ipv4_link(link)
            peer.start(link)
            link.start_wgcast(A_LINK4 if peer.ipv4_link else None)
        with Client(link.a_sock) as member:
            member.join(A_ANY6, A_ANY4, C_V6, C_V4)
            with phase("adjacency"):
                for attempt in range(4):
                    try:
                        wait_until(lambda: link.wgcast_peer()["up"] and peer.adjacent(link),
                                   8 if peer.kick is not None else 60,
                                   f"{peer.name} and wgcast: neighbours both ways")
                        break
                    except AssertionError:
                        if peer.kick is None or attempt == 3:
                            raise
                        peer.kick(link)
            # IPv6 and IPv4 both ways (A's v4 goes as v4-via-v6 or AE 1 + Next Hop).
            for fam, a_pfx, b_pfx in (("v6", (A_V6, A_ANY6), B_V6), ("v4", (A_V4, A_ANY4), B_V4)):
                with phase(f"{fam} both ways"):
                    for prefix in a_pfx:
                        wait_until(lambda p=prefix: peer.has_route(link, p),  # type: ignore[misc]
                                   45, f"{peer.name}: a route to {prefix}")
                    wait_until(lambda p=b_pfx: _a_via_b(link, p),  # type: ignore[misc]
                               45, f"wgcast: a route to {b_pfx}")
            # A signed what it originates (OriginSig sub-TLVs, which the peer ignored).
            sg = link.api("status")["status"]["signing"]
            assert sg["on"] and sg["signed"] > 0 and sg["problem"] is None, sg
            # Nothing outside the peer's may_originate (FRR redistributes the underlay's
            # connected subnet too): never routed into the tunnel.
            assert "dev " + link.a_if not in kernel_route(link.a.name, "192.168.77.0/24")
            # RTT where the peer measures it; wgcast measures it from the peer's stamps.
            if peer.rtt is not None:
                with phase("rtt"):
                    wait_until(lambda: peer.rtt(link) is not None, 20,  # type: ignore[misc]
                               f"{peer.name}: an RTT")
                    figures["peer_rtt_ms"] = peer.rtt(link)
                    wait_until(lambda: link.wgcast_peer()["rtt_ms"] is not None, 20,
                               "wgcast: an RTT to the peer")
                    figures["wgcast_rtt_ms"] = link.wgcast_peer()["rtt_ms"]
            with phase("anycast"):
                anycast(link, peer, member, figures)
            # Retraction A -> B: each anycast group is left (the leave returns once the
            # peer acked the retraction); then the time until the peer's route is gone.
            with phase("retraction"):
                for prefix in (A_ANY6, A_ANY4):
                    t0 = time.monotonic()
                    member.leave(prefix, all=True)
                    wait_until(lambda p=prefix: not peer.has_route(link, p), 20,  # type: ignore[misc]
                               f"{peer.name}: {prefix} gone")
                    fam = "v6" if ":" in prefix else "v4"
                    figures[f"retract_wgcast_to_peer_{fam}_s"] = round(time.monotonic() - t0, 3)
                # Retraction B -> A: the peer withdraws its own prefixes its own way.
                for prefix in (B_V6, B_V4):
                    t0 = time.monotonic()
                    peer.retract(link, prefix)
                    wait_until(lambda p=prefix: kernel_route(link.a.name, p) == "", 60,  # type: ignore[misc]
                               f"wgcast: {prefix} gone")
                    fam = "v6" if ":" in prefix else "v4"
                    figures[f"retract_peer_to_wgcast_{fam}_s"] = round(time.monotonic() - t0, 3)
                # Still neighbours; A's own routes still there.
                assert link.wgcast_peer()["up"]
                assert peer.has_route(link, A_V6) and peer.has_route(link, A_V4)
    except BaseException:
        record(peer.name, passed=phase.passed, failed=phase.failed, **figures)
        print("---- wgcast.log\n" + link.log("wgcast.log"))
        for log in ("babeld.log", "bird.log", "frr.log"):
            if (link.tmp / log).exists():
                print(f"---- {log}\n" + link.log(log))
        raise
    record(peer.name, passed=phase.passed, failed=None, **figures)
    print(peer.name, figures)
    return figures


def anycast(link: Link, peer: Peer, member: object, figures: dict[str, object]) -> None:
    """One instance of C_V6 / C_V4 on each side. Each side prefers its own; when A's
    goes (the group is left), A moves to B's; A's comes back; when B's goes (the peer's
    own way), B moves to A's. The two moves are timed (figures anycast_*_s)."""
    from wgcast.client import Client

    assert isinstance(member, Client)
    both = (C_V6, C_V4)
    for c in both:
        # wgcast knows B's instance too (so its preference is a choice, not a lack).
        wait_until(lambda p=c: any(r["neighbour"] == "b"  # type: ignore[misc]
                                   for r in _wgcast_route(link, p)["routes"]),
                   45, f"wgcast: B's route to {c} known")
        assert _wgcast_route(link, c)["origin"] == "local", _wgcast_route(link, c)
        assert not _a_via_b(link, c)
        assert not peer.has_route(link, c), f"{peer.name} prefers wgcast's {c} to its own"
    for c in both:
        fam = "v6" if ":" in c else "v4"
        t0 = time.monotonic()
        member.leave(c, all=True)
        wait_until(lambda p=c: _a_via_b(link, p), 20,  # type: ignore[misc]
                   f"wgcast: {c} moved to B's instance")
        figures[f"anycast_wgcast_moves_{fam}_s"] = round(time.monotonic() - t0, 3)
        assert not peer.has_route(link, c), f"{peer.name} left its own {c}"
    member.join(*both)
    for c in both:
        wait_until(lambda p=c: not _a_via_b(link, p), 20,  # type: ignore[misc]
                   f"wgcast: back to its own {c}")
    for c in both:
        fam = "v6" if ":" in c else "v4"
        t0 = time.monotonic()
        peer.retract(link, c)
        wait_until(lambda p=c: peer.has_route(link, p), 60,  # type: ignore[misc]
                   f"{peer.name}: {c} moved to wgcast's instance")
        figures[f"anycast_peer_moves_{fam}_s"] = round(time.monotonic() - t0, 3)
        assert not _a_via_b(link, c), f"wgcast left its own {c}"


def test_babeld_1_14(link: Link) -> None:
    binary = babeld_114()
    if binary is None:
        pytest.skip("babeld 1.14 cannot be built (/work/shared/anchors/build-babeld.sh)")
    run_interop(link, babeld_peer("babeld-1.14", binary))


def test_babeld_debian(link: Link) -> None:
    if not os.path.exists("/usr/sbin/babeld"):
        pytest.skip("Debian's babeld is not installed (apt-get install babeld)")
    run_interop(link, babeld_peer("babeld-1.12.1", "/usr/sbin/babeld"))



def test_bird(link: Link) -> None:
    if shutil.which("bird") is None or shutil.which("birdc") is None:
        pytest.skip("BIRD 2 is not installed (apt-get install bird2)")
    run_interop(link, BIRD)


def test_frr(link: Link) -> None:
    if not (FRR_DIR / "babeld").exists() or shutil.which("vtysh") is None:
        pytest.skip("FRR is not installed (apt-get install frr)")
    try:
        pwd.getpwnam("frr")
    except KeyError:
        pytest.skip("FRR's user frr does not exist (apt-get install frr creates it)")
    run_interop(link, FRR)


@pytest.mark.parametrize("which", ["1.14", "1.12.1"])
def test_restart_hold_reaches_babeld(link: Link, which: str) -> None:
    """A planned stop (SIGTERM) ends with a hold Hello promising the next Hello within
    restart_hold / dead; babeld hears it (a multicast Hello) and keeps wgcast and its
    routes: the route to wgcast's own address is still there after half the hold
    (without the hold babeld drops it within a few of its 0.2 s Hello intervals)."""
    binary = babeld_114() if which == "1.14" else "/usr/sbin/babeld"
    if binary is None or not os.path.exists(binary):
        pytest.skip(f"babeld {which} is not available")
    peer = babeld_peer(f"babeld-{which}", binary)
    peer.start(link)
    link.start_wgcast()
    wait_until(lambda: peer.has_route(link, A_V6), 20, "babeld: a route to wgcast")
    assert link.wgcast is not None
    link.wgcast.send_signal(signal.SIGTERM)
    link.wgcast.wait(timeout=15)
    t_stop = time.monotonic()
    hold = 10.0  # timers.restart_hold's default
    while time.monotonic() - t_stop < hold / 2:
        assert peer.has_route(link, A_V6), \
            f"babeld dropped wgcast's route {time.monotonic() - t_stop:.2f}s after the stop"
        time.sleep(0.1)
    # ... and it does go once the hold has run out.
    gone = wait_until(lambda: not peer.has_route(link, A_V6), 3 * hold,
                      "babeld: wgcast's route gone after the hold")
    record(f"babeld-{which}", restart_hold_route_kept_s=round(hold / 2 + gone, 2))
