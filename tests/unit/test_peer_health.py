"""Why a peer is down: the reasons of `wgcast peers` from what WireGuard shows."""

from __future__ import annotations

import ipaddress
import logging
import socket

import pytest

from wgcast import keys
from wgcast.daemon.peer_health import (
    DIAGNOSE_AFTER,
    NO_BABEL,
    NO_HANDSHAKE,
    NOT_ON_DEVICE,
    WRONG_KEY,
    PeerDoctor,
    PeerFacts,
    diagnose,
)
from wgcast.daemon.ports import NeighbourSnapshot, PeerInfo
from wgcast.dataplane.types import Device, Peer


def facts(**kw: object) -> PeerFacts:
    base: dict[str, object] = {"name": "b", "up": False, "down_for": DIAGNOSE_AFTER + 1,
                               "endpoint": "192.0.2.1:51820", "tx_bytes": 1480}
    base.update(kw)
    return PeerFacts(**base)  # type: ignore[arg-type]


def test_up_or_not_down_long_enough_has_no_reason() -> None:
    assert diagnose(facts(up=True)) is None
    assert diagnose(facts(down_for=DIAGNOSE_AFTER - 1)) is None


def test_a_peer_missing_on_the_device_is_said_at_once() -> None:
    p = diagnose(facts(on_device=False, down_for=0.0))
    assert p is not None and p.kind == NOT_ON_DEVICE and "wg set" in p.detail


def test_no_endpoint_no_handshake() -> None:
    p = diagnose(facts(endpoint=None, tx_bytes=0))
    assert p is not None and p.kind == NO_HANDSHAKE and "no endpoint" in p.detail


@pytest.mark.parametrize(("reach", "kind", "fragment"), [
    ("refused", NO_HANDSHAKE, "nothing listens at 192.0.2.1:51820"),
    ("unreachable (No route to host)", NO_HANDSHAKE, "No route to host"),
    (None, NO_HANDSHAKE, "no answer from"),
    ("answers", WRONG_KEY, "check its public key"),
])
def test_initiations_without_answer(reach: str | None, kind: str, fragment: str) -> None:
    p = diagnose(facts(reach=reach))
    assert p is not None and p.kind == kind and fragment in p.detail, p


def test_an_expired_session_is_no_handshake_with_its_age() -> None:
    p = diagnose(facts(handshake_age=400.0, reach="refused", rx_bytes=9000))
    assert p is not None and p.kind == NO_HANDSHAKE and "last handshake 400s ago" in p.detail


def test_a_session_without_hellos_is_no_babel() -> None:
    p = diagnose(facts(handshake_age=3.0, rx_bytes=92, control="fe80::2",
                       our_control="fe80::1"))
    assert p is not None and p.kind == NO_BABEL
    assert "fe80::2 (never)" in p.detail and "fe80::1/128" in p.detail
    p = diagnose(facts(handshake_age=3.0, hello_age=40.0))
    assert p is not None and p.kind == NO_BABEL and "not for 40s" in p.detail


def test_a_key_outside_the_roster_is_a_wrong_key() -> None:
    p = diagnose(facts(in_roster=False, key="K"))
    assert p is not None and p.kind == WRONG_KEY and "not in the roster" in p.detail


class FakeEngine:
    def __init__(self) -> None:
        self.up: dict[str, bool] = {}

    def neighbour(self, name: str) -> NeighbourSnapshot | None:
        return NeighbourSnapshot(name, self.up.get(name, False), None, None, 0.0)


def _info(name: str, key: bytes) -> PeerInfo:
    return PeerInfo(name, key, keys.control_address(key), keys.router_id(key), ())


