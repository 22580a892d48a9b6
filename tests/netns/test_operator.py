"""The operator's hands: a second daemon on the same interface, and the like.

One real `wgcast run` on a wireguard-go interface in a throwaway namespace; every wait
has a deadline, the processes and the namespace go away also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Netns  # tests/netns/conftest.py (rootdir on sys.path)

from wgcast import keys

pytestmark = pytest.mark.netns

WGCAST = [sys.executable, "-m", "wgcast.cli.main"]


@dataclass
class Single:
    ns: Netns
    ifname: str
    config: Path
    dir: Path
    procs: list[subprocess.Popen[bytes]]

    @property
    def socket(self) -> str:
        return str(self.dir / "api.sock")

    @property
    def state(self) -> str:
        return str(self.dir / "wg.state")

    def start(self, log: str = "run.log") -> subprocess.Popen[bytes]:
        with open(self.dir / log, "ab") as out:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns.name, *WGCAST, "run", "-c",
                                  str(self.config), "-v"], stdout=out, stderr=out,
                                 stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def api(self, cmd: str) -> dict[str, object] | None:
        from wgcast.client import request

        try:
            reply: dict[str, object] = request(self.socket, {"cmd": cmd})
        except (OSError, ValueError):
            return None
        return reply

    def wait_api(self, timeout: float = 15.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api("status")
            if r is not None and r.get("ok"):
                return r
            for p in self.procs:
                if p.poll() is not None and p.returncode != 0:
                    raise AssertionError(f"daemon exited {p.returncode}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no API after {timeout}s: {self.log()}")

    def log(self, name: str = "run.log") -> str:
        p = self.dir / name
        return p.read_text() if p.exists() else ""


def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    return p.returncode


@pytest.fixture
def single(netns: Netns, tmp_path: Path) -> Iterator[Single]:
    """wireguard-go in `netns` with a key and one (silent) peer; a config for it."""
    ifname = netns.start_wireguard_go()
    priv, peer = keys.generate_private(), keys.public_from_private(keys.generate_private())
    keyfile = tmp_path / "key"
    keyfile.write_text(keys.b64(priv) + "\n")
    netns.run("wg", "set", ifname, "private-key", str(keyfile), "peer", keys.b64(peer),
              "allowed-ips", "10.66.1.0/24")
    cfg = tmp_path / "wg.toml"
    cfg.write_text(f'interface = "{ifname}"\nstate_file = "{tmp_path}/wg.state"\n'
                   f'api_socket = "{tmp_path}/api.sock"\nprobe_port = 0\n'
                   'addresses = ["10.66.0.1/32"]\n[timers]\nprofile = "fast"\n'
                   f'[[peers]]\nname = "p"\npublic_key = "{keys.b64(peer)}"\n')
    s = Single(netns, ifname, cfg, tmp_path, [])
    try:
        yield s
    finally:
        for p in s.procs:
            stop(p, signal.SIGKILL)


def test_a_second_daemon_on_the_interface_is_refused(single: Single) -> None:
    first = single.start()
    single.wait_api()
    sock_ino = os.stat(single.socket).st_ino
    t0 = time.monotonic()
    second = subprocess.run(["ip", "netns", "exec", single.ns.name, *WGCAST, "run", "-c",
                             str(single.config)], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    assert second.returncode == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr, second.stderr
    assert "already manages this interface" in second.stderr
    print(f"second daemon refused in {took:.2f}s: {second.stderr.strip()}")
    # The first one's socket is untouched and still answers, with the first one's status.
    assert os.stat(single.socket).st_ino == sock_ino
    st = single.api("status")
    assert st is not None and st["ok"], st
    assert first.poll() is None
    assert stop(first) == 0
    # Its own socket it removes on a clean stop; the lock is free again.
    assert not os.path.exists(single.socket)
    again = single.start("run2.log")
    single.wait_api()
    assert stop(again) == 0, single.log("run2.log")


def test_a_socket_someone_listens_on_is_not_taken(single: Single) -> None:
    """Another interface's daemon configured with the same api_socket: refused, and
    its socket is neither unlinked nor replaced."""
    import socket as s

    with s.socket(s.AF_UNIX, s.SOCK_STREAM) as other:
        other.bind(single.socket)
        other.listen(1)
        ino = os.stat(single.socket).st_ino
        p = single.start()
        assert p.wait(30) == 1
        assert "another process is listening" in single.log()
        assert os.stat(single.socket).st_ino == ino


def test_lock_names_the_holder(tmp_path: Path) -> None:
    """Two real processes, no namespace: the holder's PID is in the refusal."""
    state = str(tmp_path / "x.state")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys,time; from wgcast.daemon.lock import InterfaceLock;"
                               f"InterfaceLock({state!r}).acquire(); print('ok', flush=True);"
                               "sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ok\n"
        from wgcast.daemon.lock import AlreadyRunning, InterfaceLock

        with pytest.raises(AlreadyRunning) as e:
            InterfaceLock(state).acquire()
        assert e.value.pid == holder.pid
        # Without the PID in the file (a read-only disk), /proc/locks names it.
        Path(state + ".lock").write_text("")
        with pytest.raises(AlreadyRunning) as e:
            InterfaceLock(state).acquire()
        assert e.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait(5)
    lk = InterfaceLock(state)
    lk.acquire()  # the kernel dropped the dead holder's lock
    assert json.loads(Path(state + ".lock").read_text()) == os.getpid()
    lk.release()
