#!/usr/bin/env bash
# Run the stage's benchmarks one after the other (about two minutes); each prints its figures last.
set -euo pipefail
cd "$(dirname "$0")/.."
for bench in throughput lag cpu memory; do
    echo "== bench/$bench.py"
    .venv/bin/python "bench/$bench.py"
    echo
done
