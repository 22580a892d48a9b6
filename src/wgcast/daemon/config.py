"""The configuration of one managed WireGuard interface: one TOML file, checked at load.

`load(path)` / `loads(text)` turn a file into a frozen `Config`, or raise one
`ConfigError` that lists *every* problem of the file. Each message names the file, the
key path (`peers[2].public_key`, counted from 0) and what was expected::

    /etc/wgcast/wg0.toml: peers[2].public_key: expected a WireGuard public key
    (44 base64 characters), got "abc"

Loading only reads the file: host names are not resolved, groups and users are not
looked up, and no path is touched. The reference of every key is docs/config.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, TypeVar, cast

from wgcast.prefix import Prefix

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PROBE_PORT",
    "PROFILES",
    "Config",
    "ConfigError",
    "Endpoint",
    "EndpointPolicy",
    "GroupConf",
    "HealthConf",
    "Link",
    "PeerConf",
    "Prefix",
    "Timers",
    "format_duration",
    "from_mapping",
    "load",
    "loads",
    "parse_duration",
    "parse_endpoint",
]

Backend = Literal["auto", "uapi", "netlink"]
RouteSelection = Literal["shortest", "sticky"]
HealthType = Literal["exec", "tcp", "udp", "http", "dns"]

#: Babel's UDP port (RFC 8966, section 5).
DEFAULT_PORT: Final = 6696
DEFAULT_METRICS_PORT: Final = 9586
#: The catchment page (`web = true`: on localhost, this port).
DEFAULT_WEB_PORT: Final = 9587
#: UDP port of the endpoint probe responder (on the underlay, beside WireGuard's 51820).
DEFAULT_PROBE_PORT: Final = 51821
#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH: Final = 107
#: A config file larger than this is certainly not one.
MAX_FILE_SIZE: Final = 1 << 20
#: Linux IFNAMSIZ (16) minus the NUL.
MAX_IFNAME: Final = 15
MAX_ENDPOINTS: Final = 16

#: hello, dead, update of each timer profile.
PROFILES: Final[Mapping[str, tuple[float, int, float]]] = {
    "default": (0.2, 3, 4.0),
    "fast": (0.05, 3, 2.0),
}
DEFAULT_RETRACT_GRACE: Final = 0.5

#: Babel carries hello and update intervals in centiseconds, in 16 bits.
_MIN_INTERVAL: Final = 0.01
_MAX_INTERVAL: Final = 655.35

DNS_QTYPES: Final = frozenset(
    {"A", "AAAA", "ANY", "CAA", "CNAME", "DNSKEY", "DS", "HTTPS", "MX", "NS", "PTR", "SOA",
     "SRV", "SVCB", "TXT"}
)


# --------------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """A configuration file that cannot be used; `errors` lists every problem found.

    Each entry is a complete message that starts with the file name.
    """

    def __init__(self, errors: str | Sequence[str], path: str = "<string>") -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class _Bad(Exception):
    """A value that is not what its key expects; the message says what was expected."""


# ------------------------------------------------------------------------------ durations

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(us|µs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS: Final[Mapping[str, float]] = {
    "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DURATION_EXAMPLES = '"200ms", "4s", "1.5s" or "2m"'


def parse_duration(s: str, allow_zero: bool = False) -> float:
    """Seconds in a duration string: "200ms", "4s", "1.5s", "2m", "1h", "1m30s".

    Units: us, ms, s, m, h. Raises ValueError (whose message says what was expected)
    for anything else, including a missing unit and a duration that is not positive
    (zero is allowed with `allow_zero`: the keys whose "0s" means off).
    """
    if not isinstance(s, str):
        raise ValueError(
            f"expected a duration string such as {_DURATION_EXAMPLES}, got {_show(s)}"
            + (f' (durations need a unit: "{s}s" or "{s}ms")'
               if isinstance(s, int | float) and not isinstance(s, bool) else "")
        )
    text = s.strip()
    if not _DURATION.fullmatch(text):
        hint = ""
        if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", text):
            hint = f' (a duration needs a unit: "{text}s" or "{text}ms")'
        elif text.startswith("-"):
            hint = " (durations are positive)"
        raise ValueError(
            f"expected a duration such as {_DURATION_EXAMPLES}, got {_show(s)}{hint}"
        )
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {_show(s)}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"expected a positive duration, got {_show(s)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest of "250ms", "4s", "1.5s", "2m" that parse_duration reads back."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    ms = seconds * 1000
    return f"{round(ms)}ms" if abs(ms - round(ms)) < 1e-9 else f"{ms:g}ms"


# ------------------------------------------------------------------------------ endpoints

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _is_hostname(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(_LABEL.fullmatch(label) for label in labels)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host and a port as configured: an IP literal or a host name, not resolved.

    `host` holds an IPv6 literal without brackets; `str()` adds them back.
    """

    host: str
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address when `host` is an IP literal, None for a host name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Endpoint:
        return parse_endpoint(text, default_port)


