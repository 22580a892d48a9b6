"""One daemon per interface: an exclusive `flock` on `<state_file>.lock`.

The lock is taken before the daemon touches the interface, the API socket or the state
file, and is held for the life of the process (the kernel drops it when the process
dies, a SIGKILL included: there is no stale lock to clean up). The file holds the PID
of the holder, for the message a second `wgcast run` prints; when the file cannot be
written (a read-only or full disk) the holder is found in /proc/locks instead.

When the lock file can neither be created nor opened beside the state file (its
directory is read-only, say), `<api_socket>.lock` is used: the API socket's directory
is written anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os

__all__ = ["AlreadyRunning", "InterfaceLock", "lock_path"]

log = logging.getLogger("wgcast")


class AlreadyRunning(RuntimeError):
    """Another process holds the interface's lock."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"another wgcast run ({who}) already manages this interface "
                         f"(it holds {path}); stop it first")


def lock_path(state_file: str) -> str:
    return state_file + ".lock"


class InterfaceLock:
    """`acquire()` or raise AlreadyRunning; `release()` (idempotent)."""

    def __init__(self, state_file: str, fallback: str | None = None) -> None:
        self.path = lock_path(state_file)
        self.fallback = fallback
        self.fd: int | None = None

    def acquire(self) -> None:
        paths = [self.path] + ([self.fallback] if self.fallback else [])
        errors: list[str] = []
        for path in paths:
            fd = _open(path)
            if isinstance(fd, OSError):
                errors.append(f"{path}: {fd.strerror or fd}")
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                os.close(fd)
                raise AlreadyRunning(path, pid) from None
            except OSError as e:
                os.close(fd)
                errors.append(f"{path}: {e.strerror or e}")
                continue
            self.fd = fd
            self.path = path
            if errors:
                log.warning("lock: %s; locked %s instead", "; ".join(errors), path)
            _write_pid(fd)
            return
        raise RuntimeError("cannot take the interface lock: " + "; ".join(errors))

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock; the file stays (unlinking it would race)


def _open(path: str) -> int | OSError:
    with contextlib.suppress(OSError):  # the open below says what is wrong
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        first = e
    try:  # an existing file on a read-only file system can still be flocked
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return first


def _write_pid(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(fd: int) -> int | None:
    """The PID written in the lock file, else the one /proc/locks names for its inode."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text:
            pid = int(text)
            if pid > 0 and os.path.exists(f"/proc/{pid}"):
                return pid
    try:
        st = os.fstat(fd)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        try:
            maj, mnr, ino = parts[5].split(":")
            if (int(maj, 16), int(mnr, 16), int(ino)) == want:
                return int(parts[4])
        except ValueError:
            continue
    return None
