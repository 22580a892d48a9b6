"""The state of one health check: rise/fall debouncing and flap damping, pure.

Feed each check result with `record(ok, now)`; read `passing`. A failing check passes
after `rise` consecutive successes, a passing one fails after `fall` consecutive failures.
A check starts failing (a group is not announced before its checks have passed).

Damping (after BGP route flap damping, RFC 2439): every pass -> fail transition adds a
penalty that decays exponentially (`half_life`). While the penalty is at or above
`suppress` the check counts as failing whatever the checks say, until the penalty has
decayed below `reuse`. So a check that keeps flapping stops moving traffic around the mesh,
and a single failure is never damped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["CheckParams", "CheckState", "Damping"]


@dataclass(frozen=True, slots=True)
class Damping:
    penalty: float = 1000.0
    suppress: float = 2500.0
    reuse: float = 750.0
    half_life: float = 30.0
    #: The penalty never exceeds this: the longest suppression is
    #: half_life * log2(ceiling / reuse) (3 half-lives with the defaults).
    ceiling: float = 6000.0

    def __post_init__(self) -> None:
        if not (0 < self.reuse < self.suppress <= self.ceiling) or self.penalty <= 0 \
                or self.half_life <= 0:
            raise ValueError("damping needs 0 < reuse < suppress <= ceiling, penalty > 0 "
                             "and half_life > 0")

    @classmethod
    def for_interval(cls, interval: float) -> Damping:
        """Defaults scaled to a check's interval: half-life 30 intervals, so three flaps
        within about 8 intervals of each other suppress the check."""
        return cls(half_life=30.0 * interval)

    @property
    def max_suppression(self) -> float:
        return self.half_life * math.log2(self.ceiling / self.reuse)


@dataclass(frozen=True, slots=True)
class CheckParams:
    rise: int = 2
    fall: int = 2
    damping: Damping | None = field(default_factory=Damping)

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")


class CheckState:
    """Debounced, damped pass/fail of one check."""

    __slots__ = ("_penalty", "_penalty_at", "flaps", "last_ok", "last_result_at", "params",
                 "results", "since", "streak", "suppressed", "up")

    def __init__(self, params: CheckParams, now: float, up: bool = False) -> None:
        self.params = params
        #: Debounced check state (rise/fall applied, damping not).
        self.up = up
        #: Consecutive results that disagree with `up`.
        self.streak = 0
        self.suppressed = False
        self._penalty = 0.0
        self._penalty_at = now
        self.flaps = 0
        self.results = 0
        self.last_ok: bool | None = None
        self.last_result_at: float | None = None
        #: When `passing` last changed (or the creation time).
        self.since = now

    @property
    def passing(self) -> bool:
        return self.up and not self.suppressed

    def penalty(self, now: float) -> float:
        d = self.params.damping
        if d is None or self._penalty <= 0:
            return 0.0
        dt = max(0.0, now - self._penalty_at)
        return self._penalty * math.exp2(-dt / d.half_life)

    def record(self, ok: bool, now: float) -> bool:
        """One check result; True if `passing` changed."""
        before = self.passing
        self.results += 1
        self.last_ok = ok
        self.last_result_at = now
        if ok == self.up:
            self.streak = 0
        else:
            self.streak += 1
            if self.streak >= (self.params.rise if ok else self.params.fall):
                self.up = ok
                self.streak = 0
                if not ok:
                    self._flap(now)
        self._damp(now)
        return self._changed(before, now)

    def tick(self, now: float) -> bool:
        """Re-evaluate the suppression at `now` (no new result); True if `passing` changed."""
        before = self.passing
        self._damp(now)
        return self._changed(before, now)

    def reuse_at(self, now: float) -> float | None:
        """When a suppressed check stops being suppressed (None if it is not)."""
        d = self.params.damping
        if not self.suppressed or d is None:
            return None
        p = self.penalty(now)
        if p < d.reuse:
            return now
        return now + d.half_life * math.log2(p / d.reuse)

    def _changed(self, before: bool, now: float) -> bool:
        if self.passing != before:
            self.since = now
            return True
        return False

    def _flap(self, now: float) -> None:
        self.flaps += 1
        d = self.params.damping
        if d is None:
            return
        self._penalty = min(d.ceiling, self.penalty(now) + d.penalty)
        self._penalty_at = now

    def _damp(self, now: float) -> None:
        d = self.params.damping
        if d is None:
            return
        p = self.penalty(now)
        if self.suppressed and p < d.reuse:
            self.suppressed = False
        elif not self.suppressed and p >= d.suppress:
            self.suppressed = True

    def view(self, now: float) -> dict[str, object]:
        return {"passing": self.passing, "up": self.up, "suppressed": self.suppressed,
                "penalty": round(self.penalty(now), 1), "flaps": self.flaps,
                "results": self.results, "last_ok": self.last_ok}
