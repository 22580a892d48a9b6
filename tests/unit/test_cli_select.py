"""Every command finds the daemon the same way: --socket, then -c (its api_socket), then
-i (/run/wgcast/IFACE.sock), then $WGCAST_SOCKET, then the only socket in /run/wgcast;
several sockets and nothing named is a clear error listing them."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import wgcast.client
from wgcast.cli.main import main

STATUS = {"interface": "wgx", "name": "n1", "backend": "uapi", "router_id": "00" * 8,
          "seqno": 1, "control_address": "fe80::1", "uptime_s": 1.0, "neighbours_up": 0,
          "neighbours": 0, "routes": 0, "served": [],
          "dataplane": {"applies": 0, "ops": 0, "errors": 0, "last_apply_ms": 0.0},
          "roster": {"serial": 3, "members": 5}}
#: As the daemon answers: the membership service's groups next to the status.
REPLY = {"ok": True, "status": STATUS, "memberships": [], "connections": 1,
         "groups": [{"prefix": "10.9.0.1/32", "state": "serving", "served": True,
                     "members": 1, "static": False, "healthy": True, "draining": False,
                     "checks": [{"check": "exec /bin/true", "up": True}]}]}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A fake API socket answering every request with REPLY; the requests seen."""
    path = str(tmp_path / "api.sock")
    seen: list[dict[str, object]] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    req = json.loads(data)
                    seen.append(req)
                    reply = REPLY if req["cmd"] == "status" else {
                        "ok": True, "prefix": req.get("prefix"), "state": "drained",
                        "was_served": True, "drained": True, "moved": True, "acked": True,
                        "elapsed_ms": 12.0}
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path, seen
    finally:
        stop.set()
        t.join(5)
        srv.close()


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    r = CliRunner().invoke(main, args, env=env)
    return r.exit_code, r.output


def test_env_socket_is_used_when_nothing_is_named(daemon: tuple[str, list[object]]) -> None:
    path, seen = daemon
    code, out = _run(["status"], {"WGCAST_SOCKET": path})
    assert code == 0, out
    assert "group 10.9.0.1/32: serving, served, 1 members, healthy (exec /bin/true up)" in out
    assert "roster serial 3, 5 members" in out and "name n1" in out
    assert seen == [{"cmd": "status"}]


@pytest.mark.parametrize("cmd", [["status"], ["routes"], ["peers"], ["catchments"],
                                 ["leave", "10.9.0.1/32"], ["drain", "10.9.0.1/32"]])
def test_interface_beats_the_environment(cmd: list[str], daemon: tuple[str, list[object]]
                                         ) -> None:
    path, _ = daemon
    code, out = _run([*cmd, "-i", "wgnothere9"], {"WGCAST_SOCKET": path})
    assert code != 0
    assert "/run/wgcast/wgnothere9.sock" in out, out


def test_config_beats_the_environment(daemon: tuple[str, list[object]], tmp_path: Path
                                      ) -> None:
    path, _ = daemon
    cfg = tmp_path / "wg.toml"
    cfg.write_text(f'interface = "wgx"\napi_socket = "{path}"\n')
    code, out = _run(["status", "-c", str(cfg), "--json"],
                     {"WGCAST_SOCKET": str(tmp_path / "elsewhere.sock")})
    assert code == 0, out
    assert json.loads(out)["groups"][0]["prefix"] == "10.9.0.1/32"


def test_several_sockets_name_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wgcast.client, "DEFAULT_DIR", str(tmp_path))
    (tmp_path / "wg0.sock").touch()
    (tmp_path / "wg1.sock").touch()
    code, out = _run(["status"], {"WGCAST_SOCKET": ""})
    assert code == 2
    assert "several wgcast sockets" in out and "wg0.sock, wg1.sock" in out
    assert "name the interface" in out


def test_drain_takes_several_prefixes(daemon: tuple[str, list[dict[str, object]]]) -> None:
    path, seen = daemon
    code, out = _run(["drain", "--socket", path, "10.9.0.1/32", "10.9.0.2/32"])
    assert code == 0, out
    assert out.splitlines() == [
        f"10.9.0.{i}/32: drained in 12 ms (neighbours moved: yes, acked: yes)" for i in (1, 2)]
    assert sorted(str(r["prefix"]) for r in seen) == ["10.9.0.1/32", "10.9.0.2/32"]
    code, out = _run(["drain", "--socket", path, "--json", "10.9.0.3/32", "10.9.0.4/32"])
    assert code == 0 and [r["prefix"] for r in json.loads(out)] == ["10.9.0.3/32",
                                                                  "10.9.0.4/32"]


def test_status_of_a_lan_only_node(daemon: tuple[str, list[object]],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No WireGuard interface, no data plane: `wgcast status` says so and lists the
    LANs' neighbours instead of failing on the missing parts."""
    path, _ = daemon
    for key, value in (("interface", ""), ("backend", None), ("control_address", None),
                       ("dataplane", None),
                       ("lan", [{"interface": "eth1", "address": "fe80::1", "routes": 2,
                                 "neighbours": [{"name": "fe80::2%eth1",
                                                 "address": "fe80::2", "up": True,
                                                 "rtt_ms": 0.4, "cost": 96,
                                                 "routes_via": 2}]}])):
        monkeypatch.setitem(STATUS, key, value)
    code, out = _run(["status", "--socket", path])
    assert code == 0, out
    assert out.startswith("LAN-only (no WireGuard)  router-id")
    assert "control -" in out and "data plane" not in out
    assert "lan eth1 (fe80::1): fe80::2 up cost 96 routes 2; 2 routes installed" in out
