"""The Babel socket: UDP on the node's control link-local address, one interface.

Bound to the WireGuard interface (SO_BINDTODEVICE where allowed, and the scope id), so
only the tunnel's datagrams arrive; each readable burst (up to 64 datagrams) is handed
to the runtime as one batch, so the engine's output is flushed once per burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable

from wgcast.daemon.ports import Datagrams

log = logging.getLogger("wgcast")

#: Datagrams read per readable event before the engine's output is flushed.
BURST = 64


class UdpTransport:
    """`ports.Transport` over a real UDP socket."""

    def __init__(self, ifname: str, port: int) -> None:
        self.ifname = ifname
        self.port = port
        self._sock: socket.socket | None = None
        self._ifindex = 0
        self._control: ipaddress.IPv6Address | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_datagrams: Callable[[Datagrams], None] | None = None

    def open(self, control: ipaddress.IPv6Address,
             on_datagrams: Callable[[Datagrams], None]) -> None:
        self._control = control
        self._ifindex = socket.if_nametoindex(self.ifname)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
        sock.bind((str(control), self.port, 0, self._ifindex))
        sock.setblocking(False)
        self._sock = sock
        self._on_datagrams = on_datagrams
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def reopen(self) -> None:
        """Close and bind again on the interface's current ifindex (the interface was
        deleted and recreated, or wireguard-go restarted): same address, same callback."""
        assert self._on_datagrams is not None and self._control is not None
        on_datagrams = self._on_datagrams
        self.close()
        self.open(self._control, on_datagrams)

    def _on_readable(self) -> None:
        assert self._sock is not None and self._on_datagrams is not None
        batch: Datagrams = []
        for _ in range(BURST):
            try:
                data, addr = self._sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("receive: %s", e)
                break
            try:
                src = ipaddress.IPv6Address(addr[0].split("%")[0])
            except ValueError:
                continue
            batch.append((src, data))
        self._on_datagrams(batch)

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        assert self._sock is not None
        # No handshake yet or peer unreachable: the next Hello retries.
        with contextlib.suppress(OSError):
            self._sock.sendto(data, (str(dest), self.port, 0, self._ifindex))

    def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        if self._sock is not None:
            self._sock.close()
            self._sock = None
