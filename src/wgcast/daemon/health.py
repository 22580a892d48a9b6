"""Health checks of anycast groups: exec, tcp, udp, http, dns, all asyncio.

Each check of each group runs in its own task, once per `interval`, bounded by its
`timeout`; a check never blocks the event loop (processes through asyncio subprocesses,
sockets non-blocking, names resolved by the loop's resolver thread, DNS with dnspython's
asyncio queries). Results go into the pure `wgcast.anycast.health.CheckState`; when a
check's verdict changes, `on_change(prefix)` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from wgcast.anycast.health import CheckParams, CheckState, Damping
from wgcast.daemon.config import HealthConf, Prefix

log = logging.getLogger("wgcast.health")

#: Largest HTTP status line / UDP reply read.
_MAX_READ = 4096


class CheckFailed(Exception):
    """A health check that did not pass; the message says why."""


def params_of(conf: HealthConf) -> CheckParams:
    return CheckParams(conf.rise, conf.fall, Damping.for_interval(conf.interval))


def describe(conf: HealthConf) -> str:
    if conf.type == "exec":
        return "exec " + " ".join(conf.command)
    if conf.type == "dns":
        return f"dns {conf.query} {conf.qtype} @{conf.target}"
    if conf.type == "udp":
        return f"udp {conf.target}"
    return f"{conf.type} {conf.target}"


async def run_check(conf: HealthConf) -> None:
    """Run a health check once, within its timeout; raises CheckFailed (or TimeoutError)."""
    async with asyncio.timeout(conf.timeout):
        if conf.type == "exec":
            await _exec(conf)
        elif conf.type == "tcp":
            await _tcp(conf)
        elif conf.type == "udp":
            await _udp(conf)
        elif conf.type == "http":
            await _http(conf)
        elif conf.type == "dns":
            await _dns(conf)
        else:  # pragma: no cover - the config loader knows every type
            raise CheckFailed(f"unknown check type {conf.type!r}")


async def _exec(conf: HealthConf) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *conf.command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
    except OSError as e:
        raise CheckFailed(f"cannot run {conf.command[0]}: {e.strerror or e}") from None
    try:
        rc = await proc.wait()
    except BaseException:  # timeout or cancel: the whole process group goes
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        # Reap it so no zombie stays; wait() returns at once after SIGKILL.
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    if rc != 0:
        raise CheckFailed(f"exit status {rc}" if rc > 0 else f"killed by signal {-rc}")


def _hostport(conf: HealthConf) -> tuple[str, int]:
    assert conf.endpoint is not None
    return conf.endpoint.host, conf.endpoint.port


async def _tcp(conf: HealthConf) -> None:
    host, port = _hostport(conf)
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        raise CheckFailed(f"connect: {e.strerror or e}") from None
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[Any, ...]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=kind)
    except OSError as e:
        raise CheckFailed(f"cannot resolve {host}: {e}") from None
    if not infos:
        raise CheckFailed(f"cannot resolve {host}")
    return infos[0]


async def _udp(conf: HealthConf) -> None:
    host, port = _hostport(conf)
    family, kind, proto, _, addr = await _resolve(host, port, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, addr)
        await loop.sock_sendall(sock, (conf.send or "").encode())
        try:
            data = await loop.sock_recv(sock, _MAX_READ)
        except ConnectionRefusedError:
            raise CheckFailed("port unreachable") from None
    except OSError as e:
        raise CheckFailed(f"udp: {e.strerror or e}") from None
    finally:
        sock.close()
    if conf.expect is not None and conf.expect.encode() not in data:
        raise CheckFailed(f"reply does not contain {conf.expect!r}")


_INSECURE: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """A health check asks "does it answer", not "is it who it says": no verification."""
    global _INSECURE
    if _INSECURE is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _INSECURE = ctx
    return _INSECURE


async def _http(conf: HealthConf) -> None:
    assert conf.target is not None
    u = urllib.parse.urlsplit(conf.target)
    host, port = _hostport(conf)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    tls = u.scheme == "https"
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=_ssl_context() if tls else None,
            server_hostname=(host if tls and ":" not in host else None) if tls else None,
            limit=_MAX_READ)
    except (OSError, ssl.SSLError) as e:
        raise CheckFailed(f"connect: {e}") from None
    try:
        hosthdr = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            hosthdr += f":{port}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {hosthdr}\r\nUser-Agent: wgcast-health\r\n"
                     "Accept: */*\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        try:
            line = await reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise CheckFailed("no HTTP status line") from None
    except (OSError, ssl.SSLError) as e:
        raise CheckFailed(f"http: {e}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise CheckFailed(f"not an HTTP status line: {line[:80]!r}")
    status = int(parts[1])
    if status != conf.status:
        raise CheckFailed(f"status {status}, expected {conf.status}")


async def _dns(conf: HealthConf) -> None:
    import dns.asyncquery
    import dns.exception
    import dns.flags
    import dns.message
    import dns.rcode

    host, port = _hostport(conf)
    _, _, _, _, addr = await _resolve(host, port, socket.SOCK_DGRAM)
    assert conf.query is not None
    q = dns.message.make_query(conf.query, conf.qtype)
    try:
        r = await dns.asyncquery.udp(q, addr[0], port=port, timeout=conf.timeout)
        if r.flags & dns.flags.TC:
            r = await dns.asyncquery.tcp(q, addr[0], port=port, timeout=conf.timeout)
    except (dns.exception.DNSException, OSError) as e:
        raise CheckFailed(f"dns: {e}") from None
    rc = r.rcode()
    if rc != dns.rcode.NOERROR:
        raise CheckFailed(f"rcode {dns.rcode.to_text(rc)}")
    if not r.answer:
        raise CheckFailed("no answer records")


class Check:
    """One running check: its config, its pure state and its task."""

    def __init__(self, prefix: Prefix, index: int, conf: HealthConf, now: float) -> None:
        self.prefix = prefix
        self.index = index
        self.conf = conf
        self.state = CheckState(params_of(conf), now)
        self.task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.last_ms: float | None = None
        self.last_wall: float | None = None

    def view(self, now: float) -> dict[str, Any]:
        return {"check": describe(self.conf), "type": self.conf.type,
                "interval_s": self.conf.interval, "timeout_s": self.conf.timeout,
                "rise": self.conf.rise, "fall": self.conf.fall,
                **self.state.view(now), "last_error": self.last_error,
                "last_ms": None if self.last_ms is None else round(self.last_ms, 3)}


class HealthMonitor:
    """Runs every check of every group; calls `on_change(prefix)` when a verdict flips."""

    def __init__(self, on_change: Callable[[Prefix], None]) -> None:
        self.on_change = on_change
        self.checks: dict[Prefix, list[Check]] = {}

    def add(self, prefix: Prefix, confs: tuple[HealthConf, ...], now: float) -> list[Check]:
        checks = [Check(prefix, i, c, now) for i, c in enumerate(confs)]
        self.checks[prefix] = checks
        return checks

    def remove(self, prefix: Prefix) -> None:
        """Stop and forget the checks of `prefix` (a reload dropped or changed them)."""
        for c in self.checks.pop(prefix, []):
            if c.task is not None:
                c.task.cancel()

    def start(self) -> None:
        for checks in self.checks.values():
            for c in checks:
                if c.task is None:
                    c.task = asyncio.create_task(self._run(c),
                                                 name=f"health {c.prefix} #{c.index}")

    async def stop(self) -> None:
        tasks = [c.task for cs in self.checks.values() for c in cs if c.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _run(self, check: Check) -> None:
        loop = asyncio.get_running_loop()
        conf = check.conf
        next_at = loop.time()
        while True:
            t0 = time.perf_counter()
            try:
                await run_check(conf)
                ok, why = True, None
            except TimeoutError:
                ok, why = False, f"timeout after {conf.timeout:g}s"
            except CheckFailed as e:
                ok, why = False, str(e)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a check bug is a failing check, not a dead task
                log.exception("health check %s of %s", describe(conf), check.prefix)
                ok, why = False, f"internal error: {e}"
            check.last_ms = (time.perf_counter() - t0) * 1000
            check.last_error = why
            check.last_wall = time.time()
            if check.state.record(ok, loop.time()):
                log.info("group %s: check %s now %s%s", check.prefix, describe(conf),
                         "passing" if check.state.passing else "failing",
                         " (damped)" if check.state.suppressed else
                         (f" ({why})" if why else ""))
                self.on_change(check.prefix)
            next_at += conf.interval
            now = loop.time()
            if next_at < now:  # a slow check: skip the missed beats, keep the phase
                next_at += conf.interval * ((now - next_at) // conf.interval + 1)
            await asyncio.sleep(next_at - now)
