"""`wgcast sim`: many Babel engines in virtual time, a fault, invariant checks.

    wgcast sim --topology random:200:6 --anycast 5x3 --fail origin --seed 1 --json

Every node originates one unicast prefix; P anycast prefixes get O seeded origins each.
The run converges, applies the fault (origin: retract the anycast instance with the
largest catchment; node: crash the node carrying most transit, later restart it; link:
cut the link on most paths, later restore it; partition: cut the graph in two halves,
later heal it), and checks after every route change that no forwarding loop exists and,
after each quiescence, that every node routes to its nearest live origin (within the
selection margin), or nowhere when none is reachable. Times are virtual except wall_s.

WireGuard's source filter is modelled (wgcast.sim.filter): after each quiescence every
(node, prefix) pair is walked both ways under strict reverse-path filtering;
`blackholed_pairs` counts those that cannot exchange a request and its reply, and each
fault event reports `blackhole_pair_s` (pair-seconds without two-way delivery, sampled
every --filter-period). --filter-strict makes blackholed pairs fail the run.
"""

from __future__ import annotations

import json
import resource
import sys

import click

from wgcast.sim.scenario import FAILURES, TIMERS, Scenario, parse_anycast


def _summary(r: dict[str, object]) -> str:
    lines = [
        f"{r['topology']}: {r['nodes']} nodes, {r['links']} links, {r['prefixes']} prefixes "
        f"(anycast {r['anycast']}), timers {r['timers']}, seed {r['seed']}",
        f"converged: {'yes' if r['converged'] else 'NO'}   loops seen: {r['loops']}   "
        f"wrong routes after quiescence: {r['wrong_routes']}",
        f"convergence: {r['convergence_ms']} ms (virtual)",
    ]
    if "blackholed_pairs" in r:
        lines.append(f"source filter: {r['blackholed_pairs']} blackholed pairs after "
                     f"quiescence {json.dumps(r['blackholed_by_phase'])} of "
                     f"{r['pairs_checked']} checked; blackhole pair-s per event "
                     f"{json.dumps(r['blackhole_pair_s'])}")
        sample = r.get("blackholed_sample")
        if isinstance(sample, list) and sample:
            b = sample[0]
            lines.append(f"  e.g. {b['client']} -> {b['prefix']}: there {' '.join(b['there'])}"
                         f", back {' '.join(b['back'])}, dropped at {b['drop']['at']} "
                         f"(from {b['drop']['from']}, {b['drop']['why']})")
    if r["fail"] != "none":
        target = r.get("fail_target") or {}
        lines.append(f"failure {r['fail']} {json.dumps(target)}")
        lines.append(f"failover: {r['failover_ms']} ms"
                     + (f", repaired in {r['repair_ms']} ms" if r.get("repair_ms") is not None
                        else "")
                     + (f", recovery: {r['recovery_ms']} ms" if r.get("recovery_ms") is not None
                        else ""))
    lines.append(f"traffic: {r['msgs_per_node_s']} msgs/node/s, {r['bytes_per_node_s']} "
                 f"bytes/node/s   wall: {r['wall_s']} s for {r['virtual_s']} s virtual")
    if r.get("idle_s"):
        lines.append(f"idle ({r['idle_s']} s after boot): {r['idle_msgs_per_node_s']} "
                     f"msgs/node/s, {r['idle_bytes_per_node_s']} bytes/node/s")
    return "\n".join(lines)


@click.command("sim")
@click.option("--topology", default="random:100:6", show_default=True,
              help="line:N, ring:N, full:N, grid:WxH, grid:N, random:N:D or dual:N.")
@click.option("--anycast", "anycast", default="5x3", show_default=True,
              help="PxO: P anycast prefixes with O origins each (0: none).")
@click.option("--fail", type=click.Choice(FAILURES), default="origin", show_default=True,
              help="The fault to inject after convergence.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--delay", default="2-20ms", show_default=True,
              help="Link delay: '5ms' or a seeded range '2-20ms'.")
@click.option("--jitter", default="0", show_default=True,
              help="Link jitter: '1ms', a range '0-2ms', or relative to the delay '20%'.")
@click.option("--loss", default="0", show_default=True, help="Loss per link: 0.01 or '1%'.")
@click.option("--timers", type=click.Choice(sorted(TIMERS)), default="default",
              show_default=True,
              help="default: hello 0.2 s, dead 3, update 4 s; fast: 0.05 s, 3, 2 s.")
@click.option("--restart-seqno", type=click.Choice(["saved", "none"]), default="saved",
              show_default=True,
              help="--fail node: restart with the saved seqno + 1, or with none (seqno "
                   "requests must then bring the node's routes back).")
@click.option("--quiet", "quiet", type=float, default=None,
              help="Seconds without a route change that count as quiescence "
                   "[default: update interval + 1 s].")
@click.option("--max-phase", type=float, default=120.0, show_default=True,
              help="Virtual seconds a phase may take to become quiet.")
@click.option("--filter-strict", is_flag=True,
              help="Blackholed pairs (WireGuard's source filter) after a quiescence fail "
                   "the run.")
@click.option("--filter-period", type=float, default=5.0, show_default=True,
              help="Grid step (virtual ms) of the blackholed-pair count during faults.")
@click.option("--sign", is_flag=True,
              help="Origin signatures on: every node signs what it originates and checks "
                   "every route (as with a roster, docs/roster.md).")
@click.option("--idle", type=float, default=0.0, show_default=True,
              help="Virtual seconds to run after boot with nothing failing, measuring the "
                   "steady-state traffic per node apart from the boot burst (0: skip).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim(topology: str, anycast: str, fail: str, seed: int, delay: str, jitter: str,
        loss: str, timers: str, restart_seqno: str, quiet: float | None, max_phase: float,
        filter_strict: bool, filter_period: float, sign: bool, idle: float, as_json: bool) -> None:
    """Simulate a mesh in virtual time: convergence, a fault, invariants."""
    try:
        scenario = Scenario(topology=topology, anycast=parse_anycast(anycast), fail=fail,
                            seed=seed, delay=delay, jitter=jitter, loss=loss, timers=timers,
                            restart_seqno=restart_seqno, quiet=quiet, max_phase=max_phase,
                            filter_strict=filter_strict, filter_period=filter_period / 1000.0,
                            sign=sign, idle=idle)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    result = scenario.run()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(_summary(result))
    ok = bool(result["converged"]) and result["loops"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    sim()
