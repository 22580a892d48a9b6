"""`wgcast join` and signals before its command runs (no daemon needed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def _catches(pid: int, sig: int) -> bool:
    """Has process `pid` installed a handler for `sig` (SigCgt in /proc)?"""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        return False
    return False


def test_sigterm_while_waiting_for_the_daemon_ends_join_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A stop signal before the command started ends `join` at once with 128+N (and the
    command never starts), instead of waiting out --wait or dying half set up."""
    marker = tmp_path / "started"
    p = subprocess.Popen([sys.executable, "-m", "wgcast.cli.main", "join", "--wait", "30",
                          "--socket", str(tmp_path / "none.sock"), "fd00::1/128", "--",
                          "touch", str(marker)])
    try:
        deadline = time.monotonic() + 20
        while not _catches(p.pid, signal.SIGTERM):
            assert p.poll() is None, "join exited on its own"
            assert time.monotonic() < deadline, "join never installed its handlers"
            time.sleep(0.01)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 2.0
        assert not marker.exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _FakeDaemon(threading.Thread):
    """An API socket that says yes to every request (join: serving)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()

    def run(self) -> None:
        conns = []
        while not self.stopped.is_set():
            try:
                c, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            c.settimeout(5)
            conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()
        for c in conns:
            c.close()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while not self.stopped.is_set():
                chunk = c.recv(4096)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    _, buf = buf.split(b"\n", 1)
                    c.sendall(json.dumps({"ok": True, "state": "serving", "members": 1,
                                          "served": True}).encode() + b"\n")

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


def test_sigkilled_join_takes_its_command_with_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """join dies by SIGKILL (no handler runs): its command is gone within 1 s, not left
    running without the membership the daemon already withdrew."""
    fake = _FakeDaemon(str(tmp_path / "d.sock"))
    fake.start()
    p = subprocess.Popen([sys.executable, "-m", "wgcast.cli.main", "join", "-q", "--socket",
                          str(tmp_path / "d.sock"), "10.9.9.9/32", "--", "sleep", "300"])
    child = None
    try:
        deadline = time.monotonic() + 20
        while child is None:  # the command, once exec'd (prctl ran before the exec)
            child = next((k for k in _children(p.pid) if _cmdline(k) == ["sleep", "300"]),
                         None)
            assert p.poll() is None, "join exited"
            assert time.monotonic() < deadline, "join never started its command"
            time.sleep(0.01)
        t0 = time.monotonic()
        p.kill()
        p.wait(5)
        gone = time.monotonic() + 1.0
        while _alive(child):
            assert time.monotonic() < gone, "the command outlived join by 1 s"
            time.sleep(0.005)
        print(f"join SIGKILLed -> command gone in {1000 * (time.monotonic() - t0):.1f} ms")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
        fake.close()
