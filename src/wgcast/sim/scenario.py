"""A whole simulation run: build, converge, fail, heal, check; one result dict.

This is what `wgcast sim` and bench/bench_sim.py run, and what the sim tests drive piece
by piece. Phases:

1. boot: every node originates its unicast prefix, the chosen origins their anycast
   prefixes, at t = 0; run until no route changed for `quiet` seconds; check routes.
2. failure (``fail`` != none) at the then current time: origin (retract the anycast
   instance with the largest catchment), node (crash the node carrying most transit),
   link (cut the link on most paths), partition (cut the graph into two halves); run until
   quiet; check.
3. recovery (node, link, partition): restart the node (with its saved seqno + 1, or none),
   restore the link, heal the partition; run until quiet; check.

`loops` counts forwarding loops seen at any route change of any phase; `wrong_routes`
the routes found wrong after quiescence, summed over the phase checks.

WireGuard's source filter (see wgcast.sim.filter): after each quiescence every (node,
prefix) pair is walked under the filter; `blackholed_pairs` sums the pairs that cannot
exchange a request and its reply over the phase checks (0 iff every quiescence is
clean), `pairs_checked` is the last check's pair count. During each fault event a
`BlackholeMeter` integrates the blackholed count over virtual time (`blackhole_pair_s`,
sampled on a `filter_period` grid). `filter_strict` makes blackholed pairs fail the run
(`converged` false), like wrong routes. `steady`: seconds run after boot, counting the
route changes that happen with nothing failing (`steady_route_changes`, e.g. jitter).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import networkx as nx

from wgcast.babel.engine import NodeConfig
from wgcast.babel.neighbour import LinkCostParams
from wgcast.babel.route import SelectionParams
from wgcast.keys import router_id
from wgcast.origin import Signer, Verifier, signing_public
from wgcast.prefix import Prefix
from wgcast.sim.checker import (
    LoopChecker,
    RepairWatch,
    RouteCheck,
    check_routes,
    path_ends,
)
from wgcast.sim.filter import BlackholeMeter, EventFilter, FilterCheck, check_filter
from wgcast.sim.network import SimNetwork
from wgcast.topology import Topology, parse_ms_range, parse_topology

TIMERS: dict[str, dict[str, float]] = {
    "default": {"hello_interval": 0.2, "dead": 3, "update_interval": 4.0},
    "fast": {"hello_interval": 0.05, "dead": 3, "update_interval": 2.0},
}
FAILURES = ("none", "origin", "node", "link", "partition")


def unicast_prefix(index: int) -> Prefix:
    """The own prefix of node n<index>."""
    return ipaddress.ip_network(f"fd00:0:{index >> 16:x}:{index & 0xFFFF:x}::/64")


def anycast_prefix(k: int) -> Prefix:
    return ipaddress.ip_network(f"fd53::{k + 1:x}/128")


def node_config(name: str, timers: str = "default", link: LinkCostParams | None = None,
                selection: SelectionParams | None = None) -> NodeConfig:
    t = TIMERS[timers]
    return NodeConfig(router_id(name.encode()), hello_interval=t["hello_interval"],
                      dead=int(t["dead"]), update_interval=t["update_interval"],
                      link=link or LinkCostParams(), selection=selection or SelectionParams())


#: The sim's wall clock at virtual time 0 (origin signatures carry Unix times).
SIM_EPOCH = 1_800_000_000.0


class SimSigning:
    """Origin signing in the simulator, as the daemon does it with a roster: every node
    signs what it originates (a key per node, from the seed), every node checks every
    route against the signing key of the origin's router-id, with its own memo. The
    wall clock is virtual time (`net` set once the network exists)."""

    def __init__(self, nodes: list[str], seed: int) -> None:
        self.net: SimNetwork | None = None
        self.private = {n: hashlib.blake2s(f"wgcast sim {seed} {n}".encode()).digest()
                        for n in nodes}
        self.keys = {router_id(n.encode()): signing_public(k) for n, k in self.private.items()}
        self.verifiers: list[Verifier] = []
        self.signers: list[Signer] = []

    def clock(self) -> float:
        return SIM_EPOCH + (self.net.now if self.net is not None else 0.0)

    def config(self, name: str, base: NodeConfig) -> NodeConfig:
        verifier = Verifier()
        keys, clock = self.keys, self.clock

        def accept(_nb: str, prefix: Prefix, rid: bytes, seqno: int, sig: bytes) -> bool:
            key = keys.get(rid)
            return key is not None and verifier.check(key, prefix, rid, seqno, sig,
                                                      clock()) is None

        signer = Signer(self.private[name], base.router_id, clock)
        self.verifiers.append(verifier)
        self.signers.append(signer)
        return replace(base, accept=accept, signer=signer)

    def figures(self) -> dict[str, int]:
        return {"signed": sum(s.signed for s in self.signers),
                "verified": sum(v.verified for v in self.verifiers),
                "verified_from_memory": sum(v.hits for v in self.verifiers)}


def parse_anycast(text: str) -> tuple[int, int]:
    """'5x3' -> (5 prefixes, 3 origins each); '0' -> none."""
    s = text.strip().lower()
    if s in ("0", "", "none"):
        return (0, 0)
    p, sep, o = s.partition("x")
    try:
        pi, oi = int(p), int(o) if sep else 1
    except ValueError:
        raise ValueError(f"--anycast: expected PxO like 5x3, got {text!r}") from None
    if pi < 0 or oi < 1:
        raise ValueError(f"--anycast: need P >= 0 and O >= 1, got {text!r}")
    return (pi, oi)


def with_relative_jitter(topo: Topology, fraction: float) -> Topology:
    """Every link gets jitter = fraction x its delay."""
    links = [replace(lk, jitter_ms=round(lk.delay_ms * fraction, 6)) for lk in topo.links]
    return Topology(nodes=list(topo.nodes), links=links, spec=topo.spec, seed=topo.seed)


def build_topology(spec: str, delay: str = "2-20ms", jitter: str = "0", loss: str = "0",
                   seed: int = 1) -> Topology:
    """parse_topology, plus relative jitter: '20%' means 0.2 x each link's delay."""
    j = jitter.strip()
    if j.endswith("%"):
        topo = parse_topology(spec, delay=delay, loss=loss, seed=seed)
        return with_relative_jitter(topo, float(j[:-1]) / 100.0)
    parse_ms_range(j, "jitter")
    return parse_topology(spec, delay=delay, jitter=j, loss=loss, seed=seed)


