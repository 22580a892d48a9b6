"""The daemon's local API: a Unix stream socket, one JSON object per line each way.

Requests are `{"cmd": NAME, ...}`; replies carry `ok` and, on error, a stable `error` code
and a `message`. Lines are bounded and every bad request gets an error reply; nothing a
client sends can stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wgcast.daemon.runtime import Daemon

log = logging.getLogger("wgcast.api")

MAX_LINE = 16 * 1024
MAX_CONNECTIONS = 4096

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ApiServer:
    """Serves status, routes and peers (membership commands plug in via `handlers`)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.path = daemon.config.api_socket
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.handlers: dict[str, Handler] = {
            "status": self._status,
            "routes": self._routes,
            "peers": self._peers,
        }

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE)
        os.chmod(self.path, self.daemon.config.api_socket_mode)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS:
                await _reply(writer, {"ok": False, "error": "too_many_connections",
                                      "message": f"more than {MAX_CONNECTIONS} connections"})
                return
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    await _reply(writer, {"ok": False, "error": "line_too_long",
                                          "message": f"requests are limited to {MAX_LINE} bytes"})
                    return
                await _reply(writer, await self.handle_line(line))
        except (ConnectionError, OSError):
            return
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "error": "bad_json", "message": f"not JSON: {e}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "bad_request", "message": "expected a JSON object"}
        cmd = req.get("cmd")
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": "unknown_command",
                    "message": f"unknown cmd {cmd!r}; expected one of {sorted(self.handlers)}"}
        try:
            out = await handler(req)
        except ApiError as e:
            return {"ok": False, "error": e.code, "message": str(e)}
        except Exception as e:  # a bug must not take the daemon down
            log.exception("API %s failed", cmd)
            return {"ok": False, "error": "internal", "message": str(e)}
        return {"ok": True, **out}

    async def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.daemon.status()}

    async def _routes(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"routes": self.daemon.route_table()}

    async def _peers(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"peers": self.daemon.peer_table()}


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def request(path: str, obj: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Blocking client for the CLI: one request, one reply."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(obj).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply
