"""EndpointManager with fake daemons and WireGuard backends: two managers probe each other
over loopback (authenticated, answered only for the right keys), names resolve, decisions
reach the backend, a silent neighbour fails over."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from typing import Any

import pytest

from wgcast import keys
from wgcast.daemon.config import loads
from wgcast.daemon.endpoint_manager import EndpointManager
from wgcast.daemon.ports import NeighbourSnapshot
from wgcast.dataplane.types import Device, Peer


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeBackend:
    def __init__(self, private: bytes, peers: dict[bytes, str | None]) -> None:
        self.private = private
        self.endpoints = dict(peers)
        self.sets: list[tuple[bytes, str]] = []
        self.restarts: list[bytes] = []

    async def get(self) -> Device:
        return Device(private_key=self.private, public_key=keys.public_from_private(self.private),
                      peers=[Peer(k, endpoint=e) for k, e in self.endpoints.items()])

    async def set_endpoint(self, key: bytes, endpoint: str) -> None:
        self.endpoints[key] = endpoint
        self.sets.append((key, endpoint))

    async def restart_handshake(self, key: bytes) -> bool:
        self.restarts.append(key)
        return True


class FakeDaemon:
    """The ports an EndpointManager gets: the clock (the running loop), a read-only engine
    view whose neighbours a test edits, engine control that records Hellos."""

    def __init__(self, text: str, private: bytes, peers: dict[bytes, str | None]) -> None:
        self.config = loads(text)
        self.backend = FakeBackend(private, peers)
        self.public_key = keys.public_from_private(private)
        self.router_id = b"\x01" * 8
        self.seqno = 0
        self.nbs = {p.name: NeighbourSnapshot(p.name, False, None, None, 0.0)
                    for p in self.config.peers}
        self.hellos: list[str] = []
        self.flushes = 0

    # ports.Scheduler
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)

    # ports.EngineView (what the manager reads: neighbours)
    def neighbour(self, name: str) -> NeighbourSnapshot | None:
        return self.nbs.get(name)

    def neighbours(self) -> tuple[NeighbourSnapshot, ...]:
        return tuple(self.nbs.values())

    def neighbour_cost(self, name: str) -> int:
        return 96

    def routes_to(self, prefix: Any) -> tuple[Any, ...]:
        return ()

    def routes_via(self, name: str) -> int:
        return 0

    def selected(self) -> tuple[Any, ...]:
        return ()

    def counters(self) -> dict[str, int]:
        return {}

    def heard(self, name: str, **changes: Any) -> None:
        self.nbs[name] = dataclasses.replace(self.nbs[name], **changes)

    # ports.EngineControl
    def hello_now(self, name: str) -> None:
        self.hellos.append(name)

    def flush(self) -> None:
        self.flushes += 1

    def manager(self) -> EndpointManager:
        return EndpointManager(self.config, self.backend, self.public_key,  # type: ignore[arg-type]
                               self, self, self)


def _config(port: int, peer_pub: bytes, endpoints: list[str], probe_port: int | str,
            extra: str = "") -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    pp = f'"{probe_port}"' if isinstance(probe_port, str) else probe_port
    return (f'interface = "wgt0"\nprobe_port = {port}\n{extra}'
            f'[[peers]]\nname = "peer"\npublic_key = "{keys.b64(peer_pub)}"\n'
            f"endpoints = [{eps}]\nprobe_port = {pp}\n")


def test_two_managers_probe_each_other_and_fail_over() -> None:
    async def main() -> dict[str, Any]:
        pa, pb = keys.generate_private(), keys.generate_private()
        ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)
        port_a, port_b = free_udp_port(), free_udp_port()
        # a's candidates for b: a dead port first, then a name and a literal of b's host.
        a = FakeDaemon(_config(port_a, kb, ["127.0.0.1:9", "localhost:51820",
                                            "127.0.0.2:51820"], port_b,
                               '[endpoint_policy]\nprobe_interval = "100ms"\n'),
                       pa, {kb: None})
        b = FakeDaemon(_config(port_b, ka, ["127.0.0.1:51820"], port_a), pb, {ka: None})
        ma, mb = a.manager(), b.manager()
        await ma.start()
        await mb.start()
        try:
            ps = ma.peers["peer"]
            assert "127.0.0.1:51820" in ps.es.addresses()  # localhost resolved
            # The first configured is chosen at start; probes reach b (all candidates
            # share b's host: the probe port is b's, so every one answers).
            await asyncio.sleep(0.6)
            assert a.backend.sets[0] == (kb, "127.0.0.1:9")
            view = ma.peer_view("peer")
            answered = [c for c in view["candidates"] if c["probes_answered"]]
            assert len(answered) >= 2
            assert mb.counters["requests_answered"] >= 2 and ma.counters["probes_answered"] >= 2
            assert mb.counters["probes_bad"] == 0
            # No session: the end with the lower key restarted the handshake at once.
            assert (a.backend.restarts == [kb]) == (ka < kb)
            # The neighbour speaks, then goes silent: fail over to another candidate
            # (after 2 s: the probes on the path in use are still answered, b's
            # responder being on all of them, so the silence is first taken for a stall).
            a.heard("peer", last_hello=a.now(), hello_interval=0.2)
            ma.received("peer")
            await asyncio.sleep(0.1)
            assert ps.es.confirmed
            await asyncio.sleep(0.6)
            assert a.backend.sets[-1][1] == "127.0.0.1:9" and ps.es.stats["deferred"] >= 1
            await asyncio.sleep(2.0)
            assert a.backend.sets[-1][1] != "127.0.0.1:9"
            assert a.hellos  # a Hello at once after the switch
            return {"a": ma.status(), "b": mb.status()}
        finally:
            ma.close()
            mb.close()

    res = asyncio.run(main())
    assert res["a"]["endpoint_sets"] >= 2


def test_probes_with_a_wrong_key_are_not_answered() -> None:
    async def main() -> None:
        pa, pb, pc = (keys.generate_private() for _ in range(3))
        ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)
        port_a, port_b = free_udp_port(), free_udp_port()
        # c pretends to be a (a's public key in b's config) but has another private key.
        c = FakeDaemon(_config(port_a, kb, ["127.0.0.1:51820"], port_b,
                               '[endpoint_policy]\nprobe_interval = "100ms"\n'), pc, {kb: None})
        c.public_key = ka  # claims a's identity (router-id)
        b = FakeDaemon(_config(port_b, ka, ["127.0.0.1:51820"], port_a), pb, {ka: None})
        mc, mb = c.manager(), b.manager()
        await mc.start()
        await mb.start()
        try:
            await asyncio.sleep(0.5)
            assert mc.counters["probes_sent"] >= 2
            assert mb.counters["requests_answered"] == 0
            assert mb.counters["probes_bad"] >= 2
        finally:
            mc.close()
            mb.close()

    asyncio.run(main())


def test_probing_off_with_port_zero() -> None:
    async def main() -> None:
        pa, pb = keys.generate_private(), keys.generate_private()
        kb = keys.public_from_private(pb)
        a = FakeDaemon(_config(0, kb, ["127.0.0.1:9"], 51821), pa, {kb: "127.0.0.1:9"})
        m = a.manager()
        await m.start()
        try:
            await asyncio.sleep(0.2)
            assert m.status()["probe_port"] is None and m.counters["probes_sent"] == 0
            # WireGuard's endpoint at start is adopted, not set again.
            assert a.backend.sets == []
            assert m.peer_view("peer")["endpoint"] == "127.0.0.1:9"
        finally:
            m.close()

    asyncio.run(main())


@pytest.mark.parametrize("text", ["198.51.100.1:5", "[2001:db8::1]:5", None, "bad"])
def test_wireguard_endpoint_forms(text: str | None) -> None:
    from wgcast.daemon.endpoint_manager import _canonical_endpoint

    out = _canonical_endpoint(text)
    assert out == {"198.51.100.1:5": "198.51.100.1:5", "[2001:db8::1]:5": "[2001:db8::1]:5"}.get(
        text or "")