def test_doctor_reasons_logs_and_unconfigured_peers(caplog: pytest.LogCaptureFixture) -> None:
    """The doctor's clock: bounded time before a reason, one log line per new reason,
    the reachability datagram (to a closed loopback port: refused), peers the operator
    added outside the config."""
    kb, kc, kd, kx = (keys.public_from_private(keys.generate_private()) for _ in range(4))
    # A closed UDP port on loopback: bind, learn the port, close.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    peers = {"b": _info("b", kb), "c": _info("c", kc), "d": _info("d", kd)}
    engine = FakeEngine()
    t = [0.0]
    doc = PeerDoctor("wg0", peers, engine, lambda: t[0], our_key=kx,
                     our_control=str(ipaddress.IPv6Address("fe80::1")), wall=lambda: 1000.0)
    dev = Device(peers=[Peer(kb, endpoint=f"127.0.0.1:{closed}", tx_bytes=296),
                        Peer(kc, endpoint="127.0.0.1:9", last_handshake=990.0, rx_bytes=92),
                        Peer(kx, endpoint="198.51.100.7:51820")])
    caplog.set_level(logging.INFO, logger="wgcast")
    got = doc.observe(dev)
    assert set(got) == {"d"} and got["d"].kind == NOT_ON_DEVICE  # at once
    assert list(doc.unconfigured) == [keys.b64(kx)]
    t[0] = DIAGNOSE_AFTER + 1
    got = doc.observe(dev)  # sends the reachability datagram to b's endpoint
    assert got["c"].kind == NO_BABEL
    assert got["b"].kind == NO_HANDSHAKE
    deadline = 50  # bounded: the ICMP error comes back on loopback at once
    for i in range(deadline):
        t[0] = DIAGNOSE_AFTER + 2 + i * 0.05
        got = doc.observe(dev)
        if "nothing listens" in got["b"].detail:
            break
    assert "nothing listens" in got["b"].detail, got["b"]
    # c comes up: resolved; d is added by the operator: no longer "not on the interface".
    engine.up["c"] = True
    dev = Device(peers=[*dev.peers, Peer(kd)])
    got = doc.observe(dev)
    assert "c" not in got and "d" not in got  # d is down, but only just seen
    lines = [r.getMessage() for r in caplog.records]
    assert sum("peer b is down: no handshake" in m for m in lines) == 1, lines
    assert sum("peer c is down: no Babel" in m for m in lines) == 1
    assert sum("not in the config" in m for m in lines) == 1
    assert any("peer c: resolved" in m for m in lines)
    assert doc.view("b")["reason"] == NO_HANDSHAKE and doc.view("c")["reason"] is None
    doc.close()


# --------------------------------------------------------------------------- the daemon


def test_a_peer_the_operator_removes_and_adds_again(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """`wg set wg0 peer B remove` under a running daemon: reported (not on the
    interface), no put-back into a peer that is not there (audits stay quiet, nothing
    counted); added again: picked up, its control /128 and routes put back."""
    import asyncio

    from daemon_fakes import Mesh, config_text, running, until

    pa, pb = keys.generate_private(), keys.generate_private()
    ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)
    net = ipaddress.ip_network("10.0.2.0/24")
    ctrl = ipaddress.ip_network(f"{keys.control_address(kb)}/128")

    async def main() -> None:
        mesh = Mesh()
        a = mesh.add("a", pa, config_text("a", str(tmp_path), {"b": kb}, "",
                                          {"b": 'may_originate = ["10.0.0.0/16"]'}))
        mesh.add("b", pb, config_text("b", str(tmp_path), {"a": ka},
                                      'addresses = ["10.0.2.0/24"]'))
        async with running(mesh):
            d, dp = a.daemon, a.daemon.dataplane
            assert dp is not None
            await until(lambda: a.device.holder(net) == kb, what="10.0.2.0/24 on b")
            del a.device.peers[kb]  # the operator's `wg set ... remove`
            await d.check_peers()
            assert d.peer_table()[0]["reason"] == NOT_ON_DEVICE
            for _ in range(3):  # audits: nothing to put back into a missing peer
                await asyncio.wait_for(dp.audit().wait(), 5)
            assert kb not in a.device.peers and dp.stats.put_back == 0
            assert not any("putting them back" in r.getMessage() for r in caplog.records)
            a.device.peers[kb] = []  # `wg set ... peer B endpoint ...`: back, empty
            await d.check_peers()
            await until(lambda: a.device.holder(net) == kb and ctrl in a.device.peers[kb],
                        what="b's control /128 and route put back")
            assert d.peer_table()[0]["reason"] is None
            assert any("peers back on the interface: b" in r.getMessage()
                       for r in caplog.records)

    caplog.set_level(logging.INFO, logger="wgcast")
    asyncio.run(main())
