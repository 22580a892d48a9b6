"""Prometheus metrics of one daemon, served over HTTP on the `metrics` address.

The exposition is built at scrape time from the daemon's own state (no second copy to
keep in step), inside the event loop that owns that state: a small asyncio HTTP server,
not prometheus_client's thread, so a scrape never reads half-updated tables. Requests are
bounded (size, time); anything but `GET /metrics` gets a plain error status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from wgcast.daemon.http import MAX_REQUEST, REQUEST_TIMEOUT, read_request_line, reply
from wgcast.daemon.ports import GroupSource, StatusSource

log = logging.getLogger(__name__)

#: Longest request head we read, and how long a client may take to send it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DaemonCollector(Collector):
    """Reads the daemon (and its groups) at each scrape."""

    def __init__(self, source: StatusSource, groups: GroupSource | None = None) -> None:
        self.source = source
        self.groups = groups

    def collect(self) -> Iterator[Metric]:
        c = self.source.counters()
        if c is None:
            return
        info = InfoMetricFamily("wgcast", "The daemon and its WireGuard interface.",
                                labels=["interface"])
        info.add_metric([c.interface], {"router_id": c.router_id.hex(),
                                        "control_address": c.control_address})
        yield info
        yield _gauge("wgcast_seqno", "Our Babel sequence number.", c.seqno)
        yield _gauge("wgcast_routes", "Prefixes with a selected route (own ones included).",
                     c.routes)
        yield _gauge("wgcast_served_groups", "Anycast groups this node originates.",
                     c.served_groups)

        peers = self.source.peer_table()
        up = GaugeMetricFamily("wgcast_neighbour_up", "1 while the peer's Babel neighbour "
                               "is up.", labels=["peer"])
        rtt = GaugeMetricFamily("wgcast_neighbour_rtt_seconds", "Smoothed RTT to the peer "
                                "through the tunnel.", labels=["peer"])
        cost = GaugeMetricFamily("wgcast_neighbour_cost", "Link cost to the peer (65535: "
                                 "unreachable).", labels=["peer"])
        via = GaugeMetricFamily("wgcast_neighbour_routes", "Routes learned from the peer.",
                                labels=["peer"])
        for p in peers:
            up.add_metric([p["name"]], 1.0 if p["up"] else 0.0)
            if p["rtt_ms"] is not None:
                rtt.add_metric([p["name"]], p["rtt_ms"] / 1000.0)
            cost.add_metric([p["name"]], float(p["cost"]))
            via.add_metric([p["name"]], float(p["routes_via"]))
        why = GaugeMetricFamily("wgcast_peer_down_reason", "1 for a peer that stays down, "
                                "labelled with why (wgcast peers).", labels=["peer", "reason"])
        for p in peers:
            if p.get("reason"):
                why.add_metric([p["name"], p["reason"]], 1.0)
        yield from (up, rtt, cost, via, why)

        babel = CounterMetricFamily("wgcast_babel_events", "Babel engine counters "
                                    "(packets, bytes, updates, requests, route changes).",
                                    labels=["event"])
        for k, v in sorted(c.babel.items()):
            babel.add_metric([k], float(v))
        yield babel

        yield _counter("wgcast_dataplane_applies", "Data plane updates applied.",
                       c.dataplane_applies)
        yield _counter("wgcast_dataplane_ops", "AllowedIPs operations applied.",
                       c.dataplane_ops)
        yield _counter("wgcast_dataplane_errors", "Failed data plane updates (retried).",
                       c.dataplane_errors)
        yield _gauge("wgcast_dataplane_last_apply_seconds", "Duration of the last data "
                     "plane update.", c.last_apply_ms / 1000.0)
        yield _counter("wgcast_held_moves", "Moves held until the replies in flight through "
                       "the old peer were in (make-before-break).", c.held_moves)
        yield _counter("wgcast_held_packets", "Packets held during moves, then sent on.",
                       c.held_packets)
        if c.move_hold_dropped is not None:
            yield _counter("wgcast_hold_dropped_packets", "Packets dropped because the hold "
                           "queue was full.", c.move_hold_dropped)
        yield _counter("wgcast_announcements_dropped", "Updates refused by the origination "
                       "policy (echoes of our own prefixes excluded).", c.announcements_dropped)
        yield _counter("wgcast_dataplane_put_back", "Owned AllowedIPs and routes found "
                       "changed by someone else and put back.", c.dataplane_put_back)
        yield _counter("wgcast_interface_resyncs", "Full resyncs after the WireGuard "
                       "interface came back.", c.interface_resyncs)
        yield _counter("wgcast_state_save_errors", "State file saves that failed (a full or "
                       "read-only disk; retried, never fatal).", c.state_save_errors)
        refused = CounterMetricFamily("wgcast_announcements_refused", "Updates refused, by "
                                      "neighbour and reason.", labels=["peer", "reason"])
        for (peer, reason), n in sorted(c.announcements_refused.items()):
            refused.add_metric([peer, reason], float(n))
        yield refused
        sig = CounterMetricFamily("wgcast_origin_signatures", "Origin signatures: made "
                                  "(signed), checked with Ed25519 (verified), answered "
                                  "from memory (verified_from_memory).", labels=["op"])
        for op, n in sorted(c.signatures.items()):
            sig.add_metric([op], float(n))
        yield sig

        if c.endpoints is not None:
            ep = CounterMetricFamily("wgcast_endpoint_events", "Endpoint manager counters "
                                     "(switches, probes, roams, errors).", labels=["event"])
            for k, v in sorted(c.endpoints.items()):
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "probe_port":
                    ep.add_metric([k], float(v))
            yield ep

        if self.groups is not None:
            fams = {
                "served": GaugeMetricFamily("wgcast_group_served", "1 while the group is "
                                            "originated here.", labels=["group"]),
                "members": GaugeMetricFamily("wgcast_group_members", "Memberships held.",
                                             labels=["group"]),
                "healthy": GaugeMetricFamily("wgcast_group_healthy", "1 while the group's "
                                             "health checks pass.", labels=["group"]),
                "draining": GaugeMetricFamily("wgcast_group_draining", "1 while drained.",
                                              labels=["group"]),
            }
            for g in self.groups.group_snapshots():
                label = [str(g.prefix)]
                fams["served"].add_metric(label, float(g.served))
                fams["members"].add_metric(label, float(g.members))
                fams["healthy"].add_metric(label, float(g.healthy))
                fams["draining"].add_metric(label, float(g.draining))
            yield from fams.values()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


class MetricsServer:
    """`GET /metrics` on the configured address."""

    def __init__(self, source: StatusSource, groups: GroupSource | None,
                 host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(source, groups))
        self._server: asyncio.Server | None = None
        self.scrapes = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=MAX_REQUEST)
        log.info("metrics on http://%s/metrics", _hostport(self.host, self.port))

    @property
    def bound_port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            status, body, ctype = await asyncio.wait_for(self._respond(reader),
                                                         REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ConnectionError):
            status, body, ctype = "400 Bad Request", b"bad request\n", "text/plain"
        await reply(writer, status, body, ctype)

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, bytes, str]:
        method, target = await read_request_line(reader)
        target = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        if target not in ("/metrics", "/"):
            return "404 Not Found", b"GET /metrics\n", "text/plain"
        self.scrapes += 1
        body = self.render()
        return "200 OK", b"" if method == "HEAD" else body, CONTENT_TYPE


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
