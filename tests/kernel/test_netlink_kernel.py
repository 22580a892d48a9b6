"""The netlink back end against the kernel's WireGuard module, checked with `wg show dump`.

Runs inside the guest of `make test-kernel` (skipped elsewhere). Behaviour only: the
guest is 10-20x slower than the host, so no timing is asserted and deadlines are long.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from wgcast.dataplane.backend import BackendMismatch, open_device
from wgcast.dataplane.netlink import NetlinkDevice
from wgcast.dataplane.reconcile import plan
from wgcast.dataplane.types import (
    AddAllowedIP,
    DeviceNotFound,
    NotSupported,
    RemoveAllowedIP,
    ReplaceAllowedIPs,
    WireGuardBackend,
)
from wgcast.dataplane.uapi import UapiDevice
from wgcast.keys import generate_private, public_from_private
from wgcast.lab.system import in_netns

if TYPE_CHECKING:
    from conftest import KNetns

pytestmark = [pytest.mark.timeout(600)]

N = ipaddress.ip_network


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


def pubs(n: int) -> list[bytes]:
    return [public_from_private(generate_private()) for _ in range(n)]


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def dump_state(ns: KNetns, ifname: str, scopes: dict[str, int] | None = None
               ) -> dict[str, object]:
    """What `wg show dump` says, in the shape compared with `NetlinkDevice.get()`
    (`wg` names an IPv6 scope by interface, wgcast by index: `scopes` maps them)."""
    rows = ns.dump(ifname)
    for row in rows[1:]:
        for name, index in (scopes or {}).items():
            row[2] = row[2].replace(f"%{name}]", f"%{index}]")
    priv, pub, port, fwmark = rows[0][:4]
    peers = {}
    for f in rows[1:]:
        peers[f[0]] = {
            "endpoint": None if f[2] == "(none)" else f[2],
            "allowed_ips": sorted([] if f[3] == "(none)" else f[3].split(",")),
            "keepalive": 0 if f[7] == "off" else int(f[7]),
        }
    return {"private": None if priv == "(none)" else priv,
            "public": None if pub == "(none)" else pub, "port": int(port),
            "fwmark": 0 if fwmark == "off" else int(fwmark, 0), "peers": peers}


async def backend_state(dev: WireGuardBackend) -> dict[str, Any]:
    d = await dev.get()
    return {"private": None if d.private_key is None else b64(d.private_key),
            "public": None if d.public_key is None else b64(d.public_key),
            "port": d.listen_port, "fwmark": d.fwmark,
            "peers": {b64(p.public_key): {"endpoint": p.endpoint,
                                          "allowed_ips": sorted(map(str, p.allowed_ips)),
                                          "keepalive": p.persistent_keepalive}
                      for p in d.peers}}


def test_open_device_picks_the_backend_by_link_kind(knetns: KNetns) -> None:
    wg = knetns.add_wg("wgk0")
    knetns.sh("ip", "link", "add", "dummyk0", "type", "veth", "peer", "name", "dummyk1")

    async def go() -> None:
        dev = open_device(wg, "auto")
        assert isinstance(dev, NetlinkDevice) and dev.kind == "netlink"
        await dev.close()
        forced = open_device(wg, "netlink")
        assert isinstance(forced, NetlinkDevice)
        await forced.close()
        with pytest.raises(BackendMismatch, match=r'wgk0: backend = "uapi" but wgk0 is a '
                                                  r"kernel WireGuard link"):
            open_device(wg, "uapi")
        with pytest.raises(BackendMismatch, match=r"dummyk0 is a veth link, not kernel"):
            open_device("dummyk0", "netlink")
        with pytest.raises(DeviceNotFound, match="nosuchk0: no such interface"):
            open_device("nosuchk0", "auto")
        with pytest.raises(DeviceNotFound, match="nosuchk0: no such interface"):
            open_device("nosuchk0", "netlink")

    knetns.run(go)


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go")
def test_auto_picks_uapi_for_wireguard_go(knetns: KNetns) -> None:
    name = f"wgkgo{os.getpid() % 10000}"
    env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
    proc = subprocess.Popen(["ip", "netns", "exec", knetns.name, "wireguard-go", name],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = f"/var/run/wireguard/{name}.sock"
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(sock):
            assert proc.poll() is None, "wireguard-go exited"
            assert time.monotonic() < deadline, "no UAPI socket"
            time.sleep(0.1)

        async def go() -> None:
            dev = open_device(name, "auto")
            assert isinstance(dev, UapiDevice) and dev.kind == "uapi"
            assert (await dev.get()).peers == []
            with pytest.raises(BackendMismatch, match=f"{name} is a tun link"):
                open_device(name, "netlink")

        knetns.run(go)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if os.path.exists(sock):
            os.unlink(sock)


def test_every_operation_matches_wg_show_dump(knetns: KNetns) -> None:
    wg = knetns.add_wg("wgk1")
    knetns.sh("ip", "link", "set", wg, "up")
    ifindex = int(knetns.sh("cat", f"/sys/class/net/{wg}/ifindex").stdout)
    a, b, c = pubs(3)
    priv = generate_private()

    async def go() -> None:
        dev = NetlinkDevice(wg)
        try:
            fresh = await dev.get()
            assert fresh.private_key is None and fresh.peers == []
            # No peers: removal support cannot be probed yet (and is not cached).
            assert await dev.supports_removal() is False and dev._removal is None
            await dev.configure(private_key=priv, listen_port=40123, fwmark=0x77)
            await dev.set_peer(a, endpoint="192.0.2.1:51820",
                               allowed_ips=[N("10.1.0.0/16"), N("fd00:a::/64")],
                               persistent_keepalive=25)
            await dev.set_peer(b, endpoint="[2001:db8::1]:4242", allowed_ips=[N("10.2.0.0/16")])
            await dev.set_peer(c, endpoint=f"[fe80::1%{ifindex}]:7", allowed_ips=[])
            st = await backend_state(dev)
            assert st == dump_state(knetns, wg, {wg: ifindex})
            assert st["public"] == b64(public_from_private(priv)) and st["port"] == 40123
            assert st["fwmark"] == 0x77
            # Detection, not assumption: the probe's answer matches what the kernel does.
            native = await dev.supports_removal()
            assert native == (kernel_version() >= (6, 16)), (native, os.uname().release)
            # A move (no removal), a removal (native or replace fallback), a replace.
            await dev.apply([AddAllowedIP(b, N("10.1.0.0/16")),
                             RemoveAllowedIP(a, N("fd00:a::/64")),
                             AddAllowedIP(c, N("10.3.0.0/24"))])
            st = await backend_state(dev)
            assert st == dump_state(knetns, wg, {wg: ifindex})
            peers = st["peers"]
            assert isinstance(peers, dict)
            assert peers[b64(a)]["allowed_ips"] == []
            assert peers[b64(b)]["allowed_ips"] == ["10.1.0.0/16", "10.2.0.0/16"]
            await dev.apply([ReplaceAllowedIPs(b, (N("10.9.0.0/16"),))])
            await dev.set_endpoint(a, "198.51.100.7:9")
            await dev.remove_peer(c)
            st = await backend_state(dev)
            assert st == dump_state(knetns, wg, {wg: ifindex})
            assert b64(c) not in st["peers"]
            assert st["peers"][b64(b)]["allowed_ips"] == ["10.9.0.0/16"]
            assert st["peers"][b64(a)]["endpoint"] == "198.51.100.7:9"
            # reconcile.plan against the real device: desired == actual afterwards.
            desired = {N("10.9.0.0/16"): a, N("10.5.0.0/24"): b}
            ops = plan(desired, (await dev.get()).allowed_ips_by_peer(), set(desired))
            await dev.apply(ops)
            got = (await dev.get()).allowed_ips_by_peer()
            assert got[a] == {N("10.9.0.0/16")} and got[b] == {N("10.5.0.0/24")}
        finally:
            await dev.close()

    knetns.run(go)


def test_large_multipart_dump_matches(knetns: KNetns) -> None:
    wg = knetns.add_wg("wgk2")
    keys = pubs(30)

    async def go() -> None:
        dev = NetlinkDevice(wg)
        try:
            await dev.configure(private_key=generate_private())
            for i, k in enumerate(keys):
                await dev.set_peer(k, endpoint=f"192.0.2.{i + 1}:51820")
            ops = [AddAllowedIP(keys[i % len(keys)], N(f"10.{i // 256}.{i % 256}.0/24"))
                   for i in range(1500)]
            await dev.apply(ops)
            # The kernel split the dump over several messages (a peer may continue in
            # the next one): what parse_dump merges is what `wg` shows.
            assert len(await dev._run(dev._dump_sync)) > 1
            st = await backend_state(dev)
            assert st == dump_state(knetns, wg)
            assert sum(len(p["allowed_ips"]) for p in st["peers"].values()) == 1500
            # 500 moves in one apply, still identical to the kernel's view.
            await dev.apply([AddAllowedIP(keys[(i + 1) % len(keys)],
                                          N(f"10.{i // 256}.{i % 256}.0/24"))
                             for i in range(500)])
            assert await backend_state(dev) == dump_state(knetns, wg)
        finally:
            await dev.close()

    knetns.run(go)


def test_errors_name_the_problem(knetns: KNetns) -> None:
    async def go() -> None:
        missing = NetlinkDevice("nosuchk1")
        with pytest.raises(DeviceNotFound):
            await missing.get()
        await missing.close()
        lo = NetlinkDevice("lo")  # exists, but is no WireGuard link
        with pytest.raises(NotSupported):
            await lo.get()
        await lo.close()

    knetns.run(go)


def test_restart_handshake_keeps_the_peer_and_resets_the_session(
        knetns2: tuple[KNetns, KNetns]) -> None:
    a, b = knetns2
    ka, kb = generate_private(), generate_private()
    pa, pb = public_from_private(ka), public_from_private(kb)
    psk = generate_private()
    for ns, ifn, addr in ((a, "wgka", "10.98.0.1"), (b, "wgkb", "10.98.0.2")):
        ns.add_wg(ifn)
        ns.sh("ip", "address", "add", f"{addr}/32", "dev", ifn)
        ns.sh("ip", "link", "set", ifn, "up")

    async def conf(ifn: str, key: bytes, port: int, peer: bytes, ep: str, ip: str) -> None:
        dev = NetlinkDevice(ifn)
        await dev.configure(private_key=key, listen_port=port)
        await dev.set_peer(peer, endpoint=ep, allowed_ips=[N(ip)], persistent_keepalive=0)
        await dev.close()

    a.run(lambda: conf("wgka", ka, 51001, pb, "10.99.0.2:51002", "10.98.0.2/32"))
    b.run(lambda: conf("wgkb", kb, 51002, pa, "10.99.0.1:51001", "10.98.0.1/32"))
    for ns, ifn, peer in ((a, "wgka", pb), (b, "wgkb", pa)):
        keyfile = f"/run/wgk-psk-{os.getpid()}"
        with open(keyfile, "w") as f:
            f.write(b64(psk) + "\n")
        try:
            ns.sh("wg", "set", ifn, "peer", b64(peer), "preshared-key", keyfile,
                  "persistent-keepalive", "21")
        finally:
            os.unlink(keyfile)
    a.sh("ip", "route", "add", "10.98.0.2/32", "dev", "wgka")
    b.sh("ip", "route", "add", "10.98.0.1/32", "dev", "wgkb")

    def udp_through(count: int = 1) -> bool:
        """Send datagrams a -> b through the tunnel until `count` arrived (the first
        starts the handshake; WireGuard queues them meanwhile). Bounded by a deadline."""
        with in_netns(b.name):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with in_netns(a.name):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.bind(("10.98.0.2", 5555))
            rx.settimeout(2.0)
            got = 0
            deadline = time.monotonic() + 180
            while got < count and time.monotonic() < deadline:
                tx.sendto(b"wgcast kernel test " * 20, ("10.98.0.2", 5555))
                with contextlib.suppress(TimeoutError):
                    rx.recv(2048)
                    got += 1
            return got >= count
        finally:
            rx.close()
            tx.close()

    assert udp_through(10), "no traffic through the tunnel"
    before = a.dump("wgka")[1]
    assert before[4] != "0"  # a handshake happened

    async def restart() -> bool:
        dev = NetlinkDevice("wgka")
        try:
            return await dev.restart_handshake(pb)
        finally:
            await dev.close()

    assert a.run(restart) is True
    after = a.dump("wgka")[1]
    # Same peer, same settings (key, preshared key, endpoint, AllowedIPs, keepalive)...
    assert [after[i] for i in (0, 1, 2, 3, 7)] == [before[i] for i in (0, 1, 2, 3, 7)]
    # ... but a new peer object: its transfer counters started again from zero (the
    # keepalive may already have made a new handshake: no more than that went through).
    assert int(after[5]) < int(before[5]) and int(after[6]) < int(before[6]), (before, after)
    assert udp_through(3), "no traffic after the restart"  # the restored settings work

    async def unknown() -> bool:
        dev = NetlinkDevice("wgka")
        try:
            return await dev.restart_handshake(pubs(1)[0])
        finally:
            await dev.close()

    assert a.run(unknown) is False
