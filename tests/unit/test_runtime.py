"""The real `Daemon` on in-memory back ends (tests/unit/daemon_fakes.py): each config key
shown here changes what the daemon does, not only what it parses.

Two or three daemons talk Babel through memory transports; what each installs is read
from its fake WireGuard device (AllowedIPs) and its fake kernel (routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from daemon_fakes import MemoryTransport, Mesh, Node, config_text, running, until

from wgcast import keys
from wgcast.anycast.group import DRAIN_METRIC
from wgcast.daemon.state import read_state
from wgcast.keys import router_id

B_NET = ipaddress.ip_network("10.0.2.0/24")
ANY = ipaddress.ip_network("10.99.0.53/32")


def _keys(n: int) -> list[bytes]:
    return [keys.generate_private() for _ in range(n)]


def _pair(tmp: Path, a_peer_extra: str = "", a_extra: str = "",
          b_extra: str = 'addresses = ["10.0.2.0/24"]') -> tuple[Mesh, Node, Node]:
    """a <-> b; b originates B_NET."""
    pa, pb = _keys(2)
    ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)
    mesh = Mesh()
    a = mesh.add("a", pa, config_text("a", str(tmp), {"b": kb}, a_extra, {"b": a_peer_extra}))
    b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka}, b_extra))
    return mesh, a, b


# --------------------------------------------------------------------------- policy


def test_may_originate_accepts_the_peer_s_prefix(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b = _pair(tmp_path, 'may_originate = ["10.0.0.0/16"]')
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")
            await until(lambda: a.host.routes.get(B_NET) == "wg-a", what="kernel route")
            assert a.daemon.status()["announcements_dropped"] == 0
            assert a.daemon.policy.dropped == 0
            # The control address of the peer was ensured at start (outside `managed`).
            ctrl = ipaddress.ip_network(f"{keys.control_address(b.public)}/128")
            assert ctrl in a.device.peers[b.public]

    asyncio.run(main())


def test_may_originate_refuses_and_counts_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, _b = _pair(tmp_path, 'may_originate = ["10.7.0.0/16"]')
        async with running(mesh):
            await until(lambda: a.daemon.policy.dropped > 0, what="a refusal")
            await asyncio.sleep(0.3)  # several updates later: still nothing installed
            assert a.device.holder(B_NET) is None and B_NET not in a.host.routes
            st = a.daemon.status()
            assert st["announcements_dropped"] == a.daemon.policy.dropped > 0
            assert st["counters"]["updates_filtered"] > 0
            assert all(r["prefix"] != str(B_NET) for r in a.daemon.route_table())
            c = a.daemon.counters()
            assert c is not None and c.announcements_dropped == a.daemon.policy.dropped

    asyncio.run(main())


def test_nobody_may_announce_our_own_addresses(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, _b = _pair(tmp_path, 'may_originate = ["10.0.0.0/8"]',
                            a_extra='addresses = ["10.0.2.0/24"]')
        async with running(mesh):
            await until(lambda: a.daemon.policy.dropped > 0, what="a refusal")
            # Our own prefix stays local: never given to the peer.
            assert a.device.holder(B_NET) is None

    asyncio.run(main())


def test_without_may_originate_the_first_start_s_allowed_ips_are_remembered(
        tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b = _pair(tmp_path)
        a.device.peers[b.public].append(ipaddress.ip_network("10.0.0.0/16"))
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")
            assert a.daemon.policy.dropped == 0
        saved = json.loads((tmp_path / "a.state.policy").read_text())
        assert saved == {keys.b64(b.public): ["10.0.0.0/16"]}

    asyncio.run(main())


# --------------------------------------------------------------------------- state


def test_state_is_saved_and_a_restart_jumps_the_seqno(tmp_path: Path) -> None:
    async def main() -> int:
        mesh, a, _b = _pair(tmp_path)
        async with running(mesh):
            await until(lambda: (tmp_path / "a.state").exists(), what="a's state file")
            st = read_state(tmp_path / "a.state")
            assert st is not None and st.router_id == router_id(a.public)
            first = int(a.daemon.status()["seqno"])
        # Same key again: the new run starts 16 ahead of the saved seqno.
        mesh2 = Mesh()
        a2 = mesh2.add("a", a.private, a.daemon.config)
        async with running(mesh2):
            assert a2.daemon.status()["seqno"] == (first + 16) & 0xFFFF
        return first

    asyncio.run(main())


def test_state_of_another_router_id_is_not_used(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, _b = _pair(tmp_path)
        (tmp_path / "a.state").write_text(json.dumps(
            {"version": 1, "router_id": "0102030405060708", "seqno": 4000, "saved": 1.0}))
        async with running(mesh):
            assert a.daemon.status()["seqno"] == 0

    asyncio.run(main())


def test_an_unwritable_state_file_is_logged_and_the_daemon_runs_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    state = blocker / "a.state"  # its directory is a file: every save fails

    async def main() -> None:
        pa, pb = _keys(2)
        mesh = Mesh()
        b_pub = keys.public_from_private(pb)
        a = mesh.add("a", pa, config_text("a", str(tmp_path), {"b": b_pub},
                                          peer_extra={"b": 'may_originate = ["10.0.0.0/16"]'},
                                          state_file=str(state)))
        b = mesh.add("b", pb, config_text("b", str(tmp_path),
                                          {"a": keys.public_from_private(pa)},
                                          'addresses = ["10.0.2.0/24"]'))
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")

    with caplog.at_level(logging.WARNING, logger="wgcast"):
        asyncio.run(main())
    assert any("cannot save state" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(state)


# --------------------------------------------------------------------------- move holds


def _anycast_trio(tmp: Path, timers: str) -> tuple[Mesh, Node, Node, Node]:
    """a with peers b and c; b and c may serve the anycast prefix ANY."""
    pa, pb, pc = _keys(3)
    ka, kb, kc = (keys.public_from_private(k) for k in (pa, pb, pc))
    mesh = Mesh()
    anycast = 'anycast = ["10.99.0.0/16"]'
    a = mesh.add("a", pa, config_text("a", str(tmp), {"b": kb, "c": kc}, anycast,
                                      timers=timers))
    b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka}, anycast))
    c = mesh.add("c", pc, config_text("c", str(tmp), {"a": ka}, anycast))
    return mesh, a, b, c


async def _move_from_b_to_c(a: Node, b: Node, c: Node) -> None:
    await until(lambda: a.daemon.status()["neighbours_up"] == 2, what="a's neighbours up")
    await b.daemon.serve(ANY)
    await until(lambda: a.device.holder(ANY) == b.public, what="ANY on b")
    await c.daemon.serve(ANY, metric=200)
    await asyncio.sleep(0.2)
    assert a.device.holder(ANY) == b.public  # c announces a worse metric: b stays
    await b.daemon.serve(ANY, metric=DRAIN_METRIC)  # b drains; it stays up
    await until(lambda: a.device.holder(ANY) == c.public, what="ANY moved to c")


def test_move_hold_on_holds_a_move_away_from_a_live_peer(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b, c = _anycast_trio(tmp_path, 'move_hold = "200ms"')
        async with running(mesh):
            assert len(a.move_holds) == 1 and a.move_holds[0].opened
            assert a.daemon.status()["dataplane"]["hold_device"] == "wg-a-h"
            await _move_from_b_to_c(a, b, c)
            assert ("route_via", (["10.99.0.53/32"], "wg-a-h")) in a.host.calls
            await until(lambda: a.daemon.status()["dataplane"]["held_moves"] == 1,
                        what="the hold to end")
            assert a.move_holds[0].stats.holds == 1 and not a.move_holds[0].held
            assert a.host.routes[ANY] == "wg-a"  # the route is back on WireGuard
            c_ = a.daemon.counters()
            assert c_ is not None and c_.held_moves == 1 and c_.move_hold_dropped == 0
        assert a.move_holds[0].closed

    asyncio.run(main())


def test_move_hold_off_moves_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b, c = _anycast_trio(tmp_path, 'move_hold = "0s"')
        async with running(mesh):
            assert a.move_holds == []
            assert a.daemon.status()["dataplane"]["hold_device"] is None
            await _move_from_b_to_c(a, b, c)
            await asyncio.sleep(0.1)
            assert not any(call[0] == "route_via" for call in a.host.calls)
            assert a.daemon.status()["dataplane"]["held_moves"] == 0
            c_ = a.daemon.counters()
            assert c_ is not None and c_.move_hold_dropped is None

    asyncio.run(main())


def test_no_move_hold_away_from_a_dead_peer(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b, c = _anycast_trio(tmp_path, 'move_hold = "200ms"')
        async with running(mesh):
            await until(lambda: a.daemon.status()["neighbours_up"] == 2, what="neighbours")
            await b.daemon.serve(ANY)
            await c.daemon.serve(ANY, metric=200)  # worse: b is selected and stays
            await until(lambda: a.device.holder(ANY) == b.public, what="ANY on b")
            mesh.cut.add(b.daemon.control)  # b goes silent: a declares it dead, moves
            await until(lambda: a.device.holder(ANY) == c.public, what="ANY moved to c")
            assert not any(call[0] == "route_via" for call in a.host.calls)

    asyncio.run(main())


def test_no_move_hold_away_from_an_origin_that_withdrew(tmp_path: Path) -> None:
    """b, the origin a routes through, withdraws its instance (its service died): a
    moves to c at once. Nothing of b's instance can come back, a hold would only
    lengthen the outage. (A drain, above, is still held.)"""
    async def main() -> None:
        mesh, a, b, c = _anycast_trio(tmp_path, 'move_hold = "200ms"')
        async with running(mesh):
            await until(lambda: a.daemon.status()["neighbours_up"] == 2, what="neighbours")
            await b.daemon.serve(ANY)
            await c.daemon.serve(ANY, metric=200)  # worse: b is selected and stays
            await until(lambda: a.device.holder(ANY) == b.public, what="ANY on b")
            await b.daemon.unserve(ANY, wait=0.0)
            await until(lambda: a.device.holder(ANY) == c.public, what="ANY moved to c")
            assert not any(call[0] == "route_via" for call in a.host.calls)
            assert a.daemon.status()["dataplane"]["held_moves"] == 0

    asyncio.run(main())


# --------------------------------------------------------------------------- timers


def _sent_per_second(tmp: Path, timers: str) -> float:
    """Datagrams a sends b per second once b is up, with a's `[timers]` extra keys."""
    async def main() -> float:
        pa, pb = _keys(2)
        mesh = Mesh()
        a = mesh.add("a", pa, config_text("a", str(tmp), {"b": keys.public_from_private(pb)},
                                          timers=timers))
        mesh.add("b", pb, config_text("b", str(tmp), {"a": keys.public_from_private(pa)}))
        async with running(mesh):
            await until(lambda: a.daemon.status()["neighbours_up"] == 1, what="b up")
            t = a.daemon.transport
            assert isinstance(t, MemoryTransport)
            before = t.sent
            await asyncio.sleep(1.0)
            return (t.sent - before) / 1.0

    return asyncio.run(main())


