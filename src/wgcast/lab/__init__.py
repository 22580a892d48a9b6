"""The lab: a real wgcast mesh in network namespaces (see wgcast.lab.core).

Imports are lazy so that ``python -m wgcast.lab.relay`` (echo, prober) does not load the
whole lab first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "GroupInfo",
    "Lab",
    "LabError",
    "LinkInfo",
    "NodeInfo",
    "ProberRun",
    "teardown",
    "teardown_all",
]

if TYPE_CHECKING:
    from wgcast.lab.core import (
        GroupInfo,
        Lab,
        LinkInfo,
        NodeInfo,
        ProberRun,
        teardown,
        teardown_all,
    )
    from wgcast.lab.system import LabError


def __getattr__(name: str) -> Any:
    if name == "LabError":
        from wgcast.lab import system

        return system.LabError
    if name in __all__:
        from wgcast.lab import core

        return getattr(core, name)
    raise AttributeError(f"module 'wgcast.lab' has no attribute {name!r}")
