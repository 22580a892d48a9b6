"""The move-hold device (dataplane/move_hold.py) against the real kernel: packets routed
to its TUN are queued, then re-injected and forwarded on once the route points elsewhere.

Namespace A sends UDP to an address of namespace B while A's route to it points at the
hold device; B must receive nothing then, and every datagram, in order, after A's route
moves to the veth and the queue is released. Locally generated packets are the hard case
(they carry A's own source address back into A's kernel), IPv6 and IPv4.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from wgcast.dataplane.move_hold import move_hold_ifname, packet_destination

if TYPE_CHECKING:
    from conftest import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

COUNT = 50

SENDER = textwrap.dedent("""
    import asyncio, ipaddress, json, socket, subprocess, sys, time
    from wgcast.dataplane.move_hold import MoveHoldQueue

    family, dst, prefix, gw = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    count = int(sys.argv[5])
    ip = ["ip", "-6"] if family == "6" else ["ip", "-4"]

    async def main():
        q = MoveHoldQueue("hq-test-h")
        q.open()
        subprocess.run(["ip", "link", "set", q.ifname, "up"], check=True)
        p = ipaddress.ip_network(prefix)
        q.hold(p)
        subprocess.run([*ip, "route", "replace", prefix, "dev", q.ifname], check=True)
        fam = socket.AF_INET6 if family == "6" else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        for i in range(count):
            s.sendto(str(i).encode(), (dst, 9000))
        deadline = time.monotonic() + 5
        while q.stats.held < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        held = q.stats.held
        subprocess.run([*ip, "route", "replace", prefix, "via", gw], check=True)
        t_release = time.monotonic()
        released = q.release(p)
        await asyncio.sleep(0.2)
        q.close()
        print(json.dumps({"families": sorted(q.families), "held": held,
                          "released": released, "t_release": t_release,
                          "stats": {"dropped_full": q.stats.dropped_full,
                                    "unmatched": q.stats.unmatched}}))

    asyncio.run(main())
""")

LISTENER = textwrap.dedent("""
    import json, socket, sys, time
    fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((sys.argv[2], 9000))
    s.settimeout(0.2)
    print("ready", flush=True)
    got = []
    deadline = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline and len(got) < int(sys.argv[4]):
        try:
            data = s.recv(100)
        except TimeoutError:
            continue
        got.append([int(data), time.monotonic()])
    print(json.dumps(got), flush=True)
""")


def test_packet_destination() -> None:
    v6 = bytes([0x60]) + bytes(23) + bytes.fromhex("fd99" + "00" * 13 + "05")
    assert packet_destination(v6) == (6, int.from_bytes(v6[24:40], "big"))
    v4 = bytes([0x45]) + bytes(15) + bytes([10, 99, 0, 5])
    assert packet_destination(v4) == (4, (10 << 24) | (99 << 16) | 5)
    assert packet_destination(b"") is None
    assert packet_destination(v6[:39]) is None  # truncated
    assert packet_destination(bytes([0x50]) + bytes(60)) is None  # not IPv4/IPv6


def test_hold_ifname_fits() -> None:
    assert move_hold_ifname("wg0") == "wg0-h"
    assert len(move_hold_ifname("a" * 15)) == 15


@pytest.mark.parametrize("family", ["6", "4"])
def test_held_packets_are_forwarded_after_the_move(netns: Netns, family: str) -> None:
    from conftest import make_netns

    peer = make_netns()
    try:
        a, b = f"vha{family}", f"vhb{family}"
        subprocess.run(["ip", "link", "add", a, "netns", netns.name, "type", "veth",
                        "peer", "name", b, "netns", peer.name], check=True, timeout=10)
        if family == "6":
            dst, prefix, gw = "fd99::5", "fd99::/64", "fd10::2"
            netns.run("ip", "addr", "add", "fd10::1/64", "dev", a, "nodad")
            peer.run("ip", "addr", "add", "fd10::2/64", "dev", b, "nodad")
            peer.run("ip", "addr", "add", f"{dst}/128", "dev", "lo")
            netns.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        else:
            dst, prefix, gw = "10.99.0.5", "10.99.0.0/24", "10.10.0.2"
            netns.run("ip", "addr", "add", "10.10.0.1/24", "dev", a)
            peer.run("ip", "addr", "add", "10.10.0.2/24", "dev", b)
            peer.run("ip", "addr", "add", f"{dst}/32", "dev", "lo")
            # Only the hold device forwards: it turns IPv4 forwarding on for itself.
        netns.run("ip", "link", "set", a, "up")
        peer.run("ip", "link", "set", b, "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", peer.name, sys.executable, "-c", LISTENER, family, dst,
             "15", str(COUNT)], stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == "ready"
            sender = subprocess.run(
                ["ip", "netns", "exec", netns.name, sys.executable, "-c", SENDER, family, dst,
                 prefix, gw, str(COUNT)], capture_output=True, text=True, timeout=30)
            assert sender.returncode == 0, sender.stderr
            sent = json.loads(sender.stdout)
            out, _ = listener.communicate(timeout=20)
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait(5)
        got = json.loads(out.strip().splitlines()[-1])
        assert int(family) in sent["families"], sent
        assert sent["held"] == COUNT and sent["released"] == COUNT, sent
        assert [seq for seq, _ in got] == list(range(COUNT)), got
        # Nothing reached B while held: every datagram arrived after the release.
        assert min(t for _, t in got) >= sent["t_release"], (sent, got[:3])
        assert sent["stats"]["dropped_full"] == 0
    finally:
        peer.close()


def test_no_ipv6_holds_without_ipv6_forwarding(netns: Netns) -> None:
    """Re-injected IPv6 packets are forwarded only when the host forwards IPv6: without
    it, holding would drop what it holds, so IPv6 is not held there."""
    script = textwrap.dedent("""
        import asyncio, json
        from wgcast.dataplane.move_hold import MoveHoldQueue
        async def main():
            q = MoveHoldQueue("hq-fwd-h")
            q.open()
            print(json.dumps(sorted(q.families)))
            q.close()
        asyncio.run(main())
    """)

    def families() -> list[int]:
        r = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", script],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return list(json.loads(r.stdout))

    netns.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    assert families() == [4]
    netns.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    assert families() == [4, 6]
