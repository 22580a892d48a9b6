"""Kernel link emulation for the lab: nftables NAT + `tc netem` in the relay namespace.

The same addressing as the userspace relay (lab/relay.py), so nothing else in the lab
changes: node a's WireGuard endpoint for peer b over link L is ``relay address on a's
veth : port_a``. Here the kernel of the relay namespace forwards instead of a process:

* mangle/prerouting marks every datagram by the relay address and port it was sent to:
  mark ``2L+2`` for direction a->b of link L, ``2L+3`` for b->a (also for the replies of
  a flow, which conntrack would otherwise not tell apart);
* nat/prerouting sends a->b datagrams to b's WireGuard port, or, when the payload starts
  with wgcast's probe magic ``wgcP``, to b's probe responder (port 51821), like the relay;
* nat/postrouting rewrites the source to ``relay address on b's veth : port_b``, the
  endpoint b has for a, so WireGuard roaming keeps the endpoints stable;
* filter/forward drops the marks in the set ``cut`` (a cut link, per direction);
* on each relay veth an HTB root (one class per link direction towards that node,
  classified by the mark with the ``fw`` filter) with a ``netem`` qdisc per class:
  delay, jitter, loss of that direction. Unmarked traffic goes to class 1:1 (no delay).

Jitter: the relay draws a delay uniform in [delay - J/2, delay + J/2]; netem's
``delay D J/2`` draws from the same range (and may reorder, like the relay within J).
NAT rebinding (the relay's ``rebind_ms``) has no equivalent here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from wgcast.lab.system import LabError, kernel_module, run

TABLE = "wgl"
PROBE_MAGIC_HEX = "0x77676350"  # b"wgcP", wgcast.probe.MAGIC
DEFAULT_PROBE_PORT = 51821
MAX_LINKS = 16000  # marks and tc minor numbers stay below 0x8000


class _Node(Protocol):
    name: str
    underlay_ip: str
    relay_ip: str
    relay_veth: str


class _Link(Protocol):
    id: int
    a: str
    b: str
    delay_ms: float
    jitter_ms: float
    loss: float
    port_a: int
    port_b: int


def available() -> bool:
    """netem, HTB, the fw classifier and nftables NAT can be used on this kernel."""
    if shutil.which("tc") is None or shutil.which("nft") is None:
        return False
    return all(kernel_module(m) for m in ("sch_netem", "sch_htb", "cls_fw", "nft_nat"))


def mark(link_id: int, direction: str) -> int:
    """The mark of one direction of a link: "ab" (a to b) or "ba"."""
    return 2 * link_id + (2 if direction == "ab" else 3)


def _netem_args(delay_ms: float, jitter_ms: float, loss: float) -> str:
    args = f"netem limit 100000 delay {delay_ms:.3f}ms"
    if jitter_ms > 0:
        args += f" {jitter_ms / 2:.3f}ms"
    if loss > 0:
        args += f" loss {loss * 100:.4f}%"
    return args


def ruleset(nodes: Mapping[str, _Node], links: Sequence[_Link],
            listen_port: Mapping[tuple[str, int], int],
            probe_port: int = DEFAULT_PROBE_PORT) -> str:
    """The nftables ruleset of the relay namespace (`listen_port[(node, link id)]`: where
    that node's WireGuard listens for the link)."""
    marks, dnat, snat = [], [], []
    for lk in links:
        for d, src, dst, sport, dport in (("ab", lk.a, lk.b, lk.port_a, lk.port_b),
                                          ("ba", lk.b, lk.a, lk.port_b, lk.port_a)):
            m = mark(lk.id, d)
            s, t = nodes[src], nodes[dst]
            marks.append(f"    ip daddr {s.relay_ip} udp dport {sport} meta mark set {m}")
            dnat.append(f"    meta mark {m} meta l4proto udp @th,64,32 {PROBE_MAGIC_HEX} "
                        f"dnat to {t.underlay_ip}:{probe_port}")
            dnat.append(f"    meta mark {m} meta l4proto udp "
                        f"dnat to {t.underlay_ip}:{listen_port[(dst, lk.id)]}")
            snat.append(f"    meta mark {m} meta l4proto udp snat to {t.relay_ip}:{dport}")
    return "\n".join([
        f"table ip {TABLE} {{",
        "  set cut { type mark; }",
        "  chain pre_mark {", "    type filter hook prerouting priority mangle; policy accept;",
        *marks, "  }",
        "  chain pre_nat {", "    type nat hook prerouting priority dstnat; policy accept;",
        *dnat, "  }",
        "  chain fwd_cut {", "    type filter hook forward priority filter; policy accept;",
        "    meta mark @cut drop", "  }",
        "  chain post_nat {", "    type nat hook postrouting priority srcnat; policy accept;",
        *snat, "  }",
        "}", ""])


def tc_batch(nodes: Mapping[str, _Node], links: Sequence[_Link]) -> list[str]:
    """`tc -batch` lines: an HTB root per relay veth and a netem class per direction."""
    lines = []
    for n in nodes.values():
        lines += [f"qdisc add dev {n.relay_veth} root handle 1: htb default 1",
                  f"class add dev {n.relay_veth} parent 1: classid 1:1 htb rate 10gbit"]
    for lk in links:
        for d, dst in (("ab", lk.b), ("ba", lk.a)):
            m = mark(lk.id, d)
            dev = nodes[dst].relay_veth
            lines += [
                f"class add dev {dev} parent 1: classid 1:{m:x} htb rate 10gbit",
                f"qdisc add dev {dev} parent 1:{m:x} "
                + _netem_args(lk.delay_ms, lk.jitter_ms, lk.loss),
                f"filter add dev {dev} parent 1: protocol ip prio 1 handle {m} fw "
                f"classid 1:{m:x}",
            ]
    return lines


def _ns_run(netns: str, cmd: list[str], what: str, stdin_text: str | None = None) -> None:
    if stdin_text is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(stdin_text)
            path = f.name
        try:
            cp = run(["ip", "netns", "exec", netns, *cmd, path], check=False, timeout=120)
        finally:
            os.unlink(path)
    else:
        cp = run(["ip", "netns", "exec", netns, *cmd], check=False, timeout=60)
    if cp.returncode != 0:
        raise LabError(f"netem links: {what} failed: {(cp.stderr or cp.stdout).strip()[:400]}")


def setup(netns: str, nodes: Mapping[str, _Node], links: Sequence[_Link],
          listen_port: Mapping[tuple[str, int], int]) -> None:
    """Make the relay namespace forward every link in the kernel, with netem delays."""
    if len(links) > MAX_LINKS:
        raise LabError(f"netem links: at most {MAX_LINKS} links")
    _ns_run(netns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], "ip_forward")
    _ns_run(netns, ["nft", "-f"], "nft ruleset", ruleset(nodes, links, listen_port))
    _ns_run(netns, ["tc", "-batch"], "tc qdiscs", "\n".join(tc_batch(nodes, links)) + "\n")


