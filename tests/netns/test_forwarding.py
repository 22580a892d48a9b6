"""Forwarding off on a transit node: an error in the log and in `wgcast status`.

A real 3-node wireguard-go line (n1 - n2 - n3, IPv6 unicast addresses); n2's IPv6
forwarding is turned off, then on again. Every wait has a deadline; the lab tears
itself down on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.netns

if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
    pytest.skip("needs root and wireguard-go", allow_module_level=True)

from wgcast.lab.core import Lab  # noqa: E402
from wgcast.lab.system import netns_sysctl, wait_for  # noqa: E402


@pytest.fixture
def line3() -> Iterator[Lab]:
    from wgcast.topology import Link, Topology

    topo = Topology(["n1", "n2", "n3"], [Link("n1", "n2", 2.0, id=0), Link("n2", "n3", 2.0, id=1)],
                    spec="line:3")
    with Lab(topo, instances="n1,n3", wireguard="go") as lab:
        yield lab


def _through(lab: Lab) -> bool:
    return lab.query("n1", lab.unicast("n3"), timeout=0.3) is not None and \
        lab.query("n3", lab.unicast("n1"), timeout=0.3) is not None


def _problems(lab: Lab) -> list[str]:
    return list(lab.api("n2", {"cmd": "status"})["status"]["problems"])


def test_forwarding_off_on_a_transit_node_is_an_error(line3: Lab) -> None:
    lab = line3
    wait_for(lambda: _through(lab), 20, "n1 <-> n3 through n2")
    ns = lab.node("n2").ns
    netns_sysctl(ns, {"net.ipv6.conf.all.forwarding": "0"})
    t0 = time.monotonic()
    try:
        # The check runs every 5 s.
        wait_for(lambda: any("IPv6 forwarding is off" in p for p in _problems(lab)), 15,
                 "the IPv6 forwarding error in status")
        took = time.monotonic() - t0
        assert not _through(lab)  # what the error is about: the routes look installed
        out = subprocess.run([sys.executable, "-m", "wgcast.cli.main", "status", "--socket",
                              lab.node("n2").api_socket], capture_output=True, text=True,
                             timeout=30).stdout
        assert "ERROR IPv6 forwarding is off" in out, out
        with open(os.path.join(lab.dir, "n2.daemon.log")) as f:
            lines = [ln for ln in f if "forwarding is off" in ln]
        assert len(lines) == 1 and " ERROR " in lines[0], lines
    finally:
        netns_sysctl(ns, {"net.ipv6.conf.all.forwarding": "1"})
    wait_for(lambda: not _problems(lab), 15, "the error resolved")
    wait_for(lambda: _through(lab), 10, "traffic through n2 again")
    with open(os.path.join(lab.dir, "n2.daemon.log")) as f:
        assert any("resolved: IPv6 forwarding is off" in ln for ln in f)
    print(f"\nforwarding off on n2: error in status after {took:.1f}s, resolved when on")
