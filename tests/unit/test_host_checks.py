"""What is wrong with the host, said: forwarding off on a node that routes for others."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

import pytest
from daemon_fakes import Mesh, config_text, running, until

from wgcast import keys

A4, A6 = ipaddress.ip_network("10.0.1.0/24"), ipaddress.ip_network("fd00:1::/64")
C4, C6 = ipaddress.ip_network("10.0.3.0/24"), ipaddress.ip_network("fd00:3::/64")


def test_forwarding_off_on_a_transit_node_is_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """a - b - c: b routes both families between a and c. With forwarding off b says so
    (one error line per family, and in status); turned on, the problems go."""
    pa, pb, pc = (keys.generate_private() for _ in range(3))
    ka, kb, kc = (keys.public_from_private(k) for k in (pa, pb, pc))
    sysctl = {"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0"}

    async def main() -> None:
        mesh = Mesh()
        t = str(tmp_path)
        mesh.add("a", pa, config_text("a", t, {"b": kb}, f'addresses = ["{A4}", "{A6}"]'))
        b = mesh.add("b", pb, config_text(
            "b", t, {"a": ka, "c": kc},
            peer_extra={"a": f'may_originate = ["{A4}", "{A6}"]',
                        "c": f'may_originate = ["{C4}", "{C6}"]'}))
        mesh.add("c", pc, config_text("c", t, {"b": kb}, f'addresses = ["{C4}", "{C6}"]'))
        b.daemon.read_sysctl = sysctl.get
        async with running(mesh):
            await until(lambda: all(b.device.holder(p) is not None for p in (A4, A6, C4, C6)),
                        10, "b routes a's and c's prefixes")
            await until(lambda: len(b.daemon.check_forwarding()) == 2, 10, "two problems")
            st = b.daemon.status()
            assert any("IPv4 forwarding is off" in p for p in st["problems"])
            assert any("IPv6 forwarding is off" in p for p in st["problems"])
            b.daemon.check_forwarding()  # still off: no second error line
            sysctl["net/ipv4/ip_forward"] = "1"
            assert [p[:4] for p in b.daemon.check_forwarding()] == ["IPv6"]
            sysctl["net/ipv6/conf/all/forwarding"] = "1"
            assert b.daemon.check_forwarding() == []
            assert b.daemon.status()["problems"] == []

    with caplog.at_level(logging.INFO, logger="wgcast"):
        asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len([e for e in errors if "forwarding is off" in e]) == 2, errors
    assert sum("resolved: IPv" in r.getMessage() for r in caplog.records) == 2


def test_an_edge_node_with_forwarding_off_is_fine(tmp_path: Path) -> None:
    """a has one neighbour: nobody routes through it; forwarding off is not a problem."""
    pa, pb = keys.generate_private(), keys.generate_private()
    ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)

    async def main() -> None:
        mesh = Mesh()
        t = str(tmp_path)
        a = mesh.add("a", pa, config_text("a", t, {"b": kb},
                                          peer_extra={"b": f'may_originate = ["{C4}"]'}))
        mesh.add("b", pb, config_text("b", t, {"a": ka}, f'addresses = ["{C4}"]'))
        a.daemon.read_sysctl = lambda key: "0"
        async with running(mesh):
            await until(lambda: a.device.holder(C4) is not None, 10, "a routes C4")
            assert a.daemon.check_forwarding() == []

    asyncio.run(main())
