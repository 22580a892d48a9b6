"""The daemon configuration file the lab writes for each node (TOML).

::

    interface = "wgXXXX1"
    addresses = ["fd5a:XXXX:1::1/128"]          # this node's own unicast prefixes
    anycast = ["fd5a:XXXX:ffff::53/128"]        # every group prefix of the mesh
    api_socket = "/run/wgcast-lab/XXXX/n1.sock"
    state_file = "/run/wgcast-lab/XXXX/n1.state"

    [timers]
    profile = "default"                         # or "fast"

    [[peers]]
    name = "n2"
    public_key = "<base64>"
    endpoints = ["198.18.0.5:30000"]
    may_originate = ["fd5a:XXXX:2::1/128"]     # the peer's own unicast prefix (the
                                                # daemon adds the anycast prefixes)

    [[groups]]                                  # only on nodes serving an instance
    prefix = "fd5a:XXXX:ffff::53/128"
    static = false                              # true in the old static mode: the
                                                # instance is a service (wgcast join)
    [[groups.health]]                           # services mode: fails while the file
    type = "exec"                               # /run/wgcast-lab/XXXX/n1.unhealthy exists
    command = ["/usr/bin/test", "!", "-e", "/run/wgcast-lab/XXXX/n1.unhealthy"]
    interval = "200ms"

The config is built as a dict (so a caller can adjust it with a hook) and serialized by
the small writer below (tomllib can read TOML but not write it).
"""

from __future__ import annotations

import json
import math
from typing import Any


def _scalar(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError(f"{where}: TOML cannot hold {v}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_scalar(x, where) for x in v) + "]"
    raise ValueError(f"{where}: cannot write {type(v).__name__} to TOML")


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(doc: dict[str, Any]) -> str:
    """Serialize a dict of scalars, lists, tables and arrays of tables to TOML."""
    lines: list[str] = []

    def emit(table: dict[str, Any], path: list[str]) -> None:
        for k, v in table.items():
            if not (_is_table(v) or _is_table_array(v)):
                lines.append(f"{_key(k)} = {_scalar(v, '.'.join([*path, k]))}")
        for k, v in table.items():
            if _is_table(v):
                lines.append("")
                lines.append(f"[{'.'.join(_key(p) for p in [*path, k])}]")
                emit(v, [*path, k])
        for k, v in table.items():
            if _is_table_array(v):
                for item in v:
                    lines.append("")
                    lines.append(f"[[{'.'.join(_key(p) for p in [*path, k])}]]")
                    emit(item, [*path, k])

    emit(doc, [])
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    if k and all(c.isalnum() or c in "_-" for c in k):
        return k
    return json.dumps(k)


def node_config(
    *,
    interface: str,
    addresses: list[str],
    anycast: list[str],
    api_socket: str,
    state_file: str,
    timers: str,
    peers: list[dict[str, Any]],
    groups: list[str],
    static: bool = True,
    health: list[dict[str, Any]] | None = None,
    metrics: str | None = None,
) -> dict[str, Any]:
    """The config dict of one node (see the module doc)."""
    cfg: dict[str, Any] = {
        "interface": interface,
        "addresses": list(addresses),
        "anycast": list(anycast),
        "api_socket": api_socket,
        "state_file": state_file,
        "timers": {"profile": timers},
        "peers": [
            {"name": p["name"], "public_key": p["public_key"], "endpoints": list(p["endpoints"]),
             **({"may_originate": list(p["may_originate"])} if "may_originate" in p else {}),
             **({"probe_port": p["probe_port"]} if "probe_port" in p else {})}
            for p in peers
        ],
    }
    if metrics:
        cfg["metrics"] = metrics
    if groups:
        cfg["groups"] = [{"prefix": g, "static": static, **({"health": health} if health else {})}
                         for g in groups]
    return cfg
