"""Failover prober: one UDP query per interval (1 ms by default) to ADDRESS:PORT.

``python -m wgcast.lab.prober --addr fd5a:...::53 --port 7 --duration 10 --out r.json``

Every query carries a run id, a sequence number and its send time; the lab's echo service
answers with its node name and the query. The schedule is absolute (query k leaves at
t0 + k * interval; a late loop catches up instead of drifting). At the end (duration +
linger, or SIGTERM/SIGINT) the prober writes JSON:

* ``sent``, ``answered``, ``lost`` (never answered within ``timeout_ms``), ``late``
  (answered after ``timeout_ms``, counted as lost), ``duplicates``, ``foreign``;
* ``nodes``: answers per answering node;
* ``timeline``: the answering node per query compressed into segments
  ``[{from_ms, to_ms, node}]`` (``node`` null for unanswered runs; times are the queries'
  scheduled send offsets, ``to_ms`` exclusive);
* ``outage_ms``: the longest run without answers, measured as the time between the
  sends of the last answered query before it and the first answered after it (the start
  or end of the run stands in when there is none); ``outages``: the largest runs;
* ``switches``: every change of answering node ``{at_ms, from, to, gap_ms, lost}``, with
  ``gap_ms`` the time between the last answer from the old node and the first from the
  new one (send times); ``switch_ms``: the largest of them;
* ``rtt_ms`` and ``rtt_ms_by_node``: min/mean/p50/p90/p99/max.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from array import array
from typing import Any

from wgcast.lab.echo import parse_reply
from wgcast.lab.relay import set_priority, set_timer_slack_ns

MAGIC = b"wgcp"
HEADER = struct.Struct("!4sIQQ")  # magic, run id, seq, send time (monotonic ns)
MAX_QUERIES = 20_000_000
MAX_CATCHUP = 1000  # queries sent back to back when the loop is late
MAX_SEGMENTS = 20_000
MAX_OUTAGES = 50


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = sorted(values)

    def pct(p: float) -> float:
        return float(round(v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))], 3))

    return {"min": round(v[0], 3), "mean": round(sum(v) / len(v), 3), "p50": pct(0.5),
            "p90": pct(0.9), "p99": pct(0.99), "max": round(v[-1], 3), "count": len(v)}


def analyse(
    sent: int,
    interval_ms: float,
    send_ns: array[int],  # actual send times, ns relative to t0
    node_of: array[int],  # index into names, -1 = unanswered
    rtt_us: array[int],
    names: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pure analysis of one run (also used by tests)."""
    answered_idx = [k for k in range(sent) if node_of[k] >= 0]

    def t_ms(k: int) -> float:
        return round(send_ns[k] / 1e6, 3)

    # timeline on the schedule
    timeline: list[dict[str, Any]] = []
    truncated = False
    k = 0
    while k < sent:
        j = k
        while j + 1 < sent and node_of[j + 1] == node_of[k]:
            j += 1
        if len(timeline) >= MAX_SEGMENTS:
            truncated = True
            break
        timeline.append({"from_ms": round(k * interval_ms, 3),
                         "to_ms": round((j + 1) * interval_ms, 3),
                         "node": names[node_of[k]] if node_of[k] >= 0 else None})
        k = j + 1

    # outages: runs of unanswered queries
    outages: list[dict[str, Any]] = []
    k = 0
    while k < sent:
        if node_of[k] >= 0:
            k += 1
            continue
        j = k
        while j + 1 < sent and node_of[j + 1] < 0:
            j += 1
        before = k - 1 if k > 0 else None
        after = j + 1 if j + 1 < sent else None
        start = t_ms(before) if before is not None else t_ms(k)
        end = t_ms(after) if after is not None else t_ms(j)
        outages.append({"from_ms": start, "to_ms": end, "ms": round(end - start, 3),
                        "lost": j - k + 1, "at_start": before is None,
                        "at_end": after is None})
        k = j + 1
    outages.sort(key=lambda o: -o["ms"])
    outage_ms = outages[0]["ms"] if outages else 0.0

    # switches between answering nodes
    switches: list[dict[str, Any]] = []
    for prev, cur in itertools.pairwise(answered_idx):
        if node_of[prev] != node_of[cur]:
            switches.append({"at_ms": t_ms(cur), "from": names[node_of[prev]],
                             "to": names[node_of[cur]],
                             "gap_ms": round((send_ns[cur] - send_ns[prev]) / 1e6, 3),
                             "lost": cur - prev - 1})
    switch_ms = max((s["gap_ms"] for s in switches), default=0.0)

    rtts = [rtt_us[k] / 1000 for k in answered_idx]
    by_node: dict[str, list[float]] = {}
    for k in answered_idx:
        by_node.setdefault(names[node_of[k]], []).append(rtt_us[k] / 1000)
    out: dict[str, Any] = {
        "sent": sent,
        "answered": len(answered_idx),
        "lost": sent - len(answered_idx),
        "interval_ms": interval_ms,
        "nodes": {n: len(v) for n, v in by_node.items()},
        "outage_ms": outage_ms,
        "outages": outages[:MAX_OUTAGES],
        "outage_count": len(outages),
        "switches": switches[:1000],
        "switch_ms": switch_ms,
        "timeline": timeline,
        "timeline_truncated": truncated,
        "rtt_ms": _percentiles(rtts),
        "rtt_ms_by_node": {n: _percentiles(v) for n, v in by_node.items()},
    }
    if extra:
        out.update(extra)
    return out


