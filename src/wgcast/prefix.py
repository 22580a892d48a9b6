"""The one prefix type outside the Babel core, and its order.

An IP prefix is a plain `ipaddress` network everywhere: an AllowedIPs entry, a kernel
route, a group, a Babel prefix. The aliases elsewhere (`dataplane.types.Prefix`,
`daemon.config.Prefix`, `anycast.Prefix`) are this one, re-exported for their callers.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
"""An IPv4 or IPv6 network, canonical (host bits zero)."""


def parse_prefix(text: str) -> Prefix:
    """Parse a prefix strictly (host bits must be zero, as WireGuard would store it)."""
    return ipaddress.ip_network(text, strict=True)


def prefix_key(p: Prefix) -> tuple[int, int, int]:
    """Total order over IPv4 and IPv6 prefixes (they do not compare with each other)."""
    return (p.version, int(p.network_address), p.prefixlen)


__all__ = ["Prefix", "parse_prefix", "prefix_key"]
