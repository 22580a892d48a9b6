"""The real `Daemon` on in-memory back ends (tests/unit/daemon_fakes.py), one config key
at a time: each test runs the daemon with two values of a key and shows that what it
does differs, so a key that is parsed but ignored fails here (as `backend` once was).

Keys covered: `timers.update`, `timers.retract_grace`, `timers.idle_hello`, `route_selection`,
`api_socket_mode`, `groups.allow_uids` / `allow_gids`, `metrics`. The last three run
`Daemon.run()`, which binds the API socket (a Unix socket under the test's tmp_path) and,
for `metrics`, an HTTP listener on 127.0.0.1 at a port the kernel picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import stat
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from daemon_fakes import MemoryTransport, Mesh, Node, config_text, running, until

from wgcast import keys
from wgcast.anycast.policy import Peer
from wgcast.babel.wire import Ack, Digest, Hello, Update, decode_packet, encode_packet
from wgcast.client import request
from wgcast.daemon.api_context import Connection
from wgcast.prefix import Prefix

B_NET = ipaddress.ip_network("10.0.2.0/24")
ANY = ipaddress.ip_network("10.99.0.53/32")


def _keys(n: int) -> list[bytes]:
    return [keys.generate_private() for _ in range(n)]


def _pair(tmp: Path, a_extra: str = "", b_extra: str = "", b_timers: str = "",
          a_peer_extra: str = 'may_originate = ["10.0.0.0/8"]') -> tuple[Mesh, Node, Node]:
    """a <-> b; b originates B_NET."""
    pa, pb = _keys(2)
    ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)
    mesh = Mesh()
    a = mesh.add("a", pa, config_text("a", str(tmp), {"b": kb}, a_extra, {"b": a_peer_extra}))
    b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka},
                                      'addresses = ["10.0.2.0/24"]\n' + b_extra,
                                      timers=b_timers))
    return mesh, a, b


# --------------------------------------------------------------------------- timers.update


class _Tap(MemoryTransport):
    """A memory transport that keeps the Update TLVs it sends for one IPv4 prefix
    (AE 1, or 4 for v4-via-v6; matched on its length, as its bytes may be compressed),
    and counts the Digest TLVs it sends."""

    def __init__(self, mesh: Mesh, prefix: Prefix) -> None:
        super().__init__(mesh)
        self.plen = prefix.prefixlen  # b has no other IPv4 prefix
        self.updates: list[Update] = []
        self.digests = 0

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        tlvs = decode_packet(data)
        self.updates += [t for t in tlvs
                         if isinstance(t, Update) and t.ae in (1, 4) and t.plen == self.plen]
        self.digests += sum(isinstance(t, Digest) for t in tlvs)
        super().send(data, dest)


def _updates_of_b_net(tmp: Path, update: str) -> tuple[int, set[int], int]:
    """(how many updates b sent a for B_NET in 1.2 s once a holds it, their intervals in
    centiseconds, how many digests b sent in those 1.2 s), with b's `timers.update`."""
    async def main() -> tuple[int, set[int], int]:
        mesh, a, b = _pair(tmp, b_timers=f'update = "{update}"')
        tap = _Tap(mesh, B_NET)
        b.daemon.transport = tap
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")
            before, digests = len(tap.updates), tap.digests
            await asyncio.sleep(1.2)
            return (len(tap.updates) - before, {u.interval for u in tap.updates},
                    tap.digests - digests)

    return asyncio.run(main())


def test_the_update_interval_sets_the_rate_of_digests_between_wgcast_nodes(
        tmp_path: Path) -> None:
    """Two wgcast daemons do quiet mode (docs/architecture.md, "Updates"): instead of a
    full update, each update interval brings a digest; Updates carry the longest
    interval (routes are kept while the digests agree). Toward babeld, BIRD and FRR the
    interval is the configured one (tests/interop, test_engine_quiet.py)."""
    _, often_iv, often_dg = _updates_of_b_net(tmp_path, "300ms")
    rarely, rarely_iv, rarely_dg = _updates_of_b_net(tmp_path, "10s")
    assert often_iv == rarely_iv == {0xFFFF}, (often_iv, rarely_iv)
    # Several digests in 1.2 s against none, and no full update either way.
    assert often_dg >= 2 and rarely_dg == 0, (often_dg, rarely_dg)
    assert rarely == 0, rarely


# --------------------------------------------------------------------------- idle_hello


