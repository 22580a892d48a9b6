"""A small client of the wgcast membership API, for services written in Python.

::

    from wgcast.client import membership

    with membership("fd00:a::53/128", interface="wg0"):
        serve_forever()          # the node attracts the group's traffic meanwhile

A membership lives as long as the connection: if the process dies, the daemon withdraws
the group at once. `Client` exposes every command (join, leave, drain, undrain, status);
errors raise `WgcastError` with the API's stable `code`. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

__all__ = ["DEFAULT_DIR", "Client", "WgcastError", "default_socket", "membership", "request"]

DEFAULT_DIR = "/run/wgcast"
#: Longest reply line accepted from the daemon.
MAX_REPLY = 4 * 1024 * 1024


class WgcastError(Exception):
    """The daemon refused a request (`code`: see docs/membership.md) or is unreachable
    (`code` "unreachable")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def default_socket(interface: str | None = None) -> str:
    """The API socket: $WGCAST_SOCKET, /run/wgcast/<interface>.sock, or the only socket
    in /run/wgcast."""
    env = os.environ.get("WGCAST_SOCKET")
    if interface:
        return os.path.join(DEFAULT_DIR, f"{interface}.sock")
    if env:
        return env
    try:
        socks = sorted(f for f in os.listdir(DEFAULT_DIR) if f.endswith(".sock"))
    except OSError:
        socks = []
    if len(socks) == 1:
        return os.path.join(DEFAULT_DIR, socks[0])
    if not socks:
        raise WgcastError("unreachable", f"no wgcast socket in {DEFAULT_DIR}: is the daemon "
                                         "running? (give the socket path or the interface)")
    raise WgcastError("unreachable", f"several wgcast sockets in {DEFAULT_DIR} "
                                     f"({', '.join(socks)}): name the interface")


class Client:
    """One connection to the daemon; memberships joined on it last until `close()`."""

    def __init__(self, socket_path: str | None = None, *, interface: str | None = None,
                 timeout: float | None = 30.0) -> None:
        self.path = socket_path or default_socket(interface)
        self.timeout = timeout
        self._buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise WgcastError("unreachable", f"cannot connect to {self.path}: "
                                             f"{e.strerror or e}") from None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, obj: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one request, return its reply; raise WgcastError if it is not ok."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
            line = self._readline()
        except (OSError, ValueError) as e:
            raise WgcastError("unreachable", f"{self.path}: {e}") from None
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)
        try:
            reply = json.loads(line)
        except ValueError:
            raise WgcastError("bad_reply", f"not JSON: {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise WgcastError("bad_reply", "expected a JSON object")
        if not reply.get("ok"):
            raise WgcastError(str(reply.get("error", "error")), str(reply.get("message", "")))
        return reply

    def _readline(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY:
                raise ValueError("reply too long")
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    # ------------------------------------------------------------------ commands

    def join(self, *prefixes: str, wait: float | None = None) -> list[dict[str, Any]]:
        """Hold these groups on this connection (replies: state, members, served)."""
        out = []
        for p in prefixes:
            req: dict[str, Any] = {"cmd": "join", "prefix": str(p)}
            if wait is not None:
                req["wait"] = wait
            out.append(self.request(req))
        return out

    def leave(self, prefix: str, *, pid: int | None = None, all: bool = False,
              wait: float | None = None) -> dict[str, Any]:
        """Release this connection's membership of `prefix` (or, with `pid` / `all`, the
        memberships other processes of the same uid hold; root: anyone's)."""
        req: dict[str, Any] = {"cmd": "leave", "prefix": str(prefix)}
        if pid is not None:
            req["pid"] = pid
        if all:
            req["all"] = True
        if wait is not None:
            req["wait"] = wait
        return self.request(req)

    def drain(self, prefix: str, *, move_timeout: float | None = None,
              ack_timeout: float | None = None, settle: float | None = None) -> dict[str, Any]:
        """Move the mesh away from the local instance of `prefix`; returns once drained."""
        req: dict[str, Any] = {"cmd": "drain", "prefix": str(prefix)}
        for k, v in (("move_timeout", move_timeout), ("ack_timeout", ack_timeout),
                     ("settle", settle)):
            if v is not None:
                req[k] = v
        bound = sum(v or 5.0 for v in (move_timeout, ack_timeout, settle)) + 10.0
        return self.request(req, timeout=max(bound, self.timeout or 0.0))

    def undrain(self, prefix: str) -> dict[str, Any]:
        return self.request({"cmd": "undrain", "prefix": str(prefix)})

    def status(self) -> dict[str, Any]:
        return self.request({"cmd": "status"})


@contextlib.contextmanager
def membership(*prefixes: str, socket_path: str | None = None, interface: str | None = None,
               drain: bool = False) -> Iterator[Client]:
    """Hold `prefixes` for the duration of the block.

    On exit the groups are left (the daemon withdraws them when this was the last member,
    waiting for the neighbours' acks) or, with `drain=True`, drained first so that no
    query is lost.
    """
    client = Client(socket_path, interface=interface)
    try:
        client.join(*prefixes)
        yield client
        for p in prefixes:
            with contextlib.suppress(WgcastError):
                if drain:
                    client.drain(p)
                client.leave(p)
    finally:
        client.close()


def request(path: str, obj: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request, one reply, blocking (the CLI and the lab; no error mapping)."""
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
