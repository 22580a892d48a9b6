"""The lab's processes: started detached in a namespace and recorded in the state (any
process driving the lab finds them, `down()` kills them), and the long-running ones a
lab has: daemons, services (``wgcast join`` holding an echo) and bare echo services."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from wgcast.lab.handle import LabHandle
from wgcast.lab.state import ProcessRecord, failure_removed
from wgcast.lab.system import (
    LabError,
    alive,
    signal_pid,
    spawn,
    tail,
    timeout_scale,
    wait_gone,
)

log = logging.getLogger("wgcast.lab")


def launch(lab: LabHandle, node: str, cmd: Sequence[str], kind: str, log_name: str,
           env: dict[str, str] | None = None) -> tuple[int, int | None]:
    """Start a detached process in a node's (or the relay's) namespace; recorded."""
    log_path = os.path.join(lab.dir, log_name)
    sp = spawn(lab.ns(node), cmd, log_path, env)
    lab.popens[sp.pid] = sp.popen
    rec = ProcessRecord(pid=sp.pid, starttime=sp.starttime, kind=kind, node=node,
                        log=log_path, cmd=list(cmd), started=time.time())
    lab.mutate(lambda st: st.processes.append(rec))
    return sp.pid, sp.starttime


def select(records: Sequence[ProcessRecord], popens: dict[int, subprocess.Popen[bytes]],
           node: str | None = None, kind: str | None = None,
           alive_only: bool = True) -> list[dict[str, Any]]:
    """Recorded processes (pid, kind, node, log, cmd), filtered; ``alive`` added."""
    out = []
    for p in records:
        if node is not None and p.node != node:
            continue
        if kind is not None and p.kind != kind:
            continue
        po = popens.get(p.pid)
        if po is not None:
            po.poll()
        a = alive(p.pid, p.starttime)
        if alive_only and not a:
            continue
        out.append({**p.to_json(), "alive": a})
    return out


def wgcast_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "wgcast")
    if not os.path.exists(exe):
        exe = shutil.which("wgcast") or exe
    return exe


# ---------------------------------------------------------------------- daemons
def start_daemons(lab: LabHandle, names: Sequence[str], wait: bool) -> None:
    """Start the daemon (the router's command) on these nodes, then, with ``wait``,
    wait until each one is ready (`Lab.wait_daemons`: the router says what ready is)."""
    for name in names:
        if lab.process(name, "daemon") is not None:
            raise LabError(f"the daemon of {name} is already running")
        lab.launch(name, lab.daemon_command(name), "daemon", f"{name}.daemon.log",
                   env={"PYTHONUNBUFFERED": "1"})
        lab.mutate(failure_removed("daemons", name))
    if wait:
        lab.wait_daemons(names, lab.daemon_ready_timeout)


def wait_api_sockets(lab: LabHandle, names: Sequence[str], timeout: float = 10.0) -> None:
    """Wait until each daemon's API socket exists (a daemon that exits is an error, with
    its log tail); at the deadline, a warning."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            if lab.process(name, "daemon") is None:
                raise LabError(f"the daemon of {name} exited; log "
                               f"{lab.dir}/{name}.daemon.log:\n"
                               f"{tail(os.path.join(lab.dir, name + '.daemon.log'))}")
            if os.path.exists(lab.nodes[name].api_socket):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            log.warning("lab %s: daemons still without an API socket after %.1fs: %s",
                        lab.id, timeout, ", ".join(sorted(pending)))
            return
        # Each poll reads the state file and /proc: in a slow guest, polling at the
        # host's pace took CPU from the daemons it waits for.
        time.sleep(0.05 * timeout_scale())


def stop_daemon(lab: LabHandle, node: str, sig: int = signal.SIGTERM,
                wait: float = 5.0) -> bool:
    """Signal the daemon of ``node`` (SIGTERM: clean stop; SIGKILL: crash)."""
    p = lab.process(node, "daemon")
    if p is None:
        return False
    signal_pid(p["pid"], sig, p["starttime"])
    if wait:
        po = lab.popens.get(p["pid"])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(p["pid"], p["starttime"]):
            if po is not None:
                po.poll()
            time.sleep(0.01)
    return True


