"""Neighbour liveness between wgcast speakers: late-Hello probing and Hellos on demand.

RFC 8966 declares a neighbour dead after a few Hello intervals of silence, so detection
costs several intervals and every neighbour gets Hellos at the rate the most demanding one
needs. Between two wgcast nodes (each Hello carries the `S_LIVENESS` sub-TLV, from the
experimental range, so babeld, BIRD and FRR ignore it) this module does better:

* **Late-Hello probing.** Per neighbour we learn how late its Hellos arrive (a mean
  deviation). When one is late by more than that margin and nothing else was heard, we
  send a few Hellos flagged "answer now" a fraction of an RTT apart; a live wgcast
  neighbour answers each with a Hello+IHU at once. If no packet at all arrives by a
  timeout of about 1.5 RTT after the last probe, the neighbour is dead: about one Hello
  interval plus a few RTTs after it died, instead of `dead` intervals. A lost Hello costs
  a few probes and no alarm: all probes and their answers must be lost.
* **Hellos on demand.** A neighbour needs our Hellos fast only if it must notice our
  death fast: it routes through us something that survives our death (we are transit,
  or the prefix has other origins: anycast). Each wgcast node says in its Hellos the
  interval at which it wants the other's Hellos: the configured Hello interval when it
  needs the neighbour, `idle_hello_interval` otherwise. A node sends each wgcast
  neighbour Hellos at the interval it asked (never faster than its own configured one).
* **Other signs of life.** Any packet from the neighbour, and whatever the driver knows
  (`Node.heard`: WireGuard's receive counter moved), postpones probing and ends a round
  of probes (the next waits an interval). Any Babel packet also counts as a Hello for
  the RFC expiry (`kept_until`): a starved host loses and delays Hellos while other
  packets come. WireGuard's counters do not: they move for a node whose daemon died.
* **No burial unasked.** At the RFC expiry of a wgcast neighbour never probed (we were
  stalled past the probing), one last round of probes decides (`at_expiry`).

Generic neighbours (no sub-TLV heard) keep the RFC behaviour: Hellos at the configured
interval, down after `dead` silent intervals, never probed. The RFC expiry stays the
backstop for wgcast neighbours too. A restart-hold Hello carries the `HOLD` flag: its
sender is not probed before the long interval it promised has passed.

Sans-IO: times in, decisions out; the engine sends the Hellos.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from wgcast.babel.events import LOCAL
from wgcast.babel.route import RouteTable, Selected
from wgcast.babel.wire import INFINITY, SubTLV, UnknownSub
from wgcast.prefix import Prefix

#: wgcast's liveness sub-TLV (Hello): flags (1 byte), then the interval (centiseconds,
#: 2 bytes) at which the sender wants our Hellos. Experimental, non-mandatory range.
S_LIVENESS = 115
#: The sender answers probes (a wgcast speaker).
F_ANSWERS = 0x01
#: A probe: answer with a Hello+IHU at once.
F_PROBE = 0x02
#: A restart-hold Hello: do not probe before the interval it promises has passed.
F_HOLD = 0x04

_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class LivenessParams:
    """How wgcast neighbours watch each other (see the module docstring)."""

    #: Interval of our Hellos to a wgcast neighbour that routes nothing through us that
    #: would survive our death (seconds; 0: always the configured Hello interval).
    idle_hello_interval: float = 4.0
    #: Late-Hello probing of wgcast neighbours (False: RFC expiry only).
    probe: bool = True
    #: Probes sent before the neighbour is declared dead.
    probes: int = 6
    #: Weight of a new lateness sample in the mean deviation.
    jitter_alpha: float = 0.125

    def __post_init__(self) -> None:
        if self.idle_hello_interval < 0 or self.idle_hello_interval > 600:
            raise ValueError("idle_hello_interval must be within 0 and 600 s")
        if self.probes < 1:
            raise ValueError("probes must be at least 1")


def liveness_subtlv(flags: int, want: float) -> UnknownSub:
    cs = max(1, min(0xFFFF, round(want * 100)))
    return UnknownSub(S_LIVENESS, bytes((flags,)) + cs.to_bytes(2, "big"))


def parse_liveness(subtlvs: Iterable[SubTLV]) -> tuple[int, float] | None:
    """(flags, wanted interval in seconds) of a Hello's liveness sub-TLV, or None."""
    for s in subtlvs:
        if isinstance(s, UnknownSub) and s.type == S_LIVENESS and len(s.body) >= 3:
            return s.body[0], int.from_bytes(s.body[1:3], "big") / 100.0
    return None


