"""Move holds: make-before-break moves that hold a prefix's packets while replies drain.

(Not the *restart hold* of `timers.restart_hold`, where neighbours keep our routes while
the daemon restarts: in code "hold" alone is never used, it is `move_hold` or
`restart_hold`.)

On one WireGuard interface AllowedIPs is both the forwarding table and the source filter:
once a prefix moves from peer X to peer Y, a packet *from* that prefix arriving through X
is dropped. When X is still alive (a drain, a better path elsewhere), the replies of the
queries already sent through X are on their way back and would be lost by the move.

So a planned move is done in three steps: the kernel route of the prefix is pointed at a
TUN device this module owns and the packets it receives are queued here (AllowedIPs still
names X: the replies still pass); after about one round trip through X the AllowedIPs
entry moves to Y, the route goes back to the WireGuard interface and the queued packets
are written back into the TUN, so the kernel forwards them, now towards Y. Queries are
delayed by up to the hold, none is lost. Failures (X dead, route retracted) are not held.

The queue is bounded in packets and bytes; overflow drops the newest and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
from collections import deque
from dataclasses import dataclass, field

from wgcast.dataplane.types import Prefix

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

MAX_PACKETS = 8192
MAX_BYTES = 16 * 2**20


def move_hold_ifname(wg_ifname: str) -> str:
    """The TUN device of a WireGuard interface (15 characters at most, unique per netns)."""
    return f"{wg_ifname[:13]}-h"


def packet_destination(pkt: bytes) -> tuple[int, int] | None:
    """(IP version, destination as an integer) of a raw IP packet, or None if malformed."""
    if not pkt:
        return None
    version = pkt[0] >> 4
    if version == 6 and len(pkt) >= 40:
        return 6, int.from_bytes(pkt[24:40], "big")
    if version == 4 and len(pkt) >= 20:
        return 4, int.from_bytes(pkt[16:20], "big")
    return None


@dataclass(slots=True)
class _Held:
    prefix: Prefix
    version: int
    network: int
    mask: int
    packets: deque[bytes] = field(default_factory=deque)


@dataclass(slots=True)
class MoveHoldStats:
    held: int = 0
    released: int = 0
    dropped_full: int = 0
    unmatched: int = 0  # arrived after the prefix's hold ended: re-injected at once
    holds: int = 0


class MoveHoldQueue:
    """The TUN device and the per-prefix queues of packets waiting for a move."""

    def __init__(self, ifname: str, *, max_packets: int = MAX_PACKETS,
                 max_bytes: int = MAX_BYTES) -> None:
        self.ifname = ifname
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.stats = MoveHoldStats()
        self._fd: int | None = None
        self._held: dict[Prefix, _Held] = {}
        self._count = 0
        self._bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The IP versions whose packets can be held (re-injection forwards them).
        self.families: set[int] = set()

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Create the TUN device (not yet up; the caller sets it up) and start reading."""
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH", self.ifname.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        # Re-injected packets are forwarded. IPv4 asks the input device (ours): allow it,
        # and our own source addresses on it. IPv6 forwards only when the host does
        # (net.ipv6.conf.all.forwarding): otherwise holding would drop what it holds.
        self.families = set()
        ok4 = all(_sysctl(f"net/ipv4/conf/{self.ifname}/{key}", value) for key, value in (
            ("rp_filter", "0"), ("accept_local", "1"), ("forwarding", "1")))
        if ok4:
            self.families.add(4)
        if _read_sysctl("net/ipv6/conf/all/forwarding") == "1":
            self.families.add(6)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        """Close the device (the kernel deletes it and its routes); queued packets go."""
        if self._fd is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None
        self._held.clear()
        self._count = self._bytes = 0

    def holding(self) -> list[Prefix]:
        return list(self._held)

    def hold(self, prefix: Prefix) -> None:
        """Queue the packets to `prefix` from now on (call before routing it here)."""
        if prefix in self._held:
            return
        net = prefix.network_address
        bits = 32 if prefix.version == 4 else 128
        mask = ((1 << prefix.prefixlen) - 1) << (bits - prefix.prefixlen)
        self._held[prefix] = _Held(prefix, prefix.version, int(net), mask)
        self.stats.holds += 1

    def release(self, prefix: Prefix) -> int:
        """Write the packets held for `prefix` back to the kernel (call after routing the
        prefix away from this device); returns how many."""
        h = self._held.pop(prefix, None)
        if h is None:
            return 0
        n = 0
        while h.packets:
            pkt = h.packets.popleft()
            self._count -= 1
            self._bytes -= len(pkt)
            if self._write(pkt):
                n += 1
        self.stats.released += n
        return n

    def _write(self, pkt: bytes) -> bool:
        if self._fd is None:
            return False
        try:
            os.write(self._fd, pkt)
            return True
        except OSError as e:
            log.debug("hold: re-injecting a packet failed: %s", e)
            return False

    def _match(self, dst: tuple[int, int]) -> _Held | None:
        version, addr = dst
        best: _Held | None = None
        for h in self._held.values():
            if h.version == version and addr & h.mask == h.network and (
                    best is None or h.mask > best.mask):
                best = h
        return best

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        for _ in range(256):
            try:
                pkt = os.read(fd, 65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("hold: reading %s failed: %s", self.ifname, e)
                return
            dst = packet_destination(pkt)
            h = self._match(dst) if dst is not None else None
            if h is None:
                # The hold ended between the kernel's routing and our read: the route
                # already points back at WireGuard, so re-injecting sends it on its way.
                self.stats.unmatched += 1
                self._write(pkt)
                continue
            if self._count >= self.max_packets or self._bytes + len(pkt) > self.max_bytes:
                self.stats.dropped_full += 1
                continue
            h.packets.append(pkt)
            self._count += 1
            self._bytes += len(pkt)
            self.stats.held += 1


def _sysctl(key: str, value: str) -> bool:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError:
        return False
    return _read_sysctl(key) == value


def _read_sysctl(key: str) -> str | None:
    try:
        with open(f"/proc/sys/{key}") as f:
            return f.read().strip()
    except OSError:
        return None
