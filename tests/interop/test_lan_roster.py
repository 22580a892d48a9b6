"""A LAN router's prefixes through a mesh with a roster.

    L (babeld 1.14, router-id 02:00:00:ff:fe:00:00:07) --LAN-- A (wgcast) ==WG== B (wgcast)

A and B are wgcast nodes with a signed roster (A signs its routes). L is no wgcast node:
the roster names it by its Babel router-id, with its prefixes. A takes L's routes by
address (its `[[lan]]`'s `may_originate`) and passes them on; B, a roster member two
hops from L, accepts those the roster allows L (VERIFIED `roster`) and refuses the one
it does not (`not allowed`) although A passed it on.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from interop_lab import (
    A_V4,
    A_V6,
    B_V4,
    B_V6,
    ROOT,
    Link,
    babeld_114,
    kernel_route,
    wait_until,
)
from test_lan import L_V4, L_V6, make_lan

#: Announced by L, inside A's [[lan]] may_originate but outside L's roster entry.
L_OTHER = "fd00:1b::1/128"
L_RID = "02:00:00:ff:fe:00:00:07"


def _roster(link: Link) -> str:
    from wgcast.keys import decode_key
    from wgcast.origin import signing_public
    from wgcast.roster import generate_mesh_key, parse

    mesh_priv, mesh_pub = generate_mesh_key()
    sk = base64.b64encode(signing_public(decode_key(link.a_priv))).decode()
    text = f"""serial = 1
mesh_prefixes = ["fd00::/8", "10.0.0.0/8"]
[[members]]
name = "a"
public_key = "{link.a_pub}"
prefixes = ["{A_V6}", "{A_V4}"]
sign_key = "{sk}"
[[members]]
name = "b"
public_key = "{link.b_pub}"
prefixes = ["{B_V6}", "{B_V4}"]
[[members]]
name = "lan-r1"
router_id = "{L_RID}"
prefixes = ["fd00:1a::/48", "10.0.20.0/24"]
"""
    path = link.tmp / "roster.toml"
    path.write_text(parse(text).signed(mesh_priv).to_toml())
    return f'roster = "{path}"\nmesh_key = "{base64.b64encode(mesh_pub).decode()}"'


def _api(sock: str, cmd: str) -> dict[str, Any]:
    from wgcast.client import Client
    with Client(sock) as c:
        return c.request({"cmd": cmd})


def _answers(sock: str) -> bool:
    from wgcast.client import WgcastError
    try:
        _api(sock, "status")
    except (WgcastError, OSError):
        return False
    return True


def test_a_lan_router_named_in_the_roster_reaches_the_mesh(link: Link) -> None:
    binary = babeld_114()
    if binary is None:
        pytest.skip("babeld 1.14 cannot be built (/work/shared/anchors/build-babeld.sh)")
    lan = make_lan(link)
    lan.ns.run("ip", "addr", "add", L_OTHER, "dev", "lo")
    conf = link.tmp / "babeld-l.conf"
    conf.write_text(f"router-id {L_RID}\n"
                    f"interface {lan.l_if} type wired hello-interval 0.5\n"
                    "redistribute local ip fd00:1a::/48 le 128 allow\n"
                    "redistribute local ip fd00:1b::/48 le 128 allow\n"
                    "redistribute local ip 10.0.20.0/24 le 32 allow\n"
                    "redistribute local deny\nredistribute deny\n")
    link.spawn(lan.ns, [binary, "-c", str(conf), "-I", str(link.tmp / "babeld-l.pid"),
                        "-S", str(link.tmp / "babeld-l.state"), "-d", "1"], "babeld-l.log")
    roster = _roster(link)
    socks = {}
    for me, peer_name, peer_pub, ifname, own, extra in (
            ("a", "b", link.b_pub, link.a_if, (A_V6, A_V4),
             f'[[lan]]\ninterface = "{lan.a_if}"\n'
             'may_originate = ["fd00:1a::/48", "fd00:1b::/48", "10.0.20.0/24"]\n'),
            ("b", "a", link.a_pub, link.b_if, (B_V6, B_V4), "")):
        ns = link.a if me == "a" else link.b
        if me == "b":
            ns.run("ip", "addr", "add", B_V6, "dev", "lo", check=False)  # (already there)
        sock = socks[me] = str(link.tmp / f"{me}.sock")
        path = link.tmp / f"{me}.toml"
        path.write_text(f"""{roster}
interface = "{ifname}"
api_socket = "{sock}"
state_file = "{link.tmp}/{me}.state"
probe_port = 0
addresses = ["{own[0]}", "{own[1]}"]

[[peers]]
name = "{peer_name}"
public_key = "{peer_pub}"

{extra}""")
        link.spawn(ns, [str(ROOT / ".venv/bin/wgcast"), "run", "-v", "-c", str(path)],
                   f"wgcast-{me}.log")
        wait_until(lambda sock=sock: _answers(sock), 60, f"wgcast {me}'s API")  # type: ignore[misc]
    try:
        for p in (L_V6, L_V4, L_OTHER):
            wait_until(lambda p=p: lan.l_ll in kernel_route(link.a.name, p), 45,  # type: ignore[misc]
                       f"A: a route to {p} via L")
        for p in (L_V6, L_V4):
            wait_until(lambda p=p: f"dev {link.b_if}" in kernel_route(link.b.name, p),  # type: ignore[misc]
                       45, f"B: a route to {p} through A")

        def b_route(prefix: str) -> dict[str, Any]:
            routes = _api(socks["b"], "routes")["routes"]
            return next((dict(r) for r in routes if r["prefix"] == prefix), {})

        for p in (L_V6, L_V4):
            r = b_route(p)
            assert r["origin"] == "lan-r1" and r["verified"] == "roster", r
        assert b_route(A_V6)["verified"] == "signed"

        def refused_at_b() -> bool:
            by_reason = _api(socks["b"], "status")["status"]["announcements_refused"]
            return "a" in by_reason.get("not allowed", {})

        wait_until(refused_at_b, 30, f"B: {L_OTHER} refused (outside lan-r1's entry)")
        assert kernel_route(link.b.name, L_OTHER) == ""
    except BaseException:
        for log in ("wgcast-a.log", "wgcast-b.log", "babeld-l.log"):
            print(f"---- {log}\n" + link.log(log))
        raise
