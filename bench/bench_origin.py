"""The cost of origin signatures (docs/roster.md): per operation on one core, per Update
through the engine, and the simulator's convergence with signing on vs off.

- sign:    Signer.sign of a new (prefix, seqno): one Ed25519 signature;
- verify:  Verifier.check of a signature not seen before: one Ed25519 verification;
- memo:    Verifier.check of a signature verified before (a periodic update, or the same
           route from another neighbour): a dict lookup;
- engine:  Updates of new prefixes through one Node (receive -> accept -> selection ->
           triggered updates), with the daemon's policy: a roster, signatures checked
           (signed) vs a roster whose members have no sign_key (unsigned);
- sim:     `wgcast sim` side by side, signing off and on (virtual-time convergence is
           what the protocol does; cpu_s is what it costs this process).

    .venv/bin/python bench/bench_origin.py [--n 2000] [--repeats 5] [--sim random:100:6]
                                           [--quick]

CPU seconds of this process (process_time); medians of the repeats. Prints one JSON
object and writes bench/results/origin.json, with the load average (a loaded machine
makes the absolute rates noisy; the ratios less so).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import time
from collections.abc import Callable

from common import machine, write  # type: ignore[import-not-found]

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.wire import (
    AE_WILDCARD,
    HELLO_UNICAST,
    IHU,
    Hello,
    OriginSig,
    PacketWriter,
    Prefix,
    Timestamp,
)
from wgcast.daemon.peer_policy import PeerPolicy
from wgcast.keys import b64, generate_private, public_from_private, router_id
from wgcast.origin import Signer, Verifier, signing_public
from wgcast.roster import parse
from wgcast.sim.scenario import Scenario, parse_anycast

NOW = 1_800_000_000.0


def nets(n: int, base: str = "fd5a:1") -> list[Prefix]:
    return [ipaddress.ip_network(f"{base}:{i >> 16:x}:{i & 0xFFFF:x}::/64") for i in range(n)]


def timed(fn: Callable[[], int], repeats: int) -> dict[str, float]:
    """Median operations per CPU second over `repeats` runs of fn (which returns ops)."""
    rates = []
    for _ in range(repeats):
        t0 = time.process_time()
        ops = fn()
        dt = max(time.process_time() - t0, 1e-9)
        rates.append(ops / dt)
    return {"per_s": round(statistics.median(rates)), "min": round(min(rates)),
            "max": round(max(rates))}


def bench_crypto(n: int, repeats: int) -> dict[str, object]:
    w = generate_private()
    pub = public_from_private(w)
    rid = router_id(pub)
    sk = signing_public(w)
    prefixes = nets(n)
    counter = iter(range(1, 1 << 30))

    def sign() -> int:
        s = Signer(w, rid, lambda: NOW)
        k = next(counter) & 0xFFFF
        for p in prefixes:
            s.sign(p, k)
        return n

    signer = Signer(w, rid, lambda: NOW)
    bodies = [signer.sign(p, 1) for p in prefixes]

    def verify() -> int:
        v = Verifier()
        for p, b in zip(prefixes, bodies, strict=True):
            assert v.check(sk, p, rid, 1, b, NOW) is None
        return n

    memo_v = Verifier()
    for p, b in zip(prefixes, bodies, strict=True):
        memo_v.check(sk, p, rid, 1, b, NOW)

    def memo() -> int:
        for p, b in zip(prefixes, bodies, strict=True):
            memo_v.check(sk, p, rid, 1, b, NOW)
        return n

    return {"sign": timed(sign, repeats), "verify": timed(verify, repeats),
            "memo": timed(memo, repeats)}


def _hello_ihu(seqno: int) -> bytes:
    w = PacketWriter()
    w.add(Hello(HELLO_UNICAST, seqno, 20, (Timestamp((0,)),)))
    w.add(IHU(AE_WILDCARD, 96, 20))
    return w.take()[0]


def bench_engine(n: int, repeats: int) -> dict[str, object]:
    """Updates of n new prefixes from one neighbour, signed (checked) vs unsigned."""
    w0, w1 = generate_private(), generate_private()
    k0, k1 = public_from_private(w0), public_from_private(w1)
    rid1 = router_id(k1)
    prefixes = nets(n)
    origin = Signer(w1, rid1, lambda: NOW)
    sigs = [origin.sign(p, 1) for p in prefixes]
    out: dict[str, object] = {}
    for mode in ("unsigned", "signed"):
        sk = f'sign_key = "{b64(signing_public(w1))}"' if mode == "signed" else ""
        roster = parse(f"""serial = 1
