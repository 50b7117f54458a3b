#!/usr/bin/env bash
# Run the stage's benchmarks one after the other (about ten minutes, most of it camera photos);
# each prints its figures last.
set -euo pipefail
cd "$(dirname "$0")/.."
for bench in throughput lag cpu memory photos; do
    echo "== bench/$bench.py"
    .venv/bin/python "bench/$bench.py"
    echo
done
