"""Small system helpers of the lab: commands, namespaces, processes.

Everything here is bounded in time: commands have timeouts, waits have deadlines.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

NETNS_DIR = "/run/netns"
WG_SOCK_DIR = "/var/run/wireguard"
CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    """Something the lab could not do; the message says what and why."""


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0,
        input: str | None = None, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell) and raise LabError with its stderr when it fails."""
    try:
        cp = subprocess.run(list(cmd), input=input, text=True, timeout=timeout,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None,
                            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise LabError(f"command not found: {cmd[0]}") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(cmd)}") from e
    if check and cp.returncode != 0:
        err = (cp.stderr or cp.stdout or "").strip()
        raise LabError(f"failed ({cp.returncode}): {' '.join(cmd)}: {err[-2000:]}")
    return cp


def ip_batch(lines: Sequence[str], netns: str | None = None, timeout: float = 60.0) -> None:
    """Run many `ip` commands in one process (ip -batch), optionally inside a namespace."""
    if not lines:
        return
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    run(cmd, input="\n".join(lines) + "\n", timeout=timeout)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Move the calling THREAD into a network namespace for the duration of the block.

    Sockets created inside keep that namespace after the block. Files under /proc/sys/net
    opened inside refer to that namespace.
    """
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"no network namespace {name!r}") from None
    try:
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(orig)
        finally:
            os.close(orig)
    finally:
        os.close(target)


def netns_socket(name: str, family: int = socket.AF_INET6,
                 type: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket living in network namespace ``name``."""
    with in_netns(name):
        return socket.socket(family, type)


def netns_sysctl(name: str, settings: dict[str, str]) -> None:
    """Write sysctls (dotted names under net.) inside a namespace, no subprocess."""
    with in_netns(name):
        for key, value in settings.items():
            path = "/proc/sys/" + key.replace(".", "/")
            with open(path, "w") as f:
                f.write(value)


def netns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(os.path.join(NETNS_DIR, name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(names: Sequence[str]) -> dict[int, str]:
    """pid -> namespace name, for every process living in one of the namespaces."""
    inodes = {}
    for n in names:
        ino = netns_inode(n)
        if ino is not None:
            inodes[ino] = n
    if not inodes:
        return {}
    out: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        ns = inodes.get((st.st_dev, st.st_ino))
        if ns is not None:
            out[pid] = ns
    return out


# -- processes ----------------------------------------------------------------------
def proc_starttime(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()
    return fields[0] if fields else None


def reap(pid: int) -> None:
    """Collect a child of ours that has exited (no-op for others)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int, starttime: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, if given, started at ``starttime``."""
    if pid <= 0:
        return False
    reap(pid)
    st = proc_state(pid)
    if st is None or st in ("Z", "X"):
        return False
    return starttime is None or proc_starttime(pid) == starttime


def signal_pid(pid: int, sig: int, starttime: int | None = None) -> bool:
    if not alive(pid, starttime):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until the processes are gone; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def terminate(pids: Sequence[int], timeout: float = 3.0,
              sig: signal.Signals = signal.SIGTERM) -> list[int]:
    """`sig` (SIGTERM), wait, SIGKILL, wait. Returns pids that survived everything."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
    left = wait_gone(pids, timeout)
    for p in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    return wait_gone(left, 2.0)


def wait_for(cond: Callable[[], Any], timeout: float, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy and return that; LabError at the
    deadline, naming ``what`` and the last value seen. The one polling helper of the lab
    and the netns tests."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout}s waiting for {what} (last: {v!r})")
        time.sleep(interval)


@dataclass
class Spawned:
    pid: int
    starttime: int | None
    popen: subprocess.Popen[bytes]


def spawn(netns: str | None, cmd: Sequence[str], log_path: str,
          env: dict[str, str] | None = None) -> Spawned:
    """Start a detached process (own session), optionally inside a namespace.

    stdout and stderr go to ``log_path``. `ip netns exec` execs the command, so the pid
    is the command's own.
    """
    full = (["ip", "netns", "exec", netns] if netns else []) + list(cmd)
    e = dict(os.environ)
    if env:
        e.update(env)
    with open(log_path, "ab") as log:
        try:
            p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True, close_fds=True, env=e)
        except FileNotFoundError as ex:
            raise LabError(f"command not found: {full[0]}") from ex
    st = proc_starttime(p.pid)
    return Spawned(p.pid, st, p)


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def require_tools(wireguard: str = "go") -> None:
    """Raise LabError naming what is missing to run a lab (`wireguard`: "go"/"kernel")."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, tun devices)")
    tools = ("ip", "wg", "wireguard-go") if wireguard == "go" else ("ip", "wg")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} "
                       "(Debian: apt-get install iproute2 wireguard-tools wireguard-go)")
    if wireguard == "kernel" and not kernel_module("wireguard"):
        raise LabError("--wireguard kernel: this kernel has no WireGuard module "
                       "(modprobe wireguard failed); use --wireguard go")
    if not os.path.exists("/dev/net/tun"):
        raise LabError("/dev/net/tun is missing: wireguard-go and the daemon's hold device "
                       "need it (modprobe tun)")


