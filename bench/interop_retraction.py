#!/usr/bin/env python3
"""Interop acceptance table and retraction times, per peer implementation.

Runs the interop test of each implementation (tests/interop/test_babel_peers.py: babeld
1.14, Debian's babeld 1.12.1, BIRD 2, FRR's babeld) `--runs` times, each run appending
its phases passed (or the one that failed) and its figures to a results file of its own,
then summarises: per implementation and phase, how many runs passed it; per figure (the
time from a retraction on one side to the route gone on the other, the time an anycast
side takes to move to the remaining instance), the median and the range of the runs.

Needs root (network namespaces), wireguard-go and the implementations (a missing one is
reported as skipped). Writes bench/results/interop_retraction.json and prints the tables
as Markdown (docs/interop.md has them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, machine, write

TESTS = {
    "babeld-1.14": "test_babeld_1_14",
    "babeld-1.12.1": "test_babeld_debian",
    "bird-2.0.12": "test_bird",
    "frr-babeld": "test_frr",
}
PHASES = ("start", "adjacency", "v6 both ways", "v4 both ways", "rtt", "anycast",
          "retraction")
#: (figure key, column title) of the timing table.
FIGURES = (
    ("retract_wgcast_to_peer_v6_s", "wgcast -> peer v6"),
    ("retract_wgcast_to_peer_v4_s", "wgcast -> peer v4"),
    ("retract_peer_to_wgcast_v6_s", "peer -> wgcast v6"),
    ("retract_peer_to_wgcast_v4_s", "peer -> wgcast v4"),
    ("anycast_wgcast_moves_v6_s", "anycast: wgcast moves v6"),
    ("anycast_wgcast_moves_v4_s", "anycast: wgcast moves v4"),
    ("anycast_peer_moves_v6_s", "anycast: peer moves v6"),
    ("anycast_peer_moves_v4_s", "anycast: peer moves v4"),
)


def run_one(impl: str, results: Path, log: Path) -> str:
    """One pytest run of `impl`'s test; its outcome ("passed", "failed", "skipped")."""
    env = {**os.environ, "WGCAST_INTEROP_RESULTS": str(results)}
    test = f"tests/interop/test_babel_peers.py::{TESTS[impl]}"
    with open(log, "a") as out:
        r = subprocess.run([str(ROOT / ".venv/bin/pytest"), "-q", "-rs", test], cwd=ROOT,
                           env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    if r.returncode == 0:
        return "skipped" if " skipped" in log.read_text().splitlines()[-1] else "passed"
    return "failed"


def summarise(rows: list[dict[str, Any]], outcomes: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for impl, runs in outcomes.items():
        mine = [r for r in rows if r["impl"] == impl]
        phases = {}
        for ph in PHASES:
            passed = sum(ph in r.get("passed", []) for r in mine)
            failed = sum(r.get("failed") == ph for r in mine)
            phases[ph] = {"passed": passed, "failed": failed}
        figures = {}
        for key, _ in FIGURES:
            vals = [float(r[key]) for r in mine if r.get(key) is not None]
            figures[key] = {"median": round(statistics.median(vals), 3) if vals else None,
                            "min": min(vals, default=None), "max": max(vals, default=None),
                            "n": len(vals)}
        out[impl] = {"runs": runs, "phases": phases, "figures": figures}
    return out


def cell(ph: dict[str, int], runs: int) -> str:
    if ph["passed"] == 0 and ph["failed"] == 0:
        return "n/a" if runs else "skipped"
    if ph["failed"] == 0 and ph["passed"] == runs:
        return f"pass ({ph['passed']}/{runs})"
    return f"{'fail' if ph['failed'] else 'pass'} ({ph['passed']}/{runs})"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| Peer | " + " | ".join(PHASES) + " |",
             "|---|" + "---|" * len(PHASES)]
    for impl, s in summary.items():
        n = sum(o != "skipped" for o in s["runs"])
        lines.append(f"| {impl} | " + " | ".join(cell(s["phases"][p], n) for p in PHASES)
                     + " |")
    lines += ["", "| Peer | " + " | ".join(t for _, t in FIGURES) + " |",
              "|---|" + "---|" * len(FIGURES)]
    for impl, s in summary.items():
        cells = []
        for key, _ in FIGURES:
            f = s["figures"][key]
            cells.append("-" if f["median"] is None else
                          f"{f['median']:.3g} ({f['min']:.3g}-{f['max']:.3g})")
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--impl", action="append", choices=sorted(TESTS),
                    help="only these implementations (repeatable); default all")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    impls = args.impl or list(TESTS)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="wgcast-interop-bench-") as d:
        results, log = Path(d) / "results.jsonl", Path(d) / "pytest.log"
        outcomes: dict[str, list[str]] = {i: [] for i in impls}
        for n in range(args.runs):
            for impl in impls:  # interleaved: a slow spell of the machine hits all alike
                outcomes[impl].append(run_one(impl, results, log))
                print(f"run {n + 1}/{args.runs} {impl}: {outcomes[impl][-1]}", flush=True)
        rows = [json.loads(line) for line in results.read_text().splitlines()] \
            if results.exists() else []
    summary = summarise(rows, outcomes)
    load_after = os.getloadavg()
    data = {"machine": machine(), "runs": args.runs, "loadavg_before": load_before,
            "loadavg_after": load_after, "noisy": max(load_before[0], load_after[0]) > 3,
            "summary": summary, "raw": rows}
    path = write("interop_retraction", data, args.out)
    print(markdown(summary))
    print(f"load average before {load_before}, after {load_after}"
          f"{' (NOISY: load > 3)' if data['noisy'] else ''}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
