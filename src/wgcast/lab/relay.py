"""Userspace link emulation between wireguard-go endpoints (the lab's "wire").

The relay runs in its own network namespace, joined to every node namespace by a veth
pair. Every undirected topology link (a, b, id) owns two UDP sockets:

* ``port_a``: the socket node a talks to. a's WireGuard endpoint for peer b is
  ``relay address on a's veth : port_a``.
* ``port_b``: the same for b.

A datagram that a sends to ``port_a`` is delivered to b's WireGuard address after the
link's delay (+ jitter, - loss), sent FROM ``port_b``: b sees it coming from the endpoint
it already has for a, so WireGuard roaming keeps the endpoints stable.

wgcast's endpoint probes (datagrams starting with the probe magic ``wgcP``, see
wgcast.probe) sent to the same ports take the same link (same delay, loss, cut) but go
to the other end's probe responder (``b_probe``, default b's address, port 51821)
instead of its WireGuard port; the relay learns each end's probe socket from its
probes, apart from its WireGuard address. So a daemon configured with
``probe_port = "endpoint"`` probes every candidate endpoint through the very link its
WireGuard traffic would take.

Timing: one tight, single-threaded loop (epoll for readiness, a heap of due packets,
``select`` on the epoll fd for microsecond timeouts, timer slack 1 ns). With jitter 0 a
link keeps FIFO order (a packet is never due before the previous one of the same
direction, even after the delay is lowered at run time). With jitter J the delay of each
packet is uniform in [delay - J/2, delay + J/2] (clipped at 0), so two packets of a
direction are never reordered by more than J.

Control: a Unix stream socket, one JSON object per line, one JSON reply per line::

    {"op": "ping"}
    {"op": "get"}                                   -> {"ok": true, "links": [...]}
    {"op": "set", "link": 3, "up": false}           (or "links": [3, 4])
    {"op": "set", "link": 3, "dir": "ab", "delay_ms": 20, "jitter_ms": 2, "loss": 0.01}
    {"op": "set", "link": 3, "dir": "ba", "rebind_ms": 20}   (0: off)
    {"op": "stats"}
    {"op": "stop"}

``dir`` is "both" (default), "ab" (packets from a to b) or "ba".

``rebind_ms`` emulates a NAT that keeps rebinding in front of the sender: the packets of
that direction leave the relay from a new UDP port (a new source address for the
receiver, whose WireGuard roams to it) every ``rebind_ms``; the receiver's packets to
any of the last ``NAT_PORTS`` ports still go through the link.

Run: ``python -m wgcast.lab.relay run --config relay.json --control relay.sock``;
``python -m wgcast.lab.relay bench`` measures the forwarding rate on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

MAX_QUEUE = 200_000  # packets in flight across all links
BATCH = 256  # datagrams read from one socket per readiness event
RECV_SIZE = 4096
SOCK_BUF = 4 * 1024 * 1024
MAX_CLIENTS = 32
MAX_LINE = 65536
NAT_PORTS = 8  # rebinding: source ports of a direction still open
PROBE_MAGIC = b"wgcP"  # wgcast.probe.MAGIC (not imported: the relay stays stdlib-only)
DEFAULT_PROBE_PORT = 51821


def set_timer_slack_ns(ns: int = 1) -> bool:
    """Make timed wakeups precise (default slack is 50 us)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0) == 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


def set_priority(mode: str) -> str:
    """Raise the scheduling priority of this process: 'rt' (SCHED_FIFO 1, the process
    never spins, so it only runs when packets are due or arrive), 'nice' (-10) or 'none'.
    Returns what was applied."""
    if mode == "rt":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            return "rt"
        except (OSError, AttributeError):
            mode = "nice"
    if mode == "nice":
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
            return "nice"
        except OSError:
            pass
    return "none"