class PeerLiveness:
    """What we know of one neighbour's liveness beyond RFC 8966's Hello history."""

    __slots__ = (
        "answered",
        "answered_at",
        "answered_since",
        "answers",
        "asked",
        "expected",
        "expiry_round",
        "heard",
        "holding",
        "interval",
        "jitter",
        "next_probe",
        "not_before",
        "probe_deadline",
        "probes_sent",
        "rearmed",
        "repeats",
        "round_at",
        "since_ihu",
        "spacing",
        "spoke",
        "wants",
    )

    def __init__(self) -> None:
        #: Our answers to its probes since `answered_since` (see Liveness.may_answer).
        self.answered = 0
        self.answered_at = self.answered_since = -_NEVER
        #: It answers probes (its Hellos carry our sub-TLV).
        self.answers = False
        #: The interval at which it wants our Hellos (None: not said: the configured one).
        self.wants: float | None = None
        #: What we last asked of it (seconds), as carried in our Hellos, and how many
        #: more of our Hellos go at the configured interval so that the request gets there.
        self.asked: float | None = None
        self.repeats = 0
        #: Our Hellos to it since our last IHU (see Node._send_hello).
        self.since_ihu = 0
        #: Its Hello interval (seconds) and when its next Hello is due.
        self.interval = 0.0
        self.expected: float | None = None
        #: The last sign of life: any packet, or the driver's `heard`.
        self.heard: float | None = None
        #: Its last Babel packet (not the driver's signs: see kept_until).
        self.spoke: float | None = None
        #: Mean deviation of its Hellos' arrival from the time they were due.
        self.jitter = 0.0
        #: Its last Hello was a restart hold: no probing until it sends a regular one.
        self.holding = False
        #: Probing: how many probes sent, when the next goes, when it is declared dead.
        self.probes_sent = 0
        self.spacing = 0.0
        self.next_probe = _NEVER
        self.probe_deadline = _NEVER
        #: When this round of probes began (for `describe`).
        self.round_at = 0.0
        #: This round of probes was started again after a stall of ours (see due).
        self.rearmed = False
        #: A round of probes ended by a sign of life: no new round before this time.
        self.not_before = 0.0
        #: The RFC expiry for which a last round of probes was sent (see at_expiry).
        self.expiry_round: float | None = None

    def probing(self) -> bool:
        return self.probes_sent > 0

    def stop_probing(self) -> None:
        self.probes_sent = 0
        self.next_probe = self.probe_deadline = _NEVER
        self.rearmed = False

    def answer(self, now: float) -> None:
        """A sign of life ended this round of probes: the next waits an interval (a
        neighbour whose Hellos are lost while its other packets come is probed once an
        interval, not at every packet)."""
        self.stop_probing()
        self.not_before = now + self.interval

    def reset(self) -> None:
        """The neighbour went down: keep what it told us of itself, drop the timing."""
        self.expiry_round = None
        self.not_before = 0.0
        self.expected = self.heard = self.spoke = None
        self.jitter = 0.0
        self.stop_probing()


