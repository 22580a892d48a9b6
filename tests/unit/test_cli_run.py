"""`wgcast run` refuses a bad config before touching anything: no root, no interface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    """Moved from tests/netns/test_daemon.py, where a root-only skip hid it: the config
    is checked before the daemon needs root, so it runs everywhere."""
    bad = tmp_path / "wg9.toml"
    bad.write_text('interface = "wg9"\n[timers]\nhello = "fast"\n[[peers]]\npublic_key = "x"\n')
    r = subprocess.run([sys.executable, "-m", "wgcast.cli.main", "run", "-c", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert str(bad) in r.stderr and "timers.hello" in r.stderr and "peers[0].public_key" in r.stderr
