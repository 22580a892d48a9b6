"""Health checks against local servers: exec, tcp, udp, http, dns; timeouts never block."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import dns.message
import dns.rrset

from wgcast.daemon.config import Endpoint, HealthConf
from wgcast.daemon.health import CheckFailed, HealthMonitor, run_check

LO = "127.0.0.1"


def conf(kind: str, **kw: Any) -> HealthConf:
    base: dict[str, Any] = {"type": kind, "interval": 1.0, "timeout": 0.5}
    base.update(kw)
    return HealthConf(**base)


async def outcome(c: HealthConf) -> str | None:
    """None if the check passed, else why it failed."""
    try:
        await run_check(c)
    except CheckFailed as e:
        return str(e)
    except TimeoutError:
        return "timeout"
    return None


def test_exec() -> None:
    async def go() -> None:
        assert await outcome(conf("exec", command=("true",))) is None
        assert await outcome(conf("exec", command=("false",))) == "exit status 1"
        assert "cannot run" in (await outcome(conf("exec", command=("/nonexistent/x",))) or "")
        t0 = time.perf_counter()
        assert await outcome(conf("exec", command=("sleep", "5"), timeout=0.2)) == "timeout"
        assert time.perf_counter() - t0 < 1.5  # killed, not waited for

    asyncio.run(go())


def test_tcp() -> None:
    async def go() -> None:
        srv = await asyncio.start_server(lambda r, w: w.close(), LO, 0)
        port = srv.sockets[0].getsockname()[1]
        assert await outcome(conf("tcp", endpoint=Endpoint(LO, port))) is None
        srv.close()
        await srv.wait_closed()
        assert "connect" in (await outcome(conf("tcp", endpoint=Endpoint(LO, port))) or "")

    asyncio.run(go())


class Echo(asyncio.DatagramProtocol):
    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.t.sendto(self.prefix + data, addr)


def test_udp() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(lambda: Echo(b"ok:"), local_addr=(LO, 0))
        port = t.get_extra_info("sockname")[1]
        ep = Endpoint(LO, port)
        assert await outcome(conf("udp", endpoint=ep, send="ping")) is None
        assert await outcome(conf("udp", endpoint=ep, send="ping", expect="ok:ping")) is None
        why = await outcome(conf("udp", endpoint=ep, send="ping", expect="PONG"))
        assert why is not None and "PONG" in why
        t.close()
        # Nobody listens: ICMP port unreachable fails at once, not at the timeout.
        t0 = time.perf_counter()
        assert await outcome(conf("udp", endpoint=ep, send="x", timeout=2.0)) == \
            "port unreachable"
        assert time.perf_counter() - t0 < 1.0

    asyncio.run(go())


def test_http() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line = await r.readline()
        while (await r.readline()) not in (b"\r\n", b""):
            pass
        status = b"200 OK" if b" /ok " in line else b"503 Unavailable"
        w.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()

    async def go() -> None:
        srv = await asyncio.start_server(handler, LO, 0)
        port = srv.sockets[0].getsockname()[1]
        ep = Endpoint(LO, port)
        ok = conf("http", target=f"http://{LO}:{port}/ok", endpoint=ep)
        bad = conf("http", target=f"http://{LO}:{port}/bad", endpoint=ep)
        assert await outcome(ok) is None
        assert await outcome(bad) == "status 503, expected 200"
        assert await outcome(conf("http", target=f"http://{LO}:{port}/bad", endpoint=ep,
                                  status=503)) is None
        srv.close()
        await srv.wait_closed()

    asyncio.run(go())


class Dns(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        name = q.question[0].name.to_text()
        if name == "example.org.":
            r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
        elif name == "nx.example.org.":
            r.set_rcode(dns.rcode.NXDOMAIN)
        self.t.sendto(r.to_wire(), addr)


def test_dns() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(Dns, local_addr=(LO, 0))
        ep = Endpoint(LO, t.get_extra_info("sockname")[1])
        assert await outcome(conf("dns", endpoint=ep, query="example.org")) is None
        assert await outcome(conf("dns", endpoint=ep, query="nx.example.org")) == \
            "rcode NXDOMAIN"
        assert await outcome(conf("dns", endpoint=ep, query="empty.example.org")) == \
            "no answer records"
        t.close()

    asyncio.run(go())


def test_monitor_runs_checks_concurrently_without_blocking() -> None:
    """A hanging check neither delays the other checks nor the loop."""
    async def go() -> None:
        import ipaddress

        changed: list[Any] = []
        mon = HealthMonitor(changed.append)
        loop = asyncio.get_running_loop()
        p1, p2 = ipaddress.ip_network("fd00::1/128"), ipaddress.ip_network("fd00::2/128")
        mon.add(p1, (conf("exec", command=("sleep", "10"), interval=0.1, timeout=0.1,
                          rise=1, fall=1),), loop.time())
        mon.add(p2, (conf("exec", command=("true",), interval=0.05, timeout=0.05, rise=2,
                          fall=2),), loop.time())
        mon.start()
        t0 = loop.time()
        lags = []
        while loop.time() - t0 < 0.6:
            a = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - a - 0.01)
        await mon.stop()
        assert changed == [p2]  # p2 passed after rise; p1 never did
        assert mon.checks[p1][0].state.results >= 3
        assert mon.checks[p1][0].last_error is not None
        # A check run on the loop would block it for its whole 0.1 s timeout, again and
        # again: most samples would lag by tens of ms. On a loaded machine a single sample
        # may lag that much anyway, so the median says it, not the maximum.
        lags.sort()
        assert lags[len(lags) // 2] < 0.03, lags
        assert lags[-1] < 0.5, lags

    asyncio.run(go())


def test_a_refused_tcp_connect_fails_at_once() -> None:
    async def go() -> None:
        port = _free_tcp_port()  # nobody listens: refused, long before the timeout
        t0 = time.perf_counter()
        why = await outcome(conf("tcp", endpoint=Endpoint(LO, port), timeout=2.0))
        assert why is not None and why.startswith("connect: ") and "timeout" not in why
        assert time.perf_counter() - t0 < 1.0

    asyncio.run(go())


def test_a_silent_http_server_fails_at_the_timeout() -> None:
    async def go() -> None:
        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)  # accepts, reads nothing, answers nothing

        server = await asyncio.start_server(silent, LO, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            c = conf("http", endpoint=Endpoint(LO, port), target=f"http://{LO}:{port}/",
                     timeout=0.3)
            t0 = time.perf_counter()
            assert await outcome(c) == "timeout"
            assert 0.25 <= time.perf_counter() - t0 < 1.0
        finally:
            server.close()

    asyncio.run(go())


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])