# ---------------------------------------------------------------------- services
def service_command(lab: LabHandle, node: str, port: int | None = None) -> list[str]:
    """``wgcast join <the node's groups> -- python -m wgcast.lab.echo ...``"""
    n = lab.node(node)
    port = lab.echo_port if port is None else port
    return [wgcast_exe(), "join", "--socket", n.api_socket, "--wait", "20",
            *n.serves, "--", sys.executable, "-m", "wgcast.lab.echo", "--name", node,
            "--port", str(port), "--rt"]


def start_services(lab: LabHandle, names: Sequence[str], wait: bool,
                   timeout: float) -> None:
    """Start the instances of ``names`` as services held by ``wgcast join``, then (with
    ``wait``) wait until their daemons serve them."""
    for name in names:
        if not lab.nodes[name].serves:
            raise LabError(f"{name} serves no anycast group")
        if lab.process(name, "service") is not None:
            raise LabError(f"the service of {name} is already running")
        lab.launch(name, service_command(lab, name), "service", f"{name}.service.log",
                   env={"PYTHONUNBUFFERED": "1"})
    if wait:
        lab.wait_served(names, timeout)


def wait_served(lab: LabHandle, nodes: Sequence[str], timeout: float = 15.0,
                served: bool = True) -> None:
    """Wait until every group of each node is served (or, served=False, is not)."""
    deadline = time.monotonic() + timeout
    pending = set(nodes)
    last: dict[str, Any] = {}
    while pending:
        for name in sorted(pending):
            try:
                gs = lab.groups_of(name)
            except LabError as e:
                last[name] = str(e)
                continue
            last[name] = {p: g["state"] for p, g in gs.items()}
            if all(gs.get(p, {}).get("served") == served for p in lab.nodes[name].serves):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            logs = "\n".join(
                f"{n}: services {[(p['pid'], p['alive']) for p in lab.processes(n, 'service', alive_only=False)][-3:]}\n"  # noqa: E501
                f"{tail(os.path.join(lab.dir, n + '.service.log'), 5)}\n"
                f"daemon: {tail(os.path.join(lab.dir, n + '.daemon.log'), 8)}"
                for n in sorted(pending))
            raise LabError(f"groups not {'served' if served else 'withdrawn'} after "
                           f"{timeout:g}s on {', '.join(sorted(pending))} "
                           f"(states: {last}); service logs:\n{logs}")
        time.sleep(0.02 * timeout_scale())  # as in wait_daemons


def kill_service(lab: LabHandle, node: str, sig: int = signal.SIGKILL,
                 wait: float = 5.0) -> bool:
    """Signal the service of ``node``: its whole process group (``wgcast join`` and the
    echo it runs). SIGKILL = the service crashes."""
    p = lab.process(node, "service")
    if p is None:
        return False
    if alive(p["pid"], p["starttime"]):
        lab.killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p["pid"], sig)
    if wait:
        po = lab.popens.get(p["pid"])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(p["pid"], p["starttime"]):
            if po is not None:
                po.poll()
            time.sleep(0.005)
        if sig != signal.SIGKILL and alive(p["pid"], p["starttime"]):
            log.warning("lab %s: the service of %s ignored signal %d for %.0fs; "
                        "SIGKILL", lab.id, node, sig, wait)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p["pid"], signal.SIGKILL)
            wait_gone([p["pid"]], 2.0)
    return True


def drain(lab: LabHandle, node: str, **params: float) -> list[dict[str, Any]]:
    """Drain every group ``node`` serves (returns once drained); the drain replies."""
    out = []
    for prefix in lab.node(node).serves:
        out.append(lab.api(node, {"cmd": "drain", "prefix": prefix, **params},
                           timeout=60.0))
    return out


def start_echo(lab: LabHandle, node: str, port: int | None = None) -> int:
    """Start the echo service on ``node`` (UDP [::]:port); returns its pid."""
    port = lab.echo_port if port is None else port
    pid, _ = lab.launch(node, [sys.executable, "-m", "wgcast.lab.echo", "--name", node,
                               "--port", str(port), "--rt"], "echo", f"{node}.echo.log")
    return pid
