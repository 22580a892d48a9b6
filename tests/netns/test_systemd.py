"""`wgcast run` started the way `wgcast@.service` starts it: the unit's ExecStart=, a
$NOTIFY_SOCKET the test listens on (as systemd's), stderr as the journal
($JOURNAL_STREAM). READY=1 must come once the daemon serves its API; STOPPING=1 and a
clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Netns  # tests/netns/conftest.py (rootdir on sys.path)

from wgcast import keys
from wgcast.cli.service import unit_text
from wgcast.client import request

pytestmark = pytest.mark.netns


def _exec_start(exe: str, config: Path, ifname: str) -> list[str]:
    """The unit's ExecStart= for instance `ifname`, with the test's config file."""
    line = next(x for x in unit_text(exe).splitlines() if x.startswith("ExecStart="))
    cmd = line.removeprefix("ExecStart=").replace("%i", ifname)
    return [str(config) if a == f"/etc/wgcast/{ifname}.toml" else a for a in shlex.split(cmd)]


def _messages(sock: socket.socket, until: str, deadline: float) -> list[str]:
    got: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(until in m.splitlines() for m in got):
            return got
    raise AssertionError(f"no {until} before the deadline; got {got}")


def test_unit_start_sends_ready_once_serving(netns: Netns, tmp_path: Path) -> None:
    # This checkout's console script (not another wgcast on PATH, e.g. a .deb's).
    exe = str(Path(sys.executable).with_name("wgcast"))
    ifname = netns.start_wireguard_go()
    keyfile = tmp_path / "key"
    keyfile.write_text(keys.b64(keys.generate_private()) + "\n")
    peer = keys.b64(keys.public_from_private(keys.generate_private()))
    netns.run("wg", "set", ifname, "private-key", str(keyfile), "peer", peer,
              "allowed-ips", "10.66.1.0/24")
    api = str(tmp_path / "api.sock")
    cfg = tmp_path / f"{ifname}.toml"
    cfg.write_text(f'interface = "{ifname}"\nstate_file = "{tmp_path / "wg.state"}"\n'
                   f'api_socket = "{api}"\nprobe_port = 0\naddresses = ["10.66.0.1/32"]\n'
                   f'[timers]\nprofile = "fast"\n'
                   f'[[peers]]\nname = "p"\npublic_key = "{peer}"\n')
    notify_path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    log = tmp_path / "journal.log"
    cmd = _exec_start(exe, cfg, ifname)
    assert cmd[1:3] == ["run", "-c"]
    with open(log, "wb") as out:
        journal = os.fstat(out.fileno())
        env = {**os.environ, "NOTIFY_SOCKET": notify_path,
               "JOURNAL_STREAM": f"{journal.st_dev}:{journal.st_ino}"}
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns.name}", "--", *cmd],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
    try:
        ready = _messages(listener, "READY=1", time.monotonic() + 30)
        # Serving when READY=1 arrives: the API answers at once, no retry.
        reply = request(api, {"cmd": "status"})
        assert reply["ok"] and reply["status"]["interface"] == ifname
        # status --json is complete: groups (and their health), back end, roster, names.
        shown = subprocess.run([exe, "status", "--socket", api, "--json"],
                               capture_output=True, text=True, timeout=30, check=True).stdout
        st = json.loads(shown)
        for key in ("groups", "backend", "roster", "name", "version", "problems",
                    "dataplane", "endpoints", "state", "reload", "api_socket"):
            assert key in st, key
        assert st["backend"] in ("uapi", "netlink") and st["api_socket"] == api
        status = [line for m in ready for line in m.splitlines()
                  if line.startswith("STATUS=")]
        assert status and "neighbours up" in status[-1], ready
        proc.send_signal(signal.SIGTERM)
        stopping = _messages(listener, "STOPPING=1", time.monotonic() + 30)
        assert proc.wait(30) == 0
        assert any("STATUS=stopping" in m for m in stopping)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        listener.close()
    text = log.read_text()
    # Journal lines: a syslog priority, no timestamp of our own.
    lines = [x for x in text.splitlines() if x]
    assert lines and all(x.startswith("<") for x in lines), text
    assert any(x.startswith("<6>wgcast INFO") for x in lines), text