@dataclass
class Direction:
    """Parameters and counters of one direction of a link."""

    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds (full width of the uniform spread)
    loss: float = 0.0
    up: bool = True
    epoch: int = 0  # bumped on cut: in-flight packets of an older epoch are dropped
    last_due: float = 0.0
    rebind: float = 0.0  # seconds between source port changes (0: never)
    nat: list[socket.socket] = field(default_factory=list)  # newest last
    nat_since: float = 0.0
    rebinds: int = 0
    rx: int = 0
    tx: int = 0
    drop_down: int = 0
    drop_loss: int = 0
    drop_queue: int = 0
    drop_send: int = 0
    bytes: int = 0

    def params(self) -> dict[str, Any]:
        return {"delay_ms": round(self.delay * 1000, 6), "jitter_ms": round(self.jitter * 1000, 6),
                "loss": self.loss, "up": self.up, "rebind_ms": round(self.rebind * 1000, 6),
                "rebinds": self.rebinds}

    def counters(self) -> dict[str, int]:
        return {"rx": self.rx, "tx": self.tx, "drop_down": self.drop_down,
                "drop_loss": self.drop_loss, "drop_queue": self.drop_queue,
                "drop_send": self.drop_send, "bytes": self.bytes}


@dataclass
class RelayLink:
    id: int
    a: str
    b: str
    a_addr: tuple[str, int]  # where a's WireGuard listens (learned again from traffic)
    b_addr: tuple[str, int]
    port_a: int
    port_b: int
    ab: Direction = field(default_factory=Direction)
    ba: Direction = field(default_factory=Direction)
    sock_a: socket.socket | None = None
    sock_b: socket.socket | None = None
    a_probe: tuple[str, int] = ("", 0)  # where a's probe responder listens (set in Relay)
    b_probe: tuple[str, int] = ("", 0)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "a": self.a, "b": self.b, "port_a": self.port_a,
                "port_b": self.port_b, "a_addr": list(self.a_addr), "b_addr": list(self.b_addr),
                "a_probe": list(self.a_probe), "b_probe": list(self.b_probe),
                "ab": {**self.ab.params(), **self.ab.counters()},
                "ba": {**self.ba.params(), **self.ba.counters()}}


