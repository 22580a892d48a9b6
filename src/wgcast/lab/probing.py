"""Probing a lab: a prober process paced in a node's namespace (the failover meter,
lab/prober.py), and echo queries sent from this process (who answers an address from
each node: the catchment).

Not to be confused with the daemon's endpoint probes or its health checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from wgcast.lab.echo import parse_reply
from wgcast.lab.handle import LabHandle
from wgcast.lab.system import LabError, alive, in_netns, signal_pid, tail, wait_gone


class ProberRun:
    """A prober running in a node's namespace; ``wait()`` returns its JSON result."""

    def __init__(self, lab: LabHandle, node: str, pid: int, starttime: int | None,
                 popen: subprocess.Popen[bytes] | None, out_path: str, log_path: str,
                 duration: float, linger: float) -> None:
        self.lab, self.node, self.pid, self.starttime = lab, node, pid, starttime
        self.popen, self.out_path, self.log_path = popen, out_path, log_path
        self.duration, self.linger = duration, linger
        self.started = time.monotonic()

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return alive(self.pid, self.starttime)

    def wait_started(self, timeout: float = 10.0) -> bool:
        """Wait until the prober is sending: a realtime one switches to SCHED_FIFO, any
        one opens its socket, right before its first query. False at the deadline."""
        deadline = time.monotonic() + timeout
        fds = f"/proc/{self.pid}/fd"
        while time.monotonic() < deadline and self.running():
            with contextlib.suppress(OSError):
                if os.sched_getscheduler(self.pid) == os.SCHED_FIFO:
                    return True
                if any(os.readlink(os.path.join(fds, fd)).startswith("socket:")
                       for fd in os.listdir(fds)):
                    return True
            time.sleep(0.005)
        return False

    def stop(self) -> None:
        """Ask the prober to finish now (it still writes its results)."""
        signal_pid(self.pid, signal.SIGTERM, self.starttime)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        if timeout is None:
            timeout = self.duration + self.linger + 15.0
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                self.stop()
                wait_gone([self.pid], 3.0)
                break
            time.sleep(0.02)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(1)
        try:
            with open(self.out_path) as f:
                result: dict[str, Any] = json.load(f)
        except (OSError, ValueError) as e:
            raise LabError(f"prober on {self.node} left no result ({e}); log:\n"
                           f"{tail(self.log_path)}") from None
        if "error" in result:
            raise LabError(f"prober on {self.node}: {result['error']}")
        result["node"] = self.node
        return result


def start_prober(lab: LabHandle, node: str, addr: str | None = None, port: int | None = None,
                 duration: float = 5.0, interval_ms: float = 1.0,
                 timeout_ms: float = 1000.0, source: str | None = None,
                 linger: float | None = None, realtime: bool = True) -> ProberRun:
    """Start a prober in ``node``'s namespace (one query per ``interval_ms`` to
    addr:port, default: anycast group 0, echo port). ``.wait()`` returns its result
    (see wgcast.lab.prober). ``realtime``: SCHED_FIFO for precise pacing."""
    addr = addr or lab.anycast(0)
    port = lab.echo_port if port is None else port
    linger = min(timeout_ms / 1000, 2.0) if linger is None else linger
    tag = f"{node}.prober.{time.time_ns()}"
    out = os.path.join(lab.dir, tag + ".json")
    cmd = [sys.executable, "-m", "wgcast.lab.prober", "--addr", addr, "--port", str(port),
           "--duration", str(duration), "--interval-ms", str(interval_ms),
           "--timeout-ms", str(timeout_ms), "--linger", str(linger), "--out", out]
    if source:
        cmd += ["--source", source]
    if realtime:
        cmd.append("--rt")
    pid, st = lab.launch(node, cmd, "prober", tag + ".log")
    return ProberRun(lab, node, pid, st, lab.popens.get(pid), out,
                     os.path.join(lab.dir, tag + ".log"), duration, linger)

def run_prober(lab: LabHandle, node: str, addr: str | None = None, port: int | None = None,
               duration: float = 5.0, **kw: Any) -> dict[str, Any]:
    """start_prober(...).wait()"""
    return start_prober(lab, node, addr, port, duration, **kw).wait()

def query_many(lab: LabHandle, nodes: Sequence[str], addr: str, port: int | None = None,
               timeout: float = 1.0, tries: int = 3,
               payload: bytes = b"q") -> dict[str, tuple[str, float] | None]:
    """From each node, ask the echo service at addr:port who answers.

    Runs in this process (sockets created inside each namespace): returns
    {node: (answering node, rtt ms) or None}. ``tries`` queries per node, spread
    over ``timeout``; the first answer counts.
    """
    port = lab.echo_port if port is None else port
    socks: dict[socket.socket, str] = {}
    result: dict[str, tuple[str, float] | None] = {n: None for n in nodes}
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        for n in nodes:
            with in_netns(lab.ns(n)):
                s = socket.socket(fam, socket.SOCK_DGRAM)
            s.setblocking(False)
            socks[s] = n
        sent_at: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        next_try = 0.0
        k = 0
        while time.monotonic() < deadline and any(v is None for v in result.values()):
            now = time.monotonic()
            if k < tries and now >= next_try:
                for s, n in socks.items():
                    if result[n] is None:
                        with contextlib.suppress(OSError):
                            s.sendto(payload, (addr, port))
                            sent_at.setdefault(n, now)
                            sent_at[n + "#last"] = now
                k += 1
                next_try = now + timeout / max(tries, 1)
            wait = max(0.0, min(deadline, next_try if k < tries else deadline) - now)
            r, _, _ = select.select(list(socks), [], [], wait)
            for s in r:
                n = socks[s]
                for _ in range(16):
                    try:
                        data = s.recv(65535)
                    except OSError:
                        break
                    try:
                        name, _ = parse_reply(data)
                    except ValueError:
                        continue
                    if result[n] is None:
                        t = time.monotonic() - sent_at.get(n + "#last", now)
                        result[n] = (name, round(t * 1000, 3))
    finally:
        for s in socks:
            s.close()
    return result

def query(lab: LabHandle, node: str, addr: str, port: int | None = None,
          timeout: float = 1.0) -> tuple[str, float] | None:
    """(answering node, rtt ms) of one echo query from ``node``, None if no answer."""
    return query_many(lab, [node], addr, port, timeout)[node]

def catchment(lab: LabHandle, addr: str | None = None, port: int | None = None,
              nodes: Sequence[str] | None = None,
              timeout: float = 1.0) -> dict[str, str | None]:
    """{node: instance answering its queries to the anycast address (None: none)}."""
    addr = addr or lab.anycast(0)
    res = query_many(lab, list(nodes) if nodes is not None else list(lab.nodes),
                          addr, port, timeout)
    return {n: (v[0] if v else None) for n, v in res.items()}

def catchments(lab: LabHandle, addr: str | None = None, **kw: Any) -> dict[str | None, list[str]]:
    """{instance: [nodes it catches]} (key None: nodes without an answer)."""
    out: dict[str | None, list[str]] = {}
    for n, inst in catchment(lab, addr, **kw).items():
        out.setdefault(inst, []).append(n)
    return out
