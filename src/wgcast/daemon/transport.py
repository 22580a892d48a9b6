"""The Babel sockets: UDP on the node's control link-local address, one interface, and
a second one bound to Babel's multicast group ff02::1:6 (joined on that interface).

Both are bound to the WireGuard interface (SO_BINDTODEVICE where allowed, and the scope
id), so only the tunnel's datagrams arrive; each readable burst (up to 64 datagrams) is
handed to the runtime as one batch, so the engine's output is flushed once per burst.
Each datagram carries the kernel's arrival time (SO_TIMESTAMPNS, moved to the loop's
monotonic clock): a Hello that waited in the socket while the daemon was busy is dated
when it arrived, so the RTT it samples is the link's and not our event loop's lateness.
Everything is sent from the control address: unicast to a neighbour's address, or to
ff02::1:6 for a neighbour that needs multicast Hellos (babeld, BIRD, FRR), which
WireGuard delivers to the one peer whose AllowedIPs cover the group. The multicast
socket is best effort: without it wgcast neighbours still work (they speak unicast).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable

from wgcast.daemon.ports import BABEL_GROUP, Datagrams

log = logging.getLogger("wgcast")

#: Datagrams read per readable event before the engine's output is flushed.
BURST = 64
#: Bursts `drain` reads at most (a flood must not hold the timer back for ever).
DRAIN_BURSTS = 16
#: SO_TIMESTAMPNS (asm-generic/socket.h; Python's socket module does not name it): the
#: receive time as a struct timespec in a control message of the same type.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
#: An arrival stamp further from now than this is not believed (a wall-clock step).
MAX_SKEW = 5.0
#: Source and destination addresses remembered in their parsed forms (the neighbours':
#: parsing one for every datagram was a tenth of an idle daemon's receive path).
ADDR_CACHE = 4096
#: (BABEL_GROUP lives in ports.py, where the LAN service reads it too.)
__all__ = ["BABEL_GROUP", "BURST", "UdpTransport"]


class UdpTransport:
    """`ports.Transport` over a real UDP socket."""

    def __init__(self, ifname: str, port: int) -> None:
        self.ifname = ifname
        self.port = port
        self._sock: socket.socket | None = None
        self._msock: socket.socket | None = None
        self._ifindex = 0
        self._control: ipaddress.IPv6Address | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_datagrams: Callable[[Datagrams], None] | None = None
        self._src: dict[str, ipaddress.IPv6Address] = {}
        self._dst: dict[ipaddress.IPv6Address, tuple[str, int, int, int]] = {}

    def open(self, control: ipaddress.IPv6Address,
             on_datagrams: Callable[[Datagrams], None]) -> None:
        self._control = control
        self._ifindex = socket.if_nametoindex(self.ifname)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((str(control), self.port, 0, self._ifindex))
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self._ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setblocking(False)
        self._sock = sock
        self._on_datagrams = on_datagrams
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), lambda: self._on_readable(sock))
        try:
            self._msock = self._open_group()
        except OSError as e:
            log.warning("%s: cannot join %s (%s): only unicast Babel neighbours",
                        self.ifname, BABEL_GROUP, e)
        else:
            msock = self._msock
            self._loop.add_reader(msock.fileno(), lambda: self._on_readable(msock))

    def reopen(self) -> None:
        """Close and bind again on the interface's current ifindex (the interface was
        deleted and recreated, or wireguard-go restarted): same address, same callback."""
        assert self._on_datagrams is not None and self._control is not None
        on_datagrams = self._on_datagrams
        self.close()
        self.open(self._control, on_datagrams)

    def _open_group(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                self.ifname.encode())
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((str(BABEL_GROUP), self.port, 0, self._ifindex))
            mreq = BABEL_GROUP.packed + struct.pack("@I", self._ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _on_readable(self, sock: socket.socket) -> int:
        """Read one burst and hand it over; returns how many datagrams were read."""
        assert self._on_datagrams is not None
        batch: Datagrams = []
        space = socket.CMSG_SPACE(_TIMESPEC.size)
        # The wall clock's offset to the loop's clock, once per burst.
        mono = time.monotonic()
        offset = time.time() - mono
        for _ in range(BURST):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(65535, space)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("receive: %s", e)
                break
            src = self._src.get(addr[0])
            if src is None:
                try:
                    src = ipaddress.IPv6Address(addr[0].split("%")[0])
                except ValueError:
                    continue
                if len(self._src) >= ADDR_CACHE:
                    self._src.clear()
                self._src[addr[0]] = src
            batch.append((src, data, _arrival(ancdata, offset, mono)))
        if batch:
            self._on_datagrams(batch)
        return len(batch)

    def drain(self) -> None:
        """Read what has already arrived (at most DRAIN_BURSTS bursts a socket): before
        a timer judges a neighbour silent, its Hellos queued behind a flood count."""
        for sock in (self._sock, self._msock):
            for _ in range(DRAIN_BURSTS):
                if sock is None or sock.fileno() < 0 or self._on_readable(sock) < BURST:
                    break

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        assert self._sock is not None
        # No handshake yet or peer unreachable: the next Hello retries.
        to = self._dst.get(dest)
        if to is None or to[3] != self._ifindex:
            if len(self._dst) >= ADDR_CACHE:
                self._dst.clear()
            to = self._dst[dest] = (str(dest), self.port, 0, self._ifindex)
        with contextlib.suppress(OSError):
            self._sock.sendto(data, to)

    def close(self) -> None:
        for sock in (self._sock, self._msock):
            if sock is None:
                continue
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sock = self._msock = None


def _arrival(ancdata: list[tuple[int, int, bytes]], offset: float, mono: float) -> float | None:
    """The kernel's receive time on the monotonic clock, None without a believable one."""
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and \
                len(raw) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(raw)
            at = sec + nsec / 1e9 - offset
            return min(at, mono) if mono - at < MAX_SKEW else None
    return None
