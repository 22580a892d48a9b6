"""Kernel WireGuard backend: dump parsing from recorded messages, set encoding, apply logic.

The recordings are built by data/make_netlink_recordings.py in the kernel's layout
(see that script for how and why).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import pathlib
import struct
from typing import Any

import pytest

from wgcast.dataplane import netlink as nl
from wgcast.dataplane.netlink import (
    WGALLOWEDIP_F_REMOVE_ME,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    NetlinkDevice,
    WgMsg,
    build_set_messages,
    decode_stream,
    endpoint_to_sockaddr,
    parse_dump,
    sockaddr_to_endpoint,
)
from wgcast.dataplane.types import (
    AddAllowedIP,
    Device,
    DeviceNotFound,
    InvalidValue,
    NotSupported,
    Op,
    Peer,
    PeerUpdate,
    RemoveAllowedIP,
    WireGuardError,
    error_for,
)
from wgcast.keys import public_from_private

DATA = pathlib.Path(__file__).parent / "data"
N = ipaddress.ip_network


def key(seed: str) -> bytes:
    k = bytearray(hashlib.sha256(seed.encode()).digest())
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


PRIV = key("wgcast netlink dev")
P1, P2, P3 = (public_from_private(key(f"wgcast netlink peer{i}")) for i in (1, 2, 3))


def recording(name: str) -> bytes:
    return b"".join(bytes.fromhex(line) for line in (DATA / name).read_text().split())


def test_parse_single_message_dump() -> None:
    dev = parse_dump(decode_stream(recording("netlink_get_single.hex")))
    assert dev == Device(
        private_key=PRIV,
        public_key=public_from_private(PRIV),
        listen_port=51820,
        fwmark=0x1234,
        peers=[
            Peer(
                public_key=P1,
                endpoint="192.0.2.1:51820",
                allowed_ips=[N("10.1.0.0/16"), N("fd01::/64"), N("10.1.2.3/32")],
                last_handshake=1700000123.456,
                rx_bytes=654321,
                tx_bytes=123456,
                persistent_keepalive=25,
            ),
            Peer(public_key=P2, endpoint="[2001:db8::2]:4242", allowed_ips=[N("10.2.0.0/24")]),
            Peer(public_key=P3, endpoint="[fe80::3%5]:51820"),
        ],
    )


def test_parse_split_dump_merges_a_peer_across_messages() -> None:
    msgs = decode_stream(recording("netlink_get_split.hex"))
    assert len(msgs) == 2 and msgs[1].get_attr("WGDEVICE_A_IFNAME") is None
    dev = parse_dump(msgs)
    assert [p.public_key for p in dev.peers] == [P1, P2, P3]
    p2 = dev.peer(P2)
    assert p2 is not None and p2.endpoint == "[2001:db8::2]:4242"
    assert p2.allowed_ips == [N(f"10.3.{i}.0/24") for i in range(40)]
    assert dev.listen_port == 51820 and dev.private_key == PRIV


def test_same_dataclasses_as_uapi() -> None:
    """Both backends describe a device with the same types: reconcile sees no difference."""
    dev = parse_dump(decode_stream(recording("netlink_get_single.hex")))
    assert dev.allowed_ips_by_peer()[P1] == {N("10.1.0.0/16"), N("fd01::/64"), N("10.1.2.3/32")}


def test_error_message_in_stream_raises_mapped_error() -> None:
    err = struct.pack("=IHHIIi", 36, 2, 0, 1, 1, -errno.ENODEV) + bytes(16)
    with pytest.raises(DeviceNotFound):
        decode_stream(err)


def test_sockaddr_round_trip() -> None:
    for ep in ("192.0.2.1:51820", "[2001:db8::1]:1", "[fe80::1%7]:65535"):
        assert sockaddr_to_endpoint(endpoint_to_sockaddr(ep)) == ep
    assert len(endpoint_to_sockaddr("10.0.0.1:5")) == 16
    assert len(endpoint_to_sockaddr("[::1]:5")) == 28
    assert sockaddr_to_endpoint(b"\x00") is None


def _decoded(msg: WgMsg) -> WgMsg:
    msg.encode()
    out = WgMsg(bytes(msg.data))
    out.decode()
    return out


def _peers(msg: WgMsg) -> list[Any]:
    return list(msg.get_attr("WGDEVICE_A_PEERS") or [])


def _ips(peer: Any) -> list[tuple[Any, int | None]]:
    out = []
    for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []:
        fam = ip.get_attr("WGALLOWEDIP_A_FAMILY")
        addr = ipaddress.ip_address(bytes(ip.get_attr("WGALLOWEDIP_A_IPADDR")))
        assert fam == (2 if addr.version == 4 else 10)
        out.append(
            (
                N(f"{addr}/{ip.get_attr('WGALLOWEDIP_A_CIDR_MASK')}"),
                ip.get_attr("WGALLOWEDIP_A_FLAGS"),
            )
        )
    return out


def test_set_message_attributes() -> None:
    ups = [
        PeerUpdate(P1, update_only=True, allowed_ips=[(N("10.0.0.0/24"), False)]),
        PeerUpdate(P2, update_only=True, allowed_ips=[(N("fd00::/64"), True)]),
        PeerUpdate(
            P3,
            replace_allowed_ips=True,
            endpoint="[2001:db8::3]:51820",
            persistent_keepalive=25,
            allowed_ips=[(N("10.3.0.0/16"), False)],
        ),
        PeerUpdate(P1, remove=True),
    ]
    (raw,) = build_set_messages("wg0", ups, private_key=PRIV, listen_port=51820, fwmark=7)
    msg = _decoded(raw)
    assert msg["cmd"] == nl.WG_CMD_SET_DEVICE and msg["version"] == 1
    assert msg.get_attr("WGDEVICE_A_IFNAME") == "wg0"
    assert bytes(msg.get_attr("WGDEVICE_A_PRIVATE_KEY")) == PRIV
    assert msg.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
    assert msg.get_attr("WGDEVICE_A_FWMARK") == 7
    a, b, c, d = _peers(msg)
    assert bytes(a.get_attr("WGPEER_A_PUBLIC_KEY")) == P1
    assert a.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY
    assert _ips(a) == [(N("10.0.0.0/24"), None)]  # adds carry no flags attribute
    assert _ips(b) == [(N("fd00::/64"), WGALLOWEDIP_F_REMOVE_ME)]
    assert c.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
    assert sockaddr_to_endpoint(bytes(c.get_attr("WGPEER_A_ENDPOINT"))) == "[2001:db8::3]:51820"
    assert c.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert d.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME
    assert d.get_attr("WGPEER_A_ALLOWEDIPS") is None


def test_nested_attributes_have_the_kernel_layout() -> None:
    (msg,) = build_set_messages("wg0", [PeerUpdate(P1, allowed_ips=[(N("10.0.0.0/8"), False)])])
    msg.encode()
    data = bytes(msg.data)
    off = 20  # nlmsghdr + genlmsghdr
    types = []
    while off < len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        types.append(kind)
        if kind & 0x7FFF == 8:  # WGDEVICE_A_PEERS: look at the first entry inside
            _, entry = struct.unpack_from("=HH", data, off + 4)
            assert entry == 0x8000  # type 0 + NLA_F_NESTED, like libmnl and the kernel
        off += (length + 3) & ~3
    assert types == [2, 0x8008]


def test_large_set_is_split_and_peer_continues() -> None:
    prefixes = [N(f"10.{i // 256}.{i % 256}.0/24") for i in range(3000)]
    ups = [
        PeerUpdate(
            P1,
            replace_allowed_ips=True,
            endpoint="192.0.2.1:1",
            allowed_ips=[(p, False) for p in prefixes],
        ),
        PeerUpdate(P2, update_only=True, allowed_ips=[(N("10.200.0.0/16"), True)]),
    ]
    msgs = build_set_messages("wg0", ups, private_key=PRIV, max_bytes=16 * 1024)
    assert len(msgs) > 4
    seen: list[Any] = []
    for i, raw in enumerate(msgs):
        raw.encode()
        assert len(raw.data) <= 16 * 1024 + 256
        msg = _decoded(raw)
        assert (msg.get_attr("WGDEVICE_A_PRIVATE_KEY") is not None) == (i == 0)
        for peer in _peers(msg):
            seen.append((bytes(peer.get_attr("WGPEER_A_PUBLIC_KEY")), peer))
    first, *rest = [p for k, p in seen if k == P1]
    assert first.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
    assert first.get_attr("WGPEER_A_ENDPOINT") is not None
    for cont in rest:  # continuations must not clear what the first part added
        assert cont.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY
        assert cont.get_attr("WGPEER_A_ENDPOINT") is None
    got = [p for peer in [first, *rest] for p, _ in _ips(peer)]
    assert got == prefixes
    assert seen[-1][0] == P2 and _ips(seen[-1][1]) == [(N("10.200.0.0/16"), 1)]


def test_device_only_change_has_no_peers_attribute() -> None:
    (msg,) = build_set_messages("wg0", [], listen_port=1)
    assert _decoded(msg).get_attr("WGDEVICE_A_PEERS") is None


# --------------------------------------------------------------------------- backend


class FakeKernel(NetlinkDevice):
    """NetlinkDevice whose socket is a model of the kernel's set/get handling."""

    def __init__(self, removal: bool) -> None:
        super().__init__("wg0")
        self.removal = removal
        self.peers: dict[bytes, list[Any]] = {}
        self.sent: list[WgMsg] = []
        self.intr = 0

    def _transact(self, msg: WgMsg, dump: bool, request: str) -> list[Any]:
        if dump:
            reply = WgMsg()
            reply["cmd"] = nl.WG_CMD_GET_DEVICE
            reply["header"]["flags"] = nl.NLM_F_MULTI | (nl.NLM_F_DUMP_INTR if self.intr else 0)
            self.intr = max(0, self.intr - 1)
            reply["attrs"].append(
                [
                    "WGDEVICE_A_PEERS",
                    [
                        {
                            "attrs": [
                                ["WGPEER_A_PUBLIC_KEY", k],
                                ["WGPEER_A_ALLOWEDIPS", [nl._allowedip_attrs(p, False) for p in v]],
                            ]
                        }
                        for k, v in self.peers.items()
                    ],
                ]
            )
            return [_decoded(reply)]
        msg = _decoded(msg)
        self.sent.append(msg)
        for peer in _peers(msg):
            k = bytes(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            flags = peer.get_attr("WGPEER_A_FLAGS") or 0
            if k not in self.peers:
                if flags & (WGPEER_F_UPDATE_ONLY | WGPEER_F_REMOVE_ME):
                    continue
                self.peers[k] = []
            if flags & WGPEER_F_REMOVE_ME:
                del self.peers[k]
                continue
            if flags & WGPEER_F_REPLACE_ALLOWEDIPS:
                self.peers[k] = []
            for p, f in _ips(peer):
                if f is not None and not self.removal:
                    raise error_for(-errno.EINVAL, request, "Unknown attribute type")
                if f:
                    if p in self.peers[k]:
                        self.peers[k].remove(p)
                    continue
                for lst in self.peers.values():
                    if p in lst:
                        lst.remove(p)
                self.peers[k].append(p)
        return []


@pytest.mark.parametrize("removal", [True, False])
def test_apply_with_and_without_kernel_removal(removal: bool) -> None:
    async def go() -> None:
        k = FakeKernel(removal)
        await k.set_peer(
            P1, endpoint="192.0.2.1:1", allowed_ips=[N("10.0.0.0/24"), N("10.0.1.0/24")]
        )
        await k.set_peer(P2, allowed_ips=[N("fe80::2/128")])
        ops: list[Op] = [
            AddAllowedIP(P2, N("10.0.0.0/24")),
            AddAllowedIP(P2, N("10.0.2.0/24")),
            RemoveAllowedIP(P1, N("10.0.1.0/24")),
        ]
        await k.apply(ops)
        assert k.peers == {P1: [], P2: [N("fe80::2/128"), N("10.0.0.0/24"), N("10.0.2.0/24")]}
        assert await k.supports_removal() is removal
        last = _peers(k.sent[-1])[-1]
        if removal:  # one message: adds then the native removal
            assert _ips(last)[-1] == (N("10.0.1.0/24"), WGALLOWEDIP_F_REMOVE_ME)
        else:  # fallback: replace P1's list with what remains (here: nothing)
            assert (
                last.get_attr("WGPEER_A_FLAGS")
                == WGPEER_F_UPDATE_ONLY | WGPEER_F_REPLACE_ALLOWEDIPS
            )
            assert _ips(last) == []

    asyncio.run(go())


def test_dump_interrupted_is_retried() -> None:
    async def go() -> None:
        k = FakeKernel(True)
        k.peers = {P1: [N("10.0.0.0/8")]}
        k.intr = 2
        dev = await k.get()
        assert dev.peers[0].allowed_ips == [N("10.0.0.0/8")]
        k.intr = 99
        with pytest.raises(WireGuardError, match="NLM_F_DUMP_INTR"):
            await k.get()

    asyncio.run(go())


def test_probe_undecided_without_peers_and_harmless() -> None:
    async def go() -> None:
        k = FakeKernel(False)
        assert await k.supports_removal() is False and k._removal is None
        k.peers = {P1: [N("192.0.2.255/32")]}
        assert await k.supports_removal() is False and k._removal is False
        assert k.peers == {P1: [N("192.0.2.255/32")]}
        sent = _ips(_peers(k.sent[-1])[0])
        assert sent == [(N("198.51.100.255/32"), WGALLOWEDIP_F_REMOVE_ME)]  # not one it holds

    asyncio.run(go())


def test_no_kernel_module_is_a_clear_error() -> None:
    async def go() -> None:
        dev = NetlinkDevice("wgc-no-such0")
        try:
            with pytest.raises((NotSupported, DeviceNotFound)) as e:
                await dev.get()
            assert "wireguard" in str(e.value).lower() or e.value.errno == errno.ENODEV
        finally:
            await dev.close()

    asyncio.run(go())


def test_invalid_value_is_mapped() -> None:
    assert isinstance(error_for(-errno.EINVAL, "apply"), InvalidValue)


def test_removal_fallback_is_serialised_with_other_changes() -> None:
    """The fallback reads then replaces; a move landing in between must not be wiped."""

    async def go() -> None:
        k = FakeKernel(False)
        k._removal = False
        k.peers = {P1: [N("10.0.0.0/24"), N("10.0.1.0/24")], P2: [N("10.0.2.0/24")]}
        await asyncio.gather(
            k.apply([RemoveAllowedIP(P1, N("10.0.0.0/24"))]),
            k.apply([AddAllowedIP(P1, N("10.0.2.0/24"))]),
            k.apply([AddAllowedIP(P1, N("10.0.3.0/24"))]),
        )
        assert sorted(k.peers[P1], key=str) == [
            N("10.0.1.0/24"),
            N("10.0.2.0/24"),
            N("10.0.3.0/24"),
        ]

    asyncio.run(go())