@dataclass
class Phase:
    name: str
    start: float
    quiet: bool = False
    last_change: float = 0.0
    check: RouteCheck | None = None
    #: Outage of the prefixes the fault hit (see RepairWatch); None: not watched.
    repair_ms: float | None = None
    #: The end of the last node's first outage (RepairWatch.first_repair_ms).
    first_repair_ms: float | None = None
    watched: list[str] = field(default_factory=list)
    #: Source-filter walk after quiescence; None: not checked.
    filter: FilterCheck | None = None
    #: Blackholed pairs during the event that started this phase; None: not measured.
    event: EventFilter | None = None

    @property
    def duration_ms(self) -> float:
        return max(0.0, self.last_change - self.start) * 1000.0

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"name": self.name, "start_s": round(self.start, 6),
                                "quiet": self.quiet,
                                "last_change_ms": round(self.duration_ms, 3)}
        if self.watched:
            d.update(watched=self.watched,
                     repair_ms=None if self.repair_ms is None else round(self.repair_ms, 3),
                     first_repair_ms=None if self.first_repair_ms is None
                     else round(self.first_repair_ms, 3))
        if self.check is not None:
            d.update(checked=self.check.checked, wrong=self.check.wrong_count,
                     suboptimal=self.check.suboptimal, max_excess=self.check.max_excess,
                     wrong_sample=[w.to_dict() for w in self.check.wrong[:5]])
        if self.filter is not None:
            d.update(self.filter.to_dict())
        if self.event is not None:
            d.update(self.event.to_dict())
        return d