class Liveness:
    """Liveness state of every neighbour; the engine asks it when to probe, when a
    neighbour is dead, and at which interval to send each neighbour Hellos."""

    __slots__ = ("_earliest", "params", "peers")

    def __init__(self, params: LivenessParams) -> None:
        self.params = params
        self.peers: dict[str, PeerLiveness] = {}
        #: next_deadline's last answer, or None: recomputed. The engine asks after every
        #: packet and a scan is O(neighbours); the cache may only ever be too early (a
        #: spurious wake-up), so what can make a deadline earlier lowers or drops it.
        self._earliest: float | None = None

    def invalidate(self) -> None:
        """Recompute next_deadline at the next call (parameters or the set of neighbours
        watched changed)."""
        self._earliest = None

    def add(self, nid: str) -> None:
        self.peers[nid] = PeerLiveness()
        self._earliest = None

    def remove(self, nid: str) -> None:
        self.peers.pop(nid, None)
        self._earliest = None

    # ------------------------------------------------------------ our Hellos

    def tx_interval(self, nid: str, base: float) -> float:
        """Interval of our Hellos to `nid`: what it asked, never below `base`."""
        p = self.peers[nid]
        if not p.answers or p.wants is None or not self.params.idle_hello_interval:
            return base
        return max(base, p.wants)

    def askers(self, base: float) -> list[str]:
        """The wgcast neighbours that asked us for Hellos every `base` (or faster)."""
        return [nid for nid, p in self.peers.items()
                if p.answers and p.wants is not None and p.wants <= base]

    def want(self, fast: bool, base: float) -> float:
        idle = self.params.idle_hello_interval
        return base if fast or not idle else max(base, idle)

    # ------------------------------------------------------------ what arrives

    def on_packet(self, nid: str, now: float) -> None:
        """Any packet from `nid`: a sign of life, and the answer to our probes."""
        p = self.peers[nid]
        if p.heard is None or now > p.heard:
            p.heard = now
        p.spoke = now
        if p.probes_sent:
            p.answer(now)
            self._earliest = None

    def heard(self, nid: str, when: float) -> bool:
        """The driver saw traffic from `nid` after `when` (e.g. WireGuard's rx counter);
        False if `nid` is unknown."""
        p = self.peers.get(nid)
        if p is None:
            return False
        if p.heard is None or when > p.heard:
            p.heard = when
            if p.probes_sent:
                p.answer(when)
                self._earliest = None
        return True

    def may_answer(self, nid: str, now: float, window: float,
                   arrived: float | None = None) -> bool:
        """May we answer a probe of `nid` now? Each probe of a round gets its answer (a
        round's probes come a few ms apart, and link jitter bunches them up: a limit of
        one answer per ms dropped most, so that two lost answers made a false alarm),
        up to twice our own round's probes per `window` (a Hello interval): a flood of
        probes gets no more answers than that. But a probe that waited in our socket
        (`arrived` over a ms before `now`: we were stalled) gets one answer per ms: a
        daemon waking up to a round from every neighbour says once to each that it is
        alive, not six times."""
        p = self.peers.get(nid)
        if p is None:
            return False
        if arrived is not None and now - arrived > 0.001 and now - p.answered_at < 0.001:
            return False
        if now - p.answered_since >= window:
            p.answered_since, p.answered = now, 0
        if p.answered >= 2 * self.params.probes:
            return False
        p.answered += 1
        p.answered_at = now
        return True

    def kept_until(self, nid: str, dead: int) -> float:
        """Until when `nid`'s last Babel packet of any kind keeps it alive past its RFC
        expiry: `dead` of its Hello intervals after it, as after a Hello (-inf: not a
        wgcast neighbour). Over WireGuard every packet is authenticated, and a starved
        host loses or delays Hellos (full buffers, late timers) while other packets of
        the same neighbour come. The driver's signs do not count: WireGuard's counters
        also move for a node whose daemon is dead."""
        p = self.peers.get(nid)
        if p is None or p.spoke is None or not p.answers or p.holding or not p.interval:
            return -_NEVER
        return p.spoke + dead * p.interval

    def on_hello(self, nid: str, now: float, interval: float,
                 subtlvs: Iterable[SubTLV]) -> tuple[int, bool]:
        """A Hello from `nid` promising the next within `interval` seconds. Returns
        (its liveness flags, whether the interval it wants from us changed)."""
        p = self.peers[nid]
        if p.expected is not None and p.interval > 0:
            late = now - p.expected
            # Off-schedule Hellos (answers, an interval change) come early: not jitter.
            if -p.interval / 4 < late < p.interval:
                p.jitter += self.params.jitter_alpha * (abs(late) - p.jitter)
        p.interval = interval
        p.expected = now + interval
        parsed = parse_liveness(subtlvs)
        if parsed is None:
            self._lower(p)
            return 0, False
        flags, wants = parsed
        p.answers = bool(flags & F_ANSWERS)
        changed = wants != p.wants
        p.wants = wants
        # A restart hold: keep it for the `dead` intervals it promised (the RFC expiry
        # decides), do not probe it to death.
        p.holding = bool(flags & F_HOLD)
        self._lower(p)
        return flags, changed

    def _lower(self, p: PeerLiveness) -> None:
        """`p`'s deadline may have moved earlier: keep the cached earliest no later."""
        if self._earliest is not None and not p.probes_sent:
            t = self._trigger(p)
            if t < self._earliest:
                self._earliest = t

    # ------------------------------------------------------------ timers

    def _trigger(self, p: PeerLiveness) -> float:
        """When silence makes us probe `p` (inf: never)."""
        if not self.params.probe or not p.answers or p.expected is None or p.holding:
            return _NEVER
        due = p.expected
        if p.heard is not None and p.heard + p.interval > due:
            # Other traffic postpones probing, by an interval at most: probing must
            # begin before the RFC expiry (the engine then waits for its verdict).
            due = min(p.heard + p.interval, p.expected + p.interval)
        # Jitter widens the margin, up to half an interval (a loaded host's timers).
        t = due + min(4 * p.jitter + max(p.interval / 20, 0.001), p.interval / 2)
        return t if t >= p.not_before else p.not_before

    def next_deadline(self, up: Iterable[str]) -> float:
        if self._earliest is not None:
            return self._earliest
        best = _NEVER
        peers = self.peers
        for nid in up:
            p = peers[nid]
            t = p.next_probe if p.probes_sent else self._trigger(p)
            if p.probes_sent and p.probe_deadline < t:
                t = p.probe_deadline
            if t < best:
                best = t
        self._earliest = best
        return best

    def at_expiry(self, nid: str, now: float, expiry: float | None,
                  rtt: float | None) -> bool:
        """The RFC expiry of `nid` is reached with nothing heard: start one last round of
        probes (once per expiry) and return True, rather than bury it unasked. Late-Hello
        probing runs before the expiry, unless we were stalled past both (a burst to
        parse, a starved host) or a round was ended by WireGuard's counters alone.
        False: not a wgcast neighbour, holding, probed already: the expiry stands."""
        p = self.peers.get(nid)
        if p is None or not self.params.probe or not p.answers or p.holding or \
                p.probes_sent or expiry is None or p.expiry_round == expiry:
            return False
        p.expiry_round = expiry
        self._start_round(p, now, rtt)
        self._earliest = None
        return True

    def _start_round(self, p: PeerLiveness, now: float, rtt: float | None) -> None:
        """A round of probes: the verdict is due one timeout (the RTT plus a slack) after
        the first. The others go within the first half of the slack, so each still has
        its RTT plus half the slack to be answered: they guard against loss, and need
        not each get a whole timeout after the last (which made a round 1.375 timeouts,
        the largest part of a fast node cut's detection)."""
        k = self.params.probes
        r = min(p.interval / 4, 0.05) if rtt is None else rtt
        slack = 0.25 * r + max(p.interval / 10, 0.002) + min(2 * p.jitter, p.interval / 4)
        p.spacing = slack / (2 * (k - 1)) if k > 1 else 0.0
        p.round_at = now
        p.probes_sent = 1
        p.next_probe = now + p.spacing if k > 1 else _NEVER
        p.probe_deadline = now + r + slack

    def describe(self, nid: str, now: float) -> str:
        """Where the time to declare `nid` dead went, in ms before `now`: its last packet
        (or the driver's sign), when its Hello was due, our margin for its jitter, and
        the last round of probes (for traces)."""
        p = self.peers.get(nid)
        if p is None:
            return ""

        def ago(t: float | None) -> str:
            return "-" if t is None else f"{(now - t) * 1000:.1f}"

        out = [f"heard {ago(p.heard)} ms ago, spoke {ago(p.spoke)}",
               f"Hello due {ago(p.expected)} ago (interval {p.interval * 1000:.0f},"
               f" jitter {p.jitter * 1000:.1f})"]
        if p.probes_sent:
            out.append(f"probes: {p.probes_sent} from {ago(p.round_at)} ago, verdict due "
                       f"{ago(p.probe_deadline)} ago (spacing {p.spacing * 1000:.1f})")
        return "; ".join(out)

    def due(self, now: float, up: Iterable[str],
            rtt: Callable[[str], float | None]) -> tuple[list[str], list[str]]:
        """(neighbours to probe now, neighbours found dead) among those that are `up`;
        `rtt`: each one's smoothed RTT in seconds, if measured."""
        probe: list[str] = []
        dead: list[str] = []
        k = self.params.probes
        for nid in up:
            p = self.peers[nid]
            if not p.probes_sent:
                if self._trigger(p) > now:
                    continue
                self._start_round(p, now, rtt(nid))
                probe.append(nid)
                continue
            if now >= p.probe_deadline:
                window = p.probe_deadline - p.round_at  # a whole round
                if not p.rearmed and now - p.probe_deadline > max(window, 0.05):
                    # We looked long after the verdict was due: we were stalled (a
                    # burst to parse, a starved host), and the answers may sit unread in
                    # our socket. Probe once more rather than bury a live neighbour.
                    p.rearmed = True
                    p.round_at = now
                    p.probes_sent = 1
                    p.next_probe = now + p.spacing if k > 1 else _NEVER
                    p.probe_deadline = now + window
                    probe.append(nid)
                    continue
                dead.append(nid)
                continue
            if now >= p.next_probe:
                p.probes_sent += 1
                if p.probes_sent < k:
                    p.next_probe += p.spacing
                else:
                    p.next_probe = _NEVER
                probe.append(nid)
        if probe or dead or (self._earliest is not None and self._earliest <= now):
            self._earliest = None  # probes started or moved on (or a spurious wake-up)
        return probe, dead


