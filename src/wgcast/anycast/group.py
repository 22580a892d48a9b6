"""A group's wanted state, pure: (static or members) and healthy and not draining.

`Group` mirrors what the daemon knows about one anycast group it may serve: its member
count (from `member.Registry`), its health checks (`health.CheckState`), whether an
operator drains it, and whether it is served right now (address up and originated). The
driver compares `wanted` with `served` and acts; `state` names the situation for humans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgcast.anycast import Prefix
from wgcast.anycast.health import CheckState

#: Metric of an instance being drained: far worse than any real path, yet finite with room
#: for ~15 hops of the largest link cost (babeld would turn an overflow into a retraction).
DRAIN_METRIC = 0x8000

__all__ = ["Group"]


@dataclass
class Group:
    prefix: Prefix
    static: bool = False
    checks: list[CheckState] = field(default_factory=list)
    members: int = 0
    draining: bool = False
    served: bool = False

    @property
    def healthy(self) -> bool:
        return all(c.passing for c in self.checks)

    @property
    def held(self) -> bool:
        """Someone wants the instance: static, or at least one member."""
        return self.static or self.members > 0

    @property
    def wanted(self) -> bool:
        return self.held and self.healthy and not self.draining

    def set_members(self, n: int) -> None:
        """A new member count. A drain of a non-static group ends when its last member
        leaves: the next member to join (a restarted service) is served again."""
        if n < 0:
            raise ValueError("a member count is never negative")
        self.members = n
        if n == 0 and not self.static:
            self.draining = False

    def drain(self) -> None:
        """Drain while held. An idle group (no member, not static) has nothing to
        drain and nobody whose leaving would end the drain: it is left as it is, so
        the next member to join is served."""
        if self.held:
            self.draining = True

    def undrain(self) -> None:
        self.draining = False

    @property
    def state(self) -> str:
        """serving | starting | withdrawing | draining | drained | unhealthy | idle"""
        if self.served:
            if self.wanted:
                return "serving"
            return "draining" if self.draining else "withdrawing"
        if self.wanted:
            return "starting"
        if self.draining and self.held:
            return "drained"
        if self.held and not self.healthy:
            return "unhealthy"
        return "idle"
