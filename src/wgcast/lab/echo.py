"""UDP echo service of the lab: answers each datagram with ``NAME \\0 REQUEST``.

``python -m wgcast.lab.echo --name n3 --port 7`` listens on [::]:7 (IPv4 too, through
mapped addresses). The reply leaves FROM the address the query was sent TO (IPV6_PKTINFO),
so a query to an anycast address gets its answer from that anycast address, whatever
address the kernel would have picked as source.

A single blocking loop: tens of thousands of queries per second on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import struct
import sys
import time

SEP = b"\0"
MAX_DATAGRAM = 65535


def parse_reply(data: bytes) -> tuple[str, bytes]:
    """(answering node name, echoed request) from an echo reply."""
    name, sep, rest = data.partition(SEP)
    if not sep:
        raise ValueError("not an echo reply")
    return name.decode(errors="replace"), rest


def open_socket(bind: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, 33, 4 * 1024 * 1024)  # SO_RCVBUFFORCE
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        with contextlib.suppress(OSError):  # bind an address that is not there yet
            s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
    s.bind((bind, port))
    return s


def serve(name: str, sock: socket.socket, duration: float | None = None) -> int:
    """Answer until SIGTERM/SIGINT (or ``duration`` s); returns the number answered."""
    prefix = name.encode() + SEP
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sock.settimeout(0.25)
    deadline = None if duration is None else time.monotonic() + duration
    answered = 0
    v6 = sock.family == socket.AF_INET6
    cmsg_space = socket.CMSG_SPACE(20)
    while not stop:
        if deadline is not None and time.monotonic() >= deadline:
            break
        try:
            data, anc, _flags, src = sock.recvmsg(MAX_DATAGRAM, cmsg_space)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        except OSError:
            continue
        reply = prefix + data
        try:
            pktinfo = None
            if v6:
                for level, typ, cdata in anc:
                    if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
                        # in6_pktinfo: 16-byte address + ifindex; reply from that address.
                        pktinfo = cdata[:16] + struct.pack("=I", 0)
            if pktinfo is not None and not pktinfo.startswith(b"\0" * 10 + b"\xff\xff"):
                sock.sendmsg([reply], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
                               0, src)
            else:
                sock.sendto(reply, src)
            answered += 1
        except OSError:
            continue
    return answered


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wgcast.lab.echo")
    ap.add_argument("--name", required=True, help="node name put in every reply")
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--bind", default="::")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many s")
    ap.add_argument("--rt", action="store_true",
                    help="SCHED_FIFO (like the relay and the probers): on a loaded machine a "
                         "starved echo would queue queries for seconds and look like an outage")
    args = ap.parse_args(argv)
    if args.rt:
        from wgcast.lab.relay import set_priority

        set_priority("rt")
    try:
        sock = open_socket(args.bind, args.port)
    except OSError as e:
        print(f"echo: cannot bind [{args.bind}]:{args.port}: {e}", file=sys.stderr)
        return 1
    n = serve(args.name, sock, args.duration)
    print(f"echo {args.name}: answered {n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
