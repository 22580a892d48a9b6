"""Build kernel-style WG_CMD_GET_DEVICE dump replies for tests/unit/test_netlink.py.

There is no kernel WireGuard module on the machines this project is developed on, so
the replies cannot be captured with `strace`/`nlmon`. Instead this script builds them
with pyroute2's message classes (wgcast's `WgMsg`), in exactly the layout that
drivers/net/wireguard/netlink.c (wg_get_device_dump / get_peer / get_allowedips)
produces on x86_64:

- nlmsghdr type = the family id (dynamic; 0x22 here), flags NLM_F_MULTI, the request's
  seq and port id; genlmsghdr cmd WG_CMD_GET_DEVICE, version 1;
- first message only: LISTEN_PORT, FWMARK, IFINDEX, IFNAME, then PRIVATE_KEY and
  PUBLIC_KEY (only when the device has a key);
- WGDEVICE_A_PEERS (nested) holding one nested entry of type 0 per peer:
  PUBLIC_KEY, PRESHARED_KEY (32 zero bytes if none), LAST_HANDSHAKE_TIME
  (struct __kernel_timespec), PERSISTENT_KEEPALIVE_INTERVAL, TX_BYTES, RX_BYTES
  (u64, no pad attribute on x86_64), PROTOCOL_VERSION, ENDPOINT (sockaddr_in/in6,
  only if set), ALLOWEDIPS: nested entries of type 0 with CIDR_MASK, FAMILY, IPADDR;
- a peer that does not fit continues in the next message with only PUBLIC_KEY and
  the rest of its ALLOWEDIPS; the dump ends with NLMSG_DONE.

Run: .venv/bin/python tests/unit/data/make_netlink_recordings.py
Writes netlink_get_single.hex (one message + DONE) and netlink_get_split.hex (a dump
over two messages with a peer split between them), one netlink message per line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "src"))

from wgcast.dataplane.netlink import (  # noqa: E402
    NLM_F_MULTI,
    WG_CMD_GET_DEVICE,
    WG_GENL_VERSION,
    WgMsg,
)
from wgcast.keys import public_from_private  # noqa: E402

FAMILY_ID = 0x22
SEQ, PORT_ID = 1700000000, 4242


def key(seed: str) -> bytes:
    k = bytearray(hashlib.sha256(seed.encode()).digest())
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


PRIV = key("wgcast netlink dev")
PEER1, PEER2, PEER3 = (public_from_private(key(f"wgcast netlink peer{i}")) for i in (1, 2, 3))


def sockaddr4(ip: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack(">H", port)
        + socket.inet_aton(ip)
        + bytes(8)
    )


def sockaddr6(ip: str, port: int, scope: int = 0) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack(">HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, ip)
        + struct.pack("=I", scope)
    )


def allowed(*prefixes: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for text in prefixes:
        p = ipaddress.ip_network(text)
        fam = socket.AF_INET if p.version == 4 else socket.AF_INET6
        out.append(
            {
                "attrs": [
                    ["WGALLOWEDIP_A_CIDR_MASK", p.prefixlen],
                    ["WGALLOWEDIP_A_FAMILY", fam],
                    ["WGALLOWEDIP_A_IPADDR", p.network_address.packed],
                ]
            }
        )
    return out


def peer(
    pub: bytes,
    *,
    handshake: tuple[int, int] = (0, 0),
    keepalive: int = 0,
    tx: int = 0,
    rx: int = 0,
    endpoint: bytes | None = None,
    ips: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    attrs: list[list[object]] = [
        ["WGPEER_A_PUBLIC_KEY", pub],
        ["WGPEER_A_PRESHARED_KEY", bytes(32)],
        ["WGPEER_A_LAST_HANDSHAKE_TIME", struct.pack("=qq", *handshake)],
        ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", keepalive],
        ["WGPEER_A_TX_BYTES", tx],
        ["WGPEER_A_RX_BYTES", rx],
        ["WGPEER_A_PROTOCOL_VERSION", 1],
    ]
    if endpoint is not None:
        attrs.append(["WGPEER_A_ENDPOINT", endpoint])
    if ips:
        attrs.append(["WGPEER_A_ALLOWEDIPS", ips])
    return {"attrs": attrs}


def message(device: bool, peers: list[dict[str, object]]) -> bytes:
    msg = WgMsg()
    msg["cmd"] = WG_CMD_GET_DEVICE
    msg["version"] = WG_GENL_VERSION
    msg["header"]["type"] = FAMILY_ID
    msg["header"]["flags"] = NLM_F_MULTI
    msg["header"]["sequence_number"] = SEQ
    msg["header"]["pid"] = PORT_ID
    if device:
        msg["attrs"] += [
            ["WGDEVICE_A_LISTEN_PORT", 51820],
            ["WGDEVICE_A_FWMARK", 0x1234],
            ["WGDEVICE_A_IFINDEX", 7],
            ["WGDEVICE_A_IFNAME", "wg0"],
            ["WGDEVICE_A_PRIVATE_KEY", PRIV],
            ["WGDEVICE_A_PUBLIC_KEY", public_from_private(PRIV)],
        ]
    msg["attrs"].append(["WGDEVICE_A_PEERS", peers])
    msg.encode()
    return bytes(msg.data)


def done() -> bytes:
    return struct.pack("=IHHIIi", 20, 3, NLM_F_MULTI, SEQ, PORT_ID, 0)


def main() -> None:
    p1 = peer(
        PEER1,
        handshake=(1700000123, 456000000),
        keepalive=25,
        tx=123456,
        rx=654321,
        endpoint=sockaddr4("192.0.2.1", 51820),
        ips=allowed("10.1.0.0/16", "fd01::/64", "10.1.2.3/32"),
    )
    p2 = peer(PEER2, endpoint=sockaddr6("2001:db8::2", 4242), ips=allowed("10.2.0.0/24"))
    p3 = peer(PEER3, endpoint=sockaddr6("fe80::3", 51820, scope=5))
    single = [message(True, [p1, p2, p3]), done()]

    many = [f"10.3.{i}.0/24" for i in range(40)]
    p2a = peer(PEER2, endpoint=sockaddr6("2001:db8::2", 4242), ips=allowed(*many[:25]))
    p2b: dict[str, object] = {
        "attrs": [["WGPEER_A_PUBLIC_KEY", PEER2], ["WGPEER_A_ALLOWEDIPS", allowed(*many[25:])]]}
    split = [message(True, [p1, p2a]), message(False, [p2b, p3]), done()]

    for name, msgs in (("netlink_get_single.hex", single), ("netlink_get_split.hex", split)):
        with open(os.path.join(HERE, name), "w") as f:
            f.write("".join(m.hex() + "\n" for m in msgs))
        print(f"wrote {name}: {len(msgs)} messages")


if __name__ == "__main__":
    main()