def test_the_hello_interval_sets_the_rate_of_hellos(tmp_path: Path) -> None:
    # idle_hello = 0: every neighbour gets Hellos at the Hello interval (b routes nothing
    # through a, so it would otherwise ask for idle ones; test_config_effects covers that).
    fast = _sent_per_second(tmp_path, 'hello = "50ms"\nidle_hello = "0s"')
    slow = _sent_per_second(tmp_path, 'hello = "250ms"\nidle_hello = "0s"')
    assert fast > 2.5 * slow and slow >= 3, (fast, slow)


def test_the_dead_interval_sets_how_long_silence_is_tolerated(tmp_path: Path) -> None:
    """`timers.dead`: a wgcast neighbour whose Hello is late is probed, and declared down
    after dead + 1 unanswered probes (a generic one after dead silent Hello intervals):
    a larger `dead` sends more probes before giving up (more loss tolerated)."""
    def probes_until_down(timers: str) -> tuple[float, int]:
        async def main() -> tuple[float, int]:
            pa, pb = _keys(2)
            mesh = Mesh()
            a = mesh.add("a", pa, config_text("a", str(tmp_path),
                                              {"b": keys.public_from_private(pb)},
                                              timers=timers))
            # b sends a Hellos at the Hello interval (a routes nothing through b, so it
            # would ask for idle ones).
            b = mesh.add("b", pb, config_text("b", str(tmp_path),
                                              {"a": keys.public_from_private(pa)},
                                              timers='idle_hello = "0s"'))
            async with running(mesh):
                await until(lambda: a.daemon.status()["neighbours_up"] == 1, what="b up")
                loop = asyncio.get_running_loop()
                t = a.daemon.transport
                assert isinstance(t, MemoryTransport)
                t0, sent0 = loop.time(), t.sent
                mesh.cut.add(b.daemon.control)
                await until(lambda: a.daemon.status()["neighbours_up"] == 0, timeout=10,
                            what="b down")
                return loop.time() - t0, t.sent - sent0

        return asyncio.run(main())

    short, short_sent = probes_until_down("dead = 3")
    _, long_sent = probes_until_down("dead = 20")
    assert short < 0.5, short
    assert long_sent >= short_sent + 10, (short_sent, long_sent)


