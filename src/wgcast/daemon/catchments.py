"""The mesh's catchments as this node sees them: for each anycast prefix, the origin
(instance) this node selected and the origin each neighbour selected.

Each neighbour's Updates carry the router-id of the origin it selected, so one daemon
knows its own choice and its neighbours' without asking them. A neighbour that routes a
prefix through us sends it back poisoned (metric infinity: RFC 8966 split horizon), so
an up neighbour without a route to a prefix we reach is shown as choosing our origin via
us ("via_us", inferred). In a full mesh, one node's table is the whole mesh's.

Pure: reads an `EngineView` (frozen snapshots) and returns plain data, served by the API
(`wgcast catchments`), the web page (`daemon/web.py`) and the metrics
(`wgcast_catchment`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wgcast.babel.events import LOCAL
from wgcast.daemon.ports import EngineView
from wgcast.prefix import Prefix


def _coverage(space: Sequence[Prefix]) -> Callable[[Prefix], bool]:
    """A fast "is p inside one of `space`" (integers, not ipaddress comparisons)."""
    nets = [(a.version, a.max_prefixlen - a.prefixlen, int(a.network_address)) for a in space]

    def covered(p: Prefix) -> bool:
        addr, plen, ver = int(p.network_address), p.prefixlen, p.version
        return any(v == ver and p.max_prefixlen - host <= plen and addr >> host == net >> host
                   for v, host, net in nets)

    return covered


def catchment_table(view: EngineView, name_of: Callable[[bytes], str], node: str,
                    anycast: Sequence[Prefix], only: Iterable[Prefix] = (),
                    everything: bool = False, now: float | None = None) -> dict[str, Any]:
    """This node's and its neighbours' selected origin of each prefix.

    Prefixes: `only` if given (also those without a route), else every selected prefix
    inside `anycast` (every selected prefix at all with `everything`)."""
    own = view.router_id
    names: dict[bytes, str] = {own: node}  # a few origins, asked for many times

    def name(rid: bytes) -> str:
        n = names.get(rid)
        if n is None:
            n = names[rid] = name_of(rid)
        return n

    neighbours = view.neighbours()
    selected = {s.prefix: s for s in view.selected()}
    wanted = list(dict.fromkeys(only))
    if not wanted:
        covered = _coverage(anycast)
        wanted = sorted((p for p in selected if everything or covered(p)),
                        key=lambda p: (p.version, int(p.network_address), p.prefixlen))
    rows = []
    for prefix in wanted:
        sel = selected.get(prefix)
        routes = {r.neighbour: r for r in view.routes_to(prefix)}
        local = sel is not None and sel.via == LOCAL
        row: dict[str, Any] = {
            "prefix": str(prefix),
            "origin": None if sel is None else name(sel.router_id),
            "origin_router_id": None if sel is None else sel.router_id.hex(),
            "via": None if sel is None else ("local" if local else sel.via),
            "metric": None if sel is None else sel.metric,
        }
        nbs = []
        for nb in neighbours:
            r = routes.get(nb.name)
            if r is not None:
                nbs.append({"name": nb.name, "origin": name(r.router_id),
                            "origin_router_id": r.router_id.hex(), "metric": r.refmetric,
                            "seen": "announced"})
            elif nb.up and sel is not None:
                # Poisoned back to us: it routes through this node (split horizon).
                nbs.append({"name": nb.name, "origin": row["origin"],
                            "origin_router_id": row["origin_router_id"], "metric": None,
                            "seen": "via_us"})
            else:
                nbs.append({"name": nb.name, "origin": None, "origin_router_id": None,
                            "metric": None, "seen": "down" if not nb.up else "none"})
        row["neighbours"] = nbs
        rows.append(row)
    return {
        "node": node,
        "router_id": own.hex(),
        "time": round(time.time() if now is None else now, 3),
        "neighbours": [{"name": n.name, "up": n.up,
                        "rtt_ms": None if n.rtt_ms is None else round(n.rtt_ms, 3),
                        "cost": view.neighbour_cost(n.name)} for n in neighbours],
        "prefixes": rows,
    }


class CatchmentCollector(Collector):
    """`wgcast_catchment{node, prefix, origin}` = 1 for this node's selection (summed
    over every scraped node: the mesh's catchments), and `wgcast_neighbour_catchment
    {peer, prefix, origin}` for what the neighbours announced."""

    def __init__(self, table: Callable[[], dict[str, Any] | None]) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        t = self.table()
        if t is None:
            return
        own = GaugeMetricFamily("wgcast_catchment", "1: this node's selected origin "
                                "(instance) of the anycast prefix.",
                                labels=["node", "prefix", "origin"])
        metric = GaugeMetricFamily("wgcast_catchment_metric", "Babel metric of this node's "
                                   "route to the selected origin.",
                                   labels=["node", "prefix", "origin"])
        theirs = GaugeMetricFamily("wgcast_neighbour_catchment", "1: the origin the "
                                   "neighbour selected (from its Updates; via_us inferred "
                                   "from split horizon).",
                                   labels=["node", "peer", "prefix", "origin"])
        node = t["node"]
        for row in t["prefixes"]:
            if row["origin"] is not None:
                own.add_metric([node, row["prefix"], row["origin"]], 1.0)
                metric.add_metric([node, row["prefix"], row["origin"]], float(row["metric"]))
            for nb in row["neighbours"]:
                if nb["origin"] is not None:
                    theirs.add_metric([node, nb["name"], row["prefix"], nb["origin"]], 1.0)
        yield from (own, metric, theirs)


class ChangeLog:
    """Recent catchment changes, found by comparing successive tables: (time, prefix,
    node, from, to). Bounded; the page shows it, so a failover that happened before the
    page was opened is still there to read."""

    def __init__(self, keep: int = 5000) -> None:
        self.keep = keep
        self.changes: list[dict[str, Any]] = []
        self._last: dict[tuple[str, str], str | None] = {}

    def observe(self, table: dict[str, Any]) -> None:
        now: dict[tuple[str, str], str | None] = {}
        for row in table["prefixes"]:
            now[(row["prefix"], table["node"])] = row["origin"]
            for nb in row["neighbours"]:
                now[(row["prefix"], nb["name"])] = nb["origin"]
        if self._last:
            for key, origin in now.items():
                if key in self._last and self._last[key] != origin:
                    self.changes.append({"time": table["time"], "prefix": key[0],
                                         "node": key[1], "from": self._last[key],
                                         "to": origin})
            if len(self.changes) > self.keep:
                del self.changes[:-self.keep]
        # Prefixes not asked for this time keep their last known origin.
        self._last.update(now)

    def recent(self, prefix: str = "", n: int = 50) -> list[dict[str, Any]]:
        """The last `n` changes (of `prefix` only, if given), oldest first."""
        if not prefix:
            return self.changes[-n:]
        out: list[dict[str, Any]] = []
        for c in reversed(self.changes):
            if c["prefix"] == prefix:
                out.append(c)
                if len(out) == n:
                    break
        return out[::-1]
