"""Fixtures for tests against real wireguard-go in throwaway network namespaces.

Every namespace and interface name is unique (UAPI sockets in /var/run/wireguard are
shared by all namespaces), and everything is torn down in a finalizer, also when the
test fails: wireguard-go runs in the foreground (WG_PROCESS_FOREGROUND=1) as our own
child, so we kill exactly the process we started, then delete the namespace.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

SOCKET_DIR = "/var/run/wireguard"
_counter = itertools.count()


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "netns tests need root"
    for tool in ("ip", "wireguard-go"):
        if shutil.which(tool) is None:
            return f"netns tests need {tool}"
    return None


def unique_ifname(prefix: str = "wgt") -> str:
    """<= 15 chars, unique across concurrent test runs (pid) and within one (counter)."""
    return f"{prefix}{os.getpid() % 0xFFFFF:05x}{next(_counter):03x}"[:15]


@dataclass
class Netns:
    """A network namespace with the wireguard-go processes started in it."""

    name: str
    procs: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=10,
        )

    def start_wireguard_go(self, ifname: str | None = None, timeout: float = 5.0) -> str:
        """Start `wireguard-go IFNAME` inside the namespace; wait for its UAPI socket."""
        ifname = ifname or unique_ifname()
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, "wireguard-go", ifname],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append((proc, ifname))
        sock = os.path.join(SOCKET_DIR, f"{ifname}.sock")
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"wireguard-go {ifname} exited {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go {ifname}: no UAPI socket after {timeout}s")
            time.sleep(0.01)
        return ifname

    def stop_wireguard_go(self, ifname: str) -> None:
        for proc, name in list(self.procs):
            if name == ifname:
                _stop(proc, name)
                self.procs.remove((proc, name))

    def close(self) -> None:
        for proc, name in self.procs:
            _stop(proc, name)
        self.procs.clear()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


def _stop(proc: subprocess.Popen[bytes], ifname: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)
    if proc.stderr:
        proc.stderr.close()
    sock = os.path.join(SOCKET_DIR, f"{ifname}.sock")
    if os.path.exists(sock):  # only ever our own, uniquely named socket
        os.unlink(sock)


def make_netns() -> Netns:
    name = f"wgcast-t{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    ns = Netns(name)
    try:
        ns.run("ip", "link", "set", "lo", "up")
    except BaseException:
        ns.close()
        raise
    return ns


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace (lo up), deleted afterwards with all it contains."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    ns = make_netns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def wg_iface(netns: Netns) -> str:
    """A wireguard-go interface inside `netns`; its name."""
    return netns.start_wireguard_go()
