"""Per-prefix route-change trace: where each millisecond of a failover goes.

A few timestamped events per route change of an anycast prefix (the daemon's loop clock,
CLOCK_MONOTONIC: daemons of one host, in any network namespace, share it, so their
traces line up): the local detection (member gone, leave, health down, drain, neighbour
down), our own originate/retract, Updates heard from each neighbour that changed what it
announces (refreshes are not recorded), the Updates we sent, selection changes, the
data plane applied (AllowedIPs and kernel route), holds, acks, the address going down.

Bounded: `per_prefix` events per prefix (oldest dropped), `max_prefixes` prefixes
(least recently changed dropped). No clock here: callers pass the time. `wgcast trace
PREFIX` shows it (the `trace` API command).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wgcast.prefix import Prefix

#: What an event can be, in the order a failover usually produces them.
KINDS = ("detected", "neighbour_down", "originated", "retracted", "update_sent",
         "update_received", "selected", "held", "applied", "acked", "address_down")

#: Events kept per prefix, and prefixes kept.
PER_PREFIX = 64
MAX_PREFIXES = 256
#: After an event of a prefix, outgoing datagrams are looked at for its Updates this long.
HOT = 2.0
#: Entries of the anycast-membership cache before it is cleared (bounded memory).
_WATCH_CACHE = 4096


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One step of a route change. `t`: seconds on CLOCK_MONOTONIC."""

    t: float
    kind: str
    neighbour: str | None = None
    metric: int | None = None
    router_id: bytes | None = None
    seqno: int | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(self.t, 6), "kind": self.kind}
        if self.neighbour is not None:
            out["neighbour"] = self.neighbour
        if self.metric is not None:
            out["metric"] = self.metric
        if self.router_id is not None:
            out["router_id"] = self.router_id.hex()
        if self.seqno is not None:
            out["seqno"] = self.seqno
        if self.note:
            out["note"] = self.note
        return out


class TraceRing:
    """The bounded per-prefix event rings of one daemon (anycast prefixes only)."""

    def __init__(self, anycast: Iterable[Prefix] = (), per_prefix: int = PER_PREFIX,
                 max_prefixes: int = MAX_PREFIXES) -> None:
        if per_prefix < 1 or max_prefixes < 1:
            raise ValueError("trace bounds must be at least 1")
        self.per_prefix = per_prefix
        self.max_prefixes = max_prefixes
        self._anycast: tuple[Prefix, ...] = tuple(anycast)
        self._watch: dict[Prefix, bool] = {}
        self._rings: OrderedDict[Prefix, deque[TraceEvent]] = OrderedDict()
        #: Per prefix and neighbour, the last (router-id, seqno, metric) heard: a repeat
        #: is a refresh, not recorded.
        self._heard: dict[Prefix, dict[str, tuple[bytes, int, int]]] = {}
        self._hot_until = float("-inf")
        #: Events recorded (all time) and dropped by the bounds.
        self.recorded = 0
        self.dropped = 0

    # ------------------------------------------------------------ what is traced

    def set_anycast(self, anycast: Iterable[Prefix]) -> None:
        """The anycast ranges changed (a reload): traced prefixes follow."""
        self._anycast = tuple(anycast)
        self._watch.clear()

    def watched(self, prefix: Prefix) -> bool:
        """Whether `prefix` lies in an anycast range (cached; the cache is bounded)."""
        hit = self._watch.get(prefix)
        if hit is None:
            hit = any(prefix.version == a.version and _subnet_of(prefix, a)
                      for a in self._anycast)
            if len(self._watch) >= _WATCH_CACHE:
                self._watch.clear()
            self._watch[prefix] = hit
        return hit

    def hot(self, now: float) -> bool:
        """Whether a traced prefix changed lately (outgoing Updates are worth a look)."""
        return now < self._hot_until

    # ------------------------------------------------------------ recording

    def add(self, prefix: Prefix, ev: TraceEvent) -> None:
        """Record `ev` for `prefix` (if traced)."""
        if not self.watched(prefix):
            return
        ring = self._rings.get(prefix)
        if ring is None:
            ring = self._rings[prefix] = deque(maxlen=self.per_prefix)
            while len(self._rings) > self.max_prefixes:
                old, gone = self._rings.popitem(last=False)
                self._heard.pop(old, None)
                self.dropped += len(gone)
        else:
            self._rings.move_to_end(prefix)
        if len(ring) == ring.maxlen:
            self.dropped += 1
        ring.append(ev)
        self.recorded += 1
        self._hot_until = max(self._hot_until, ev.t + HOT)

    def event(self, prefix: Prefix, t: float, kind: str, *, neighbour: str | None = None,
              metric: int | None = None, router_id: bytes | None = None,
              seqno: int | None = None, note: str = "") -> None:
        """Record one event (see `KINDS`)."""
        if self.watched(prefix):
            self.add(prefix, TraceEvent(t, kind, neighbour, metric, router_id, seqno, note))

    def heard(self, t: float, neighbour: str, prefix: Prefix, router_id: bytes, seqno: int,
              metric: int) -> None:
        """An Update from `neighbour`: recorded when it differs from the last one heard
        from it for `prefix` (a refresh is not)."""
        if not self.watched(prefix):
            return
        last = self._heard.setdefault(prefix, {})
        now = (router_id, seqno, metric)
        if last.get(neighbour) == now:
            return
        last[neighbour] = now
        self.add(prefix, TraceEvent(t, "update_received", neighbour, metric, router_id, seqno))

    def forget_neighbour(self, neighbour: str) -> None:
        """A neighbour went down or away: what it announced is forgotten."""
        for last in self._heard.values():
            last.pop(neighbour, None)

    # ------------------------------------------------------------ reading

    def prefixes(self) -> list[Prefix]:
        """Traced prefixes, least recently changed first."""
        return list(self._rings)

    def events(self, prefix: Prefix, since: float | None = None) -> list[TraceEvent]:
        ring = self._rings.get(prefix)
        if ring is None:
            return []
        return [e for e in ring if since is None or e.t >= since]

    def view(self, prefix: Prefix, since: float | None = None) -> dict[str, Any]:
        evs = self.events(prefix, since)
        return {"prefix": str(prefix), "traced": self.watched(prefix),
                "events": [e.as_dict() for e in evs]}

    def summary(self) -> dict[str, Any]:
        return {"prefixes": [{"prefix": str(p), "events": len(r),
                              "last": round(r[-1].t, 6) if r else None}
                             for p, r in self._rings.items()],
                "recorded": self.recorded, "dropped": self.dropped,
                "per_prefix": self.per_prefix, "max_prefixes": self.max_prefixes}


def _subnet_of(a: Prefix, b: Prefix) -> bool:
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.subnet_of(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.subnet_of(b)
    return False
