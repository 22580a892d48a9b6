"""Topology specs shared by the lab (real namespaces) and the virtual-time simulator.

A spec is a short string::

    line:N        n1 - n2 - ... - nN
    ring:N        a line closed into a cycle (N >= 3)
    full:N        every pair of nodes linked
    grid:WxH      W columns, H rows, 4-neighbour links
    grid:N        N nodes laid out on a near-square grid (the last row may be partial)
    random:N:D    connected random graph, average degree ~D (seeded)
    dual:N        a line of N where n1 and n2 are joined by two parallel underlay paths,
                  the second one slower (max(2 * delay, delay + 5ms))

Nodes are named n1..nN. Links carry a delay (constant "5ms" or drawn per link from a
seeded range "2-20ms"), a jitter (same syntax) and a loss probability ("0.01" or "1%").
Links have ids 0..L-1 in the order of ``Topology.links``; parallel links between the same
pair (``dual``) are distinct links with distinct ids.

This module is pure: no sockets, no clock, no global random state.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

MAX_NODES = 10000

_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s)?\s*$")


@dataclass(frozen=True)
class Link:
    """One undirected underlay link between nodes ``a`` and ``b``."""

    a: str
    b: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    id: int = 0

    def other(self, node: str) -> str:
        if node == self.a:
            return self.b
        if node == self.b:
            return self.a
        raise ValueError(f"{node} is not an end of link {self.id} ({self.a}-{self.b})")

    def ends(self) -> tuple[str, str]:
        return (self.a, self.b)


@dataclass
class Topology:
    nodes: list[str]
    links: list[Link]
    spec: str = ""
    seed: int = 0
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {n: i for i, n in enumerate(self.nodes)}
        if len(self._index) != len(self.nodes):
            raise ValueError("duplicate node names in topology")
        for link in self.links:
            for end in link.ends():
                if end not in self._index:
                    raise ValueError(f"link {link.id} names unknown node {end!r}")
            if link.a == link.b:
                raise ValueError(f"link {link.id} is a self-loop on {link.a}")

    # -- queries ---------------------------------------------------------------------
    def index(self, node: str) -> int:
        """1-based index of a node (n3 -> 3 for the standard names)."""
        try:
            return self._index[node] + 1
        except KeyError:
            raise ValueError(f"unknown node {node!r} (nodes: {self._short_names()})") from None

    def _short_names(self) -> str:
        if len(self.nodes) <= 6:
            return ", ".join(self.nodes)
        return f"{self.nodes[0]}..{self.nodes[-1]}"

    def check_node(self, node: str) -> str:
        self.index(node)
        return node

    def link(self, link_id: int) -> Link:
        if not 0 <= link_id < len(self.links) or self.links[link_id].id != link_id:
            for lk in self.links:
                if lk.id == link_id:
                    return lk
            raise ValueError(f"no link with id {link_id}")
        return self.links[link_id]

    def links_of(self, node: str) -> list[Link]:
        self.check_node(node)
        return [lk for lk in self.links if node in (lk.a, lk.b)]

    def links_between(self, a: str, b: str) -> list[Link]:
        return [lk for lk in self.links if {lk.a, lk.b} == {a, b}]

    def neighbours(self, node: str) -> list[str]:
        """Distinct neighbours of a node, in link order."""
        seen: dict[str, None] = {}
        for lk in self.links_of(node):
            seen.setdefault(lk.other(node), None)
        return list(seen)

    def graph(self) -> nx.MultiGraph:
        """A networkx MultiGraph; edge keys are link ids, edge data the Link fields."""
        g = nx.MultiGraph()
        g.add_nodes_from(self.nodes)
        for lk in self.links:
            g.add_edge(
                lk.a, lk.b, key=lk.id, delay_ms=lk.delay_ms, jitter_ms=lk.jitter_ms,
                loss=lk.loss, id=lk.id,
            )
        return g

    def simple_graph(self, weight: str = "delay_ms") -> nx.Graph:
        """Simple graph keeping, between each pair, the link with the lowest ``weight``."""
        g = nx.Graph()
        g.add_nodes_from(self.nodes)
        for lk in self.links:
            w = getattr(lk, weight)
            if g.has_edge(lk.a, lk.b) and g[lk.a][lk.b][weight] <= w:
                continue
            g.add_edge(lk.a, lk.b, **{weight: w, "id": lk.id})
        return g

    def is_connected(self) -> bool:
        if not self.nodes:
            return False
        return bool(nx.is_connected(self.simple_graph()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "seed": self.seed,
            "nodes": list(self.nodes),
            "links": [
                {"id": lk.id, "a": lk.a, "b": lk.b, "delay_ms": lk.delay_ms,
                 "jitter_ms": lk.jitter_ms, "loss": lk.loss}
                for lk in self.links
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Topology:
        links = [
            Link(a=str(x["a"]), b=str(x["b"]), delay_ms=float(x["delay_ms"]),
                 jitter_ms=float(x.get("jitter_ms", 0.0)), loss=float(x.get("loss", 0.0)),
                 id=int(x["id"]))
            for x in d["links"]
        ]
        return cls(nodes=[str(n) for n in d["nodes"]], links=links,
                   spec=str(d.get("spec", "")), seed=int(d.get("seed", 0)))


# -- value parsing -------------------------------------------------------------------
def parse_ms(text: str | float | int, what: str = "duration") -> float:
    """'5ms' -> 5.0, '1.5s' -> 1500.0, '250us' -> 0.25, '7' -> 7.0 (ms), 3 -> 3.0."""
    if isinstance(text, bool):
        raise ValueError(f"{what}: expected a duration like '5ms', got {text!r}")
    if isinstance(text, int | float):
        if text < 0 or math.isnan(text) or math.isinf(text):
            raise ValueError(f"{what}: must be a finite non-negative number of ms, got {text}")
        return float(text)
    m = _DUR_RE.match(text)
    if not m:
        raise ValueError(f"{what}: expected a duration like '5ms', '1.5s' or '250us', "
                         f"got {text!r}")
    value = float(m.group(1))
    unit = m.group(2) or "ms"
    factor = {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return value * factor


def parse_ms_range(text: str | float | int, what: str = "delay") -> tuple[float, float]:
    """'5ms' -> (5, 5); '2-20ms' -> (2, 20); '2ms-1s' -> (2, 1000)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        v = parse_ms(text, what)
        return (v, v)
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected '5ms' or a range '2-20ms', got {text!r}")
    s = text.strip()
    if "-" in s:
        lo_s, _, hi_s = s.partition("-")
        if not lo_s.strip() or not hi_s.strip():
            raise ValueError(f"{what}: a range needs both ends, like '2-20ms', got {text!r}")
        # "2-20ms": a low end without a unit takes the high end's unit.
        m_hi, m_lo = _DUR_RE.match(hi_s), _DUR_RE.match(lo_s)
        unit = (m_hi.group(2) or "ms") if m_hi else "ms"
        lo_txt = lo_s if (m_lo is None or m_lo.group(2)) else lo_s.strip() + unit
        lo = parse_ms(lo_txt, what)
        hi = parse_ms(hi_s, what)
        if lo > hi:
            raise ValueError(f"{what}: range {text!r} has its low end above its high end")
        return (lo, hi)
    v = parse_ms(s, what)
    return (v, v)


