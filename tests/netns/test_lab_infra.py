"""The lab's own infrastructure, without daemons: namespaces, wireguard-go, relay, echo,
prober, faults and teardown. Routes and AllowedIPs are set by hand here (the daemon's job
otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go"),
    pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools"),
]

from wgcast.lab import Lab, LabError  # noqa: E402
from wgcast.lab.system import list_netns, pids_in_netns  # noqa: E402

DELAY_MS = 15.0


def route_neighbours(lab: Lab, extra: dict[tuple[str, str], list[str]] | None = None) -> None:
    """What the daemon would do for neighbours: AllowedIPs + kernel routes to their
    unicast addresses (plus ``extra[(node, peer)]`` prefixes routed node -> peer)."""
    extra = extra or {}
    for name, n in lab.nodes.items():
        for peer in lab.topology.neighbours(name):
            p = lab.nodes[peer]
            prefixes = [f"{p.control}/128", f"{p.unicast}/128", *extra.get((name, peer), [])]
            subprocess.run(["wg", "set", n.iface, "peer", p.public_key, "allowed-ips",
                            ",".join(prefixes)], check=True, timeout=10)
            for pfx in prefixes[1:]:
                lab.exec(name, ["ip", "-6", "route", "replace", pfx, "dev", n.iface])


def proc_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def lab_traces(labid: str) -> dict[str, object]:
    ns = [n for n in list_netns() if labid in n]
    socks = [s for s in os.listdir("/var/run/wireguard") if s.startswith(f"wg{labid}")]
    return {"namespaces": ns, "sockets": socks,
            "dir": os.path.exists(f"/run/wgcast-lab/{labid}")}


def test_lab_line3_no_daemons(capsys: pytest.CaptureFixture[str]) -> None:
    t_start = time.monotonic()
    figures: dict[str, object] = {}
    lab = Lab("line:3", instances=["n3"], delay=f"{DELAY_MS}ms", daemons=False, echo="all",
              seed=1)
    with lab:
        labid = lab.id
        figures["up_s"] = round(time.monotonic() - t_start, 2)
        # names carry the lab id, interface names fit in 15 chars
        assert all(labid in n.ns and labid in n.iface and len(n.iface) <= 15
                   for n in lab.nodes.values())
        # another process finds the lab through its state file
        other = Lab.attach(labid)
        assert set(other.nodes) == {"n1", "n2", "n3"}
        assert other.nodes["n2"].public_key == lab.nodes["n2"].public_key
        st = other.status()
        assert st["relay"]["alive"]
        assert all(n["ns_exists"] and n["processes"]["wireguard-go"]["alive"]
                   and n["processes"]["echo"]["alive"] for n in st["nodes"].values())
        # the config the daemon will read
        import tomllib

        with open(lab.nodes["n3"].config_path, "rb") as f:
            cfg = tomllib.load(f)
        assert cfg["interface"] == lab.nodes["n3"].iface
        assert cfg["anycast"] == [lab.groups[0].prefix]
        assert cfg["groups"] == [{"prefix": lab.groups[0].prefix, "static": True}]
        assert [p["name"] for p in cfg["peers"]] == ["n2"]
        assert cfg["peers"][0]["endpoints"] == [lab.links[1].endpoint_b]
        with open(lab.nodes["n1"].config_path, "rb") as f:
            assert "groups" not in tomllib.load(f)
        from wgcast.daemon.config import load  # the daemon's own loader accepts them

        for n in lab.nodes.values():
            load(n.config_path)

        # the daemon's job, by hand: neighbours' unicast, and n3's anycast address for n2
        route_neighbours(lab, {("n2", "n3"): [lab.groups[0].prefix]})

        # echo between neighbours through WireGuard (the first query waits for handshakes)
        u = lab.unicast
        assert lab.query("n1", u("n2"), timeout=3.0) is not None
        assert lab.query("n3", u("n2"), timeout=3.0) is not None
        r = lab.query("n2", u("n1"), timeout=3.0)
        assert r is not None and r[0] == "n1"
        # not neighbours: no route, no answer
        assert lab.query("n1", u("n3"), timeout=0.3) is None
        # anycast address on n3's lo, answered FROM the anycast address (pktinfo)
        assert lab.catchment(nodes=["n2"], timeout=2.0) == {"n2": "n3"}

        # relay delay: RTT over one link ~ 2 x delay (+ wireguard-go and scheduling)
        res = lab.run_prober("n1", u("n2"), duration=1.0, interval_ms=5.0)
        assert res["answered"] >= 0.95 * res["sent"], res
        assert res["nodes"] == {"n2": res["answered"]}
        rtt = res["rtt_ms"]
        figures["rtt_ms_configured_2x"] = 2 * DELAY_MS
        figures["rtt_ms_measured"] = rtt
        assert 2 * DELAY_MS - 1.0 <= rtt["p50"] <= 2 * DELAY_MS + 10.0, rtt

        # change the delay at run time
        lab.set_link("n1", "n2", delay_ms=2.0)
        res = lab.run_prober("n1", u("n2"), duration=0.5, interval_ms=2.0)
        figures["rtt_ms_after_set_delay_2ms"] = res["rtt_ms"]
        assert res["rtt_ms"]["p50"] < 2 * DELAY_MS - 5, res["rtt_ms"]

        # 1 ms probing against the echo service: pacing and the timeline
        run = lab.start_prober("n2", u("n1"), duration=3.0)
        time.sleep(1.0)
        lab.fail("n1", how="link", peer="n2")
        time.sleep(0.5)
        assert lab.query("n2", u("n1"), timeout=0.3) is None  # traffic stops
        lab.restore("n1", how="link", peer="n2")
        res = run.wait()
        figures["prober_1ms_link_cut_500ms"] = {
            k: res[k] for k in ("sent", "answered", "lost", "outage_ms", "send_late_max_ms")
        }
        figures["prober_timeline"] = res["timeline"]
        assert res["sent"] == 3000
        assert 400 <= res["outage_ms"] <= 1500, res["outages"]
        assert res["timeline"][0]["node"] == "n1" and res["timeline"][-1]["node"] == "n1"
        assert any(seg["node"] is None for seg in res["timeline"])
        assert lab.query("n2", u("n1"), timeout=2.0) is not None  # back

        # fail node: n3 is cut off from everything, then comes back
        lab.fail("n3", how="node")
        assert lab.query("n2", u("n3"), timeout=0.3) is None
        lab.restore("n3", how="node")
        assert lab.query("n2", u("n3"), timeout=3.0) is not None

        # faults through a second Lab object see the same state
        assert Lab.attach(labid).status()["failures"] == {"links": [], "nodes": [],
                                                          "daemons": []}
        with pytest.raises(LabError, match="no daemon running"):
            lab.fail("n1", how="daemon")
        figures["relay_stats"] = lab.relay_control({"op": "stats"})

        namespaces = [n.ns for n in lab.nodes.values()] + [lab.ns("relay")]
        pids = list(pids_in_netns(namespaces))
        assert len(pids) >= 3 + 3 + 1  # wireguard-go x3, echo x3, relay

    # down cleans everything: no namespace, no process, no socket, no state dir
    assert lab_traces(labid) == {"namespaces": [], "sockets": [], "dir": False}
    assert all(proc_gone(p) for p in pids)
    lab.down()  # idempotent
    figures["total_s"] = round(time.monotonic() - t_start, 2)
    with capsys.disabled():
        print("\nlab infra figures:", json.dumps(
            {k: v for k, v in figures.items() if k != "prober_timeline"}))
        print("prober timeline:", json.dumps(figures["prober_timeline"]))


def test_cli_up_status_down_cross_process() -> None:
    """`wgcast lab` commands in separate processes find the lab through its state."""
    cli = [sys.executable, "-c", "from wgcast.cli.lab import lab; lab()"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

    up = run("up", "-t", "dual:2", "-i", "n2", "--no-daemons", "--delay", "1ms", "--json")
    assert up.returncode == 0, up.stderr
    labid = json.loads(up.stdout)["id"]
    try:
        st = run("status", "--lab", labid, "--json")
        assert st.returncode == 0, st.stderr
        data = json.loads(st.stdout)
        assert [lk["id"] for lk in data["links"]] == [0, 1]  # two parallel paths
        ex = run("exec", "--lab", labid, "n1", "--", "ip", "-o", "link", "show", "ul")
        assert ex.returncode == 0 and "ul@" in ex.stdout, ex.stderr
        f = run("fail", "--lab", labid, "n1", "--how", "link", "--peer", "n2")
        assert f.returncode == 0, f.stderr
        assert Lab.attach(labid).status()["failures"]["links"] == [0, 1]
        bad = run("fail", "--lab", labid, "n9", "--how", "node")
        assert bad.returncode != 0 and "unknown node" in bad.stderr
    finally:
        down = run("down", "--lab", labid)
    assert down.returncode == 0, down.stderr
    assert lab_traces(labid) == {"namespaces": [], "sockets": [], "dir": False}
    again = run("down", "--lab", labid)
    assert again.returncode == 0


def test_up_failure_cleans_up() -> None:
    """A bring-up that fails half-way (here: the daemon command exits) leaves nothing."""
    lab = Lab("line:2", daemons=True, daemon_cmd=["false"], daemon_ready_timeout=5.0)
    with pytest.raises(LabError, match="daemon of n1 exited"):
        lab.up()
    assert lab_traces(lab.id) == {"namespaces": [], "sockets": [], "dir": False}


FAKE_DAEMON = """
import os, signal, socket, sys, time, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
s = socket.socket(socket.AF_UNIX)
s.bind(cfg["api_socket"])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
deadline = time.monotonic() + 120
while not stop and time.monotonic() < deadline:
    time.sleep(0.05)