def _udp_socket(bind: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
        except OSError:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
    s.bind((bind, port))
    s.setblocking(False)
    return s


class Relay:
    def __init__(self, config: dict[str, Any], control_path: str | None = None) -> None:
        self.bind = str(config.get("bind", "0.0.0.0"))
        self.rng = random.Random(config.get("seed"))
        self.links: dict[int, RelayLink] = {}
        for d in config["links"]:
            lk = RelayLink(
                id=int(d["id"]), a=str(d["a"]), b=str(d["b"]),
                a_addr=(str(d["a_addr"][0]), int(d["a_addr"][1])),
                b_addr=(str(d["b_addr"][0]), int(d["b_addr"][1])),
                port_a=int(d["port_a"]), port_b=int(d["port_b"]),
            )
            for end in ("a", "b"):
                host = getattr(lk, f"{end}_addr")[0]
                probe = d.get(f"{end}_probe") or (host, DEFAULT_PROBE_PORT)
                setattr(lk, f"{end}_probe", (str(probe[0]), int(probe[1])))
            for direction in (lk.ab, lk.ba):
                direction.delay = float(d.get("delay_ms", 0.0)) / 1000.0
                direction.jitter = float(d.get("jitter_ms", 0.0)) / 1000.0
                direction.loss = float(d.get("loss", 0.0))
                direction.up = bool(d.get("up", True))
            self.links[lk.id] = lk
        self.control_path = control_path
        self.heap: list[tuple[float, int, socket.socket, tuple[str, int], bytes,
                              Direction, int]] = []
        self.seq = 0
        self.stopping = False
        self.started = time.monotonic()
        self.late_max = 0.0
        self.late_sum = 0.0
        self.late_n = 0
        self.late_over = [0, 0, 0]  # packets sent > 1 ms, > 5 ms, > 20 ms after due
        # fd -> (link, from_a)
        self.by_fd: dict[int, tuple[RelayLink, bool]] = {}
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}
        self.ctl: socket.socket | None = None
        self.ep = select.epoll()

    # -- setup ------------------------------------------------------------------------
    def open(self) -> None:
        for lk in self.links.values():
            lk.sock_a = _udp_socket(self.bind, lk.port_a)
            lk.sock_b = _udp_socket(self.bind, lk.port_b)
            self.by_fd[lk.sock_a.fileno()] = (lk, True)
            self.by_fd[lk.sock_b.fileno()] = (lk, False)
            self.ep.register(lk.sock_a.fileno(), select.EPOLLIN)
            self.ep.register(lk.sock_b.fileno(), select.EPOLLIN)
        if self.control_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_path)
            self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.ctl.bind(self.control_path)
            os.chmod(self.control_path, 0o600)
            self.ctl.listen(16)
            self.ctl.setblocking(False)
            self.ep.register(self.ctl.fileno(), select.EPOLLIN)

    def close(self) -> None:
        for lk in self.links.values():
            for s in (lk.sock_a, lk.sock_b, *lk.ab.nat, *lk.ba.nat):
                if s is not None:
                    s.close()
        for s, _ in self.clients.values():
            s.close()
        if self.ctl is not None:
            self.ctl.close()
            with contextlib.suppress(OSError):
                os.unlink(self.control_path)  # type: ignore[arg-type]
        self.ep.close()

    # -- data path --------------------------------------------------------------------
    def _nat_socket(self, lk: RelayLink, d: Direction, to_a: bool, now: float) -> socket.socket:
        """The rebinding source socket of direction `d` (a new one every d.rebind)."""
        if not d.nat or now - d.nat_since >= d.rebind:
            s = _udp_socket(self.bind, 0)
            d.nat.append(s)
            d.nat_since = now
            d.rebinds += 1
            self.by_fd[s.fileno()] = (lk, to_a)  # the receiver answers to it
            self.ep.register(s.fileno(), select.EPOLLIN)
            while len(d.nat) > NAT_PORTS:
                old = d.nat.pop(0)
                self.by_fd.pop(old.fileno(), None)
                with contextlib.suppress(OSError, ValueError):
                    self.ep.unregister(old.fileno())
                old.close()
        return d.nat[-1]

    def _receive(self, lk: RelayLink, from_a: bool, now: float,
                 insock: socket.socket | None = None) -> None:
        if from_a:
            insock, outsock, d = insock or lk.sock_a, lk.sock_b, lk.ab
        else:
            insock, outsock, d = insock or lk.sock_b, lk.sock_a, lk.ba
        assert insock is not None and outsock is not None
        if d.rebind:
            outsock = self._nat_socket(lk, d, not from_a, now)
        recv = insock.recvfrom
        heap = self.heap
        rnd = self.rng.random
        for _ in range(BATCH):
            try:
                data, src = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            d.rx += 1
            if data[:4] == PROBE_MAGIC:  # an endpoint probe: to the responder
                if from_a:
                    lk.a_probe = src
                    dst = lk.b_probe
                else:
                    lk.b_probe = src
                    dst = lk.a_probe
            # Learn where the sender's WireGuard listens (it may have rebound).
            elif from_a:
                if src != lk.a_addr:
                    lk.a_addr = src
                dst = lk.b_addr
            else:
                if src != lk.b_addr:
                    lk.b_addr = src
                dst = lk.a_addr
            if not d.up:
                d.drop_down += 1
                continue
            if d.loss and rnd() < d.loss:
                d.drop_loss += 1
                continue
            if len(heap) >= MAX_QUEUE:
                d.drop_queue += 1
                continue
            if d.jitter:
                due = now + max(0.0, d.delay + (rnd() - 0.5) * d.jitter)
            else:
                due = now + d.delay
                if due < d.last_due:
                    due = d.last_due
                d.last_due = due
            self.seq += 1
            heapq.heappush(heap, (due, self.seq, outsock, dst, data, d, d.epoch))

    def _flush(self, now: float) -> None:
        heap = self.heap
        pop = heapq.heappop
        while heap and heap[0][0] <= now:
            due, _, outsock, dst, data, d, epoch = pop(heap)
            if epoch != d.epoch or not d.up:
                d.drop_down += 1
                continue
            try:
                outsock.sendto(data, dst)
            except OSError:
                d.drop_send += 1
                continue
            d.tx += 1
            d.bytes += len(data)
            late = now - due
            self.late_n += 1
            self.late_sum += late
            if late > 0.001:
                lo = self.late_over
                lo[0] += 1
                if late > 0.005:
                    lo[1] += 1
                    if late > 0.020:
                        lo[2] += 1
                if late > self.late_max:
                    self.late_max = late

    # -- control ----------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.ctl is not None
        for _ in range(16):
            try:
                conn, _ = self.ctl.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            self.clients[conn.fileno()] = (conn, bytearray())
            self.ep.register(conn.fileno(), select.EPOLLIN)

    def _drop_client(self, fd: int) -> None:
        conn, _ = self.clients.pop(fd)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        conn.close()

    def _client(self, fd: int) -> None:
        conn, buf = self.clients[fd]
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client(fd)
            return
        if not chunk:
            self._drop_client(fd)
            return
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            self._send_reply(conn, {"ok": False, "error": "line too long"})
            self._drop_client(fd)
            return
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                reply = self.handle(req)
            except (ValueError, KeyError, TypeError) as e:
                reply = {"ok": False, "error": str(e)}
            self._send_reply(conn, reply)

    @staticmethod
    def _send_reply(conn: socket.socket, reply: dict[str, Any]) -> None:
        data = (json.dumps(reply) + "\n").encode()
        conn.setblocking(True)
        conn.settimeout(1.0)
        try:
            conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.setblocking(False)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "links": len(self.links)}
        if op == "get":
            return {"ok": True, "links": [lk.describe() for lk in self.links.values()]}
        if op == "stats":
            return {"ok": True, **self.stats()}
        if op == "stop":
            self.stopping = True
            return {"ok": True}
        if op == "set":
            ids = req.get("links", [req["link"]] if "link" in req else None)
            if not isinstance(ids, list) or not ids:
                raise ValueError("set needs 'link': ID or 'links': [IDs]")
            which = req.get("dir", "both")
            if which not in ("both", "ab", "ba"):
                raise ValueError("dir must be 'both', 'ab' or 'ba'")
            targets = []
            for i in ids:
                if int(i) not in self.links:
                    raise ValueError(f"no link with id {i}")
                lk = self.links[int(i)]
                targets += [lk.ab, lk.ba] if which == "both" else [getattr(lk, which)]
            for d in targets:  # validate all before changing any
                self._apply(d, req, dry=True)
            for d in targets:
                self._apply(d, req, dry=False)
            return {"ok": True, "changed": len(targets)}
        raise ValueError(f"unknown op {op!r} (ping, get, set, stats, stop)")

    @staticmethod
    def _apply(d: Direction, req: dict[str, Any], dry: bool) -> None:
        vals: dict[str, Any] = {}
        for key in ("delay_ms", "jitter_ms"):
            if key in req and req[key] is not None:
                v = float(req[key])
                if not 0 <= v <= 60_000:
                    raise ValueError(f"{key} must be within 0..60000")
                vals[key] = v / 1000.0
        if "loss" in req and req["loss"] is not None:
            v = float(req["loss"])
            if not 0 <= v <= 1:
                raise ValueError("loss must be within 0..1")
            vals["loss"] = v
        if "up" in req and req["up"] is not None:
            if not isinstance(req["up"], bool):
                raise ValueError("up must be true or false")
            vals["up"] = req["up"]
        if "rebind_ms" in req and req["rebind_ms"] is not None:
            v = float(req["rebind_ms"])
            if not 0 <= v <= 3_600_000:
                raise ValueError("rebind_ms must be within 0..3600000")
            vals["rebind"] = v / 1000.0
        if dry:
            return
        if "delay_ms" in vals:
            d.delay = vals["delay_ms"]
        if "jitter_ms" in vals:
            d.jitter = vals["jitter_ms"]
        if "loss" in vals:
            d.loss = vals["loss"]
        if "rebind" in vals:
            d.rebind = vals["rebind"]
        if "up" in vals:
            if d.up and not vals["up"]:
                d.epoch += 1  # packets on the wire are lost with the link
            d.up = vals["up"]

    def stats(self) -> dict[str, Any]:
        tot: dict[str, int] = {}
        for lk in self.links.values():
            for d in (lk.ab, lk.ba):
                for k, v in d.counters().items():
                    tot[k] = tot.get(k, 0) + v
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "queued": len(self.heap),
            "late_max_ms": round(self.late_max * 1000, 3),
            "late_avg_ms": round(self.late_sum / self.late_n * 1000, 4) if self.late_n else 0.0,
            "late_over_1ms": self.late_over[0], "late_over_5ms": self.late_over[1],
            "late_over_20ms": self.late_over[2],
            "totals": tot,
        }

    # -- loop -------------------------------------------------------------------------
    def run(self, deadline: float | None = None) -> None:
        epfd = self.ep.fileno()
        poll = self.ep.poll
        by_fd = self.by_fd
        ctl_fd = self.ctl.fileno() if self.ctl is not None else -1
        mono = time.monotonic
        while not self.stopping:
            now = mono()
            if deadline is not None and now >= deadline:
                break
            timeout = 0.5
            if self.heap:
                timeout = self.heap[0][0] - now
            if timeout > 0:
                if deadline is not None:
                    timeout = min(timeout, deadline - now)
                # select() on the epoll fd: microsecond timeout resolution.
                with contextlib.suppress(InterruptedError):
                    select.select([epfd], [], [], max(timeout, 0.0))
            events = poll(0)
            now = mono()
            for fd, _ in events:
                entry = by_fd.get(fd)
                if entry is not None:
                    lk, from_a = entry
                    main = lk.sock_a if from_a else lk.sock_b
                    if main is not None and main.fileno() == fd:
                        self._receive(lk, from_a, now)
                    else:  # one of the rebinding NAT ports
                        nat = lk.ba.nat if from_a else lk.ab.nat
                        sock = next((x for x in nat if x.fileno() == fd), None)
                        if sock is not None:
                            self._receive(lk, from_a, now, sock)
                elif fd == ctl_fd:
                    self._accept()
                elif fd in self.clients:
                    self._client(fd)
            if self.heap:
                self._flush(mono())


