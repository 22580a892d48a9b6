"""Node: the sans-IO Babel engine, the only public face of `wgcast.babel`.

Bytes and `now` in, datagrams and events out (after aioquic and h11): the asyncio daemon
and the virtual-time simulator are thin drivers around the same object.

    node = Node(NodeConfig(router_id), now)
    node.add_neighbour("peer")
    node.receive(now, "peer", data); node.handle_timer(now)
    node.next_deadline(); node.datagrams_to_send(); node.next_event()
    node.originate(prefix, metric=0); node.retract(prefix)

The Node composes one object per concept, each in its own file: neighbours and link costs
(neighbour.py), routes and the pure selection function (route.py), feasibility distances
(source.py), our own prefixes (xroute.py), seqno requests and acks with their resends
(request.py), the anycast source release (release.py), outgoing updates (update.py), quiet
mode between wgcast nodes (quiet.py: acknowledged updates and digests instead of periodic
full dumps) and the codec (wire.py). What stays here is the dispatch of what arrives
(Hello/IHU, Updates, requests, acks, digests), the neighbours' life cycle, and the
bookkeeping around selection.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from wgcast.babel.errors import LocalProtocolError, RemoteProtocolError
from wgcast.babel.events import (
    LOCAL,
    Event,
    NeighbourDown,
    NeighbourUp,
    RetractionAcked,
    RouteSelected,
    SeqnoChanged,
)
from wgcast.babel.hellostream import HelloStream, HelloStreams, ihu_is_for
from wgcast.babel.liveness import (
    F_ANSWERS,
    F_HOLD,
    F_PROBE,
    Liveness,
    LivenessParams,
    fast_neighbours,
    liveness_subtlv,
)
from wgcast.babel.neighbour import LinkCostParams, Neighbour, stamp
from wgcast.babel.quiet import digest_sum, entry_hash
from wgcast.babel.release import SourceRelease
from wgcast.babel.request import RequestTracker
from wgcast.babel.route import Route, RouteTable, Selected, SelectionParams, select
from wgcast.babel.source import SourceTable, seqno_less, seqno_plus
from wgcast.babel.update import Updates
from wgcast.babel.wire import (
    AE_WILDCARD,
    DIGEST_FULL,
    HELLO_UNICAST,
    IHU,
    INFINITY,
    MAX_BODY,
    Ack,
    AckReq,
    Digest,
    Hello,
    PacketWriter,
    QuietCap,
    ResolvedRouteRequest,
    ResolvedSeqnoRequest,
    RouteRequest,
    RouteUpdate,
    SeqnoRequest,
    SubTLV,
    Timestamp,
    centiseconds,
    decode_packet,
    fast_updates,
    fast_updates_acked,
    intern_prefix,
    prefix_to_wire,
    resolve,
    with_ipv4_next_hop,
)
from wgcast.babel.xroute import XRouteTable
from wgcast.prefix import Prefix

#: accept(neighbour, prefix, router_id, seqno, signature) -> bool: the driver's
#: announcement policy (the signature: the OriginSig body, b"" when absent).
AcceptFilter = Callable[[str, Prefix, bytes, int, bytes], bool]
#: observe(neighbour, prefix, router_id, seqno, metric): every Update heard, retractions
#: included, before it is applied (the driver's route-change trace; must be cheap).
UpdateObserver = Callable[[str, Prefix, bytes, int, int], None]


class OriginSigner(Protocol):
    """Signs what this node originates (the driver's: crypto and wall clock stay out of
    the engine). `sign` gives the OriginSig body for (prefix, seqno); `epoch` changes
    when signatures are renewed, so cached full updates are rebuilt with the new ones."""

    def sign(self, prefix: Prefix, seqno: int) -> bytes: ...

    def epoch(self) -> int: ...


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Engine parameters; durations in seconds."""

    router_id: bytes
    hello_interval: float = 0.2
    #: Hello intervals of silence before a neighbour is declared down.
    dead: int = 3
    update_interval: float = 4.0
    link: LinkCostParams = field(default_factory=LinkCostParams)
    selection: SelectionParams = field(default_factory=SelectionParams)
    #: Initial seqno (restored from the state file so a restart is not rejected).
    seqno: int = 0
    retraction_tries: int = 3
    seqno_request_tries: int = 3
    max_body: int = MAX_BODY
    accept: AcceptFilter | None = None
    #: Signs our own announcements (None: they go unsigned).
    signer: OriginSigner | None = None
    observe: UpdateObserver | None = None
    #: Quiet mode toward neighbours that do it too (quiet.py); False: RFC 8966 only.
    quiet: bool = True
    #: Sends of a packet of triggered Updates to a quiet neighbour before a full update.
    delivery_tries: int = 5
    #: Probing and Hellos on demand between wgcast neighbours (liveness.py).
    liveness: LivenessParams = field(default_factory=LivenessParams)

    def __post_init__(self) -> None:
        if len(self.router_id) != 8 or self.router_id in (bytes(8), b"\xff" * 8):
            raise LocalProtocolError("router-id must be 8 bytes, not all zeros or all ones")
        if self.hello_interval <= 0 or self.update_interval <= 0 or self.dead < 1:
            raise LocalProtocolError("timers must be positive")


_NEVER = float("inf")
#: Answered AckReqs whose retractions are remembered (`retractions_acked`): an Ack goes
#: out in the same flush, so a few per neighbour is plenty.
ACKED_KEPT = 1024
#: Router-ids `Node._rid` shares, at most (then it starts again).
RIDS_KEPT = 65536


