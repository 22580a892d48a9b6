"""systemd's notify protocol, spoken directly: one datagram to the Unix socket named by
$NOTIFY_SOCKET (no libsystemd: nothing to install, and the protocol is one sendto).

`Type=notify` units wait for `READY=1` before `systemctl start` returns and before units
ordered after this one start; `STATUS=` is what `systemctl status` shows; `STOPPING=1`
tells systemd the stop is ours and under way. Without $NOTIFY_SOCKET (not under systemd)
every call does nothing; a send error is never fatal to the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("wgcast")


def notify_address(env: Mapping[str, str] | None = None) -> str | bytes | None:
    """Where to send: a path, or an abstract socket name (`@name` -> b"\\0name")."""
    path = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if not path.startswith("/"):
        return None  # vsock and other schemes: not ours to speak
    return path


def sd_notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=serving") as one message. True if sent."""
    addr = notify_address(env)
    if addr is None or not fields:
        return False
    msg = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(msg, addr)
    except OSError as e:
        log.debug("sd_notify to %r failed: %s", addr, e)
        return False
    return True
