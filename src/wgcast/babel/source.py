"""Source table: feasibility distances per (prefix, router-id) and 16-bit seqno arithmetic.

The feasibility condition (RFC 8966 section 3.5.1) is what keeps Babel loop-free: a route
is accepted only if it is strictly better than anything we ever advertised for its source,
or carries a newer seqno.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgcast.babel.wire import INFINITY
from wgcast.prefix import Prefix

#: Sources unused for this long are forgotten (RFC 8966 appendix B: 3 minutes).
SOURCE_GC_TIME = 180.0


def seqno_less(a: int, b: int) -> bool:
    """a < b in 16-bit serial number arithmetic."""
    return 0 < ((b - a) & 0xFFFF) < 0x8000


def seqno_plus(a: int, n: int = 1) -> int:
    return (a + n) & 0xFFFF


@dataclass(slots=True)
class Source:
    """Feasibility distance (seqno, metric) of one source, refreshed when we advertise it."""

    seqno: int
    metric: int
    time: float


class SourceTable:
    """Feasibility distances of every source we have advertised."""

    __slots__ = ("_sources", "version")

    def __init__(self) -> None:
        self._sources: dict[tuple[Prefix, bytes], Source] = {}
        #: Bumped whenever a feasibility distance changes (not on a mere refresh).
        self.version = 0

    def __len__(self) -> int:
        return len(self._sources)

    def get(self, prefix: Prefix, router_id: bytes) -> Source | None:
        return self._sources.get((prefix, router_id))

    def feasible(self, prefix: Prefix, router_id: bytes, seqno: int, metric: int) -> bool:
        """RFC 8966 3.5.1: retractions are always feasible; otherwise (seqno, metric) < FD."""
        if metric >= INFINITY:
            return True
        src = self._sources.get((prefix, router_id))
        if src is None:
            return True
        return seqno_less(src.seqno, seqno) or (seqno == src.seqno and metric < src.metric)

    def advertised(self, prefix: Prefix, router_id: bytes, seqno: int, metric: int,
                   now: float) -> None:
        """We sent (seqno, metric) for this source: lower its feasibility distance."""
        if metric >= INFINITY:
            return
        key = (prefix, router_id)
        src = self._sources.get(key)
        if src is None:
            self._sources[key] = Source(seqno, metric, now)
            self.version += 1
            return
        if seqno_less(src.seqno, seqno):
            src.seqno, src.metric = seqno, metric
            self.version += 1
        elif seqno == src.seqno and metric < src.metric:
            src.metric = metric
            self.version += 1
        src.time = now

    def refresh(self, prefix: Prefix, router_id: bytes, now: float) -> None:
        """We still announce this source (unchanged): keep it from being collected."""
        src = self._sources.get((prefix, router_id))
        if src is not None:
            src.time = now

    def gc(self, now: float) -> int:
        stale = [k for k, s in self._sources.items() if now - s.time > SOURCE_GC_TIME]
        for k in stale:
            del self._sources[k]
        if stale:
            self.version += 1
        return len(stale)
