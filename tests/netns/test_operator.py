"""The operator's hands: a second daemon on the same interface, and the like.

One real `wgcast run` on a wireguard-go interface in a throwaway namespace; every wait
has a deadline, the processes and the namespace go away also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    peer: str
    state_file: str = ""

    def write_config(self, extra: str = "", state_file: str | None = None) -> None:
        self.state_file = state_file or str(self.dir / "wg.state")
        self.config.write_text(
            f'interface = "{self.ifname}"\nstate_file = "{self.state_file}"\n'
            f'api_socket = "{self.socket}"\nprobe_port = 0\n'
            f'addresses = ["10.66.0.1/32"]\n{extra}\n[timers]\nprofile = "fast"\n'
            f'[[peers]]\nname = "p"\npublic_key = "{self.peer}"\n')

    @property
    def socket(self) -> str:
        return str(self.dir / "api.sock")

    @property
    def enter(self) -> list[str]:
        """Into the namespace's network only: the daemon shares our mount table (the
        disk tests change mounts under a running daemon)."""
        return ["nsenter", f"--net=/run/netns/{self.ns.name}", "--"]

    def start(self, log: str = "run.log") -> subprocess.Popen[bytes]:
        with open(self.dir / log, "ab") as out:
            p = subprocess.Popen([*self.enter, *WGCAST, "run", "-c", str(self.config), "-v"],
                                 stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def api(self, cmd: str) -> dict[str, Any] | None:
        from wgcast.client import request

        try:
            reply: dict[str, Any] = request(self.socket, {"cmd": cmd})
        except (OSError, ValueError):
            return None
        return reply

    def wait_api(self, timeout: float = 60.0) -> dict[str, Any]:
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


def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
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
    s = Single(netns, ifname, cfg, tmp_path, [], keys.b64(peer))
    s.write_config()
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
    second = subprocess.run([*single.enter, *WGCAST, "run", "-c", str(single.config)],
                            capture_output=True, text=True, timeout=30)
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


# --------------------------------------------------------------------------- disks


@contextlib.contextmanager
def full_tmpfs(where: Path) -> Iterator[Path]:
    """A one-page tmpfs at `where`, filled to the brim (ENOSPC on every write)."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=755", "wgcast-full",
                    str(where)], check=True, timeout=10)
    try:
        filler = where / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
            for _ in range(64):  # bounded: 64 pages is far more than the 1 page there is
                f.write(b"x" * 4096)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


@contextlib.contextmanager
def read_only(where: Path) -> Iterator[Path]:
    """`where` bind-mounted onto itself read-only (EROFS on every write); umount it to
    make it writable again."""
    where.mkdir()
    subprocess.run(["mount", "--bind", str(where), str(where)], check=True, timeout=10)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(where)], check=True,
                       timeout=10)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def wait_status(s: Single, cond: Callable[[dict[str, Any]], bool], timeout: float,
                what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = s.api("status")
        if r is not None and r.get("ok"):
            st = r["status"]
            if cond(st):
                return st
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s; last status {st}; log {s.log()}")


def _state_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "cannot save state" in ln]


@pytest.mark.parametrize("how", ["ENOSPC", "EROFS"])
def test_an_unwritable_state_file_is_a_warning_retried(single: Single, how: str) -> None:
    where = single.dir / "state"
    disk = full_tmpfs(where) if how == "ENOSPC" else read_only(where)
    with disk:
        single.write_config(state_file=str(where / "wg.state"))
        p = single.start()
        st = wait_status(single, lambda st: st["state"]["save_errors"] >= 1, 60,
                         "a failed save")
        expected = "No space left on device" if how == "ENOSPC" else "Read-only file system"
        assert expected in st["state"]["error"]
        out = subprocess.run([*WGCAST, "status", "--socket", single.socket],
                             capture_output=True, text=True, timeout=30).stdout
        assert "WARNING state:" in out and expected in out
        # Retried (every 5 s), still one warning line, and the daemon runs on.
        wait_status(single, lambda st: st["state"]["save_errors"] >= 2, 15, "a retry")
        assert p.poll() is None
        assert len(_state_lines(single.log())) == 1, single.log()
        # The disk gets room (or goes read-write): the next retry saves.
        if how == "ENOSPC":
            (where / "filler").unlink()
        else:
            subprocess.run(["umount", str(where)], check=True, timeout=10)  # rw beneath
        wait_status(single, lambda st: st["state"]["error"] is None, 15, "a save again")
        assert json.loads((where / "wg.state").read_text())["seqno"] == st["seqno"]
        assert "saved to" in single.log() and "again" in single.log()
        assert stop(p) == 0, single.log()
    print(f"{how}: daemon ran on, 1 warning line, saved again after the disk recovered")


