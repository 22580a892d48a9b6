"""Locally originated routes: the node's own addresses and the anycast groups it serves.

Every origin of an anycast prefix is its own source (prefix, router-id), so many nodes can
originate one prefix and ordinary route selection finds the nearest. One seqno covers all
of a node's xroutes, as in babeld; it is persisted by the driver across restarts.
"""

from __future__ import annotations

from wgcast.babel.source import seqno_less, seqno_plus
from wgcast.prefix import Prefix


class XRouteTable:
    """Own prefixes with the metric they are announced at, and the node's seqno."""

    __slots__ = ("_xroutes", "seqno")

    def __init__(self, seqno: int = 0) -> None:
        self._xroutes: dict[Prefix, int] = {}
        self.seqno = seqno & 0xFFFF

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._xroutes

    def __len__(self) -> int:
        return len(self._xroutes)

    def items(self) -> list[tuple[Prefix, int]]:
        return list(self._xroutes.items())

    def metric(self, prefix: Prefix) -> int | None:
        return self._xroutes.get(prefix)

    def add(self, prefix: Prefix, metric: int) -> bool:
        """True if this changed what we announce."""
        old = self._xroutes.get(prefix)
        self._xroutes[prefix] = metric
        return old != metric

    def remove(self, prefix: Prefix) -> bool:
        return self._xroutes.pop(prefix, None) is not None

    def bump(self, at_least: int | None = None) -> int:
        """Increase our seqno (to answer a seqno request, or after a restart)."""
        if at_least is not None and seqno_less(self.seqno, at_least):
            self.seqno = at_least & 0xFFFF
        else:
            self.seqno = seqno_plus(self.seqno)
        return self.seqno
