"""The data plane against a real wireguard-go (and the kernel) inside a namespace."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import subprocess
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from wgcast.dataplane.reconcile import plan
from wgcast.dataplane.system import RTPROT_WGCAST, System
from wgcast.dataplane.types import (
    AddAllowedIP,
    DeviceNotFound,
    InvalidValue,
    MalformedRequest,
    PortInUse,
    RemoveAllowedIP,
    ReplaceAllowedIPs,
    WireGuardError,
)
from wgcast.dataplane.uapi import UapiDevice, UapiError
from wgcast.keys import control_address, generate_private, public_from_private
from wgcast.prefix import parse_prefix as prefix

if TYPE_CHECKING:
    from conftest import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

N = prefix


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def wireguard_go_version() -> tuple[int, ...]:
    out = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    assert m, out
    return tuple(int(x) for x in m.groups())


def keys(n: int) -> list[bytes]:
    return [public_from_private(generate_private()) for _ in range(n)]


async def device_with_peers(ifname: str, n: int = 2) -> tuple[UapiDevice, list[bytes]]:
    dev = UapiDevice(ifname)
    await dev.configure(private_key=generate_private())
    peers = keys(n)
    for i, k in enumerate(peers):
        ctl = control_address(k)
        await dev.set_peer(k, endpoint=f"192.0.2.{i + 1}:51820", allowed_ips=[N(f"{ctl}/128")])
    return dev, peers


def test_get_fresh_device(wg_iface: str) -> None:
    dev = run(UapiDevice(wg_iface).get())
    assert dev.private_key is None and dev.public_key is None
    assert dev.peers == [] and dev.fwmark == 0


def test_configure_add_update_remove_peers(wg_iface: str) -> None:
    async def go() -> None:
        dev = UapiDevice(wg_iface)
        priv = generate_private()
        await dev.configure(private_key=priv, listen_port=0, fwmark=0x77)
        a, b = keys(2)
        await dev.set_peer(
            a, endpoint="192.0.2.1:51820", allowed_ips=[N("10.1.0.0/16")], persistent_keepalive=25
        )
        await dev.set_peer(b, endpoint="[2001:db8::1]:4242", allowed_ips=[N("fd00::/64")])
        got = await dev.get()
        assert got.private_key == priv and got.public_key == public_from_private(priv)
        assert got.fwmark == 0x77 and got.listen_port > 0  # 0 = pick a free port
        pa, pb = got.peer(a), got.peer(b)
        assert pa and pb
        assert pa.endpoint == "192.0.2.1:51820" and pa.persistent_keepalive == 25
        assert pa.allowed_ips == [N("10.1.0.0/16")] and pa.last_handshake is None
        assert pb.endpoint == "[2001:db8::1]:4242" and pb.allowed_ips == [N("fd00::/64")]

        await dev.set_endpoint(a, "198.51.100.7:1000")
        await dev.set_peer(a, allowed_ips=[N("10.2.0.0/16")], replace_allowed_ips=True)
        pa = (await dev.get()).peer(a)
        assert pa and pa.endpoint == "198.51.100.7:1000" and pa.allowed_ips == [N("10.2.0.0/16")]

        await dev.remove_peer(a)
        got = await dev.get()
        assert [p.public_key for p in got.peers] == [b]
        # set_endpoint never creates a peer (update_only)
        await dev.set_endpoint(a, "198.51.100.7:1000")
        assert (await dev.get()).peer(a) is None

    run(go())


def test_removal_support_matches_version(wg_iface: str) -> None:
    async def go() -> None:
        dev, _peers = await device_with_peers(wg_iface)
        before = sorted((await dev.get()).peers, key=lambda p: p.public_key)
        supported = await dev.supports_removal()
        assert supported == (wireguard_go_version() >= (0, 0, 20250522))
        after = sorted((await dev.get()).peers, key=lambda p: p.public_key)
        assert after == before  # the probe changed nothing
        assert dev._removal is supported  # cached

    run(go())


def test_probe_without_peers_is_undecided(wg_iface: str) -> None:
    async def go() -> None:
        dev = UapiDevice(wg_iface)
        assert await dev.supports_removal() is False
        assert dev._removal is None  # asks again once there are peers

    run(go())


def test_apply_moves_adds_removes(wg_iface: str) -> None:
    async def go() -> None:
        dev, (a, b, c) = await device_with_peers(wg_iface, 3)
        static = N("172.16.0.0/12")  # a's own AllowedIP, not owned by wgcast
        await dev.set_peer(a, allowed_ips=[static])
        managed = {N(f"10.0.{i}.0/24") for i in range(6)} | {N("2001:db8:1::/48")}
        first = {N(f"10.0.{i}.0/24"): a for i in range(6)} | {N("2001:db8:1::/48"): b}
        await dev.apply(plan(first, (await dev.get()).allowed_ips_by_peer(), managed))

        # move two to b, one to c, drop two, keep one
        second = {
            N("10.0.0.0/24"): b,
            N("10.0.1.0/24"): b,
            N("10.0.2.0/24"): c,
            N("10.0.3.0/24"): a,
            N("2001:db8:1::/48"): c,
        }
        ops = plan(second, (await dev.get()).allowed_ips_by_peer(), managed)
        assert sum(isinstance(op, RemoveAllowedIP) for op in ops) == 2
        assert len(ops) == 6
        await dev.apply(ops)
        got = (await dev.get()).allowed_ips_by_peer()
        ctl = {k: N(f"{control_address(k)}/128") for k in (a, b, c)}
        assert got[a] == {N("10.0.3.0/24"), static, ctl[a]}
        assert got[b] == {N("10.0.0.0/24"), N("10.0.1.0/24"), ctl[b]}
        assert got[c] == {N("10.0.2.0/24"), N("2001:db8:1::/48"), ctl[c]}
        assert plan(second, got, managed) == []

        # explicit ops: a removal of a prefix the peer does not hold is a no-op
        await dev.apply([RemoveAllowedIP(a, N("10.0.0.0/24")), AddAllowedIP(a, N("10.0.9.0/24"))])
        got = (await dev.get()).allowed_ips_by_peer()
        assert N("10.0.0.0/24") in got[b] and N("10.0.9.0/24") in got[a]
        await dev.apply([ReplaceAllowedIPs(c, (ctl[c],))])
        assert (await dev.get()).allowed_ips_by_peer()[c] == {ctl[c]}

    run(go())


def test_apply_large_batch_moves(wg_iface: str) -> None:
    async def go() -> None:
        dev, (a, b) = await device_with_peers(wg_iface)
        prefixes = [N(f"10.{i // 256}.{i % 256}.0/24") for i in range(2000)]
        await dev.apply([AddAllowedIP(a, p) for p in prefixes])
        await dev.apply([AddAllowedIP(b, p) for p in prefixes[::2]])
        got = (await dev.get()).allowed_ips_by_peer()
        assert len(got[a]) == 1001 and len(got[b]) == 1001

    run(go())


def test_errno_mapping(netns: Netns, wg_iface: str) -> None:
    async def go() -> None:
        dev = UapiDevice(wg_iface)
        with pytest.raises(InvalidValue) as e:
            await dev.request("set=1\npublic_key=zz\n\n", "bad key")
        assert e.value.errno == errno.EINVAL and "bad key" in str(e.value)
        assert isinstance(e.value, UapiError)
        with pytest.raises(MalformedRequest) as e2:
            await dev.request("set=1\nno equals sign\n\n", "garbage")
        assert e2.value.errno == errno.EPROTO and "garbage" in str(e2.value)

        # a bad line early in a long request: wireguard-go answers and hangs up while
        # we are still writing; the errno must still come through
        k = keys(1)[0].hex()
        long = "".join(f"allowed_ip=10.{i // 256}.{i % 256}.0/24\n" for i in range(20000))
        with pytest.raises(InvalidValue):
            await dev.request(f"set=1\npublic_key={k}\nallowed_ip=nope\n{long}\n", "long")

        other = UapiDevice(netns.start_wireguard_go())
        await dev.configure(listen_port=0)
        port = (await dev.get()).listen_port
        with pytest.raises(PortInUse) as e3:
            await other.configure(listen_port=port)
        assert e3.value.errno == errno.EADDRINUSE and "configure" in str(e3.value)

        with pytest.raises(DeviceNotFound) as e4:
            await UapiDevice("wgc-missing-if").get()
        assert e4.value.errno == errno.ENOENT and "wgc-missing-if" in str(e4.value)
        with pytest.raises(ValueError):
            await dev.set_endpoint(keys(1)[0], "2001:db8::1:51820")  # needs brackets

    run(go())


def test_device_gone_mid_life(netns: Netns) -> None:
    ifname = netns.start_wireguard_go()
    dev = UapiDevice(ifname)
    run(dev.get())
    netns.stop_wireguard_go(ifname)
    with pytest.raises(DeviceNotFound):
        run(dev.get())


# --------------------------------------------------------------------------- system.py


def test_routes_add_list_reconcile_remove(netns: Netns, wg_iface: str) -> None:
    async def go() -> None:
        sysm = System(wg_iface, netns=netns.name)
        try:
            await sysm.ensure_up()
            foreign = "10.99.0.0/16"
            netns.run("ip", "route", "add", foreign, "dev", wg_iface, "proto", "static")
            assert await sysm.list_routes() == set()
            want = {N("10.0.0.0/24"), N("10.0.1.0/24"), N("2001:db8:1::/48"), N("0.0.0.0/0")}
            await sysm.add_routes(want)
            await sysm.add_routes(want)  # idempotent
            assert await sysm.list_routes() == want
            shown = netns.run("ip", "-4", "route", "show", "proto", str(RTPROT_WGCAST)).stdout
            assert f"10.0.0.0/24 dev {wg_iface}" in shown

            diff = await sysm.reconcile_routes({N("10.0.1.0/24"), N("10.0.2.0/24")})
            assert set(diff.added) == {N("10.0.2.0/24")}
            assert set(diff.removed) == {N("10.0.0.0/24"), N("2001:db8:1::/48"), N("0.0.0.0/0")}
            assert await sysm.list_routes() == {N("10.0.1.0/24"), N("10.0.2.0/24")}
            await sysm.remove_routes([N("10.0.1.0/24"), N("10.0.9.0/24")])  # absent is fine
            assert await sysm.list_routes() == {N("10.0.2.0/24")}
            # someone else's route through the same interface was never touched
            assert foreign in netns.run("ip", "route", "show", "dev", wg_iface).stdout
        finally:
            await sysm.close()

    run(go())


def test_addresses(netns: Netns, wg_iface: str) -> None:
    async def go() -> None:
        sysm = System(wg_iface, netns=netns.name)
        try:
            ctl = control_address(keys(1)[0])
            await sysm.add_control_address(ctl)
            await sysm.add_control_address(ctl)  # idempotent
            assert ipaddress.ip_interface(f"{ctl}/128") in await sysm.list_addresses()

            await sysm.add_group_address("2001:db8:53::1/128")
            await sysm.add_group_address("198.51.100.53/32")
            lo = netns.run("ip", "-6", "addr", "show", "dev", "lo").stdout
            assert "2001:db8:53::1/128" in lo and "deprecated" in lo
            assert "preferred_lft 0sec" in lo
            have = await sysm.list_addresses("lo")
            assert ipaddress.ip_interface("198.51.100.53/32") in have

            await sysm.remove_address("2001:db8:53::1/128", ifname="lo")
            await sysm.remove_address("2001:db8:53::1/128", ifname="lo")  # idempotent
            assert ipaddress.ip_interface("2001:db8:53::1/128") not in await sysm.list_addresses(
                "lo"
            )
            with pytest.raises(Exception, match="no interface"):
                await sysm.add_address("10.0.0.1/32", ifname="nope0")
        finally:
            await sysm.close()

    run(go())


def test_errors_are_one_family() -> None:
    assert issubclass(DeviceNotFound, UapiError) and UapiError is WireGuardError
