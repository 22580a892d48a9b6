"""systemd integration without systemd: the notify protocol, journald-friendly logs, the
unit file (`systemd-analyze verify`), `wgcast install-systemd`, the wheel's package data."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from wgcast.cli.main import main
from wgcast.cli.service import unit_text
from wgcast.daemon.notify import notify_address, sd_notify
from wgcast.logsetup import JsonFormatter, configure, under_journald

ROOT = Path(__file__).resolve().parents[2]


def _listener(path: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5.0)
    return s


def test_sd_notify_sends_one_datagram_to_a_path(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _listener(path) as s:
        assert sd_notify("READY=1", "STATUS=two\nlines", env={"NOTIFY_SOCKET": path})
        assert s.recv(4096) == b"READY=1\nSTATUS=two lines"


def test_sd_notify_abstract_socket() -> None:
    name = f"wgcast-test-{os.getpid()}"
    with _listener(b"\0" + name.encode()) as s:
        assert sd_notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"STOPPING=1"


def test_sd_notify_without_systemd_does_nothing(tmp_path: Path) -> None:
    assert notify_address({}) is None
    assert not sd_notify("READY=1", env={})
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"})
    # Nobody listening: an error is swallowed, not raised into the daemon.
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "none")})


def test_journald_detection_compares_the_stream(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as f:
        st = os.fstat(f.fileno())
        assert under_journald(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journald(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not under_journald(f, {"JOURNAL_STREAM": "garbage"})
        assert not under_journald(f, {})


def _emit(fmt: str, env: dict[str, str], path: Path) -> str:
    with open(path, "w") as f:
        handler = configure(logging.INFO, fmt, stream=f, env=env)
        try:
            logging.getLogger("wgcast").warning("neighbour %s down", "b")
        finally:
            logging.getLogger().removeHandler(handler)
    return path.read_text()


def test_text_log_has_no_own_timestamp_under_journald(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.touch()
    st = path.stat()
    journal = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    assert _emit("text", journal, path) == "<4>wgcast WARNING neighbour b down\n"
    plain = _emit("text", {}, path)
    assert plain.endswith(" wgcast WARNING neighbour b down\n")
    assert plain[:4].isdigit()  # asctime first


def test_json_log_lines(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.touch()
    st = path.stat()
    rec = json.loads(_emit("json", {}, path))
    assert rec["level"] == "WARNING" and rec["logger"] == "wgcast"
    assert rec["msg"] == "neighbour b down" and rec["ts"].endswith("Z")
    rec = json.loads(_emit("json", {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, path))
    assert "ts" not in rec


def test_json_formatter_keeps_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("wgcast", logging.ERROR, __file__, 1, "failed", None,
                                sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]


def test_configure_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="expected one of text, json"):
        configure(logging.INFO, "xml", stream=io.StringIO())


def test_run_help_documents_verbosity_and_log_format() -> None:
    out = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--log-format [text|json]" in out
    assert "-vv: also the" in out and "traceback" in out


def test_unit_is_a_hardened_notify_service() -> None:
    text = unit_text("/usr/bin/wgcast")
    for line in ("Type=notify", "ExecStart=/usr/bin/wgcast run -c /etc/wgcast/%i.toml",
                 "StateDirectory=wgcast", "RuntimeDirectory=wgcast",
                 "RuntimeDirectoryPreserve=yes", "DeviceAllow=/dev/net/tun rw",
                 "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text.splitlines()
    caps = next(x for x in text.splitlines() if x.startswith("CapabilityBoundingSet="))
    assert "CAP_NET_ADMIN" in caps and "CAP_SYS_ADMIN" not in caps
    assert "@WGCAST@" not in text
    assert "ProtectHome=read-only" in unit_text("/root/.local/bin/wgcast")


def test_install_systemd_writes_the_unit_and_says_what_next(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).with_name("wgcast"))
    r = CliRunner().invoke(main, ["install-systemd", "--dest", str(tmp_path), "--bin", exe])
    assert r.exit_code == 0, r.output
    unit = tmp_path / "wgcast@.service"
    assert f"ExecStart={exe} run -c /etc/wgcast/%i.toml" in unit.read_text()
    assert "systemctl enable --now wgcast@wg0" in r.output
    again = CliRunner().invoke(main, ["install-systemd", "--dest", str(tmp_path), "--bin",
                                      exe])
    assert again.output.startswith("unchanged ")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (apt-get install systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # This checkout's console script (not another wgcast on PATH, e.g. a .deb's).
    exe = str(Path(sys.executable).with_name("wgcast"))
    # An instance of the template, as `systemctl start wgcast@wg0` loads it.
    unit = tmp_path / "wgcast@wg0.service"
    unit.write_text(unit_text(exe))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_wheel_ships_the_unit_and_the_page(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=240)
    if r.returncode != 0 and "setuptools" in r.stderr:
        pytest.skip(f"no setuptools>=68 to build with: {r.stderr[-200:]}")
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("wgcast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "wgcast/data/wgcast@.service" in names
        assert b"Type=notify" in z.read("wgcast/data/wgcast@.service")
        assert b"catchments.json" in z.read("wgcast/data/catchments.html")
