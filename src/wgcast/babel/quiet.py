"""Quiet mode: between wgcast nodes, no periodic full dumps (RFC 8966 stays for the rest).

A wgcast node says in its Hellos (the S_QUIET sub-TLV) that it does quiet mode; toward a
neighbour heard saying it ("quiet-capable"), and only toward it:

- Every packet of triggered Updates carries an AckReq and is resent, with the current
  announcement of its prefixes (never the stale bytes: a resend must not undo a later
  change), with exponential backoff until acknowledged; out of tries, the neighbour gets
  a full update instead (`RequestTracker.expect_deliveries`).
- The periodic full update becomes a Digest TLV: the count and the sum (mod 2**64) of
  `entry_hash` over what we announced to that neighbour with a finite metric (after
  poison reverse and split horizon: the per-neighbour `TxState`). The receiver sums the
  same over the routes it holds from us; on a mismatch it asks for a full update (a
  wildcard Route Request) and counts `digest_mismatch`. The digest names the state it
  covers by the AckReq opaque of the last Update packet sent before it, and goes out
  only while nothing sent is unacknowledged, so an update in flight is no mismatch.
- A full update to a quiet neighbour ends with a Digest flagged DIGEST_FULL: the receiver
  then drops the routes from us that the dump did not name (they were retracted and the
  retraction lost, or we restarted), provided the dump arrived whole.
- Updates to it carry the longest interval (QUIET_INTERVAL_CS): its routes from us do not
  die of silence; a matching digest refreshes them; a neighbour that goes down still
  takes its routes with it at once.

The digest covers the exact metric: costs are damped in steps already (LinkCostParams:
an RTT that jitters leaves the cost alone), every change of what we announce goes out as
a triggered, now acknowledged, update, so both ends hold the same metric; a coarse
metric in the digest would only hide a lost update. The tie-break and the origin
signature are left out (they change with the seqno or metric, or trigger updates of
their own).
"""

from __future__ import annotations

import hashlib

from wgcast.prefix import Prefix

#: The interval (centiseconds) of Updates to a quiet neighbour: the largest there is.
QUIET_INTERVAL_CS = 0xFFFF
_MASK = (1 << 64) - 1


def entry_hash(prefix: Prefix, router_id: bytes, seqno: int, metric: int) -> int:
    """A route's contribution to a digest: the same on every node (no Python hash)."""
    data = (prefix.network_address.packed + bytes((prefix.prefixlen, seqno >> 8, seqno & 255,
                                                   metric >> 8, metric & 255)) + router_id)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class TxState:
    """What we announced to one quiet neighbour with a finite metric: prefix -> entry
    hash, with the running count and sum a Digest carries."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: dict[Prefix, int] = {}
        self.total = 0

    def set(self, prefix: Prefix, h: int | None) -> None:
        """We told it `prefix` with this entry hash (None: a retraction, INFINITY)."""
        self.update([(prefix, h)])

    def update(self, told: list[tuple[Prefix, int | None]]) -> None:
        """`set` for each (prefix, entry hash), in order (one pass for a packet's worth)."""
        entries = self.entries
        total = self.total
        pop = entries.pop
        for prefix, h in told:
            old = pop(prefix, None)
            if old is not None:
                total -= old
            if h is not None:
                entries[prefix] = h
                total += h
        self.total = total & _MASK

    def digest(self) -> tuple[int, int]:
        """(count, hash) as a Digest carries them."""
        return len(self.entries), self.total


def digest_sum(hashes: list[int]) -> int:
    return sum(hashes) & _MASK