def parse_loss(text: str | float | int) -> float:
    """'0.01' or '1%' or 0.01 -> 0.01; must lie in [0, 1]."""
    if isinstance(text, bool):
        raise ValueError(f"loss: expected a probability like 0.01 or '1%', got {text!r}")
    if isinstance(text, int | float):
        v = float(text)
    else:
        s = text.strip()
        try:
            v = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
        except ValueError:
            raise ValueError(
                f"loss: expected a probability like 0.01 or '1%', got {text!r}"
            ) from None
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise ValueError(f"loss: must lie between 0 and 1 (or 0% and 100%), got {text!r}")
    return v


# -- graph shapes -------------------------------------------------------------------
def _names(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def _int(text: str, what: str, spec: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"topology {spec!r}: {what} must be an integer, got {text!r}") from None
    return v


def _check_n(n: int, spec: str, minimum: int) -> None:
    if n < minimum:
        raise ValueError(f"topology {spec!r}: needs at least {minimum} node(s), got {n}")
    if n > MAX_NODES:
        raise ValueError(f"topology {spec!r}: at most {MAX_NODES} nodes, got {n}")


def _line(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(1, n)]


def _grid(w: int, h: int, n: int) -> list[tuple[int, int]]:
    """Nodes 1..n laid out row by row, w per row; links right and down."""
    edges = []
    for k in range(n):
        r, c = divmod(k, w)
        if c + 1 < w and k + 1 < n:
            edges.append((k + 1, k + 2))
        if r + 1 < h and k + w < n:
            edges.append((k + 1, k + w + 1))
    return edges


def _random(n: int, d: int, rng: random.Random) -> list[tuple[int, int]]:
    """Connected graph with average degree ~d (a random regular graph when possible)."""
    if d >= 2 and (n * d) % 2 == 0:
        for _ in range(20):
            g = nx.random_regular_graph(d, n, seed=rng.randrange(2**31))
            if nx.is_connected(g):
                return sorted((min(a, b) + 1, max(a, b) + 1) for a, b in g.edges())
    # Fallback: a random spanning tree plus random extra edges up to round(n * d / 2).
    order = list(range(1, n + 1))
    rng.shuffle(order)
    edges: set[tuple[int, int]] = set()
    for i in range(1, n):
        a, b = order[i], order[rng.randrange(i)]
        edges.add((min(a, b), max(a, b)))
    target = min(round(n * d / 2), n * (n - 1) // 2)
    attempts = 0
    while len(edges) < target and attempts < 50 * target + 100:
        attempts += 1
        a, b = rng.randrange(1, n + 1), rng.randrange(1, n + 1)
        if a != b:
            edges.add((min(a, b), max(a, b)))
    return sorted(edges)


def _shape(spec: str, rng: random.Random) -> tuple[int, list[tuple[int, int]], bool]:
    """(node count, edges as 1-based index pairs, dual?)."""
    s = spec.strip().lower()
    kind, _, rest = s.partition(":")
    if not rest:
        raise ValueError(
            f"topology {spec!r}: expected KIND:ARGS, one of line:N, ring:N, full:N, "
            "grid:WxH, grid:N, random:N:D, dual:N"
        )
    if kind in ("line", "ring", "full", "dual"):
        n = _int(rest, "N", spec)
        minimum = {"line": 1, "ring": 3, "full": 1, "dual": 2}[kind]
        _check_n(n, spec, minimum)
        if kind in ("line", "dual"):
            return n, _line(n), kind == "dual"
        if kind == "ring":
            return n, [*_line(n), (1, n)], False
        if n > 300:
            raise ValueError(f"topology {spec!r}: full mesh limited to 300 nodes")
        return n, [(i, j) for i in range(1, n + 1) for j in range(i + 1, n + 1)], False
    if kind == "grid":
        if "x" in rest:
            w_s, _, h_s = rest.partition("x")
            w, h = _int(w_s, "W", spec), _int(h_s, "H", spec)
            if w < 1 or h < 1:
                raise ValueError(f"topology {spec!r}: grid sides must be >= 1")
            n = w * h
            _check_n(n, spec, 1)
        else:
            n = _int(rest, "N", spec)
            _check_n(n, spec, 1)
            w = math.ceil(math.sqrt(n))
            h = math.ceil(n / w)
        return n, _grid(w, h, n), False
    if kind == "random":
        parts = rest.split(":")
        if len(parts) != 2:
            raise ValueError(f"topology {spec!r}: expected random:N:D (N nodes, degree D)")
        n, d = _int(parts[0], "N", spec), _int(parts[1], "D", spec)
        _check_n(n, spec, 2)
        if not 1 <= d < n:
            raise ValueError(f"topology {spec!r}: degree D must satisfy 1 <= D < N, got {d}")
        return n, _random(n, d, rng), False
    raise ValueError(
        f"topology {spec!r}: unknown kind {kind!r}; expected one of line, ring, full, grid, "
        "random, dual"
    )


def parse_topology(
    spec: str,
    delay: str | float | tuple[float, float] = "5ms",
    jitter: str | float | tuple[float, float] = 0.0,
    loss: str | float = 0.0,
    seed: int = 0,
) -> Topology:
    """Build a Topology from a spec string; delays/jitters drawn per link from ``seed``."""
    if not isinstance(spec, str):
        raise ValueError(f"topology spec must be a string, got {spec!r}")
    rng = random.Random(seed)
    n, edges, dual = _shape(spec, rng)
    d_lo, d_hi = delay if isinstance(delay, tuple) else parse_ms_range(delay, "delay")
    j_lo, j_hi = jitter if isinstance(jitter, tuple) else parse_ms_range(jitter, "jitter")
    p_loss = parse_loss(loss)
    # A separate stream for link parameters, so the graph shape does not depend on them.
    prng = random.Random(f"{seed}/links")

    def draw(lo: float, hi: float) -> float:
        return lo if lo == hi else round(prng.uniform(lo, hi), 3)

    names = _names(n)
    links: list[Link] = []
    for a, b in edges:
        links.append(Link(names[a - 1], names[b - 1], draw(d_lo, d_hi), draw(j_lo, j_hi),
                          p_loss, id=len(links)))
    if dual:
        first = links[0]
        slow = max(2 * first.delay_ms, first.delay_ms + 5.0)
        links.append(Link(first.a, first.b, slow, first.jitter_ms, p_loss, id=len(links)))
    return Topology(nodes=names, links=links, spec=spec.strip(), seed=seed)


def node_index(name: str) -> int:
    """'n12' -> 12 for the standard node names."""
    m = re.fullmatch(r"n(\d+)", name)
    if not m:
        raise ValueError(f"not a standard node name (n1, n2, ...): {name!r}")
    return int(m.group(1))


def parse_node_list(text: str | Iterable[str], topology: Topology) -> list[str]:
    """'n1,n5' -> ['n1', 'n5'], each checked against the topology; '' -> []."""
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        if not item:
            continue
        topology.check_node(item)
        if item not in out:
            out.append(item)
    return out
