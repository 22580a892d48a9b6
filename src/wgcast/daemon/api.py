"""The daemon's local API: a Unix stream socket, one JSON object per line each way.

Requests are `{"cmd": NAME, ...}`; replies carry `ok` and, on error, a stable `error` code
and a `message`. Lines are bounded and every bad request gets an error reply; nothing a
client sends can stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import itertools
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from wgcast.daemon.api_context import (
    ApiError,
    Connection,
    PeerCred,
    bind_connection,
    current_connection,
    unbind_connection,
)
from wgcast.daemon.config import Config
from wgcast.daemon.ports import Handler, StatusSource

log = logging.getLogger("wgcast.api")

__all__ = ["ApiError", "ApiServer", "Connection", "PeerCred", "current_connection",
           "peer_credentials"]

MAX_LINE = 16 * 1024
MAX_CONNECTIONS = 4096
#: Bytes read from a connection at once.
_CHUNK = 64 * 1024
#: Pending connections the kernel queues before accept().
BACKLOG = 1024

def peer_credentials(sock: Any) -> PeerCred | None:
    """SO_PEERCRED of a connected Unix socket (Linux), else None."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if sock is None or opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


class ApiServer:
    """Serves status, routes and peers (membership commands plug in via `handlers`)."""

    def __init__(self, config: Config, source: StatusSource) -> None:
        self.config = config
        self.source = source
        self.path = config.api_socket
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.handlers: dict[str, Handler] = {
            "status": self._status,
            "routes": self._routes,
            "peers": self._peers,
        }
        #: Called with each new connection before its first request; raising ApiError
        #: refuses it (the client gets that error, then the connection is closed).
        self.connect_hooks: list[Callable[[Connection], None]] = []
        self._ids = itertools.count(1)
        self._live: dict[int, Connection] = {}
        #: (st_dev, st_ino) of the socket file we bound: the only one we may unlink.
        self._bound: tuple[int, int] | None = None

    async def start(self) -> None:
        """Bind the socket with the configured mode and group, never wider meanwhile."""
        cfg = self.config
        gid = _resolve_group(cfg.api_socket_group)
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        if _listening(self.path):
            # Another daemon (another interface configured with the same path) serves it.
            raise RuntimeError(f"api_socket {self.path}: another process is listening on "
                               "it; give this interface its own api_socket")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket: nobody answers on it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o077)  # born 0700: nobody else connects before chmod
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            st = os.stat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            if gid is not None:
                os.chown(self.path, -1, gid)
            os.chmod(self.path, cfg.api_socket_mode)
            sock.setblocking(False)
            self.server = await asyncio.start_unix_server(self._client, sock=sock,
                                                          backlog=BACKLOG)
        except BaseException:
            sock.close()
            raise
        _raise_nofile(MAX_CONNECTIONS + 256)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self._live.values()):
            writer = conn.data.get("_writer")
            if writer is not None:
                writer.close()
            conn._close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        self._unlink_own()

    def _unlink_own(self) -> None:
        """Remove the socket file only if it is still the one we bound: never another
        daemon's."""
        if self._bound is None:
            return
        bound, self._bound = self._bound, None
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        else:
            log.warning("api: %s is no longer our socket; leaving it", self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = Connection(next(self._ids), peer_credentials(writer.get_extra_info("socket")))
        conn.data["_writer"] = writer
        self._live[conn.id] = conn
        token = bind_connection(conn)
        try:
            if self.connections > MAX_CONNECTIONS:
                await _reply(writer, {"ok": False, "error": "too_many_connections",
                                      "message": f"more than {MAX_CONNECTIONS} connections"})
                return
            try:
                for hook in self.connect_hooks:
                    hook(conn)
            except ApiError as e:
                await _reply(writer, {"ok": False, "error": e.code, "message": str(e)})
                return
            buf = b""
            discarding = False
            while True:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    return
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_LINE:
                            # Drop the rest of this line; one error reply when it ends.
                            buf = b""
                            discarding = True
                        break
                    line, buf = buf[:nl], buf[nl + 1:]
                    if discarding or nl > MAX_LINE:
                        discarding = False
                        await _reply(writer, {"ok": False, "error": "line_too_long",
                                              "message": "requests are limited to "
                                                         f"{MAX_LINE} bytes"})
                        continue
                    if not line.strip():
                        continue
                    await _reply(writer, await self.handle_line(line))
        except (ConnectionError, OSError):
            return
        finally:
            unbind_connection(token)
            self.connections -= 1
            self._live.pop(conn.id, None)
            conn._close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "error": "bad_json", "message": f"not JSON: {e}"}
        except RecursionError:
            return {"ok": False, "error": "bad_json", "message": "not JSON: nested too deeply"}
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
        return {"status": self.source.status()}

    async def _routes(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"routes": self.source.route_table()}

    async def _peers(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"peers": self.source.peer_table()}


def _listening(path: str) -> bool:
    """Does a process accept connections on the Unix socket at `path`?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False  # missing, not a socket, or stale (ECONNREFUSED)
        return True


def _resolve_group(group: str | int | None) -> int | None:
    """The gid of `api_socket_group` (a name is looked up now, at start)."""
    if group is None or isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise RuntimeError(f"api_socket_group: no group named {group!r} on this system") \
            from None


def _raise_nofile(want: int) -> None:
    """Room for MAX_CONNECTIONS clients: raise the soft RLIMIT_NOFILE up to the hard one."""
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()