def test_a_planned_stop_with_restart_hold_keeps_the_neighbours_waiting(
        tmp_path: Path) -> None:
    """`timers.restart_hold`: a daemon stopped by `run()`'s stop path sends a last Hello
    asking its neighbours to keep it that long; with 0 it just goes silent and the
    neighbours drop it after their dead interval (fast profile: 3 x 50 ms)."""
    def neighbour_kept_for(hold: str) -> float:
        async def main() -> float:
            pa, pb = _keys(2)
            mesh = Mesh()
            a = mesh.add("a", pa, config_text("a", str(tmp_path),
                                              {"b": keys.public_from_private(pb)},
                                              timers=f'restart_hold = "{hold}"\n'
                                                     'idle_hello = "0s"'))
            b = mesh.add("b", pb, config_text("b", str(tmp_path),
                                              {"a": keys.public_from_private(pa)}))
            await b.daemon.start()
            run = asyncio.create_task(a.daemon.run())
            try:
                await until(lambda: b.daemon.status()["neighbours_up"] == 1, what="a up")
                loop = asyncio.get_running_loop()
                a.daemon.stop()
                await asyncio.wait_for(run, 10)
                t0 = loop.time()
                await until(lambda: b.daemon.status()["neighbours_up"] == 0, timeout=10,
                            what="a dropped by b")
                return loop.time() - t0
            finally:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
                mesh.close()

        return asyncio.run(main())

    assert neighbour_kept_for("0s") < 1.0
    assert neighbour_kept_for("2s") >= 1.5  # the hold asked for 2 s: b may not cut it short


