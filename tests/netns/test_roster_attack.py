"""Origin authorisation against a member of the mesh (issue 14), on a real ring.

ring:4 (n1 - n2 - n3 - n4 - n1), every daemon with the signed roster and signing on. n2
is the attacker: a legitimate WireGuard peer whose own daemon runs normally, while this
test sends, from n2's control address through n2's WireGuard interface, Updates built
with wgcast's own codec (PacketWriter, OriginSig) to its neighbour n1, the victim. Each
row of the issue's table is sent, and must be refused at n1, counted under its reason
for neighbour n2, with n1's real routes untouched. A honeypot catches any diversion: n2
holds n4's address on its loopback and answers for it, so a query from n1 to n4 that is
answered by "n2" went to the attacker; a prober from n1 to n4 runs during the whole
attack.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.netns

if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
    pytest.skip("needs root and wireguard-go", allow_module_level=True)

from wgcast.babel.wire import OriginSig, PacketWriter, centiseconds  # noqa: E402
from wgcast.keys import b64, decode_key, router_id  # noqa: E402
from wgcast.lab.core import Lab  # noqa: E402
from wgcast.lab.system import in_netns, wait_for  # noqa: E402
from wgcast.origin import Signer, signing_public  # noqa: E402
from wgcast.prefix import Prefix  # noqa: E402
from wgcast.roster import generate_mesh_key, parse  # noqa: E402

MESH_PRIV, MESH_PUB = generate_mesh_key()
MAX_ROUTES = 200
MAX_RATE = 50


def net(s: str) -> Prefix:
    return ipaddress.ip_network(s)


def write_roster(lab: Lab, path: str) -> None:
    """Each node may originate its /48 (its unicast lies inside) and serve its groups."""
    lines = ["serial = 1", f'mesh_prefixes = ["fd5a:{lab.id}::/32"]']
    for n in lab.nodes.values():
        space = ipaddress.ip_network(f"{n.unicast}/48", strict=False)
        lines += ["[[members]]", f'name = "{n.name}"', f'public_key = "{n.public_key}"',
                  f'prefixes = ["{space}"]',
                  "groups = [" + ", ".join(f'"{g}"' for g in n.serves) + "]",
                  f'sign_key = "{b64(signing_public(decode_key(n.private_key)))}"']
    text = parse("\n".join(lines) + "\n").signed(MESH_PRIV).to_toml()
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def ring4() -> Iterator[Lab]:
    holder: dict[str, Lab] = {}

    def hook(node: str, cfg: dict[str, Any]) -> None:
        lab = holder["lab"]
        path = os.path.join(lab.dir, "roster.toml")
        if not os.path.exists(path):
            write_roster(lab, path)
        cfg["roster"] = path
        cfg["mesh_key"] = b64(MESH_PUB)
        cfg["max_routes_per_peer"] = MAX_ROUTES
        cfg["max_update_rate"] = MAX_RATE

    lab = Lab("ring:4", instances="n1,n3", echo="all", services=False,
              config_hook=hook)
    holder["lab"] = lab
    with lab:
        yield lab


class Attacker:
    """Babel Updates from `node`'s control address, through its WireGuard interface."""

    def __init__(self, lab: Lab, node: str) -> None:
        n = lab.node(node)
        self.lab = lab
        self.private = decode_key(n.private_key)
        self.router_id = router_id(decode_key(n.public_key))
        with in_netns(lab.ns(node)):
            self.ifindex = socket.if_nametoindex(n.iface)
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind((n.control, 0, 0, self.ifindex))

    def signer(self, rid: bytes | None = None) -> Signer:
        """Signs with the attacker's own key, under any router-id it likes."""
        return Signer(self.private, rid or self.router_id, time.time)

    def send(self, to: str, updates: list[tuple[Prefix, bytes, int, bytes]],
             metric: int = 0) -> None:
        w = PacketWriter()
        for prefix, rid, seqno, sig in updates:
            w.add_update(prefix, rid, seqno, metric, centiseconds(4.0),
                         (OriginSig(sig),) if sig else ())
        dst = (self.lab.node(to).control, 6696, 0, self.ifindex)
        for pkt in w.take():
            self.sock.sendto(pkt, dst)

    def close(self) -> None:
        self.sock.close()


