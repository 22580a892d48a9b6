"""Service membership on a real mesh: n1 - n2 - n3 (2 ms, 8 ms), instances on n1 and n3.

Every instance is a real service held by ``wgcast join`` (the echo), in a non-static
group with an exec health check (fails while a flag file exists). One lab for the module;
each test puts back what it changed; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.netns

if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
    pytest.skip("needs root and wireguard-go", allow_module_level=True)

from wgcast.lab.core import Lab  # noqa: E402
from wgcast.lab.system import wait_for  # noqa: E402

NOBODY = 65534  # nobody / nogroup (Debian)
SYSTEM_PY = "/usr/bin/python3"  # readable by nobody (the venv's interpreter is not)


def _hook(node: str, cfg: dict[str, Any]) -> None:
    # The socket belongs to nogroup (mode 0660): nobody may connect, others may not.
    cfg["api_socket_group"] = NOBODY
    cfg["api_socket_mode"] = "0660"
    for k, g in enumerate(cfg.get("groups", [])):
        if k == 0:
            g["allow_uids"] = [NOBODY]  # group 0 admits nobody; group 1 only root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    from wgcast.topology import Link, Topology

    topo = Topology(["n1", "n2", "n3"],
                    [Link("n1", "n2", 2.0, id=0), Link("n2", "n3", 8.0, id=1)], spec="line:3")
    with Lab(topo, groups=[["n1", "n3"], ["n1"]], config_hook=_hook,
             health_interval="100ms", health_fall=2) as the_lab:
        os.chmod(the_lab.dir, 0o711)  # others may reach the sockets (keys stay 0600)
        wait_for(lambda: the_lab.catchment(timeout=0.3) == {"n1": "n1", "n2": "n1",
                                                             "n3": "n3"},
                 20, "the nearest catchment")
        yield the_lab


@pytest.fixture
def mesh(lab: Lab) -> Iterator[Lab]:
    """The lab as every test expects it, put back after the test."""
    yield lab
    with_flag = os.path.exists(lab.unhealthy_flag("n1"))
    if with_flag:
        os.unlink(lab.unhealthy_flag("n1"))
    if lab.process("n1", "daemon") is None:
        lab.restore("n1", "daemon")
    if lab.process("n1", "service") is None:
        lab.start_services(["n1"])
    for p in lab.node("n1").serves:
        if lab.groups_of("n1")[p]["draining"]:
            lab.api("n1", {"cmd": "undrain", "prefix": p})
    lab.wait_served(["n1"])
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n1", 15, "n2 -> n1")


def on_lo(lab: Lab, node: str, addr: str) -> bool:
    out = lab.exec(node, ["ip", "-6", "-o", "addr", "show", "dev", "lo"]).stdout
    return f" {addr}/128 " in out


def test_sigkill_of_the_member_withdraws_at_once(mesh: Lab) -> None:
    lab = mesh
    addr = lab.anycast(0)
    assert on_lo(lab, "n1", addr)
    st = lab.groups_of("n1")[lab.groups[0].prefix]
    assert st["members"] == 1 and st["state"] == "serving" and not st["static"]
    prober = lab.start_prober("n2", duration=2.0)
    time.sleep(0.8)
    lab.fail("n1", "service")  # SIGKILL: wgcast join and the echo it runs
    res = prober.wait()
    assert res["timeline"][-1]["node"] == "n3"
    assert res["outage_ms"] < 300, res["outages"]
    wait_for(lambda: not on_lo(lab, "n1", addr), 3, "the address to leave lo")
    st = lab.groups_of("n1")[lab.groups[0].prefix]
    assert st["members"] == 0 and st["state"] == "idle"
    assert st["last_withdrawal"]["reason"] == "no members"
    assert st["last_withdrawal"]["acked"] is True
    lab.restore("n1", "service")
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n1", 10, "n2 -> n1")


def test_drain_moves_traffic_before_the_address_goes(mesh: Lab) -> None:
    lab = mesh
    prober = lab.start_prober("n2", duration=2.0)
    time.sleep(0.8)
    t0 = time.monotonic()
    replies = lab.drain("n1", settle=0.2)
    took = time.monotonic() - t0
    res = prober.wait()
    by = {r["prefix"]: r for r in replies}
    r0, r1 = by[lab.groups[0].prefix], by[lab.groups[1].prefix]
    assert r0["drained"] and r0["moved"] and r0["acked"], r0
    # Group 1 has no other instance: nobody can move; the drain is bounded all the same.
    assert r1["drained"] and r1["moved"] is False and r1["acked"], r1
    assert took < 5.0
    assert res["timeline"][-1]["node"] == "n3"
    # The address answered until the mesh had moved, and n2 held its move (queries
    # waited in the hold device) until the replies on their way back through n1 were in:
    # WireGuard would drop those once the prefix names n3. Nothing is lost.
    assert res["lost"] == 0, res["outages"]
    dp = lab.api("n2", {"cmd": "status"})["status"]["dataplane"]
    assert dp["held_moves"] >= 1 and dp["held_packets"] >= 1, dp
    assert dp["hold"]["dropped_full"] == 0, dp
    assert [s["node"] for s in res["timeline"] if s["node"]] == ["n1", "n3"]
    assert not on_lo(lab, "n1", lab.anycast(0))
    st = lab.groups_of("n1")[lab.groups[0].prefix]
    assert st["state"] == "drained" and st["members"] == 1
    # Stopping the drained service now loses nothing; a new one joins and is served.
    lab.kill_service("n1", signal.SIGTERM)
    lab.start_services(["n1"])


def test_health_failure_withdraws_within_interval_times_fall(mesh: Lab) -> None:
    lab = mesh
    prefix = lab.groups[0].prefix
    t_flag = time.monotonic()
    lab.fail("n1", "health")
    lab.wait_served(["n1"], timeout=5, served=False)
    lw = lab.groups_of("n1")[prefix]["last_withdrawal"]
    assert lw["reason"] == "unhealthy"
    detect = lw["started_monotonic"] - t_flag
    # fall = 2 failed probes at a 100 ms interval (the first may be the probe already
    # running when the flag appeared; a late probe's successor is not delayed), plus the
    # exec time of each probe.
    assert 0.02 <= detect < 0.6, detect
    wait_for(lambda: lab.catchment(nodes=["n2"], timeout=0.3)["n2"] == "n3", 5, "n2 -> n3")
    st = lab.groups_of("n1")[prefix]
    assert st["state"] == "unhealthy" and st["members"] == 1
    assert st["checks"][0]["passing"] is False
    lab.restore("n1", "health")  # waits until served again (rise = 2)


def _as_nobody(script: str, *args: str, uid: int = NOBODY,
               timeout: float = 30) -> dict[str, Any]:
    r = subprocess.run([SYSTEM_PY, "-I", "-c", script, *args], capture_output=True,
                       text=True, timeout=timeout, user=uid, group=uid, extra_groups=[])
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


_CLIENT = r'''
import json, socket, sys
path, reqs = sys.argv[1], json.loads(sys.argv[2])
out = []
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
except OSError as e:
    print(json.dumps({"connect_error": e.errno})); sys.exit(0)
f = s.makefile("rb")
for r in reqs:
    s.sendall((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n")
    out.append(json.loads(f.readline()))
print(json.dumps({"replies": out}))
'''

_FLOOD = r'''
import json, select, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
socks, refused = {}, 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socks[s.fileno()] = s
poll = select.poll()
for fd in socks:
    poll.register(fd, select.POLLIN)
pending, deadline = set(socks), time.monotonic() + 3
while pending and time.monotonic() < deadline:
    for fd, _ in poll.poll(100):
        if fd in pending:
            pending.discard(fd)
            poll.unregister(fd)
            line = socks[fd].recv(4096)
            if line and json.loads(line)["error"] == "too_many_connections":
                refused += 1
    if len(pending) <= 64 and refused >= n - 64:
        break
print(json.dumps({"opened": len(socks), "refused": refused}))
'''


def test_unprivileged_user_and_group_policy(mesh: Lab) -> None:
    lab = mesh
    path = lab.node("n1").api_socket
    g0, g1 = lab.groups[0].prefix, lab.groups[1].prefix
    r = _as_nobody(_CLIENT, path, json.dumps([
        {"cmd": "join", "prefix": g1},
        {"cmd": "join", "prefix": g0},
        {"cmd": "drain", "prefix": g1},
        {"cmd": "status"},
        {"cmd": "leave", "prefix": g0},
    ]))["replies"]
    assert r[0]["ok"] is False and r[0]["error"] == "not_allowed"
    assert str(NOBODY) in r[0]["message"]
    assert r[1]["ok"] is True and r[1]["members"] == 2 and r[1]["state"] == "serving"
    assert r[2]["error"] == "not_allowed"
    assert r[3]["memberships"] == [g0]
    assert r[4]["ok"] and r[4]["members"] == 1
    # Not in the socket's group: the socket's mode refuses the connection itself.
    r2 = _as_nobody(_CLIENT, path, "[]", uid=12345)
    assert r2 == {"connect_error": 13}
    # nobody cannot release root's memberships either.
    r3 = _as_nobody(_CLIENT, path, json.dumps([{"cmd": "leave", "prefix": g0, "all": True}]))
    assert r3["replies"][0]["error"] == "not_member"
    assert lab.groups_of("n1")[g0]["members"] == 1


def test_a_thousand_connections_and_oversized_lines(mesh: Lab) -> None:
    lab = mesh
    path = lab.node("n1").api_socket
    prober = lab.start_prober("n2", duration=3.0)
    # An unprivileged flood is cut at the per-uid bound.
    flood = _as_nobody(_FLOOD, path, "1000")
    assert flood["opened"] == 1000 and flood["refused"] == 1000 - 64
    # 1,000 concurrent connections of root (bounded by the total only), plus junk.
    socks = []
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            socks.append(s)
        socks[0].sendall(b"z" * 1_000_000)  # no newline: a huge line in progress
        socks[1].sendall(b"q" * 100_000 + b"\n" + b'{"cmd":"status"}\n')
        socks[1].settimeout(5)
        f = socks[1].makefile("rb")
        assert json.loads(f.readline())["error"] == "line_too_long"
        assert json.loads(f.readline())["ok"] is True
        t0 = time.monotonic()
        st = lab.api("n1", {"cmd": "status"})
        assert time.monotonic() - t0 < 1.0
        assert st["connections"] >= 1001
        # Membership still works under the load.
        from wgcast.client import Client

        with Client(path) as c:
            assert c.join(lab.groups[0].prefix)[0]["members"] == 2
    finally:
        for s in socks:
            s.close()
    res = prober.wait()
    # The service answered throughout (a few queries may be lost to the CPU the flood
    # itself takes on this small machine, not to routing). Its instance may move: the
    # flood delays n1's daemon, which its neighbours measure as RTT (Hello to IHU), and
    # selection follows costs with no hysteresis of its own (docs/source-filter.md).
    assert "n1" in res["nodes"]
    assert res["outage_ms"] < 100 and res["lost"] <= 0.02 * res["sent"], res["outages"]
    assert all(p["up"] for p in lab.api("n1", {"cmd": "peers"})["peers"])
    wait_for(lambda: lab.api("n1", {"cmd": "status"})["connections"] <= 3, 5,
             "connections to be released")


def test_wgcast_join_cli(mesh: Lab) -> None:
    lab = mesh
    path = lab.node("n1").api_socket
    g0 = lab.groups[0].prefix
    exe = lab.wgcast_exe()
    # Exit status is passed through; the membership ends with the command.
    r = subprocess.run([exe, "join", "--socket", path, g0, "--", "sh", "-c",
                        f"{exe} status --socket {path} --json >/dev/null; exit 7"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 7, r.stderr
    # Signals are forwarded; killed by SIGTERM -> 128 + 15.
    p = subprocess.Popen([exe, "join", "-q", "--socket", path, g0, "--", sys.executable,
                          "-c", "import time; time.sleep(30)"])
    wait_for(lambda: lab.groups_of("n1")[g0]["members"] == 2, 10, "the second member")
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 128 + signal.SIGTERM
    wait_for(lambda: lab.groups_of("n1")[g0]["members"] == 1, 5, "the member to leave")
    # Refused joins do not run the command.
    r = subprocess.run([exe, "join", "--socket", path, "fd5a:ffff::1/128", "--", "true"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "unknown_group" in r.stderr
    # `wgcast leave` (root) releases every membership: the group is withdrawn first.
    r = subprocess.run([exe, "leave", "--socket", path, "--json", g0], capture_output=True,
                       text=True, timeout=20)
    out = json.loads(r.stdout)
    assert out["released"] == 1 and out["withdrawn"] is True
    assert not on_lo(lab, "n1", lab.anycast(0))
    lab.kill_service("n1", signal.SIGTERM)  # the fixture starts a fresh one


def test_member_rejoins_after_a_daemon_restart(mesh: Lab) -> None:
    lab = mesh
    lab.fail("n1", "daemon")  # SIGTERM: groups retracted
    assert lab.process("n1", "service") is not None  # the service keeps running
    lab.restore("n1", "daemon")
    lab.wait_served(["n1"], timeout=10)  # wgcast join reconnected and joined again
    st = lab.groups_of("n1")[lab.groups[0].prefix]
    assert st["members"] == 1
