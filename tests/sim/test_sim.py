"""Simulated meshes in virtual time: invariants under faults.

Every scenario checks, after every route change, that no forwarding loop exists (for any
prefix, anycast included) and, after each quiescence, that every node routes each prefix
to its nearest live origin by the metric (against shortest paths computed independently
with networkx; within the selection margin), or nowhere when none is reachable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Sequence

import networkx as nx
import pytest

from wgcast.babel.engine import NodeConfig
from wgcast.babel.errors import RemoteProtocolError
from wgcast.babel.wire import (
    OriginSig,
    PacketWriter,
    RouteUpdate,
    Tiebreak,
    decode_packet,
    encode_updates,
    fast_updates,
    intern_prefix,
    resolve,
)
from wgcast.sim.checker import LoopChecker, RepairWatch, check_routes, live_graph
from wgcast.sim.network import SimNetwork
from wgcast.sim.scenario import (
    Scenario,
    anycast_prefix,
    build_topology,
    node_config,
    unicast_prefix,
)

# tests/sim/test_scenarios.py holds the acceptance runs; these complement them
# (other topology/fault pairs, restarts with and without a saved seqno, loss, the CLI and
# the engine's fast paths against the wire codec).


def _ok(r: dict[str, object]) -> None:
    assert r["loops"] == 0, r.get("loop_sample")
    assert r["wrong_routes"] == 0, r["phases"]
    assert r["converged"], r["phases"]


@pytest.mark.parametrize(("topology", "fail"), [
    ("grid:5x5", "origin"),
    ("line:10", "node"),
    ("ring:16", "node"),
    ("random:40:4", "node"),
    ("ring:16", "partition"),
    ("grid:5x5", "partition"),
    ("random:40:4", "link"),
])
def test_fault_then_recovery(topology: str, fail: str) -> None:
    """origin: every node moves from the retracted nearest instance to the next nearest;
    node: routes go around the crashed transit node (or nowhere), which restarts with its
    saved seqno + 1; partition/link: routes follow the cut and come back after it. No loop
    at any step, nearest routes after every quiescence."""
    r = Scenario(topology=topology, anycast=(2, 3), fail=fail, seed=4).run()
    _ok(r)
    assert r["repair_ms"] is not None
    if fail != "origin":
        assert r["recovery_repair_ms"] is not None


@pytest.mark.parametrize("saved", [True, False])
@pytest.mark.parametrize("topology", ["grid:4x4", "random:30:4"])
def test_restart_seqno(topology: str, saved: bool) -> None:
    """A node that had seqno 5 crashes and restarts. With its state file (seqno = saved
    + 1) its routes are accepted at once; without (seqno 0, older than what the others
    remember), its neighbours' seqno requests make it catch up, and the mesh routes to it
    again either way."""
    topo = build_topology(topology, seed=7)
    victim = "n6"

    def make(name: str) -> NodeConfig:
        cfg = node_config(name)
        return dataclasses.replace(cfg, seqno=5) if name == victim else cfg

    net = SimNetwork(topo, make, seed=7)
    loops = LoopChecker(net)
    prefixes = [unicast_prefix(i + 1) for i in range(len(topo.nodes))]
    for i, name in enumerate(topo.nodes):
        net.originate(name, prefixes[i])
    assert net.run_until_quiet(5.0, 60.0)
    own = unicast_prefix(topo.index(victim))
    assert net.nodes[victim].seqno == 5
    assert check_routes(net, prefixes).wrong_count == 0
    net.crash(victim)
    assert net.run_until_quiet(5.0, net.now + 60.0)
    assert check_routes(net, prefixes).wrong_count == 0
    assert all(own not in net.fib[n] for n in net.alive)
    net.restart(victim, seqno=net.saved_seqno[victim] + 1 if saved else 0)
    watch = RepairWatch(net, [own])
    assert net.run_until_quiet(5.0, net.now + 60.0)
    watch.close()
    check = check_routes(net, prefixes)
    assert check.wrong_count == 0, check.wrong[:3]
    assert loops.loops == 0
    repair = watch.repair_ms()
    assert repair is not None
    if saved:
        # Accepted at once: the neighbour handshake plus propagation, no request round.
        assert net.nodes[victim].seqno == 6
        assert repair < 1500, repair
    else:
        # The others remembered seqno 5: seqno requests brought the node past it.
        assert net.nodes[victim].seqno > 5
        assert net.nodes[victim].counters["seqno_requests_in"] > 0


def test_retraction_100_nodes_moves_within_two_path_delays() -> None:
    """After a retraction every node has a working route to another instance within 2 x
    the largest path delay plus per-packet processing. A node that then moves on to a
    better instance costs the nodes behind it a source release (a round trip to its
    neighbours, docs/architecture.md): the last repair is allowed a quarter more."""
    processing = 0.0002
    sc = Scenario(topology="random:100:4", anycast=(3, 3), fail="origin", seed=2,
                  unicast=False, processing=processing)
    r = sc.run()
    _ok(r)
    g = live_graph(sc.net, sc.net.nodes["n1"].config.link)
    diameter_s = max(max(d.values()) for _, d in nx.all_pairs_dijkstra_path_length(
        g, weight="delay"))
    hops = nx.diameter(g)
    bound_ms = 2 * (diameter_s + hops * processing) * 1000
    assert r["repair_ms"] is not None and r["first_repair_ms"] is not None
    first, last = float(r["first_repair_ms"]), float(r["repair_ms"])  # type: ignore[arg-type]
    assert 0 < first <= bound_ms, (first, bound_ms)
    assert first <= last <= 1.25 * bound_ms, (last, bound_ms)


def test_loss_still_converges() -> None:
    sc = Scenario(topology="random:30:4", anycast=(2, 3), fail="origin", seed=9, loss="1%")
    r = sc.run()
    _ok(r)
    assert int(r["dropped"]) > 0  # type: ignore[call-overload]


def test_cli_json() -> None:
    import json

    from click.testing import CliRunner

    from wgcast.cli.sim import sim

    res = CliRunner().invoke(sim, ["--topology", "ring:8", "--anycast", "1x2", "--fail",
                                   "origin", "--seed", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key in ("nodes", "links", "prefixes", "converged", "convergence_ms", "failover_ms",
                "loops", "wrong_routes", "msgs_per_node_s", "bytes_per_node_s", "wall_s"):
        assert key in out
    assert out["nodes"] == 8 and out["prefixes"] == 9 and out["converged"]
    res = CliRunner().invoke(sim, ["--topology", "line:4", "--fail", "none"])
    assert res.exit_code == 0 and "converged: yes" in res.output


def test_idle_window_counts_steady_traffic_apart_from_boot() -> None:
    """--idle: the traffic of a quiet window after boot, per node and second; nothing
    changes in it, and it costs less per second than the boot burst."""
    from click.testing import CliRunner

    from wgcast.cli.sim import sim

    r = Scenario(topology="full:6", anycast=(2, 2), fail="origin", seed=3, idle=8.0).run()
    _ok(r)
    assert r["idle_s"] == 8.0 and r["idle_route_changes"] == 0
    idle_p, idle_b = int(r["idle_packets"]), int(r["idle_bytes"])  # type: ignore[call-overload]
    assert idle_p > 0 and idle_b > 0
    assert idle_p + int(r["boot_packets"]) <= int(r["packets"])  # type: ignore[call-overload]
    assert r["idle_msgs_per_node_s"] == round(idle_p / 6 / 8.0, 3)
    assert float(r["idle_bytes_per_node_s"]) < float(r["boot_bytes_per_node_s"])  # type: ignore[arg-type]
    res = CliRunner().invoke(sim, ["--topology", "ring:5", "--anycast", "1x2", "--idle", "4"])
    assert res.exit_code == 0 and "idle (4.0 s after boot)" in res.output


# ---------------------------------------------------------------- engine fast paths


def _random_prefix(rng: random.Random) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if rng.random() < 0.4:
        addr = rng.getrandbits(32) if rng.random() < 0.5 else 0x0A000000 | rng.getrandbits(10)
        return ipaddress.IPv4Network((addr, rng.choice([0, 8, 24, 32, rng.randrange(33)])),
                                     strict=False)
    addr6 = (0xFD00 << 112) | rng.getrandbits(24) << rng.choice([0, 64])
    return ipaddress.IPv6Network((addr6, rng.choice([0, 48, 64, 128, rng.randrange(129)])),
                                 strict=False)


def _slow(data: bytes) -> Sequence[tuple[object, ...]] | None:
    try:
        skipped: list[str] = []
        out = [(m.prefix, m.router_id, m.seqno, m.metric, m.interval, m.tie, m.sig)
               for m in resolve(decode_packet(data), skipped) if isinstance(m, RouteUpdate)]
    except RemoteProtocolError:
        return None
    return None if skipped else out


def test_fast_update_codec_matches_wire() -> None:
    """The engine's Update encoder is byte for byte PacketWriter; its Update decoder gives
    what decode_packet + resolve give, or declines (then the general decoder runs)."""
    rng = random.Random(11)
    fast_seen = 0
    for _ in range(200):
        rids = [bytes(rng.randrange(1, 256) for _ in range(8)) for _ in range(3)]
        entries = [(intern_prefix(_random_prefix(rng)) if rng.random() < 0.5
                    else _random_prefix(rng), rng.choice(rids), rng.randrange(65536),
                    rng.choice([0, 0xFFFF, rng.randrange(0xFFFF)]),
                    rng.choice([0, rng.randrange(1, 1 << 64)]),
                    rng.choice([b"", rng.randbytes(68), rng.randbytes(rng.randrange(1, 40))]))
                   for _ in range(rng.randrange(1, 80))]
        max_body = rng.choice([1232, 200, 120])
        w = PacketWriter(max_body)
        for p, rid, seqno, metric, tie, sig in entries:
            w.add_update(p, rid, seqno, metric, 400, ((Tiebreak(tie),) if tie else ())
                         + ((OriginSig(sig),) if sig else ()))
        packets, offsets = encode_updates(entries, 400, max_body)
        assert packets == w.take()
        for (_, _, _, metric, _, _), (pi, off) in zip(entries, offsets, strict=True):
            assert int.from_bytes(packets[pi][off:off + 2], "big") == metric
        for pkt in packets:
            variants = [pkt, pkt[:rng.randrange(len(pkt))], pkt + b"\0"]
            b = bytearray(pkt)
            b[rng.randrange(4, len(b))] = rng.randrange(256)
            variants.append(bytes(b))
            for data in variants:
                fast = fast_updates(data)
                if fast is None:
                    continue
                fast_seen += 1
                assert fast == _slow(data)
    assert fast_seen > 200


def test_anycast_prefixes_distinct() -> None:
    assert len({anycast_prefix(k) for k in range(300)}) == 300
    assert len({unicast_prefix(i) for i in range(1, 2000)}) == 1999


def test_signing_on_converges_like_off() -> None:
    """Every node signs and checks origin signatures (`wgcast sim --sign`): the same
    routes, the same convergence in virtual time; periodic updates come from memory."""
    runs = {sign: Scenario(topology="random:12:3", anycast=(2, 2), fail="node", seed=3,
                           sign=sign).run() for sign in (False, True)}
    off, on = runs[False], runs[True]
    assert on["converged"] and on["loops"] == 0 and on["wrong_routes"] == 0
    assert (on["convergence_ms"], on["failover_ms"]) == (off["convergence_ms"],
                                                         off["failover_ms"])
    sig = on["signing"]
    assert isinstance(sig, dict) and sig["signed"] > 0
    assert sig["verified_from_memory"] > sig["verified"] > 0
    assert off["signing"] is None