def control(path: str, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one request to a relay's control socket and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            if time.monotonic() > deadline:
                raise TimeoutError("relay control: no reply")
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("relay control: connection closed")
            buf += chunk
            if len(buf) > 16 * 1024 * 1024:
                raise ConnectionError("relay control: reply too long")
    reply = json.loads(buf.partition(b"\n")[0])
    if not reply.get("ok"):
        raise RuntimeError(f"relay: {reply.get('error', 'request failed')}")
    return reply  # type: ignore[no-any-return]


# -- benchmark ------------------------------------------------------------------------
def _blast(target: tuple[str, int], src_port: int, pps: int, seconds: float, size: int) -> int:
    """Send ``pps`` datagrams/s for ``seconds`` on an absolute schedule; returns count sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", src_port))
    payload = b"x" * size
    t0 = time.monotonic()
    sent = 0
    total = int(pps * seconds)
    while sent < total:
        due = int((time.monotonic() - t0) * pps) + 1
        burst = min(due, total) - sent
        for _ in range(burst):
            try:
                s.sendto(payload, target)
                sent += 1
            except OSError:
                pass
        if burst <= 0:
            time.sleep(0.0002)
    s.close()
    return sent


def benchmark(pps: int, seconds: float, delay_ms: float, size: int = 200) -> dict[str, Any]:
    """Forward ``pps`` datagrams/s through a relay subprocess on loopback; count arrivals."""
    import multiprocessing as mp
    import tempfile

    base = 41000 + random.randrange(2000) * 4
    a_wg, b_wg, port_a, port_b = base, base + 1, base + 2, base + 3
    cfg = {"links": [{"id": 0, "a": "a", "b": "b", "a_addr": ["127.0.0.1", a_wg],
                      "b_addr": ["127.0.0.1", b_wg], "port_a": port_a, "port_b": port_b,
                      "delay_ms": delay_ms}], "bind": "127.0.0.1"}
    tmp = tempfile.mkdtemp(prefix="wgcast-relay-bench-")
    cfg_path, ctl_path = os.path.join(tmp, "relay.json"), os.path.join(tmp, "relay.sock")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "wgcast.lab.relay", "run", "--config",
                             cfg_path, "--control", ctl_path])
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, 33, SOCK_BUF)
    sink.bind(("127.0.0.1", b_wg))
    sink.setblocking(False)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                control(ctl_path, {"op": "ping"}, timeout=0.5)
                break
            except (OSError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("relay did not start") from None
                time.sleep(0.02)
        ctx = mp.get_context("fork")
        blaster = ctx.Process(target=_blast, args=(("127.0.0.1", port_a), a_wg, pps, seconds, size))
        t0 = time.monotonic()
        blaster.start()
        got = 0
        end = t0 + seconds + delay_ms / 1000 + 1.0
        while time.monotonic() < end:
            r, _, _ = select.select([sink], [], [], 0.05)
            if r:
                for _ in range(1024):
                    try:
                        sink.recv(4096)
                        got += 1
                    except BlockingIOError:
                        break
        blaster.join(5)
        st = control(ctl_path, {"op": "stats"})
        sent = int(pps * seconds)
        return {"offered_pps": pps, "seconds": seconds, "delay_ms": delay_ms, "size": size,
                "sent": sent, "delivered": got, "delivered_pps": round(got / seconds),
                "loss_pct": round(100 * (1 - got / sent), 3) if sent else 0.0,
                "relay": st}
    finally:
        with contextlib.suppress(Exception):
            control(ctl_path, {"op": "stop"}, timeout=1)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3)
        sink.close()
        for p in (cfg_path, ctl_path):
            with contextlib.suppress(OSError):
                os.unlink(p)
        with contextlib.suppress(OSError):
            os.rmdir(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wgcast.lab.relay")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the relay")
    r.add_argument("--config", required=True)
    r.add_argument("--control", default=None, help="path of the Unix control socket")
    r.add_argument("--pidfile", default=None)
    r.add_argument("--sched", choices=["rt", "nice", "none"], default="rt",
                   help="rt: SCHED_FIFO priority 1 (falls back to nice); nice: nice -10")
    b = sub.add_parser("bench", help="measure forwarding throughput on loopback")
    b.add_argument("--pps", type=int, nargs="+", default=[5000, 10000, 20000, 30000, 40000])
    b.add_argument("--seconds", type=float, default=3.0)
    b.add_argument("--delay-ms", type=float, default=5.0)
    b.add_argument("--size", type=int, default=200)
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        for pps in args.pps:
            print(json.dumps(benchmark(pps, args.seconds, args.delay_ms, args.size)), flush=True)
        return 0
    with open(args.config) as f:
        config = json.load(f)
    set_timer_slack_ns(1)
    # The relay is the wire: keep its timing when the endpoints load the CPUs.
    set_priority(args.sched)
    relay = Relay(config, args.control)

    def _stop(signum: int, frame: object) -> None:
        relay.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        relay.open()
    except OSError as e:
        print(f"relay: cannot open sockets: {e}", file=sys.stderr)
        return 1
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        relay.run()
    finally:
        relay.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:  # pragma: no cover
        if e.errno == errno.EPIPE:
            sys.exit(1)
        raise
