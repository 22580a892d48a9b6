"""Multi-endpoint peers in the lab: which parallel link a pair uses, and the measurements
of the endpoint acceptance (tests/netns/test_endpoints_netns.py, bench/endpoints.py).

In a ``dual:N`` lab, n1 and n2 are joined by two links (ids 0 and 1, the second one
slower); each node's config lists both relay ports as endpoints of the other, with
``probe_port = "endpoint"`` so probes cross the relay on the link of each candidate.
"""

from __future__ import annotations

import os
import time
from typing import Any

from wgcast.lab.core import Lab
from wgcast.lab.system import LabError
from wgcast.lab.system import wait_for as wait_for  # re-exported: mp.wait_for


def wg_endpoint(lab: Lab, node: str, peer: str) -> str | None:
    """The endpoint ``node``'s WireGuard uses for ``peer`` now."""
    ep = lab.wg_show(node)["peers"].get(peer, {}).get("endpoint")
    return str(ep) if ep else None


def link_of(lab: Lab, node: str, endpoint: str | None) -> int | None:
    """The id of the link whose relay port ``node`` reaches its peer through."""
    for lk in lab.links:
        if node in (lk.a, lk.b) and lk.endpoint_of(node) == endpoint:
            return lk.id
    return None


def active_link(lab: Lab, node: str, peer: str) -> int | None:
    return link_of(lab, node, wg_endpoint(lab, node, peer))


def peer_view(lab: Lab, node: str, peer: str) -> dict[str, Any]:
    """The daemon's `peers` entry for ``peer`` (candidates, scores, endpoint in use)."""
    from wgcast.client import request

    reply = request(lab.nodes[node].api_socket, {"cmd": "peers"})
    for p in reply.get("peers", []):
        if p["name"] == peer:
            return dict(p)
    raise LabError(f"{node} has no peer {peer}")


def daemon_status(lab: Lab, node: str) -> dict[str, Any]:
    """The daemon's `status` (its "endpoints" entry: probe and switch counters)."""
    from wgcast.client import request

    return dict(request(lab.nodes[node].api_socket, {"cmd": "status"})["status"])


def reaches(lab: Lab, a: str, b: str, timeout: float = 0.3) -> bool:
    return lab.query(a, lab.unicast(b), timeout=timeout) is not None


def first_dead_at_start(lab: Lab, dead_link: int = 0, timeout: float = 60.0,
                        step: float = 0.05) -> dict[str, Any]:
    """Cut ``dead_link``, start the daemons, time until n1 reaches n2 and back.

    The lab must be up without daemons (and best without warmed handshakes). Times are
    from the start command and from the moment both daemons are up (their API sockets
    exist): a loaded machine may take seconds to start a Python daemon.
    """
    lab.set_link("n1", link_id=dead_link, up=False)
    t0 = time.monotonic()
    lab.start_daemons(wait=False)
    ready = first = None
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if ready is None and all(os.path.exists(lab.nodes[n].api_socket)
                                 for n in ("n1", "n2")):
            ready = time.monotonic()
        if lab.query("n1", lab.unicast("n2"), timeout=step) is not None:
            first = time.monotonic()
            ready = ready or first  # the daemons route: they are up
            break
    both = None
    if first is not None and reaches(lab, "n2", "n1", 1.0):
        both = time.monotonic()

    def since(t: float | None, base: float | None) -> float | None:
        return None if t is None or base is None else _r(t - base)

    return {"dead_link": dead_link, "daemons_ready_s": since(ready, t0),
            "n1_to_n2_s": since(first, t0), "both_ways_s": since(both, t0),
            "n1_to_n2_after_ready_s": since(first, ready),
            "both_ways_after_ready_s": since(both, ready),
            "n1_link": active_link(lab, "n1", "n2"), "n2_link": active_link(lab, "n2", "n1")}


def relay_rx(lab: Lab, link: int, direction: str = "ab") -> int:
    """Datagrams the relay received on ``link`` in ``direction`` so far."""
    for lk in lab.relay_control({"op": "get"})["links"]:
        if lk["id"] == link:
            return int(lk[direction]["rx"])
    raise LabError(f"no link {link}")


def cut_active(lab: Lab, cut_at: float = 1.0, observe: float = 2.5,
               settle: float = 2.0) -> dict[str, Any]:
    """Cut the link n1 uses for n2 while a 1 query/ms prober runs n1 -> n2 (once its
    queries are seen on the link: a loaded machine may take seconds to start it), then
    restore the link. Returns the outage the prober saw and when each end moved."""
    links = [lk.id for lk in lab.links_between("n1", "n2")]

    def rx() -> int:
        return sum(relay_rx(lab, i) for i in links)

    run = lab.start_prober("n1", lab.unicast("n2"), duration=60 + cut_at + observe)
    rx0 = rx()
    wait_for(lambda: rx() - rx0 > 300, 30, "the prober's queries", interval=0.05)
    time.sleep(cut_at)
    before = active_link(lab, "n1", "n2")
    if before is None:
        raise LabError("n1 uses no link of the lab for n2")
    t_cut = time.monotonic()
    lab.set_link("n1", link_id=before, up=False)
    moved: dict[str, float | None] = {"n1": None, "n2": None}
    while time.monotonic() - t_cut < observe:
        for node, peer in (("n1", "n2"), ("n2", "n1")):
            if moved[node] is None and active_link(lab, node, peer) not in (before, None):
                moved[node] = time.monotonic() - t_cut
        time.sleep(0.005)
    run.stop()
    res = run.wait()
    after = {n: active_link(lab, n, p) for n, p in (("n1", "n2"), ("n2", "n1"))}
    lab.set_link("n1", link_id=before, up=True)
    t_up = time.monotonic()
    link = next(lk for lk in lab.links_between("n1", "n2") if lk.id == before)

    def verified() -> bool:
        """Both ends got a probe answer through the restored link since it came back:
        it is a failover target again (an unverified failed path is not)."""
        for node, peer in (("n1", "n2"), ("n2", "n1")):
            addr = link.endpoint_of(node)
            cands = [c for c in peer_view(lab, node, peer).get("candidates", [])
                     if c["addr"] == addr]
            age = cands[0].get("last_answer_s") if cands else None
            if age is None or age > time.monotonic() - t_up:
                return False
        return True

    wait_for(verified, max(settle, 15.0), f"link {before} verified again", interval=0.05)
    return {"cut_link": before, "outage_ms": res["outage_ms"],
            "lost": res.get("lost"), "sent": res.get("sent"),
            "n1_moved_s": _r(moved["n1"]), "n2_moved_s": _r(moved["n2"]),
            "links_after": after}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
