"""Neighbours: the configured WireGuard peers that speak Babel with us.

Over WireGuard every neighbour is a point-to-point unicast link, so liveness is simple and
fast: a neighbour is up while we hear its Hellos and it acknowledges ours with IHUs, and
goes down after `dead` of its Hello intervals of silence. Each end computes its view of
the link cost, a base cost plus an RTT term from the timestamp sub-TLVs (the RTT extension
as babeld implements it) damped in steps so that jitter does not move it, and sends that
view in its IHUs (the rxcost field). Both ends use the larger of the two views: one agreed,
symmetric cost per link, which WireGuard's source filter needs (see `cost`).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

from wgcast.babel.wire import INFINITY

_U32 = 1 << 32


def stamp(now: float) -> int:
    """A timestamp sub-TLV value: microseconds modulo 2**32."""
    return int(now * 1_000_000) % _U32


def link_tiebreak(a: bytes, b: bytes) -> int:
    """The tie-break value of the link between the nodes named `a` and `b` (e.g. their
    WireGuard public keys): the same at both ends, about uniform in [1, 2**32).

    Summed along a path it orders paths of equal metric, the same way seen from either
    end (see `Tiebreak`); 32 bits per link leave room for 2**32 hops in the 64-bit sum.
    """
    lo, hi = (a, b) if a <= b else (b, a)
    h = hashlib.blake2b(len(lo).to_bytes(2, "big") + lo + hi, digest_size=4,
                        person=b"wgcast-link-tie").digest()
    return int.from_bytes(h, "big") or 1


@dataclass(frozen=True, slots=True)
class LinkCostParams:
    """How a measured RTT becomes a link cost (metric units)."""

    base_cost: int = 32
    rtt_cost_per_ms: float = 4.0
    max_rtt_cost: int = 2048
    #: Weight of a new RTT sample in the moving average.
    rtt_alpha: float = 0.125
    #: The cost follows a slow average of the RTT (the plain mean of the first
    #: 1 / cost_alpha samples, then a moving average with this weight) in steps: it moves
    #: only when that average leaves a band of max(rtt_hysteresis_ms, rtt_hysteresis_rel *
    #: RTT) around the RTT the cost was last computed from. Jitter then leaves costs (and so
    #: metrics, announcements and route choices) alone once the average has settled (after
    #: 0.25 / cost_alpha samples the cost stops following it within 2 %), while a real change
    #: of latency (beyond the band) still shows within a few seconds.
    cost_alpha: float = 1 / 64
    rtt_hysteresis_rel: float = 0.1
    rtt_hysteresis_ms: float = 0.2
    #: Delay on a path only adds (queues, a peer or its WireGuard scheduled late): a
    #: sample above rtt_spike times the lowest of the last rtt_window counts as that
    #: much. On a busy host samples ran at 30x the link's RTT during the lab's boot: the
    #: mean of the first samples set costs 3-6x too high, and they came down in 10%
    #: steps over minutes, each step a wave of announcements (the 16-node lab's idle
    #: churn: a cost change per node per second). A real rise shows once the window
    #: has forgotten the lower samples.
    rtt_spike: float = 4.0
    rtt_window: int = 64

    def cost(self, rtt_ms: float | None, extra: int = 0) -> int:
        rtt_term = 0 if rtt_ms is None else min(self.max_rtt_cost,
                                                round(rtt_ms * self.rtt_cost_per_ms))
        return min(INFINITY - 1, self.base_cost + extra + rtt_term)


class Neighbour:
    """State of one neighbour: Hello history, IHU, RTT, cost, liveness."""

    __slots__ = (
        "cost_rtt_ms",
        "extra_cost",
        "hello_history",
        "hello_interval",
        "hello_seqno_in",
        "hello_seqno_out",
        "id",
        "ihu_interval",
        "last_hello",
        "last_ihu",
        "last_sent_hello",
        "multicast",
        "peer_hello_recv",
        "peer_hello_stamp",
        "quiet",
        "rtt_ms",
        "rtt_recent",
        "rtt_samples",
        "rtt_slow_ms",
        "tie",
        "txcost",
        "up",
    )

    def __init__(self, nid: str, extra_cost: int = 0, tie: int = 0,
                 multicast: bool = False) -> None:
        self.id = nid
        self.extra_cost = extra_cost
        #: Our Hellos to it are multicast ones (unicast flag clear): RFC 8966 speakers
        #: such as babeld keep a neighbour only while they hear its multicast Hellos. The
        #: driver sends this neighbour's datagrams to ff02::1:6 (see Node.add_neighbour).
        self.multicast = multicast
        #: This link's tie-break value (see link_tiebreak), added to a route's path tie.
        self.tie = tie
        self.up = False
        #: Its Hellos say it does quiet mode (quiet.py), and so do we.
        self.quiet = False
        self.hello_seqno_out = 0
        self.hello_seqno_in: int | None = None
        self.hello_history = 0
        self.hello_interval = 0.0  # theirs, seconds
        self.ihu_interval = 0.0
        self.last_hello: float | None = None
        self.last_ihu: float | None = None
        self.last_sent_hello: float | None = None
        self.txcost = INFINITY
        # Their last Hello timestamp and when we received it: echoed in our next IHU.
        self.peer_hello_stamp: int | None = None
        self.peer_hello_recv: int | None = None
        self.rtt_ms: float | None = None
        #: The RTT the cost is computed from (follows rtt_ms in steps, see LinkCostParams).
        self.cost_rtt_ms: float | None = None
        self.rtt_slow_ms: float | None = None
        self.rtt_samples = 0
        #: The last samples (LinkCostParams.rtt_window), for their minimum.
        self.rtt_recent: deque[float] = deque()

    def on_hello(self, now: float, seqno: int, interval_cs: int, ts: int | None,
                 arrived: float | None = None) -> None:
        """`arrived`: when the datagram reached the host, if earlier than `now` (it waited
        in the socket); the Timestamp echo dates our hold time from it."""
        if self.hello_seqno_in is not None:
            gap = (seqno - self.hello_seqno_in) & 0xFFFF
            self.hello_history = ((self.hello_history << min(gap, 16)) | 1) & 0xFFFF \
                if 0 < gap < 0x8000 else (self.hello_history | 1)
        else:
            self.hello_history = 1
        self.hello_seqno_in = seqno
        self.hello_interval = interval_cs / 100.0
        self.last_hello = now
        if ts is not None:
            self.peer_hello_stamp = ts
            self.peer_hello_recv = stamp(now if arrived is None else arrived)

    def on_ihu(self, now: float, rxcost: int, interval_cs: int) -> None:
        self.txcost = rxcost
        self.ihu_interval = interval_cs / 100.0
        self.last_ihu = now

    def on_rtt_sample(self, now: float, origin: int, peer_recv: int, peer_send: int,
                      alpha: float, params: LinkCostParams | None = None) -> None:
        """RTT = (now - our send) - (their hold time), all in wrapping microseconds."""
        total = (stamp(now) - origin) % _U32
        hold = (peer_send - peer_recv) % _U32
        if hold > total or total > 10_000_000:
            return  # reordered or stale echo: not a sample
        rtt = (total - hold) / 1000.0
        self.rtt_ms = rtt if self.rtt_ms is None else (1 - alpha) * self.rtt_ms + alpha * rtt
        self.rtt_samples += 1
        if params is None:
            self.cost_rtt_ms = self.rtt_slow_ms = self.rtt_ms
            return
        n = self.rtt_samples
        slow = self.rtt_slow_ms
        settled = n * params.cost_alpha >= 0.25
        recent = self.rtt_recent
        recent.append(rtt)
        if len(recent) > params.rtt_window:
            recent.popleft()
        rtt = min(rtt, params.rtt_spike * min(recent) + params.rtt_hysteresis_ms)
        w = max(params.cost_alpha, 1.0 / n)
        slow = rtt if slow is None else (1 - w) * slow + w * rtt
        self.rtt_slow_ms = slow
        ref = self.cost_rtt_ms
        # Follow the average closely while it is young (a few samples), then in steps.
        rel = params.rtt_hysteresis_rel if settled else 0.02
        if ref is None or abs(slow - ref) > max(params.rtt_hysteresis_ms, rel * ref):
            self.cost_rtt_ms = slow

    def expiry(self, dead: int) -> float | None:
        """When this neighbour is declared down unless we hear from it."""
        if self.last_hello is None or self.last_ihu is None:
            return None
        hi = self.hello_interval or 1.0
        ii = self.ihu_interval or hi
        return min(self.last_hello + dead * hi, self.last_ihu + dead * ii)

    def alive(self, now: float, dead: int) -> bool:
        exp = self.expiry(dead)
        return exp is not None and now < exp and self.txcost < INFINITY

    def own_cost(self, params: LinkCostParams) -> int:
        """Our view of the link cost (what we send in our IHUs' rxcost)."""
        return params.cost(self.cost_rtt_ms, self.extra_cost)

    def cost(self, params: LinkCostParams) -> int:
        """The agreed link cost: the larger of our view and the neighbour's (its IHU).

        Both ends compute the same value once each has the other's latest IHU, so the
        metric of a path is the same in both directions. Each view is damped on its own
        (LinkCostParams), so the agreed cost is damped too.
        """
        if not self.up:
            return INFINITY
        own = params.cost(self.cost_rtt_ms, self.extra_cost)
        theirs = self.txcost
        return own if own >= theirs else theirs

    def forget(self) -> None:
        """The neighbour went down: drop what we measured, keep our Hello seqno."""
        self.up = False
        self.quiet = False
        self.last_hello = self.last_ihu = None
        self.hello_seqno_in = None
        self.hello_history = 0
        self.txcost = INFINITY
        self.peer_hello_stamp = self.peer_hello_recv = None
        self.rtt_ms = None
        self.cost_rtt_ms = self.rtt_slow_ms = None
        self.rtt_recent.clear()
        self.rtt_samples = 0