class _HelloTap(MemoryTransport):
    """A memory transport that keeps the (time, interval) of each Hello it sends."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh)
        self.hellos: list[tuple[float, int]] = []

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        now = asyncio.get_running_loop().time()
        self.hellos += [(now, t.interval) for t in decode_packet(data) if isinstance(t, Hello)]
        super().send(data, dest)


def _hellos_to_b(tmp: Path, idle: str) -> tuple[int, set[int]]:
    """(how many Hellos a sent b in 1.5 s once settled, their intervals in centiseconds),
    with b's `timers.idle_hello`: b routes nothing through a that would survive a's
    death, so what it asks of a is its idle interval."""
    async def main() -> tuple[int, set[int]]:
        mesh, a, b = _pair(tmp, b_timers=f'idle_hello = "{idle}"')
        tap = _HelloTap(mesh)
        a.daemon.transport = tap
        async with running(mesh):
            await until(lambda: b.daemon.status()["neighbours_up"] == 1, what="a up")
            await asyncio.sleep(1.0)  # b's request reached a
            t0 = asyncio.get_running_loop().time()
            await asyncio.sleep(1.5)
            seen = [iv for t, iv in tap.hellos if t >= t0]
            return len(seen), set(seen)

    return asyncio.run(main())


def test_idle_hello_sets_the_rate_of_hellos_to_an_idle_neighbour(tmp_path: Path) -> None:
    often, often_iv = _hellos_to_b(tmp_path, "0s")
    rarely, rarely_iv = _hellos_to_b(tmp_path, "3s")
    # Off: the fast profile's Hello interval (50ms); 3s: what b asked for.
    assert often_iv == {5} and rarely_iv <= {300}, (often_iv, rarely_iv)
    assert often >= 10 and rarely <= 1, (often, rarely)


# --------------------------------------------------------------------------- retract_grace


class _NoAcks(MemoryTransport):
    """A memory transport that strips every Ack TLV (Hellos and the rest still go)."""

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        tlvs = decode_packet(data)
        kept = [t for t in tlvs if not isinstance(t, Ack)]
        if len(kept) != len(tlvs):
            if not kept:
                return
            data = encode_packet(kept)
        super().send(data, dest)


def _unserve_without_acks(tmp: Path, grace: str) -> tuple[bool, float, bool]:
    """b serves ANY, a never acks the retraction: (unserve's "acked", how long it took,
    was a still b's neighbour after it), with b's `timers.retract_grace`."""
    async def main() -> tuple[bool, float, bool]:
        mesh, a, b = _pair(tmp, b_extra='anycast = ["10.99.0.0/16"]',
                           b_timers=f'retract_grace = "{grace}"')
        a.daemon.transport = _NoAcks(mesh)
        async with running(mesh):
            await until(lambda: b.daemon.status()["neighbours_up"] == 1, what="a up")
            await b.daemon.serve(ANY)
            await until(lambda: a.device.holder(ANY) == b.public, what="ANY on b")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            acked = await b.daemon.unserve(ANY)
            took = loop.time() - t0
            return acked, took, b.daemon.status()["neighbours_up"] == 1

    return asyncio.run(main())


def test_retract_grace_bounds_the_wait_for_acks(tmp_path: Path) -> None:
    """A short grace gives up on the missing acks: unserve says "not acked" and the
    address goes down; a long one outlasts the engine's own resends (fast profile: 3,
    backing off from 100 ms), which end the wait as if acked."""
    short = _unserve_without_acks(tmp_path, "50ms")
    long = _unserve_without_acks(tmp_path, "30s")
    assert short[0] is False and short[2], short
    assert long[0] is True and long[2], long
    assert long[1] > 4 * short[1], (short, long)


# --------------------------------------------------------------------------- route_selection


def _selected_after_a_better_route(tmp: Path, selection: str) -> tuple[str, list[str]]:
    """a's peers b and c serve ANY; b first with metric 200, then c with metric 0.
    Returns (the neighbour a selects once it has c's better route, the peers whose
    routes it holds)."""
    async def main() -> tuple[str, list[str]]:
        pa, pb, pc = _keys(3)
        ka, kb, kc = (keys.public_from_private(k) for k in (pa, pb, pc))
        anycast = 'anycast = ["10.99.0.0/16"]'
        mesh = Mesh()
        a = mesh.add("a", pa, config_text(
            "a", str(tmp), {"b": kb, "c": kc},
            f'{anycast}\nroute_selection = "{selection}"', timers='move_hold = "0s"'))
        b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka}, anycast))
        c = mesh.add("c", pc, config_text("c", str(tmp), {"a": ka}, anycast))
        async with running(mesh):
            await until(lambda: a.daemon.status()["neighbours_up"] == 2, what="neighbours")
            await b.daemon.serve(ANY, metric=200)
            await until(lambda: a.device.holder(ANY) == b.public, what="ANY on b")
            await c.daemon.serve(ANY, metric=0)
            view = a.daemon.view
            assert view is not None

            def c_route_known() -> bool:
                routes = {r.neighbour: r.metric for r in view.routes_to(ANY)}
                return "c" in routes and routes["c"] < routes["b"]

            await until(c_route_known, what="c's better route at a")
            # Selection runs when the update arrives: what it chose is settled now.
            via = next(s.via for s in view.selected() if s.prefix == ANY)
            if via == "c":
                await until(lambda: a.device.holder(ANY) == c.public, what="ANY moved")
            return via, sorted(r.neighbour for r in view.routes_to(ANY))

    return asyncio.run(main())


def test_route_selection_shortest_moves_and_sticky_stays(tmp_path: Path) -> None:
    assert _selected_after_a_better_route(tmp_path, "shortest") == ("c", ["b", "c"])
    assert _selected_after_a_better_route(tmp_path, "sticky") == ("b", ["b", "c"])


# --------------------------------------------------------------------------- Daemon.run()


@contextlib.asynccontextmanager
async def _running_daemon(tmp: Path, extra: str = "", groups: str = "",
                          ) -> AsyncIterator[tuple[Node, str]]:
    """One daemon through `Daemon.run()` (API socket, membership, metrics), its peer
    absent; yields it and its API socket path once the API answers."""
    pa, pb = _keys(2)
    mesh = Mesh()
    text = config_text("a", str(tmp), {"b": keys.public_from_private(pb)}, extra) + groups
    a = mesh.add("a", pa, text)
    sock = a.daemon.config.api_socket
    run = asyncio.create_task(a.daemon.run())

    async def answers() -> bool:
        try:
            return bool((await asyncio.to_thread(request, sock, {"cmd": "status"}))["ok"])
        except OSError:
            return False

    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await answers():
            assert not run.done(), run
            assert loop.time() < deadline, "the API did not answer within 10 s"
            await asyncio.sleep(0.02)
        yield a, sock
    finally:
        a.daemon.stop()
        try:
            await asyncio.wait_for(run, 10)
        finally:
            mesh.close()


def _socket_mode(tmp: Path, extra: str) -> int:
    async def main() -> int:
        async with _running_daemon(tmp, extra) as (_a, sock):
            return stat.S_IMODE(os.stat(sock).st_mode)

    return asyncio.run(main())


def test_api_socket_mode_sets_the_socket_s_permissions(tmp_path: Path) -> None:
    """Who may connect is the file's mode (checking another user's connect would need
    root to switch users; the mode is what the kernel checks)."""
    assert _socket_mode(tmp_path, "") == 0o660
    assert _socket_mode(tmp_path, 'api_socket_mode = "0600"') == 0o600
    assert _socket_mode(tmp_path, 'api_socket_mode = "0666"') == 0o666


GROUP = ipaddress.ip_network("10.99.0.7/32")


def _joins(tmp: Path, policy: str, uid: int, gid: int) -> dict[str, Any]:
    """The reply to a join of GROUP by a client seen as uid/gid, with the group's
    `allow_uids` / `allow_gids` in `policy`.

    SO_PEERCRED reports the test's own uid, and only root could connect as another
    user: a connect hook (run after membership's own) stands in for the credentials."""
    groups = f'[[groups]]\nprefix = "{GROUP}"\n{policy}\n'

    async def main() -> dict[str, Any]:
        async with _running_daemon(tmp, 'anycast = ["10.99.0.0/16"]', groups) as (a, sock):
            assert a.daemon.membership is not None

            def as_client(conn: Connection) -> None:
                conn.data["peer"] = Peer(os.getpid(), uid, gid)

            a.daemon.membership.api.connect_hooks.append(as_client)
            return await asyncio.to_thread(request, sock, {"cmd": "join",
                                                          "prefix": str(GROUP)})

    return asyncio.run(main())


def test_allow_uids_and_allow_gids_decide_who_may_join(tmp_path: Path) -> None:
    nobody = _joins(tmp_path, "", 1000, 1000)
    assert not nobody["ok"] and nobody["error"] == "not_allowed", nobody
    by_uid = _joins(tmp_path, "allow_uids = [1000]", 1000, 1000)
    assert by_uid["ok"], by_uid
    other_uid = _joins(tmp_path, "allow_uids = [1001]", 1000, 1000)
    assert not other_uid["ok"] and other_uid["error"] == "not_allowed", other_uid
    by_gid = _joins(tmp_path, "allow_gids = [100]", 1000, 100)
    assert by_gid["ok"], by_gid
    other_gid = _joins(tmp_path, "allow_gids = [101]", 1000, 100)
    assert not other_gid["ok"] and other_gid["error"] == "not_allowed", other_gid


def _free_port() -> int:
    """A port nobody listens on now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(tmp: Path, extra: str) -> tuple[str | None, Any, str]:
    """(what /metrics serves, None without a listener; the status' "metrics"; the
    daemon's router-id)."""
    async def main() -> tuple[str | None, Any, str]:
        async with _running_daemon(tmp, extra) as (a, _sock):
            st = a.daemon.status()
            rid = keys.router_id(a.public).hex()
            server = a.daemon.metrics
            if server is None:
                return None, st["metrics"], rid
            port = server.bound_port
            assert port is not None

            def get() -> str:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as r:
                    body: bytes = r.read()
                return body.decode()

            return await asyncio.to_thread(get), st["metrics"], rid

    return asyncio.run(main())


def test_metrics_serves_the_daemon_s_figures_only_when_set(tmp_path: Path) -> None:
    port = _free_port()
    body, shown, rid = _scrape(tmp_path, f'metrics = "127.0.0.1:{port}"')
    assert body is not None and shown == f"127.0.0.1:{port}"
    # This daemon's own figures: its interface and router-id, its one (absent) peer.
    assert f'interface="wg-a",router_id="{rid}"}} 1.0' in body, body[:2000]
    assert 'wgcast_neighbour_up{peer="b"} 0.0' in body, body[:2000]
    nothing, shown, _ = _scrape(tmp_path, "")
    assert nothing is None and shown is None
