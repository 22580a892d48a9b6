"""Names, addresses and ports of a lab: pure functions of the lab id and node index.

Every name carries the 4-hex-digit lab id, so labs on one machine (and helpers running
at once) never collide: namespaces ``wgl-XXXX-<node>``, WireGuard interfaces
``wgXXXX<i>`` (their UAPI sockets share /var/run/wireguard across namespaces).
"""

from __future__ import annotations

import ipaddress
import os

DEFAULT_BASE = "/run/wgcast-lab"
NS_PREFIX = "wgl-"
RELAY = "relay"
MAX_LAB_NODES = 1000
#: Where every lab daemon serves its Prometheus metrics, inside its namespace.
LAB_METRICS = "127.0.0.1:9586"
WG_PORT_BASE = 20000
RELAY_PORT_BASE = 30000
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/15")
STATE_FILE = "lab.json"
#: The faults `Lab.fail` injects (see lab/faults.py).
HOWS = ("daemon", "node", "link", "service", "health", "drain")
WIREGUARDS = ("kernel", "go")
LINK_MODES = ("netem", "relay")


def base_dir(base: str | None = None) -> str:
    return base or os.environ.get("WGCAST_LAB_DIR") or DEFAULT_BASE


def ns_name(labid: str, node: str) -> str:
    return f"{NS_PREFIX}{labid}-{node}"


def wg_name(labid: str, index: int) -> str:
    return f"wg{labid}{index}"


def unicast_address(labid: str, index: int) -> str:
    """fd5a:<labid>:<index>::1 in canonical form (the index digits read as hex)."""
    return str(ipaddress.IPv6Address(f"fd5a:{labid}:{index}::1"))


def anycast_address(labid: str, k: int) -> str:
    return str(ipaddress.IPv6Address(f"fd5a:{labid}:ffff::{0x53 + k:x}"))


def underlay(index: int) -> tuple[str, str]:
    """(relay side, node side) addresses of node ``index``'s /30."""
    base = int(UNDERLAY.network_address) + 4 * index
    return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))
