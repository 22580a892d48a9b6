"""Outstanding requests: seqno requests we sent or forwarded, acks we wait for.

Seqno requests are resent with exponential backoff until a feasible update arrives, and
forwarded ones are remembered so a request flooding around a cycle is not forwarded twice
(RFC 8966 3.8.1.2). Acks cover our urgent retractions: a drain and a source release
(release.py) wait for them; and, toward quiet neighbours (quiet.py), every packet of
triggered Updates (deliveries). Both share one opaque space: an Ack names one thing.
The tracker decides what is due and when; the engine sends.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from wgcast.babel.source import seqno_less
from wgcast.prefix import Prefix

#: A forwarded request suppresses duplicates of itself for this long (seconds).
DUPLICATE_WINDOW = 2.0


@dataclass(slots=True)
class PendingSeqnoRequest:
    """A seqno request of ours: resent until satisfied or out of tries."""

    prefix: Prefix
    router_id: bytes
    seqno: int
    neighbour: str
    hopcount: int
    tries_left: int
    next_resend: float
    backoff: float


@dataclass(slots=True)
class PendingAck:
    """An urgent retraction sent with an AckReq: resent until every neighbour acked.

    It serves two purposes: a drain waits for it (`notify`: a RetractionAcked event when
    done), and a node that changes the source of a route waits for it before selecting the
    new source (see `Node._select`); `mark` is the engine's announcement counter when the
    retraction went out, so a later announcement is not mistaken for acknowledged.
    """

    prefix: Prefix
    waiting: set[str]
    tries_left: int
    next_resend: float
    backoff: float
    opaque: int = 0
    done: bool = False
    notify: bool = True
    mark: int = 0


@dataclass(slots=True)
class PendingDelivery:
    """A packet of Updates to a quiet neighbour, sent with an AckReq: until acknowledged,
    its prefixes are announced again (as they are then) with a new AckReq."""

    neighbour: str
    prefixes: tuple[Prefix, ...]
    tries_left: int
    next_resend: float
    backoff: float


@dataclass(slots=True)
class RequestTracker:
    """Our pending seqno requests, forwarded-request memory and pending acks."""

    seqno_requests: dict[tuple[Prefix, bytes], PendingSeqnoRequest] = field(default_factory=dict)
    forwarded: dict[tuple[Prefix, bytes], tuple[int, float]] = field(default_factory=dict)
    acks: dict[int, PendingAck] = field(default_factory=dict)
    #: Deliveries to quiet neighbours: neighbour -> opaque -> packet awaiting its Ack.
    deliveries: dict[str, dict[int, PendingDelivery]] = field(default_factory=dict)
    #: The opaques of `deliveries`, all neighbours together.
    delivery_ops: set[int] = field(default_factory=set)
    #: (next_resend, opaque, neighbour) of each delivery, stale entries left behind.
    delivery_times: list[tuple[float, int, str]] = field(default_factory=list)
    next_opaque: int = 1

    def is_duplicate(self, prefix: Prefix, router_id: bytes, seqno: int, now: float) -> bool:
        """True if we forwarded a request at least as demanding within the window."""
        seen = self.forwarded.get((prefix, router_id))
        if seen is None or now - seen[1] > DUPLICATE_WINDOW:
            return False
        return not seqno_less(seen[0], seqno)

    def note_forwarded(self, prefix: Prefix, router_id: bytes, seqno: int, now: float) -> None:
        self.forwarded[(prefix, router_id)] = (seqno, now)
        if len(self.forwarded) > 4096:
            for k in [k for k, (_, t) in self.forwarded.items() if now - t > DUPLICATE_WINDOW]:
                del self.forwarded[k]

    def satisfied(self, prefix: Prefix, router_id: bytes, seqno: int) -> None:
        req = self.seqno_requests.get((prefix, router_id))
        if req is not None and not seqno_less(seqno, req.seqno):
            del self.seqno_requests[(prefix, router_id)]

    def want(self, prefix: Prefix, router_id: bytes, seqno: int, neighbour: str, tries: int,
             now: float, backoff: float) -> bool:
        """Note a seqno request of ours to `neighbour`, sent now and resent up to
        `tries - 1` times. False (nothing to send) if one at least as demanding is
        pending."""
        key = (prefix, router_id)
        old = self.seqno_requests.get(key)
        if old is not None and not seqno_less(old.seqno, seqno):
            return False
        self.seqno_requests[key] = PendingSeqnoRequest(
            prefix, router_id, seqno, neighbour, 64, tries - 1, now + backoff, backoff)
        return True

    def due_seqno_requests(self, now: float,
                           up: Callable[[str], bool]) -> list[PendingSeqnoRequest]:
        """The seqno requests to send again now, their backoff doubled; those out of tries
        or whose neighbour is no longer `up` are dropped."""
        due: list[PendingSeqnoRequest] = []
        reqs = self.seqno_requests
        for key, req in list(reqs.items()):
            if req.next_resend > now:
                continue
            if req.tries_left <= 0 or not up(req.neighbour):
                del reqs[key]
                continue
            req.tries_left -= 1
            req.backoff *= 2
            req.next_resend = now + req.backoff
            due.append(req)
        return due

    def expect_acks(self, prefix: Prefix, waiting: set[str], tries: int, now: float,
                    backoff: float, notify: bool, mark: int) -> PendingAck:
        """A retraction of `prefix` goes out with an AckReq to each of `waiting`."""
        pending = PendingAck(prefix, waiting, tries, now + backoff, backoff, notify=notify,
                             mark=mark)
        op = pending.opaque = self.new_opaque()
        self.acks[op] = pending
        return pending

    def acked(self, neighbour: str, opaque: int) -> bool:
        """An Ack arrived; True if it was one we wait for."""
        pending = self.acks.get(opaque)
        if pending is None:
            return False
        pending.waiting.discard(neighbour)
        return True

    def neighbour_gone(self, neighbour: str) -> None:
        """A neighbour that died acknowledges nothing: stop waiting for it."""
        for pending in self.acks.values():
            pending.waiting.discard(neighbour)
        self.forget_deliveries(neighbour)

    def forget_deliveries(self, neighbour: str) -> None:
        """Stop waiting for `neighbour`'s Acks of our Updates (it gets a full update, or
        is gone)."""
        per = self.deliveries.pop(neighbour, None)
        if per:
            self.delivery_ops.difference_update(per)

    def expect_deliveries(self, neighbour: str, groups: list[tuple[Prefix, ...]], tries: int,
                          now: float, backoff: float) -> list[int]:
        """Packets of Updates, each about its `groups` entry of prefixes, go to
        `neighbour` with the AckReqs whose opaques this returns (in order); each is
        resent `tries - 1` times at most."""
        if not groups:
            return []
        per = self.deliveries.setdefault(neighbour, {})
        ops = self.delivery_ops
        times = self.delivery_times
        at = now + backoff
        out: list[int] = []
        for prefixes in groups:
            op = self.new_opaque()
            per[op] = PendingDelivery(neighbour, prefixes, tries - 1, at, backoff)
            ops.add(op)
            heapq.heappush(times, (at, op, neighbour))
            out.append(op)
        return out

    def delivered(self, neighbour: str, opaque: int) -> bool:
        """An Ack arrived; True if it was for a delivery of ours."""
        per = self.deliveries.get(neighbour)
        if per is None or per.pop(opaque, None) is None:
            return False
        self.delivery_ops.discard(opaque)
        if not per:
            del self.deliveries[neighbour]
        return True

    def delivering(self, neighbour: str) -> bool:
        """Is a delivery to `neighbour` unacknowledged?"""
        return neighbour in self.deliveries

    def due_deliveries(self, now: float) -> list[PendingDelivery]:
        """Deliveries to resend now (removed: the resend is a new delivery, with
        `tries_left` and the doubled `backoff` it should carry on with); one out of
        tries comes with `tries_left` < 0 (the caller resyncs that neighbour)."""
        due: list[PendingDelivery] = []
        times = self.delivery_times
        while times and times[0][0] <= now:
            _, op, nid = heapq.heappop(times)
            per = self.deliveries.get(nid)
            d = None if per is None else per.pop(op, None)
            if d is None or per is None:
                continue  # acknowledged or forgotten since
            if not per:
                del self.deliveries[nid]
            self.delivery_ops.discard(op)
            d.tries_left -= 1
            d.backoff *= 2
            due.append(d)
        return due

    def _next_delivery(self) -> float | None:
        times = self.delivery_times
        deliveries = self.deliveries
        while times:
            _, op, nid = times[0]
            per = deliveries.get(nid)
            if per is not None and op in per:
                return times[0][0]
            heapq.heappop(times)  # stale
        return None

    def due_acks(self, now: float) -> list[PendingAck]:
        """The retractions to send again now (with their AckReq), their backoff doubled;
        one out of tries stops waiting (and so completes, see `finished`)."""
        due: list[PendingAck] = []
        for pending in list(self.acks.values()):
            if pending.next_resend > now:
                continue
            if pending.tries_left <= 0:
                pending.waiting.clear()
                continue
            pending.tries_left -= 1
            pending.backoff *= 2
            pending.next_resend = now + pending.backoff
            due.append(pending)
        return due

    def finished(self) -> Iterator[PendingAck]:
        """Remove and yield, in order, the acks no longer waiting for anybody (lazily:
        what the caller does with one may start new ones, never finish later ones)."""
        acks = self.acks
        for op, pending in list(acks.items()):
            if pending.waiting:
                continue
            del acks[op]
            yield pending

    def new_opaque(self) -> int:
        """An opaque that no pending ack or delivery uses (so no Ack is mistaken)."""
        busy, ops = self.acks, self.delivery_ops
        op = self.next_opaque
        for _ in range(0x10000):
            op = self.next_opaque
            self.next_opaque = (op % 0xFFFF) + 1
            if op not in busy and op not in ops:
                break
        return op

    def next_deadline(self) -> float | None:
        times = [r.next_resend for r in self.seqno_requests.values()]
        times += [a.next_resend for a in self.acks.values()]
        if self.deliveries:
            t = self._next_delivery()
            if t is not None:
                times.append(t)
        return min(times) if times else None