os.unlink(cfg["api_socket"])
"""


def test_daemon_hooks_with_a_fake_daemon() -> None:
    """start (waits for the API socket), fail daemon (SIGTERM / SIGKILL), restore."""
    lab = Lab("line:2", instances=["n2"], echo="none",
              daemon_cmd=[sys.executable, "-c", FAKE_DAEMON, "{config}"])
    with lab:
        assert all(os.path.exists(n.api_socket) for n in lab.nodes.values())
        first = lab.process("n1", "daemon")
        assert first is not None
        lab.fail("n1", how="daemon")
        assert proc_gone(first["pid"])
        assert not os.path.exists(lab.nodes["n1"].api_socket)  # clean SIGTERM stop
        assert lab.status()["failures"]["daemons"] == ["n1"]
        assert lab.status()["nodes"]["n1"]["processes"]["daemon"]["alive"] is False
        lab.restore("n1", how="daemon")
        again = lab.process("n1", "daemon")
        assert again is not None and again["pid"] != first["pid"]
        assert os.path.exists(lab.nodes["n1"].api_socket)
        assert lab.status()["failures"]["daemons"] == []
        lab.fail("n2", how="daemon", sig=signal.SIGKILL)  # a crash
        assert lab.process("n2", "daemon") is None
        assert os.path.exists(lab.nodes["n2"].api_socket)  # a crash leaves its socket
        labid = lab.id
    assert lab_traces(labid) == {"namespaces": [], "sockets": [], "dir": False}


INTERRUPTED = """
import sys, time
from wgcast.lab import Lab
def hook(node, cfg):
    if node == "n2":
        print("IN-UP", Lab.list_labs()[-1]["id"], flush=True)
        time.sleep(60)
