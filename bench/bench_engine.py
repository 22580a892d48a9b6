"""Engine throughput: Update TLVs one Node processes per second on one core.

Packets full of Updates are built with wgcast.babel.wire.PacketWriter (as a neighbour
would send them) and fed to one Node through receive() from a neighbour that is up. Three
workloads, each timed over several repeats (the median is reported):

- new:      every Update is a prefix the node has never seen (route creation, selection,
            triggered updates to the other neighbours);
- changed:  the same prefixes again with a better metric (route update, reselection,
            triggered updates);
- periodic: a byte-identical repeat of the last round (a neighbour's periodic full dump:
            each Update is recognised as a refresh);
- repeat:   the same once more (now the whole packet is recognised as already seen).

    .venv/bin/python bench/bench_engine.py [--prefixes 5000] [--repeats 7] [--profile]
                                           [--quick]

Times are CPU seconds of this process (one core). Prints one JSON object and writes
bench/results/engine.json; --profile adds the top cProfile entries of the 'new' and
'changed' workloads to both.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import ipaddress
import json
import pstats
import statistics
import time
from pathlib import Path

from common import machine, write  # type: ignore[import-not-found]

from wgcast.babel.engine import Node, NodeConfig
from wgcast.babel.wire import (
    AE_WILDCARD,
    HELLO_UNICAST,
    IHU,
    Hello,
    PacketWriter,
    Timestamp,
)
from wgcast.keys import router_id
from wgcast.prefix import Prefix

PEERS = ("peer", "other1", "other2", "other3", "other4", "other5")


def make_node() -> Node:
    node = Node(NodeConfig(router_id(b"bench-node")), 0.0)
    for p in PEERS:
        node.add_neighbour(p)
    # Bring every neighbour up: a Hello and an IHU from each.
    for p in PEERS:
        w = PacketWriter()
        w.add(Hello(HELLO_UNICAST, 1, 60000, (Timestamp((0,)),)))  # 600 s: stays up
        w.add(IHU(AE_WILDCARD, 96, 60000, b"", (Timestamp((0, 0)),)))
        for pkt in w.take():
            node.receive(0.001, p, pkt)
    node.datagrams_to_send()
    while node.next_event() is not None:
        pass
    assert all(nb.up for nb in node.neighbours.values())
    return node


def build_packets(prefixes: list[Prefix], sources: list[bytes], metric: int,
                  seqno: int = 1) -> list[bytes]:
    w = PacketWriter()
    for i, p in enumerate(prefixes):
        w.add_update(p, sources[i % len(sources)], seqno, metric + (i % 7), 400)
    return w.take()


def feed(node: Node, packets: list[bytes], now: float) -> float:
    """CPU seconds (this process, one core) to process `packets` from "peer"."""
    t0 = time.process_time()
    for pkt in packets:
        node.receive(now, "peer", pkt)
        node.datagrams_to_send()
        while node.next_event() is not None:
            pass
    return time.process_time() - t0


def run(n: int, repeats: int) -> dict[str, object]:
    prefixes: list[Prefix] = [ipaddress.ip_network(f"fd10:{i >> 16:x}:{i & 0xFFFF:x}::/64")
                              for i in range(n)]
    sources = [router_id(f"src{i}".encode()) for i in range(16)]
    rounds: dict[str, list[float]] = {"new": [], "changed": [], "periodic": [], "repeat": []}
    tlvs = 0
    for r in range(repeats):
        node = make_node()
        first = build_packets(prefixes, sources, 200)
        second = build_packets(prefixes, sources, 150)  # better (feasible): reselect
        tlvs = n
        rounds["new"].append(n / feed(node, first, 1.0 + r * 0.0))
        rounds["changed"].append(n / feed(node, second, 1.5))
        rounds["periodic"].append(n / feed(node, second, 2.0))
        rounds["repeat"].append(n / feed(node, second, 2.5))
    return {
        "updates_per_round": tlvs,
        "repeats": repeats,
        "update_tlvs_per_s": {k: round(statistics.median(v)) for k, v in rounds.items()},
        "update_tlvs_per_s_all": {k: [round(x) for x in v] for k, v in rounds.items()},
    }


def profile(n: int) -> str:
    prefixes = [ipaddress.ip_network(f"fd10:{i >> 16:x}:{i & 0xFFFF:x}::/64")
                for i in range(n)]
    sources = [router_id(f"src{i}".encode()) for i in range(16)]
    node = make_node()
    first = build_packets(prefixes, sources, 200)
    second = build_packets(prefixes, sources, 150)
    prof = cProfile.Profile()
    prof.enable()
    feed(node, first, 1.0)
    feed(node, second, 1.5)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefixes", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine.json"))
    args = ap.parse_args()
    res = run(args.prefixes, 3 if args.quick else args.repeats)
    if args.profile:
        top = profile(args.prefixes)
        print(top)
        res["profile_top"] = top.splitlines()
    path = write("engine", {"machine": machine(), **res}, args.out)
    print(json.dumps(json.loads(path.read_text())["update_tlvs_per_s"]))


if __name__ == "__main__":
    main()