def _metric_of_b_net(tmp: Path, link: str) -> int:
    """The metric a selects for b's prefix, with a's `[link]` section."""
    async def main() -> int:
        mesh, a, b = _pair(tmp, 'may_originate = ["10.0.0.0/16"]', f"[link]\n{link}")
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")
            route = next(r for r in a.daemon.route_table() if r["prefix"] == str(B_NET))
            return int(route["metric"])

    return asyncio.run(main())


def test_the_link_base_cost_is_the_cost_of_each_hop(tmp_path: Path) -> None:
    cheap = _metric_of_b_net(tmp_path, "base_cost = 100\nrtt_cost_per_ms = 0")
    dear = _metric_of_b_net(tmp_path, "base_cost = 500\nrtt_cost_per_ms = 0")
    assert dear - cheap == 400, (cheap, dear)


def test_max_routes_per_peer_caps_what_a_neighbour_may_give(tmp_path: Path) -> None:
    nets = [ipaddress.ip_network(f"10.0.{i}.0/24") for i in range(2, 6)]
    b_addresses = "addresses = [" + ", ".join(f'"{n}"' for n in nets) + "]"

    def held(a_extra: str) -> tuple[int, dict[str, Any]]:
        async def main() -> tuple[int, dict[str, Any]]:
            mesh, a, b = _pair(tmp_path, 'may_originate = ["10.0.0.0/16"]', a_extra,
                               b_extra=b_addresses)
            async with running(mesh):
                await until(lambda: sum(a.device.holder(n) == b.public for n in nets) >= 2,
                            what="b's prefixes on b")
                await asyncio.sleep(0.3)  # several updates: nothing more is taken
                return (sum(a.device.holder(n) == b.public for n in nets),
                        a.daemon.status()["announcements_refused"])

        return asyncio.run(main())

    count, refused = held("max_routes_per_peer = 2")
    assert count == 2 and refused.get("over limit", {}).get("b", 0) > 0, refused
    count, refused = held("")
    assert count == len(nets) and "over limit" not in refused, refused