class _Deadlines(dict[str, float]):
    """Per-neighbour deadlines with their earliest in O(log n) (a heap beside the dict,
    stale entries dropped lazily): the engine asks for it after every packet, and a full
    mesh has hundreds of neighbours."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, str]] = []

    def __setitem__(self, key: str, t: float) -> None:
        dict.__setitem__(self, key, t)
        heapq.heappush(self._heap, (t, key))

    def earliest(self) -> float:
        heap, get = self._heap, self.get
        while heap:
            t, key = heap[0]
            if get(key) == t:
                return t
            heapq.heappop(heap)
        return _NEVER

    def due(self, now: float) -> list[str]:
        """The keys whose deadline is at or before `now` (each once; the caller moves
        their deadlines on)."""
        out: list[str] = []
        seen: set[str] = set()
        heap, get = self._heap, self.get
        while heap and heap[0][0] <= now:
            t, key = heapq.heappop(heap)
            if get(key) == t and key not in seen:
                seen.add(key)
                out.append(key)
        return out


class Node:
    """One Babel speaker; neighbours are the WireGuard peers the driver adds."""

    def __init__(self, config: NodeConfig, now: float) -> None:
        self.config = config
        self.router_id = config.router_id
        self._now = now
        #: Arrival time of the datagram being processed, if earlier than now (receive).
        self._arrived: float | None = None
        self.neighbours: dict[str, Neighbour] = {}
        self.routes = RouteTable()
        self.sources = SourceTable()
        self.xroutes = XRouteTable(config.seqno)
        self.requests = RequestTracker()
        self.selected: dict[Prefix, Selected] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("packets_in", "packets_bad", "packets_unknown_neighbour", "packets_out",
             "bytes_in", "bytes_out", "tlvs_skipped", "updates_in", "updates_filtered",
             "updates_unfeasible", "route_changes", "seqno_requests_in",
             "seqno_requests_forwarded", "seqno_requests_sent", "digests_in",
             "digest_mismatch", "digest_stale", "resyncs_requested", "routes_swept",
             "deliveries_resent", "deliveries_given_up", "neighbours_down_expiry",
             "neighbours_down_probe", "probe_rounds", "expiry_probes", "kept_by_packets",
             "cost_changes"), 0)
        self._events: deque[Event] = deque()
        self._out: dict[str, PacketWriter] = {}
        #: Writers that may hold output (PacketWriter.dirty), and each neighbour's rank
        #: in `_out` (datagrams go out in that order).
        self._dirty: set[str] = set()
        self._rank: dict[str, int] = {}
        self._ranked = 0
        # One entry per live Route object, re-queued on pop while the route is refreshed.
        self._expiry: list[tuple[float, int, Route]] = []
        self._expiry_seq = 0
        self._next_hello = _Deadlines()
        self._next_update = now + config.update_interval
        #: When each neighbour that is up expires unless heard from (see next_deadline).
        self._nb_expiry = _Deadlines()
        self._next_gc = now + 60.0
        #: The anycast source-change rule (release.py).
        self._release = SourceRelease(self.requests)
        #: Set by restart_hold(): the node is stopping; no regular Hello may cancel the hold Hello.
        self._restart_holding = False
        # Hot-path caches (pure speed-ups, same behaviour):
        # - the current cost of each neighbour (what nb.cost() says; kept up to date);
        self._cost: dict[str, int] = {}
        # - each neighbour's link tie-break (Neighbour.tie), for selection;
        self._tie: dict[str, int] = {}
        # - our own view of each link's cost, as last sent in an IHU;
        self._own_cost: dict[str, int] = {}
        # - per neighbour, packets made only of feasible Updates that we processed, with the
        #   routes they set: a byte-identical repeat (a periodic dump) only refreshes them.
        self._rx_seen: dict[str, dict[bytes, tuple[int, int, list[Route], list[int]]]] = {}
        # Quiet mode, per quiet neighbour (quiet.py): the opaque of the last AckReq heard
        # from it; its full-update round (Route.mark); the Updates from it our accept
        # filter dropped (prefix -> entry hash, round), which its digest still counts;
        # when we last asked it for a full update.
        self._rx_last_op: dict[str, int] = {}
        #: (neighbour, opaque of an AckReq we answered) -> the prefixes retracted in its
        #: packet (None: all, a wildcard retraction); the most recent ACKED_KEPT of them.
        self._acked_retractions: dict[tuple[str, int], tuple[Prefix | None, ...]] = {}
        self._rx_round: dict[str, int] = {}
        #: neighbour -> prefix -> (entry hash, round, ask again) of an Update our filter
        #: dropped: in the digest; asked for again unless no copy can ever be taken (our
        #: own router-id: asking would loop, the same Update refused at every interval).
        self._rx_filtered: dict[str, dict[Prefix, tuple[int, int, bool]]] = {}
        self._resync_asked: dict[str, float] = {}
        self._rx_stale: dict[str, int] = {}
        #: Prefixes whose last selection was starved or saw a better route it could not
        #: take: the periodic full updates of RFC 8966 make a node ask for a seqno again
        #: (however its requests were lost); with quiet neighbours the timer does.
        self._wanting: set[Prefix] = set()
        #: One bytes object per router-id for the routes to hold (a decoded packet makes
        #: its own): a full mesh of N holds N^3 routes. Bounded (see _on_update).
        self._rids: dict[bytes, bytes] = {}
        #: Update intervals in seconds by their centiseconds, shared by the routes (a
        #: float per route otherwise); at most 65536 keys.
        self._intervals: dict[int, float] = {}
        self._hello_subs: tuple[QuietCap, ...] = (QuietCap(),) if config.quiet else ()
        #: Neighbours that get IPv4 routes as AE 1 + Next Hop (see add_neighbour).
        self._v4_next_hop: dict[str, bytes] = {}
        #: Outgoing Updates (update.py): announcements, full and triggered updates.
        self._updates = Updates(
            self.router_id, update_interval=config.update_interval, max_body=config.max_body,
            retraction_tries=config.retraction_tries, retry_interval=config.hello_interval,
            out=self._out, neighbours=self.neighbours, costs=self._cost, ties=self._tie,
            selected=self.selected, routes=self.routes, xroutes=self.xroutes,
            sources=self.sources, release=self._release, requests=self.requests,
            signer=config.signer, delivery_tries=config.delivery_tries,
            delivery_backoff=2 * config.hello_interval)
        self._sign_epoch = config.signer.epoch() if config.signer is not None else 0
        #: Multicast Hello streams of LAN interfaces (hellostream.py; add_hello_stream).
        self._streams = HelloStreams()
        #: Late-Hello probing and Hellos on demand (liveness.py).
        self._live = Liveness(config.liveness)
        #: The neighbours we need fast Hellos from (liveness.fast_neighbours): refreshed
        #: on every selection change, and in full now and then (new alternatives).
        self._fast: set[str] = set()
        #: Neighbours the driver needs fast Hellos from whatever we route (watch()).
        self._watched: set[str] = set()
        self._next_fast_scan = now

    # ------------------------------------------------------------ public API

    @property
    def seqno(self) -> int:
        return self.xroutes.seqno

    def add_neighbour(self, nid: str, extra_cost: int = 0, tie: int = 0,
                      multicast: bool = False, ipv4_next_hop: bytes | None = None) -> None:
        """Add a neighbour; `tie` is the link's tie-break value, the same at both ends
        (`link_tiebreak` of the two public keys): without it, equal-cost paths are ordered
        by neighbour name, which the two ends of a path need not agree on.

        `multicast`: our Hellos to it have the unicast flag clear (RFC 8966 multicast
        Hellos), which babeld, BIRD and FRR need to keep a neighbour; the driver then
        sends this neighbour's datagrams to ff02::1:6 on a link where only it hears them.
        Otherwise our Hellos carry the unicast flag (a WireGuard interface with many
        peers, where a multicast datagram reaches one of them at most).

        `ipv4_next_hop` (4 bytes, our IPv4 address on the link): IPv4 routes go to this
        neighbour as AE 1 Updates after a Next Hop TLV, for speakers that do not parse
        v4-via-v6 (AE 4, what every other neighbour gets)."""
        if nid in self.neighbours or nid == LOCAL:
            raise LocalProtocolError(f"neighbour {nid!r} already exists or is reserved")
        if not 0 <= tie < 1 << 32:
            raise LocalProtocolError(f"link tie-break {tie} out of range")
        if ipv4_next_hop is not None:
            if len(ipv4_next_hop) != 4:
                raise LocalProtocolError("an IPv4 next hop is 4 bytes")
            self._v4_next_hop[nid] = ipv4_next_hop
        self.neighbours[nid] = Neighbour(nid, extra_cost, tie, multicast)
        self._out[nid] = PacketWriter(self.config.max_body, dirty=self._dirty, key=nid)
        self._rank[nid] = self._ranked
        self._ranked += 1
        self._next_hello[nid] = self._now
        self._cost[nid] = INFINITY
        self._tie[nid] = tie
        self._own_cost[nid] = INFINITY
        self._rx_seen[nid] = {}
        self._live.add(nid)

    def remove_neighbour(self, nid: str) -> None:
        nb = self.neighbours.get(nid)
        if nb is None:
            raise LocalProtocolError(f"no neighbour {nid!r}")
        if nb.up:
            self._neighbour_down(nb)
        del self.neighbours[nid]
        del self._out[nid]
        del self._rank[nid]
        del self._next_hello[nid]
        del self._cost[nid]
        del self._tie[nid]
        del self._own_cost[nid]
        del self._rx_seen[nid]
        self._forget_rx(nid)
        self._v4_next_hop.pop(nid, None)
        self._nb_expiry.pop(nid, None)
        self._live.remove(nid)
        self._fast.discard(nid)
        self._watched.discard(nid)
        self._updates.neighbour_removed(nid)
        self._streams.leave(nid)

    def originate(self, prefix: Prefix, metric: int = 0, now: float | None = None) -> None:
        """Announce `prefix` from this node (own address or anycast instance)."""
        self._tick(now)
        if not 0 <= metric < INFINITY:
            raise LocalProtocolError(f"metric {metric} out of range")
        prefix = intern_prefix(prefix)
        if self.xroutes.add(prefix, metric):
            self._updates.stop_retracting(prefix)
            self._select(prefix)
        self._updates.flush(self._now)

    def retract(self, prefix: Prefix, now: float | None = None) -> None:
        """Stop announcing `prefix`; RetractionAcked follows when every neighbour knows."""
        self._tick(now)
        prefix = intern_prefix(prefix)
        if not self.xroutes.remove(prefix):
            raise LocalProtocolError(f"{prefix} is not originated here")
        self._select(prefix, force_trigger=True)
        # The retraction goes out with an AckReq (the release of our source, see _select).
        self._start_release(prefix, notify=True)
        self._updates.flush(self._now)

    def restart_hold(self, seconds: float, now: float | None = None) -> None:
        """Planned restart: a last Hello promising the next one within `seconds / dead`.

        Neighbours keep us (and the routes through us) for `seconds`, so a daemon that
        restarts within that time is invisible to the mesh; routes then age normally.
        No regular Hello follows (it would promise the normal interval again and cancel
        the hold): the node sends no more Hellos until it is gone.
        """
        self._tick(now)
        self._restart_holding = True
        interval = seconds / self.config.dead
        link = self.config.link
        for st in self._streams.streams.values():
            self._streams.send(st, self._out[st.sid], self._now, interval, self.neighbours,
                               link, self._own_cost)
            st.next_at = _NEVER
        for nb in self.neighbours.values():
            if nb.id in self._streams.member_of:
                continue  # its Hellos are its stream's (above)
            nb.hello_seqno_out = seqno_plus(nb.hello_seqno_out)
            w = self._out[nb.id]
            subs: tuple[SubTLV, ...] = (Timestamp((stamp(self._now),)), *self._hello_subs)
            if not nb.multicast:
                # wgcast neighbours: do not probe us to death during the hold.
                subs += (liveness_subtlv(F_ANSWERS | F_HOLD, interval),)
            w.add(Hello(0 if nb.multicast else HELLO_UNICAST, nb.hello_seqno_out,
                        centiseconds(interval), subs))
            if nb.up:
                w.add(IHU(AE_WILDCARD, nb.own_cost(link), centiseconds(interval), b""))
            self._next_hello[nb.id] = _NEVER

    def receive(self, now: float, neighbour: str, data: bytes,
                arrived: float | None = None) -> None:
        """Process one datagram; bad bytes are counted and dropped, never raised.
        `arrived`: when it reached the host (the socket's timestamp), if the driver knows.
        RTT samples are dated from it: time it spent queued behind our own work is not
        the link's, and would make a busy node move its routes away from a good link."""
        self._tick(now)
        self._arrived = arrived if arrived is not None and arrived < self._now else None
        nb = self.neighbours.get(neighbour)
        if nb is None:
            self.counters["packets_unknown_neighbour"] += 1
            return
        counters = self.counters
        counters["packets_in"] += 1
        counters["bytes_in"] += len(data)
        n_events = len(self._events)
        self._live.on_packet(neighbour, self._now)
        seen = self._rx_seen[neighbour]
        hit = seen.pop(data, None) if nb.up else None
        if hit is not None and self._refresh_seen(hit):
            seen[data] = hit  # most recently used last
            counters["updates_in"] += len(hit[2])
        else:
            self._receive_tlvs(nb, data, seen)
        self._check_neighbour(nb)
        if nb.up:
            own = nb.own_cost(self.config.link)
            if own != self._own_cost.get(neighbour):
                # Our view of the link moved: tell the neighbour at once (our IHU carries
                # it), so the two ends agree on the new cost within a one-way delay.
                self._own_cost[neighbour] = own
                self._send_hello(nb, ihu=True)
        self._maybe_recost(nb)
        if len(self._events) > n_events:
            self._selection_moved(n_events)
        self._updates.flush(self._now)

    def _receive_tlvs(self, nb: Neighbour, data: bytes,
                      seen: dict[bytes, tuple[int, int, list[Route], list[int]]]) -> None:
        now = self._now
        # Remember a packet of quiet Updates only (see _refresh_seen).
        routes: list[Route] | None = [] if nb.up else None
        fd_version = self.sources.version
        ann_version = self._updates.version
        updates = fast_updates(data)
        ack_op: int | None = None
        if updates is None and nb.quiet:
            acked = fast_updates_acked(data)
            if acked is not None:
                updates, ack_op = acked
                routes = None
        if updates is not None:
            on_update = self._on_update
            for prefix, rid, seqno, metric, interval, tie, sig in updates:
                route = on_update(nb, prefix, rid, seqno, metric, interval, tie, sig)
                if routes is not None:
                    if route is None:
                        routes = None
                    else:
                        routes.append(route)
            if routes and self.sources.version == fd_version and \
                    self._updates.version == ann_version and nb.up:
                self._remember(seen, data, fd_version, ann_version, routes)
            if ack_op is not None:
                self._out[nb.id].add(Ack(ack_op))
                self._rx_last_op[nb.id] = ack_op
                self._note_acked(nb.id, ack_op, [u[0] for u in updates if u[3] >= INFINITY])
            return
        try:
            tlvs = decode_packet(data)
        except RemoteProtocolError:
            self.counters["packets_bad"] += 1
            return
        skipped: list[str] = []
        retracted: list[Prefix | None] = []
        ack_op = None
        hello_ts: int | None = None
        ihu_ts: tuple[int, int] | None = None
        try:
            for msg in resolve(tlvs, skipped):
                if isinstance(msg, RouteUpdate):
                    if msg.metric >= INFINITY:
                        retracted.append(msg.prefix)
                    route = self._on_update(
                        nb, None if msg.prefix is None else intern_prefix(msg.prefix),
                        msg.router_id, msg.seqno, msg.metric, msg.interval, msg.tie, msg.sig)
                    if routes is not None:
                        if route is None:
                            routes = None
                        else:
                            routes.append(route)
                    continue
                routes = None
                if isinstance(msg, Hello):
                    hello_ts = self._on_hello(nb, msg)
                elif isinstance(msg, IHU):
                    ihu_ts = self._on_ihu(nb, msg)
                elif isinstance(msg, ResolvedSeqnoRequest):
                    self._on_seqno_request(nb, msg)
                elif isinstance(msg, ResolvedRouteRequest):
                    self._on_route_request(nb, msg)
                elif isinstance(msg, AckReq):
                    self._out[nb.id].add(Ack(msg.opaque))
                    self._rx_last_op[nb.id] = msg.opaque
                    ack_op = msg.opaque
                elif isinstance(msg, Ack):
                    self._on_ack(nb.id, msg.opaque)
                elif isinstance(msg, Digest):
                    self._on_digest(nb, msg)
        except RemoteProtocolError:
            self.counters["packets_bad"] += 1
            routes = None
        if ack_op is not None:
            self._note_acked(nb.id, ack_op, retracted)
        if skipped:
            self.counters["tlvs_skipped"] += len(skipped)
            routes = None
        if routes and self.sources.version == fd_version and \
                self._updates.version == ann_version and nb.up:
            self._remember(seen, data, fd_version, ann_version, routes)
        if hello_ts is not None and ihu_ts is not None:
            lp = self.config.link
            at = now if self._arrived is None else self._arrived
            nb.on_rtt_sample(at, ihu_ts[0], ihu_ts[1], hello_ts, lp.rtt_alpha, lp)

    def _note_acked(self, nid: str, opaque: int, retracted: list[Prefix | None]) -> None:
        if not retracted:
            return
        kept = self._acked_retractions
        kept[(nid, opaque)] = tuple(retracted)
        if len(kept) > ACKED_KEPT:
            del kept[next(iter(kept))]

    def retractions_acked(self, nid: str, opaque: int) -> tuple[Prefix | None, ...]:
        """The prefixes (None: all) retracted in the packet from `nid` whose AckReq
        `opaque` we answered, () if none: the driver holds back only the Acks that say
        "no more traffic to you for these" while its data plane still sends some."""
        return self._acked_retractions.get((nid, opaque), ())

    def _remember(self, seen: dict[bytes, tuple[int, int, list[Route], list[int]]],
                  data: bytes, fd_version: int, ann_version: int, routes: list[Route]) -> None:
        # Room for nearly two full dumps (40 or more Updates a packet) and some triggered
        # packets; the oldest entry goes first (a miss only costs a full decode). A full
        # mesh keeps one of these per neighbour: N^2 of them in the simulator.
        if len(seen) >= 16 + len(self.selected) // 22:
            del seen[next(iter(seen))]
        seen[data] = (fd_version, ann_version, routes, [r.gen for r in routes])

    def _refresh_seen(self, hit: tuple[int, int, list[Route], list[int]]) -> bool:
        """A byte-identical repeat of a packet of Updates we processed: if none of its
        routes changed since, and neither our feasibility distances nor our selections
        moved, processing it again would only push their expiry times; do just that."""
        fd_version, ann_version, routes, gens = hit
        if fd_version != self.sources.version or ann_version != self._updates.version:
            return False
        for r, g in zip(routes, gens, strict=True):
            if r.gen != g:
                return False
        now = self._now
        for r in routes:
            r.expires = now + 3.5 * r.interval
        rounds = self._rx_round
        if rounds:
            mark = rounds.get(routes[0].neighbour, 0)
            for r in routes:
                r.mark = mark
        return True

    def handle_timer(self, now: float) -> None:
        self._tick(now)
        cfg = self.config
        n_events = len(self._events)
        for nid in self._next_hello.due(now):
            self._send_hello(self.neighbours[nid])
        for st in self._streams.streams.values():
            if st.next_at <= now:
                self._stream_hello(st)
        # A timer only takes neighbours down (they come up on what we receive).
        if self._nb_expiry.earliest() <= now:
            for nid in [nid for nid, t in self._nb_expiry.items() if t <= now]:
                self._check_neighbour(self.neighbours[nid])
        if self._live.params is not cfg.liveness:
            self._live.params = cfg.liveness  # the driver replaced the config (reload)
            self._live.invalidate()
        if self._nb_expiry:
            self._probe_or_bury(now)
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, _, route = heapq.heappop(expiry)
            prefix = route.prefix
            if self.routes.get(prefix, route.neighbour) is not route:
                continue  # replaced or removed since
            if route.expires <= now:
                self.routes.remove(prefix, route.neighbour)
                self._select(prefix)
            else:
                self._expiry_seq += 1
                heapq.heappush(expiry, (route.expires, self._expiry_seq, route))
        if now >= self._next_update:
            self._next_update = now + cfg.update_interval
            if cfg.signer is not None:
                epoch = cfg.signer.epoch()
                if epoch != self._sign_epoch:
                    # Our signatures were renewed: the cached full updates carry old ones,
                    # and quiet neighbours get no full update: tell them now.
                    self._sign_epoch = epoch
                    self._updates.changed()
                    for prefix, sel in self.selected.items():
                        if sel.via == LOCAL:
                            self._updates.trigger(prefix)
            if self._wanting:
                self._ask_again()
            delivering = self.requests.delivering
            for nb in self.neighbours.values():
                if nb.up:
                    if not nb.quiet:
                        self._updates.send_full(nb.id, now)
                    else:
                        if not delivering(nb.id):
                            # While an update is unacknowledged the digest would not match.
                            self._updates.send_digest(nb.id, now)
                        if self._rx_filtered.get(nb.id):
                            self._ask_filtered(nb.id)
        self._resend_requests()
        self._updates.resend_retractions(now)
        if len(self._events) > n_events:
            self._selection_moved(n_events)
        if now >= self._next_fast_scan:
            self._scan_fast(now)
        if now >= self._next_gc:
            self._next_gc = now + 60.0
            for prefix, sel in self.selected.items():
                # Announced from the cached full update: still in use, not stale.
                self.sources.refresh(prefix, sel.router_id, now)
            self.sources.gc(now)
        self._updates.flush(self._now)

    def next_deadline(self) -> float | None:
        best = self._next_hello.earliest()
        if self._streams.streams:
            best = min(best, self._streams.next_deadline())
        nb_expiry = self._nb_expiry
        if nb_expiry:
            t = nb_expiry.earliest()
            if t < best:
                best = t
            if self._next_update < best:
                best = self._next_update
            t = self._live.next_deadline(self._probed())
            if t < best:
                best = t
            if self._next_fast_scan < best:
                best = self._next_fast_scan
        if self._expiry and self._expiry[0][0] < best:
            best = self._expiry[0][0]
        if self.requests.seqno_requests or self.requests.acks or self.requests.deliveries:
            req = self.requests.next_deadline()
            if req is not None and req < best:
                best = req
        rt = self._updates.next_deadline()
        if rt < best:
            best = rt
        return None if best == _NEVER else best

    def datagrams_to_send(self) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        dirty = self._dirty
        if not dirty:
            return out
        writers = self._out
        if len(dirty) == 1:
            nids = list(dirty)
        elif 4 * len(dirty) >= len(writers) and len(writers) == len(self._rank):
            # Every writer is a neighbour's (no Hello stream's, which rank first), and
            # `_out` is in rank order (add_neighbour appends to both): no sort.
            nids = [n for n in writers if n in dirty]
        else:
            rank = self._rank
            nids = sorted(dirty, key=lambda n: rank.get(n, -1))
        dirty.clear()
        n_bytes = 0
        for nid in nids:
            writer = writers.get(nid)
            if writer is not None and (writer.packets or writer._body):
                nh = self._v4_next_hop.get(nid) if self._v4_next_hop else None
                for pkt in writer.take():
                    if nh is not None:
                        pkt = with_ipv4_next_hop(pkt, nh)
                    out.append((nid, pkt))
                    n_bytes += len(pkt)
        counters = self.counters
        counters["packets_out"] += len(out)
        counters["bytes_out"] += n_bytes
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def settling(self) -> bool:
        """Is a source release under way (a selection that will change when acked)?"""
        return bool(self._release.releasing)

    def neighbour_cost(self, nid: str) -> int:
        return self.neighbours[nid].cost(self.config.link)

    def hello_now(self, nid: str, now: float | None = None) -> None:
        """Send `nid` a Hello (and IHU) at once: the driver moved the neighbour's endpoint
        and the neighbour should hear us on the new path before it declares us dead."""
        self._tick(now)
        nb = self.neighbours.get(nid)
        if nb is None:
            raise LocalProtocolError(f"no neighbour {nid!r}")
        self._send_hello(nb, ihu=True)
        self._updates.flush(self._now)

    def heard(self, nid: str, when: float, now: float | None = None) -> None:
        """The driver saw traffic from `nid` after `when` (WireGuard's receive counter
        moved): a sign of life that postpones probing it, like a packet of ours would."""
        self._tick(now)
        if not self._live.heard(nid, min(when, self._now)):
            raise LocalProtocolError(f"no neighbour {nid!r}")

    # ------------------------------------------------------------ neighbours

    def _tick(self, now: float | None) -> None:
        if now is not None:
            if now < self._now - 1e-9:
                raise LocalProtocolError(f"time went backwards: {now} < {self._now}")
            self._now = now

    def _send_hello(self, nb: Neighbour, flags: int = 0, ihu: bool = False) -> None:
        """A Hello to `nb`, with an IHU when `ihu`, when `nb` is not a wgcast neighbour on
        fast Hellos, or every third Hello otherwise (RFC 8966 allows an IHU interval
        longer than the Hello interval; the RTT is sampled from those)."""
        if self._restart_holding:
            return  # the hold Hello was our last (see restart_hold)
        sid = self._streams.member_of.get(nb.id)
        if sid is not None:  # a LAN neighbour: its IHU goes with its interface's Hello
            self._stream_hello(self._streams.streams[sid])
            return
        now, cfg = self._now, self.config
        nb.hello_seqno_out = seqno_plus(nb.hello_seqno_out)
        w = self._out[nb.id]
        live = self._live
        interval = live.tx_interval(nb.id, cfg.hello_interval)
        next_in = interval
        subs: tuple[SubTLV, ...] = (Timestamp((stamp(now),)), *self._hello_subs)
        if not nb.multicast:
            # Generic (multicast) neighbours get plain RFC 8966 Hellos.
            p = live.peers[nb.id]
            want = live.want(nb.id in self._fast, cfg.hello_interval)
            if want != p.asked:
                p.asked, p.repeats = want, 3
            if p.repeats:
                # Say a new request a few times, a Hello interval apart: one loss must
                # not leave the neighbour sending slow Hellos.
                p.repeats -= 1
                if p.answers:
                    next_in = min(interval, cfg.hello_interval)
            subs += (liveness_subtlv(F_ANSWERS | flags, want),)
            # Our IHU interval is 3 Hello intervals on fast Hellos, whether or not we thin
            # them yet (a neighbour that does not answer probes gets one in each Hello).
            ihu_every = 3 if interval < 1.0 else 1
            if ihu_every > 1 and p.answers and nb.up and not ihu:
                p.since_ihu += 1
                ihu = p.since_ihu >= ihu_every
            else:
                ihu = True
            if ihu:
                p.since_ihu = 0
        else:
            ihu, ihu_every = True, 1
        w.add(Hello(0 if nb.multicast else HELLO_UNICAST, nb.hello_seqno_out,
                    centiseconds(interval), subs))
        if ihu and nb.last_hello is not None:
            # rxcost: our view of the link's cost; the neighbour takes the larger of its
            # own and ours, as we do (Neighbour.cost), so both ends agree. The echo of its
            # Hello timestamp only when its Hellos carry one (BIRD's do not).
            own = nb.own_cost(cfg.link)
            self._own_cost[nb.id] = own
            echo = () if nb.peer_hello_stamp is None or nb.peer_hello_recv is None else \
                (Timestamp((nb.peer_hello_stamp, nb.peer_hello_recv)),)
            # Thinned IHUs promise 3x their spacing: a few IHUs lost in a row must not
            # take the link down (no probe follows a late IHU); a link that fails one
            # way is still found by the other end's probes.
            ihu_iv = interval if ihu_every == 1 else 3 * ihu_every * interval
            w.add(IHU(AE_WILDCARD, own, centiseconds(ihu_iv), b"", echo))
        nb.last_sent_hello = now
        self._next_hello[nb.id] = now + next_in

    def _on_hello(self, nb: Neighbour, msg: Hello) -> int | None:
        ts = next((s.stamps[0] for s in msg.subtlvs if isinstance(s, Timestamp)), None)
        quiet = bool(self._hello_subs) and any(isinstance(s, QuietCap) for s in msg.subtlvs)
        if quiet != nb.quiet:
            self._quiet_changed(nb, quiet)
        was_heard = nb.last_hello is not None
        nb.on_hello(self._now, msg.seqno, msg.interval, ts, self._arrived)
        flags, changed = self._live.on_hello(nb.id, self._now, msg.interval / 100.0,
                                             msg.subtlvs)
        last = nb.last_sent_hello
        if changed:
            # What it asks of us may change what we need of our next hops (needs_fast).
            self._next_fast_scan = self._now
        if not nb.up and (not was_heard or nb.last_ihu is None):
            # Answer at once so the neighbour gets an IHU without waiting a full interval.
            if last is None or self._now - last >= self.config.hello_interval / 4:
                self._send_hello(nb, ihu=True)
        elif flags & F_PROBE:
            # A probe: answer now, with an IHU (within the limits of Liveness.may_answer).
            if self._live.may_answer(nb.id, self._now, self.config.hello_interval,
                                     self._arrived):
                self._send_hello(nb, ihu=True)
        elif changed and self._next_hello[nb.id] > self._now + self._live.tx_interval(
                nb.id, self.config.hello_interval) and (last is None or
                                                        self._now - last >= 0.001):
            # The neighbour wants our Hellos sooner than the next is due: now (at most
            # one Hello per millisecond), with an IHU.
            self._send_hello(nb, ihu=True)
        return ts

    def _on_ihu(self, nb: Neighbour, msg: IHU) -> tuple[int, int] | None:
        own = self._streams.own_address(nb.id) if self._streams.member_of else None
        if own is not None and not ihu_is_for(own, msg.ae, msg.address):
            return None  # a multicast packet's IHU for another neighbour of the sender
        nb.on_ihu(self._now, msg.rxcost, msg.interval)
        for s in msg.subtlvs:
            if isinstance(s, Timestamp) and len(s.stamps) == 2:
                return (s.stamps[0], s.stamps[1])
        return None

    def _check_neighbour(self, nb: Neighbour) -> None:
        dead = self.config.dead
        alive = nb.alive(self._now, dead)
        # A wgcast neighbour being probed lives until the probes' verdict (liveness.py),
        # which _probe_or_bury gives right after us (so that a verdict due now counts as
        # a probe's, not as the RFC expiry that passed during the round); the expiry
        # stays the backstop a Hello interval later.
        probe_deadline = self._live.peers[nb.id].probe_deadline  # inf: not probing
        if not alive and nb.up and \
                self._now < probe_deadline + self.config.hello_interval < _NEVER:
            alive = True
        kept = -_NEVER
        if not alive and nb.up and nb.txcost < INFINITY and nb.id not in self._watched:
            # Its Hellos are late past the RFC expiry, but a wgcast neighbour's other
            # packets count as well (liveness.kept_until); silent altogether and not
            # probed yet (we were stalled past the probing), one round of probes decides.
            kept = self._live.kept_until(nb.id, dead)
            if self._now < kept:
                self.counters["kept_by_packets"] += 1
                alive = True
            elif self._live.at_expiry(nb.id, self._now, nb.expiry(dead),
                                      None if nb.rtt_ms is None else nb.rtt_ms / 1000):
                self.counters["expiry_probes"] += 1
                self._send_hello(nb, F_PROBE, ihu=True)
                probe_deadline = self._live.peers[nb.id].probe_deadline
                alive = True
        if alive and not nb.up:
            nb.up = True
            self._live.invalidate()  # a new member of the set it scans
            self._events.append(NeighbourUp(nb.id))
            self._updates.send_full(nb.id, self._now)
            self._out[nb.id].add(RouteRequest(AE_WILDCARD, 0, b""))
            self._maybe_recost(nb, force=True)
        elif not alive and nb.up:
            self.counters["neighbours_down_expiry"] += 1
            self._neighbour_down(nb, "expiry")
        exp = nb.expiry(dead) if nb.up else None
        if exp is not None and exp < probe_deadline < _NEVER:
            exp = probe_deadline
        if exp is not None and exp < kept:
            exp = kept
        if exp is None:
            self._nb_expiry.pop(nb.id, None)
        elif self._nb_expiry.get(nb.id) != exp:
            # Unchanged (every packet but Hellos and IHUs): no new heap entry. Only stale
            # entries leave that heap (nothing calls `due` on it), so the one pushed with
            # this deadline is still there; each packet of a full-mesh boot pushed one.
            self._nb_expiry[nb.id] = exp

    def _neighbour_down(self, nb: Neighbour, how: str = "removed") -> None:
        note = f"{how}: {self._live.describe(nb.id, self._now)}"
        nb.forget()
        self._live.peers[nb.id].reset()
        self._cost[nb.id] = INFINITY
        self._updates.changed()
        self._events.append(NeighbourDown(nb.id, note))
        for prefix in self.routes.via(nb.id):
            self.routes.remove(prefix, nb.id)
            self._select(prefix)
        self.requests.neighbour_gone(nb.id)
        self._finish_acks()
        self._updates.neighbour_down(nb.id)
        self._forget_rx(nb.id)

    # ------------------------------------------------------------ quiet mode (quiet.py)

    def _quiet_changed(self, nb: Neighbour, quiet: bool) -> None:
        """`nb` started (or stopped) saying it does quiet mode. Up already: a full update
        starts what it knows from us afresh (or periodic full updates take over)."""
        nb.quiet = quiet
        if not nb.up:
            return
        self.requests.forget_deliveries(nb.id)
        if quiet:
            self._updates.send_full(nb.id, self._now)
        else:
            self._updates.forget_tx(nb.id)
            self._forget_rx(nb.id)

    def _forget_rx(self, nid: str) -> None:
        self._rx_last_op.pop(nid, None)
        self._rx_round.pop(nid, None)
        self._rx_filtered.pop(nid, None)
        self._resync_asked.pop(nid, None)
        self._rx_stale.pop(nid, None)

    def _rx_digest(self, nid: str, mark: int | None) -> tuple[int, int]:
        """(count, hash) of what `nid` told us, as its Digest sums it: its routes here
        and the Updates our filter dropped; `mark`: only those heard in that round."""
        filtered = self._rx_filtered.get(nid) or {}
        hashes: list[int] = []
        for r in self.routes.routes_via(nid):
            if (mark is not None and r.mark != mark) or r.prefix in filtered:
                continue
            if r.dgen != r.gen:
                r.dhash = entry_hash(r.prefix, r.router_id, r.seqno, r.refmetric)
                r.dgen = r.gen
            hashes.append(r.dhash)
        hashes += [h for h, m, _ in filtered.values() if mark is None or m == mark]
        return len(hashes), digest_sum(hashes)

    def _on_digest(self, nb: Neighbour, msg: Digest) -> None:
        """Check a quiet neighbour's Digest against what it told us (quiet.py)."""
        if not nb.up or not nb.quiet:
            return
        nid = nb.id
        self.counters["digests_in"] += 1
        if msg.flags & DIGEST_FULL:
            # The end of a full update: what it did not name this round is gone, if the
            # dump arrived whole (else ask again; the next round starts clean).
            mark = self._rx_round.get(nid, 0)
            self._rx_round[nid] = mark + 1
            if self._rx_digest(nid, mark) == (msg.count, msg.hash):
                self._sweep(nid, mark)
                # We now know all it told us, up to that version (lost Updates included).
                self._rx_last_op[nid] = msg.version
                self._rx_stale.pop(nid, None)
            else:
                self._ask_resync(nb)
            return
        if msg.version != self._rx_last_op.get(nid, 0):
            # It covers an Update packet we have not heard (yet): no verdict, unless that
            # lasts (the packet is lost for good and its sender gave up on us).
            self.counters["digest_stale"] += 1
            stale = self._rx_stale[nid] = self._rx_stale.get(nid, 0) + 1
            if stale >= 3:
                self._rx_stale[nid] = 0
                self._ask_resync(nb)
            return
        self._rx_stale.pop(nid, None)
        if self._rx_digest(nid, None) == (msg.count, msg.hash):
            now = self._now
            for r in self.routes.routes_via(nid):
                r.expires = now + 3.5 * r.interval
        else:
            self._ask_resync(nb)

    def _ask_again(self) -> None:
        """What the periodic full updates of neighbours would make us do, when some are
        quiet: select again where a better route was blocked (asking its source for a
        seqno again), ask again where we are starved."""
        if not any(nb.quiet for nb in self.neighbours.values()):
            return
        for prefix in list(self._wanting):
            if prefix in self._release.releasing:
                continue
            if prefix in self.selected:
                self._select(prefix)
            elif self.routes.routes(prefix):
                self._request_for_starved(prefix)
            else:
                self._wanting.discard(prefix)

    def _ask_filtered(self, nid: str) -> None:
        """Ask quiet neighbour `nid` again for what our accept filter refused (a rate
        limit, a signature not yet known): RFC 8966 neighbours send it again with their
        next periodic update; a quiet one would not."""
        out = self._out[nid]
        for prefix in [p for p, (_, _, again) in self._rx_filtered[nid].items() if again][:64]:
            ae, raw = prefix_to_wire(prefix)
            out.add(RouteRequest(ae, prefix.prefixlen, raw))

    def _ask_resync(self, nb: Neighbour) -> None:
        """A digest disagreed: ask for a full update (at most once per update interval)."""
        self.counters["digest_mismatch"] += 1
        last = self._resync_asked.get(nb.id)
        if last is not None and self._now - last < self.config.update_interval:
            return
        self._resync_asked[nb.id] = self._now
        self.counters["resyncs_requested"] += 1
        self._out[nb.id].add(RouteRequest(AE_WILDCARD, 0, b""))

    def _sweep(self, nid: str, mark: int) -> None:
        """Drop what quiet neighbour `nid` did not name in its last full update."""
        filtered = self._rx_filtered.get(nid)
        if filtered:
            for p in [p for p, (_, m, _) in filtered.items() if m != mark]:
                del filtered[p]
        for r in self.routes.routes_via(nid):
            if r.mark != mark:
                self.counters["routes_swept"] += 1
                self.routes.remove(r.prefix, nid)
                self._select(r.prefix)

    def _probed(self) -> Iterable[str]:
        """The up neighbours liveness watches (not those the driver watches, see
        _probe_or_bury); lazy: walked only when liveness has no cached deadline."""
        watched, nb_expiry = self._watched, self._nb_expiry
        return (n for n in nb_expiry if n not in watched) if watched else nb_expiry

    def _probe_or_bury(self, now: float) -> None:
        """Probe the wgcast neighbours whose Hello is late; take down those whose
        probes all went unanswered (liveness.py)."""
        neighbours = self.neighbours

        def rtt(nid: str) -> float | None:
            ms = neighbours[nid].rtt_ms
            return None if ms is None else ms / 1000.0

        # Watched neighbours are not probed: their paths fail over first (the driver's
        # endpoint manager, at 2.25 silent Hellos), and a verdict before that would take
        # the neighbour and its routes down on a path about to be replaced.
        if self._live.next_deadline(self._probed()) > now:
            return  # nothing due (a scan of every neighbour at every timer, otherwise)
        probe, dead = self._live.due(now, list(self._probed()), rtt)
        live = self._live.peers
        for nid in probe:
            if live[nid].probes_sent == 1:
                self.counters["probe_rounds"] += 1
            self._send_hello(neighbours[nid], F_PROBE, ihu=True)
        for nid in dead:
            nb = neighbours[nid]
            if nb.up:
                self.counters["neighbours_down_probe"] += 1
                self._neighbour_down(nb, "probes unanswered")
            self._nb_expiry.pop(nid, None)

    def _selection_moved(self, since: int) -> None:
        """Selections changed (RouteSelected events from index `since`): ask the new
        next hops that need it for fast Hellos at once."""
        if not self.config.liveness.idle_hello_interval:
            return
        moved = [ev.prefix for ev in itertools.islice(self._events, since, None)
                 if isinstance(ev, RouteSelected) and ev.via is not None and ev.via != LOCAL]
        if moved:
            askers = self._live.askers(self.config.hello_interval)
            self._ask_fast(fast_neighbours(self.routes, self.selected, moved, askers)
                           - self._fast)

    def _scan_fast(self, now: float) -> None:
        """Recompute in full whom we need fast Hellos from (an alternative may have
        appeared, a need gone): added ones are asked at once, dropped ones in the next
        regular Hello."""
        live = self.config.liveness
        if not live.idle_hello_interval:
            self._next_fast_scan = now + 10.0  # off; looks again after a reload
            return
        self._next_fast_scan = now + max(self.config.hello_interval,
                                         live.idle_hello_interval / 2)
        new = fast_neighbours(self.routes, self.selected,
                              askers=self._live.askers(self.config.hello_interval))
        new |= self._watched
        added = new - self._fast
        self._fast = new
        self._ask_fast(added)

    def watch(self, nid: str, on: bool = True, now: float | None = None) -> None:
        """Ask `nid` for Hellos at the Hello interval even when we route nothing through
        it (`on`), and do not probe it, or stop both: the driver judges the paths to a
        peer with several endpoints by the Hellos heard on them (an idle Hello every few
        seconds would make an endpoint failover that slow) and fails over before
        Babel's dead interval (a probe's verdict would come first and take the
        neighbour down on a path about to be replaced)."""
        self._tick(now)
        if nid not in self.neighbours:
            raise LocalProtocolError(f"no neighbour {nid!r}")
        self._live.invalidate()
        if on:
            self._watched.add(nid)
            if nid not in self._fast:
                self._ask_fast({nid})
        else:
            self._watched.discard(nid)  # dropped at the next scan, if nothing else needs it
        self._updates.flush(self._now)

    def _ask_fast(self, nids: set[str]) -> None:
        for nid in nids:
            self._fast.add(nid)
            nb = self.neighbours.get(nid)
            if nb is not None and nb.up and self._live.peers[nid].answers:
                self._send_hello(nb)

    def _maybe_recost(self, nb: Neighbour, force: bool = False) -> None:
        """Reselect routes via `nb` when its agreed cost moved (by any amount: selection
        has no hysteresis of its own, the cost is damped instead)."""
        cost = nb.cost(self.config.link)
        if self._cost[nb.id] == cost and not force:
            return
        if not force:
            self.counters["cost_changes"] += 1
        self._cost[nb.id] = cost
        self._updates.changed()
        for prefix in self.routes.via(nb.id):
            self._select(prefix)

    # ------------------------------------------------------------ updates in

    def _on_update(self, nb: Neighbour, prefix: Prefix | None, rid: bytes, seqno: int,
                   metric: int, interval_cs: int, tie: int = 0, sig: bytes = b"") -> Route | None:
        """Apply one Update. Returns the route when a byte-identical repeat of this Update
        would change nothing but the route's expiry (while our feasibility distances and
        selections stay as they are): see _receive_tlvs."""
        self.counters["updates_in"] += 1
        if prefix is None:
            self._rx_filtered.pop(nb.id, None)
            for p in self.routes.via(nb.id):
                self.routes.remove(p, nb.id)
                self._select(p)
            return None
        if self.config.observe is not None:
            self.config.observe(nb.id, prefix, rid, seqno, metric)
        accept = self.config.accept
        if metric < INFINITY and ((accept is not None and not accept(nb.id, prefix, rid,
                                                                      seqno, sig))
                                  or rid == self.router_id):
            # Our own router-id on a route we did not originate here is never used (as
            # babeld does): it can only be our old announcement coming back, or a copy
            # of our key at work elsewhere; taking it would route towards ourselves.
            self.counters["updates_filtered"] += 1
            if nb.quiet:
                # Its digest counts what it sent, accepted or not.
                self._rx_filtered.setdefault(nb.id, {})[prefix] = (
                    entry_hash(prefix, rid, seqno, metric), self._rx_round.get(nb.id, 0),
                    rid != self.router_id)
            return None
        if self._rx_filtered:
            filtered = self._rx_filtered.get(nb.id)
            if filtered:
                filtered.pop(prefix, None)
        route = self.routes.get(prefix, nb.id)
        if metric >= INFINITY:
            if route is not None:
                self.routes.remove(prefix, nb.id)
                if not self._unmoved(prefix, nb.id, None):
                    self._select(prefix)
            return None
        feasible = self.sources.feasible(prefix, rid, seqno, metric)
        if interval_cs:
            interval = self._intervals.get(interval_cs)
            if interval is None:
                interval = self._intervals[interval_cs] = interval_cs / 100.0
        else:
            interval = self.config.update_interval
        expires = self._now + 3.5 * interval
        if route is None:
            rid = self._rid(rid)
            route = Route(prefix, nb.id, rid, seqno, metric, interval, expires, tie, sig)
            if self._rx_round:
                route.mark = self._rx_round.get(nb.id, 0)
            self.routes.put(route)
            self._expiry_seq += 1
            heapq.heappush(self._expiry, (expires, self._expiry_seq, route))
        elif route.seqno == seqno and route.refmetric == metric and route.router_id == rid \
                and route.feasible == feasible and route.tie == tie and route.sig == sig:
            # A refresh (the periodic update): selection has nothing new to consider.
            route.interval, route.expires = interval, expires
            if self._rx_round:
                route.mark = self._rx_round.get(nb.id, 0)
            if feasible:
                if self.requests.seqno_requests:
                    self.requests.satisfied(prefix, rid, seqno)
                return route
            self.counters["updates_unfeasible"] += 1
            if not self._wants_seqno(prefix, nb, route):
                return route
            self._ask_seqno(prefix, nb, rid, seqno)
            self._select(prefix)
            return None
        else:
            rid = route.router_id if route.router_id == rid else self._rid(rid)
            route.router_id, route.seqno, route.refmetric, route.tie = rid, seqno, metric, tie
            route.interval, route.expires = interval, expires
            route.gen += 1
            if self._rx_round:
                route.mark = self._rx_round.get(nb.id, 0)
            if route.sig != sig:
                # A renewed signature: what we pass on changes, the caches must follow
                # (and quiet neighbours, which get no periodic full update, hear it now).
                route.sig = sig
                self._updates.changed()
                sel = self.selected.get(prefix)
                if sel is not None and sel.via == nb.id:
                    self._updates.trigger(prefix)
        route.feasible = feasible
        quiet = True
        if feasible:
            if self.requests.seqno_requests:
                self.requests.satisfied(prefix, rid, seqno)
        else:
            self.counters["updates_unfeasible"] += 1
            if self._wants_seqno(prefix, nb, route):
                self._ask_seqno(prefix, nb, rid, seqno)
                quiet = False
        if not self._unmoved(prefix, nb.id, route):
            self._select(prefix)
        return route if quiet else None

    def _unmoved(self, prefix: Prefix, nid: str, route: Route | None) -> bool:
        """Can selection for `prefix` be skipped after the route from `nid` changed (now
        `route`; None: removed)? Yes when `_select` would provably end where it is: our
        selection is a route from another neighbour, chosen by plain `select` (shortest
        mode, no source release around it, no better unfeasible route or starvation
        recorded: `_wanting`), and the changed route is worse than it (or unusable).

        Then the selected route is still the least feasible one: every other route is
        unchanged since the last selection (any change of one re-selects, or got here),
        so is its neighbour's cost (a new cost re-selects every route through it), and
        the selected route itself is untouched. Nothing better was blocked, so `select`
        would find no blocked route either (this one is worse than the selection), and
        `_select` would store a Selected equal to ours and emit nothing. Feasibility
        distances only tighten between selections, except for the source table's
        garbage collection; a route it makes feasible that would beat the selection was
        a better unfeasible one before: `_wanting`, never skipped.

        In a full mesh nearly every Update is such a worse route from a neighbour we do
        not route through, and `select` scans all N routes of the prefix for it."""
        sel = self.selected.get(prefix)
        if sel is None or sel.via == nid or sel.via == LOCAL or prefix in self._wanting:
            return False
        if self.config.selection.mode != "shortest":
            return False
        release = self._release
        if prefix in release.releasing:
            return False
        owned = release.owned.get(prefix)
        if owned is not None and owned[0] != sel.router_id:
            return False
        if route is None:
            return True
        cost = self._cost.get(nid, INFINITY)
        ref = route.refmetric
        if cost >= INFINITY or ref >= INFINITY:
            return True  # unusable: select skips it
        m = ref + cost
        if m >= INFINITY:
            return True
        if m != sel.metric:
            return m > sel.metric
        t = route.tie + self._tie[nid]
        return t > sel.tie or (t == sel.tie and nid > sel.via)

    def _rid(self, rid: bytes) -> bytes:
        """The node's one copy of `rid` (see `_rids`)."""
        rids = self._rids
        got = rids.get(rid)
        if got is None:
            if len(rids) >= RIDS_KEPT:
                rids.clear()
            got = rids[rid] = rid
        return got

    def _wants_seqno(self, prefix: Prefix, nb: Neighbour, route: Route) -> bool:
        """Should an unfeasible `route` make us ask its source for a newer seqno? Yes if it
        is our selected route that got worse than our feasibility distance (we keep it:
        still loop-free), if we have no route at all (starvation; e.g. the source restarted
        and lost its seqno), or if it would beat our selected route: selection must end on
        the shortest path (see _select), and a new seqno makes it feasible."""
        sel = self.selected.get(prefix)
        if sel is None:
            return prefix not in self._release.releasing
        if sel.via == LOCAL:
            return False
        if sel.via == nb.id:
            return True
        m = self._route_metric(route)
        return m < sel.metric or (m == sel.metric and (route.tie + nb.tie, nb.id)
                                  < (sel.tie, sel.via))

    def _ask_seqno(self, prefix: Prefix, nb: Neighbour, rid: bytes, seqno: int) -> None:
        want = seqno_plus(seqno)
        src = self.sources.get(prefix, rid)
        if src is not None and seqno_less(want, seqno_plus(src.seqno)):
            want = seqno_plus(src.seqno)
        self._request_seqno(prefix, rid, want, nb.id)

    def _on_route_request(self, nb: Neighbour, msg: ResolvedRouteRequest) -> None:
        if not nb.up:
            return
        if msg.prefix is None:
            self._updates.send_full(nb.id, self._now)
        else:
            self._updates.send(nb.id, intern_prefix(msg.prefix), self._now)

    def _on_seqno_request(self, nb: Neighbour, msg: ResolvedSeqnoRequest) -> None:
        self.counters["seqno_requests_in"] += 1
        prefix = intern_prefix(msg.prefix)
        if msg.router_id == self.router_id:
            if prefix in self.xroutes:
                # RFC 8966 3.8.1.2: increase our seqno only if the request asks for a newer
                # one; otherwise the update we send now (or have sent) satisfies it.
                if seqno_less(self.xroutes.seqno, msg.seqno):
                    self.xroutes.bump(msg.seqno)
                    self._events.append(SeqnoChanged(self.xroutes.seqno))
                    self._refresh_local_seqno()
                self._updates.trigger(prefix)
            return
        sel = self.selected.get(prefix)
        if sel is not None and sel.via != LOCAL and sel.router_id == msg.router_id \
                and prefix not in self._release.releasing and not seqno_less(sel.seqno, msg.seqno):
            self._updates.send(nb.id, prefix, self._now)
            return
        if msg.hopcount < 2:
            return
        # Forward towards the requested source, never back where it came from: the next hop
        # of our selected route if it leads to that source, else the best route that does
        # (an anycast prefix has several sources; ours may not be the one asked for).
        target: str | None = None
        if sel is not None and sel.via not in (LOCAL, nb.id) and sel.router_id == msg.router_id:
            target = sel.via
        else:
            best_m = INFINITY + 1
            for r in self.routes.routes(prefix).values():
                if r.router_id == msg.router_id and r.neighbour != nb.id:
                    m = self._route_metric(r)
                    if m < best_m:
                        target, best_m = r.neighbour, m
        if target is None:
            return
        if self.requests.is_duplicate(prefix, msg.router_id, msg.seqno, self._now):
            return
        self.requests.note_forwarded(prefix, msg.router_id, msg.seqno, self._now)
        self.counters["seqno_requests_forwarded"] += 1
        self._out[target].add(self._seqno_tlv(prefix, msg.router_id, msg.seqno,
                                              msg.hopcount - 1))

    def _on_ack(self, nid: str, opaque: int) -> None:
        if self.requests.acked(nid, opaque):
            self._finish_acks()
        else:
            self.requests.delivered(nid, opaque)

    def _finish_acks(self) -> None:
        for pending in self.requests.finished():
            self._updates.changed()
            if pending.notify:
                self._events.append(RetractionAcked(pending.prefix))
            if self._release.acked(pending):
                self._select(pending.prefix)

    def _start_release(self, prefix: Prefix, notify: bool, old: Selected | None = None) -> bool:
        """Retract `prefix` with an AckReq to every neighbour that is up (release.py),
        except our next hop towards the source we release (`old`, our selection until now).

        That neighbour needs no ack: it cannot route through us to that source, now or
        later. We announced that source to it only before we routed through it (since
        then, poison reverse: INFINITY), and any such announcement is unfeasible for it:
        an older seqno than the one it gave us, or the same seqno with a metric above
        the one it gave us, which is at least its feasibility distance. (If it is the
        source itself, our metric is above its own.) Waiting for it cost a round trip
        over the very link that brought the retraction, often the slowest one.

        Nor does a wgcast neighbour whose route to us is finite and from another source
        than the one we release, when we change sources (not for a leave or drain,
        `notify`, whose acks also pace the address going down). It routes along that
        other source, not through us: to route through us to our old source it would
        first have had to release its own, and that waits for our ack, which replaces
        its route at us with the retraction. (From our old source, it may just have
        moved to route through us, its poisoned Update still in flight: it is waited
        for.) In a line, the news of a dead instance then moves a node to the other one
        at once, where it waited a round trip to the neighbour that brought the news.

        True if there was nobody to wait for (the release is complete at once).
        """
        release = self._release
        if release.join(prefix, notify):
            return False
        exempt: str | None = None
        owned = release.owned.get(prefix)
        if old is not None and old.via != LOCAL and owned is not None \
                and old.router_id == owned[0]:
            exempt = old.via
        waiting = {nid for nid, nb in self.neighbours.items() if nb.up and nid != exempt}
        if owned is not None and not notify and waiting:
            per = self.routes.routes(prefix)
            live = self._live.peers
            rid = owned[0]
            for nid in list(waiting):
                r = per.get(nid)
                if r is not None and r.refmetric < INFINITY and r.router_id != rid \
                        and live[nid].answers:
                    waiting.discard(nid)
        pending = release.begin(prefix, waiting, self._now, self.config.retraction_tries,
                                2 * self.config.hello_interval, notify)
        if pending is None:
            if notify:
                self._events.append(RetractionAcked(prefix))
            return True
        self._updates.retract_with_ack(prefix, waiting, pending.opaque)
        return False

    # ------------------------------------------------------------ selection

    def _route_metric(self, route: Route) -> int:
        cost = self._cost.get(route.neighbour, INFINITY)
        ref = route.refmetric
        if cost >= INFINITY or ref >= INFINITY:
            return INFINITY
        m = ref + cost
        return m if m < INFINITY else INFINITY

    def _select(self, prefix: Prefix, force_trigger: bool = False) -> None:
        """Re-run route selection for one prefix; emit events and triggered updates.

        Selection itself is `route.select`, a pure function (the feasible route of least
        (metric, path tie-break, neighbour): both directions of every path agree, see
        there); this is the bookkeeping around it: a local origin wins, a better route that
        is not feasible gets a seqno request, and the source release below.

        Anycast: a node never moves from the source it announced to another one at
        once; it releases the old source first (release.py), still forwarding along it
        meanwhile if it can. Moving to a local origin, or to no route, needs no wait.
        """
        old = self.selected.get(prefix)
        new: Selected | None
        xmetric = self.xroutes.metric(prefix)
        now = self._now
        cur: Route | None = None
        cur_m = INFINITY
        if xmetric is not None:
            new = Selected(LOCAL, self.router_id, self.xroutes.seqno, xmetric)
        else:
            routes = self.routes.routes(prefix)
            if old is not None:
                cur = routes.get(old.via) if old.via != LOCAL else None
                cur_rid: bytes | None = old.router_id
            else:
                cur_rid = None
            choice = select(prefix, routes.values(), self._cost, self._tie, cur, cur_rid,
                            self.sources.feasible, self.config.selection.mode)
            cur_m = choice.current_metric
            blocked = choice.blocked
            if blocked is not None or (choice.best is None and routes):
                self._wanting.add(prefix)
            elif self._wanting:
                self._wanting.discard(prefix)
            if blocked is not None and prefix not in self._release.releasing:
                # A better path exists but is not feasible yet, or (starvation) no path
                # is feasible: ask its source for a new seqno. Asked at every selection
                # while it lasts (the tracker keeps one request per source and seqno),
                # so a starvation that began during a source release, when asking is
                # pointless, is asked about when the release ends.
                self._request_seqno(prefix, blocked.router_id, seqno_plus(blocked.seqno),
                                    blocked.neighbour)
            chosen = choice.best
            if chosen is None:
                new = None
            else:
                key = choice.key
                new = Selected(chosen.neighbour, chosen.router_id, chosen.seqno, key[0],
                               key[1])
        release = self._release
        updates = self._updates
        if new is not None and new.via != LOCAL:
            owned = release.owned.get(prefix)
            if owned is not None and owned[0] != new.router_id:
                if not self._start_release(prefix, notify=False, old=old):
                    # Wait for the acks; keep forwarding along the old source if we can.
                    if cur is not None and cur_m < INFINITY and cur.router_id == owned[0]:
                        new = Selected(cur.neighbour, cur.router_id, cur.seqno, cur_m,
                                       cur.tie + self.neighbours[cur.neighbour].tie)
                    else:
                        new = None
            elif prefix in release.releasing:
                # Back on the source we announced: no need to wait, but announce it again
                # (the release told the neighbours INFINITY).
                release.cancel(prefix)
                updates.changed_prefix(prefix)
        elif new is not None and prefix in release.releasing:
            release.cancel(prefix)
            updates.changed_prefix(prefix)
        if new is None:
            if old is not None:
                del self.selected[prefix]
                updates.retracted(prefix, old.router_id, old.seqno, now)
                updates.changed_prefix(prefix)
                self._events.append(RouteSelected(prefix, None, INFINITY, None))
                self.counters["route_changes"] += 1
                if prefix not in release.releasing:
                    if prefix in release.owned:
                        # Retract with acks now, so a new source needs no wait later.
                        self._start_release(prefix, notify=False, old=old)
                    self._request_for_starved(prefix)
            elif force_trigger:
                updates.trigger(prefix)
            return
        updates.stop_retracting(prefix)
        self.selected[prefix] = new
        if old is None or old.via != new.via or old.router_id != new.router_id:
            updates.changed_prefix(prefix)
            self._events.append(RouteSelected(prefix, new.via, new.metric, new.router_id))
            self.counters["route_changes"] += 1
        elif old.seqno != new.seqno or old.metric != new.metric or old.tie != new.tie:
            # Any change of what we announce goes out now: link costs move in steps (see
            # LinkCostParams), so this is no flood, and the mesh settles in a round trip
            # instead of an update interval per hop.
            updates.changed_prefix(prefix)
        elif force_trigger:
            updates.trigger(prefix)

    def _request_for_starved(self, prefix: Prefix) -> None:
        """No feasible route left: ask the source of the best unfeasible one for a seqno."""
        best: Route | None = None
        best_m = INFINITY
        for route in self.routes.routes(prefix).values():
            m = self._route_metric(route)
            if m < best_m:
                best, best_m = route, m
        if best is not None:
            self._request_seqno(prefix, best.router_id, seqno_plus(best.seqno), best.neighbour)

    def _request_seqno(self, prefix: Prefix, router_id: bytes, seqno: int, nid: str) -> None:
        if self.requests.want(prefix, router_id, seqno, nid, self.config.seqno_request_tries,
                              self._now, 2 * self.config.hello_interval):
            self.counters["seqno_requests_sent"] += 1
            self._out[nid].add(self._seqno_tlv(prefix, router_id, seqno, 64))

    def _is_up(self, nid: str) -> bool:
        nb = self.neighbours.get(nid)
        return nb is not None and nb.up

    def _resend_requests(self) -> None:
        now = self._now
        n_requests = len(self.requests.seqno_requests)
        for req in self.requests.due_seqno_requests(now, self._is_up):
            self._out[req.neighbour].add(self._seqno_tlv(req.prefix, req.router_id, req.seqno,
                                                         req.hopcount))
        if self._wanting and len(self.requests.seqno_requests) < n_requests:
            # A request ran out of tries (its resends, within the duplicate window of the
            # nodes that forward it, may all have died with the first): ask afresh.
            self._ask_again()
        for pending in self.requests.due_acks(now):
            self._updates.resend_acked(pending, now)
        self._finish_acks()
        if self.requests.deliveries:
            resync: set[str] = set()
            for d in self.requests.due_deliveries(now):
                nb = self.neighbours.get(d.neighbour)
                if nb is None or not nb.up or not nb.quiet or d.neighbour in resync:
                    continue
                if d.tries_left < 0:
                    # Out of tries: a full update instead (it ends with a DIGEST_FULL).
                    self.counters["deliveries_given_up"] += 1
                    resync.add(d.neighbour)
                else:
                    self.counters["deliveries_resent"] += 1
                    self._updates.send_reliable(d.neighbour, d.prefixes, d.tries_left + 1,
                                                d.backoff, now)
            for nid in resync:
                self.requests.forget_deliveries(nid)
                self._updates.send_full(nid, now)

    @staticmethod
    def _seqno_tlv(prefix: Prefix, router_id: bytes, seqno: int, hopcount: int) -> SeqnoRequest:
        ae, raw = prefix_to_wire(prefix)
        return SeqnoRequest(ae, prefix.prefixlen, seqno, hopcount, router_id, raw)

    def _refresh_local_seqno(self) -> None:
        self._updates.changed()
        for prefix, sel in self.selected.items():
            if sel.via == LOCAL:
                sel.seqno = self.xroutes.seqno
                self._updates.trigger(prefix)

    # ---- read-only queries for drivers (ports)
    # A driver (the daemon) reads the engine's tables only through these: each answer is
    # a fresh copy of plain values, so it can neither change engine state nor depend on
    # how the tables are laid out (daemon/ports.py turns them into frozen snapshots).

    def neighbour_names(self) -> list[str]:
        """Every neighbour, in the order added."""
        return list(self.neighbours)

    def neighbour_state(self, nid: str) -> tuple[bool, float | None, float | None,
                                                 float] | None:
        """(up, rtt_ms, last_hello, hello_interval) of `nid`; None if no such neighbour.

        `last_hello` is the engine's time of the last Hello heard; `hello_interval` the
        neighbour's own, in seconds (0.0 until known)."""
        nb = self.neighbours.get(nid)
        if nb is None:
            return None
        return nb.up, nb.rtt_ms, nb.last_hello, nb.hello_interval

    def route_entries(self, prefix: Prefix) -> list[tuple[str, bytes, int, int, int]]:
        """(neighbour, router_id, seqno, refmetric, metric) of every route to `prefix`,
        one per neighbour; `metric` adds the link cost, as selection compares it."""
        return [(r.neighbour, r.router_id, r.seqno, r.refmetric, self._route_metric(r))
                for r in self.routes.routes(prefix).values()]

    def route_count_via(self, nid: str) -> int:
        """How many routes were learned from `nid` (O(1): the accept policy asks it for
        every Update)."""
        return self.routes.count_via(nid)

    def route_signature(self, nid: str, prefix: Prefix) -> bytes | None:
        """The origin signature `nid` sent with its route to `prefix` (None: no route)."""
        r = self.routes.get(prefix, nid)
        return None if r is None else r.sig

    def has_route(self, nid: str, prefix: Prefix) -> bool:
        """Has `nid` given us a route to `prefix` (is an Update of it a refresh)?"""
        return self.routes.get(prefix, nid) is not None

    # ---- multicast Hello streams (plain LAN interfaces, hellostream.py)

    def add_hello_stream(self, sid: str, address: bytes, now: float | None = None) -> None:
        """A LAN interface's multicast Hello stream, under id `sid` (the driver sends
        what `datagrams_to_send` gives for `sid` to ff02::1:6 on that interface);
        `address`: our IPv6 address there (16 bytes). Its first Hello goes at once,
        neighbour or not: that is how the others find us."""
        self._tick(now)
        if sid in self._out or sid in self.neighbours or sid == LOCAL:
            raise LocalProtocolError(f"{sid!r} is already a neighbour or a stream")
        if len(address) != 16:
            raise LocalProtocolError("a stream's address is 16 bytes")
        self._streams.streams[sid] = HelloStream(sid, address, next_at=self._now)
        self._out[sid] = PacketWriter(self.config.max_body, dirty=self._dirty, key=sid)

    def join_hello_stream(self, nid: str, sid: str, address: bytes) -> None:
        """Neighbour `nid` (at `address`, 16 bytes) is on stream `sid`'s interface: it
        gets no Hellos of its own, an IHU in each of the stream's Hellos instead, and
        only IHUs addressed to us (or wildcard ones) count from it."""
        st = self._streams.streams.get(sid)
        if st is None or nid not in self.neighbours:
            raise LocalProtocolError(f"no stream {sid!r} or no neighbour {nid!r}")
        if len(address) != 16:
            raise LocalProtocolError("a neighbour's address is 16 bytes")
        self._streams.leave(nid)
        st.members[nid] = address
        self._streams.member_of[nid] = sid
        self._next_hello[nid] = _NEVER

    def _stream_hello(self, st: HelloStream) -> None:
        if self._restart_holding:
            return
        interval = self.config.hello_interval
        self._streams.send(st, self._out[st.sid], self._now, interval, self.neighbours,
                           self.config.link, self._own_cost)
        st.next_at = self._now + interval

