"""Faults a lab injects and undoes: link changes (delay, jitter, loss, cut) through the
relay or tc netem, a node cut off, a daemon signalled, a service crashed, a health check
failing, a drain. Each fault is recorded in the state's failures (any process driving
the lab sees it); a router may handle some kinds its own way (lab/babeld.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from wgcast.lab import netem as netem_mod
from wgcast.lab import relay as relay_mod
from wgcast.lab.handle import LabHandle
from wgcast.lab.naming import HOWS, RELAY
from wgcast.lab.state import LabState, failure_added, failure_removed
from wgcast.lab.system import LabError, run


def relay_control(lab: LabHandle, request: dict[str, Any],
                  timeout: float = 3.0) -> dict[str, Any]:
    try:
        return relay_mod.control(lab.state.relay.control, request, timeout)
    except (OSError, ConnectionError, TimeoutError) as e:
        raise LabError(f"relay not reachable: {e}") from None
    except RuntimeError as e:
        raise LabError(str(e)) from None


def link_ids(lab: LabHandle, a: str, b: str | None, link_id: int | None) -> list[int]:
    if link_id is not None:
        if not any(lk.id == link_id for lk in lab.links):
            raise LabError(f"no link with id {link_id}")
        return [link_id]
    if b is None:
        raise LabError("a link is named by its two ends (peer) or its id")
    ids = [lk.id for lk in lab.links_between(a, b)]
    if not ids:
        raise LabError(f"no link between {a} and {b}")
    return ids


def set_link(lab: LabHandle, a: str, b: str | None = None, *, link_id: int | None = None,
             delay_ms: float | None = None, jitter_ms: float | None = None,
             loss: float | None = None, up: bool | None = None,
             direction: str = "both") -> list[int]:
    """Change links between a and b (or one by id) at run time, both directions by
    default (direction 'ab'/'ba' = from the link's a / b end). Returns the link ids."""
    ids = link_ids(lab, a, b, link_id)
    if lab.link_mode == "netem":
        _set_netem_links(lab, ids, direction, delay_ms, jitter_ms, loss, up)
    else:
        relay_control(lab, {"op": "set", "links": ids, "dir": direction,
                            "delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss": loss,
                            "up": up})
    if up is not None:
        def upd(st: LabState) -> None:
            cut = set(st.failures.links)
            cut = cut - set(ids) if up else cut | set(ids)
            st.failures.links = sorted(cut)
        lab.mutate(upd)
    return ids


def _set_netem_links(lab: LabHandle, ids: list[int], direction: str, delay_ms: float | None,
                     jitter_ms: float | None, loss: float | None, up: bool | None) -> None:
    if direction not in ("both", "ab", "ba"):
        raise LabError(f"direction must be 'both', 'ab' or 'ba', got {direction!r}")
    dirs = ("ab", "ba") if direction == "both" else (direction,)
    current = lab.state.netem or {}
    changed: dict[str, list[float]] = {}
    for lk in (lk for lk in lab.links if lk.id in ids):
        for d in dirs:
            if delay_ms is None and jitter_ms is None and loss is None:
                break
            was = current.get(f"{lk.id}{d}", [lk.delay_ms, lk.jitter_ms, lk.loss])
            now = [was[0] if delay_ms is None else delay_ms,
                   was[1] if jitter_ms is None else jitter_ms,
                   was[2] if loss is None else loss]
            netem_mod.set_direction(lab.ns(RELAY), lab.nodes, lk, d, delay_ms=now[0],
                                    jitter_ms=now[1], loss=now[2])
            changed[f"{lk.id}{d}"] = now
    if changed:
        def upd(st: LabState) -> None:
            if st.netem is None:
                st.netem = {}
            st.netem.update(changed)
        lab.mutate(upd)
    if up is not None:
        netem_mod.cut(lab.ns(RELAY), [netem_mod.mark(i, d) for i in ids for d in dirs], up)


def fail(lab: LabHandle, node: str, how: str = "daemon", peer: str | None = None, *,
         link_id: int | None = None, sig: int = signal.SIGTERM) -> Any:
    """Inject a fault (see `Lab.fail`)."""
    lab.node(node)
    if how in ("service", "health", "drain") and not lab.services:
        raise LabError(f"--how {how} needs a lab whose instances are services")
    if how == "service":
        if not lab.kill_service(node, signal.SIGKILL):
            raise LabError(f"no service running on {node}")
        lab.mutate(failure_added("services", node))
        return {"killed_at": lab.killed_at}
    elif how == "health":
        with open(lab.unhealthy_flag(node), "w") as f:
            f.write("failed by the lab\n")
        lab.mutate(failure_added("health", node))
    elif how == "drain":
        replies = lab.drain(node)
        lab.kill_service(node, signal.SIGTERM)
        lab.mutate(failure_added("drains", node))
        return replies
    elif how == "daemon":
        if not lab.stop_daemon(node, sig):
            raise LabError(f"no daemon running on {node}")
        lab.mutate(failure_added("daemons", node))
    elif how == "node":
        run(["ip", "-n", lab.ns(node), "link", "set", "ul", "down"])
        lab.mutate(failure_added("nodes", node))
    elif how == "link":
        lab.set_link(node, peer, link_id=link_id, up=False)
    else:
        raise LabError(f"how must be one of {', '.join(HOWS)}, got {how!r}")


def restore(lab: LabHandle, node: str, how: str = "daemon", peer: str | None = None, *,
            link_id: int | None = None, wait: bool = True) -> None:
    """Undo `fail` (see `Lab.restore`)."""
    lab.node(node)
    if how in ("service", "drain"):
        if lab.process(node, "service") is None:
            lab.start_services([node], wait=wait)
        lab.mutate(failure_removed("services" if how == "service" else "drains", node))
    elif how == "health":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lab.unhealthy_flag(node))
        if wait:
            lab.wait_served([node])
        lab.mutate(failure_removed("health", node))
    elif how == "daemon":
        if lab.process(node, "daemon") is None:
            lab.start_daemon(node, wait=wait)
        lab.mutate(failure_removed("daemons", node))
    elif how == "node":
        run(["ip", "-n", lab.ns(node), "link", "set", "ul", "up"])
        lab.mutate(failure_removed("nodes", node))
    elif how == "link":
        lab.set_link(node, peer, link_id=link_id, up=True)
    else:
        raise LabError(f"how must be one of {', '.join(HOWS)}, got {how!r}")
