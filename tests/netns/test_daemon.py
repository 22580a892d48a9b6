"""The daemon on a real WireGuard mesh: wireguard-go in namespaces, real kernel routes.

Every test waits on conditions with deadlines; the lab tears itself down on failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.netns

if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
    pytest.skip("needs root and wireguard-go", allow_module_level=True)

from wgcast.lab.core import Lab  # noqa: E402
from wgcast.lab.system import wait_for  # noqa: E402


def allowed_ips(lab: Lab, node: str) -> dict[str, list[str]]:
    return {peer: sorted(map(str, v["allowed_ips"]))
            for peer, v in lab.wg_show(node)["peers"].items()}


@pytest.fixture
def line3() -> Iterator[Lab]:
    """n1 - n2 - n3, instances on n1 and n3; n2 is nearer to n1."""
    from wgcast.topology import Link, Topology

    topo = Topology(["n1", "n2", "n3"], [Link("n1", "n2", 2.0, id=0), Link("n2", "n3", 8.0, id=1)],
                    spec="line:3")
    with Lab(topo, instances="n1,n3") as lab:
        yield lab


def test_unicast_two_hops_and_nearest_catchment(line3: Lab) -> None:
    lab = line3
    # n1 reaches n3's own address through n2: the source filter accepts it only because
    # every node's unicast address is routed by the mesh, symmetrically.
    wait_for(lambda: lab.query("n1", lab.unicast("n3"), timeout=0.3), 15, "n1 -> n3 unicast")
    back = lab.query("n3", lab.unicast("n1"))
    assert back is not None and back[0] == "n1"

    nearest = {"n1": "n1", "n2": "n1", "n3": "n3"}
    # n2 may first use whichever instance it heard of first; it must settle on the nearest.
    wait_for(lambda: lab.catchment(timeout=0.3) == nearest, 20, "the nearest catchment")
    # ... and stay there.
    assert lab.catchment(timeout=0.5) == nearest


def test_failover_when_serving_daemon_stops(line3: Lab) -> None:
    lab = line3
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n1", 15, "n2 -> n1")
    prober = lab.start_prober("n2", duration=2.5)
    time.sleep(0.8)
    lab.fail("n1", "daemon")  # SIGTERM: n1 drains its instance, then stops
    res = prober.wait()
    assert res["timeline"][-1]["node"] == "n3"
    # A planned stop drains first: n2 moves (holding the move until the replies through
    # n1 are in) while n1 still answers, so not one query is lost.
    assert res["lost"] == 0, res["outages"]
    # The stopped daemon left n1's data plane as it was (no flush on stop).
    assert lab.wg_show("n1")["peers"], "AllowedIPs were flushed on stop"


def test_kill9_and_restart_keeps_forwarding(line3: Lab) -> None:
    lab = line3
    wait_for(lambda: lab.query("n1", lab.unicast("n3"), timeout=0.3), 15, "n1 -> n3 unicast")
    before = allowed_ips(lab, "n2")
    lab.fail("n2", "daemon", sig=signal.SIGKILL)
    # The transit node keeps forwarding with the daemon dead: its AllowedIPs are intact.
    assert allowed_ips(lab, "n2") == before
    assert lab.query("n1", lab.unicast("n3"), timeout=0.5) is not None
    lab.restore("n2", "daemon")
    wait_for(lambda: lab.query("n1", lab.unicast("n3"), timeout=0.3), 15,
             "n1 -> n3 after the restart")
    # The restarted daemon picked up what was installed and changed nothing.
    assert allowed_ips(lab, "n2") == before


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, None when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == key:
            return float(value)
    return None


def _has_family(text: str, name: str) -> bool:
    """The exposition declares the metric family `name` (its # TYPE line)."""
    return any(line.startswith(f"# TYPE {name} ") for line in text.splitlines())


def test_metrics_endpoint(line3: Lab) -> None:
    """`metrics = "127.0.0.1:9586"`: Prometheus text from the daemon's live state."""
    from wgcast.lab.core import LabError

    lab = line3
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n1", 15, "n2 -> n1")
    first = lab.metrics("n2")
    assert _sample(first, "wgcast_neighbour_up", peer="n1") == 1.0
    assert _sample(first, "wgcast_neighbour_up", peer="n3") == 1.0
    rtt = _sample(first, "wgcast_neighbour_rtt_seconds", peer="n1")
    assert rtt is not None and 0.003 < rtt < 0.5, rtt  # a 2 ms link each way
    routes = _sample(first, "wgcast_routes")
    assert routes is not None and routes >= 4  # 3 unicast addresses and the anycast group
    # n2 does not serve the group: the family is exported (so the name is right) without
    # a sample for it.
    assert _has_family(first, "wgcast_group_served")
    assert _sample(first, "wgcast_group_served", group=lab.groups[0].prefix) is None  # n2
    served = lab.metrics("n1")
    assert _sample(served, "wgcast_group_served", group=lab.groups[0].prefix) == 1.0
    # Counters move with the traffic between two scrapes.
    before = _sample(first, "wgcast_babel_events_total", event="packets_in")
    assert before is not None

    def more() -> bool:
        now = _sample(lab.metrics("n2"), "wgcast_babel_events_total", event="packets_in")
        return now is not None and now > before

    wait_for(more, 5, "packets_in to grow")
    # Anything but GET /metrics is refused, and the daemon keeps serving.
    with pytest.raises(LabError, match="404"):
        lab.metrics("n2", "/nope")
    assert _sample(lab.metrics("n2"), "wgcast_neighbour_up", peer="n1") == 1.0


def test_moves_away_from_a_dead_peer_are_not_held(line3: Lab) -> None:
    """Holding a move waits for replies through the old peer; when that peer is down
    nothing comes back, so the move must be immediate (a hold would only add outage)."""
    lab = line3
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n1", 15, "n2 -> n1")
    before = lab.api("n2", {"cmd": "status"})["status"]["dataplane"]
    # The move-hold device exists: "not held" below is a decision, not a missing device.
    assert before["hold_device"] is not None and before["hold"] is not None, before
    lab.fail("n1", "node")  # the underlay link goes: n2 declares n1 dead
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n3", 10, "n2 -> n3")
    dp = lab.api("n2", {"cmd": "status"})["status"]["dataplane"]
    assert dp["hold_device"] == before["hold_device"], dp
    assert dp["held_moves"] == before["held_moves"], dp
    assert dp["hold"]["holds"] == before["hold"]["holds"], dp
    assert dp["holding"] == [], dp
