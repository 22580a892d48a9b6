#!/usr/bin/env bash
# Failover outage in the lab: 20 runs per (timers, failure); writes bench/results/failover_*.json
set -u
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
for timers in default fast; do
  for fail in daemon node; do
    .venv/bin/wgcast lab demo --topology line:5 --instances n1,n5 --fail $fail --timers $timers \
      --runs "$RUNS" --json > "bench/results/failover_${timers}_${fail}.json" 2> "bench/results/failover_${timers}_${fail}.log"
  done
done
