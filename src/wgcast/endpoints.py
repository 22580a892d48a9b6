"""Per-peer endpoint candidates: probing, scoring, rotation, bounded memory (sans-IO).

WireGuard keeps one endpoint per peer and moves it to the source of the last
authenticated packet. A peer may be reachable at several addresses (IPv4 and IPv6, LAN
and WAN, two uplinks); an `EndpointSet` keeps them as candidates, ordered by observed
quality, and says which one WireGuard should use (the head). The driver (the daemon's
endpoint manager) feeds it what it sees and applies what it returns::

    es = EndpointSet(["198.51.100.7:51820", "[2001:db8::7]:51820"], now)
    es.observe_endpoint(wg_endpoint, now)     # what WireGuard uses now (a roam?)
    es.heard(now, hello_interval)             # a Hello came through the tunnel
    es.observe_handshake(now, age)            # seconds since the last handshake
    for addr in es.probe_due(now): ...        # send an authenticated probe, then
    es.probe_sent(addr, now, token)           # ... and on the matching reply:
    es.probe_answered(now, token)             # -> (addr, rtt in ms) | None
    decision = es.decide(now)                 # SetEndpoint(addr, reason) | None

Candidates are the configured addresses (never evicted) plus up to `learned_max`
addresses learned from roaming (WireGuard moved the endpoint to a packet's source), the
least recently seen evicted first, each forgotten `learned_ttl` seconds after it was
last seen. Every candidate holds O(1) state (a fixed-size outcome history, at most
`max_outstanding` probes in flight), so the memory of a peer is O(configured + K) whatever
it does.

Decisions:

* failure: the in-use endpoint failed when the peer goes silent in the tunnel (no Hello
  for `silence_hellos` of its hello intervals), when it was never confirmed within
  `confirm_timeout` (doubling on each consecutive failure), or when the last handshake
  is older than `handshake_max_age`. The set rotates to the best candidate that answers
  probes, else to the next one in order (configured order, then learned by recency) that
  did not fail a moment ago. A quiet tunnel on a path that answers a probe sent after
  the last Hello is a stall, not a failure (for up to `confirm_timeout`); a failure whose
  path answers the next probe is a false alarm (the penalty is taken back).
* unreachable: the in-use endpoint is not confirmed yet, its probes go unanswered and
  another candidate answers: switch at once (the first configured endpoint is dead).
* better: another candidate's score beats the in-use one by max(`switch_margin_ms`,
  `switch_margin` * score) at every look for `switch_hold` seconds, and the last quality
  switch is `switch_dwell` old: hysteresis, so RTT wobble never flaps the endpoint.
* reassert: right after a switch, a packet still in flight on the old path can move
  WireGuard back; within `settle` seconds of our own switch the set asks to set it again.
  Later, a move is the peer's (or the network's) choice and is adopted.

The score of a candidate, lower is better, in milliseconds: smoothed probe RTT (the
tunnel RTT for the in-use one when its probes are not answered) + `loss_penalty_ms` *
recent probe loss + `failure_penalty_ms` * recent failures (decaying with
`failure_half_life`; halved by each confirmation of the path).

Pure: no sockets, no clock, no randomness. Addresses are opaque canonical strings
("198.51.100.7:51820", "[2001:db8::7]:51820"); the driver maps them to probe targets.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CandidateView",
    "EndpointParams",
    "EndpointSet",
    "SetEndpoint",
]

CONFIGURED: Final = "configured"
LEARNED: Final = "learned"


@dataclass(frozen=True, slots=True)
class EndpointParams:
    """Knobs of an `EndpointSet`; durations in seconds."""

    #: K: learned (roamed) endpoints kept besides the configured ones.
    learned_max: int = 8
    #: A learned endpoint not seen (roamed to, used, answering) this long is forgotten.
    learned_ttl: float = 600.0
    probe_interval: float = 1.0
    #: Probe interval while the in-use endpoint is unconfirmed (searching).
    probe_interval_searching: float = 0.25
    #: A probe unanswered this long is lost (a candidate's own RTO, once known, is used
    #: instead, capped at `probe_timeout_max`).
    probe_timeout: float = 1.0
    probe_timeout_min: float = 0.2
    probe_timeout_max: float = 2.0
    max_outstanding: int = 4
    #: Probe outcomes remembered per candidate (loss rate, liveness).
    history: int = 8
    min_samples: int = 3
    #: Tunnel silence, in the peer's hello intervals, that fails the in-use endpoint.
    silence_hellos: float = 2.25
    #: The peer's hello interval until it announced one.
    hello_interval: float = 0.2
    confirm_timeout: float = 2.0
    backoff_max: float = 30.0
    handshake_max_age: float = 195.0
    switch_margin_ms: float = 3.0
    switch_margin: float = 0.25
    switch_hold: float = 3.0
    switch_dwell: float = 10.0
    settle: float = 2.0
    #: After adopting the peer's choice (a roam), no quality switch for this long.
    respect_peer: float = 30.0
    #: Weight of a new probe RTT sample in the smoothed RTT.
    rtt_alpha: float = 0.25
    failure_penalty_ms: float = 100.0
    failure_half_life: float = 30.0
    loss_penalty_ms: float = 200.0

    def __post_init__(self) -> None:
        if self.learned_max < 1:
            raise ValueError("learned_max must be at least 1")
        if self.max_outstanding < 1 or not 1 <= self.history <= 64:
            raise ValueError("max_outstanding >= 1 and history in 1..64")
        for name in ("learned_ttl", "probe_interval", "probe_interval_searching",
                     "probe_timeout", "probe_timeout_min", "probe_timeout_max",
                     "silence_hellos", "hello_interval", "confirm_timeout",
                     "failure_half_life"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v!r}")

    @property
    def alive_window(self) -> float:
        """A candidate that answered a probe within this long is alive."""
        return 3 * self.probe_interval + self.probe_timeout


@dataclass(frozen=True, slots=True)
class SetEndpoint:
    """Point WireGuard at `addr`.

    reason: "start", "failover" (the in-use one failed), "unreachable" (unconfirmed and
    not answering while another does), "better" (quality), "reassert" (a stale packet
    moved WireGuard right after our switch), "configured" (the in-use address left the
    configuration).
    """

    addr: str
    reason: str


@dataclass(frozen=True, slots=True)
class CandidateView:
    """One candidate as `wgcast peers` shows it."""

    addr: str
    kind: str  # "configured" | "learned"
    in_use: bool
    state: str  # "in use", "alive", "dead", "failed", "unknown"
    rtt_ms: float | None
    loss: float | None
    score: float | None
    failures: int
    probes_sent: int
    probes_answered: int
    last_answer_s: float | None  # seconds since the last probe answer
    expires_s: float | None  # learned ones: seconds until forgotten


class _Candidate:
    __slots__ = ("addr", "answered", "configured", "fail_time", "fail_weight", "failed_at",
                 "failures", "last_answer", "last_answer_sent", "last_seen", "last_sent",
                 "n_outcomes", "next_probe", "outcomes", "rank", "rttvar", "sent", "srtt",
                 "verify_after", "weight_before")

    def __init__(self, addr: str, configured: bool, now: float, rank: int = 0) -> None:
        self.addr = addr
        self.configured = configured
        self.rank = rank  # configured order
        self.srtt: float | None = None  # ms
        self.rttvar = 0.0
        self.outcomes = 0  # bit i: outcome of the i-th most recent probe (1 = answered)
        self.n_outcomes = 0
        self.sent = 0
        self.answered = 0
        self.last_answer: float | None = None
        self.last_answer_sent: float | None = None  # when that answered probe left
        self.failed_at: float | None = None  # the last failure while in use
        self.last_sent = -math.inf
        self.last_seen = now
        self.failures = 0
        self.fail_weight = 0.0
        self.fail_time = now
        #: After a failure: the first probe sent after this time tells whether the path
        #: really failed (lost) or the silence was a false alarm (answered).
        self.verify_after: float | None = None
        self.weight_before = 0.0
        self.next_probe = now

    def record(self, ok: bool, history: int) -> None:
        self.outcomes = ((self.outcomes << 1) | int(ok)) & ((1 << history) - 1)
        self.n_outcomes = min(self.n_outcomes + 1, history)

    def loss(self) -> float | None:
        if self.n_outcomes == 0:
            return None
        return 1.0 - bin(self.outcomes).count("1") / self.n_outcomes

    def last_lost(self) -> bool:
        return self.n_outcomes > 0 and not self.outcomes & 1

    def penalty_weight(self, now: float, half_life: float) -> float:
        if self.fail_weight == 0.0:
            return 0.0
        return float(self.fail_weight * 0.5 ** (max(0.0, now - self.fail_time) / half_life))

    def rto(self, p: EndpointParams) -> float:
        """Seconds after which a probe of this candidate is lost."""
        if self.srtt is None:
            return p.probe_timeout
        rto = (self.srtt + 4 * self.rttvar) / 1000 * 2
        return min(p.probe_timeout_max, max(p.probe_timeout_min, rto))


class EndpointSet:
    """The endpoint candidates of one peer and which one WireGuard uses."""

    def __init__(self, configured: Iterable[str], now: float,
                 params: EndpointParams | None = None, current: str | None = None) -> None:
        self.params = params or EndpointParams()
        self._configured: dict[str, _Candidate] = {}
        self._learned: dict[str, _Candidate] = {}  # least recently seen first
        #: token -> (address, sent at); at most max_outstanding per candidate.
        self._outstanding: dict[bytes, tuple[str, float]] = {}
        self._in_use: str | None = None
        self._switched_at = now
        self._by_us = False
        self._confirmed = False
        self._last_heard: float | None = None
        self._silence = self.params.silence_hellos * self.params.hello_interval
        self._tunnel_rtt: float | None = None
        self._deferred_for: float | None = None
        self._hs_age: float | None = None
        self._fail_streak = 0
        self._challenger: tuple[str, float] | None = None
        self._last_quality_switch = -math.inf
        self._respect_until = -math.inf
        #: Counters for status and tests.
        self.stats: dict[str, int] = dict.fromkeys(
            ("switches", "failovers", "roams", "reasserts", "learned_added",
             "learned_evicted", "learned_expired", "probes_lost", "false_alarms",
             "deferred", "max_candidates"), 0)
        self.set_configured(configured, now)
        if current is not None:
            self.observe_endpoint(current, now)

    # ------------------------------------------------------------------ views

    def head(self) -> str | None:
        """The endpoint WireGuard should use (None: none known yet)."""
        return self._in_use

    @property
    def confirmed(self) -> bool:
        """The peer was heard through the tunnel since the in-use endpoint was chosen."""
        return self._confirmed

    def settling(self, now: float) -> bool:
        """We switched recently: a stale packet may still move WireGuard back (the driver
        then reads WireGuard's endpoint more often)."""
        return self._by_us and now - self._switched_at < self.params.settle

    def __len__(self) -> int:
        return len(self._configured) + len(self._learned)

    def __contains__(self, addr: object) -> bool:
        return addr in self._configured or addr in self._learned

    def addresses(self) -> list[str]:
        """Every candidate, in rotation order: configured, then learned, newest first."""
        return [c.addr for c in self._order()]

    def learned(self) -> list[str]:
        return list(self._learned)

    def outstanding(self) -> int:
        return len(self._outstanding)

    def score(self, addr: str, now: float) -> float | None:
        c = self._get(addr)
        return None if c is None else self._score(c, now)

    def snapshot(self, now: float) -> list[CandidateView]:
        """Candidates, the in-use one first, then by score (unknown last)."""
        p = self.params
        out = []
        for c in self._order():
            score = self._score(c, now)
            loss = c.loss()
            in_use = c.addr == self._in_use
            if in_use:
                state = "in use"
            elif self._alive(c, now):
                state = "alive"
            elif c.penalty_weight(now, p.failure_half_life) > 0.5:
                state = "failed"
            elif c.n_outcomes and c.last_lost():
                state = "dead"
            else:
                state = "unknown"
            out.append(CandidateView(
                addr=c.addr, kind=CONFIGURED if c.configured else LEARNED, in_use=in_use,
                state=state, rtt_ms=None if c.srtt is None else round(c.srtt, 3),
                loss=None if loss is None else round(loss, 3),
                score=None if score is None else round(score, 3), failures=c.failures,
                probes_sent=c.sent, probes_answered=c.answered,
                last_answer_s=None if c.last_answer is None else round(now - c.last_answer, 3),
                expires_s=None if c.configured or in_use
                else round(max(0.0, c.last_seen + p.learned_ttl - now), 3)))
        out.sort(key=lambda v: (not v.in_use, v.score is None,
                                v.score if v.score is not None else 0.0))
        return out

    # ------------------------------------------------------------------ inputs

    def set_configured(self, addrs: Iterable[str], now: float) -> None:
        """The configured addresses (after name resolution), in order of preference.

        A configured address that is gone is dropped, or kept as a learned one while it
        is in use. A learned address that becomes configured keeps its measurements.
        """
        new: dict[str, _Candidate] = {}
        for rank, addr in enumerate(dict.fromkeys(addrs)):
            c = self._configured.pop(addr, None) or self._learned.pop(addr, None)
            if c is None:
                c = _Candidate(addr, True, now, rank)
            c.configured, c.rank = True, rank
            new[addr] = c
        for addr, c in self._configured.items():
            if addr == self._in_use:
                c.configured = False
                c.last_seen = now
                self._add_learned(c, now)
            else:
                self._forget(addr)
        self._configured = new
        self._note_size()

    def observe_endpoint(self, addr: str | None, now: float) -> SetEndpoint | None:
        """What WireGuard uses now. A difference is a roam (adopted, learned if new), or a
        stale packet undoing our own recent switch (set it again)."""
        if addr is None:
            return None if self._in_use is None else SetEndpoint(self._in_use, "reassert")
        if addr == self._in_use:
            c = self._get(addr)
            if c is not None and not c.configured:
                self._touch_learned(c, now)
            return None
        if self._in_use is not None and self._by_us and now - self._switched_at < \
                self.params.settle:
            self.stats["reasserts"] += 1
            return SetEndpoint(self._in_use, "reassert")
        c = self._get(addr)
        if c is None:
            c = _Candidate(addr, False, now)
            self._add_learned(c, now)
            self.stats["learned_added"] += 1
        elif not c.configured:
            self._touch_learned(c, now)
        roam = self._in_use is not None
        old = self._get(self._in_use)
        if old is not None:
            # The peer (or its network) left it, maybe because it failed: not a failover
            # target until a probe sent from now on is answered.
            old.failed_at = now
        self._in_use = addr
        self._switched_at = now
        self._by_us = False
        self._challenger = None
        if roam:
            # An authenticated packet came from there: the path works, at least towards
            # us, and the peer (or the network) chose it.
            self.stats["roams"] += 1
            self._respect_until = now + self.params.respect_peer
            self._confirmed = True
            self._last_heard = now
        else:
            self._confirmed = False  # found at start: proves nothing yet
        return None

    def heard(self, now: float, hello_interval: float | None = None,
              rtt_ms: float | None = None) -> None:
        """A Hello from the peer came through the tunnel at `now` (its announced hello
        interval and the tunnel RTT, when known)."""
        if hello_interval:
            self._silence = self.params.silence_hellos * hello_interval
        if rtt_ms is not None:
            self._tunnel_rtt = rtt_ms
        self._last_heard = now
        if self._in_use is None:
            return
        c = self._get(self._in_use)
        if c is not None and not c.configured:
            self._touch_learned(c, now)
        if not self._confirmed and now >= self._switched_at:
            self._confirmed = True
            self._fail_streak = 0
            if c is not None and c.fail_weight:
                c.fail_weight = c.penalty_weight(now, self.params.failure_half_life) / 2
                c.fail_time = now

    def observe_handshake(self, now: float, age: float | None) -> SetEndpoint | None:
        """Seconds since WireGuard's last handshake with the peer (None: never)."""
        previous, self._hs_age = self._hs_age, age
        if age is None:
            return None
        if previous is not None and age + 1.0 < previous and self._in_use is not None:
            c = self._get(self._in_use)  # a new handshake: the path works
            if c is not None and c.fail_weight:
                c.fail_weight /= 2
        if self._in_use is not None and age > self.params.handshake_max_age \
                and now - self._switched_at > self.params.handshake_max_age:
            return self.path_failed(now, "handshake")
        return None

    def probe_due(self, now: float) -> list[str]:
        """Candidates to probe now (call `probe_sent` for each one sent)."""
        p = self.params
        out = []
        failing = self._confirmed and self._failing(now)
        for c in self._iter():
            due = c.next_probe
            if failing and c.addr == self._in_use:
                # The tunnel went quiet: ask the path itself, in time for the failover
                # decision (an answer means the path works; see `_path_answers`).
                due = min(due, c.last_sent + min(p.probe_interval_searching,
                                                 self._silence / 2))
            if due <= now and self._in_flight(c.addr) < p.max_outstanding:
                out.append(c.addr)
        return out

    def probe_sent(self, addr: str, now: float, token: bytes) -> None:
        c = self._get(addr)
        if c is None:
            return
        p = self.params
        mine = [t for t, (a, _) in self._outstanding.items() if a == addr]
        while len(mine) >= p.max_outstanding:  # the oldest is lost
            self._lose(mine.pop(0), now)
        self._outstanding[token] = (addr, now)
        c.sent += 1
        c.last_sent = now
        searching = not self._confirmed or (addr == self._in_use and self._failing(now))
        c.next_probe = now + (p.probe_interval_searching if searching else p.probe_interval)

    def probe_answered(self, now: float, token: bytes) -> tuple[str, float] | None:
        """The authenticated reply to probe `token`: (address, RTT in ms), or None for a
        token not outstanding (late, replayed or unknown)."""
        entry = self._outstanding.pop(token, None)
        if entry is None:
            return None
        addr, sent = entry
        c = self._get(addr)
        if c is None:
            return None
        rtt = max(0.0, (now - sent) * 1000)
        if c.verify_after is not None and sent >= c.verify_after:
            # The path answered right after it "failed": the silence was something else
            # (a stalled process, a lost burst). Take the blame back.
            c.verify_after = None
            c.failures -= 1
            c.fail_weight, c.fail_time = c.weight_before, now
            self.stats["false_alarms"] += 1
        if c.srtt is None:
            c.srtt, c.rttvar = rtt, rtt / 2
        else:
            a = self.params.rtt_alpha
            c.rttvar = 0.75 * c.rttvar + 0.25 * abs(c.srtt - rtt)
            c.srtt = (1 - a) * c.srtt + a * rtt
        c.answered += 1
        c.last_answer, c.last_answer_sent = now, sent
        c.record(True, self.params.history)
        # (A learned endpoint lives by WireGuard's use of it, not by answering probes.)
        return addr, rtt

    def path_failed(self, now: float, reason: str = "failed") -> SetEndpoint | None:
        """The in-use endpoint does not work: penalise it and rotate.

        Not while a probe sent on it after the peer went quiet was answered (for up to
        `confirm_timeout` of silence): the path works, something else stalled (a loaded
        WireGuard or daemon), and no other path would do better.
        """
        if self._path_answers(now):
            self.stats["deferred"] += 1
            return None
        cur = self._get(self._in_use)
        if cur is not None:
            cur.failed_at = now
        # Blame the endpoint when the peer is alive elsewhere; when nothing answers, the
        # peer itself may be down and the endpoint innocent.
        if cur is not None and any(self._alive(o, now) for o in self._iter() if o is not cur):
            cur.failures += 1
            cur.weight_before = cur.penalty_weight(now, self.params.failure_half_life)
            cur.fail_weight = cur.weight_before + 1.0
            cur.fail_time = now
            cur.verify_after = now
        self._fail_streak += 1
        self.stats["failovers"] += 1
        nxt = self._next_after_failure(now)
        if nxt is None or nxt == self._in_use:
            # Nothing else to try: wait a longer confirm timeout on the same one.
            self._switched_at = now
            self._confirmed = False
            self._by_us = True
            return None
        return self._switch(nxt, now, "failover", keep_streak=True)

    def decide(self, now: float) -> SetEndpoint | None:
        """Timeouts, expiry and the endpoint decision; at most one `SetEndpoint`."""
        p = self.params
        self._expire_probes(now)
        self._expire_learned(now)
        if self._in_use is None:
            first = next(iter(self._configured), None)
            return None if first is None else self._switch(first, now, "start")
        # Failure of the in-use endpoint.
        if self._confirmed:
            if self._last_heard is not None and now - self._last_heard > self._silence:
                if not self._path_answers(now):
                    return self.path_failed(now, "silent")
                if self._deferred_for != self._last_heard:  # once per silence
                    self._deferred_for = self._last_heard
                    self.stats["deferred"] += 1
        else:
            limit = min(p.confirm_timeout * 2 ** min(self._fail_streak, 16), p.backoff_max)
            if now - self._switched_at > limit:
                return self.path_failed(now, "unconfirmed")
            cur = self._get(self._in_use)
            if cur is not None and self._unreachable(cur, now):
                best = self._best(now, exclude=self._in_use)
                if best is not None:
                    return self._switch(best.addr, now, "unreachable", keep_streak=True)
            return None
        # Quality, with hysteresis.
        if now < self._respect_until or now - self._last_quality_switch < p.switch_dwell:
            self._challenger = None
            return None
        cur = self._get(self._in_use)
        cur_score = None if cur is None else self._score(cur, now)
        best = self._best(now, exclude=self._in_use, min_samples=p.min_samples)
        if cur_score is None or best is None:
            self._challenger = None
            return None
        best_score = self._score(best, now)
        assert best_score is not None
        margin = max(p.switch_margin_ms, p.switch_margin * cur_score)
        if best_score >= cur_score - margin:
            self._challenger = None
            return None
        if self._challenger is None or self._challenger[0] != best.addr:
            self._challenger = (best.addr, now)
            return None
        if now - self._challenger[1] < p.switch_hold:
            return None
        self._last_quality_switch = now
        return self._switch(best.addr, now, "better")

    # ------------------------------------------------------------------ internals

    def _iter(self) -> Iterator[_Candidate]:
        yield from self._configured.values()
        yield from self._learned.values()

    def _order(self) -> list[_Candidate]:
        return [*self._configured.values(), *reversed(self._learned.values())]

    def _get(self, addr: str | None) -> _Candidate | None:
        if addr is None:
            return None
        return self._configured.get(addr) or self._learned.get(addr)

    def _in_flight(self, addr: str) -> int:
        return sum(1 for a, _ in self._outstanding.values() if a == addr)

    def _note_size(self) -> None:
        self.stats["max_candidates"] = max(self.stats["max_candidates"], len(self))

    def _touch_learned(self, c: _Candidate, now: float) -> None:
        c.last_seen = now
        if c.addr in self._learned:
            del self._learned[c.addr]
            self._learned[c.addr] = c

    def _add_learned(self, c: _Candidate, now: float) -> None:
        p = self.params
        self._learned.pop(c.addr, None)
        while len(self._learned) >= p.learned_max:
            victim = next((a for a in self._learned if a != self._in_use), None)
            if victim is None:
                break
            self._forget(victim)
            del self._learned[victim]
            self.stats["learned_evicted"] += 1
        c.last_seen = now
        self._learned[c.addr] = c
        if len(self._learned) > p.learned_max:  # only the in-use one was left to evict
            victim = next(iter(self._learned))
            self._forget(victim)
            del self._learned[victim]
            self.stats["learned_evicted"] += 1
        self._note_size()

    def _forget(self, addr: str) -> None:
        """Drop the outstanding probes of a candidate about to disappear."""
        for t in [t for t, (a, _) in self._outstanding.items() if a == addr]:
            del self._outstanding[t]
        if self._challenger is not None and self._challenger[0] == addr:
            self._challenger = None

    def _expire_learned(self, now: float) -> None:
        ttl = self.params.learned_ttl
        for addr, c in list(self._learned.items()):
            if addr != self._in_use and now - c.last_seen > ttl:
                self._forget(addr)
                del self._learned[addr]
                self.stats["learned_expired"] += 1

    def _lose(self, token: bytes, now: float) -> None:
        addr, sent = self._outstanding.pop(token)
        c = self._get(addr)
        if c is not None:
            if c.verify_after is not None and sent >= c.verify_after:
                c.verify_after = None  # the failure is confirmed
            c.record(False, self.params.history)
            self.stats["probes_lost"] += 1

    def _expire_probes(self, now: float) -> None:
        p = self.params
        for token, (addr, sent) in list(self._outstanding.items()):
            c = self._get(addr)
            if c is None:
                del self._outstanding[token]
            elif now - sent > c.rto(p):
                self._lose(token, now)

    def _overdue(self, c: _Candidate, now: float) -> bool:
        """A probe of `c` is unanswered past what the answering candidates suggest."""
        p = self.params
        if c.srtt is not None:
            soft = c.rto(p)
        else:
            known = [o.srtt for o in self._iter() if o.srtt is not None and o is not c]
            if not known:
                soft = p.probe_timeout
            else:
                soft = min(p.probe_timeout, max(p.probe_timeout_min, 4 * max(known) / 1000))
        return any(a == c.addr and now - sent > soft
                   for a, sent in self._outstanding.values())

    def _alive(self, c: _Candidate, now: float) -> bool:
        if c.addr == self._in_use and self._confirmed:
            return True
        if c.last_answer is None or c.last_answer_sent is None or c.last_lost():
            return False
        if c.failed_at is not None and c.last_answer_sent <= c.failed_at:
            return False  # failed since, and no probe sent after that answered yet
        return now - c.last_answer <= self.params.alive_window and not self._overdue(c, now)

    def _unreachable(self, c: _Candidate, now: float) -> bool:
        """Probes of `c` go unanswered (never answered since we switched to it)."""
        answered_since = c.last_answer is not None and c.last_answer >= self._switched_at
        if answered_since:
            return False
        return c.last_lost() or self._overdue(c, now)

    def _path_answers(self, now: float) -> bool:
        """The in-use endpoint answered a probe sent after the last Hello, and the
        silence is not older than `confirm_timeout`."""
        c = self._get(self._in_use)
        heard = self._last_heard
        return (c is not None and self._confirmed and heard is not None
                and c.last_answer_sent is not None and c.last_answer_sent > heard
                and now - heard <= self.params.confirm_timeout)

    def _failing(self, now: float) -> bool:
        return self._last_heard is None or now - self._last_heard > self._silence / 2

    def _score(self, c: _Candidate, now: float) -> float | None:
        p = self.params
        tunnel = c.addr == self._in_use and self._confirmed
        rtt = c.srtt
        if rtt is None and tunnel:
            rtt = self._tunnel_rtt
        if rtt is None:
            return None
        loss = 0.0 if tunnel else (c.loss() or 0.0)
        return rtt + p.loss_penalty_ms * loss + \
            p.failure_penalty_ms * c.penalty_weight(now, p.failure_half_life)

    def _best(self, now: float, exclude: str | None = None,
              min_samples: int = 1) -> _Candidate | None:
        best: tuple[float, int, _Candidate] | None = None
        for i, c in enumerate(self._order()):
            if c.addr == exclude or not self._alive(c, now) or c.answered < min_samples:
                continue
            s = self._score(c, now)
            if s is None:
                continue
            if best is None or (s, i) < best[:2]:
                best = (s, i, c)
        return None if best is None else best[2]

    def _next_after_failure(self, now: float) -> str | None:
        best = self._best(now, exclude=self._in_use)
        if best is not None:
            return best.addr
        order = self._order()
        if not order:
            return None
        addrs = [c.addr for c in order]
        start = addrs.index(self._in_use) + 1 if self._in_use in addrs else 0
        rotated = [c for c in order[start:] + order[:start] if c.addr != self._in_use]
        # Nothing else answers probes: the next in rotation order, but not one that failed
        # a moment ago (it would fail again; rather give the current one more time), nor
        # one whose probes are lost while the current one's are answered.
        cur = self._get(self._in_use)
        cur_answers = cur is not None and cur.n_outcomes > 0 and not cur.last_lost()
        retry = self.params.confirm_timeout
        for c in rotated:
            if c.failed_at is not None and now - c.failed_at <= retry:
                continue
            if cur_answers and c.last_lost():
                continue
            return c.addr
        return None

    def _switch(self, addr: str, now: float, reason: str, count: bool = True,
                keep_streak: bool = False) -> SetEndpoint:
        if count:
            self.stats["switches"] += 1
        self._in_use = addr
        self._switched_at = now
        self._by_us = True
        self._confirmed = False
        self._challenger = None
        if not keep_streak:
            self._fail_streak = 0
        c = self._get(addr)
        if c is not None:
            c.next_probe = min(c.next_probe, now)
            if not c.configured:
                self._touch_learned(c, now)
        return SetEndpoint(addr, reason)


def canonical(host: str, port: int) -> str:
    """The canonical address string of an IP literal and a port (as WireGuard prints it)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}:{port}"
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"


def endpoint_parts(endpoint: str) -> tuple[str, int]:
    """Split "1.2.3.4:51820" / "[fe80::1%eth0]:51820" into (host, port): WireGuard's
    endpoint form (an IP literal, IPv6 in brackets, a scope allowed); ValueError else.
    The one parser of that form: the back ends, the endpoint sets and the manager."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint must be ip:port or [ip6]:port, got {endpoint!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 endpoint needs brackets: [{host}]:{port}")
    ipaddress.ip_address(host.split("%", 1)[0])
    return host, int(port)


def bounded(addrs: Sequence[str], limit: int) -> list[str]:
    """At most `limit` distinct addresses, in order."""
    return list(dict.fromkeys(addrs))[:limit]
