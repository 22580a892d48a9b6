"""Source release: the anycast source-change rule.

The feasibility condition keeps the routes of each source loop-free, but a prefix with
several sources (anycast) can still loop across sources while information is in flight
(RFC 8966 section 1.1): X routes through N to source A while N has just moved to source B
through X. So a node never moves from the source it announced to another one at once: it
retracts the prefix with an AckReq to every neighbour that is up (but its next hop
towards the old source, which cannot route through it to that source: see
`Node._start_release`) and selects the new source only when all have acknowledged (or
died), still forwarding along the old source
meanwhile if it can. No neighbour can then hold a route through us to a source we no
longer use. Moving to a local origin, or to no route, needs no wait: such a node is an end
of every path.

This object remembers which source we announced for each prefix and which releases are
under way; the engine decides when to start one (`Node._select`) and sends.
"""

from __future__ import annotations

from wgcast.babel.request import PendingAck, RequestTracker
from wgcast.prefix import Prefix


class SourceRelease:
    """The sources we announced and the releases under way, per prefix."""

    __slots__ = ("mark", "owned", "releasing", "requests")

    def __init__(self, requests: RequestTracker) -> None:
        self.requests = requests
        #: prefix -> (router-id we last announced with a finite metric, `mark` then).
        #: Read-only outside this class.
        self.owned: dict[Prefix, tuple[bytes, int]] = {}
        #: prefix -> opaque of the retraction's AckReq, while we wait for the acks.
        #: Read-only outside this class.
        self.releasing: dict[Prefix, int] = {}
        #: Counts our finite announcements, so a retraction acked is known to have
        #: followed (or not) our last announcement of a prefix.
        self.mark = 0

    def announced(self, prefix: Prefix, router_id: bytes) -> None:
        """We announced `prefix` from `router_id` with a finite metric."""
        self.mark += 1
        self.owned[prefix] = (router_id, self.mark)

    def join(self, prefix: Prefix, notify: bool) -> bool:
        """True if a release of `prefix` is under way (`notify` then joins it)."""
        op = self.releasing.get(prefix)
        if op is None:
            return False
        pending = self.requests.acks.get(op)
        if pending is not None:
            pending.notify = pending.notify or notify
            return True
        del self.releasing[prefix]
        return False

    def begin(self, prefix: Prefix, waiting: set[str], now: float, tries: int,
              backoff: float, notify: bool) -> PendingAck | None:
        """Release `prefix`: its retraction goes to `waiting` with the returned AckReq
        (the caller sends it). None if there is nobody to wait for: the release is
        complete at once."""
        if not waiting:
            self.owned.pop(prefix, None)
            return None
        pending = self.requests.expect_acks(prefix, waiting, tries, now, backoff, notify,
                                            self.mark)
        self.releasing[prefix] = pending.opaque
        return pending

    def cancel(self, prefix: Prefix) -> bool:
        """Stop waiting: we are back on the source we announced, or on a local origin.
        True if a release was under way (its retraction must be announced over)."""
        return self.releasing.pop(prefix, None) is not None

    def acked(self, pending: PendingAck) -> bool:
        """Every neighbour acknowledged (or died before acknowledging) the retraction
        `pending`. True if that ends the release of its prefix (reselect it)."""
        prefix = pending.prefix
        owned = self.owned.get(prefix)
        if owned is not None and owned[1] <= pending.mark:
            # Every neighbour heard our retraction after our last finite announcement:
            # none can route through us with the old source any more.
            del self.owned[prefix]
        if self.releasing.get(prefix) == pending.opaque:
            del self.releasing[prefix]
            return True
        return False
