"""Outstanding requests: seqno requests we sent or forwarded, acks we wait for.

Seqno requests are resent with exponential backoff until a feasible update arrives, and
forwarded ones are remembered so a request flooding around a cycle is not forwarded twice
(RFC 8966 3.8.1.2). Acks cover our urgent retractions: a drain waits for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgcast.babel.source import seqno_less
from wgcast.babel.wire import Prefix

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
class RequestTracker:
    """Our pending seqno requests, forwarded-request memory and pending acks."""

    seqno_requests: dict[tuple[Prefix, bytes], PendingSeqnoRequest] = field(default_factory=dict)
    forwarded: dict[tuple[Prefix, bytes], tuple[int, float]] = field(default_factory=dict)
    acks: dict[int, PendingAck] = field(default_factory=dict)
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

    def new_opaque(self) -> int:
        op = self.next_opaque
        self.next_opaque = (op % 0xFFFF) + 1
        return op

    def next_deadline(self) -> float | None:
        times = [r.next_resend for r in self.seqno_requests.values()]
        times += [a.next_resend for a in self.acks.values()]
        return min(times) if times else None
