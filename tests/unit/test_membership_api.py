"""The membership API over a real Unix socket, with a fake daemon (no root, no kernel).

Covers the protocol (replies, error codes), refcounts held by connections, the policy with
faked peer credentials, the bounds (lines, connections per uid, 1,000 connections), the
drain sequence and health-gated static groups.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from daemon_fakes import until

from wgcast.anycast.group import DRAIN_METRIC
from wgcast.daemon import api as api_mod
from wgcast.daemon.api import ApiServer, PeerCred
from wgcast.daemon.config import Config, loads
from wgcast.daemon.membership import MembershipService
from wgcast.daemon.ports import NeighbourSnapshot, RouteSnapshot

G1, G2, G3 = "fd00:a::53/128", "fd00:a::54/128", "fd00:a::55/128"
RID = b"\x01" * 8


def make_config(tmp: str, extra: str = "") -> Config:
    return loads(f'''
interface = "wgt0"
anycast = ["fd00:a::/64"]
api_socket = "{tmp}/wgt0.sock"
api_socket_mode = "0660"
[timers]
profile = "fast"
[[groups]]
prefix = "{G1}"
allow_uids = [4242]
[[groups]]
prefix = "{G2}"
allow_gids = [777]
{extra}
''')


def route(nid: str, rid: bytes, refmetric: int = 100) -> RouteSnapshot:
    return RouteSnapshot(nid, rid, 0, refmetric, refmetric + 96)


class FakeEngine:
    """ports.EngineView as a drain reads it: which neighbours are up (`up`), which
    routes they announce (`table`: prefix -> neighbour -> route)."""

    router_id = RID
    seqno = 0

    def __init__(self) -> None:
        self.up: dict[str, bool] = {}
        self.table: dict[Any, dict[str, RouteSnapshot]] = {}

    def neighbour(self, name: str) -> NeighbourSnapshot | None:
        return next((n for n in self.neighbours() if n.name == name), None)

    def neighbours(self) -> tuple[NeighbourSnapshot, ...]:
        return tuple(NeighbourSnapshot(n, up, None, None, 0.0) for n, up in self.up.items())

    def neighbour_cost(self, name: str) -> int:
        return 96

    def routes_to(self, prefix: Any) -> tuple[RouteSnapshot, ...]:
        return tuple(self.table.get(prefix, {}).values())

    def routes_via(self, name: str) -> int:
        return sum(name in per for per in self.table.values())

    def selected(self) -> tuple[Any, ...]:
        return ()

    def counters(self) -> dict[str, int]:
        return {}


class FakeDaemon:
    """ports.GroupServing (records the calls) and ports.StatusSource, plus an engine."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = FakeEngine()
        self.calls: list[tuple[Any, ...]] = []
        self.served: dict[Any, int | None] = {}
        self.on_unserve: Callable[[], Awaitable[None]] | None = None

    async def serve(self, prefix: Any, metric: int | None = None) -> None:
        self.calls.append(("serve", str(prefix), metric))
        self.served[prefix] = metric

    async def unserve(self, prefix: Any, wait: float | None = None, settle: float = 0.0) -> bool:
        self.calls.append(("unserve", str(prefix), wait, settle))
        if self.on_unserve is not None:
            await self.on_unserve()
        self.served.pop(prefix, None)
        return True

    def status(self) -> dict[str, Any]:
        return {"interface": self.config.interface}

    def route_table(self) -> list[dict[str, Any]]:
        return []

    def peer_table(self) -> list[dict[str, Any]]:
        return []

    def counters(self) -> None:
        return None


