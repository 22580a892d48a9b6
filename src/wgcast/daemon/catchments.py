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


def _covered(p: Prefix, space: Sequence[Prefix]) -> bool:
    return any(p.version == a.version and p.subnet_of(a) for a in space)  # type: ignore[arg-type]


def catchment_table(view: EngineView, name_of: Callable[[bytes], str], node: str,
                    anycast: Sequence[Prefix], only: Iterable[Prefix] = (),
                    everything: bool = False, now: float | None = None) -> dict[str, Any]:
    """This node's and its neighbours' selected origin of each prefix.

    Prefixes: `only` if given (also those without a route), else every selected prefix
    inside `anycast` (every selected prefix at all with `everything`)."""
    own = view.router_id

    def name(rid: bytes) -> str:
        return node if rid == own else name_of(rid)

    neighbours = view.neighbours()
    selected = {s.prefix: s for s in view.selected()}
    wanted = list(dict.fromkeys(only))
    if not wanted:
        wanted = sorted((p for p in selected if everything or _covered(p, anycast)),
                        key=lambda p: (p.version, p.network_address, p.prefixlen))
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
