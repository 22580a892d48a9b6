"""The lab: a real wgcast mesh in network namespaces (see wgcast.lab.core)."""

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
