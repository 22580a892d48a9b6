#!/usr/bin/env python3
"""`make bench`: run every benchmark, then write docs/performance.md with its plots.

Each benchmark runs as a subprocess with a timeout; a failing or missing one is recorded
and the others still run. Results land in bench/results/*.json; the report is rendered
by bench/report.py from whatever results exist. A full run takes about 45 minutes on
2 cores; ``--quick`` (about 20 minutes, most of it babeld's slow retractions) runs fewer
repetitions and sizes.

    python bench/run_all.py [--quick] [--only failover,idle,...] [--skip ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, machine, write

BENCH = ROOT / "bench"


def _supports(script: Path, flag: str) -> bool:
    try:
        cp = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in cp.stdout


def steps(quick: bool) -> list[dict[str, Any]]:
    """(name, argv, timeout s) of every benchmark."""
    q = ["--quick"] if quick else []
    out = [
        {"name": "failover", "argv": ["failover_compare.py", *q],
         "timeout": 1200 if quick else 3000},
        {"name": "idle", "argv": ["idle_compare.py", *q], "timeout": 600 if quick else 1200},
        {"name": "engine", "argv": ["bench_engine.py"], "timeout": 300 if quick else 900,
         "optional": True},
        {"name": "sim", "argv": ["bench_sim.py"], "timeout": 600 if quick else 1800,
         "optional": True},
        {"name": "dataplane", "argv": ["uapi_apply.py", "--sizes",
                                       "1000,10000" if quick else "1000,10000,100000",
                                       "--batches", "1,100,1000,10000",
                                       "--repeats", "3" if quick else "7"],
         "timeout": 600 if quick else 1200},
        {"name": "profile", "argv": ["profile_daemon.py", "--duration",
                                     "10" if quick else "20"], "timeout": 300},
    ]
    for st in out:  # the simulator's scripts are someone else's: pass --quick if known
        if quick and st.get("optional") and (BENCH / st["argv"][0]).exists() \
                and _supports(BENCH / st["argv"][0], "--quick"):
            st["argv"].append("--quick")
    return out


def run_step(st: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    script = BENCH / st["argv"][0]
    rec: dict[str, Any] = {"name": st["name"], "argv": ["python", f"bench/{st['argv'][0]}",
                                                        *st["argv"][1:]]}
    if not script.exists():
        rec.update(status="missing", seconds=0)
        print(f"[{st['name']}] {script.name} does not exist: skipped", flush=True)
        return rec
    log = log_dir / f"run_all.{st['name']}.log"
    print(f"[{st['name']}] {' '.join(rec['argv'])} (timeout {st['timeout']} s, log {log})",
          flush=True)
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        try:
            cp = subprocess.run([sys.executable, str(script), *st["argv"][1:]], cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT, timeout=st["timeout"],
                                env=env, start_new_session=True)
            rec["status"] = "ok" if cp.returncode == 0 else f"failed ({cp.returncode})"
        except subprocess.TimeoutExpired:
            rec["status"] = f"timeout ({st['timeout']} s)"
    rec["seconds"] = round(time.monotonic() - t0, 1)
    print(f"[{st['name']}] {rec['status']} in {rec['seconds']} s", flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs and sizes (~20 min)")
    ap.add_argument("--only", default="", help="comma-separated step names")
    ap.add_argument("--skip", default="", help="comma-separated step names")
    ap.add_argument("--report-only", action="store_true", help="only re-render the report")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the benchmarks need root (network namespaces, wireguard-go)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    done: list[dict[str, Any]] = []
    t0 = time.monotonic()
    if not args.report_only:
        for st in steps(args.quick):
            if (only and st["name"] not in only) or st["name"] in skip:
                continue
            done.append(run_step(st, RESULTS))
        write("run_all", {"machine": machine(), "quick": args.quick, "steps": done,
                          "elapsed_s": round(time.monotonic() - t0, 1),
                          "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    cp = subprocess.run([sys.executable, str(BENCH / "report.py")], cwd=ROOT,
                        capture_output=True, text=True)
    sys.stdout.write(cp.stdout)
    sys.stderr.write(cp.stderr)
    print(json.dumps({s["name"]: s["status"] for s in done}))
    if cp.returncode != 0:
        sys.exit(cp.returncode)


if __name__ == "__main__":
    main()
