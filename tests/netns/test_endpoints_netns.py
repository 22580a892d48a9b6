"""Multi-endpoint peers on a real mesh: dual:2 (n1 and n2 joined by two relay links, the
second one slower), wireguard-go, the daemons, probes through the relay.

Each test waits on conditions with deadlines; the lab tears itself down on failure.
Figures are printed (pytest -s) and asserted loosely: other work may load the CPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.netns

if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
    pytest.skip("needs root and wireguard-go", allow_module_level=True)

from wgcast.lab import multipath as mp  # noqa: E402
from wgcast.lab.core import Lab  # noqa: E402


def _policy(**kw: Any) -> Any:
    def hook(node: str, cfg: dict[str, Any]) -> None:
        cfg.setdefault("endpoint_policy", {}).update(kw)
    return hook


@pytest.fixture
def dual() -> Iterator[Lab]:
    with Lab("dual:2", echo="all", delay="5ms", daemon_ready_timeout=30) as lab:
        mp.wait_for(lambda: mp.reaches(lab, "n1", "n2") and mp.reaches(lab, "n2", "n1"), 20,
                    "n1 <-> n2")
        yield lab


def test_relay_sends_probes_through_the_link_and_rebinds(tmp_path: Any) -> None:
    """The relay alone, in-process on loopback: a probe (magic "wgcP") takes the link's
    delay to the other end's responder, not its WireGuard port; rebinding changes the
    source port the receiver sees and answers through."""
    from wgcast.lab import relay as relay_mod
    from wgcast.probe import MAGIC

    socks = {}
    for name in ("a_wg", "b_wg", "a_probe", "b_probe"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        socks[name] = s
    port = {k: v.getsockname()[1] for k, v in socks.items()}
    free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    free.bind(("127.0.0.1", 0))
    base = free.getsockname()[1]
    free.close()
    cfg = {"links": [{"id": 0, "a": "a", "b": "b", "a_addr": ["127.0.0.1", port["a_wg"]],
                      "b_addr": ["127.0.0.1", port["b_wg"]],
                      "b_probe": ["127.0.0.1", port["b_probe"]],
                      "port_a": base, "port_b": base + 1, "delay_ms": 30.0}],
           "bind": "127.0.0.1"}
    try:
        relay = relay_mod.Relay(cfg, str(tmp_path / "relay.sock"))
        relay.open()
    except OSError:
        pytest.skip("relay ports taken")
    th = threading.Thread(target=relay.run, args=(time.monotonic() + 8,), daemon=True)
    th.start()
    try:
        probe = MAGIC + b"\0" * 48
        t0 = time.monotonic()
        socks["a_probe"].sendto(probe, ("127.0.0.1", base))
        data, src = socks["b_probe"].recvfrom(100)
        assert data == probe and src == ("127.0.0.1", base + 1)
        assert time.monotonic() - t0 >= 0.029
        socks["b_probe"].sendto(probe, src)  # the reply goes back to a's probe socket
        assert socks["a_probe"].recvfrom(100)[0] == probe
        socks["a_wg"].sendto(b"\1wg", ("127.0.0.1", base))  # WireGuard still to WireGuard
        assert socks["b_wg"].recvfrom(100)[0] == b"\1wg"
        relay.handle({"op": "set", "link": 0, "up": False})
        socks["a_probe"].sendto(probe, ("127.0.0.1", base))
        with pytest.raises(TimeoutError):
            socks["b_probe"].recvfrom(100)
        relay.handle({"op": "set", "link": 0, "up": True, "delay_ms": 0})
        relay.handle({"op": "set", "link": 0, "dir": "ba", "rebind_ms": 1})
        sources = set()
        for i in range(20):
            socks["b_wg"].sendto(b"\1x", ("127.0.0.1", base + 1))
            data, src = socks["a_wg"].recvfrom(100)
            sources.add(src)
            socks["a_wg"].sendto(b"\1y%d" % i, src)  # a answers the new source
            assert socks["b_wg"].recvfrom(100)[0] == b"\1y%d" % i
            time.sleep(0.002)
        assert len(sources) >= 10
    finally:
        relay.stopping = True
        th.join(5)
        relay.close()
        for s in socks.values():
            s.close()


def test_first_configured_endpoint_dead_at_start() -> None:
    """Link 0 (n1's and n2's first endpoint of each other) is cut before the daemons
    start and no handshake happened yet: traffic flows through link 1."""
    with Lab("dual:2", echo="all", delay="5ms", daemons=False, warm_handshakes=False,
             services=False) as lab:
        res = mp.first_dead_at_start(lab, dead_link=0, timeout=60)
        print("first endpoint dead at start:", json.dumps(res))
        assert res["n1_to_n2_s"] is not None and res["both_ways_s"] is not None
        # WireGuard alone would retry its handshake after 5 s, on the dead endpoint.
        assert res["n1_to_n2_after_ready_s"] < 5.0
        assert res["n1_link"] == 1 and res["n2_link"] == 1

        def on_link1() -> bool:
            view = mp.peer_view(lab, "n1", "n2")
            return bool(view["endpoint"] == lab.links[1].endpoint_a and
                        [c["addr"] for c in view["candidates"] if c["in_use"]] ==
                        [lab.links[1].endpoint_a])

        mp.wait_for(on_link1, 5, "n1's view: link 1 in use")
        # `wgcast peers`: the candidates, their scores, the one in use starred.
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-m", "wgcast.cli.main", "peers", "--socket",
                              lab.nodes["n1"].api_socket], capture_output=True, text=True,
                             timeout=30).stdout
        print(out)
        rows = [line.split() for line in out.splitlines()]
        starred = [r for r in rows if len(r) > 2 and r[1] == "*"]
        assert [r[2] for r in starred] == [lab.links[1].endpoint_a]
        assert any(r[1] == lab.links[0].endpoint_a for r in rows if len(r) > 1)


def test_cut_the_active_path_rotates_and_recovers(dual: Lab) -> None:
    lab = dual
    runs = []
    for _ in range(2):  # cut whichever link is in use (the other was restored before)
        res = mp.cut_active(lab, cut_at=1.0, observe=2.5, settle=1.5)
        print("cut active path:", json.dumps(res))
        runs.append(res)
        assert res["links_after"] == {"n1": 1 - res["cut_link"], "n2": 1 - res["cut_link"]}
        # default timers: hello 200 ms, failover after 2.25 silent hello intervals
        assert res["outage_ms"] < 1500, res
    assert {r["cut_link"] for r in runs} == {0, 1}
    # The neighbours stayed up: Babel never saw the switch as a neighbour loss.
    # One end detects the cut and rotates; the other may simply follow WireGuard's roam.
    views = [mp.peer_view(lab, "n1", "n2"), mp.peer_view(lab, "n2", "n1")]
    assert all(v["up"] for v in views)
    assert sum(v["endpoint_stats"]["failovers"] for v in views) >= 1


def test_lower_rtt_path_is_used_and_a_wobble_does_not_switch() -> None:
    """The first configured endpoint (link 0) is made the slower one: the nodes move to
    link 1 on probe RTTs alone, then a small change keeps them there."""
    hook = _policy(probe_interval="250ms", switch_hold="1s")
    with Lab("dual:2", echo="all", delay="5ms", config_hook=hook,
             daemon_ready_timeout=30) as lab:
        lab.set_link("n1", link_id=0, delay_ms=16.0)  # RTT ~32 ms vs ~20 ms on link 1
        mp.wait_for(lambda: mp.active_link(lab, "n1", "n2") == 1
                    and mp.active_link(lab, "n2", "n1") == 1, 25, "both ends on link 1")

        def ranked() -> bool:
            # Scores are smoothed probe RTTs: on a loaded machine a single snapshot can be
            # noisy, so wait (bounded) for the ranking the switch was based on.
            view = mp.peer_view(lab, "n1", "n2")
            scores = {c["addr"]: c["score"] for c in view["candidates"]}
            return bool(scores[lab.links[1].endpoint_a] < scores[lab.links[0].endpoint_a])

        mp.wait_for(ranked, 10, "link 1 ranked above link 0")
        print("n1's candidates for n2:",
              json.dumps(mp.peer_view(lab, "n1", "n2")["candidates"]))

        def switches() -> dict[str, int]:
            return {n: mp.peer_view(lab, n, p)["endpoint_stats"]["switches"]
                    for n, p in (("n1", "n2"), ("n2", "n1"))}

        # The far end may record its own move (following the roam) a moment later: take
        # the reference once the counts have held still for a second (bounded).
        stats = switches()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now_stats = switches()
            if now_stats == stats:
                break
            stats = now_stats
        # Link 0 gets a little faster than link 1 (RTT ~18 vs ~20 ms), then wobbles.
        t_end = time.monotonic() + 8
        i = 0
        while time.monotonic() < t_end:
            lab.set_link("n1", link_id=0, delay_ms=9.0 if i % 2 == 0 else 11.0)
            i += 1
            time.sleep(0.5)
            assert mp.active_link(lab, "n1", "n2") == 1
            assert mp.active_link(lab, "n2", "n1") == 1
        assert switches() == stats


def test_a_peer_seen_from_1000_source_addresses_stays_bounded() -> None:
    """A NAT in front of n2 rebinds every 10 ms: n1's WireGuard roams to each new source
    and its daemon learns each one; the list never exceeds configured + K and the learned
    ones expire."""
    k, ttl = 8, 4.0
    hook = _policy(learned_max=k, learned_ttl=f"{ttl:g}s", roam_poll="5ms")
    with Lab("dual:2", echo="all", delay="1ms", config_hook=hook,
             daemon_ready_timeout=30) as lab:
        mp.wait_for(lambda: mp.reaches(lab, "n1", "n2"), 20, "n1 -> n2")
        link = mp.active_link(lab, "n1", "n2")
        assert link is not None
        prober = lab.start_prober("n1", lab.unicast("n2"), duration=60, interval_ms=2.0)
        lab.relay_control({"op": "set", "links": [link], "dir": "ba", "rebind_ms": 10})
        worst = 0

        def learned() -> int:
            nonlocal worst
            v = mp.peer_view(lab, "n1", "n2")
            worst = max(worst, len(v["candidates"]))
            assert len(v["candidates"]) <= 2 + k
            return int(v["endpoint_stats"]["learned_added"])

        mp.wait_for(lambda: learned() >= 1000, 45, "1000 learned endpoints", interval=0.3)
        lab.relay_control({"op": "set", "links": [link], "dir": "ba", "rebind_ms": 0})
        prober.stop()
        res = prober.wait()
        v = mp.peer_view(lab, "n1", "n2")
        print("after 1000 roams:", json.dumps({"stats": v["endpoint_stats"], "worst": worst,
                                               "prober_lost": res["lost"],
                                               "prober_sent": res["sent"]}))
        assert v["endpoint_stats"]["max_candidates"] <= 2 + k
        assert v["endpoint_stats"]["learned_evicted"] >= 1000 - k - 1
        # Traffic kept flowing through the roams (a NAT rebinding is not an outage).
        assert res["lost"] < 0.05 * res["sent"], res
        # Old entries expire: only the in-use (the last source) is left after the TTL.
        mp.wait_for(lambda: len(mp.peer_view(lab, "n1", "n2")["candidates"]) <= 3,
                    ttl + 5, "learned endpoints to expire", interval=0.3)