def test_a_corrupt_state_file_is_replaced(single: Single) -> None:
    state = single.dir / "wg.state"
    state.write_text('{"version": 1, "router_id": "zz", "seq')
    p = single.start()
    st = wait_status(single, lambda st: True, 60, "the daemon")
    saved = json.loads(state.read_text())
    assert saved["router_id"] == st["router_id"] and saved["seqno"] == st["seqno"]
    assert "ignoring it and starting with a fresh state" in single.log()
    assert stop(p) == 0
    # The next start continues the sequence numbers (ahead of anything the mesh saw).
    p = single.start("run2.log")
    st2 = wait_status(single, lambda st: True, 60, "the restarted daemon")
    assert st2["seqno"] == (saved["seqno"] + 16) & 0xFFFF
    assert stop(p) == 0


# --------------------------------------------------------------------------- non-root


def test_non_root_is_told_what_it_needs(single: Single) -> None:
    import shutil
    import tempfile

    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    d = Path(tempfile.mkdtemp(prefix="wgcast-nonroot-"))
    # nobody must reach this checkout's venv and sources: a clone in a `mktemp -d`
    # directory (mode 0700) is not searchable by others. Add o+x where missing, undo after.
    opened = [p for p in Path(__file__).resolve().parents
              if p.is_dir() and not p.stat().st_mode & 0o001]
    for p in opened:
        p.chmod(p.stat().st_mode | 0o001)
    try:
        d.chmod(0o777)  # nobody writes its lock, state and socket here
        cfg = d / "wg.toml"
        text = single.config.read_text().replace(str(single.dir), str(d))
        cfg.write_text(text)
        cfg.chmod(0o644)
        r = subprocess.run([*single.enter, "setpriv", "--reuid", "65534", "--regid", "65534",
                            "--clear-groups", *WGCAST, "run", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr
        assert "needs root or CAP_NET_ADMIN for reading the WireGuard interface " \
               f"{single.ifname}" in r.stderr, r.stderr
        print(r.stderr.strip().splitlines()[-1])
    finally:
        shutil.rmtree(d, ignore_errors=True)
        for p in opened:
            p.chmod(p.stat().st_mode & ~0o001)


def _wait_log(s: Single, cond: Callable[[str], bool], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = s.log()
        if cond(text):
            return text
        time.sleep(0.02)
    raise AssertionError(f"log condition not met in {timeout}s: {s.log()[-3000:]}")


def test_sighup_reloads_a_good_file_and_refuses_a_bad_one(single: Single) -> None:
    p = single.start()
    single.wait_api()
    q = keys.b64(keys.public_from_private(keys.generate_private()))
    good = single.config.read_text() + f'[[peers]]\nname = "q"\npublic_key = "{q}"\ncost = 9\n'
    single.config.write_text(good)
    t0 = time.monotonic()
    p.send_signal(signal.SIGHUP)
    _wait_log(single, lambda t: "reload: peers added: q" in t)
    print(f"SIGHUP good file: applied in {time.monotonic() - t0:.3f}s")
    peers = single.api("peers")
    assert peers is not None and sorted(x["name"] for x in peers["peers"]) == ["p", "q"]
    # A file with errors: refused with check's messages, the daemon runs on as it was.
    bad = good.replace('profile = "fast"', 'profile = "fast"\nhello = "0s"') + \
        '[[peers]]\npublic_key = "not a key"\n'
    single.config.write_text(bad)
    check = subprocess.run([*WGCAST, "check", "-c", str(single.config)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 2
    expected = check.stderr.strip().splitlines()
    assert len(expected) >= 2
    t0 = time.monotonic()
    p.send_signal(signal.SIGHUP)
    text = _wait_log(single, lambda t: t.count("reload refused") >= len(expected))
    print(f"SIGHUP bad file: refused in {time.monotonic() - t0:.3f}s")
    refused = [ln.split("reload refused (the running config stays): ", 1)[1]
               for ln in text.splitlines() if "reload refused" in ln]
    assert refused == expected
    assert p.poll() is None
    # `wgcast reload` through the API: the same refusal, exit 1; then a good file.
    r = subprocess.run([*WGCAST, "reload", "-c", str(single.config)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[1:] == expected
    single.config.write_text(good.replace("cost = 9", "cost = 3"))
    r = subprocess.run([*WGCAST, "reload", "--socket", single.socket], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reloaded: peers changed: q (cost)"
    st = single.api("status")
    assert st is not None and st["status"]["reload"]["reloads"] == 2
    assert st["status"]["reload"]["refused"] == 2
    assert stop(p) == 0, single.log()
    assert "Traceback" not in single.log()


# --------------------------------------------------------------------------- peers


def _peers(s: Single) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    r = s.api("peers")
    assert r is not None and r.get("ok"), r
    return {p["name"]: p for p in r["peers"]}, r["unconfigured"]


def test_peers_that_never_come_up_get_a_reason(single: Single) -> None:
    """Four peers that never come up, each for its own reason, next to a second
    wireguard-go (B) in the namespace: a wrong key for B (B drops our initiations
    silently), B's right key (a session, but nobody speaks Babel there), a closed port,
    no endpoint. Then the operator's hands: a peer added outside the config is reported;
    B removed with `wg set` and added again is picked up (its control /128 put back)."""
    ns, a = single.ns, single.ifname
    b = ns.start_wireguard_go()
    bpriv = keys.generate_private()
    bpub = keys.b64(keys.public_from_private(bpriv))
    (single.dir / "bkey").write_text(keys.b64(bpriv) + "\n")
    apub = keys.b64(keys.public_from_private(keys.decode_key(
        (single.dir / "key").read_text().strip())))
    ns.run("wg", "set", b, "listen-port", "0", "private-key", str(single.dir / "bkey"),
           "peer", apub, "allowed-ips", f"{keys.control_address(keys.decode_key(apub))}/128")
    ns.run("ip", "link", "set", b, "up")
    bport = ns.run("wg", "show", b, "listen-port").stdout.strip()
    import socket as sk

    with sk.socket(sk.AF_INET, sk.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    wrong, nobody, stray = (keys.b64(keys.public_from_private(keys.generate_private()))
                            for _ in range(3))
    ns.run("wg", "set", a, "listen-port", "0",
           "peer", wrong, "endpoint", f"127.0.0.1:{bport}",
           "peer", bpub, "endpoint", f"127.0.0.1:{bport}",
           "peer", nobody, "endpoint", f"127.0.0.1:{closed}")
    extra = "".join(f'[[peers]]\nname = "{n}"\npublic_key = "{k}"\n'
                    for n, k in (("wrongkey", wrong), ("b", bpub), ("closed", nobody)))
    single.write_config('metrics = "127.0.0.1:9586"')  # the namespace's own loopback
    single.config.write_text(single.config.read_text() + extra)
    t0 = time.monotonic()
    p = single.start()
    single.wait_api()
    want = {"wrongkey": "wrong key suspected", "b": "no Babel", "closed": "no handshake",
            "p": "no handshake"}

    def reasons() -> dict[str, str | None]:
        return {n: x["reason"] for n, x in _peers(single)[0].items()}

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and reasons() != want:
        time.sleep(0.2)
    took = time.monotonic() - t0
    peers, _ = _peers(single)
    assert reasons() == want, peers
    assert "nothing listens" in peers["closed"]["reason_detail"]
    assert "no endpoint" in peers["p"]["reason_detail"]
    assert wrong in peers["wrongkey"]["reason_detail"]
    print(f"\nreasons after {took:.1f}s: " +
          "; ".join(f"{n}: {x['reason_detail']}" for n, x in sorted(peers.items())))
    out = subprocess.run([*WGCAST, "peers", "--socket", single.socket], capture_output=True,
                         text=True, timeout=30).stdout
    assert "down (wrong key suspected)" in out and "down (no Babel)" in out, out
    st = wait_status(single, lambda st: len(st["peer_problems"]) == 4, 5, "peer problems")
    assert {x["peer"]: x["reason"] for x in st["peer_problems"]} == want
    text = single.log()
    assert sum("is down:" in ln for ln in text.splitlines()) == 4, text  # one line each
    scrape = ns.run(sys.executable, "-c", "import urllib.request as u; print(u.urlopen("
                    "'http://127.0.0.1:9586/metrics', timeout=5).read().decode())").stdout
    assert 'wgcast_peer_down_reason{peer="wrongkey",reason="wrong key suspected"} 1.0' \
        in scrape, scrape
    # The operator adds a peer outside the config: reported, once.
    ns.run("wg", "set", a, "peer", stray, "allowed-ips", "10.77.0.0/24")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _peers(single)[1]:
        time.sleep(0.1)
    assert [u["public_key"] for u in _peers(single)[1]] == [stray]
    assert "not in the config (ignored)" in subprocess.run(
        [*WGCAST, "peers", "--socket", single.socket], capture_output=True, text=True,
        timeout=30).stdout
    # B removed by the operator: "not on the interface" at once; added again: picked up.
    ctrl = f"{keys.control_address(keys.decode_key(bpub))}/128"
    ns.run("wg", "set", a, "peer", bpub, "remove")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and reasons()["b"] != "not on the interface":
        time.sleep(0.1)
    assert reasons()["b"] == "not on the interface"
    ns.run("wg", "set", a, "peer", bpub, "endpoint", f"127.0.0.1:{bport}")
    t1 = time.monotonic()

    def b_ips() -> str:
        return ns.run("wg", "show", a, "allowed-ips").stdout

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            ln.startswith(bpub) and ctrl in ln for ln in b_ips().splitlines()):
        time.sleep(0.05)
    assert any(ln.startswith(bpub) and ctrl in ln for ln in b_ips().splitlines()), b_ips()
    print(f"peer removed and added again with wg set: control /128 back in "
          f"{time.monotonic() - t1:.2f}s")
    # Its time starts again (the doctor looks every 2 s; an audit may have been first).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            reasons()["b"] is not None or "peers back on the interface: b" not in single.log()):
        time.sleep(0.1)
    assert reasons()["b"] is None
    assert "peers back on the interface: b" in single.log()
    assert stop(p) == 0, single.log()
    assert "Traceback" not in single.log()


# --------------------------------------------------------------------------- members

GROUP = "10.66.9.9/32"


def _group_config(s: Single) -> None:
    s.write_config(f'anycast = ["10.66.9.0/24"]\n[[groups]]\nprefix = "{GROUP}"\n')


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _served(s: Single) -> list[str]:
    r = s.api("status")
    return [] if r is None else list(r["status"]["served"])


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_killed_join_takes_its_service_with_it(single: Single) -> None:
    """`wgcast join ... -- SERVICE` SIGKILLed: the service (which holds a port) is gone
    within 1 s, the daemon withdraws the group, and joining again with the same service
    works (no "Address already in use")."""
    _group_config(single)
    p = single.start()
    single.wait_api()
    port = 40000 + os.getpid() % 20000
    service = [sys.executable, "-c",
               "import socket,sys,time; s=socket.socket(); "
               f"s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(300)"]

    def join(log: str) -> subprocess.Popen[bytes]:
        with open(single.dir / log, "ab") as out:
            j = subprocess.Popen([*single.enter, *WGCAST, "join", "--socket", single.socket,
                                  GROUP, "--", *service], stdout=out, stderr=out,
                                 stdin=subprocess.DEVNULL)
        single.procs.append(j)
        return j

    j = join("join1.log")
    _wait(lambda: GROUP in _served(single) and bool(_children(j.pid)), 60, "served")
    child = _children(j.pid)[0]
    t0 = time.monotonic()
    j.kill()
    j.wait(5)
    _wait(lambda: not _alive(child), 1.0, "the service outlived join by 1 s")
    gone_ms = 1000 * (time.monotonic() - t0)
    _wait(lambda: GROUP not in _served(single), 10, "the group withdrawn")
    withdrawn = time.monotonic() - t0
    j2 = join("join2.log")
    _wait(lambda: GROUP in _served(single) and bool(_children(j2.pid)), 60, "served again")
    time.sleep(0.3)  # the service would die at once if its port were still taken
    assert j2.poll() is None, single.log("join2.log")
    assert "Address already in use" not in single.log("join2.log")
    stop(j2)  # SIGTERM: join passes it on and exits
    print(f"\njoin SIGKILLed: service gone in {gone_ms:.1f} ms, group withdrawn in "
          f"{withdrawn:.2f}s, joined again")
    assert stop(p) == 0, single.log()


def test_a_drain_of_an_idle_group_does_not_stick(single: Single) -> None:
    _group_config(single)
    p = single.start()
    single.wait_api()
    r = subprocess.run([*WGCAST, "drain", "--socket", single.socket, GROUP],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "nothing to drain" in r.stdout, r.stdout
    with open(single.dir / "join.log", "ab") as out:
        j = subprocess.Popen([*single.enter, *WGCAST, "join", "--socket", single.socket,
                              GROUP], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    single.procs.append(j)
    _wait(lambda: GROUP in _served(single), 60, "the join after the idle drain is served")
    stop(j)
    _wait(lambda: GROUP not in _served(single), 10, "left")
    assert stop(p) == 0, single.log()


def test_zero_holds_are_off(single: Single) -> None:
    """`move_hold = "0s"` and `restart_hold = "0s"` (documented as off): accepted by
    check and by run; no hold device."""
    single.config.write_text(single.config.read_text().replace(
        'profile = "fast"\n', 'profile = "fast"\nmove_hold = "0s"\nrestart_hold = "0s"\n'))
    r = subprocess.run([*WGCAST, "check", "-c", str(single.config)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    p = single.start()
    st = single.wait_api()["status"]
    assert st["dataplane"]["hold_device"] is None
    assert stop(p) == 0, single.log()


# --------------------------------------------------------------------------- disks at run time

_SEND = """
import socket, sys
from wgcast.babel import wire
src, dst, ifname, rid, seqno = sys.argv[1:6]
pkt = wire.encode_packet([wire.SeqnoRequest(1, 32, int(seqno), 2, bytes.fromhex(rid),
                                            bytes([10, 66, 0, 1]))])
idx = socket.if_nametoindex(ifname)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, 6696, 0, idx))
s.sendto(pkt, (dst, 6696, 0, idx))
"""


def test_a_full_disk_at_run_time_does_not_stop_the_event_pump(single: Single) -> None:
    """The state file's disk fills while the daemon runs; a neighbour's seqno request
    then changes the seqno (SeqnoChanged: a save). The save fails (one warning,
    counted), the event pump goes on: the next request is served too; once the disk
    has room the seqno in the file is the current one."""
    ns, a = single.ns, single.ifname
    b = ns.start_wireguard_go()
    bpriv = keys.generate_private()
    bkey = keys.public_from_private(bpriv)
    (single.dir / "bkey").write_text(keys.b64(bpriv) + "\n")
    akey = keys.public_from_private(keys.decode_key((single.dir / "key").read_text().strip()))
    actl, bctl = keys.control_address(akey), keys.control_address(bkey)
    ns.run("wg", "set", a, "listen-port", "0")
    ns.run("wg", "set", b, "listen-port", "0", "private-key", str(single.dir / "bkey"))
    aport = ns.run("wg", "show", a, "listen-port").stdout.strip()
    bport = ns.run("wg", "show", b, "listen-port").stdout.strip()
    ns.run("wg", "set", a, "peer", keys.b64(bkey), "endpoint", f"127.0.0.1:{bport}")
    ns.run("wg", "set", b, "peer", keys.b64(akey), "endpoint", f"127.0.0.1:{aport}",
           "allowed-ips", f"{actl}/128")
    ns.run("ip", "link", "set", b, "addrgenmode", "none")
    ns.run("ip", "-6", "address", "add", f"{bctl}/64", "dev", b, "nodad")
    ns.run("ip", "link", "set", b, "up")
    where = single.dir / "state"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=755", "wgcast-small",
                    str(where)], check=True, timeout=10)
    try:
        single.write_config(state_file=str(where / "wg.state"))
        single.config.write_text(single.config.read_text() +
                                 f'[[peers]]\nname = "b"\npublic_key = "{keys.b64(bkey)}"\n')
        p = single.start()
        st = single.wait_api()["status"]
        assert st["state"]["save_errors"] == 0
        rid, seqno = str(st["router_id"]), int(st["seqno"])
        with contextlib.suppress(OSError), open(where / "filler", "wb", buffering=0) as f:
            for _ in range(64):  # bounded: 64 x 4 KiB > the 64 KiB there are
                f.write(b"x" * 4096)

        def ask(want: int) -> dict[str, Any]:
            deadline = time.monotonic() + 15
            st: dict[str, Any] = {}
            while time.monotonic() < deadline:  # resent: the first may wait for a handshake
                subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", _SEND,
                                str(bctl), str(actl), b, rid, str(want)],
                               check=True, timeout=30, capture_output=True)
                st = wait_status(single, lambda st: True, 5, "status")
                if st["seqno"] == want:
                    return st
                time.sleep(0.2)
            raise AssertionError(f"seqno {want} never requested: {st}; {single.log()}")

        st = ask((seqno + 5) & 0xFFFF)
        st = wait_status(single, lambda st: st["state"]["save_errors"] >= 1, 10, "a failed save")
        assert "No space left on device" in st["state"]["error"]
        st = ask((seqno + 10) & 0xFFFF)  # the pump and its timer still run after the failed save
        assert p.poll() is None
        assert len(_state_lines(single.log())) == 1, single.log()
        (where / "filler").unlink()
        st = wait_status(single, lambda st: st["state"]["error"] is None, 15, "a save again")
        assert json.loads((where / "wg.state").read_text())["seqno"] == (seqno + 10) & 0xFFFF
        assert stop(p) == 0, single.log()
        assert "Traceback" not in single.log()
        print(f"\nseqno {seqno} -> {(seqno + 10) & 0xFFFF} on a full disk: "
              f"{st['state']['save_errors']} failed saves, 1 warning, saved again")
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)