class Conn:
    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    async def send_raw(self, data: bytes) -> None:
        self.w.write(data)
        await self.w.drain()

    async def reply(self, timeout: float = 5.0) -> dict[str, Any]:
        line = await asyncio.wait_for(self.r.readline(), timeout)
        assert line, "the daemon closed the connection"
        out: dict[str, Any] = json.loads(line)
        return out

    async def req(self, obj: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        await self.send_raw(json.dumps(obj).encode() + b"\n")
        return await self.reply(timeout)

    async def close(self) -> None:
        self.w.close()
        with suppress(ConnectionError, OSError):
            await self.w.wait_closed()


@asynccontextmanager
async def server(tmp: str, extra: str = "") -> AsyncIterator[tuple[FakeDaemon, ApiServer,
                                                                    MembershipService]]:
    d = FakeDaemon(make_config(tmp, extra))
    api = ApiServer(d.config, d)
    ms = MembershipService(d.config, api, d, d.engine)
    await ms.start()
    await api.start()
    try:
        yield d, api, ms
    finally:
        await ms.stop()
        await api.stop()


async def connect(path: str) -> Conn:
    r, w = await asyncio.open_unix_connection(path, limit=1 << 20)
    return Conn(r, w)



def fake_uid(monkeypatch: pytest.MonkeyPatch, uid: int, gid: int | None = None) -> None:
    monkeypatch.setattr(api_mod, "peer_credentials",
                        lambda sock: PeerCred(os.getpid(), uid, uid if gid is None else gid))


# ---------------------------------------------------------------------------------- tests


def test_join_refcount_and_close(tmp_path: Any) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (d, api, ms):
            st = os.stat(api.path)
            assert stat.S_IMODE(st.st_mode) == 0o660
            a = await connect(api.path)
            b = await connect(api.path)
            r = await a.req({"cmd": "join", "prefix": G1})
            assert r["ok"] and r["members"] == 1 and r["served"] and r["state"] == "serving"
            assert d.calls == [("serve", G1, None)]
            r = await b.req({"cmd": "join", "prefix": G1})
            assert r["members"] == 2 and len(d.calls) == 1
            r = await a.req({"cmd": "join", "prefix": G1})
            assert r == {"ok": False, "error": "already_member",
                         "message": r["message"]}
            status = await a.req({"cmd": "status"})
            assert status["ok"] and status["memberships"] == [G1]
            assert status["status"]["interface"] == "wgt0"
            g = {x["prefix"]: x for x in status["groups"]}
            assert g[G1]["members"] == 2 and g[G2]["state"] == "idle"
            await a.close()  # a crash: the connection closes
            await until(lambda: ms.groups[ms.config.groups[0].prefix].members == 1)
            assert len(d.calls) == 1  # still one member: still served
            await b.close()
            await until(lambda: len(d.calls) == 2)
            # The last member crashed: plain withdrawal (retract, acks, address down).
            assert d.calls[1] == ("unserve", G1, None, 0.0)
            c = await connect(api.path)
            r = await c.req({"cmd": "join", "prefix": G1})
            assert r["served"]
            r = await c.req({"cmd": "leave", "prefix": G1})
            assert r["ok"] and r["members"] == 0 and r["withdrawn"] is True
            assert r["state"] == "idle"
            r = await c.req({"cmd": "leave", "prefix": G1})
            assert r["error"] == "not_member"
            await c.close()

    asyncio.run(go())


def test_bad_requests_get_error_replies(tmp_path: Any) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (_d, api, _ms):
            c = await connect(api.path)
            cases: list[tuple[bytes, str]] = [
                (b"{nope\n", "bad_json"),
                (b"[1, 2]\n", "bad_request"),
                (b'{"cmd": 5}\n', "unknown_command"),
                (b'{"cmd": "fly"}\n', "unknown_command"),
                (b'{"cmd": "join"}\n', "bad_request"),
                (b'{"cmd": "join", "prefix": "fd00:a::53/64"}\n', "bad_prefix"),
                (b'{"cmd": "join", "prefix": "banana"}\n', "bad_prefix"),
                (b'{"cmd": "join", "prefix": "fd00:b::1/128"}\n', "unknown_group"),
                (b'{"cmd": "join", "prefix": "' + G1.encode() + b'", "wait": -1}\n',
                 "bad_request"),
                (b'{"cmd": "leave", "prefix": "' + G1.encode() + b'", "pid": "x"}\n',
                 "bad_request"),
                (b'{"cmd": "drain", "prefix": "' + G1.encode() + b'", "settle": true}\n',
                 "bad_request"),
                (b"[" * 8000 + b"]" * 8000 + b"\n", "bad_json"),
                (b"\xff\xfe\n", "bad_json"),
            ]
            for raw, code in cases:
                await c.send_raw(raw)
                r = await c.reply()
                assert r["ok"] is False and r["error"] == code, (raw[:40], r)
                assert r["message"]
            # Oversized lines: one error each, and the connection goes on.
            await c.send_raw(b"x" * (api_mod.MAX_LINE + 10) + b"\n")
            assert (await c.reply())["error"] == "line_too_long"
            for _ in range(3):
                await c.send_raw(b"y" * 50_000)
            await c.send_raw(b"\n")
            assert (await c.reply())["error"] == "line_too_long"
            assert (await c.req({"cmd": "status"}))["ok"]
            await c.close()

    asyncio.run(go())


def test_policy_with_peer_credentials(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (d, api, _ms):
            fake_uid(monkeypatch, 4242)
            c = await connect(api.path)
            r = await c.req({"cmd": "join", "prefix": G2})
            assert r["error"] == "not_allowed" and "4242" in r["message"]
            r = await c.req({"cmd": "drain", "prefix": G2})
            assert r["error"] == "not_allowed"
            assert (await c.req({"cmd": "join", "prefix": G1}))["ok"]
            await c.close()
            fake_uid(monkeypatch, 5000, 777)  # allowed by gid
            c = await connect(api.path)
            assert (await c.req({"cmd": "join", "prefix": G2}))["ok"]
            # uid 5000 cannot release memberships of uid 4242's processes
            r = await c.req({"cmd": "leave", "prefix": G1, "all": True})
            assert r["error"] == "not_member"
            await c.close()
            fake_uid(monkeypatch, 0)
            await until(lambda: d.calls[-1][:2] == ("unserve", G2))  # its member closed

    asyncio.run(go())


def test_connections_per_uid_and_a_thousand_connections(tmp_path: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (_d, api, ms):
            fake_uid(monkeypatch, 4242)
            conns = [await connect(api.path) for _ in range(70)]
            # The first 64 are admitted; the rest get an error reply and are closed.
            refused = 0
            for c in conns:
                try:
                    line = await asyncio.wait_for(c.r.readline(), 0.05)
                except TimeoutError:
                    continue
                if line:
                    assert json.loads(line)["error"] == "too_many_connections"
                    refused += 1
            assert refused == 70 - ms.registry.limits.connections_per_uid
            for c in conns:
                await c.close()
            fake_uid(monkeypatch, 0)
            many = await asyncio.gather(*(connect(api.path) for _ in range(1000)))
            t0 = time.perf_counter()
            probe = await connect(api.path)
            r = await probe.req({"cmd": "status"})
            assert r["ok"] and r["connections"] >= 1001
            assert time.perf_counter() - t0 < 2.0
            await asyncio.gather(*(c.close() for c in many))
            await probe.close()
            await until(lambda: api.connections == 0)

    asyncio.run(go())


def test_slow_client_does_not_stall_others(tmp_path: Any) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (_d, api, _ms):
            slow = await connect(api.path)
            await slow.send_raw(b'{"cmd": "sta')  # half a request, then silence
            hog = await connect(api.path)
            # Many requests whose replies the hog never reads.
            await hog.send_raw(b'{"cmd":"status"}\n' * 2000)
            c = await connect(api.path)
            t0 = time.perf_counter()
            assert (await c.req({"cmd": "status"}))["ok"]
            assert time.perf_counter() - t0 < 1.0
            for x in (slow, hog, c):
                await x.close()

    asyncio.run(go())


async def _begin_drain(d: Any, api: Any) -> tuple[Any, Any, asyncio.Task[Any]]:
    """n2 and n3 up, a member joined G1, an admin's drain under way (announced with
    DRAIN_METRIC): (member, admin, the drain request's task)."""
    d.engine.up = {"n2": True, "n3": True, "n4": False}
    member = await connect(api.path)
    assert (await member.req({"cmd": "join", "prefix": G1}))["served"]
    admin = await connect(api.path)
    task = asyncio.create_task(admin.req({"cmd": "drain", "prefix": G1,
                                          "move_timeout": 5, "settle": 0.05}))
    await until(lambda: d.calls[-1] == ("serve", G1, DRAIN_METRIC))
    return member, admin, task


def test_drain_waits_for_neighbours_then_retracts(tmp_path: Any) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (d, api, ms):
            prefix = ms.config.groups[0].prefix
            engine = d.engine
            member, admin, task = await _begin_drain(d, api)
            await asyncio.sleep(0.05)
            assert not task.done()  # nobody moved yet
            engine.table[prefix] = {"n2": route("n2", b"\x02" * 8)}
            await asyncio.sleep(0.05)
            assert not task.done()  # n3 still routes through us
            engine.table[prefix]["n3"] = route("n3", b"\x03" * 8)
            r = await task
            assert r["ok"] and r["drained"] and r["moved"] and r["acked"]
            assert r["state"] == "drained" and r["members"] == 1
            assert d.calls[-1][:2] == ("unserve", G1) and d.calls[-1][3] == 0.05
            assert prefix not in d.served
            # The member's restart: leave (the drain ends) and join again -> served.
            await member.close()
            await until(lambda: not ms.groups[prefix].draining)
            m2 = await connect(api.path)
            assert (await m2.req({"cmd": "join", "prefix": G1}))["served"]
            # A drain that nobody can follow (no other instance) is bounded.
            engine.table[prefix] = {}
            t0 = time.perf_counter()
            r = await admin.req({"cmd": "drain", "prefix": G1, "move_timeout": 0.2,
                                 "settle": 0})
            assert r["drained"] and r["moved"] is False
            assert 0.2 <= time.perf_counter() - t0 < 2.0
            r = await admin.req({"cmd": "undrain", "prefix": G1})
            assert r["served"] and r["was_draining"]
            for x in (m2, admin):
                await x.close()

    asyncio.run(go())


def test_drain_waits_for_a_neighbour_that_went_down_meanwhile(tmp_path: Any) -> None:
    """n3 is up when the drain begins, then declared down (a daemon starved of CPU goes
    silent while its data plane still sends us its clients' queries): the drain does not
    count it as moved; it goes on when n3 is back and announces another instance."""
    async def go() -> None:
        async with server(str(tmp_path)) as (d, api, ms):
            prefix = ms.config.groups[0].prefix
            engine = d.engine
            member, admin, task = await _begin_drain(d, api)
            engine.table[prefix] = {"n2": route("n2", b"\x02" * 8)}
            engine.up["n3"] = False
            await asyncio.sleep(0.2)
            assert not task.done()  # n3 may still send us traffic
            engine.up["n3"] = True
            engine.table[prefix]["n3"] = route("n3", b"\x03" * 8)
            r = await task
            assert r["ok"] and r["drained"] and r["moved"]
            for x in (member, admin):
                await x.close()

    asyncio.run(go())


def test_drain_cancelled_by_undrain(tmp_path: Any) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (d, api, _ms):
            d.engine.up = {"n2": True}
            m = await connect(api.path)
            await m.req({"cmd": "join", "prefix": G1})
            admin = await connect(api.path)
            drain = asyncio.create_task(admin.req({"cmd": "drain", "prefix": G1,
                                                   "move_timeout": 10}))
            await until(lambda: d.calls[-1] == ("serve", G1, DRAIN_METRIC))
            other = await connect(api.path)
            r = await other.req({"cmd": "undrain", "prefix": G1})
            assert r["ok"]
            r = await drain
            assert r["drained"] is False and r["state"] == "serving"
            assert d.calls[-1] == ("serve", G1, None)  # back to the real metric
            for x in (m, admin, other):
                await x.close()

    asyncio.run(go())


def test_static_group_waits_for_its_health_check(tmp_path: Any) -> None:
    flag = tmp_path / "bad"
    extra = f'''
[[groups]]
prefix = "{G3}"
static = true
[[groups.health]]
type = "exec"
command = ["/bin/sh", "-c", "test ! -e {flag}"]
interval = "20ms"
timeout = "20ms"
rise = 2
fall = 2
'''

    async def go() -> None:
        async with server(str(tmp_path), extra) as (d, api, ms):
            prefix = ms.config.groups[2].prefix
            await until(lambda: ("serve", G3, None) in d.calls)  # no member: static
            g = ms.groups[prefix]
            assert g.healthy and g.served
            flag.write_text("x")
            t0 = time.perf_counter()
            await until(lambda: not g.served)
            assert time.perf_counter() - t0 < 2.0
            # Held but unhealthy: moved away first (nobody routes through us here), then
            # retracted, then the address goes.
            assert d.calls[-2] == ("serve", G3, DRAIN_METRIC)
            assert d.calls[-1][:2] == ("unserve", G3) and d.calls[-1][3] > 0
            c = await connect(api.path)
            st = await c.req({"cmd": "status"})
            view = next(x for x in st["groups"] if x["prefix"] == G3)
            assert view["state"] == "unhealthy" and view["checks"][0]["last_error"]
            flag.unlink()
            await until(lambda: g.served)
            await c.close()

    asyncio.run(go())


def test_socket_group_and_mode(tmp_path: Any) -> None:
    async def go() -> None:
        d = FakeDaemon(loads(f'''
interface = "wgt1"
api_socket = "{tmp_path}/s.sock"
api_socket_mode = "0600"
api_socket_group = 12345
'''))
        api = ApiServer(d.config, d)
        await api.start()
        try:
            st = os.stat(api.path)
            assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == 12345
        finally:
            await api.stop()
        assert not os.path.exists(api.path)
        d2 = FakeDaemon(loads(f'interface = "wgt2"\napi_socket = "{tmp_path}/t.sock"\n'
                              'api_socket_group = "no-such-group-here"\n'))
        with pytest.raises(RuntimeError, match="no-such-group-here"):
            await ApiServer(d2.config, d2).start()

    if os.geteuid() != 0:
        pytest.skip("chown to another group needs root")
    asyncio.run(go())


def test_python_client_and_context_manager(tmp_path: Any) -> None:
    """wgcast.client against the server running in another thread."""
    import threading

    from wgcast.client import Client, WgcastError, membership

    ready = threading.Event()
    stop: list[Callable[[], object]] = []
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with server(str(tmp_path)) as (d, api, ms):
                box.update(d=d, api=api, ms=ms)
                done = asyncio.Event()
                loop = asyncio.get_running_loop()
                stop.append(lambda: loop.call_soon_threadsafe(done.set))
                ready.set()
                await done.wait()

        asyncio.run(main())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert ready.wait(10)
    path = box["api"].path
    try:
        with membership(G1, socket_path=path) as c:
            st = c.status()
            assert st["memberships"] == [G1]
            assert box["d"].served
        deadline = time.monotonic() + 5
        while box["d"].served and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not box["d"].served  # left on exit of the block
        with Client(path) as c:
            with pytest.raises(WgcastError) as e:
                c.join("fd00:b::1/128")
            assert e.value.code == "unknown_group"
            assert c.join(G1)[0]["served"]
            r = c.drain(G1, move_timeout=0.1, settle=0)
            assert r["drained"] and r["state"] == "drained"
            assert c.undrain(G1)["served"]
        with pytest.raises(WgcastError) as e:
            Client(str(tmp_path / "missing.sock"))
        assert e.value.code == "unreachable"
    finally:
        stop[0]()
        th.join(10)


def test_serve_failure_is_reported_and_retried(tmp_path: Any) -> None:
    async def go() -> None:
        async with server(str(tmp_path)) as (d, api, ms):
            real = d.serve
            fails = [1]

            async def flaky(prefix: Any, metric: int | None = None) -> None:
                if fails:
                    fails.pop()
                    raise RuntimeError("address interface missing")
                await real(prefix, metric)

            d.serve = flaky  # type: ignore[method-assign]
            c = await connect(api.path)
            r = await c.req({"cmd": "join", "prefix": G1, "wait": 0.2})
            assert r["ok"] and not r["served"] and "missing" in r["error_detail"]
            g = ms.groups[ms.config.groups[0].prefix]
            await until(lambda: g.served, 5.0)  # retried after a second
            st = await c.req({"cmd": "status"})
            assert "error" not in next(x for x in st["groups"] if x["prefix"] == G1)
            await c.close()

    asyncio.run(go())


def test_drain_of_an_idle_group_does_not_stick(tmp_path: Any) -> None:
    """`wgcast drain` on a group nobody holds: drained at once, and the next join is
    served (it used to stay drained until `undrain`)."""
    async def go() -> None:
        async with server(str(tmp_path)) as (d, api, _ms):
            admin = await connect(api.path)
            r = await admin.req({"cmd": "drain", "prefix": G1})
            assert r["ok"] and r["drained"] is True and r["state"] == "idle"
            assert "nothing to drain" in r["note"]
            m = await connect(api.path)
            r = await m.req({"cmd": "join", "prefix": G1})
            assert r["ok"] and r["served"] and r["state"] == "serving", r
            assert d.calls == [("serve", G1, None)]
            for x in (m, admin):
                await x.close()

    asyncio.run(go())
