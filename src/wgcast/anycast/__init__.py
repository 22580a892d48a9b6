"""Sans-IO anycast group logic: membership refcounts, health state, join policy.

Nothing here touches a socket, a process or a clock: the daemon feeds connection ids,
peer credentials, probe results and a float `now`, and reads back what each group wants.

- `member`  refcounted memberships held by connections, with limits
- `policy`  who may join a group (uid / gid against the group's allow lists)
- `health`  rise/fall state of one check, with flap damping
- `group`   a group's wanted state: (static or members) and healthy and not draining
"""

from __future__ import annotations

from wgcast.prefix import Prefix

__all__ = ["Prefix"]
