"""What a config reload (SIGHUP, `wgcast reload`) may change, and what it changed.

Pure: two `Config`s in, a refusal or a `Changes` out. `runtime.Daemon.reload` applies
the changes; what needs a restart is refused here, naming the key, and the running
config stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgcast.daemon.config import Config, GroupConf, PeerConf, format_duration

#: Keys a running daemon cannot take over: they name what it has bound or locked at start
#: (the interface, its lock and state, the API and Babel sockets, the probe socket, the
#: metrics listener) or the engine's fixed update interval.
RESTART_ONLY: tuple[str, ...] = (
    "interface", "backend", "state_file", "api_socket", "api_socket_mode",
    "api_socket_group", "port", "probe_port", "metrics", "endpoint_policy", "web", "lan",
)


def _show(v: object) -> str:
    if isinstance(v, float):
        return format_duration(v)
    return "none" if v is None else str(v)


def refusals(old: Config, new: Config) -> list[str]:
    """One message per key that differs but cannot change while the daemon runs."""
    out = []
    for key in RESTART_ONLY:
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            shown = "" if key in ("endpoint_policy", "lan") else f" ({_show(a)} -> {_show(b)})"
            out.append(f"{new.path}: {key} cannot change while wgcast runs{shown}; "
                       "restart `wgcast run` to change it")
    if old.timers.update != new.timers.update:
        out.append(f"{new.path}: timers.update cannot change while wgcast runs "
                   f"({_show(old.timers.update)} -> {_show(new.timers.update)}); restart "
                   "`wgcast run` to change it")
    return out


@dataclass
class Changes:
    """What differs between the running config and the new one (names and keys)."""

    peers_added: list[PeerConf] = field(default_factory=list)
    peers_removed: list[PeerConf] = field(default_factory=list)
    #: (old, new) of a peer kept under the same name and key.
    peers_changed: list[tuple[PeerConf, PeerConf]] = field(default_factory=list)
    groups_added: list[GroupConf] = field(default_factory=list)
    groups_removed: list[GroupConf] = field(default_factory=list)
    groups_changed: list[tuple[GroupConf, GroupConf]] = field(default_factory=list)
    #: Other top-level keys that changed ("timers", "link", "addresses", ...).
    keys: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.peers_added or self.peers_removed or self.peers_changed
                    or self.groups_added or self.groups_removed or self.groups_changed
                    or self.keys)

    def describe(self) -> str:
        """One line: what changed."""
        parts = []
        for what, items in (("peers added", [p.name for p in self.peers_added]),
                            ("peers removed", [p.name for p in self.peers_removed]),
                            ("peers changed", [
                                f"{n.name} ({', '.join(_peer_fields(o, n))})"
                                for o, n in self.peers_changed]),
                            ("groups added", [str(g.prefix) for g in self.groups_added]),
                            ("groups removed", [str(g.prefix) for g in self.groups_removed]),
                            ("groups changed", [
                                f"{n.prefix} ({', '.join(_group_fields(o, n))})"
                                for o, n in self.groups_changed]),
                            ("changed", self.keys)):
            if items:
                parts.append(f"{what}: {', '.join(items)}")
        return "; ".join(parts) or "no change"


_PEER_FIELDS = ("endpoints", "may_originate", "cost", "probe_port")
_GROUP_FIELDS = ("static", "metric", "address_interface", "allow_uids", "allow_gids",
                 "health")
#: Top-level keys applied live (besides peers and groups).
LIVE_KEYS = ("addresses", "anycast", "route_selection", "timers", "link", "roster",
             "mesh_key", "max_routes_per_peer", "max_update_rate", "name")


def _peer_fields(a: PeerConf, b: PeerConf) -> list[str]:
    return [f for f in _PEER_FIELDS if getattr(a, f) != getattr(b, f)]


def _group_fields(a: GroupConf, b: GroupConf) -> list[str]:
    return [f for f in _GROUP_FIELDS if getattr(a, f) != getattr(b, f)]


def diff(old: Config, new: Config) -> Changes:
    """The changes from `old` to `new` (a peer whose key changed is removed and added)."""
    ch = Changes()
    before = {p.name: p for p in old.peers}
    after = {p.name: p for p in new.peers}
    for name, p in before.items():
        q = after.get(name)
        if q is None or q.public_key != p.public_key:
            ch.peers_removed.append(p)
    for name, q in after.items():
        was = before.get(name)
        if was is None or was.public_key != q.public_key:
            ch.peers_added.append(q)
        elif was != q:
            ch.peers_changed.append((was, q))
    gb = {g.prefix: g for g in old.groups}
    ga = {g.prefix: g for g in new.groups}
    ch.groups_removed = [g for p, g in gb.items() if p not in ga]
    ch.groups_added = [g for p, g in ga.items() if p not in gb]
    ch.groups_changed = [(gb[p], g) for p, g in ga.items() if p in gb and gb[p] != g]
    for key in LIVE_KEYS:
        if getattr(old, key) != getattr(new, key):
            ch.keys.append(key)
    return ch