def set_direction(netns: str, nodes: Mapping[str, _Node], lk: _Link, direction: str, *,
                  delay_ms: float, jitter_ms: float, loss: float) -> None:
    """New delay, jitter and loss for one direction ("ab"/"ba") of a link."""
    m = mark(lk.id, direction)
    dev = nodes[lk.b if direction == "ab" else lk.a].relay_veth
    _ns_run(netns, ["tc", "qdisc", "replace", "dev", dev, "parent", f"1:{m:x}",
                    *_netem_args(delay_ms, jitter_ms, loss).split()], f"tc on {dev}")


def cut(netns: str, marks: Iterable[int], up: bool) -> None:
    """Drop (up=False) or pass again (up=True) the given directions' marks."""
    elems = ", ".join(str(m) for m in sorted(set(marks)))
    if not elems:
        return
    op = "delete" if up else "add"
    cp = run(["ip", "netns", "exec", netns, "nft", op, "element", "ip", TABLE, "cut",
              f"{{ {elems} }}"], check=False, timeout=60)
    # Deleting an element that is not there (a link restored twice) is not an error here.
    if cp.returncode != 0 and not (up and "No such file" in cp.stderr):
        raise LabError(f"netem links: nft {op} cut {{{elems}}} failed: {cp.stderr.strip()}")


def stats(netns: str) -> dict[str, Any]:
    """Per relay veth, the `tc -s qdisc` text (packets sent/dropped per netem qdisc)."""
    cp = subprocess.run(["ip", "netns", "exec", netns, "tc", "-s", "qdisc"],
                        capture_output=True, text=True, timeout=30)
    return {"tc": cp.stdout[-4000:]}
