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
