"""Kernel WireGuard through generic netlink (family "wireguard"), via pyroute2.

Same interface as `uapi.UapiDevice` (`WireGuardBackend`). pyroute2's own
`WireGuard.set` sends one peer per message and knows no per-prefix removal, so this
module has its own message class `WgMsg` (built on pyroute2's `genlmsg`/`nla`) with the
full attribute set of include/uapi/linux/wireguard.h, including WGALLOWEDIP_A_FLAGS
(Linux >= 6.16: WGALLOWEDIP_F_REMOVE_ME).

Wire facts this follows (drivers/net/wireguard/netlink.c):
- A GET_DEVICE dump is split over several NLM_F_MULTI messages when large; only the
  first carries the device attributes, and a peer whose AllowedIPs did not fit
  continues in the next message under the same public key. NLM_F_DUMP_INTR marks a
  dump that raced a change: read again.
- Peer and AllowedIP list entries are nested attributes of type 0 (NLA_F_NESTED set).
- A SET is applied in order and stops at the first error; earlier changes stay.
- Older kernels parse allowed-IP entries strictly, so an unknown WGALLOWEDIP_A_FLAGS
  is EINVAL: that is how removal support is tested.

All socket work runs on one worker thread (pyroute2's sync sockets are per-thread).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import wgcast.dataplane.pyroute2_bare  # noqa: F401  (first: see there)

# isort: split
from pyroute2.netlink import (
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    genlmsg,
    nla,
)
from pyroute2.netlink.exceptions import NetlinkError

from wgcast.dataplane.types import (
    Device,
    InvalidValue,
    MalformedReply,
    NotSupported,
    Peer,
    PeerUpdate,
    Prefix,
    WireGuardBackend,
    endpoint_parts,
    error_for,
)
from wgcast.keys import public_from_private

WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1

WGDEVICE_F_REPLACE_PEERS = 0x1
WGPEER_F_REMOVE_ME = 0x1
WGPEER_F_REPLACE_ALLOWEDIPS = 0x2
WGPEER_F_UPDATE_ONLY = 0x4
WGALLOWEDIP_F_REMOVE_ME = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10

MAX_MESSAGE_BYTES = 32 * 1024
"""Split set requests above this size (the socket send buffer is ~200 KiB)."""

T = TypeVar("T")


class WgMsg(genlmsg):  # type: ignore[misc]
    """WireGuard generic netlink message, both directions."""

    prefix = "WGDEVICE_A_"
    nla_map = (
        ("WGDEVICE_A_UNSPEC", "none"),
        ("WGDEVICE_A_IFINDEX", "uint32"),
        ("WGDEVICE_A_IFNAME", "asciiz"),
        ("WGDEVICE_A_PRIVATE_KEY", "cdata"),
        ("WGDEVICE_A_PUBLIC_KEY", "cdata"),
        ("WGDEVICE_A_FLAGS", "uint32"),
        ("WGDEVICE_A_LISTEN_PORT", "uint16"),
        ("WGDEVICE_A_FWMARK", "uint32"),
        ("WGDEVICE_A_PEERS", "*peer"),
    )

    class peer(nla):  # type: ignore[misc]
        prefix = "WGPEER_A_"
        nla_flags = NLA_F_NESTED
        header_type = NLA_F_NESTED  # list entries: type 0, nested, as the kernel does
        nla_map = (
            ("WGPEER_A_UNSPEC", "none"),
            ("WGPEER_A_PUBLIC_KEY", "cdata"),
            ("WGPEER_A_PRESHARED_KEY", "cdata"),
            ("WGPEER_A_FLAGS", "uint32"),
            ("WGPEER_A_ENDPOINT", "cdata"),
            ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "uint16"),
            ("WGPEER_A_LAST_HANDSHAKE_TIME", "cdata"),
            ("WGPEER_A_RX_BYTES", "uint64"),
            ("WGPEER_A_TX_BYTES", "uint64"),
            ("WGPEER_A_ALLOWEDIPS", "*allowedip"),
            ("WGPEER_A_PROTOCOL_VERSION", "uint32"),
        )

        class allowedip(nla):  # type: ignore[misc]
            prefix = "WGALLOWEDIP_A_"
            nla_flags = NLA_F_NESTED
            header_type = NLA_F_NESTED
            nla_map = (
                ("WGALLOWEDIP_A_UNSPEC", "none"),
                ("WGALLOWEDIP_A_FAMILY", "uint16"),
                ("WGALLOWEDIP_A_IPADDR", "cdata"),
                ("WGALLOWEDIP_A_CIDR_MASK", "uint8"),
                ("WGALLOWEDIP_A_FLAGS", "uint32"),
            )


# --------------------------------------------------------------------------- codec


def sockaddr_to_endpoint(raw: bytes) -> str | None:
    """sockaddr_in / sockaddr_in6 as the kernel stores it -> "ip:port" / "[ip6]:port"."""
    if len(raw) < 2:
        return None
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= 8:
        (port,) = struct.unpack_from(">H", raw, 2)
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}"
    if family == socket.AF_INET6 and len(raw) >= 28:
        (port,) = struct.unpack_from(">H", raw, 2)
        (scope,) = struct.unpack_from("=I", raw, 24)
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        return f"[{host}{f'%{scope}' if scope else ''}]:{port}"
    return None


def endpoint_to_sockaddr(endpoint: str) -> bytes:
    """ "ip:port" / "[ip6%scope]:port" -> sockaddr bytes (family in host order)."""
    host, port = endpoint_parts(endpoint)
    addr, _, zone = host.partition("%")
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + ip.packed + bytes(8)
    scope = 0
    if zone:
        scope = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack(">HI", port, 0)
        + ip.packed
        + struct.pack("=I", scope)
    )


def _allowedip_attrs(p: Prefix, remove: bool) -> dict[str, Any]:
    attrs: list[list[Any]] = [
        ["WGALLOWEDIP_A_FAMILY", socket.AF_INET if p.version == 4 else socket.AF_INET6],
        ["WGALLOWEDIP_A_IPADDR", p.network_address.packed],
        ["WGALLOWEDIP_A_CIDR_MASK", p.prefixlen],
    ]
    if remove:  # only then: older kernels reject the attribute outright
        attrs.append(["WGALLOWEDIP_A_FLAGS", WGALLOWEDIP_F_REMOVE_ME])
    return {"attrs": attrs}


def _allowedip_size(p: Prefix, remove: bool) -> int:
    return 4 + 8 + 4 + len(p.network_address.packed) + 8 + (8 if remove else 0)


def _peer_attrs(up: PeerUpdate, ips: list[tuple[Prefix, bool]], first: bool) -> dict[str, Any]:
    attrs: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", up.public_key]]
    if up.remove:
        attrs.append(["WGPEER_A_FLAGS", WGPEER_F_REMOVE_ME])
        return {"attrs": attrs}
    flags = WGPEER_F_UPDATE_ONLY if (up.update_only or not first) else 0
    if up.replace_allowed_ips and first:
        flags |= WGPEER_F_REPLACE_ALLOWEDIPS
    attrs.append(["WGPEER_A_FLAGS", flags])
    if first and up.endpoint is not None:
        attrs.append(["WGPEER_A_ENDPOINT", endpoint_to_sockaddr(up.endpoint)])
    if first and up.persistent_keepalive is not None:
        if not 0 <= up.persistent_keepalive <= 65535:
            raise ValueError("persistent_keepalive must be 0..65535")
        attrs.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", up.persistent_keepalive])
    if ips:
        attrs.append(["WGPEER_A_ALLOWEDIPS", [_allowedip_attrs(p, rm) for p, rm in ips]])
    return {"attrs": attrs}


def build_set_messages(
    ifname: str,
    updates: Sequence[PeerUpdate],
    *,
    private_key: bytes | None = None,
    listen_port: int | None = None,
    fwmark: int | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> list[WgMsg]:
    """WG_CMD_SET_DEVICE messages for `updates`, split to stay under `max_bytes`.

    A peer split across messages continues with UPDATE_ONLY and without the replace
    flag, endpoint or keepalive (those went with its first part), like wireguard-tools.
    Messages are not encoded yet; pyroute2 sets type/seq/pid when sending.
    """
    msgs: list[tuple[WgMsg, list[dict[str, Any]]]] = []
    peers: list[dict[str, Any]] = []
    size = 0

    def new_msg(device_attrs: bool) -> None:
        nonlocal peers, size
        msg = WgMsg()
        msg["cmd"] = WG_CMD_SET_DEVICE
        msg["version"] = WG_GENL_VERSION
        msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
        if device_attrs:
            if private_key is not None:
                if len(private_key) != 32:
                    raise ValueError("a private key is 32 bytes")
                msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", private_key])
            if listen_port is not None:
                msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", listen_port])
            if fwmark is not None:
                msg["attrs"].append(["WGDEVICE_A_FWMARK", fwmark])
        peers = []
        msgs.append((msg, peers))
        size = 96 + len(ifname)

    new_msg(True)
    overhead = 4 + 36 + 8 + 32 + 8 + 4
    for up in updates:
        if len(up.public_key) != 32:
            raise ValueError("a public key is 32 bytes")
        ips = up.allowed_ips
        i = 0
        first = True
        while True:
            need = _allowedip_size(*ips[i]) if i < len(ips) else 0
            if peers and size + overhead + need > max_bytes:
                new_msg(False)
            size += overhead
            start = i
            while i < len(ips):
                need = _allowedip_size(*ips[i])
                if i > start and size + need > max_bytes:
                    break
                size += need
                i += 1
            peers.append(_peer_attrs(up, ips[start:i], first))
            first = False
            if i >= len(ips):
                break
            new_msg(False)
    out: list[WgMsg] = []
    for msg, entries in msgs:
        if entries:  # a device-only change carries no (empty) peers list
            msg["attrs"].append(["WGDEVICE_A_PEERS", entries])
        out.append(msg)
    return out


def build_get_message(ifname: str) -> WgMsg:
    msg = WgMsg()
    msg["cmd"] = WG_CMD_GET_DEVICE
    msg["version"] = WG_GENL_VERSION
    msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
    return msg


def decode_stream(data: bytes) -> list[WgMsg]:
    """Split raw netlink bytes (as read from the socket) into decoded `WgMsg`s.

    NLMSG_DONE ends the stream; an NLMSG_ERROR with a non-zero code raises.
    """
    out: list[WgMsg] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or offset + length > len(data):
            raise MalformedReply(errno.EPROTO, "get", f"bad netlink length {length}")
        chunk = data[offset : offset + length]
        offset += (length + 3) & ~3
        if kind == NLMSG_DONE:
            break
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", chunk, 16)
            if code:
                raise error_for(code, "get")
            continue
        msg = WgMsg(chunk)
        msg.decode()
        out.append(msg)
    return out


def _nested_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value)


def parse_dump(msgs: Iterable[Any]) -> Device:
    """Merge the messages of one GET_DEVICE dump into a `Device`."""
    private_key: bytes | None = None
    public_key: bytes | None = None
    listen_port = 0
    fwmark = 0
    peers: list[dict[str, Any]] = []
    for msg in msgs:
        if msg.get_attr("WGDEVICE_A_PRIVATE_KEY") is not None:
            private_key = bytes(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
        if msg.get_attr("WGDEVICE_A_PUBLIC_KEY") is not None:
            public_key = bytes(msg.get_attr("WGDEVICE_A_PUBLIC_KEY"))
        if msg.get_attr("WGDEVICE_A_LISTEN_PORT") is not None:
            listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT"))
        if msg.get_attr("WGDEVICE_A_FWMARK") is not None:
            fwmark = int(msg.get_attr("WGDEVICE_A_FWMARK"))
        for entry in _nested_list(msg.get_attr("WGDEVICE_A_PEERS")):
            key = entry.get_attr("WGPEER_A_PUBLIC_KEY")
            if key is None or len(key) != 32:
                raise MalformedReply(errno.EPROTO, "get", "peer without a 32-byte public key")
            key = bytes(key)
            if peers and peers[-1]["public_key"] == key:
                cur = peers[-1]  # continuation of a peer split over two messages
            else:
                cur = {"public_key": key, "allowed_ips": []}
                peers.append(cur)
            _peer_fields(entry, cur)
    if public_key is None and private_key is not None and any(private_key):
        public_key = public_from_private(private_key)
    return Device(
        private_key=private_key,
        public_key=public_key,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=[Peer(**p) for p in peers],
    )


def _peer_fields(entry: Any, cur: dict[str, Any]) -> None:
    raw = entry.get_attr("WGPEER_A_ENDPOINT")
    if raw is not None:
        cur["endpoint"] = sockaddr_to_endpoint(bytes(raw))
    hs = entry.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    if hs is not None and len(hs) >= 16:
        sec, nsec = struct.unpack_from("=qq", bytes(hs))
        cur["last_handshake"] = None if sec == 0 and nsec == 0 else sec + nsec / 1e9
    for attr, name in (
        ("WGPEER_A_RX_BYTES", "rx_bytes"),
        ("WGPEER_A_TX_BYTES", "tx_bytes"),
        ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "persistent_keepalive"),
    ):
        value = entry.get_attr(attr)
        if value is not None:
            cur[name] = int(value)
    for ip in _nested_list(entry.get_attr("WGPEER_A_ALLOWEDIPS")):
        family = ip.get_attr("WGALLOWEDIP_A_FAMILY")
        addr = ip.get_attr("WGALLOWEDIP_A_IPADDR")
        cidr = ip.get_attr("WGALLOWEDIP_A_CIDR_MASK")
        if family not in (socket.AF_INET, socket.AF_INET6) or addr is None or cidr is None:
            raise MalformedReply(errno.EPROTO, "get", "incomplete allowed IP entry")
        text = socket.inet_ntop(family, bytes(addr))
        cur["allowed_ips"].append(ipaddress.ip_network(f"{text}/{cidr}", strict=False))


def preshared_key_of(msgs: Iterable[Any], public_key: bytes) -> bytes | None:
    """The preshared key of one peer in the messages of a dump (None: absent or zero)."""
    for msg in msgs:
        for entry in _nested_list(msg.get_attr("WGDEVICE_A_PEERS")):
            key = entry.get_attr("WGPEER_A_PUBLIC_KEY")
            if key is None or bytes(key) != public_key:
                continue
            psk = entry.get_attr("WGPEER_A_PRESHARED_KEY")
            if psk is not None and len(psk) == 32 and any(bytes(psk)):
                return bytes(psk)
    return None


def restart_messages(ifname: str, peer: Peer, preshared_key: bytes | None = None,
                     max_bytes: int = MAX_MESSAGE_BYTES) -> list[WgMsg]:
    """SET_DEVICE messages that remove `peer` and create it again with the same settings.

    The removal and the re-creation (with the first part of its AllowedIPs) share the
    first message; a very long list continues in the next ones (UPDATE_ONLY).
    """
    updates = [
        PeerUpdate(peer.public_key, remove=True),
        PeerUpdate(peer.public_key, endpoint=peer.endpoint,
                   persistent_keepalive=peer.persistent_keepalive or None,
                   allowed_ips=[(p, False) for p in peer.allowed_ips]),
    ]
    msgs = build_set_messages(ifname, updates, max_bytes=max_bytes)
    if preshared_key is not None:
        if len(preshared_key) != 32:
            raise ValueError("a preshared key is 32 bytes")
        # The re-creation is the first entry after the removal (maybe in message 2).
        entries = [e for m in msgs for name, v in m["attrs"] if name == "WGDEVICE_A_PEERS"
                   for e in v]
        entries[1]["attrs"].insert(1, ["WGPEER_A_PRESHARED_KEY", preshared_key])
    return msgs


# --------------------------------------------------------------------------- backend

_REMOVAL_TEST_PREFIXES = tuple(
    ipaddress.ip_network(p)
    for p in ("192.0.2.255/32", "198.51.100.255/32", "203.0.113.255/32", "2001:db8::ffff/128")
)


class NetlinkDevice(WireGuardBackend):
    """One kernel WireGuard interface (current network namespace)."""

    kind = "netlink"

    def __init__(self, ifname: str, *, dump_retries: int = 5) -> None:
        super().__init__()
        self._lock = asyncio.Lock()
        self._ifname = ifname
        self.dump_retries = dump_retries
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wgcast-nl-{ifname}")
        self._sock: Any = None

    @property
    def name(self) -> str:
        return self._ifname

    def _mutex(self) -> asyncio.Lock:
        return self._lock

    def __repr__(self) -> str:
        return f"NetlinkDevice({self._ifname!r})"

    # ----------------------------------------------------------------- transport

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _socket(self) -> Any:
        if self._sock is None:
            from pyroute2.netlink.generic import GenericNetlinkSocket

            sock = GenericNetlinkSocket()
            try:
                sock.bind(WG_GENL_NAME, WgMsg)
            except NetlinkError as e:
                sock.close()
                raise NotSupported(
                    errno.EOPNOTSUPP,
                    "bind",
                    f"generic netlink family {WG_GENL_NAME!r} not found ({e}): "
                    "no kernel WireGuard here, use the UAPI backend",
                ) from e
            self._sock = sock
        return self._sock

    def _transact(self, msg: WgMsg, dump: bool, request: str) -> list[Any]:
        """One request on the worker thread; netlink errors become `WireGuardError`s."""
        sock = self._socket()
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        try:
            return list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=flags))
        except NetlinkError as e:
            raise error_for(e.code or errno.EIO, request, str(e)) from e

    def _dump_sync(self) -> list[Any]:
        """The messages of one consistent GET_DEVICE dump (re-read if interrupted)."""
        for _ in range(self.dump_retries):
            replies = self._transact(build_get_message(self._ifname), True, "get")
            msgs = [m for m in replies if isinstance(m, WgMsg)]
            if not any(m["header"]["flags"] & NLM_F_DUMP_INTR for m in msgs):
                return msgs
        raise error_for(errno.EAGAIN, "get", "dump kept changing under us (NLM_F_DUMP_INTR)")

    def _get_sync(self) -> Device:
        return parse_dump(self._dump_sync())

    async def close(self) -> None:
        def shut() -> None:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

        await self._run(shut)
        self._pool.shutdown(wait=False)

    # ----------------------------------------------------------------- backend

    async def _get(self) -> Device:
        return await self._run(self._get_sync)

    async def _send(
        self,
        updates: Sequence[PeerUpdate],
        *,
        private_key: bytes | None = None,
        listen_port: int | None = None,
        fwmark: int | None = None,
        request: str = "set",
    ) -> None:
        msgs = build_set_messages(
            self._ifname,
            updates,
            private_key=private_key,
            listen_port=listen_port,
            fwmark=fwmark,
        )

        def send_all() -> None:
            for msg in msgs:
                self._transact(msg, False, request)

        await self._run(send_all)

    def _restart_sync(self, public_key: bytes) -> bool:
        msgs = self._dump_sync()
        peer = parse_dump(msgs).peer(public_key)
        if peer is None:
            return False
        psk = preshared_key_of(msgs, public_key)
        for msg in restart_messages(self._ifname, peer, psk):
            self._transact(msg, False, "restart handshake")
        return True

    async def restart_handshake(self, public_key: bytes) -> bool:
        """Remove the peer and add it back as it was (endpoint, preshared key, keepalive,
        AllowedIPs) in one SET_DEVICE message where it fits, read and written under the
        mutex so no AllowedIPs change slips in between. The kernel rate-limits handshake
        initiations per peer object: the new one may initiate at once.
        """
        async with self._lock:
            return await self._run(self._restart_sync, public_key)

    async def _test_removal(self) -> bool | None:
        """WGALLOWEDIP_F_REMOVE_ME on a prefix an existing peer does not hold.

        Linux >= 6.16 removes nothing and answers 0; older kernels reject the unknown
        attribute (EINVAL) before touching the peer. No peers: None (ask later).
        """
        dev = await self._get()
        if not dev.peers:
            return None
        peer = dev.peers[0]
        test_prefix = next(p for p in _REMOVAL_TEST_PREFIXES if p not in peer.allowed_ips)
        up = PeerUpdate(peer.public_key, update_only=True, allowed_ips=[(test_prefix, True)])
        try:
            await self._send([up], request="test allowed-ip removal")
        except InvalidValue:
            return False
        return True
