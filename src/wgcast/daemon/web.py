"""The catchment page: a small read-only HTTP server (opt-in: `web` in the config,
localhost by default) with one HTML page that draws this node, its neighbours, the
origin each one selected per anycast prefix and the RTT of each link, polling
`/catchments.json` once a second.

Served inside the daemon's event loop (the table is built from the engine's snapshots at
request time, never half-updated). Requests are bounded like the metrics endpoint's;
anything but GET/HEAD of the two paths gets a plain error status.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from wgcast.daemon.catchments import ChangeLog
from wgcast.daemon.http import MAX_REQUEST, REQUEST_TIMEOUT, read_request_line, reply
from wgcast.prefix import Prefix

log = logging.getLogger(__name__)

PAGE = "catchments.html"
#: The change log is sampled while the JSON was asked for within this many seconds
#: (a page is open): building the table costs ~1 ms per 30 prefixes, not worth it for
#: nobody.
WATCH_WINDOW = 120.0

#: (prefixes asked for, everything) -> the table of `catchments.catchment_table`.
TableSource = Callable[[list[Prefix], bool], dict[str, Any]]


class WebError(ValueError):
    """A bad query: 400 with this message."""


def parse_query(query: str) -> tuple[list[Prefix], bool]:
    """`prefix=P` (repeatable, or comma-separated) and `all=1` of the JSON endpoint."""
    q = parse_qs(query, keep_blank_values=True)
    q.pop("log", None)
    prefixes: list[Prefix] = []
    for v in q.get("prefix", []):
        for part in filter(None, v.split(",")):
            try:
                prefixes.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise WebError(f"prefix: expected an IP prefix, got {part!r}") from None
    everything = q.get("all", ["0"])[-1] not in ("0", "", "false", "no")
    return prefixes, everything


class WebServer:
    """GET / (the page) and GET /catchments.json on `host:port`."""

    def __init__(self, table: TableSource, host: str, port: int,
                 track_every: float = 0.25, stamp: Callable[[], object] | None = None
                 ) -> None:
        self.table = table
        self.host = host
        self.port = port
        self.page = resources.files("wgcast.data").joinpath(PAGE).read_bytes()
        self._server: asyncio.Server | None = None
        self.requests = 0
        #: Changes of the anycast catchments, sampled every `track_every` seconds.
        self.log = ChangeLog()
        self.track_every = track_every
        #: Changes whenever the table may have (Updates in, route changes, neighbours
        #: up/down): the tracker builds a table only then. None: every time.
        self.stamp = stamp
        self._tracker: asyncio.Task[None] | None = None
        #: Loop time of the last JSON request: the log is kept while someone watches.
        self._watched_at = float("-inf")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=MAX_REQUEST)
        if self.track_every > 0:
            self._tracker = asyncio.create_task(self._track(), name="wgcast-web-track")
        host = f"[{self.host}]" if ":" in self.host else self.host
        log.info("catchment page on http://%s:%d/", host, self.bound_port or self.port)

    @property
    def bound_port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def _track(self) -> None:
        last: object = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                now = self.stamp() if self.stamp is not None else None
                watched = loop.time() - self._watched_at < WATCH_WINDOW
                if watched and (now is None or now != last):
                    last = now
                    self.log.observe(self.table([], False))
            except Exception:  # never fatal: the page just misses a sample
                log.exception("web: catchment sample failed")
            await asyncio.sleep(self.track_every)

    async def stop(self) -> None:
        if self._tracker is not None:
            self._tracker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tracker
            self._tracker = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def respond(self, method: str, target: str) -> tuple[str, bytes, str]:
        """(status, body, content type) of one request."""
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET only\n", "text/plain"
        if path in ("/", "/catchments", "/index.html"):
            body, ctype = self.page, "text/html; charset=utf-8"
        elif path == "/catchments.json":
            try:
                prefixes, everything = parse_query(query)
            except WebError as e:
                return "400 Bad Request", f"{e}\n".encode(), "text/plain"
            table = self.table(prefixes, everything)
            with contextlib.suppress(RuntimeError):  # outside a loop (tests)
                self._watched_at = asyncio.get_running_loop().time()
            if not prefixes and not everything:
                self.log.observe(table)
            table["changes"] = self.log.recent(parse_qs(query).get("log", [""])[-1], 50)
            body = json.dumps(table, separators=(",", ":")).encode()
            ctype = "application/json"
        else:
            return "404 Not Found", b"GET / or /catchments.json\n", "text/plain"
        self.requests += 1
        return "200 OK", b"" if method == "HEAD" else body, ctype

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            method, target = await asyncio.wait_for(read_request_line(reader),
                                                    REQUEST_TIMEOUT)
            status, body, ctype = self.respond(method, target)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ConnectionError):
            status, body, ctype = "400 Bad Request", b"bad request\n", "text/plain"
        except Exception as e:  # a bug must not take the daemon down
            log.exception("web: request failed")
            status, body, ctype = "500 Internal Server Error", f"{e}\n".encode(), "text/plain"
        await reply(writer, status, body, ctype,
                    "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n")
