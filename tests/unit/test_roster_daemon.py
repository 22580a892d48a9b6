"""The roster in the real `Daemon` (in-memory back ends): every route is checked against
it, refusals are counted by reason, and a new roster file takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from pathlib import Path

from daemon_fakes import Mesh, Node, config_text, running, until

from wgcast import keys
from wgcast.daemon.peer_policy import PeerPolicy
from wgcast.keys import router_id
from wgcast.roster import generate_mesh_key, parse

B_NET = ipaddress.ip_network("10.0.2.0/24")
MESH_PRIV, MESH_PUB = generate_mesh_key()


def roster_text(serial: int, members: dict[str, tuple[bytes, list[str]]],
                mesh: str = '["10.0.0.0/8"]') -> str:
    out = [f"serial = {serial}", f"mesh_prefixes = {mesh}"]
    for name, (pub, prefixes) in members.items():
        out += ["[[members]]", f'name = "{name}"', f'public_key = "{keys.b64(pub)}"',
                "prefixes = [" + ", ".join(f'"{p}"' for p in prefixes) + "]"]
    return parse("\n".join(out) + "\n").signed(MESH_PRIV).to_toml()


def pair(tmp: Path, b_space: list[str] | None, b_addr: str = "10.0.2.0/24",
         serial: int = 1) -> tuple[Mesh, Node, Node, Path]:
    pa, pb = keys.generate_private(), keys.generate_private()
    ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)
    members = {"a": (ka, ["10.0.1.0/24"])}
    if b_space is not None:
        members["b"] = (kb, b_space)
    path = tmp / "roster.toml"
    path.write_text(roster_text(serial, members))
    extra = f'roster = "{path}"\nmesh_key = "{keys.b64(MESH_PUB)}"'
    mesh = Mesh()
    a = mesh.add("a", pa, config_text("a", str(tmp), {"b": kb}, extra))
    b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka}, f'addresses = ["{b_addr}"]'))
    return mesh, a, b, path


def test_a_member_s_space_is_accepted(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b, _ = pair(tmp_path, ["10.0.2.0/24"])
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")
            st = a.daemon.status()
            assert st["roster"] == {"serial": 1, "members": 2}
            assert st["announcements_refused"] == {}

    asyncio.run(main())


def test_refusals_are_counted_by_reason(tmp_path: Path) -> None:
    cases = [
        (["10.0.3.0/24"], "10.0.2.0/24", "not allowed"),   # a member, not its space
        (None, "10.0.2.0/24", "not in roster"),            # not a member at all
        (["10.0.2.0/24"], "8.8.8.0/24", "outside mesh space"),
    ]

    async def main(space: list[str] | None, addr: str, why: str, d: Path) -> None:
        mesh, a, _b, _ = pair(d, space, addr)
        net = ipaddress.ip_network(addr)
        async with running(mesh):
            await until(lambda: a.daemon.status()["announcements_refused"].get(why),
                        what=f"a refusal: {why}")
            assert a.device.holder(net) is None and net not in a.host.routes
            assert set(a.daemon.status()["announcements_refused"]) == {why}
            c = a.daemon.counters()
            assert c is not None and c.announcements_refused[("b", why)] > 0

    for i, (space, addr, why) in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        asyncio.run(main(space, addr, why, d))


def test_a_new_roster_takes_effect_without_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b, path = pair(tmp_path, None)
        async with running(mesh):
            watch = asyncio.create_task(a.daemon.watch_roster(every=0.05))
            try:
                await until(lambda: a.daemon.policy.dropped > 0, what="b refused")
                # An older serial that would allow b is refused: serial 1 stays.
                path.write_text(roster_text(0, {"b": (b.public, ["10.0.2.0/24"])}))
                await asyncio.sleep(0.3)
                assert a.daemon.status()["roster"]["serial"] == 1
                assert a.device.holder(B_NET) is None
                # Serial 2 adds b: its route is accepted at its next update.
                path.write_text(roster_text(2, {"a": (a.public, ["10.0.1.0/24"]),
                                                "b": (b.public, ["10.0.2.0/24"])}))
                await until(lambda: a.device.holder(B_NET) == b.public, timeout=10,
                            what="B_NET on b after the new roster")
                assert a.daemon.status()["roster"]["serial"] == 2
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch

    asyncio.run(main())


def test_policy_caps_routes_per_neighbour() -> None:
    p = PeerPolicy([], [], own_router_id=b"\x01" * 8, max_routes=2)
    have: set[object] = set()
    p.routes_from = lambda _nb: len(have)
    p.has_route = lambda _nb, prefix: prefix in have
    nets = [ipaddress.ip_network(f"10.9.{i}.0/24") for i in range(4)]
    rid = router_id(b"\x02" * 32)
    assert p.accept("x", nets[0], rid)
    have.add(nets[0])
    assert p.accept("x", nets[1], rid)
    have.add(nets[1])
    assert not p.accept("x", nets[2], rid)
    assert p.accept("x", nets[0], rid)  # a refresh of a route it has is no new route
    assert p.dropped_table() == {"over limit": {"x": 1}}


def test_own_prefix_echo_is_not_an_attack() -> None:
    own = ipaddress.ip_network("10.0.1.0/24")
    p = PeerPolicy([own], [], own_router_id=b"\x01" * 8)
    assert not p.accept("x", own, b"\x01" * 8)
    assert not p.accept("x", own, b"\x02" * 8)
    assert p.dropped == 1
    assert p.dropped_table() == {"own prefix echoed": {"x": 1}, "claims our address": {"x": 1}}


def test_generic_peer_routes_are_judged_by_address() -> None:
    """A babeld/BIRD/FRR neighbour's router-id is not the hash of its key: its routes
    inside its may_originate are accepted whatever their origin, the rest refused."""
    from wgcast.daemon.ports import PeerInfo
    space = ipaddress.ip_network("fd00:b::/48")
    v4 = ipaddress.ip_network("10.0.2.0/24")
    p = PeerPolicy([], [], own_router_id=b"\x01" * 8)
    key = b"\x03" * 32
    for generic in (False, True):
        p.add(PeerInfo("b", key, ipaddress.IPv6Address("fe80::b"), router_id(key),
                       (space, v4), generic=generic))
        babeld_rid = b"\x02\x00\x00\xff\xfe\x00\x00\x07"
        got = [p.accept("b", ipaddress.ip_network("fd00:b:0:1::/64"), babeld_rid),
               p.accept("b", ipaddress.ip_network("10.0.2.0/25"), babeld_rid),
               p.accept("b", ipaddress.ip_network("fe80::/64"), babeld_rid),
               p.accept("b", ipaddress.ip_network("192.168.77.0/24"), babeld_rid)]
        # A wgcast peer's routes with a foreign router-id are transit routes (the last
        # one, outside every peer's space, passes); a generic peer's must lie in its space.
        assert got == ([False, False, False, True] if not generic
                       else [True, True, False, False])


def signed_roster(serial: int, members: dict[str, tuple[bytes, list[str], bytes | None]]) -> str:
    out = [f"serial = {serial}", 'mesh_prefixes = ["10.0.0.0/8"]']
    for name, (pub, prefixes, sk) in members.items():
        out += ["[[members]]", f'name = "{name}"', f'public_key = "{keys.b64(pub)}"',
                "prefixes = [" + ", ".join(f'"{p}"' for p in prefixes) + "]"]
        if sk is not None:
            out.append(f'sign_key = "{keys.b64(sk)}"')
    return parse("\n".join(out) + "\n").signed(MESH_PRIV).to_toml()


def signed_pair(tmp: Path, b_sign: bytes | None = None, serial: int = 1
                ) -> tuple[Mesh, Node, Node, Path]:
    """a and b, both with the roster; b's entry lists `b_sign` (default: b's real key)."""
    from wgcast.origin import signing_public

    pa, pb = keys.generate_private(), keys.generate_private()
    ka, kb = keys.public_from_private(pa), keys.public_from_private(pb)
    path = tmp / "roster.toml"
    path.write_text(signed_roster(serial, {
        "a": (ka, ["10.0.1.0/24"], signing_public(pa)),
        "b": (kb, ["10.0.2.0/24"], b_sign or signing_public(pb))}))
    extra = f'roster = "{path}"\nmesh_key = "{keys.b64(MESH_PUB)}"'
    mesh = Mesh()
    a = mesh.add("a", pa, config_text("a", str(tmp), {"b": kb}, extra))
    b = mesh.add("b", pb, config_text("b", str(tmp), {"a": ka},
                                      f'addresses = ["10.0.2.0/24"]\n{extra}'))
    return mesh, a, b, path


def test_signed_routes_are_verified_and_shown_so(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, b, _ = signed_pair(tmp_path)
        async with running(mesh):
            await until(lambda: a.device.holder(B_NET) == b.public, what="B_NET on b")
            route = next(r for r in a.daemon.route_table() if r["prefix"] == str(B_NET))
            assert route["verified"] == "signed" and route["origin"] == "b"
            sg = b.daemon.status()["signing"]
            assert sg["on"] and sg["signed"] >= 1 and sg["problem"] is None
            assert a.daemon.status()["signing"]["verified"] >= 1
            assert a.daemon.status()["announcements_refused"] == {}

    asyncio.run(main())


def test_a_member_signing_with_another_key_is_refused(tmp_path: Path) -> None:
    from wgcast.origin import signing_public

    async def main() -> None:
        mesh, a, b, _ = signed_pair(tmp_path, b_sign=signing_public(keys.generate_private()))
        async with running(mesh):
            await until(lambda: a.daemon.status()["announcements_refused"]
                        .get("bad signature"), what="b's route refused")
            assert a.device.holder(B_NET) is None and B_NET not in a.host.routes
            problem = b.daemon.status()["signing"]["problem"]
            assert problem is not None and "every route it originates will be refused" in problem

    asyncio.run(main())


def test_a_restart_cannot_roll_the_roster_back(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, a, _b, path = signed_pair(tmp_path, serial=5)
        async with running(mesh):
            assert a.daemon.status()["roster"]["serial"] == 5
        # The file is replaced by an older (validly signed) roster while a is down.
        text = path.read_text().replace("serial = 5", "serial = 4")
        path.write_text(parse(text).signed(MESH_PRIV).to_toml())
        mesh2 = Mesh()
        a2 = mesh2.add("a", a.private, a.daemon.config)
        try:
            await a2.daemon.start()
        except RuntimeError as e:
            assert "serial 4 is older than the serial 5 accepted before" in str(e)
        else:
            raise AssertionError("an older roster was taken after a restart")
        finally:
            mesh2.close()

    asyncio.run(main())


def test_a_lan_neighbour_passes_members_routes_the_roster_allows() -> None:
    """Under a roster, a generic neighbour (a LAN's) is still judged by address inside its
    may_originate; outside it, a route whose origin is a roster member is judged by the
    roster (another wgcast edge on the LAN passing the mesh's routes on), signature
    included, and anything else is refused."""
    from wgcast.daemon.ports import PeerInfo
    from wgcast.origin import Verifier, signing_public

    pm, ps = keys.generate_private(), keys.generate_private()
    km, ks = keys.public_from_private(pm), keys.public_from_private(ps)
    roster = parse(signed_roster(1, {"m": (km, ["10.0.5.0/24"], None),
                                     "s": (ks, ["10.0.6.0/24"], signing_public(ps))}))
    p = PeerPolicy([], [], own_router_id=b"\x01" * 8, roster=roster)
    p.verifier = Verifier()
    lan_space = ipaddress.ip_network("fd00:b::/48")
    p.lan["fe80::2%eth1"] = PeerInfo("fe80::2%eth1", b"", ipaddress.IPv6Address("fe80::2"),
                                     b"", (lan_space,), generic=True)
    stranger = b"\x02\x00\x00\xff\xfe\x00\x00\x07"
    net = ipaddress.ip_network
    assert p.refusal("fe80::2%eth1", net("fd00:b:0:1::/64"), stranger) is None
    assert p.trust[("fe80::2%eth1", net("fd00:b:0:1::/64"))] == "address"
    assert p.refusal("fe80::2%eth1", net("10.0.5.0/24"), router_id(km)) is None
    assert p.trust[("fe80::2%eth1", net("10.0.5.0/24"))] == "roster"
    assert p.refusal("fe80::2%eth1", net("10.0.7.0/24"), router_id(km)) == "not allowed"
    assert p.refusal("fe80::2%eth1", net("10.0.5.0/24"), stranger) == "not allowed"
    # A member with a sign_key: its routes need its signature, on a LAN too.
    assert p.refusal("fe80::2%eth1", net("10.0.6.0/24"), router_id(ks)) == "unsigned"


def test_a_lan_router_in_the_roster_reaches_the_whole_mesh() -> None:
    """A LAN router's prefixes stop at the edge unless the roster names it (by its Babel
    router-id): then every member takes them from its wgcast peers as transit routes
    (trust "roster", unsigned)."""
    from wgcast.daemon.ports import PeerInfo

    pa = keys.generate_private()
    ka = keys.public_from_private(pa)
    lan_rid = bytes.fromhex("020000fffe000007")
    base = (f'serial = 1\nmesh_prefixes = ["10.0.0.0/8"]\n[[members]]\nname = "a"\n'
            f'public_key = "{keys.b64(ka)}"\nprefixes = ["10.0.1.0/24"]\n')
    named = base + ('[[members]]\nname = "lan-r1"\nrouter_id = "02:00:00:ff:fe:00:00:07"\n'
                    'prefixes = ["10.0.20.0/24"]\n')
    net = ipaddress.ip_network("10.0.20.1/32")
    for text, want in ((base, "not in roster"), (named, None)):
        roster = parse(text)  # (unsigned: the policy does not check the signature)
        p = PeerPolicy([], [], own_router_id=b"\x01" * 8, roster=roster)
        p.add(PeerInfo("a", ka, ipaddress.IPv6Address("fe80::a"), router_id(ka), ()))
        assert p.refusal("a", net, lan_rid) == want
        if want is None:
            assert p.trust[("a", net)] == "roster"
