"""Invariants of a simulated network, checked independently of the engine.

- `LoopChecker` observes every route change. A forwarding loop that appears must contain
  the edge that just changed, so following the next hops from the node that changed finds
  every new loop at the moment it forms.
- `expected_metrics` computes, with networkx and the link cost function alone (RTT = 2 x
  link delay, costs summed along the path, plus the origin's xroute metric), the metric of
  the nearest live origin of a prefix from every node.
- `check_routes` compares every node's selected route (after quiescence) with that: the
  route must lead, hop by hop, to a live origin, and its metric must be the optimum or
  within `tolerance` of it: the engine's link costs follow a damped RTT average in steps
  (LinkCostParams), so a cost may differ a little from the one of the nominal delay;
  with no origin reachable, no route.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from wgcast.babel.events import LOCAL
from wgcast.babel.neighbour import LinkCostParams
from wgcast.babel.route import SelectionParams
from wgcast.babel.wire import INFINITY
from wgcast.prefix import Prefix
from wgcast.sim.network import SimNetwork


@dataclass
class LoopRecord:
    time: float
    node: str
    prefix: Prefix
    path: list[str]


@dataclass
class LoopChecker:
    """Observer: follows the path from every node whose route changed."""

    net: SimNetwork
    loops: int = 0
    checks: int = 0
    records: list[LoopRecord] = field(default_factory=list)
    max_records: int = 20

    def __post_init__(self) -> None:
        self.net.observers.append(self)

    def __call__(self, now: float, node: str, prefix: Prefix, via: str | None) -> None:
        if via is None or via == LOCAL:
            return  # removing an edge or ending a path never closes a loop
        self.checks += 1
        path, kind = self.net.path(node, prefix)
        if kind == "loop":
            self.loops += 1
            if len(self.records) < self.max_records:
                self.records.append(LoopRecord(now, node, prefix, path))


@dataclass
class WrongRoute:
    node: str
    prefix: Prefix
    why: str
    metric: int | None = None
    optimum: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "prefix": str(self.prefix), "why": self.why,
                "metric": self.metric, "optimum": self.optimum}


@dataclass
class RouteCheck:
    """Result of one check after quiescence."""

    checked: int = 0
    wrong: list[WrongRoute] = field(default_factory=list)
    #: Largest accepted excess of a node's metric over the optimum (cost damping slack).
    max_excess: int = 0
    suboptimal: int = 0

    @property
    def wrong_count(self) -> int:
        return len(self.wrong)


def tolerance(optimum: int) -> float:
    """How far a converged metric may exceed the nominal optimum: the damping band of the
    link costs (10 % of the RTT), plus a few units of rounding."""
    return max(16.0, 0.1 * optimum)


def live_graph(net: SimNetwork, link_params: LinkCostParams) -> nx.Graph:
    """Live nodes and up links, each edge weighted by the link cost of RTT = 2 x delay."""
    g = nx.Graph()
    g.add_nodes_from(net.alive)
    for (a, b), ls in net.links.items():
        if a < b and ls.up and a in net.alive and b in net.alive:
            back = net.links[(b, a)]
            rtt_ms = (ls.delay + back.delay) * 1000.0
            g.add_edge(a, b, cost=link_params.cost(rtt_ms), delay=ls.delay)
    return g


def expected_metrics(g: nx.Graph, origins: dict[str, int]) -> dict[str, int]:
    """Metric of the nearest origin from every node that can reach one."""
    live = {o: m for o, m in origins.items() if o in g}
    if not live:
        return {}
    metrics = set(live.values())
    if len(metrics) == 1:
        base = metrics.pop()
        dist = nx.multi_source_dijkstra_path_length(g, set(live), weight="cost")
        return {n: base + d for n, d in dist.items()}
    src = ("<origins>",)
    h = g.copy()
    for o, m in live.items():
        h.add_edge(src, o, cost=m)
    dist = nx.single_source_dijkstra_path_length(h, src, weight="cost")
    return {n: d for n, d in dist.items() if isinstance(n, str)}


def path_ends(net: SimNetwork, prefix: Prefix) -> dict[str, tuple[str, str]]:
    """For every live node: (kind, last node) of its forwarding path for `prefix`.

    kind is 'local' (last node originates it), 'none' (last node has no route), 'dead'
    (last node forwards to a dead node or over a cut link) or 'loop'.
    """
    fib, alive, links = net.fib, net.alive, net.links
    done: dict[str, tuple[str, str]] = {}
    for start in alive:
        if start in done:
            continue
        stack: list[str] = []
        on_stack: set[str] = set()
        cur = start
        while True:
            if cur in done:
                result = done[cur]
                break
            if cur in on_stack:
                result = ("loop", cur)
                break
            stack.append(cur)
            on_stack.add(cur)
            via = fib[cur].get(prefix)
            if via is None:
                result = ("none", cur)
                break
            if via == LOCAL:
                result = ("local", cur)
                break
            if via not in alive or not links[(cur, via)].up:
                result = ("dead", cur)
                break
            cur = via
        for n in stack:
            done[n] = result
    return done


def check_routes(net: SimNetwork, prefixes: list[Prefix],
                 link_params: LinkCostParams | None = None,
                 selection: SelectionParams | None = None,
                 graph: nx.Graph | None = None) -> RouteCheck:
    """Every live node, every prefix: nearest live origin (within the margin) or nothing."""
    some = next(iter(net.nodes.values()))
    lp = link_params or some.config.link
    g = graph if graph is not None else live_graph(net, lp)
    out = RouteCheck()
    for prefix in prefixes:
        origins = net.origins(prefix)
        best = expected_metrics(g, origins)
        ends = path_ends(net, prefix)
        for name in sorted(net.alive):
            out.checked += 1
            opt = best.get(name)
            sel = net.nodes[name].selected.get(prefix)
            kind, last = ends[name]
            have = None if sel is None else sel.metric
            if opt is None:
                if kind != "none" or sel is not None:
                    out.wrong.append(WrongRoute(name, prefix,
                                                f"no origin reachable but path ends {kind}",
                                                have))
                continue
            if kind != "local":
                out.wrong.append(WrongRoute(name, prefix, f"path ends {kind} at {last}",
                                            have, opt))
                continue
            if last not in origins:
                out.wrong.append(WrongRoute(name, prefix, f"ends at non-origin {last}",
                                            have, opt))
                continue
            metric = INFINITY if sel is None else sel.metric
            excess = metric - opt
            if excess > tolerance(opt):
                out.wrong.append(WrongRoute(name, prefix, "worse than the tolerance", metric,
                                            opt))
            elif excess > 0:
                out.suboptimal += 1
                out.max_excess = max(out.max_excess, excess)
    return out


@dataclass
class RepairWatch:
    """Outage of a few prefixes: when did every node last get a working path again?

    A prefix is whole when every live node's forwarding path ends at a live origin if one
    is reachable in its part of the graph, and nowhere otherwise. Re-evaluated after every
    step that changed one of the watched prefixes (so keep the set small).
    """

    net: SimNetwork
    prefixes: list[Prefix]
    start: float = 0.0
    whole: dict[Prefix, bool] = field(default_factory=dict)
    #: Last time each prefix became whole again after being broken.
    repaired_at: dict[Prefix, float] = field(default_factory=dict)
    _dirty: set[Prefix] = field(default_factory=set)
    _reach: dict[Prefix, set[str]] = field(default_factory=dict)
    #: (prefix, node) -> when the node's path first broke, and when it first worked again
    #: after that: each node's own first outage, apart from any later one (a second move,
    #: to a better source, costs the nodes behind a source release: docs/architecture.md).
    broke_at: dict[tuple[Prefix, str], float] = field(default_factory=dict)
    first_fixed_at: dict[tuple[Prefix, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.start = self.net.now
        self._watched = set(self.prefixes)
        self.refresh_topology()
        for p in self.prefixes:
            self.whole[p] = self._whole(p)
        self.net.observers.append(self._observe)
        self.net.step_hooks.append(self._step)

    def close(self) -> None:
        self.net.observers.remove(self._observe)
        self.net.step_hooks.remove(self._step)

    def refresh_topology(self) -> None:
        """Recompute which nodes can reach an origin (after a fault or a repair)."""
        g = live_graph(self.net, LinkCostParams())
        comp = {n: i for i, c in enumerate(nx.connected_components(g)) for n in c}
        for p in self.prefixes:
            parts = {comp[o] for o in self.net.origins(p) if o in comp}
            self._reach[p] = {n for n, i in comp.items() if i in parts}

    def _observe(self, now: float, node: str, prefix: Prefix, via: str | None) -> None:
        if prefix in self._watched:
            self._dirty.add(prefix)

    def _step(self) -> None:
        if not self._dirty:
            return
        for p in self._dirty:
            ok = self._whole(p)
            if ok and not self.whole[p]:
                self.repaired_at[p] = self.net.now
            self.whole[p] = ok
        self._dirty.clear()

    def _whole(self, prefix: Prefix) -> bool:
        reach = self._reach[prefix]
        origins = self.net.origins(prefix)
        now = self.net.now
        whole = True
        for node, (kind, last) in path_ends(self.net, prefix).items():
            ok = (kind == "local" and last in origins) if node in reach else kind == "none"
            key = (prefix, node)
            if not ok:
                whole = False
                self.broke_at.setdefault(key, now)
            elif key in self.broke_at and key not in self.first_fixed_at:
                self.first_fixed_at[key] = now
        return whole

    def first_repair_ms(self) -> float | None:
        """Milliseconds from the start to the end of the last node's first outage; None
        if a node never got a working path back."""
        if any(k not in self.first_fixed_at for k in self.broke_at):
            return None
        return max(((t - self.start) * 1000.0 for t in self.first_fixed_at.values()),
                   default=0.0)

    def repair_ms(self) -> float | None:
        """Milliseconds from the start to the last repair; None if still broken."""
        if not all(self.whole.values()):
            return None
        if not self.repaired_at:
            return 0.0
        return (max(self.repaired_at.values()) - self.start) * 1000.0