mesh_prefixes = ["fd5a::/16"]
[[members]]
name = "n0"
public_key = "{b64(k0)}"
prefixes = ["fd5a:0::/48"]
[[members]]
name = "n1"
public_key = "{b64(k1)}"
prefixes = ["fd5a:1::/32"]
{sk}
""")
        w = PacketWriter()
        for p, sig in zip(prefixes, sigs, strict=True):
            w.add_update(p, rid1, 1, 96, 400, (OriginSig(sig),) if mode == "signed" else ())
        packets = w.take()

        def run(packets: list[bytes] = packets, roster: object = roster) -> int:
            policy = PeerPolicy([], [], own_router_id=router_id(k0), max_routes=10 * n,
                                roster=roster, max_rate=1e9)  # type: ignore[arg-type]
            policy.verifier = Verifier()
            policy.wall = lambda: NOW
            node = Node(NodeConfig(router_id(k0), accept=policy.accept), 0.0)
            policy.routes_from = node.route_count_via
            policy.has_route = node.has_route
            for nid in ("n1", "n2", "n3"):
                node.add_neighbour(nid)
            for nid in ("n1", "n2", "n3"):
                node.receive(0.0, nid, _hello_ihu(1))
            for nid in ("n1", "n2", "n3"):
                node.receive(0.01, nid, _hello_ihu(2))
            node.datagrams_to_send()
            for pkt in packets:
                node.receive(0.1, "n1", pkt)
            node.datagrams_to_send()
            assert len(node.selected) == n, len(node.selected)
            return n

        out[mode] = timed(run, repeats)
    u, s = out["unsigned"], out["signed"]
    assert isinstance(u, dict) and isinstance(s, dict)
    out["signed_over_unsigned_time"] = round(u["per_s"] / s["per_s"], 2)
    return out


def bench_sim(topology: str, fails: list[str]) -> list[dict[str, object]]:
    keys = ("converged", "convergence_ms", "failover_ms", "repair_ms", "recovery_ms",
            "loops", "wrong_routes", "msgs_per_node_s", "bytes_per_node_s", "cpu_s")
    rows = []
    for fail in fails:
        row: dict[str, object] = {"topology": topology, "fail": fail}
        for sign in (False, True):
            r = Scenario(topology=topology, anycast=parse_anycast("5x3"), fail=fail, seed=1,
                         sign=sign).run()
            row["on" if sign else "off"] = {k: r[k] for k in keys} | \
                ({"signing": r["signing"]} if sign else {})
        off, on = row["off"], row["on"]
        assert isinstance(off, dict) and isinstance(on, dict)
        row["ratio_on_off"] = {k: (round(on[k] / off[k], 3) if off.get(k) else None)
                               for k in ("convergence_ms", "failover_ms", "bytes_per_node_s",
                                         "cpu_s")}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sim", default="random:100:6", help="topology of the sim runs ('' : none)")
    ap.add_argument("--fails", default="origin,node")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    a = ap.parse_args()
    if a.quick:
        a.n, a.repeats, a.sim = 200, 2, "random:20:4"
    load0 = os.getloadavg()
    res: dict[str, object] = {"machine": machine(), "n": a.n, "repeats": a.repeats,
                              "crypto_one_core": bench_crypto(a.n, a.repeats),
                              "engine_new_updates": bench_engine(a.n, a.repeats)}
    if a.sim:
        res["sim"] = bench_sim(a.sim, [f for f in a.fails.split(",") if f])
    res["loadavg"] = {"start": load0, "end": os.getloadavg()}
    print(json.dumps(res, indent=1))
    write("origin", res)


if __name__ == "__main__":
    main()