def needs_fast(routes: RouteTable, prefix: Prefix, via: str,
               askers: Iterable[str] = ()) -> bool:
    """Must we notice fast the death of `via`, our next hop for `prefix`? Yes if the
    prefix survives it: `via` is transit (the route's refmetric is not 0, as at an
    origin), or another origin announces the prefix (anycast). And yes for those that
    depend on us: a neighbour that asked us for fast Hellos (`askers`) and routes the
    prefix through us (it poisoned it to us, or never announced it: split horizon) may
    have an alternative we do not see, so it needs our retraction fast."""
    per = routes.routes(prefix)
    r = per.get(via)
    if r is None or r.refmetric > 0:
        return True
    rid = r.router_id
    if any(o.router_id != rid and o.refmetric < INFINITY for o in per.values()):
        return True
    for x in askers:
        if x != via:
            rx = per.get(x)
            if rx is None or rx.refmetric >= INFINITY:
                return True
    return False


def fast_neighbours(routes: RouteTable, selected: Mapping[Prefix, Selected],
                    prefixes: Iterable[Prefix] | None = None,
                    askers: Iterable[str] = ()) -> set[str]:
    """The neighbours we need fast Hellos from, judged on `prefixes` (default: all);
    `askers`: the neighbours that asked us for fast Hellos (see needs_fast)."""
    askers = tuple(askers)
    out: set[str] = set()
    for prefix in selected if prefixes is None else prefixes:
        sel = selected.get(prefix)
        if sel is None or sel.via == LOCAL or sel.via in out:
            continue
        if needs_fast(routes, prefix, sel.via, askers):
            out.add(sel.via)
    return out