def probe(
    addr: str,
    port: int,
    duration: float,
    interval_ms: float = 1.0,
    timeout_ms: float = 1000.0,
    linger: float | None = None,
    source: str | None = None,
    payload_size: int = 0,
    should_stop: Any = None,
) -> dict[str, Any]:
    """Run one probe and return the analysed result (see the module doc)."""
    if interval_ms <= 0:
        raise ValueError("interval must be positive")
    total = int(duration * 1000 / interval_ms)
    if not 0 < total <= MAX_QUERIES:
        raise ValueError(f"duration/interval gives {total} queries (1..{MAX_QUERIES})")
    if linger is None:
        linger = min(timeout_ms / 1000, 2.0)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, 33, 4 * 1024 * 1024)
    s.bind((source or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), 0))
    s.setblocking(False)
    dst = (addr, port)
    run_id = int.from_bytes(os.urandom(4), "big")
    pad = b"\0" * max(0, payload_size - HEADER.size)
    interval_ns = int(interval_ms * 1e6)
    timeout_ns = int(timeout_ms * 1e6)
    send_ns = array("q", bytes(8 * total))
    node_of = array("h", [-1]) * total
    rtt_us = array("i", [-1]) * total
    names: list[str] = []
    name_idx: dict[str, int] = {}
    duplicates = late = foreign = send_errors = 0
    late_send_max = 0
    pack = HEADER.pack
    unpack = HEADER.unpack_from
    mono = time.monotonic_ns
    t0 = mono() + 2_000_000
    seq = 0
    end_ns = t0 + total * interval_ns + int(linger * 1e9)
    hard_end = end_ns + 5_000_000_000

    while True:
        now = mono()
        if now >= hard_end or (seq >= total and now >= end_ns):
            break
        if should_stop is not None and should_stop():
            break
        burst = 0
        while seq < total and t0 + seq * interval_ns <= now and burst < MAX_CATCHUP:
            ts = mono()
            try:
                s.sendto(pack(MAGIC, run_id, seq, ts) + pad, dst)
            except OSError:  # no route yet, buffer full: the query is lost
                send_errors += 1
            send_ns[seq] = ts - t0
            late_send_max = max(late_send_max, ts - (t0 + seq * interval_ns))
            seq += 1
            burst += 1
        wake = t0 + seq * interval_ns if seq < total else end_ns
        timeout = max(0.0, (wake - mono()) / 1e9)
        if timeout > 0:
            with contextlib.suppress(InterruptedError):
                select.select([s], [], [], timeout)
        for _ in range(4096):
            try:
                data = s.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            now = mono()
            try:
                name, body = parse_reply(data)
                magic, rid, qseq, ts = unpack(body)
            except (ValueError, struct.error):
                foreign += 1
                continue
            if magic != MAGIC or rid != run_id or qseq >= seq:
                foreign += 1
                continue
            if node_of[qseq] >= 0:
                duplicates += 1
                continue
            rtt = now - ts
            if rtt > timeout_ns:
                late += 1
                continue
            idx = name_idx.get(name)
            if idx is None:
                if len(names) >= 30000:
                    foreign += 1
                    continue
                idx = name_idx[name] = len(names)
                names.append(name)
            node_of[qseq] = idx
            rtt_us[qseq] = min(rtt // 1000, 2**31 - 1)
    s.close()
    sent = seq
    return analyse(sent, interval_ms, send_ns, node_of, rtt_us, names, extra={
        "target": addr, "port": port, "duration_s": duration, "timeout_ms": timeout_ms,
        "planned": total, "late": late, "duplicates": duplicates, "foreign": foreign,
        "send_errors": send_errors, "send_late_max_ms": round(late_send_max / 1e6, 3),
        "stopped_early": sent < total,
        # CLOCK_MONOTONIC is shared by every process: relates send offsets to events.
        "t0_monotonic_ns": t0,
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wgcast.lab.prober")
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--duration", type=float, required=True, help="seconds of probing")
    ap.add_argument("--interval-ms", type=float, default=1.0)
    ap.add_argument("--timeout-ms", type=float, default=1000.0,
                    help="answers later than this count as lost")
    ap.add_argument("--linger", type=float, default=None,
                    help="seconds to wait for answers after the last query")
    ap.add_argument("--source", default=None, help="source address to bind")
    ap.add_argument("--size", type=int, default=0, help="pad queries to this many bytes")
    ap.add_argument("--rt", action="store_true",
                    help="SCHED_FIFO priority 1 (precise pacing on a loaded machine)")
    ap.add_argument("--out", default="-", help="JSON output file ('-' = stdout)")
    args = ap.parse_args(argv)
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    set_timer_slack_ns(1)
    if args.rt:
        set_priority("rt")
    try:
        result = probe(args.addr, args.port, args.duration, args.interval_ms, args.timeout_ms,
                       args.linger, args.source, args.size, should_stop=lambda: stop)
    except (OSError, ValueError) as e:
        result = {"error": str(e)}
    text = json.dumps(result)
    if args.out == "-":
        print(text)
    else:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