def parse_endpoint(text: str, default_port: int | None = None) -> Endpoint:
    """`host:port`, `[ipv6]:port`, or (with `default_port`) a host alone.

    Raises ValueError whose message says what was expected.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string such as \"198.18.0.2:51820\", got {_show(text)}")
    example = "e.g. \"198.18.0.2:51820\", \"[2001:db8::2]:51820\" or \"host.example:51820\""
    s = text.strip()
    port_text: str | None
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise ValueError(f"expected host:port ({example}), got {_show(text)} (missing ']')")
        host, rest = s[1:close], s[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected host:port ({example}), got {_show(text)}")
        port_text = rest[1:] if rest else None
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address inside [brackets], got {_show(text)}"
            ) from None
        host = str(ip6)
    else:
        if s.count(":") > 1:
            suggestions = []
            addr, _, port = s.rpartition(":")
            with contextlib.suppress(ValueError):
                if re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535:
                    suggestions.append(f"[{ipaddress.IPv6Address(addr)}]:{port}")
            with contextlib.suppress(ValueError):
                ipaddress.IPv6Address(s)
                suggestions.append(f"[{s}]" if default_port is not None else f"[{s}]:PORT")
            if not suggestions:
                raise ValueError(f"expected host:port ({example}), got {_show(text)}")
            raise ValueError(
                f"expected host:port with IPv6 addresses in brackets, got {_show(text)}; "
                "did you mean " + " or ".join(f'"{x}"' for x in suggestions) + "?"
            )
        host, sep, port_text_or_empty = s.partition(":")
        port_text = port_text_or_empty if sep else None
        if re.fullmatch(r"[0-9.]+", host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise ValueError(
                    f"expected a valid IPv4 address or host name, got {_show(text)}"
                ) from None
        elif _is_hostname(host):
            host = host.lower()
        else:
            raise ValueError(
                f"expected host:port with an IP address or host name ({example}), "
                f"got {_show(text)}"
            )
    if port_text is None:
        if default_port is None:
            raise ValueError(f"expected host:port ({example}), got {_show(text)} (no port)")
        return Endpoint(host, default_port)
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535 after the host, got {_show(text)}")
    return Endpoint(host, int(port_text))


# ---------------------------------------------------------------------------- the config


@dataclass(frozen=True, slots=True)
class Timers:
    """Babel timers in seconds. `dead` counts hellos missed before a neighbour is down."""

    profile: str = "default"
    hello: float = 0.2
    dead: int = 3
    update: float = 4.0
    retract_grace: float = DEFAULT_RETRACT_GRACE
    #: On SIGTERM neighbours are asked to hold us this long (0: no hold), so a restart
    #: within it is invisible to the mesh.
    restart_hold: float = 10.0
    #: Longest hold of a move away from a live peer (make-before-break, 0: off): the
    #: packets to the prefix wait about 3 round trips to the old peer, so the replies
    #: still coming back through it pass WireGuard's source filter.
    move_hold: float = 0.2
    #: Hello interval to a wgcast neighbour that routes nothing through us that would
    #: survive our death (0: every neighbour gets `hello`); see docs/architecture.md.
    idle_hello: float = 4.0

    @classmethod
    def for_profile(cls, profile: str) -> Timers:
        hello, dead, update = PROFILES[profile]
        return cls(profile, hello, dead, update, DEFAULT_RETRACT_GRACE)

    @property
    def dead_interval(self) -> float:
        """Seconds of silence after which a neighbour is declared down."""
        return self.hello * self.dead


@dataclass(frozen=True, slots=True)
class Link:
    """Link cost = base_cost + min(rtt_cost_per_ms * smoothed RTT in ms, max_rtt_cost)."""

    base_cost: int = 32
    rtt_cost_per_ms: int = 4
    max_rtt_cost: int = 2048


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """How the endpoints of multi-endpoint peers are probed, learned and switched."""

    probe_interval: float = 1.0
    #: K: endpoints learned from roaming kept per peer, besides the configured ones.
    learned_max: int = 8
    learned_ttl: float = 600.0
    #: A better endpoint must stay better this long before traffic moves to it.
    switch_hold: float = 3.0
    #: Host names in `endpoints` are resolved again this often.
    resolve_interval: float = 300.0
    #: WireGuard's current endpoint (roaming, handshakes) is read this often.
    roam_poll: float = 1.0
    #: After a switch, a peer without a session is removed and added back (same keys,
    #: AllowedIPs, endpoint): WireGuard would wait up to 5 s before its next initiation.
    restart_handshake: bool = True


@dataclass(frozen=True, slots=True)
class PeerConf:
    """A WireGuard peer of the interface that speaks Babel with us.

    `public_key` is the canonical base64 form; `name` defaults to its first 8 characters.
    `may_originate` None means: the peer's AllowedIPs found at start plus the anycast
    prefixes. `probe_port` is where the peer's probe responder listens on each endpoint
    host (None: this node's own `probe_port`; "endpoint": the endpoint's own port, for
    a front end that tells probes from WireGuard packets, as the lab's relay does).
    `babel`: "wgcast" (the peer runs wgcast: its router-id is the hash of its key, it
    speaks from the control address derived from its key) or "generic" (any RFC 8966
    speaker, e.g. babeld, BIRD, FRR: multicast Hellos to it, its routes accepted under
    `may_originate` whatever its router-id, heard from `babel_address`, by default the
    control address derived from its key).
    """

    public_key: str
    name: str = ""
    endpoints: tuple[Endpoint, ...] = ()
    may_originate: tuple[Prefix, ...] | None = None
    cost: int = 0
    probe_port: int | Literal["endpoint"] | None = None
    babel: Literal["wgcast", "generic"] = "wgcast"
    babel_address: ipaddress.IPv6Address | None = None
    #: Our IPv4 address on the link, for a peer that wants IPv4 routes with an IPv4 next
    #: hop (AE 1 + Next Hop TLV: BIRD 2.0, FRR) instead of v4-via-v6 (AE 4).
    ipv4_next_hop: ipaddress.IPv4Address | None = None

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.public_key[:8])

    @property
    def key(self) -> bytes:
        """The 32 raw bytes of the public key."""
        return base64.b64decode(self.public_key)


@dataclass(frozen=True, slots=True)
class LanConf:
    """A plain LAN interface (Ethernet, veth, bridge) where wgcast meets RFC 8966
    speakers (babeld, BIRD, FRR) the way they meet each other: it listens on ff02::1:6,
    takes every speaker it hears as a neighbour, answers it from the interface's own
    link-local address and routes through it by that address (kernel routes with a
    gateway; no AllowedIPs). Their announcements are judged by address, as a generic
    peer's: accepted inside `may_originate` (plus the anycast prefixes), refused
    elsewhere. `cost`: added to the link cost of every neighbour on the LAN.
    `ipv4_next_hop`: our IPv4 address on the LAN, for speakers that do not parse
    v4-via-v6 (BIRD 2.0, FRR 8.4)."""

    interface: str
    may_originate: tuple[Prefix, ...] = ()
    cost: int = 0
    ipv4_next_hop: ipaddress.IPv4Address | None = None


@dataclass(frozen=True, slots=True)
class HealthConf:
    """One health check of a group. Only the fields of its `type` are meaningful.

    `target` is the configured string (a URL for http); `endpoint` is its parsed host
    and port (for http: the URL's host and port).
    """

    type: HealthType
    interval: float = 1.0
    timeout: float = 0.5
    rise: int = 2
    fall: int = 2
    command: tuple[str, ...] = ()
    target: str | None = None
    endpoint: Endpoint | None = None
    send: str | None = None
    expect: str | None = None
    status: int = 200
    query: str | None = None
    qtype: str = "A"


@dataclass(frozen=True, slots=True)
class GroupConf:
    """An anycast group this node may serve."""

    prefix: Prefix
    static: bool = False
    metric: int = 0
    address_interface: str = "lo"
    allow_uids: tuple[int, ...] = ()
    allow_gids: tuple[int, ...] = ()
    health: tuple[HealthConf, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """Everything wgcast knows about one managed interface.

    Empty `api_socket` / `state_file` are filled in from the interface name (`label`).
    `interface` is "" on a LAN-only node (only `[[lan]]` interfaces, no WireGuard).
    """

    interface: str
    backend: Backend = "auto"
    addresses: tuple[Prefix, ...] = ()
    anycast: tuple[Prefix, ...] = ()
    api_socket: str = ""
    api_socket_mode: int = 0o660
    api_socket_group: str | int | None = None
    state_file: str = ""
    port: int = DEFAULT_PORT
    metrics: Endpoint | None = None
    route_selection: RouteSelection = "shortest"
    timers: Timers = Timers()
    link: Link = Link()
    peers: tuple[PeerConf, ...] = ()
    groups: tuple[GroupConf, ...] = ()
    path: str = "<string>"
    #: UDP port of this node's endpoint probe responder; 0: no probes at all.
    probe_port: int = DEFAULT_PROBE_PORT
    endpoint_policy: EndpointPolicy = EndpointPolicy()
    #: The mesh's signed roster (who may originate what) and the mesh key that signs it;
    #: "" / None: no roster (the per-peer policy alone).
    roster: str = ""
    mesh_key: bytes | None = None
    #: Routes accepted from one neighbour at most (a flood is counted and dropped).
    max_routes_per_peer: int = 10000
    #: New Updates per second accepted from one neighbour (new routes, or signatures not
    #: yet verified; bursts up to max_routes_per_peer): a flood costs bounded work.
    max_update_rate: int = 1000
    #: This node's name in catchment views and metrics ("": the roster's, or the host's).
    name: str = ""
    #: The catchment page and its JSON (`daemon/web.py`); None: off.
    web: Endpoint | None = None
    #: Plain LAN interfaces where wgcast also speaks Babel (`[[lan]]`).
    lan: tuple[LanConf, ...] = ()

    def __post_init__(self) -> None:
        if not self.api_socket:
            object.__setattr__(self, "api_socket", f"/run/wgcast/{self.label}.sock")
        if not self.state_file:
            object.__setattr__(self, "state_file", f"/var/lib/wgcast/{self.label}.state")

    @property
    def label(self) -> str:
        """The interface that names this node's socket, state file and log lines: the
        WireGuard one, or the first LAN interface of a LAN-only node."""
        return self.interface or (self.lan[0].interface if self.lan else "")

    def peer(self, name_or_key: str) -> PeerConf | None:
        """The peer of that name or base64 public key."""
        for p in self.peers:
            if name_or_key in (p.name, p.public_key):
                return p
        return None

    def group(self, prefix: Prefix | str) -> GroupConf | None:
        net = ipaddress.ip_network(prefix) if isinstance(prefix, str) else prefix
        for g in self.groups:
            if g.prefix == net:
                return g
        return None


# ------------------------------------------------------------------------ value checking


def _show(v: object) -> str:
    """A value as an error message shows it after "got"."""
    if isinstance(v, str):
        text = json.dumps(v, ensure_ascii=False)
        return text if len(text) <= 70 else text[:66] + '..."'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 10**30 else "a huge integer"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "an empty array" if not v else "an array"
    if isinstance(v, dict):
        return "a table"
    return f"a {type(v).__name__}"  # TOML dates and times


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(path: str, key: str) -> str:
    k = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{k}" if path else k


T = TypeVar("T")
Conv = Callable[[Any], T]


def _optional(conv: Conv[T]) -> Conv[T | None]:
    def opt(v: Any) -> T | None:
        return conv(v)

    return opt


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_show(v)}")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_show(v)}")
    return v


def _integer(lo: int, hi: int) -> Conv[int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Bad(f"expected an integer from {lo} to {hi}, got {_show(v)}")
        return v

    return conv


def _numeric_id(what: str) -> Conv[int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32 - 1:
            raise _Bad(f"expected a numeric {what} (0 to {2**32 - 2}), got {_show(v)}")
        return v

    return conv


def _choice(*options: str) -> Conv[str]:
    def conv(v: Any) -> str:
        if isinstance(v, str) and v in options:
            return v
        listed = ", ".join(f'"{o}"' for o in options)
        hint = ""
        if isinstance(v, str):
            close = difflib.get_close_matches(v.lower(), options, n=1, cutoff=0.5)
            if close:
                hint = f' (did you mean "{close[0]}"?)'
        raise _Bad(f"expected one of {listed}, got {_show(v)}{hint}")

    return conv


def _duration(lo: float, hi: float, centiseconds: bool = False) -> Conv[float]:
    def conv(v: Any) -> float:
        try:
            seconds = parse_duration(v, allow_zero=lo == 0)
        except ValueError as e:
            raise _Bad(str(e)) from None
        if not lo <= seconds <= hi:
            raise _Bad(
                f"expected a duration from {format_duration(lo)} to {format_duration(hi)}, "
                f"got {_show(v)}"
            )
        if centiseconds:
            cs = seconds * 100
            if abs(cs - round(cs)) > 1e-6:
                down, up = math.floor(cs) * 10, math.ceil(cs) * 10
                raise _Bad(
                    f"expected a multiple of 10ms (Babel carries intervals in centiseconds), "
                    f'got {_show(v)}; use "{down}ms" or "{up}ms"'
                )
            seconds = round(cs) / 100
        return seconds

    return conv


def _ifname(v: Any) -> str:
    expected = (f"expected a Linux interface name (1 to {MAX_IFNAME} characters, "
                "no '/', ':' or whitespace)")
    if (
        not isinstance(v, str)
        or not 1 <= len(v) <= MAX_IFNAME
        or v in (".", "..")
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in v)
    ):
        raise _Bad(f"{expected}, got {_show(v)}")
    return v


_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")


def _prefix(own_address: bool = False) -> Conv[Prefix]:
    def conv(v: Any) -> Prefix:
        expected = 'expected an IP prefix such as "fd00:a::53/128" or "10.0.0.0/24"'
        if not isinstance(v, str):
            raise _Bad(f"{expected}, got {_show(v)}")
        text = v.strip()
        try:
            net = ipaddress.ip_network(text)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise _Bad(f"{expected}, got {_show(v)}") from None
            hint = f'"{loose}"'
            if own_address:
                ip = ipaddress.ip_interface(text).ip
                hint += f' (the network) or "{ip}/{ip.max_prefixlen}" (this address alone)'
            raise _Bad(
                f"expected a prefix without host bits, got {_show(v)}; did you mean {hint}?"
            ) from None
        if isinstance(net, ipaddress.IPv6Network) and net.overlaps(_LINK_LOCAL6):
            raise _Bad(
                f"expected a prefix outside fe80::/10 (link-local addresses carry wgcast's "
                f"control traffic), got {_show(v)}"
            )
        if net.is_multicast or net.is_loopback:
            raise _Bad(f"expected a unicast, non-loopback prefix, got {_show(v)}")
        return net

    return conv


def _endpoint(default_port: int | None = None) -> Conv[Endpoint]:
    def conv(v: Any) -> Endpoint:
        try:
            return parse_endpoint(v, default_port)
        except ValueError as e:
            raise _Bad(str(e)) from None

    return conv


def _web(v: Any) -> Endpoint | None:
    """`web = true` (localhost), `false`, or "host:port" / a host alone."""
    if v is True:
        return Endpoint("127.0.0.1", DEFAULT_WEB_PORT)
    if v is False:
        return None
    if not isinstance(v, str):
        raise _Bad(f'expected true, false or "host:port" such as "127.0.0.1:{DEFAULT_WEB_PORT}"'
                   f", got {_show(v)}")
    return _endpoint(DEFAULT_WEB_PORT)(v)


def _peer_probe_port(v: Any) -> int | Literal["endpoint"]:
    if v == "endpoint":
        return "endpoint"
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise _Bad(f'expected a port from 1 to 65535 or "endpoint", got {_show(v)}')
    return v


def _public_key(v: Any) -> str:
    expected = "expected a WireGuard public key (44 base64 characters)"
    if not isinstance(v, str):
        raise _Bad(f"{expected}, got {_show(v)}")
    s = v.strip()
    try:
        raw = base64.b64decode(s, validate=True)
    except (ValueError, binascii.Error):
        raise _Bad(f"{expected}, got {_show(v)}") from None
    if len(s) != 44 or len(raw) != 32:
        raise _Bad(f"{expected}, got {_show(v)}")
    canonical = base64.b64encode(raw).decode()
    if canonical != s:
        raise _Bad(f'{expected}, got {_show(v)} (not canonical; did you mean "{canonical}"?)')
    return canonical


def _path(v: Any) -> str:
    if not isinstance(v, str) or not v or "\0" in v:
        raise _Bad(f"expected an absolute path, got {_show(v)}")
    if not v.startswith("/"):
        raise _Bad(f"expected an absolute path (starting with /), got {_show(v)}")
    return v


def _mesh_key(v: Any) -> bytes:
    from wgcast.roster import RosterError, decode_mesh_key

    if not isinstance(v, str):
        raise _Bad(f"expected the mesh public key (base64), got {_show(v)}")
    try:
        return decode_mesh_key(v, "expected the mesh public key")
    except RosterError as e:
        raise _Bad(str(e)) from None


def _check_roster(path: str, mesh_key: bytes) -> str | None:
    """What is wrong with the roster file, or None (read now so `check` reports it)."""
    from datetime import UTC, datetime

    from wgcast.roster import RosterError, accept_newer, parse

    try:
        with open(path, encoding="utf-8") as f:
            accept_newer(None, parse(f.read(), path), mesh_key, datetime.now(UTC))
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    except RosterError as e:
        return str(e)
    return None


def _socket_path(v: Any) -> str:
    p = _path(v)
    size = len(os.fsencode(p))
    if size > MAX_SOCKET_PATH:
        raise _Bad(
            f"expected a Unix socket path of at most {MAX_SOCKET_PATH} bytes, "
            f"got {size} bytes ({_show(v)})"
        )
    return p


def _mode(v: Any) -> int:
    expected = 'expected an octal permission string such as "0660"'
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o777:
        return v  # TOML 0o660
    if isinstance(v, str) and re.fullmatch(r"0?[0-7]{3}", v):
        return int(v, 8)
    hint = " (quote it: TOML reads 660 as a decimal number)" if isinstance(v, int) else ""
    raise _Bad(f"{expected}, got {_show(v)}{hint}")


def _group_ref(v: Any) -> str | int:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 - 1:
        return v
    if isinstance(v, str) and re.fullmatch(r"[0-9]{1,10}", v) and int(v) < 2**32 - 1:
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", v):
        return v
    raise _Bad(f"expected a group name or a numeric gid, got {_show(v)}")


def _link_local(v: Any) -> ipaddress.IPv6Address:
    try:
        a = ipaddress.IPv6Address(v) if isinstance(v, str) else None
    except ValueError:
        a = None
    if a is None or not a.is_link_local:
        raise _Bad(f"expected an IPv6 link-local address such as \"fe80::2\", got {_show(v)}")
    return a


def _ipv4_address(v: Any) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(v) if isinstance(v, str) else _no_address(v)
    except ValueError:
        return _no_address(v)


def _no_address(v: Any) -> ipaddress.IPv4Address:
    raise _Bad(f"expected an IPv4 address such as \"10.99.0.1\", got {_show(v)}")


def _peer_name(v: Any) -> str:
    if (
        not isinstance(v, str)
        or not 1 <= len(v) <= 64
        or any(c.isspace() or not c.isprintable() for c in v)
    ):
        raise _Bad(f"expected a name of 1 to 64 characters without spaces, got {_show(v)}")
    return v


def _command(v: Any) -> tuple[str, ...]:
    expected = 'expected an array of strings (program and arguments) such as ["/bin/true"]'
    if (
        not isinstance(v, list)
        or not v
        or not all(isinstance(a, str) for a in v)
        or not v[0]
        or any("\0" in a for a in v)
    ):
        raise _Bad(f"{expected}, got {_show(v)}")
    return tuple(v)


def _url(v: Any) -> tuple[str, Endpoint]:
    expected = 'expected an http:// or https:// URL such as "http://[::1]:8080/health"'
    if not isinstance(v, str):
        raise _Bad(f"{expected}, got {_show(v)}")
    try:
        u = urllib.parse.urlsplit(v)
        port = u.port
    except ValueError:
        raise _Bad(f"{expected}, got {_show(v)}") from None
    host = u.hostname
    if u.scheme not in ("http", "https") or not host:
        raise _Bad(f"{expected}, got {_show(v)}")
    default = 443 if u.scheme == "https" else 80
    try:
        ep = parse_endpoint(f"[{host}]" if ":" in host else host, port or default)
    except ValueError:
        raise _Bad(f"{expected}, got {_show(v)}") from None
    return v, ep


def _domain(v: Any) -> str:
    expected = 'expected a domain name such as "example.org"'
    if not isinstance(v, str) or not 1 <= len(v) <= 253:
        raise _Bad(f"{expected}, got {_show(v)}")
    if v == ".":
        return v
    labels = v[:-1].split(".") if v.endswith(".") else v.split(".")
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise _Bad(f"{expected}, got {_show(v)}")
    return v


def _qtype(v: Any) -> str:
    if isinstance(v, str) and v.upper() in DNS_QTYPES:
        return v.upper()
    raise _Bad(
        f"expected a DNS record type ({', '.join(sorted(DNS_QTYPES))}), got {_show(v)}"
    )


# ----------------------------------------------------------------------------- the reader

_TOP_KEYS: Final = (
    "interface", "backend", "addresses", "anycast", "api_socket", "api_socket_mode",
    "api_socket_group", "state_file", "port", "metrics", "route_selection", "timers",
    "link", "peers", "groups", "probe_port", "endpoint_policy", "roster", "mesh_key",
    "max_routes_per_peer", "max_update_rate", "name", "web", "lan", "health_checks",
)
_TIMER_KEYS: Final = ("profile", "hello", "dead", "update", "retract_grace", "restart_hold",
                      "move_hold", "idle_hello")
_LINK_KEYS: Final = ("base_cost", "rtt_cost_per_ms", "max_rtt_cost")
_PEER_KEYS: Final = ("name", "public_key", "endpoints", "may_originate", "cost", "probe_port",
                      "babel", "babel_address", "ipv4_next_hop")
_LAN_KEYS: Final = ("interface", "may_originate", "cost", "ipv4_next_hop")
_POLICY_KEYS: Final = ("probe_interval", "learned_max", "learned_ttl", "switch_hold",
                       "resolve_interval", "roam_poll", "restart_handshake")
_GROUP_KEYS: Final = (
    "prefix", "static", "metric", "address_interface", "allow_uids", "allow_gids", "health",
    "health_checks",
)
_HEALTH_COMMON: Final = ("type", "interval", "timeout", "rise", "fall")
_HEALTH_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "exec": ("command",),
    "tcp": ("target",),
    "udp": ("target", "send", "expect"),
    "http": ("target", "status"),
    "dns": ("target", "query", "qtype"),
}
_ALL_HEALTH_KEYS: Final = _HEALTH_COMMON + tuple(
    sorted({k for keys in _HEALTH_KEYS.values() for k in keys})
)
_SECTION_OF: Final[Mapping[str, str]] = {
    **{k: "[timers]" for k in _TIMER_KEYS},
    **{k: "[link]" for k in _LINK_KEYS},
    **{k: "[[peers]]" for k in _PEER_KEYS
       if k not in ("probe_port", "babel", "babel_address", "ipv4_next_hop")},
    **{k: "[endpoint_policy]" for k in _POLICY_KEYS},
    **{k: "[[groups]]" for k in _GROUP_KEYS if k != "health_checks"},
}


_PATH_TOKEN = re.compile(r'\.?(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_-]+))|\[(\d+)\]')
_LAST: Final = 1 << 62


def _position(data: Any, path: str) -> tuple[int, ...]:
    """Where a key path is in the document: a sort key for errors."""
    pos: list[int] = []
    node = data
    for m in _PATH_TOKEN.finditer(path):
        quoted, bare, index = m.groups()
        if index is not None:
            i = int(index)
            ok = isinstance(node, list) and i < len(node)
            pos.append(i if ok else _LAST)
            node = node[i] if ok else None
            continue
        key = bare if bare is not None else json.loads(f'"{quoted}"')
        if isinstance(node, dict):
            keys = list(node)
            pos.append(keys.index(key) if key in node else len(keys))
            node = node.get(key)
        else:
            pos.append(_LAST)
            node = None
    return tuple(pos)


def _covers(outer: Prefix, inner: Prefix) -> bool:
    if isinstance(outer, ipaddress.IPv4Network) and isinstance(inner, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(outer, ipaddress.IPv6Network) and isinstance(inner, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


class _Reader:
    """Walks the parsed TOML, collecting every error instead of stopping at the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[tuple[str, str]] = []  # (key path, message)

    @property
    def errors(self) -> list[str]:
        return [f"{self.file}: {p}: {m}" if p else f"{self.file}: {m}" for p, m in self.found]

    def err(self, path: str, message: str) -> None:
        self.found.append((path, message))

    def sorted_errors(self, data: Mapping[str, Any]) -> list[str]:
        """The errors in the order of the document (stable for one key)."""
        self.found.sort(key=lambda e: _position(data, e[0]))
        return self.errors

    # ---- tables

    def table(self, path: str, v: Any) -> dict[str, Any] | None:
        if isinstance(v, dict):
            return v
        self.err(path, f"expected a table ([{path}]), got {_show(v)}")
        return None

    def array_of_tables(self, path: str, v: Any) -> list[tuple[str, dict[str, Any]]]:
        if not isinstance(v, list):
            hint = f" (write [[{path}]] for each entry)" if isinstance(v, dict) else ""
            self.err(path, f"expected an array of tables, got {_show(v)}{hint}")
            return []
        out = []
        for i, item in enumerate(v):
            p = f"{path}[{i}]"
            if isinstance(item, dict):
                out.append((p, item))
            else:
                self.err(p, f"expected a table, got {_show(item)}")
        return out

    def unknown(
        self, path: str, table: Mapping[str, Any], known: Sequence[str],
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        for k in table:
            if k in known:
                continue
            close = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
            if close:
                hint = f'did you mean "{close[0]}"?'
            elif elsewhere and k in elsewhere:
                hint = f"it belongs in {elsewhere[k]}"
            elif path and k in _TOP_KEYS:
                hint = ("top-level keys must come before the first [table] or [[array]] "
                        "header")
            else:
                hint = "expected one of: " + ", ".join(known)
            self.err(_key(path, k), f"unknown key ({hint})")

    # ---- values

    def get(self, table: Mapping[str, Any], path: str, key: str, conv: Conv[T],
            default: T) -> T:
        """The converted value of an optional key, or `default` (after an error)."""
        if key not in table:
            return default
        try:
            return conv(table[key])
        except _Bad as e:
            self.err(_key(path, key), str(e))
            return default

    def need(self, table: Mapping[str, Any], path: str, key: str, conv: Conv[T],
             expected: str) -> T | None:
        """The converted value of a required key, or None after an error."""
        if key not in table:
            self.err(_key(path, key), f"missing required key; expected {expected}")
            return None
        try:
            return conv(table[key])
        except _Bad as e:
            self.err(_key(path, key), str(e))
            return None

    def items(self, table: Mapping[str, Any], path: str, key: str, conv: Conv[T],
              what: str) -> tuple[list[tuple[str, T]], bool]:
        """Converted elements of an array with their paths, and whether the key exists."""
        if key not in table:
            return [], False
        v = table[key]
        p = _key(path, key)
        if not isinstance(v, list):
            self.err(p, f"expected an array of {what}, got {_show(v)}")
            return [], True
        out = []
        for i, item in enumerate(v):
            try:
                out.append((f"{p}[{i}]", conv(item)))
            except _Bad as e:
                self.err(f"{p}[{i}]", str(e))
        return out, True

    def unique_prefixes(self, items: Iterable[tuple[str, Prefix]]) -> tuple[Prefix, ...]:
        seen: dict[Prefix, str] = {}
        for p, net in items:
            if net in seen:
                self.err(p, f'duplicate prefix "{net}" (already at {seen[net]})')
            else:
                seen[net] = p
        return tuple(seen)

    # ---- sections

    def timers(self, v: Any) -> Timers:
        t = self.table("timers", v)
        if t is None:
            return Timers()
        self.unknown("timers", t, _TIMER_KEYS, _SECTION_OF)
        profile = self.get(t, "timers", "profile", _choice(*PROFILES), "default")
        base = Timers.for_profile(profile)
        interval = _duration(_MIN_INTERVAL, _MAX_INTERVAL, centiseconds=True)
        before = len(self.found)
        hello = self.get(t, "timers", "hello", interval, base.hello)
        dead = self.get(t, "timers", "dead", _integer(2, 20), base.dead)
        update = self.get(t, "timers", "update", interval, base.update)
        valid = len(self.found) == before
        grace = self.get(t, "timers", "retract_grace", _duration(0.001, 60.0), base.retract_grace)
        hold = self.get(t, "timers", "restart_hold", _duration(0.0, 600.0), base.restart_hold)
        move_hold = self.get(t, "timers", "move_hold", _duration(0.0, 5.0), base.move_hold)
        idle = self.get(t, "timers", "idle_hello",
                        _duration(0.0, _MAX_INTERVAL, centiseconds=True), base.idle_hello)
        if valid and 0 < idle < hello:
            self.err("timers.idle_hello",
                     f'expected "0s" (off) or at least hello ({format_duration(hello)}), got '
                     f"{format_duration(idle)}: idle neighbours get Hellos less often, "
                     "not more")
        timers = Timers(profile, hello, dead, update, grace, hold, move_hold, idle)
        if valid and timers.dead_interval >= update:
            set_keys = [k for k in ("update", "hello", "dead") if k in t]
            where = f"timers.{set_keys[0]}" if set_keys else "timers"
            self.err(
                where,
                f"expected dead * hello ({dead} * {format_duration(hello)} = "
                f"{format_duration(timers.dead_interval)}) to be shorter than update "
                f"({format_duration(update)}): a dead neighbour must be detected from its "
                "missing hellos before the next periodic update; lower hello or dead, or "
                "raise update",
            )
        return timers

    def endpoint_policy(self, v: Any) -> EndpointPolicy:
        t = self.table("endpoint_policy", v)
        d = EndpointPolicy()
        if t is None:
            return d
        self.unknown("endpoint_policy", t, _POLICY_KEYS, _SECTION_OF)
        p = "endpoint_policy"
        return EndpointPolicy(
            probe_interval=self.get(t, p, "probe_interval", _duration(0.05, 3600.0),
                                    d.probe_interval),
            learned_max=self.get(t, p, "learned_max", _integer(1, 64), d.learned_max),
            learned_ttl=self.get(t, p, "learned_ttl", _duration(1.0, 86400.0), d.learned_ttl),
            switch_hold=self.get(t, p, "switch_hold", _duration(0.001, 3600.0), d.switch_hold),
            resolve_interval=self.get(t, p, "resolve_interval", _duration(1.0, 86400.0),
                                      d.resolve_interval),
            roam_poll=self.get(t, p, "roam_poll", _duration(0.005, 60.0), d.roam_poll),
            restart_handshake=self.get(t, p, "restart_handshake", _boolean,
                                       d.restart_handshake),
        )

    def link(self, v: Any) -> Link:
        t = self.table("link", v)
        if t is None:
            return Link()
        self.unknown("link", t, _LINK_KEYS, _SECTION_OF)
        d = Link()
        return Link(
            self.get(t, "link", "base_cost", _integer(1, 4096), d.base_cost),
            self.get(t, "link", "rtt_cost_per_ms", _integer(0, 1024), d.rtt_cost_per_ms),
            self.get(t, "link", "max_rtt_cost", _integer(0, 32768), d.max_rtt_cost),
        )

    def peer(self, path: str, t: Mapping[str, Any]) -> PeerConf | None:
        self.unknown(path, t, _PEER_KEYS)
        key = self.need(t, path, "public_key", _public_key,
                        "a WireGuard public key (44 base64 characters)")
        name = self.get(t, path, "name", _peer_name, "")
        eps, _ = self.items(t, path, "endpoints", _endpoint(), "host:port strings")
        seen: dict[Endpoint, str] = {}
        for p, ep in eps:
            if ep in seen:
                self.err(p, f'duplicate endpoint "{ep}" (already at {seen[ep]})')
            seen.setdefault(ep, p)
        if len(seen) > MAX_ENDPOINTS:
            self.err(_key(path, "endpoints"),
                     f"expected at most {MAX_ENDPOINTS} endpoints, got {len(seen)}")
        may, given = self.items(t, path, "may_originate", _prefix(), "IP prefixes")
        may_originate = self.unique_prefixes(may) if given else None
        cost = self.get(t, path, "cost", _integer(0, 4096), 0)
        probe_port = self.get(t, path, "probe_port", _peer_probe_port, None)
        babel = self.get(t, path, "babel", _choice("wgcast", "generic"), "wgcast")
        babel_address = self.get(t, path, "babel_address", _link_local, None)
        nh = self.get(t, path, "ipv4_next_hop", _ipv4_address, None)
        if key is None:
            return None
        return PeerConf(key, name, tuple(seen), may_originate, cost, probe_port,
                        "generic" if babel == "generic" else "wgcast", babel_address, nh)

    def health(self, path: str, t: Mapping[str, Any]) -> HealthConf | None:
        kind = self.need(t, path, "type", _choice(*_HEALTH_KEYS),
                         'one of "exec", "tcp", "udp", "http", "dns"')
        self.unknown(path, t, _ALL_HEALTH_KEYS)
        if kind is None:
            return None
        own = _HEALTH_KEYS[kind]
        for k in t:
            if k in _ALL_HEALTH_KEYS and k not in _HEALTH_COMMON and k not in own:
                users = " or ".join(f'"{h}"' for h, ks in _HEALTH_KEYS.items() if k in ks)
                self.err(_key(path, k),
                         f'unexpected key for type = "{kind}" (it applies to type = {users})')
        before = len(self.found)
        interval = self.get(t, path, "interval", _duration(0.01, 3600.0), 1.0)
        timeout = self.get(t, path, "timeout", _duration(0.001, 3600.0), 0.5)
        if timeout > interval and len(self.found) == before:
            self.err(_key(path, "timeout"),
                     f"expected a timeout no longer than interval ({format_duration(interval)}),"
                     f" got {format_duration(timeout)}")
        rise = self.get(t, path, "rise", _integer(1, 100), 2)
        fall = self.get(t, path, "fall", _integer(1, 100), 2)
        base = HealthConf(cast(HealthType, kind), interval, timeout, rise, fall)
        if kind == "exec":
            command = self.need(t, path, "command", _command,
                                'an array of strings such as ["/bin/true"]')
            if command is None:
                return None
            return replace(base, command=command)
        if kind == "http":
            url = self.need(t, path, "target", _url, 'a URL such as "http://[::1]:8080/health"')
            status = self.get(t, path, "status", _integer(100, 599), 200)
            if url is None:
                return None
            return replace(base, target=url[0], endpoint=url[1], status=status)
        target = self.need(t, path, "target", _endpoint(53 if kind == "dns" else None),
                           'host:port such as "[::1]:53"')
        raw_target = t["target"] if target is not None else None
        if kind == "udp":
            send = self.need(t, path, "send", _string, "the string to send")
            expect = self.get(t, path, "expect", _optional(_string), None)
            if send is None or target is None:
                return None
            return replace(base, target=raw_target, endpoint=target, send=send, expect=expect)
        if kind == "dns":
            query = self.need(t, path, "query", _domain, 'a domain name such as "example.org"')
            qtype = self.get(t, path, "qtype", _qtype, "A")
            if query is None or target is None:
                return None
            return replace(base, target=raw_target, endpoint=target, query=query, qtype=qtype)
        if target is None:
            return None
        return replace(base, target=raw_target, endpoint=target)

    def named_checks(self, data: Mapping[str, Any]) -> dict[str, HealthConf | None]:
        """Top-level `[[health_checks]]`, each with a `name` that groups refer to (one
        check for several services). None: a named check with errors (reported here)."""
        named: dict[str, HealthConf | None] = {}
        where: dict[str, str] = {}
        for p, t in self.array_of_tables("health_checks", data["health_checks"]):
            name = self.need(t, p, "name", _peer_name, 'a name such as "dns"')
            hc = self.health(p, {k: v for k, v in t.items() if k != "name"})
            if name is None:
                continue
            if name in named:
                self.err(_key(p, "name"), f'duplicate health check name "{name}" (already at '
                                          f"{where[name]})")
                continue
            named[name], where[name] = hc, _key(p, "name")
        return named

    def group(self, path: str, t: Mapping[str, Any],
              named: Mapping[str, HealthConf | None]) -> list[tuple[str, GroupConf]]:
        """One `[[groups]]` entry: one GroupConf per prefix (with its key path), so a
        dual-stack service (`prefix = ["192.0.2.53/32", "fd00:a::53/128"]`) writes its
        settings and health checks once; `health_checks` adds named top-level checks."""
        self.unknown(path, t, _GROUP_KEYS)
        if "prefix" not in t:
            self.need(t, path, "prefix", _prefix(),
                      'an anycast prefix such as "fd00:a::53/128" (or an array of them)')
            prefixes: list[tuple[str, Prefix]] = []
        elif isinstance(t["prefix"], list):
            prefixes, _ = self.items(t, path, "prefix", _prefix(), "IP prefixes")
            if not t["prefix"]:
                self.err(_key(path, "prefix"), "expected at least one anycast prefix, got []")
        else:
            one = self.need(t, path, "prefix", _prefix(),
                            'an anycast prefix such as "fd00:a::53/128"')
            prefixes = [] if one is None else [(_key(path, "prefix"), one)]
        static = self.get(t, path, "static", _boolean, False)
        metric = self.get(t, path, "metric", _integer(0, 16384), 0)
        ifname = self.get(t, path, "address_interface", _ifname, "lo")
        uids, _ = self.items(t, path, "allow_uids", _numeric_id("uid"), "numeric uids")
        gids, _ = self.items(t, path, "allow_gids", _numeric_id("gid"), "numeric gids")
        checks = []
        if "health" in t:
            for p, h in self.array_of_tables(_key(path, "health"), t["health"]):
                hc = self.health(p, h)
                if hc is not None:
                    checks.append(hc)
        refs, _ = self.items(t, path, "health_checks", _peer_name, "health check names")
        for p, ref in refs:
            if ref not in named:
                close = difflib.get_close_matches(ref, list(named), n=1, cutoff=0.6)
                hint = (f'did you mean "{close[0]}"?' if close else
                        "defined: " + (", ".join(f'"{n}"' for n in named) or "none") +
                        '; define it in a top-level [[health_checks]] with name = "'
                        + ref + '"')
                self.err(p, f'unknown health check "{ref}" ({hint})')
            elif (hc := named[ref]) is not None and hc not in checks:
                checks.append(hc)
        return [(pp, GroupConf(prefix, static, metric, ifname,
                               tuple(dict.fromkeys(u for _, u in uids)),
                               tuple(dict.fromkeys(g for _, g in gids)), tuple(checks)))
                for pp, prefix in prefixes]

    def lan(self, path: str, t: Mapping[str, Any]) -> LanConf | None:
        self.unknown(path, t, _LAN_KEYS)
        ifname = self.need(t, path, "interface", _ifname,
                           'a LAN interface name such as "eth1"')
        may, _ = self.items(t, path, "may_originate", _prefix(), "IP prefixes")
        cost = self.get(t, path, "cost", _integer(0, 4096), 0)
        nh = self.get(t, path, "ipv4_next_hop", _ipv4_address, None)
        if ifname is None:
            return None
        return LanConf(ifname, self.unique_prefixes(may), cost, nh)

    def config(self, data: Mapping[str, Any]) -> Config | None:
        self.unknown("", data, _TOP_KEYS, _SECTION_OF)
        # Without `interface`, [[lan]] sections alone make a LAN-only node.
        lan_only = "interface" not in data and isinstance(data.get("lan"), list) \
            and bool(data["lan"])
        interface = "" if lan_only else self.need(
            data, "", "interface", _ifname, 'a Linux interface name such as "wg0" (or, '
            "for a node without WireGuard, only [[lan]] sections)")
        backend = self.get(data, "", "backend", _choice("auto", "uapi", "netlink"), "auto")
        addr_items, _ = self.items(data, "", "addresses", _prefix(own_address=True), "IP prefixes")
        any_items, _ = self.items(data, "", "anycast", _prefix(), "IP prefixes")
        addresses = self.unique_prefixes(addr_items)
        anycast = self.unique_prefixes(any_items)
        any_path = {net: p for p, net in reversed(any_items)}
        for p, net in addr_items:
            for a in anycast:
                if net.version == a.version and net.overlaps(a):
                    self.err(p, f'expected a unicast prefix of this node, but "{net}" overlaps '
                                f'the anycast prefix "{a}" ({any_path[a]})')
                    break
        api_socket = self.get(data, "", "api_socket", _socket_path, "")
        mode = self.get(data, "", "api_socket_mode", _mode, 0o660)
        group = self.get(data, "", "api_socket_group", _optional(_group_ref), None)
        state_file = self.get(data, "", "state_file", _path, "")
        port = self.get(data, "", "port", _integer(1, 65535), DEFAULT_PORT)
        metrics = self.get(data, "", "metrics", _optional(_endpoint(DEFAULT_METRICS_PORT)),
                           None)
        selection = self.get(data, "", "route_selection",
                             _choice("shortest", "sticky", "hysteresis"), "shortest")
        if selection == "hysteresis":
            # wgcast 0.1's name: hysteresis now damps the link costs, not route choice.
            selection = "shortest"
        timers = self.timers(data["timers"]) if "timers" in data else Timers()
        link = self.link(data["link"]) if "link" in data else Link()
        probe_port = self.get(data, "", "probe_port", _integer(0, 65535), DEFAULT_PROBE_PORT)
        policy = (self.endpoint_policy(data["endpoint_policy"]) if "endpoint_policy" in data
                  else EndpointPolicy())
        roster = self.get(data, "", "roster", _path, "")
        mesh_key = self.get(data, "", "mesh_key", _mesh_key, None)
        max_routes = self.get(data, "", "max_routes_per_peer", _integer(1, 1_000_000), 10000)
        max_rate = self.get(data, "", "max_update_rate", _integer(1, 1_000_000), 1000)
        node_name = self.get(data, "", "name", _peer_name, "")
        web = self.get(data, "", "web", _web, None)
        if roster and mesh_key is None:
            self.err("mesh_key", "missing; a roster needs the mesh public key that signs it "
                                 "(wgcast roster keygen prints it)")
        elif mesh_key is not None and not roster:
            self.err("roster", "missing; mesh_key is the key of a roster file")
        elif roster and mesh_key is not None:
            err = _check_roster(roster, mesh_key)
            if err:
                self.err("roster", err)

        peers: list[PeerConf] = []
        if "peers" in data:
            keys: dict[str, str] = {}
            names: dict[str, str] = {}
            for p, t in self.array_of_tables("peers", data["peers"]):
                peer = self.peer(p, t)
                if peer is None:
                    continue
                if peer.public_key in keys:
                    self.err(_key(p, "public_key"),
                             f"duplicate public key (already at {keys[peer.public_key]})")
                    continue
                keys[peer.public_key] = _key(p, "public_key")
                if peer.name in names:
                    how = "" if "name" in t else " (the default name: the key's first 8 characters)"
                    self.err(_key(p, "name"),
                             f'duplicate peer name "{peer.name}"{how} (already at '
                             f"{names[peer.name]}); expected a unique name")
                    continue
                names[peer.name] = _key(p, "name")
                peers.append(peer)

        named = self.named_checks(data) if "health_checks" in data else {}
        groups: list[GroupConf] = []
        if "groups" in data:
            prefixes: dict[Prefix, str] = {}
            for p, t in self.array_of_tables("groups", data["groups"]):
                for pp, g in self.group(p, t, named):
                    if g.prefix in prefixes:
                        self.err(pp, f'duplicate group prefix "{g.prefix}" (already at '
                                     f"{prefixes[g.prefix]})")
                        continue
                    prefixes[g.prefix] = pp
                    if not any(_covers(a, g.prefix) for a in anycast):
                        self.err(pp, f'expected a prefix covered by `anycast`, but "{g.prefix}" is '
                                     f'not; add "{g.prefix}" to anycast')
                    groups.append(g)

        lans: list[LanConf] = []
        if "lan" in data:
            seen_if: dict[str, str] = {}
            for p, t in self.array_of_tables("lan", data["lan"]):
                lan = self.lan(p, t)
                if lan is None:
                    continue
                pi = _key(p, "interface")
                if lan.interface == interface:
                    self.err(pi, f'expected a LAN interface other than the WireGuard '
                                 f'interface "{interface}" (interface)')
                    continue
                if lan.interface in seen_if:
                    self.err(pi, f'duplicate LAN interface "{lan.interface}" (already at '
                                 f"{seen_if[lan.interface]})")
                    continue
                seen_if[lan.interface] = pi
                lans.append(lan)

        if lan_only:
            # What only a WireGuard interface can give: peers, and the key that signs.
            why = ('expected no {what} on a LAN-only node (no `interface`): {reason}; '
                   'add interface = "wg0" or remove it')
            if peers:
                self.err("peers", why.format(what="[[peers]]",
                                             reason="peers are WireGuard peers"))
            if roster:
                self.err("roster", why.format(
                    what="roster", reason="with a roster this node signs what it "
                    "originates with a key derived from its WireGuard private key"))
        if interface is None:
            return None
        if not api_socket:
            api_socket = f"/run/wgcast/{interface or (lans[0].interface if lans else '')}.sock"
        return Config(
            interface=interface, backend=cast(Backend, backend), addresses=addresses,
            anycast=anycast, api_socket=api_socket, api_socket_mode=mode,
            api_socket_group=group, state_file=state_file, port=port, metrics=metrics,
            route_selection=cast(RouteSelection, selection), timers=timers, link=link,
            peers=tuple(peers), groups=tuple(groups), path=self.file,
            probe_port=probe_port, endpoint_policy=policy, roster=roster, mesh_key=mesh_key,
            max_routes_per_peer=max_routes, max_update_rate=max_rate, name=node_name,
            web=web, lan=tuple(lans),
        )


# ------------------------------------------------------------------------------- loading


def from_mapping(data: Mapping[str, Any], path: str = "<dict>") -> Config:
    """Validate an already parsed document (what tomllib returns)."""
    reader = _Reader(path)
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path}: expected a table at the top level, got {_show(data)}"], path)
    try:
        config = reader.config(data)
    except RecursionError:
        reader.err("", "the document is nested too deeply")
        config = None
    if reader.found or config is None:
        raise ConfigError(reader.sorted_errors(data) or [f"{path}: invalid configuration"], path)
    return config


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END = re.compile(r"\s*\(at end of document\)$")


def loads(text: str, path: str = "<string>") -> Config:
    """Parse and validate the text of a configuration file; `path` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_POSITION.search(message)
        if m:
            where = f"{path}:{m.group(1)}:{m.group(2)}"
            message = message[: m.start()]
        else:
            end = _TOML_END.search(message)
            if end:
                message = message[: end.start()] + " at end of file"
            where = f"{path}:{text.count(chr(10)) + (0 if text.endswith(chr(10)) else 1)}"
        raise ConfigError([f"{where}: invalid TOML: {message}"], path) from None
    except (RecursionError, ValueError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ConfigError([f"{path}: invalid TOML: {what}"], path) from None
    return from_mapping(data, path)


def load(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate one configuration file."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError([f"{name}: cannot read: {e.strerror or e}"], name) from None
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError([f"{name}: expected a configuration file of at most "
                           f"{MAX_FILE_SIZE} bytes, this one is larger"], name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([f"{name}:{line}: expected UTF-8 text, got byte "
                           f"0x{raw[e.start]:02x}"], name) from None
    return loads(text, name)
