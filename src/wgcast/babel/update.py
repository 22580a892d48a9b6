"""Outgoing updates: what we announce, to whom, and when.

What we tell a neighbour about a prefix follows from our selection (route.py), a release
under way (release.py) and the retractions we repeat; the route's next hop gets the metric
INFINITY (poison reverse, split horizon in full updates). Three ways out: a single Update
(an answer to a request, an acked retraction resent), a full update (periodic or to a
neighbour that comes up, cached while nothing announced changed), and triggered updates
(every prefix whose announcement changed, encoded once for all neighbours that are up,
with the AckReqs of a release after them).

Toward a quiet neighbour (quiet.py) the same, but every packet of triggered Updates carries
an AckReq and is resent until acknowledged (`send_reliable`), a full update ends with a
DIGEST_FULL Digest, the periodic full update is a Digest (`send_digest`), and Updates
carry the longest interval; what it was told is kept in its `TxState`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wgcast.babel.events import LOCAL
from wgcast.babel.neighbour import Neighbour
from wgcast.babel.quiet import QUIET_INTERVAL_CS, TxState, entry_hash
from wgcast.babel.release import SourceRelease
from wgcast.babel.request import PendingAck, RequestTracker
from wgcast.babel.route import RouteTable, Selected
from wgcast.babel.source import SourceTable
from wgcast.babel.wire import (
    DIGEST_FULL,
    INFINITY,
    T_ACKREQ,
    AckReq,
    Digest,
    OriginSig,
    PacketWriter,
    SubTLV,
    Tiebreak,
    UpdateEntry,
    centiseconds,
    encode_updates,
)
from wgcast.babel.xroute import XRouteTable
from wgcast.prefix import Prefix, prefix_key

if TYPE_CHECKING:
    from wgcast.babel.engine import OriginSigner

_NEVER = float("inf")
#: An AckReq TLV on the wire (type, length, reserved, opaque, interval).
_ACKREQ = struct.Struct("!BBHHH")
_ACKREQ_LEN = _ACKREQ.size
#: Entry hashes remembered by `Updates._hash` (a few per announced prefix is plenty).
HASHES_KEPT = 16384


def _ackreq_head(packet: bytes) -> bytes:
    """`packet` with its length grown by an AckReq TLV (`_ACKREQ`), which is to follow
    it: the part that does not depend on the opaque, once per packet, not per
    neighbour."""
    return packet[:2] + struct.pack("!H", len(packet) - 4 + _ACKREQ_LEN) + packet[4:]


@dataclass(slots=True)
class _Retraction:
    """A plain retraction (no AckReq) of a route we lost, repeated a few times."""

    router_id: bytes
    seqno: int
    tries_left: int
    next_time: float


class Updates:
    """The engine's outgoing Updates.

    It reads the engine's tables (given at construction, never changed here, except the
    announced metric of a selected route, refreshed from its route) and writes into the
    per-neighbour packet writers. `version` counts changes that may alter an announcement
    (`changed`): the cached full updates, and the receiver's memory of repeated packets,
    are valid while it stays the same.
    """

    __slots__ = ("_acks_to_attach", "_costs", "_delivery_backoff", "_delivery_tries",
                 "_hashes", "_interval_cs", "_max_body", "_neighbours", "_out", "_release",
                 "_requests", "_retractions", "_retry_interval", "_retry_tries", "_routes",
                 "_selected", "_signer", "_sources", "_ties", "_triggered", "_tx", "_tx_full",
                 "_xroutes", "last_op", "router_id", "version")

    def __init__(self, router_id: bytes, *, update_interval: float, max_body: int,
                 retraction_tries: int, retry_interval: float,
                 out: dict[str, PacketWriter], neighbours: dict[str, Neighbour],
                 costs: dict[str, int], ties: dict[str, int],
                 selected: dict[Prefix, Selected], routes: RouteTable,
                 xroutes: XRouteTable, sources: SourceTable, release: SourceRelease,
                 requests: RequestTracker, signer: OriginSigner | None = None,
                 delivery_tries: int = 5, delivery_backoff: float = 0.4) -> None:
        self.router_id = router_id
        self._signer = signer
        self._interval_cs = centiseconds(update_interval)
        self._max_body = max_body
        self._retry_tries = retraction_tries
        self._retry_interval = retry_interval
        self._out = out
        self._neighbours = neighbours
        self._costs = costs
        self._ties = ties
        self._selected = selected
        self._routes = routes
        self._xroutes = xroutes
        self._sources = sources
        self._release = release
        self._requests = requests
        self.version = 0
        self._triggered: set[Prefix] = set()
        self._acks_to_attach: dict[str, list[int]] = {}
        self._retractions: dict[Prefix, _Retraction] = {}
        #: Per neighbour, the packets of our last full update, valid while `version`
        #: (bumped by anything that can change an announcement) has not moved.
        self._tx_full: dict[str, tuple[int, list[bytes]]] = {}
        #: Per quiet neighbour, what we told it (from its last full update on).
        self._tx: dict[str, TxState] = {}
        #: Per neighbour, the opaque of the last AckReq we sent it (a Digest's version).
        self.last_op: dict[str, int] = {}
        self._delivery_tries = delivery_tries
        self._delivery_backoff = delivery_backoff
        #: entry_hash memo: a full update to each of N quiet neighbours hashes the same
        #: announcements N times (bounded: cleared when it outgrows HASHES_KEPT).
        self._hashes: dict[tuple[Prefix, bytes, int, int], int] = {}

    # ------------------------------------------------------------ what changed

    def changed(self) -> None:
        """Something that may change an announcement changed (invalidates caches)."""
        self.version += 1

    def trigger(self, prefix: Prefix) -> None:
        """Announce `prefix` to every neighbour that is up at the next `flush`."""
        self._triggered.add(prefix)

    def changed_prefix(self, prefix: Prefix) -> None:
        """What we announce about `prefix` changed: `changed`, then `trigger`."""
        self.version += 1
        self._triggered.add(prefix)

    def retract_with_ack(self, prefix: Prefix, waiting: set[str], opaque: int) -> None:
        """A release: the retraction of `prefix` goes out at the next `flush`, followed by
        an AckReq `opaque` to each neighbour of `waiting`."""
        self.version += 1
        for nid in waiting:
            self._acks_to_attach.setdefault(nid, []).append(opaque)
        self._triggered.add(prefix)

    def retracted(self, prefix: Prefix, router_id: bytes, seqno: int, now: float) -> None:
        """We lost our route to `prefix`: repeat its retraction a few times."""
        self._retractions[prefix] = _Retraction(router_id, seqno, self._retry_tries - 1,
                                                now + self._retry_interval)

    def stop_retracting(self, prefix: Prefix) -> None:
        """We have a route to `prefix` again."""
        self._retractions.pop(prefix, None)

    def neighbour_down(self, nid: str) -> None:
        self._acks_to_attach.pop(nid, None)
        self.forget_tx(nid)

    def neighbour_removed(self, nid: str) -> None:
        self._tx_full.pop(nid, None)
        self.forget_tx(nid)

    def forget_tx(self, nid: str) -> None:
        """`nid` is down or no longer quiet: what we told it no longer matters."""
        self._tx.pop(nid, None)
        self.last_op.pop(nid, None)

    def tx_digest(self, nid: str) -> tuple[int, int] | None:
        """(count, hash) of what we told quiet neighbour `nid` (None: not tracked)."""
        tx = self._tx.get(nid)
        return None if tx is None else tx.digest()

    # ------------------------------------------------------------ what we announce

    def _announcement(self, nid: str, prefix: Prefix) -> tuple[bytes, int, int, int, bytes]:
        """(router-id, seqno, metric, tie, signature) we tell `nid` about `prefix` (poison
        reverse)."""
        rid, seqno, metric, tie, via, sig = self._announce(prefix)
        return rid, seqno, (INFINITY if via == nid else metric), tie, sig

    def _announce(self, prefix: Prefix) -> tuple[bytes, int, int, int, str | None, bytes]:
        """(router-id, seqno, metric, tie, via, signature): what we tell every neighbour
        about `prefix`, except `via`, our next hop, which gets the metric INFINITY (poison
        reverse). A retraction carries no tie and no signature; a route we originate
        carries our signature, a route we pass on the origin's, unchanged."""
        sel = self._selected.get(prefix)
        release = self._release
        if prefix in release.releasing:
            owned = release.owned.get(prefix)
            rid = owned[0] if owned is not None else \
                (sel.router_id if sel is not None else self.router_id)
            return (rid, (sel.seqno if sel is not None else self._xroutes.seqno), INFINITY, 0,
                    None, b"")
        if sel is None:
            rt = self._retractions.get(prefix)
            if rt is not None:
                return rt.router_id, rt.seqno, INFINITY, 0, None, b""
            return self.router_id, self._xroutes.seqno, INFINITY, 0, None, b""
        if sel.via != LOCAL:
            route = self._routes.get(prefix, sel.via)
            sig = b""
            if route is not None:
                cost = self._costs.get(route.neighbour, INFINITY)
                ref = route.refmetric
                if cost >= INFINITY or ref >= INFINITY:
                    sel.metric = INFINITY
                else:
                    m = ref + cost  # Route.metric, inline (hot path)
                    sel.metric = m if m < INFINITY else INFINITY
                sel.seqno = route.seqno
                sel.tie = route.tie + self._ties[sel.via]
                sig = route.sig
            return sel.router_id, sel.seqno, sel.metric, sel.tie, sel.via, sig
        signer = self._signer
        sig = signer.sign(prefix, sel.seqno) if signer is not None else b""
        return sel.router_id, sel.seqno, sel.metric, sel.tie, None, sig

    def _hash(self, prefix: Prefix, rid: bytes, seqno: int, metric: int) -> int:
        """entry_hash, remembered."""
        key = (prefix, rid, seqno, metric)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= HASHES_KEPT:
                self._hashes.clear()
            h = self._hashes[key] = entry_hash(prefix, rid, seqno, metric)
        return h

    # ------------------------------------------------------------ sending

    def send(self, nid: str, prefix: Prefix, now: float) -> None:
        """One Update about `prefix` to `nid`."""
        rid, seqno, metric, tie, sig = self._announcement(nid, prefix)
        subs: tuple[SubTLV, ...] = ()
        if metric < INFINITY:
            subs = ((Tiebreak(tie),) if tie else ()) + ((OriginSig(sig),) if sig else ())
        quiet = self._neighbours[nid].quiet
        self._out[nid].add_update(prefix, rid, seqno, metric,
                                  QUIET_INTERVAL_CS if quiet else self._interval_cs, subs)
        tx = self._tx.get(nid)
        if tx is not None:
            tx.set(prefix, self._hash(prefix, rid, seqno, metric) if metric < INFINITY else None)
        if metric < INFINITY:
            self._sources.advertised(prefix, rid, seqno, metric, now)
            self._release.announced(prefix, rid)

    def resend_acked(self, pending: PendingAck, now: float) -> None:
        """An acked retraction again, with its AckReq, to those that did not ack."""
        for nid in pending.waiting:
            self.send(nid, pending.prefix, now)
            self.ackreq(nid, pending.opaque, centiseconds(pending.backoff))

    def ackreq(self, nid: str, opaque: int, interval_cs: int) -> None:
        """An AckReq to `nid` (remembered as the version of our next Digest to it)."""
        self._out[nid].add(AckReq(opaque, interval_cs))
        self.last_op[nid] = opaque

    def resend_retractions(self, now: float) -> None:
        for prefix, rt in list(self._retractions.items()):
            if rt.next_time <= now:
                for nid, nb in self._neighbours.items():
                    if nb.up and not nb.quiet:  # a quiet one got it acknowledged
                        self.send(nid, prefix, now)
                rt.tries_left -= 1
                rt.next_time = now + self._retry_interval
                if rt.tries_left <= 0:
                    del self._retractions[prefix]

    def next_deadline(self) -> float:
        """When a retraction is to be repeated next (infinity: never)."""
        best = _NEVER
        for rt in self._retractions.values():
            if rt.next_time < best:
                best = rt.next_time
        return best

    def send_full(self, nid: str, now: float) -> None:
        """Everything we announce, to `nid`. While no announcement can have changed since
        the last one (`version`), the same packets go out again: their feasibility
        distances are already recorded and a receiver recognises them byte for byte.
        To a quiet neighbour: never cached (rare), with the quiet interval, followed by
        a DIGEST_FULL Digest of what it now knows from us."""
        w = self._out[nid]
        if self._neighbours[nid].quiet:
            self._send_full_quiet(nid, now)
            return
        cached = self._tx_full.get(nid)
        if cached is not None and cached[0] == self.version:
            w.flush()
            w.packets.extend(cached[1])
            return
        version = self.version
        entries = self._full_entries(nid, now)
        packets = encode_updates(entries, self._interval_cs, self._max_body)[0]
        if version == self.version:
            self._tx_full[nid] = (version, packets)
        w.flush()
        w.packets.extend(packets)

    def _send_full_quiet(self, nid: str, now: float) -> None:
        entries = self._full_entries(nid, now)
        packets = encode_updates(entries, QUIET_INTERVAL_CS, self._max_body)[0]
        tx = TxState()
        for prefix, rid, seqno, metric, _, _ in entries:
            if metric < INFINITY:
                tx.set(prefix, self._hash(prefix, rid, seqno, metric))
        self._tx[nid] = tx
        w = self._out[nid]
        w.flush()
        w.packets.extend(packets)
        count, total = tx.digest()
        w.add(Digest(DIGEST_FULL, self.last_op.get(nid, 0), count, total))

    def send_digest(self, nid: str, now: float) -> None:
        """The periodic check to a quiet neighbour (a full update if we have no state)."""
        tx = self._tx.get(nid)
        if tx is None:
            self.send_full(nid, now)
            return
        count, total = tx.digest()
        self._out[nid].add(Digest(0, self.last_op.get(nid, 0), count, total))

    def _full_entries(self, nid: str, now: float) -> list[UpdateEntry]:
        """Everything we announce to `nid` (split horizon), advertised from now on."""
        advertised = self._sources.advertised
        announced = self._release.announced
        announce = self._announce
        entries: list[UpdateEntry] = []
        for prefix, sel in self._selected.items():
            if sel.via == nid:
                continue  # split horizon: triggered updates already poisoned it
            rid, seqno, metric, tie, _, sig = announce(prefix)
            if metric >= INFINITY:
                continue
            entries.append((prefix, rid, seqno, metric, tie, sig))
            advertised(prefix, rid, seqno, metric, now)
            announced(prefix, rid)
        for prefix in self._release.releasing:
            # A neighbour that (re)appears during a release must not keep an old route.
            rid, seqno, metric, _, _ = self._announcement(nid, prefix)
            entries.append((prefix, rid, seqno, metric, 0, b""))
        return entries

    def flush(self, now: float) -> None:
        """Send triggered updates (with any AckReqs attached after them)."""
        if self._triggered:
            prefixes = sorted(self._triggered, key=prefix_key)
            self._triggered.clear()
            up = [nid for nid, nb in self._neighbours.items() if nb.up]
            if up:
                self._send_triggered(prefixes, up, now)
        if self._acks_to_attach:
            acks = self._requests.acks
            neighbours = self._neighbours
            for nid, ops in self._acks_to_attach.items():
                for op in ops:
                    pending = acks.get(op)
                    if pending is not None:
                        if neighbours[nid].quiet:
                            # The retraction again, in the AckReq's own packet: an Ack
                            # then proves it was heard, even if its first packet was lost.
                            self.send(nid, pending.prefix, now)
                        self.ackreq(nid, op, centiseconds(pending.backoff))
            self._acks_to_attach.clear()

    def _send_triggered(self, prefixes: list[Prefix], up: list[str], now: float) -> None:
        """The same Updates to every neighbour that is up (encoded once per interval
        kind), each prefix poisoned (metric INFINITY) towards the neighbour we route it
        through; to quiet neighbours each packet with an AckReq (see `send_reliable`)."""
        entries: list[UpdateEntry] = []
        poison: dict[str, list[int]] = {}
        out = self._out
        advertised = self._sources.advertised
        announced = self._release.announced
        for prefix in prefixes:
            rid, seqno, metric, tie, via, sig = self._announce(prefix)
            if metric >= INFINITY:
                tie, sig = 0, b""
            if metric < INFINITY and via is not None and via in out:
                poison.setdefault(via, []).append(len(entries))
                if len(up) == 1 and up[0] == via:
                    entries.append((prefix, rid, seqno, metric, tie, sig))
                    continue  # told to nobody with a finite metric
            entries.append((prefix, rid, seqno, metric, tie, sig))
            if metric < INFINITY:
                advertised(prefix, rid, seqno, metric, now)
                announced(prefix, rid)
        neighbours = self._neighbours
        quiet = [nid for nid in up if neighbours[nid].quiet]
        if quiet:
            self._send_triggered_quiet(entries, poison, quiet, now)
            up = [nid for nid in up if not neighbours[nid].quiet]
            if not up:
                return
        packets, offsets = encode_updates(entries, self._interval_cs, self._max_body)
        for nid in up:
            w = out[nid]
            w.flush()
            idxs = poison.get(nid)
            if not idxs:
                w.packets.extend(packets)
                continue
            patched = {pi: bytearray(packets[pi]) for pi, _ in (offsets[i] for i in idxs)}
            for i in idxs:
                pi, off = offsets[i]
                patched[pi][off:off + 2] = b"\xff\xff"
            w.packets.extend(bytes(patched[pi]) if pi in patched else pkt
                             for pi, pkt in enumerate(packets))

    def _send_triggered_quiet(self, entries: list[UpdateEntry], poison: dict[str, list[int]],
                              quiet: list[str], now: float) -> None:
        packets, offsets = encode_updates(entries, QUIET_INTERVAL_CS,
                                          self._max_body - _ACKREQ_LEN)
        hashes = [self._hash(p, rid, seqno, metric) if metric < INFINITY else None
                  for p, rid, seqno, metric, _, _ in entries]
        in_packet: list[list[Prefix]] = [[] for _ in packets]
        for i, (pi, _) in enumerate(offsets):
            in_packet[pi].append(entries[i][0])
        groups = [tuple(ps) for ps in in_packet]
        # The packets as every neighbour not poisoned gets them, AckReq length included.
        heads = [_ackreq_head(pkt) for pkt in packets]
        # (prefix, entry hash) as TxState.set takes them, for a neighbour not poisoned.
        told = [(e[0], hashes[i]) for i, e in enumerate(entries)]
        txs = self._tx
        for nid in quiet:
            idxs = poison.get(nid)
            pkts = heads
            if idxs:
                patched = {pi: bytearray(packets[pi]) for pi, _ in (offsets[i] for i in idxs)}
                for i in idxs:
                    pi, off = offsets[i]
                    patched[pi][off:off + 2] = b"\xff\xff"
                pkts = [_ackreq_head(bytes(patched[pi])) if pi in patched else head
                        for pi, head in enumerate(heads)]
            self._deliver(nid, pkts, groups, self._delivery_tries, self._delivery_backoff,
                          now, headed=True)
            tx = txs.get(nid)
            if tx is not None:
                if idxs:
                    poisoned = set(idxs)
                    tx.update([(p, None) if i in poisoned else (p, h)
                               for i, (p, h) in enumerate(told)])
                else:
                    tx.update(told)

    def _deliver(self, nid: str, packets: list[bytes], groups: list[tuple[Prefix, ...]],
                 tries: int, backoff: float, now: float, headed: bool = False) -> None:
        """Each packet to `nid` with an AckReq, expected back (RequestTracker); `headed`:
        the packets come through `_ackreq_head` already."""
        w = self._out[nid]
        w.flush()
        if len(packets) != len(groups):
            raise ValueError("one group of prefixes per packet")
        ops = self._requests.expect_deliveries(nid, groups, tries, now, backoff)
        interval = centiseconds(backoff)
        out = w.packets
        pack = _ACKREQ.pack
        for pkt, op in zip(packets, ops, strict=True):
            out.append((pkt if headed else _ackreq_head(pkt))
                       + pack(T_ACKREQ, 6, 0, op, interval))
        if packets:
            self.last_op[nid] = ops[-1]

    def send_reliable(self, nid: str, prefixes: tuple[Prefix, ...], tries: int,
                      backoff: float, now: float) -> None:
        """Announce `prefixes` to quiet neighbour `nid` as they are now, each packet with
        an AckReq: a resend of a delivery that was not acknowledged (never its old
        bytes, which a later change may have overtaken)."""
        advertised = self._sources.advertised
        announced = self._release.announced
        entries: list[UpdateEntry] = []
        for prefix in prefixes:
            rid, seqno, metric, tie, sig = self._announcement(nid, prefix)
            if metric >= INFINITY:
                tie, sig = 0, b""
            else:
                advertised(prefix, rid, seqno, metric, now)
                announced(prefix, rid)
            entries.append((prefix, rid, seqno, metric, tie, sig))
        packets, offsets = encode_updates(entries, QUIET_INTERVAL_CS,
                                          self._max_body - _ACKREQ_LEN)
        in_packet: list[list[Prefix]] = [[] for _ in packets]
        for i, (pi, _) in enumerate(offsets):
            in_packet[pi].append(entries[i][0])
        self._deliver(nid, packets, [tuple(ps) for ps in in_packet], tries, backoff, now)
        tx = self._tx.get(nid)
        if tx is not None:
            for prefix, rid, seqno, metric, _, _ in entries:
                tx.set(prefix, self._hash(prefix, rid, seqno, metric)
                       if metric < INFINITY else None)
