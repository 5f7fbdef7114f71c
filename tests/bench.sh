#!/bin/sh
# bench.sh PYTHON THREADS STEPS - CPU training throughput of moekit on schedules/tiny.ini
# against the PyTorch reference on the same shape and thread count (make bench).
py=$1; threads=$2; steps=$3
src=$(cd "$(dirname "$0")/.." && pwd)
bin=${top_builddir:-.}/bin/moe-train
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
echo "bench: schedules/tiny.ini, $steps steps, $threads threads, $(date -u +%Y-%m-%d) on $(uname -m), $(nproc) cores"
OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 "$bin" --schedule "$src/schedules/tiny.ini" \
  --data "$src/data/demo/english.txt" --set train.steps="$steps" --set train.warmup=1 \
  --set train.grad_accum=1 --set run.dir="$tmp/run" \
  --set log.every=1000000 --threads "$threads" >"$tmp/moekit.out" || { cat "$tmp/moekit.out"; exit 1; }
mk=$(sed -n 's/^done: .* \([0-9][0-9]*\) tok\/s.*/\1/p' "$tmp/moekit.out")
echo "moekit: tokens/s=$mk steps=$steps threads=$threads"
if [ -z "$py" ]; then
  echo "torch: not installed (configure found no python with torch); skipped"
  exit 0
fi
# Torch is measured in its best setting here: with OpenBLAS's own pool on top of torch's
# OpenMP pool, 2 threads ran 3x slower than 1 (measured 2026-11-28).
OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 "$py" "$src/tests/reference/bench_torch.py" --schedule "$src/schedules/tiny.ini" \
  --threads "$threads" --steps "$steps" >"$tmp/torch.out" || { cat "$tmp/torch.out"; exit 1; }
cat "$tmp/torch.out"
tt=$(sed -n 's/^torch: tokens\/s=\([0-9.]*\).*/\1/p' "$tmp/torch.out")
awk -v a="$mk" -v b="$tt" 'BEGIN { if (b > 0) printf "ratio: moekit / torch = %.2f\n", a / b }'