# --------------------------------------------------------------------------- RFC 8966 peers


class _Recording(MemoryTransport):
    """A memory transport that remembers every destination; ff02::1:6 is delivered to
    the one other daemon of the mesh (a single-peer WireGuard link)."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh)
        self.dests: list[ipaddress.IPv6Address] = []

    def send(self, data: bytes, dest: ipaddress.IPv6Address) -> None:
        from wgcast.daemon.transport import BABEL_GROUP
        self.dests.append(dest)
        if dest == BABEL_GROUP:
            others = [c for c in self.mesh.transports if c != self.control]
            if len(others) == 1:
                dest = others[0]
        super().send(data, dest)


def test_multicast_hellos_for_generic_and_single_peer_links(tmp_path: Path) -> None:
    """A `babel = "generic"` peer gets its datagrams at ff02::1:6 (added to its
    AllowedIPs), so does the only peer of a link whose AllowedIPs cover the group;
    peers of a multi-peer interface keep unicast. Both pairs still become neighbours."""
    from wgcast.daemon.transport import BABEL_GROUP
    group = ipaddress.ip_network("ff02::1:6/128")

    async def main() -> None:
        mesh, a, b = _pair(tmp_path, 'babel = "generic"\nmay_originate = ["10.0.2.0/24"]')
        ta, tb = _Recording(mesh), _Recording(mesh)
        a.daemon.transport, b.daemon.transport = ta, tb
        # b's only peer (a) is at ::/0, as on babeld's WireGuard links.
        b.device.peers[a.public] = [ipaddress.ip_network("::/0")]
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")
            assert a.daemon.multicast == {"b"} and b.daemon.multicast == {"a"}
            assert group in a.device.peers[b.public]
            assert set(ta.dests) == {BABEL_GROUP} and set(tb.dests) == {BABEL_GROUP}

    asyncio.run(main())

    async def multi() -> None:
        pa, pb, pc = _keys(3)
        ka, kb, kc = (keys.public_from_private(p) for p in (pa, pb, pc))
        mesh = Mesh()
        a = mesh.add("a", pa, config_text("a", str(tmp_path), {"b": kb, "c": kc}))
        mesh.add("b", pb, config_text("b", str(tmp_path), {"a": ka}))
        mesh.add("c", pc, config_text("c", str(tmp_path), {"a": ka}))
        ta = _Recording(mesh)
        a.daemon.transport = ta
        a.device.peers[kb] = [ipaddress.ip_network("::/0")]
        async with running(mesh):
            await until(lambda: len(ta.dests) > 4, what="a sends")
            assert a.daemon.multicast == set()
            assert BABEL_GROUP not in ta.dests

    asyncio.run(multi())
