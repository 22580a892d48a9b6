"""asyncio client of the WireGuard cross-platform UAPI (wireguard-go, boringtun).

Protocol: https://www.wireguard.com/xplatform/ . One request per connection: connect to
/var/run/wireguard/<iface>.sock, write "get=1\\n\\n" or "set=1\\n...\\n\\n", read until
the blank line that ends "errno=N\\n\\n", close. A fresh connection per request keeps a
half-read reply or a daemon restart from poisoning the next request. Keys are hex on the
wire and 32-byte `bytes` in the API.

A set is applied line by line and stops at the first bad line: the lines before it stay
applied. Callers re-read (`get`) and re-plan after any error.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Sequence
from typing import Any

from wgcast.dataplane.types import (
    Device,
    DeviceIOError,
    DeviceNotFound,
    InvalidValue,
    MalformedReply,
    Peer,
    PeerUpdate,
    Prefix,
    WireGuardBackend,
    WireGuardError,
    error_for,
)
from wgcast.keys import public_from_private

SOCKET_DIR = "/var/run/wireguard"

UapiError = WireGuardError
"""Base of every error this module raises (the UAPI errno classes live in types.py)."""

# Prefixes from the documentation ranges: removing one a peer does not hold is a no-op
# in every implementation that supports removal, so it makes a harmless test.
_REMOVAL_TEST_PREFIXES = tuple(
    ipaddress.ip_network(p)
    for p in ("192.0.2.255/32", "198.51.100.255/32", "203.0.113.255/32", "2001:db8::ffff/128")
)


#: What `restart_handshake` copies from the old peer to the new one (every setting).
_RESTORED = frozenset({"preshared_key", "endpoint", "persistent_keepalive_interval",
                       "allowed_ip", "protocol_version"})


class UapiDevice(WireGuardBackend):
    """One userspace WireGuard interface, driven through its UAPI socket."""

    kind = "uapi"

    def __init__(
        self, ifname: str, *, socket_dir: str = SOCKET_DIR, timeout: float = 10.0
    ) -> None:
        super().__init__()
        self._lock = asyncio.Lock()
        self._ifname = ifname
        self.path = os.path.join(socket_dir, f"{ifname}.sock")
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self._ifname

    def _mutex(self) -> asyncio.Lock:
        return self._lock

    def __repr__(self) -> str:
        return f"UapiDevice({self._ifname!r})"

    # ----------------------------------------------------------------- transport

    async def request(self, payload: str, kind: str = "request") -> str:
        """Send one raw request; return the reply without its errno line.

        Raises the errno's `WireGuardError` subclass, naming `kind` in the message.
        Public for tests and debugging; the daemon uses the typed methods.
        """
        try:
            async with asyncio.timeout(self.timeout):
                reply = await _exchange(self.path, payload.encode(), kind)
        except TimeoutError as e:
            detail = f"{self.path}: no reply within {self.timeout}s"
            raise DeviceIOError(errno.ETIMEDOUT, kind, detail) from e
        return check_reply(reply, kind, self.path)

    # ----------------------------------------------------------------- backend

    async def _get(self) -> Device:
        return parse_get(await self.request("get=1\n\n", "get"))

    async def _send(
        self,
        updates: Sequence[PeerUpdate],
        *,
        private_key: bytes | None = None,
        listen_port: int | None = None,
        fwmark: int | None = None,
        request: str = "set",
    ) -> None:
        text = format_set(
            updates, private_key=private_key, listen_port=listen_port, fwmark=fwmark
        )
        await self.request(text, request)

    async def restart_handshake(self, public_key: bytes) -> bool:
        """Remove the peer and add it back as it was, in one request (under the mutex, so
        no AllowedIPs change slips in between): the new peer has no handshake rate limit.
        """
        want = public_key.hex()
        async with self._lock:
            body = await self.request("get=1\n\n", "get")
            section: list[str] | None = None
            for line in body.splitlines():
                key, _, value = line.partition("=")
                if key == "public_key":
                    if section is not None:
                        break
                    if value == want:
                        section = []
                elif section is not None and key in _RESTORED and value:
                    section.append(f"{key}={value}\n")
            if section is None:
                return False
            text = "".join(["set=1\n", f"public_key={want}\n", "remove=true\n",
                            f"public_key={want}\n", *section, "\n"])
            await self.request(text, "restart handshake")
        return True

    async def _test_removal(self) -> bool | None:
        """Remove, for an existing peer with update_only, a prefix it does not hold.

        wireguard-go >= 0.0.20250522 accepts `allowed_ip=-P` (and removes nothing here);
        older versions reject the line with EINVAL before touching anything.
        Without peers there is nothing to remove yet: None (ask again later).
        """
        dev = await self._get()
        if not dev.peers:
            return None
        peer = dev.peers[0]
        test_prefix = next(p for p in _REMOVAL_TEST_PREFIXES if p not in peer.allowed_ips)
        up = PeerUpdate(peer.public_key, update_only=True, allowed_ips=[(test_prefix, True)])
        text = format_set([up])
        try:
            await self.request(text, "test allowed_ip removal")
        except InvalidValue:
            return False
        return True


async def _exchange(path: str, data: bytes, kind: str) -> bytes:
    """Connect, write the request, read to the blank line, close.

    Plain non-blocking socket calls rather than asyncio streams: wireguard-go answers a
    bad line at once and then hangs up, possibly while a long request is still being
    written. A stream transport would drop the already received reply on the write
    error; the socket keeps it readable.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            await loop.sock_connect(sock, path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DeviceNotFound(errno.ENOENT, kind, f"{path}: {e.strerror}") from e
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await loop.sock_sendall(sock, data)
        buf = bytearray()
        while not buf.endswith(b"\n\n"):  # a reply has no blank line before its end
            try:
                chunk = await loop.sock_recv(sock, 1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        return bytes(buf)
    finally:
        sock.close()


def check_reply(reply: bytes, kind: str, where: str = "") -> str:
    """The body of a raw reply; raises the errno's error if it is not 0."""
    text = reply.decode("utf-8", "replace")
    if not text.endswith("\n\n"):
        raise DeviceIOError(errno.EIO, kind, f"{where}: connection closed before the reply ended")
    body, _, last = text[:-2].rpartition("\n")
    if not last.startswith("errno="):
        raise MalformedReply(errno.EPROTO, kind, f"no errno line, last line {last[:60]!r}")
    try:
        code = int(last[6:])
    except ValueError as e:
        raise MalformedReply(errno.EPROTO, kind, f"bad errno line {last[:60]!r}") from e
    if code != 0:
        raise error_for(code, kind, where)
    return body + "\n" if body else ""


# --------------------------------------------------------------------------- codec


def parse_prefix(text: str) -> Prefix:
    """An `allowed_ip` value -> network (host bits masked), ~3x faster than ip_network."""
    addr, sep, plen = text.partition("/")
    try:
        if not sep:
            raise ValueError("no prefix length")
        if ":" in addr:
            raw = socket.inet_pton(socket.AF_INET6, addr)
            return ipaddress.IPv6Network((int.from_bytes(raw, "big"), int(plen)), strict=False)
        raw = socket.inet_pton(socket.AF_INET, addr)
        return ipaddress.IPv4Network((int.from_bytes(raw, "big"), int(plen)), strict=False)
    except (OSError, ValueError) as e:
        raise MalformedReply(errno.EPROTO, "get", f"bad allowed_ip {text[:60]!r}") from e


def prefix_text(p: Prefix) -> str:
    """A network as UAPI text; inet_ntop is ~5x faster than str() for IPv6."""
    if p.version == 4:
        return f"{p.network_address}/{p.prefixlen}"
    return f"{socket.inet_ntop(socket.AF_INET6, p.network_address.packed)}/{p.prefixlen}"


def _key(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError as e:
        raise MalformedReply(errno.EPROTO, "get", f"{what} is not hex") from e
    if len(raw) != 32:
        raise MalformedReply(errno.EPROTO, "get", f"{what} is {len(raw)} bytes, not 32")
    return raw


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise MalformedReply(errno.EPROTO, "get", f"{what}={value[:40]!r} is not a number") from e


def parse_get(text: str) -> Device:
    """Turn the body of a `get=1` reply (errno line removed) into a `Device`.

    Unknown keys are skipped: implementations add fields (boringtun, newer versions).
    An all-zero handshake time means "never" (None).
    """
    dev: dict[str, Any] = {"private_key": None, "listen_port": 0, "fwmark": 0}
    peers: list[Peer] = []
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is not None:
            sec, nsec = cur.pop("sec"), cur.pop("nsec")
            cur["last_handshake"] = None if sec == 0 and nsec == 0 else sec + nsec / 1e9
            peers.append(Peer(**cur))

    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise MalformedReply(errno.EPROTO, "get", f"line without '=': {line[:60]!r}")
        if key == "public_key":
            flush()
            cur = {"public_key": _key(value, key), "allowed_ips": [], "sec": 0, "nsec": 0}
        elif cur is None:
            if key == "private_key":
                dev["private_key"] = _key(value, key)
            elif key in ("listen_port", "fwmark"):
                dev[key] = _int(value, key)
        elif key == "allowed_ip":
            cur["allowed_ips"].append(parse_prefix(value))
        elif key == "endpoint":
            cur["endpoint"] = value
        elif key == "last_handshake_time_sec":
            cur["sec"] = _int(value, key)
        elif key == "last_handshake_time_nsec":
            cur["nsec"] = _int(value, key)
        elif key in ("rx_bytes", "tx_bytes"):
            cur[key] = _int(value, key)
        elif key == "persistent_keepalive_interval":
            cur["persistent_keepalive"] = _int(value, key)
    flush()
    priv = dev["private_key"]
    pub = public_from_private(priv) if priv is not None and any(priv) else None
    return Device(
        private_key=priv,
        public_key=pub,
        listen_port=dev["listen_port"],
        fwmark=dev["fwmark"],
        peers=peers,
    )


def _bounded(value: int, top: int, what: str) -> int:
    if not 0 <= value <= top:
        raise ValueError(f"{what} must be 0..{top}, got {value}")
    return value


def _prefix_line(p: Prefix, remove: bool) -> str:
    return f"allowed_ip={'-' if remove else ''}{prefix_text(p)}\n"


def format_set(
    updates: Sequence[PeerUpdate],
    *,
    private_key: bytes | None = None,
    listen_port: int | None = None,
    fwmark: int | None = None,
) -> str:
    """The text of one `set=1` request.

    Per peer: `update_only` comes right after `public_key` (so a missing peer is not
    left created), `replace_allowed_ips` before the `allowed_ip` lines it clears.
    """
    out = ["set=1\n"]
    if private_key is not None:
        if len(private_key) != 32:
            raise ValueError("a private key is 32 bytes")
        out.append(f"private_key={private_key.hex()}\n")
    if listen_port is not None:
        out.append(f"listen_port={_bounded(listen_port, 65535, 'listen_port')}\n")
    if fwmark is not None:
        out.append(f"fwmark={_bounded(fwmark, 2**32 - 1, 'fwmark')}\n")
    for up in updates:
        if len(up.public_key) != 32:
            raise ValueError("a public key is 32 bytes")
        out.append(f"public_key={up.public_key.hex()}\n")
        if up.remove:
            out.append("remove=true\n")
            continue
        if up.update_only:
            out.append("update_only=true\n")
        if up.replace_allowed_ips:
            out.append("replace_allowed_ips=true\n")
        if up.endpoint is not None:
            out.append(f"endpoint={up.endpoint}\n")
        if up.persistent_keepalive is not None:
            pka = _bounded(up.persistent_keepalive, 65535, "persistent_keepalive")
            out.append(f"persistent_keepalive_interval={pka}\n")
        out.extend(_prefix_line(p, rm) for p, rm in up.allowed_ips)
    out.append("\n")
    return "".join(out)
