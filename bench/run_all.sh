#!/usr/bin/env bash
# Run every benchmark on the real dataset (../shared/datasets/mit_split_64) and regenerate BENCHMARKS.md.
#   bash bench/run_all.sh            # the full figures (about two hours on 2 cores, bench/best.py alone one)
#   bash bench/run_all.sh --tiny     # every benchmark in seconds on generated data (report not written)
# Results (each benchmark's table and JSON line) go to bench/results/; hand-written notes that the
# report appends live in bench/results/NOTES.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=bench/results
[[ " $* " == *" --tiny "* ]] && OUT=$(mktemp -d)
mkdir -p "$OUT"
for name in reproduce repeats bundled pipeline train_step latency time_to_accuracy search aug_finetune browser startup scale cluster best; do
  echo "== bench/$name.py $*" >&2
  # wait up to a minute for other processes to go quiet before each benchmark
  "$PY" -m "bench.$name" --quiet-wait 60 "$@" | tee "$OUT/$name.txt"
  tail -n 1 "$OUT/$name.txt" > "$OUT/$name.json"
done
if [[ "$OUT" == bench/results ]]; then
  "$PY" -m bench.report "$OUT" > BENCHMARKS.md
  echo "wrote BENCHMARKS.md" >&2
fi
