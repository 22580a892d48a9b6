"""Removing a lab: every process it started, its namespaces, UAPI sockets and state
directory. Works from the state file and without it (a crashed or half-built lab)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

from wgcast.lab.naming import NS_PREFIX, base_dir
from wgcast.lab.state import list_labs, recorded_processes
from wgcast.lab.system import (
    alive,
    list_netns,
    netns_exists,
    pids_in_netns,
    remove_wg_sockets,
    run,
    terminate,
)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP during teardown (delivered right after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def teardown(labid: str, base: str | None = None,
             popens: dict[int, subprocess.Popen[bytes]] | None = None) -> dict[str, Any]:
    """Remove every trace of lab ``labid``: processes, namespaces, UAPI sockets, state.

    Finds processes both from the state file and by scanning for processes living in the
    lab's namespaces, so it also works when the state is gone. Idempotent.
    """
    d = os.path.join(base_dir(base), labid)
    recorded = recorded_processes(d)
    namespaces = [n for n in list_netns() if n.startswith(f"{NS_PREFIX}{labid}-")]
    pids = {p.pid for p in recorded if alive(p.pid, p.starttime)}
    pids |= set(pids_in_netns(namespaces))
    pids.discard(os.getpid())
    # Daemons first, killed at once: a lab is torn down, not drained (a daemon stopped
    # with SIGTERM drains its groups for about 2 s, waiting on neighbours that are being
    # killed alongside it; nothing it would clean up outlives the namespaces).
    daemons = [p.pid for p in recorded if p.kind == "daemon" and p.pid in pids]
    survivors = terminate(daemons, 0.0, signal.SIGKILL) if daemons else []
    survivors += terminate(sorted(pids - set(daemons)), 3.0)
    for po in (popens or {}).values():
        with contextlib.suppress(Exception):
            po.poll()
    deleted = []
    for ns in namespaces:
        cp = run(["ip", "netns", "del", ns], check=False, timeout=10)
        if cp.returncode == 0 or not netns_exists(ns):
            deleted.append(ns)
    socks = remove_wg_sockets(f"wg{labid}")
    shutil.rmtree(d, ignore_errors=True)
    return {"id": labid, "killed": len(pids), "survivors": survivors, "namespaces": deleted,
            "sockets_removed": socks}


def teardown_all(base: str | None = None) -> list[dict[str, Any]]:
    return [teardown(x["id"], base) for x in list_labs(base)]
