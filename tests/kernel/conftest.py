"""Fixtures for tests against the kernel's WireGuard (run inside the guest of
`make test-kernel`; skipped where the kernel has no WireGuard module, like on the host).

Every test gets its own network namespace, deleted afterwards with everything in it
(kernel WireGuard links die with their namespace), also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from wgcast.lab.system import in_netns, kernel_module

T = TypeVar("T")
_counter = itertools.count()


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel WireGuard tests need root"
    if not kernel_module("wireguard"):
        return "this kernel has no WireGuard module (run `make test-kernel`)"
    return None


def sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace `ns` (generous timeout: the guest is slow)."""
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check,
                          capture_output=True, text=True, timeout=120)


class KNetns:
    """A namespace with helpers for kernel WireGuard links."""

    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(self.name, *cmd, check=check)

    def add_wg(self, ifname: str) -> str:
        self.sh("ip", "link", "add", ifname, "type", "wireguard")
        return ifname

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine with the event loop (and the threads it starts, like the
        netlink worker) inside this namespace."""
        with in_netns(self.name):
            return asyncio.run(make())

    def dump(self, ifname: str) -> list[list[str]]:
        """`wg show IFACE dump` as rows of fields."""
        out = self.sh("wg", "show", ifname, "dump").stdout
        return [line.split("\t") for line in out.splitlines()]


def make_knetns() -> KNetns:
    name = f"wgk{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=60)
    ns = KNetns(name)
    sh(name, "ip", "link", "set", "lo", "up")
    return ns


@pytest.fixture
def knetns() -> Iterator[KNetns]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    ns = make_knetns()
    try:
        yield ns
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=60)


@pytest.fixture
def knetns2() -> Iterator[tuple[KNetns, KNetns]]:
    """Two namespaces joined by a veth: 10.99.0.1/24 (a, dev "va") - 10.99.0.2 (b, "vb")."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    a, b = make_knetns(), make_knetns()
    try:
        a.sh("ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b.name)
        a.sh("ip", "address", "add", "10.99.0.1/24", "dev", "va")
        a.sh("ip", "link", "set", "va", "up")
        b.sh("ip", "address", "add", "10.99.0.2/24", "dev", "vb")
        b.sh("ip", "link", "set", "vb", "up")
        yield a, b
    finally:
        for ns in (a, b):
            with contextlib.suppress(Exception):
                subprocess.run(["ip", "netns", "del", ns.name], capture_output=True,
                               timeout=60)
