"""Authenticated endpoint probes: the wire format (sans-IO).

A node measures the endpoint candidates of a peer it does not use without moving any
traffic: it sends a small UDP datagram to each candidate address (outside the tunnel)
and the peer's daemon answers. Only the peer can answer: requests and replies carry a
MAC keyed from the X25519 static-static Diffie-Hellman of the two WireGuard keys
(`wgcast.keys.shared_secret`), which nobody else can compute.

Datagram (52 bytes, big-endian)::

    0   magic "wgcP"          4
    4   version (1)           1
    5   type (1 request, 2 reply)
    6   flags (0)             2
    8   sender's router-id    8   hash of its public key: picks the key to check with
    16  counter               8   request: strictly increasing per sender, its clock in
                                  microseconds (replay window)
                                  reply: the request's counter
    24  token                 8   random per request, echoed by the reply
    32  hold (microseconds)   4   reply: time the responder held the request
    36  MAC                  16   BLAKE2s-128 over bytes 0..35, keyed per direction

Requests and replies use different keys (derived from the pair key with different
labels), so a request cannot be reflected as a reply. A responder answers a request
only if the MAC checks, the sender is a configured peer and the counter is new
(`ReplayWindow`, 2 s wide: the counter is the sender's clock in microseconds); a
reply is accepted only for a token still outstanding, once. A reply
is never larger than its request: no amplification.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAGIC",
    "REPLY",
    "REQUEST",
    "SIZE",
    "Probe",
    "ProbeKeys",
    "ReplayWindow",
    "decode",
    "encode",
    "is_probe",
    "peek",
]

MAGIC: Final = b"wgcP"
VERSION: Final = 1
REQUEST: Final = 1
REPLY: Final = 2
MAC_SIZE: Final = 16
_HEAD: Final = struct.Struct("!4sBBH8sQ8sI")
SIZE: Final = _HEAD.size + MAC_SIZE
_LABEL: Final = b"wgcast endpoint probe v1"


@dataclass(frozen=True, slots=True)
class ProbeKeys:
    """The two MAC keys of a pair of nodes (the same on both sides)."""

    request: bytes
    reply: bytes

    @classmethod
    def derive(cls, shared: bytes, public_a: bytes, public_b: bytes) -> ProbeKeys:
        """From the X25519 shared secret of a and b and their public keys (any order)."""
        lo, hi = sorted((public_a, public_b))
        pair = hashlib.blake2s(_LABEL + lo + hi, key=shared).digest()
        return cls(hashlib.blake2s(b"request", key=pair).digest(),
                   hashlib.blake2s(b"reply", key=pair).digest())

    def for_kind(self, kind: int) -> bytes:
        return self.request if kind == REQUEST else self.reply


@dataclass(frozen=True, slots=True)
class Probe:
    kind: int
    sender: bytes
    counter: int
    token: bytes
    hold_us: int = 0


def _mac(key: bytes, head: bytes) -> bytes:
    return hashlib.blake2s(head, key=key, digest_size=MAC_SIZE).digest()


def encode(probe: Probe, keys: ProbeKeys) -> bytes:
    if probe.kind not in (REQUEST, REPLY) or len(probe.sender) != 8 or len(probe.token) != 8:
        raise ValueError("a probe has a kind of 1 or 2, an 8-byte sender and token")
    head = _HEAD.pack(MAGIC, VERSION, probe.kind, 0, probe.sender,
                      probe.counter & 0xFFFFFFFFFFFFFFFF, probe.token,
                      max(0, min(probe.hold_us, 0xFFFFFFFF)))
    return head + _mac(keys.for_kind(probe.kind), head)


def is_probe(data: bytes) -> bool:
    """Whether a datagram looks like a probe (a cheap test, nothing verified)."""
    return len(data) == SIZE and data[:4] == MAGIC


def peek(data: bytes) -> tuple[int, bytes] | None:
    """(kind, sender router-id) of a well-formed datagram, before any MAC check."""
    if not is_probe(data) or data[4] != VERSION or data[5] not in (REQUEST, REPLY):
        return None
    return data[5], data[8:16]


def decode(data: bytes, keys: ProbeKeys) -> Probe | None:
    """The probe if its MAC checks with `keys`, else None (never raises)."""
    if peek(data) is None:
        return None
    head, mac = data[:_HEAD.size], data[_HEAD.size:]
    _, _, kind, _, sender, counter, token, hold = _HEAD.unpack(head)
    if not hmac.compare_digest(mac, _mac(keys.for_kind(kind), head)):
        return None
    return Probe(kind, sender, counter, token, hold)


class ReplayWindow:
    """Accepts each counter once, and none older than `window` below the highest seen.

    Counters are the sender's clock in microseconds, so the window is time: probes to
    several candidates travel paths of different delays and arrive out of order.
    At most `capacity` counters are remembered; forgetting one raises the floor.
    """

    __slots__ = ("capacity", "floor", "highest", "seen", "window")

    def __init__(self, window: int = 2_000_000, capacity: int = 256) -> None:
        self.window = window
        self.capacity = capacity
        self.highest = -1
        self.floor = -1  # counters up to here are refused
        self.seen: set[int] = set()

    def accept(self, counter: int) -> bool:
        if counter <= self.floor or counter in self.seen:
            return False
        self.seen.add(counter)
        if counter > self.highest:
            self.highest = counter
            floor = counter - self.window
            if floor > self.floor:
                self.floor = floor
                self.seen = {c for c in self.seen if c > floor}
        while len(self.seen) > self.capacity:
            oldest = min(self.seen)
            self.seen.discard(oldest)
            self.floor = max(self.floor, oldest)
        return True
