"""The Babel socket on a real UDP socket (loopback): arrival times and drain."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from wgcast.daemon.ports import Datagrams
from wgcast.daemon.transport import BURST, UdpTransport

LOOPBACK = ipaddress.IPv6Address("::1")


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def test_a_datagram_read_late_is_dated_when_it_arrived() -> None:
    """The loop is busy for 100 ms after each datagram arrived: it is handed over with
    the kernel's arrival time on the loop's clock, not the time it was read."""

    async def main() -> list[tuple[Datagrams, float, float]]:
        port = free_port()
        t = UdpTransport("lo", port)
        got: Datagrams = []
        t.open(LOOPBACK, got.extend)
        out = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        rounds: list[tuple[Datagrams, float, float]] = []
        try:
            # The kernel turns receive timestamps on lazily (a deferred static key) once
            # a socket asks: until then a datagram is dated when read. Wait for that.
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                got.clear()
                out.sendto(b"warm", ("::1", port))
                time.sleep(0.02)
                read = time.monotonic()
                t.drain()
                if got and got[0][2] is not None and got[0][2] < read - 0.01:
                    break
            for _ in range(3):
                got.clear()
                sent = time.monotonic()
                out.sendto(b"hello", ("::1", port))
                time.sleep(0.1)  # busy elsewhere: the datagram waits in the socket
                read = time.monotonic()
                t.drain()
                rounds.append((list(got), sent, read))
            return rounds
        finally:
            out.close()
            t.close()

    for got, sent, read in asyncio.run(main()):
        assert [(src, data) for src, data, _ in got] == [(LOOPBACK, b"hello")]
        arrived = got[0][2]
        assert arrived is not None
        assert sent - 0.001 <= arrived < read - 0.09


def test_drain_delivers_everything_already_queued_in_bursts() -> None:
    """More than one burst waits in the socket: drain reads it all now, a burst a batch."""

    async def main() -> list[int]:
        port = free_port()
        t = UdpTransport("lo", port)
        sizes: list[int] = []
        t.open(LOOPBACK, lambda batch: sizes.append(len(batch)))
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as out:
                for i in range(BURST + 10):
                    out.sendto(i.to_bytes(2, "big"), ("::1", port))
            t.drain()
            return sizes
        finally:
            t.close()

    assert asyncio.run(main()) == [BURST, 10]