def refused(lab: Lab, node: str, neighbour: str) -> dict[str, int]:
    table = lab.api(node, {"cmd": "status"})["status"]["announcements_refused"]
    return {why: by.get(neighbour, 0) for why, by in table.items()}


def routes(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    return {r["prefix"]: r for r in lab.api(node, {"cmd": "routes"})["routes"]}


def test_every_row_of_the_attack_table_is_refused(ring4: Lab) -> None:
    lab = ring4
    uni = {n: f"{lab.unicast(n)}/128" for n in lab.nodes}
    group = lab.groups[0].prefix
    # Converged, every route checked by its origin's signature.
    want = set(uni.values()) | {group}

    def settled() -> bool:
        rs = routes(lab, "n1")
        return want <= set(rs) and all(rs[p]["verified"] in ("signed", "local") for p in want)

    wait_for(settled, 30, "n1 has every route, verified")
    wait_for(lambda: lab.query("n1", lab.unicast("n4"), timeout=0.5) is not None, 15,
             "n1 -> n4")
    before = routes(lab, "n1")
    # What must not move: the origin of each route (its next hop may, between equal-cost
    # paths: n3 is two hops away either way), and n4, a direct peer, stays direct.
    real = {p: before[p]["origin"] for p in want}
    assert before[uni["n4"]]["via"] == "n4"
    seqno_n4 = lab.api("n4", {"cmd": "status"})["status"]["seqno"]

    # The honeypot: n2 answers for n4's address, so a diverted query is answered by n2.
    lab.exec("n2", ["ip", "-6", "addr", "add", uni["n4"], "dev", "lo"])
    att = Attacker(lab, "n2")
    rid = {n: router_id(decode_key(lab.node(n).public_key)) for n in lab.nodes}
    own, forge_n4 = att.signer(), att.signer(rid["n4"])
    n4_space_more = net(f"fd5a:{lab.id}:4:1::/64")
    random_rid = bytes(random.randrange(1, 255) for _ in range(8))
    rows: list[tuple[str, list[tuple[Prefix, bytes, int, bytes]], str]] = [
        ("another node's /128, attacker's own router-id", [
            (net(uni["n4"]), att.router_id, 1, own.sign(net(uni["n4"]), 1))], "not allowed"),
        ("a non-adjacent node's /128, random router-id", [
            (net(uni["n3"]), random_rid, 1, b"")], "not in roster"),
        ("a direct peer's /128, its forged router-id", [
            (net(uni["n4"]), rid["n4"], (seqno_n4 + 1) & 0xFFFF,
             forge_n4.sign(net(uni["n4"]), (seqno_n4 + 1) & 0xFFFF))], "bad signature"),
        ("the same with seqno 30006", [
            (net(uni["n4"]), rid["n4"], 30006, forge_n4.sign(net(uni["n4"]), 30006))],
         "bad signature"),
        ("the same without a signature", [(net(uni["n4"]), rid["n4"], 30007, b"")],
         "unsigned"),
        ("a more-specific inside a peer's space, the owner's forged router-id", [
            (n4_space_more, rid["n4"], 1, forge_n4.sign(n4_space_more, 1))], "bad signature"),
        ("an anycast prefix the attacker does not serve", [
            (net(group), att.router_id, 1, own.sign(net(group), 1))], "not allowed"),
        ("the internet's space", [
            (p, att.router_id, 1, own.sign(p, 1))
            for p in (net("2000::/3"), net("0.0.0.0/2"), net("8.8.8.0/24"))],
         "outside mesh space"),
        ("the victim's own /128, its forged router-id", [
            (net(uni["n1"]), rid["n1"], 1, forge_n4.sign(net(uni["n1"]), 1))],
         "claims our address"),
    ]
    prober = lab.start_prober("n1", addr=lab.unicast("n4"), duration=40.0, interval_ms=20.0,
                              realtime=False)
    try:
        for what, updates, why in rows:
            start = refused(lab, "n1", "n2").get(why, 0)
            for _ in range(3):  # as a refresh would come
                att.send("n1", updates)
                time.sleep(0.2)
            goal = start + len(updates)
            def counted(why: str = why, goal: int = goal) -> bool:
                return refused(lab, "n1", "n2").get(why, 0) >= goal
            wait_for(counted, 10, f"{what}: refused as {why!r}")
            now = routes(lab, "n1")
            for prefix, *_ in updates:
                if str(prefix) in real:
                    assert now[str(prefix)]["origin"] == real[str(prefix)], what
                    assert now[str(prefix)]["verified"] in ("signed", "local"), what
                else:
                    assert str(prefix) not in now, what

        # A flood of valid Updates inside the attacker's own space: the per-neighbour
        # cap holds (over limit), new signatures are rate-limited (over rate).
        mine = [net(f"fd5a:{lab.id}:2:{i:x}::/64") for i in range(1, 1001)]
        att.send("n1", [(p, att.router_id, 1, own.sign(p, 1)) for p in mine])
        wait_for(lambda: refused(lab, "n1", "n2").get("over limit", 0) > 0, 20,
                 "the flood capped (over limit)")
        att.send("n1", [(p, att.router_id, 2, own.sign(p, 2)) for p in mine[:MAX_ROUTES]])
        wait_for(lambda: refused(lab, "n1", "n2").get("over rate", 0) > 0, 20,
                 "new signatures rate-limited (over rate)")
        # 10k random well-formed Updates: refused, the daemon stays responsive.
        rng = random.Random(14)
        junk = [(ipaddress.ip_network((rng.getrandbits(128), rng.randrange(8, 129)),
                                      strict=False),
                 bytes(rng.randrange(1, 255) for _ in range(8)), 1, b"")
                for _ in range(10_000)]
        att.send("n1", junk)
        st = lab.api("n1", {"cmd": "status"})["status"]
        assert st["neighbours_up"] == 2
        assert sum(len(r["routes"]) for r in routes(lab, "n1").values()) <= \
            len(want) * 2 + MAX_ROUTES + 2
    finally:
        res = prober.wait()
        att.close()

    # No query from n1 to n4 reached the attacker; n1's real routes are as they were.
    nodes = {seg["node"] for seg in res["timeline"]} - {None}
    assert nodes == {"n4"}, res["timeline"][:10]
    assert res["answered"] > 0
    after = routes(lab, "n1")
    assert {p: after[p]["origin"] for p in want} == real
    assert after[uni["n4"]]["via"] == "n4"
    assert all(after[p]["verified"] in ("signed", "local") for p in want)
    for p in ("2000::/3", "0.0.0.0/2", "8.8.8.0/24", str(n4_space_more)):
        assert p not in after
    # The flood's routes were accepted (n2's own space, n2's key) but nobody refreshes
    # them: they die out on every node, none goes round the ring for ever (a looping
    # route counts to infinity; n2's daemon drops routes with its own router-id).
    flood = {str(p) for p in mine}

    def gone() -> bool:
        return all(not flood & set(routes(lab, n)) for n in ("n1", "n3", "n4"))

    wait_for(gone, 30, "the attacker's unrefreshed routes gone everywhere")
    wg = lab.wg_show("n1")["peers"]["n2"]["allowed_ips"]
    assert not {str(x) for x in wg} & {uni["n4"], "2000::/3", "0.0.0.0/2", "8.8.8.0/24"}
    # The real origin was not pushed to the forged seqno.
    seq = lab.api("n4", {"cmd": "status"})["status"]["seqno"]
    assert (seq - seqno_n4) & 0xFFFF < 1000, (seqno_n4, seq)
    with open(os.path.join(lab.dir, "n1.daemon.log")) as f:
        flaps = sum("down" in line and "neighbour" in line for line in f)
    print(f"\nprober n1 -> n4 during the attack: sent {res['sent']}, answered "
          f"{res['answered']}, lost {res['lost']}, outages {res['outages'][:5]}; "
          f"neighbour-down lines at n1: {flaps}; refused at n1 from n2: "
          f"{refused(lab, 'n1', 'n2')}; load {os.getloadavg()[0]:.1f}")