def kernel_module(name: str) -> bool:
    """Whether kernel module `name` is loaded or built in, after trying to load it."""
    if os.path.isdir(f"/sys/module/{name}"):
        return True
    if shutil.which("modprobe") is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["modprobe", "-q", name], capture_output=True, timeout=30)
    return os.path.isdir(f"/sys/module/{name}")


def timeout_scale() -> float:
    """WGCAST_LAB_SLOW: how much slower than a normal machine this one is (default 1).
    The guest of `make test-kernel` (software emulation) sets it: the lab's readiness
    deadlines and the demo's waits are multiplied by it. Timings measured there are not."""
    raw = os.environ.get("WGCAST_LAB_SLOW", "1")
    try:
        value = float(raw)
    except ValueError:
        raise LabError(f"WGCAST_LAB_SLOW must be a number, got {raw!r}") from None
    if not 1.0 <= value <= 100.0:
        raise LabError(f"WGCAST_LAB_SLOW must be in [1, 100], got {raw!r}")
    return value


def default_wireguard() -> str:
    """ "kernel" where the WireGuard module loads, else "go" (wireguard-go)."""
    return "kernel" if kernel_module("wireguard") else "go"


def wg_dump(netns: str, iface: str, timeout: float = 30.0) -> dict[str, Any]:
    """`uapi_get`'s answer for any WireGuard interface, from `wg show IFACE dump` run
    inside `netns` (kernel WireGuard has no UAPI socket)."""
    import base64

    cp = run(["ip", "netns", "exec", netns, "wg", "show", iface, "dump"], check=False,
             timeout=timeout)
    if cp.returncode != 0:
        raise LabError(f"{iface}: wg show dump failed: {cp.stderr.strip()[:200]}")
    lines = cp.stdout.splitlines()
    if not lines:
        raise LabError(f"{iface}: wg show dump printed nothing")
    head = lines[0].split("\t")
    out: dict[str, Any] = {"listen_port": int(head[2]) if len(head) > 2 else None,
                           "peers": {}}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) < 8:
            raise LabError(f"{iface}: bad wg show dump line {line[:80]!r}")
        pub = f[0]
        base64.b64decode(pub, validate=True)
        out["peers"][pub] = {
            "public_key": pub, "endpoint": None if f[2] == "(none)" else f[2],
            "allowed_ips": [] if f[3] == "(none)" else f[3].split(","),
            "latest_handshake": int(f[4]), "rx": int(f[5]), "tx": int(f[6])}
    return out


def remove_wg_sockets(prefix: str) -> list[str]:
    """Remove leftover UAPI sockets /var/run/wireguard/<prefix>*.sock."""
    removed: list[str] = []
    try:
        names = os.listdir(WG_SOCK_DIR)
    except FileNotFoundError:
        return removed
    for n in names:
        if n.startswith(prefix) and n.endswith(".sock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(WG_SOCK_DIR, n))
                removed.append(n)
    return removed


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def uapi_get(iface: str, timeout: float = 2.0) -> dict[str, Any]:
    """State of a userspace WireGuard interface through its UAPI socket (no subprocess).

    Returns {"listen_port": int | None, "peers": {public key base64: {endpoint,
    allowed_ips, latest_handshake, rx, tx}}}.
    """
    import base64

    path = os.path.join(WG_SOCK_DIR, f"{iface}.sock")
    buf = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(b"get=1\n\n")
            deadline = time.monotonic() + timeout
            while not buf.endswith(b"\n\n"):
                if time.monotonic() > deadline or len(buf) > 4 * 1024 * 1024:
                    raise LabError(f"{iface}: UAPI reply too slow or too long")
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            raise LabError(f"{iface}: UAPI socket {path}: {e}") from None
    out: dict[str, Any] = {"listen_port": None, "peers": {}}
    peer: dict[str, Any] | None = None
    for line in buf.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            pub = base64.b64encode(bytes.fromhex(value)).decode()
            peer = {"public_key": pub, "endpoint": None, "allowed_ips": [],
                    "latest_handshake": 0, "rx": 0, "tx": 0}
            out["peers"][pub] = peer
        elif key == "listen_port" and peer is None:
            out["listen_port"] = int(value)
        elif key == "errno" and value != "0":
            raise LabError(f"{iface}: UAPI get failed, errno {value}")
        elif peer is not None:
            if key == "endpoint":
                peer["endpoint"] = value
            elif key == "allowed_ip":
                peer["allowed_ips"].append(value)
            elif key == "last_handshake_time_sec":
                peer["latest_handshake"] = int(value)
            elif key == "rx_bytes":
                peer["rx"] = int(value)
            elif key == "tx_bytes":
                peer["tx"] = int(value)
    return out
