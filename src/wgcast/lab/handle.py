"""What the lab's parts (build, processes, faults, probing, the routers) may use of a
`Lab`: a Protocol, so that they depend on this file and not on lab/core.py (which
composes them; see docs/architecture.md, "The lab")."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from wgcast.lab.state import GroupInfo, LabState, LinkInfo, NodeInfo
from wgcast.topology import Topology


class LabHandle(Protocol):
    """A lab being built or up (lab/core.py's `Lab`)."""

    id: str
    dir: str
    seed: int
    topology: Topology
    nodes: dict[str, NodeInfo]
    links: list[LinkInfo]
    groups: list[GroupInfo]
    wireguard: str  # "kernel" | "go"
    link_mode: str  # "netem" | "relay"
    relay_sched: str
    timers: str
    services: bool
    echo_port: int
    daemon_cmd: list[str] | None
    preassign_anycast: bool
    daemon_ready_timeout: float
    health_interval: str
    health_fall: int
    health_rise: int
    #: time.monotonic() of the last kill_service signal (precise failure timing).
    killed_at: float | None
    #: Popen objects of the processes this Lab object started (reaped when polled).
    popens: dict[int, subprocess.Popen[bytes]]

    @property
    def state(self) -> LabState: ...

    def mutate(self, fn: Callable[[LabState], None]) -> None: ...

    def node(self, name: str) -> NodeInfo: ...

    def ns(self, node: str) -> str: ...

    def anycast(self, group: int = 0) -> str: ...

    def links_between(self, a: str, b: str) -> list[LinkInfo]: ...

    def launch(self, node: str, cmd: Sequence[str], kind: str, log_name: str,
               env: dict[str, str] | None = None) -> tuple[int, int | None]: ...

    def processes(self, node: str | None = None, kind: str | None = None,
                  alive_only: bool = True) -> list[dict[str, Any]]: ...

    def process(self, node: str, kind: str) -> dict[str, Any] | None: ...

    def wg_show(self, node: str) -> dict[str, Any]: ...

    def daemon_command(self, node: str) -> list[str]: ...

    def health_check(self, node: str) -> dict[str, Any]: ...

    def unhealthy_flag(self, node: str) -> str: ...

    def api(self, node: str, request: dict[str, Any],
            timeout: float = 10.0) -> dict[str, Any]: ...

    def groups_of(self, node: str) -> dict[str, dict[str, Any]]: ...

    def start_echo(self, node: str, port: int | None = None) -> int: ...

    def start_daemons(self, nodes: Sequence[str] | None = None,
                      wait: bool = True) -> None: ...

    def start_daemon(self, node: str, wait: bool = True) -> None: ...

    def wait_daemons(self, nodes: Sequence[str] | None = None,
                     timeout: float = 10.0) -> None: ...

    def stop_daemon(self, node: str, sig: int = ..., wait: float = 5.0) -> bool: ...

    def start_services(self, nodes: Sequence[str] | None = None, wait: bool = True,
                       timeout: float | None = None) -> None: ...

    def wait_served(self, nodes: Sequence[str], timeout: float = 15.0,
                    served: bool = True) -> None: ...

    def kill_service(self, node: str, sig: int = ..., wait: float = 5.0) -> bool: ...

    def drain(self, node: str, **params: float) -> list[dict[str, Any]]: ...

    def set_link(self, a: str, b: str | None = None, *, link_id: int | None = None,
                 delay_ms: float | None = None, jitter_ms: float | None = None,
                 loss: float | None = None, up: bool | None = None,
                 direction: str = "both") -> list[int]: ...
