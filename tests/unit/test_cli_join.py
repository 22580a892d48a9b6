"""`wgcast join` and signals before its command runs (no daemon needed)."""

from __future__ import annotations

import signal
import subprocess
import sys
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
