"""WireGuard's receive counters as a sign of life for the Babel engine.

The daemon reads the device now and then (`Runtime.check_peers`, for the peer doctor).
A peer whose rx counter moved since the previous read sent us something after that read:
data traffic, keepalives or Babel. `RxFeed` turns two reads into those (peer, time)
pairs, which the runtime passes to `Node.heard`, so a peer that carries traffic is not
probed for a late Hello (babel/liveness.py). Pure: counters and times in, pairs out.
"""

from __future__ import annotations

from collections.abc import Mapping


class RxFeed:
    """Per peer, the rx counter and the time of the previous read."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, float]] = {}

    def observe(self, now: float, rx: Mapping[str, int]) -> list[tuple[str, float]]:
        """`rx`: each peer's rx byte counter read at `now`. Returns (peer, t) for every
        peer that received something after t, the time of its previous read (a counter
        that went down, e.g. the peer was removed and added back, starts again)."""
        out: list[tuple[str, float]] = []
        last = self._last
        for name, count in rx.items():
            prev = last.get(name)
            if prev is not None and count > prev[0]:
                out.append((name, prev[1]))
            last[name] = (count, now)
        for name in [n for n in last if n not in rx]:
            del last[name]
        return out
