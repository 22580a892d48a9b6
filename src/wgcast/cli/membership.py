"""`wgcast join`, `wgcast leave`, `wgcast drain`: service membership from the shell.

``wgcast join PREFIX [PREFIX...] -- CMD ARGS`` joins the groups, runs CMD, holds the
memberships while CMD lives (reconnecting and joining again if the daemon restarts),
forwards signals to it and exits with its status (128+N when it was killed by signal N).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from wgcast.client import Client, WgcastError, default_socket

#: Signals passed on to the command. SIGINT and SIGQUIT too, unless we run in the
#: foreground of a terminal (which sends them to the command itself).
_TERMINATE = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
_FORWARD = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


def _socket_path(config: str | None, socket_path: str | None, interface: str | None) -> str:
    if socket_path:
        return socket_path
    if config:
        from wgcast.daemon.config import ConfigError, load

        try:
            return load(config).api_socket
        except ConfigError as e:
            click.echo(str(e), err=True)
            sys.exit(2)
    try:
        return default_socket(interface)
    except WgcastError as e:
        raise click.UsageError(e.message) from None


def _connect(path: str, wait: float) -> Client:
    """Connect, retrying while the socket is missing or refuses (daemon starting)."""
    deadline = time.monotonic() + wait
    delay = 0.02
    while True:
        try:
            return Client(path)
        except WgcastError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _err(prog: str, e: WgcastError) -> None:
    click.echo(f"wgcast {prog}: {e.code}: {e.message}", err=True)


_socket_opts = [
    click.option("-c", "--config", "config", type=click.Path(dir_okay=False),
                 help="the daemon's config file (for its api_socket)"),
    # Not envvar=: $WGCAST_SOCKET must not override an explicit -c or -i
    # (default_socket reads it, after them, as the Python client does).
    click.option("--socket", "socket_path", type=click.Path(),
                 help="API socket path (else -c, -i, $WGCAST_SOCKET, the only socket in "
                      "/run/wgcast)"),
    click.option("-i", "--interface", default=None,
                 help="use /run/wgcast/IFACE.sock"),
]


def _with_socket(f: Any) -> Any:
    for opt in reversed(_socket_opts):
        f = opt(f)
    return f


class _Holder(threading.Thread):
    """Keeps the memberships: watches the connection, reconnects and joins again."""

    def __init__(self, path: str, prefixes: list[str], client: Client, quiet: bool) -> None:
        super().__init__(name="wgcast-join-holder", daemon=True)
        self.path, self.prefixes, self.client, self.quiet = path, prefixes, client, quiet
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self.lock = threading.Lock()

    def say(self, msg: str) -> None:
        if not self.quiet:
            click.echo(f"wgcast join: {msg}", err=True)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def run(self) -> None:
        while not self._stopping:
            with self.lock:
                client = self.client
            if client is None:
                self._rejoin()
                continue
            try:
                r, _, _ = select.select([client.fileno(), self._wake_r], [], [])
            except (OSError, ValueError):
                r = [client.fileno()]
            if self._stopping:
                return
            if client.fileno() in r:
                try:
                    data = client.sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.say("connection to the daemon lost; joining again")
                    client.close()
                    with self.lock:
                        self.client = None  # type: ignore[assignment]

    def _rejoin(self) -> bool:
        delay = 0.05
        while not self._stopping:
            c: Client | None = None
            try:
                c = Client(self.path)
                c.join(*self.prefixes)
            except WgcastError as e:
                if c is not None:
                    c.close()
                if e.code not in ("unreachable",):
                    self.say(f"join refused ({e.code}: {e.message}); retrying")
                    delay = 5.0
                # Wait, but wake up at once on stop.
                select.select([self._wake_r], [], [], delay)
                delay = min(delay * 2, 0.5) if delay < 5.0 else delay
                continue
            with self.lock:
                self.client = c
            self.say(f"joined {', '.join(self.prefixes)} again")
            return True
        return False


@click.command("join", context_settings={"ignore_unknown_options": True,
                                          "allow_interspersed_args": False})
@_with_socket
@click.option("--wait", type=float, default=10.0, show_default=True,
              help="seconds to wait for the daemon's socket")
@click.option("--drain-on-term", is_flag=True,
              help="on SIGTERM/SIGINT drain the groups first, then pass the signal on")
@click.option("-q", "--quiet", is_flag=True, help="no messages on stderr")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
def join(config: str | None, socket_path: str | None, interface: str | None, wait: float,
         drain_on_term: bool, quiet: bool, args: tuple[str, ...]) -> None:
    """Join anycast groups and run a command holding them: PREFIX... -- CMD ARGS.

    The memberships last while CMD runs; when CMD exits (or is killed), the daemon
    withdraws the groups it was the last member of. Without CMD the groups are held until
    a signal. Exits with CMD's status.
    """
    prefixes: list[str] = []
    cmd: list[str] = []
    for i, a in enumerate(args):
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            cmd = list(args[i:])
            break
        prefixes.append(a)
    if not prefixes:
        raise click.UsageError("give at least one PREFIX before the command")
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    path = _socket_path(config, socket_path, interface)
    # Before the command runs, a stop signal ends us at once (closing the connection
    # releases any membership taken so far); the others are kept for the command. Left
    # to the default action until the forwarder is installed, a signal could kill us
    # after the command started and leave it orphaned.
    early: list[int] = []

    def before_start(sig: int, frame: object) -> None:
        if sig in _TERMINATE:
            raise SystemExit(128 + sig)
        early.append(sig)

    for s in _FORWARD:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(s, before_start)
    try:
        client = _connect(path, wait)
        for p in dict.fromkeys(prefixes):
            r = client.join(p)[0]
            if not quiet and r.get("state") != "serving":
                click.echo(f"wgcast join: {p}: joined, state {r.get('state')}", err=True)
    except WgcastError as e:
        _err("join", e)
        sys.exit(1)
    holder = _Holder(path, list(dict.fromkeys(prefixes)), client, quiet)
    holder.start()
    code = _run_holding(cmd, holder, path, drain_on_term, early)
    holder.stop()
    with holder.lock:
        if holder.client is not None:
            holder.client.close()
    sys.exit(code)


def _run_holding(cmd: list[str], holder: _Holder, path: str, drain_on_term: bool,
                 early: list[int]) -> int:
    on_tty = False
    with contextlib.suppress(OSError):
        on_tty = os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    # From here on a signal must reach the command: keep them until the forwarder runs.
    for s in _FORWARD:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(s, lambda sig, frame: early.append(sig))
    try:
        child = subprocess.Popen(cmd, preexec_fn=_die_with(os.getpid())) if cmd else None
    except OSError as e:
        click.echo(f"wgcast join: cannot run {cmd[0]}: {e.strerror or e}", err=True)
        return 127 if isinstance(e, FileNotFoundError) else 126
    done = threading.Event()
    draining = threading.Event()

    def graceful_then(sig: int) -> None:
        for p in holder.prefixes:
            try:
                with Client(path) as c:
                    c.drain(p)
            except WgcastError as e:
                holder.say(f"drain {p}: {e.code}: {e.message}")
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)
        else:
            done.set()

    def forward(sig: int, frame: object) -> None:
        if drain_on_term and sig in (signal.SIGTERM, signal.SIGINT) and \
                not draining.is_set():
            draining.set()
            threading.Thread(target=graceful_then, args=(sig,), daemon=True).start()
            return
        if child is None:
            if sig in _TERMINATE:
                done.set()
            return
        if on_tty and sig in (signal.SIGINT, signal.SIGQUIT):
            return  # the terminal sent it to the command as well
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)

    for s in _FORWARD:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(s, forward)
    while early:
        forward(early.pop(0), None)
    if child is None:
        while not done.wait(3600):
            pass
        return 0
    rc = child.wait()
    return 128 - rc if rc < 0 else rc


def _die_with(parent: int) -> Callable[[], None]:
    """In the forked child, before exec: SIGKILL when `join` dies (PR_SET_PDEATHSIG), so
    a SIGKILLed `join` does not leave its service running without the membership it
    held (the daemon withdrew the group when join's connection closed). Everything is
    looked up before the fork: the child only calls prctl and getppid."""
    import ctypes

    try:  # libc's symbols are in the process already (no find_library: it forks)
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None  # not Linux: the command outlives a killed join
    pr_set_pdeathsig, sigkill = 1, int(signal.SIGKILL)

    def in_child() -> None:
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # join died between fork and prctl
            os._exit(128 + sigkill)

    return in_child


@click.command("leave")
@_with_socket
@click.option("--pid", type=int, default=None,
              help="only the memberships held by this process")
@click.option("--json", "as_json", is_flag=True)
@click.argument("prefixes", metavar="PREFIX...", nargs=-1, required=True)
def leave(config: str | None, socket_path: str | None, interface: str | None,
          pid: int | None, as_json: bool, prefixes: tuple[str, ...]) -> None:
    """Release the memberships of each PREFIX held by your processes (root: by anyone).

    The member processes keep running; when no member is left the daemon withdraws the
    group (retract, wait for the neighbours' acks, address down) before this returns.
    """
    path = _socket_path(config, socket_path, interface)
    replies = []
    try:
        with Client(path) as c:
            for prefix in prefixes:
                replies.append(c.leave(prefix, pid=pid, all=pid is None))
    except WgcastError as e:
        _err("leave", e)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(replies[0] if len(replies) == 1 else replies, indent=2))
        return
    for prefix, r in zip(prefixes, replies, strict=True):
        extra = ""
        if "withdrawn" in r:
            extra = "; withdrawn" + ("" if r.get("acked", True)
                                     else " (not every neighbour acked)")
        click.echo(f"{prefix}: released {r['released']} membership(s), {r['members']} "
                   f"left, state {r['state']}{extra}")


@click.command("drain")
@_with_socket
@click.option("--cancel", is_flag=True, help="undrain: serve the group again")
@click.option("--move-timeout", type=float, default=None,
              help="longest wait for the neighbours to move (s)")
@click.option("--ack-timeout", type=float, default=None,
              help="longest wait for the neighbours' acks of the retraction (s)")
@click.option("--settle", type=float, default=None,
              help="pause before the address goes down (s)")
@click.option("--json", "as_json", is_flag=True)
@click.argument("prefixes", metavar="PREFIX...", nargs=-1, required=True)
def drain(config: str | None, socket_path: str | None, interface: str | None, cancel: bool,
          move_timeout: float | None, ack_timeout: float | None, settle: float | None,
          as_json: bool, prefixes: tuple[str, ...]) -> None:
    """Move the mesh away from this node's instance of each PREFIX, losing nothing.

    Returns once drained (several prefixes: all drained at once): the service may then
    stop. A group stays drained until its last member leaves (or `--cancel`).
    """
    import concurrent.futures

    path = _socket_path(config, socket_path, interface)

    def one(prefix: str) -> dict[str, Any]:
        with Client(path) as c:  # one connection each: the drains run side by side
            return c.undrain(prefix) if cancel else c.drain(
                prefix, move_timeout=move_timeout, ack_timeout=ack_timeout, settle=settle)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(prefixes))) as ex:
            replies = list(ex.map(one, prefixes))
    except WgcastError as e:
        _err("drain", e)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(replies[0] if len(replies) == 1 else replies, indent=2))
        return
    failed = False
    for prefix, r in zip(prefixes, replies, strict=True):
        if cancel:
            click.echo(f"{prefix}: undrained, state {r['state']}")
            continue
        if not r.get("was_served"):
            click.echo(f"{prefix}: {r['note']}" if r.get("note") else
                       f"{prefix}: drained (it was not served), state {r['state']}")
            continue
        moved = r.get("moved")
        click.echo(f"{prefix}: {'drained' if r.get('drained') else 'NOT drained'} in "
                   f"{r['elapsed_ms']:.0f} ms (neighbours moved: "
                   f"{'yes' if moved else 'no, timed out'}, acked: "
                   f"{'yes' if r.get('acked') else 'no'})")
        failed = failed or not r.get("drained")
    if failed:
        sys.exit(1)