@dataclass
class Scenario:
    """One simulation: topology, prefixes, failure; `run()` returns the result dict."""

    topology: str = "random:100:6"
    anycast: tuple[int, int] = (5, 3)
    fail: str = "origin"
    seed: int = 1
    delay: str = "2-20ms"
    jitter: str = "0"
    loss: str = "0"
    timers: str = "default"
    unicast: bool = True
    #: Seqno a restarted node boots with: 'saved' (saved + 1) or 'none' (configured 0).
    restart_seqno: str = "saved"
    #: Quiescence: no route change for this long (seconds; None: update interval + 1 s).
    quiet: float | None = None
    #: A phase that is not quiet after this long (virtual seconds) did not converge.
    max_phase: float = 120.0
    processing: float = 0.0
    check: bool = True
    topo: Topology | None = None
    #: Engine parameters (None: the engine's defaults).
    link_params: LinkCostParams | None = None
    selection: SelectionParams | None = None
    #: Walk the pairs under WireGuard's source filter (needs `unicast`).
    filter: bool = True
    #: Blackholed pairs after a quiescence fail the run (`converged` false).
    filter_strict: bool = False
    #: Grid step (virtual seconds) of the blackholed-pair count during fault events.
    filter_period: float = 0.005
    #: Virtual seconds to run after boot with nothing failing (route changes counted).
    steady: float = 0.0
    #: Origin signatures on (every node signs and verifies, see SimSigning).
    sign: bool = False
    #: Virtual seconds of idle traffic to measure after boot (and `steady`), nothing
    #: failing: the steady-state cost per node, apart from the boot burst (0: skip).
    idle: float = 0.0
    net: SimNetwork = field(init=False)
    prefixes: list[Prefix] = field(init=False, default_factory=list)
    anycast_prefixes: list[Prefix] = field(init=False, default_factory=list)
    phases: list[Phase] = field(init=False, default_factory=list)
    fail_target: dict[str, object] = field(init=False, default_factory=dict)
    #: Each node's own unicast prefix (the source address of its packets).
    sources: dict[str, Prefix] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.fail not in FAILURES:
            raise ValueError(f"fail must be one of {', '.join(FAILURES)}, got {self.fail!r}")
        if self.timers not in TIMERS:
            raise ValueError(f"timers must be one of {', '.join(TIMERS)}")
        if self.restart_seqno not in ("saved", "none"):
            raise ValueError("restart_seqno must be 'saved' or 'none'")
        if self.topo is None:
            self.topo = build_topology(self.topology, self.delay, self.jitter, self.loss,
                                       self.seed)
        timers, lp, sp = self.timers, self.link_params, self.selection
        signing = self.signing = SimSigning(list(self.topo.nodes), self.seed) \
            if self.sign else None

        def make(n: str) -> NodeConfig:
            cfg = node_config(n, timers, lp, sp)
            return cfg if signing is None else signing.config(n, cfg)

        self.net = SimNetwork(self.topo, make, seed=self.seed, processing=self.processing)
        if signing is not None:
            signing.net = self.net
        self.loops = LoopChecker(self.net)
        if self.quiet is None:
            self.quiet = TIMERS[self.timers]["update_interval"] + 1.0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.steady_changes: int | None = None
        self.boot_traffic: tuple[int, int, float] = (0, 0, 0.0)
        self.idle_traffic: tuple[int, int, int] | None = None
        self._watch: list[Prefix] = []

    # ------------------------------------------------------------ setup

    def originate_all(self) -> None:
        net, topo = self.net, self.topo
        assert topo is not None
        rng = random.Random(f"{self.seed}/anycast")
        n_any, n_orig = self.anycast
        if self.unicast:
            for i, name in enumerate(topo.nodes):
                p = unicast_prefix(i + 1)
                self.prefixes.append(p)
                self.sources[name] = p
                net.originate(name, p)
        for k in range(n_any):
            p = anycast_prefix(k)
            self.anycast_prefixes.append(p)
            self.prefixes.append(p)
            for name in rng.sample(topo.nodes, min(n_orig, len(topo.nodes))):
                net.originate(name, p)

    # ------------------------------------------------------------ phases

    def run_phase(self, name: str, watch: list[Prefix] | None = None,
                  meter: BlackholeMeter | None = None) -> Phase:
        """Run until quiet, then check; `watch`: prefixes whose outage to time; `meter`:
        begun just before the event, ended here at the phase's quiescence."""
        net = self.net
        assert self.quiet is not None
        ph = Phase(name, net.now)
        net.last_change = net.now
        watcher = RepairWatch(net, watch) if watch else None
        ph.quiet = net.run_until_quiet(self.quiet, net.now + self.max_phase)
        ph.last_change = net.last_change
        if watcher is not None:
            watcher.close()
            ph.repair_ms = watcher.repair_ms()
            ph.first_repair_ms = watcher.first_repair_ms()
            ph.watched = [str(p) for p in watch or ()]
        if meter is not None:
            ph.event = meter.end(ph.last_change)
        if self.check:
            ph.check = check_routes(net, self.prefixes)
            if self.filtering:
                ph.filter = check_filter(net, self.sources, self.prefixes)
        self.phases.append(ph)
        return ph

    @property
    def filtering(self) -> bool:
        return self.filter and bool(self.sources)

    def meter(self) -> BlackholeMeter | None:
        """A meter for the fault events (None when the filter is not modelled)."""
        if not self.filtering:
            return None
        return BlackholeMeter(self.net, self.sources, list(self.prefixes), self.filter_period)

    def run_steady(self) -> int:
        """Run `steady` seconds with nothing failing; the route changes seen."""
        before = self.net.stats.route_changes
        self.net.run_until(self.net.now + self.steady)
        return self.net.stats.route_changes - before

    def run_idle(self) -> tuple[int, int, int]:
        """Run `idle` seconds with nothing failing; (packets, bytes, route changes) sent in
        that window (the network's counters before and after)."""
        st = self.net.stats
        p0, b0, r0 = st.packets, st.bytes, st.route_changes
        self.net.run_until(self.net.now + self.idle)
        return st.packets - p0, st.bytes - b0, st.route_changes - r0

    def affected(self, crosses: Callable[[list[str]], bool], k: int = 4,
                 sample: int = 200) -> list[Prefix]:
        """The (at most k) prefixes with the most forwarding paths that `crosses`."""
        net = self.net
        rng = random.Random(f"{self.seed}/affected")
        any_set = set(self.anycast_prefixes)
        uni = [p for p in self.prefixes if p not in any_set]
        candidates = list(self.anycast_prefixes) + rng.sample(uni, min(sample, len(uni)))
        counts: list[tuple[int, int, Prefix]] = []
        for i, p in enumerate(candidates):
            c = sum(1 for start in net.alive if crosses(net.path(start, p)[0]))
            if c:
                counts.append((-c, i, p))
        return [p for _, _, p in sorted(counts)[:k]]

    def catchments(self, prefix: Prefix) -> Counter[str]:
        """How many live nodes each origin of `prefix` serves."""
        return Counter(last for kind, last in path_ends(self.net, prefix).values()
                       if kind == "local")

    def transit(self, sample: int = 200) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        """How many (node, prefix) paths cross each node (as transit) and each link."""
        net = self.net
        rng = random.Random(f"{self.seed}/transit")
        prefixes = list(self.anycast_prefixes)
        uni = [p for p in self.prefixes if p not in set(self.anycast_prefixes)]
        prefixes += rng.sample(uni, min(sample, len(uni)))
        nodes: Counter[str] = Counter()
        links: Counter[tuple[str, str]] = Counter()
        for p in prefixes:
            for start in net.alive:
                path, kind = net.path(start, p)
                if kind != "local":
                    continue
                for a in path[1:-1]:
                    nodes[a] += 1
                for a, b in itertools.pairwise(path):
                    links[(min(a, b), max(a, b))] += 1
        return nodes, links

    def halves(self) -> list[str]:
        """A connected half of the nodes: the first n/2 found by BFS from a seeded node."""
        topo = self.topo
        assert topo is not None
        g = topo.simple_graph()
        rng = random.Random(f"{self.seed}/partition")
        root = rng.choice(topo.nodes)
        order = [root] + [v for _, v in nx.bfs_edges(g, root)]
        return order[: len(topo.nodes) // 2]

    def apply_failure(self) -> str | None:
        """Apply the failure; returns the recovery action to run after, if any."""
        net = self.net
        if self.fail == "origin":
            best: tuple[int, str, Prefix] | None = None
            for p in self.anycast_prefixes:
                # sorted: ties go to the same origin whatever the string hash seed
                for origin, count in sorted(self.catchments(p).items()):
                    if best is None or count > best[0]:
                        best = (count, origin, p)
            if best is None:
                return None
            count, origin, p = best
            self.fail_target = {"kind": "origin", "node": origin, "prefix": str(p),
                                "catchment": count}
            self._watch = [p]
            net.retract(origin, p)
            return None
        if self.fail == "node":
            nodes, _ = self.transit()
            origins = {o for p in self.anycast_prefixes for o in net.origins(p)}
            if nodes:
                victim = max(sorted(nodes), key=lambda n: nodes[n])
            elif origins:
                victim = sorted(origins)[0]
            else:
                victim = sorted(net.alive)[0]
            self.fail_target = {"kind": "node", "node": victim, "transit": nodes.get(victim, 0),
                                "origin": victim in origins,
                                "seqno_at_crash": net.nodes[victim].seqno}
            self._watch = self.affected(lambda path: victim in path[1:-1])
            # a victim that carries no transit (full mesh) still serves anycast prefixes
            self._watch += [p for p in self.anycast_prefixes
                            if victim in net.origins(p) and p not in self._watch][:4]
            net.crash(victim)
            return "restart"
        if self.fail == "link":
            _, links = self.transit()
            if not links:
                return None
            a, b = max(sorted(links), key=lambda k: links[k])
            self.fail_target = {"kind": "link", "a": a, "b": b, "paths": links[(a, b)]}

            def uses(path: list[str]) -> bool:
                return any({x, y} == {a, b} for x, y in itertools.pairwise(path))

            self._watch = self.affected(uses)
            net.set_link(a, b, False)
            return "link_up"
        if self.fail == "partition":
            side = self.halves()
            half = set(side)
            self._watch = self.affected(
                lambda path: any((x in half) != (y in half) for x, y in itertools.pairwise(path)))
            cut = net.partition(side)
            self.fail_target = {"kind": "partition", "side": len(side),
                                "other": len(net.alive) - len(side), "cut_links": len(cut)}
            self._cut = cut
            return "heal"
        return None

    def recover(self, action: str) -> None:
        net = self.net
        if action == "restart":
            victim = str(self.fail_target["node"])
            seq = None
            if self.restart_seqno == "saved":
                seq = (net.saved_seqno[victim] + 1) & 0xFFFF
            self.fail_target["restart_seqno"] = seq
            net.restart(victim, seq)
        elif action == "link_up":
            net.set_link(str(self.fail_target["a"]), str(self.fail_target["b"]), True)
        elif action == "heal":
            net.heal(self._cut)

    # ------------------------------------------------------------ run

    def run(self) -> dict[str, object]:
        t0 = time.perf_counter()
        c0 = time.process_time()
        self.originate_all()
        boot = self.run_phase("boot")
        st = self.net.stats
        self.boot_traffic = (st.packets, st.bytes, self.net.now)
        self.steady_changes = self.run_steady() if self.steady > 0 else None
        self.idle_traffic = self.run_idle() if self.idle > 0 else None
        failover: Phase | None = None
        recovery: Phase | None = None
        if self.fail != "none":
            self._watch = []
            meter = self.meter()
            if meter is not None:
                meter.begin()
            action = self.apply_failure()
            failover = self.run_phase(f"fail:{self.fail}", self._watch, meter)
            if action is not None:
                if meter is not None:
                    meter.begin()
                self.recover(action)
                watch = list(self._watch)
                if action == "restart":
                    own = unicast_prefix(self.topo_index(str(self.fail_target["node"])))
                    if own in self.prefixes and own not in watch:
                        watch.append(own)
                recovery = self.run_phase(action, watch, meter)
        self.wall_s = time.perf_counter() - t0
        self.cpu_s = time.process_time() - c0
        return self.result(boot, failover, recovery)

    def topo_index(self, name: str) -> int:
        assert self.topo is not None
        return self.topo.index(name)

    def result(self, boot: Phase, failover: Phase | None,
               recovery: Phase | None) -> dict[str, object]:
        net, topo = self.net, self.topo
        assert topo is not None
        n = len(topo.nodes)
        virtual = max(net.now, 1e-9)
        wrong = sum(p.check.wrong_count for p in self.phases if p.check is not None)
        quiet = all(p.quiet for p in self.phases)
        checks = [p.filter for p in self.phases if p.filter is not None]
        blackholed = sum(c.blackholed for c in checks) if checks else None
        strict_ok = not (self.filter_strict and blackholed)
        res: dict[str, object] = {
            "topology": self.topology if self.topo is None else topo.spec,
            "seed": self.seed,
            "nodes": n,
            "links": len(topo.links),
            "prefixes": len(self.prefixes),
            "anycast": f"{self.anycast[0]}x{self.anycast[1]}",
            "fail": self.fail,
            "timers": self.timers,
            "converged": quiet and wrong == 0 and strict_ok,
            "quiet": quiet,
            "convergence_ms": round(boot.duration_ms, 3),
            "failover_ms": None if failover is None else round(failover.duration_ms, 3),
            "repair_ms": None if failover is None or failover.repair_ms is None
            else round(failover.repair_ms, 3),
            "first_repair_ms": None if failover is None or failover.first_repair_ms is None
            else round(failover.first_repair_ms, 3),
            "recovery_ms": None if recovery is None else round(recovery.duration_ms, 3),
            "recovery_repair_ms": None if recovery is None or recovery.repair_ms is None
            else round(recovery.repair_ms, 3),
            "loops": self.loops.loops,
            "wrong_routes": wrong,
            "msgs_per_node_s": round(net.stats.packets / n / virtual, 3),
            "bytes_per_node_s": round(net.stats.bytes / n / virtual, 1),
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "virtual_s": round(net.now, 3),
            "route_changes": net.stats.route_changes,
            "packets": net.stats.packets,
            "dropped": net.stats.dropped,
            "fail_target": self.fail_target,
            "phases": [p.to_dict() for p in self.phases],
        }
        if checks:
            first_bad = next((c for c in checks if c.blackholed), checks[-1])
            res["filter"] = {
                "model": "strict reverse-path filter at every hop (WireGuard AllowedIPs)",
                "after_quiescence": "every pair walked from scratch",
                "during_events": (f"pairs re-walked when a FIB entry they read changed, "
                                  f"count sampled every {self.filter_period * 1000:g} ms "
                                  "virtual (left Riemann sum)"),
                "strict": self.filter_strict,
            }
            res["pairs_checked"] = checks[-1].pairs
            res["blackholed_pairs"] = blackholed
            res["blackholed_by_phase"] = {p.name: p.filter.blackholed
                                          for p in self.phases if p.filter is not None}
            res["blackholed_sample"] = [b.to_dict() for b in first_bad.sample]
            res["blackhole_pair_s"] = {p.name: round(p.event.pair_s, 6)
                                       for p in self.phases if p.event is not None}
        res["signing"] = None if self.signing is None else self.signing.figures()
        if self.steady_changes is not None:
            res["steady_s"] = self.steady
            res["steady_route_changes"] = self.steady_changes
        bp, bb, bt = self.boot_traffic
        bt = max(bt, 1e-9)
        res.update(boot_packets=bp, boot_bytes=bb, boot_s=round(bt, 3),
                   boot_msgs_per_node_s=round(bp / n / bt, 3),
                   boot_bytes_per_node_s=round(bb / n / bt, 1))
        if self.idle_traffic is not None:
            ip, ib, ir = self.idle_traffic
            res.update(idle_s=self.idle, idle_packets=ip, idle_bytes=ib,
                       idle_msgs_per_node_s=round(ip / n / self.idle, 3),
                       idle_bytes_per_node_s=round(ib / n / self.idle, 1),
                       idle_route_changes=ir)
        if self.loops.records:
            res["loop_sample"] = [
                {"t": r.time, "node": r.node, "prefix": str(r.prefix), "path": r.path}
                for r in self.loops.records[:5]]
        return res


def selected_origin(net: SimNetwork, name: str, prefix: Prefix) -> str | None:
    """The origin `name` reaches for `prefix` by following the FIBs, or None."""
    path, kind = net.path(name, prefix)
    return path[-1] if kind == "local" else None