with Lab("line:3", daemons=False, config_hook=hook if sys.argv[1] == "up" else None) as lab:
    print("UP", lab.id, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize(("when", "sig"), [("up", signal.SIGINT), ("body", signal.SIGINT),
                                           ("body", signal.SIGTERM)])
def test_interrupt_cleans_up(when: str, sig: int) -> None:
    """Ctrl-C / SIGTERM during bring-up or while the lab is used: nothing is left."""
    p = subprocess.Popen([sys.executable, "-c", INTERRUPTED, when], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stderr is not None
        line = p.stdout.readline().split()  # bounded: the child sleeps at most 60 s
        assert line and line[0] == ("IN-UP" if when == "up" else "UP"), p.stderr.read()
        labid = line[1]
        assert lab_traces(labid)["namespaces"]
        p.send_signal(sig)
        p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert p.returncode != 0
    assert lab_traces(labid) == {"namespaces": [], "sockets": [], "dir": False}


def test_relay_order_jitter_loss_cut(tmp_path: Path) -> None:
    """The relay alone, on loopback: FIFO with jitter 0 (also when the delay drops),
    reordering bounded by the jitter, loss rate, cut and restore, control errors."""
    import random
    import socket
    import struct

    from wgcast.lab import relay as relay_mod

    base = 43000 + random.randrange(1000) * 4
    a_wg, b_wg, port_a, port_b = base, base + 1, base + 2, base + 3
    cfg = {"links": [{"id": 0, "a": "a", "b": "b", "a_addr": ["127.0.0.1", a_wg],
                      "b_addr": ["127.0.0.1", b_wg], "port_a": port_a, "port_b": port_b,
                      "delay_ms": 20.0}], "bind": "127.0.0.1", "seed": 1}
    cfg_path, ctl = str(tmp_path / "relay.json"), str(tmp_path / "relay.sock")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    proc = subprocess.Popen([sys.executable, "-m", "wgcast.lab.relay", "run", "--config",
                             cfg_path, "--control", ctl])
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", a_wg))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", b_wg))
    b.settimeout(0.5)
    pkt = struct.Struct("!Id")

    def burst(n: int, gap: float,
              between: Callable[[], object] | None = None) -> list[tuple[int, float, float]]:
        """Send n packets a -> b, ``gap`` s apart; returns (seq, sent, received)."""
        import threading

        got: list[tuple[int, float, float]] = []
        srcs: set[object] = set()

        def receive() -> None:
            while True:
                try:
                    data, src = b.recvfrom(100)
                except TimeoutError:
                    return
                srcs.add(src)
                seq, sent = pkt.unpack(data)
                got.append((seq, sent, time.monotonic()))

        rx = threading.Thread(target=receive)
        rx.start()
        t0 = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, t0 + i * gap - time.monotonic()))  # lets the receiver run
            if between is not None and i == n // 2:
                between()
            a.sendto(pkt.pack(i, time.monotonic()), ("127.0.0.1", port_a))
        rx.join(30)
        assert srcs <= {("127.0.0.1", port_b)}  # from the socket b uses to reach a
        return got

    try:
        wait = time.monotonic() + 10
        while True:
            try:
                relay_mod.control(ctl, {"op": "ping"}, timeout=0.5)
                break
            except (OSError, ConnectionError, TimeoutError):
                assert time.monotonic() < wait and proc.poll() is None
                time.sleep(0.02)
        # delay, FIFO, and FIFO kept while the delay drops from 20 ms to 1 ms
        got = burst(200, 0.0005, lambda: relay_mod.control(
            ctl, {"op": "set", "link": 0, "delay_ms": 1}))
        assert [g[0] for g in got] == list(range(200))
        first = sorted(g[2] - g[1] for g in got[:50])[25]  # median, before the change
        assert 0.019 <= first <= 0.025, first
        last = sorted(g[2] - g[1] for g in got[-20:])[10]
        assert last <= 0.005, last
        # jitter 10 ms: reordered, but never by more than the jitter
        relay_mod.control(ctl, {"op": "set", "link": 0, "delay_ms": 10, "jitter_ms": 10})
        got = burst(300, 0.0005)
        assert len(got) == 300
        seqs = [g[0] for g in got]
        assert seqs != sorted(seqs)
        sent = {g[0]: g[1] for g in got}
        worst = 0.0
        for i, (s1, _, _) in enumerate(got):
            for s0, _, _ in got[:i]:
                if s0 > s1:  # s0 overtook s1
                    worst = max(worst, sent[s0] - sent[s1])
        assert worst <= 0.010 + 0.001, worst
        # loss 30 %
        relay_mod.control(ctl, {"op": "set", "link": 0, "delay_ms": 0, "jitter_ms": 0,
                                "loss": 0.3})
        got = burst(1000, 0.0002)
        assert 600 <= len(got) <= 800, len(got)
        # cut drops both directions, restore brings it back
        relay_mod.control(ctl, {"op": "set", "link": 0, "loss": 0, "up": False})
        assert burst(20, 0.001) == []
        b.sendto(b"x", ("127.0.0.1", port_b))
        a.settimeout(0.3)
        with pytest.raises(TimeoutError):
            a.recvfrom(100)
        relay_mod.control(ctl, {"op": "set", "link": 0, "up": True})
        assert len(burst(20, 0.001)) == 20
        b.sendto(b"y", ("127.0.0.1", port_b))
        assert a.recvfrom(100) == (b"y", ("127.0.0.1", port_a))
        # bad requests get an error reply, the relay keeps running
        for bad in ({"op": "set", "link": 9, "up": False}, {"op": "nope"},
                    {"op": "set", "link": 0, "loss": 2}, {"op": "set", "link": 0, "up": 1}):
            with pytest.raises(RuntimeError):
                relay_mod.control(ctl, bad)
        st = relay_mod.control(ctl, {"op": "get"})["links"][0]
        assert st["ab"]["up"] and st["ab"]["loss"] == 0 and st["ab"]["drop_down"] >= 20
        assert st["ba"]["tx"] == 1 and st["ba"]["drop_down"] == 1
    finally:
        with __import__("contextlib").suppress(Exception):
            relay_mod.control(ctl, {"op": "stop"}, timeout=1)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        a.close()
        b.close()
    assert proc.returncode == 0
