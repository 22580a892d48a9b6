"""EndpointManager with fake daemons and WireGuard backends: two managers probe each other
over loopback (authenticated, answered only for the right keys), names resolve, decisions
reach the backend, a silent neighbour fails over."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from wgcast import keys
from wgcast.daemon.config import loads
from wgcast.daemon.endpoint_manager import EndpointManager
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
    def __init__(self, text: str, private: bytes, peers: dict[bytes, str | None]) -> None:
        self.config = loads(text)
        self.backend = FakeBackend(private, peers)
        self.public_key = keys.public_from_private(private)
        self.node = SimpleNamespace(neighbours={
            p.name: SimpleNamespace(last_hello=None, hello_interval=0.0, rtt_ms=None)
            for p in self.config.peers}, hello_now=self.hello_now)
        self.hellos: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def hello_now(self, name: str, now: float) -> None:
        self.hellos.append(name)

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _pump(self) -> None:
        pass


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
        loop = asyncio.get_running_loop()
        a._loop = b._loop = loop
        ma, mb = EndpointManager(a), EndpointManager(b)  # type: ignore[arg-type]
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
            nb = a.node.neighbours["peer"]
            nb.last_hello, nb.hello_interval = a.now(), 0.2
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
        loop = asyncio.get_running_loop()
        c._loop = b._loop = loop
        mc, mb = EndpointManager(c), EndpointManager(b)  # type: ignore[arg-type]
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
        a._loop = asyncio.get_running_loop()
        m = EndpointManager(a)  # type: ignore[arg-type]
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
