#!/usr/bin/env bash
# Runs the solver benchmarks reported in docs/benchmarks.md: Cartwright's solver and the re-implemented
# peers on each built-in workload, release build. Usage: scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
bench() { cargo run --release --quiet -- bench "$@"; }
for workload in web-mix memory-heavy; do
  bench --workload "$workload" --pods 10000 --runs "$runs"
  echo
done
bench --workload gpu --pods 8152 --runs "$runs"
echo
bench --workload constrained --pods 3000 --runs "$runs"
echo
# Karpenter's own benchmark shape; one run each (Cartwright's solver takes seconds here, see docs).
bench --workload karpenter-diverse --pods 5000 --runs 1
echo
# Disruption on a fragmented 1,000-node cluster after a 60 % scale-in (decisions applied until none is left).
bench --workload consolidation-1000
echo
# The simulator: a week of 20 HPA-driven services peaking near 20,000 pods (examples/scenarios/).
for i in $(seq 1 3); do
  start=$(date +%s.%N)
  cargo run --release --quiet -- simulate examples/scenarios/week-1000-nodes.yaml --quiet \
    --output-dir "${TMPDIR:-/tmp}/cartwright-bench-week" > /dev/null
  end=$(date +%s.%N)
  echo "simulate week-1000-nodes run $i: $(echo "$end - $start" | bc) s"
done
echo
# HPA headroom: pending time of HPA-added pods and cost, three variants (simulated time; docs/headroom.md).
cargo run --release --quiet -- simulate examples/hpa-burst.yaml --quiet \
  --compare no-headroom,capacity-buffer-10pct,hpa-headroom --output-dir "${TMPDIR:-/tmp}/cartwright-bench-hpa-burst"
